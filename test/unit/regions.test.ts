// Device info, regions and config space on a bound device, through both routes.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openDevice } from '../../src/index.js';
import { ClosedError, KernelError, UsageError } from '../../src/errors.js';
import { capabilities } from '../../src/uapi/vfio.js';
import { VFIO, VFIO_REGION_INFO_FLAG } from '../../src/uapi/vfio.js';
import { EDU, FakeKernel } from '../fake-kernel.js';
import { assertNoLeaks, catchError } from '../helpers.js';

const ROUTES = [
  { name: 'iommufd', host: () => FakeKernel.host() },
  { name: 'legacy', host: () => FakeKernel.host({ kernel: 'stock' }) },
] as const;

for (const r of ROUTES) {
  describe(`regions and config space (${r.name})`, () => {
    test('info: PCI, 9 regions, 5 irqs (a copy each time)', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      assert.equal(dev.route, r.name);
      const info = dev.info();
      assert.deepEqual(info, { flags: ['PCI'], rawFlags: 2, regions: 9, irqs: 5 });
      info.flags.push('RESET');
      assert.deepEqual(dev.info().flags, ['PCI']);
      dev.close();
      assertNoLeaks(k);
    });

    test('regions(): BAR0 and CONFIG; VGA answering EINVAL is absent; the others are empty', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      const regions = dev.regions();
      assert.deepEqual(regions.map((x) => x.name), ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA']);
      assert.deepEqual(regions[0], {
        index: 0, name: 'BAR0', size: 0x100000n, offset: 0n, readable: true, writable: true, mmappable: true, sparseMmap: null, type: null,
      });
      assert.deepEqual(regions[7], {
        index: 7, name: 'CONFIG', size: 0x100n, offset: 0x70000000000n, readable: true, writable: true, mmappable: false, sparseMmap: null, type: null,
      });
      assert.deepEqual(regions[8], {
        index: 8, name: 'VGA', size: 0n, offset: 0n, readable: false, writable: false, mmappable: false, sparseMmap: null, type: null,
      });
      for (const i of [1, 2, 3, 4, 5, 6]) assert.equal(regions[i]!.size, 0n);
      assert.deepEqual(dev.regions().filter((x) => x.size > 0n).map((x) => x.name), ['BAR0', 'CONFIG']);
      // cached: asked once per region
      dev.regions();
      assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_GET_REGION_INFO').length, 9);
      // by name or index
      assert.equal(dev.region('config').index, 7);
      assert.equal(dev.region(0).name, 'BAR0');
      dev.close();
      assertNoLeaks(k);
    });

    test('config space reads: vendor 0x1234, device 0x11e8', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      assert.equal(dev.readConfig(0, 2), 0x1234);
      assert.equal(dev.readConfig(2, 2), 0x11e8);
      assert.equal(dev.readConfig(0, 4), 0x11e81234);
      assert.equal(dev.readConfig(0, 1), 0x34);
      assert.equal(dev.readConfig(0xff, 1), 0);
      assert.equal(dev.readConfig(0xfc, 4), 0);
      assert.deepEqual([...dev.readRegion('CONFIG', 0, 4)], [0x34, 0x12, 0xe8, 0x11]);
      dev.close();
      assertNoLeaks(k);
    });

    test('config and BAR writes', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      dev.writeConfig(0x04, 2, 0x0006);
      assert.equal(dev.readConfig(0x04, 2), 0x0006);
      dev.writeConfig(0x40, 4, 0xdeadbeef);
      assert.equal(dev.readConfig(0x40, 4), 0xdeadbeef);
      dev.writeRegion('BAR0', 0x80, Buffer.from([1, 2, 3, 4]));
      assert.deepEqual([...dev.readRegion('BAR0', 0x80, 4)], [1, 2, 3, 4]);
      assert.deepEqual([...dev.readRegion(0, 0xffffc, 4)], [0xff, 0xff, 0xff, 0xff]); // edu: no register there reads as all ones
      dev.close();
      assertNoLeaks(k);
    });

    test('out-of-range and inaccessible accesses are UsageErrors, and nothing is read', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      const reads = (): number => k.calls.filter((c) => c.call === 'pread' || c.call === 'pwrite').length;
      const before = reads();
      const cases: [string, () => unknown][] = [
        ['readConfig(255, 2)', () => dev.readConfig(255, 2)],
        ['readConfig(254, 4)', () => dev.readConfig(254, 4)],
        ['readConfig(256, 1)', () => dev.readConfig(256, 1)],
        ['readConfig(-1, 1)', () => dev.readConfig(-1, 1)],
        ['readConfig(2**40, 1)', () => dev.readConfig(2 ** 40, 1)],
        ['readRegion(CONFIG, 0, 257)', () => dev.readRegion('CONFIG', 0, 257)],
        ['readRegion(CONFIG, 0, -1)', () => dev.readRegion('CONFIG', 0, -1)],
        ['readRegion(BAR0, 0x100000, 1)', () => dev.readRegion('BAR0', 0x100000n, 1)],
        ['writeConfig(255, 2)', () => dev.writeConfig(255, 2, 0)],
        ['writeRegion(BAR0, 0xfffff, 2 bytes)', () => dev.writeRegion('BAR0', 0xfffff, Buffer.alloc(2))],
        ['readRegion(BAR1) (empty)', () => dev.readRegion('BAR1', 0, 1)],
        ['readRegion(VGA) (absent)', () => dev.readRegion('VGA', 0, 1)],
        ['writeRegion(ROM)', () => dev.writeRegion('ROM', 0, Buffer.alloc(1))],
        ['region(9)', () => dev.region(9)],
        ['region(BAR6)', () => dev.region('BAR6')],
      ];
      for (const [name, fn] of cases) {
        const e = catchError(fn, UsageError);
        assert.equal(e.exitCode, 2, name);
      }
      assert.match(catchError(() => dev.readConfig(255, 2), UsageError).message, /read of 2 bytes at 255 is outside CONFIG \(size 256\)/);
      assert.match(catchError(() => dev.readRegion('BAR1', 0, 1), UsageError).message, /region BAR1 of 0000:00:10\.0 is not readable/);
      assert.match(catchError(() => dev.region('BAR6'), UsageError).message, /has no region BAR6 \(it has BAR0, BAR1/);
      assert.equal(reads(), before, 'refused before any pread/pwrite');
      dev.close();
      assertNoLeaks(k);
    });

    test('a refused region info or read after bind is a KernelError; the device stays usable and closes cleanly', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      k.failNext({ request: VFIO.DEVICE_GET_REGION_INFO, errno: 'EIO' });
      const e = catchError(() => dev.regions(), KernelError);
      assert.equal(e.exitCode, 7);
      assert.equal(e.step, 'VFIO_DEVICE_GET_REGION_INFO');
      assert.equal(e.errno, 'EIO');
      assert.equal(dev.regions().length, 9, 'not cached after a failure');
      k.failNext({ call: 'pread', errno: 'EIO' });
      const r2 = catchError(() => dev.readConfig(0, 2), KernelError);
      assert.equal(r2.step, 'read CONFIG');
      assert.equal(r2.errno, 'EIO');
      k.failNext({ call: 'pwrite', errno: 'EFAULT' });
      assert.equal(catchError(() => dev.writeConfig(4, 2, 0), KernelError).step, 'write CONFIG');
      assert.equal(dev.readConfig(0, 2), 0x1234);
      dev.close();
      assertNoLeaks(k);
      assert.throws(() => dev.regions(), ClosedError);
      assert.throws(() => dev.region('BAR0'), ClosedError);
    });
  });
}

describe('region capabilities', () => {
  test('sparse mmap areas and a region type, read with a second, larger GET_REGION_INFO', () => {
    const F = VFIO_REGION_INFO_FLAG;
    const k = FakeKernel.host({
      devices: [{
        address: EDU,
        regions: {
          0: { size: 0x100000, flags: F.READ | F.WRITE | F.MMAP, sparseMmap: [{ offset: 0n, size: 0x1000n }, { offset: 0x3000n, size: 0x2000n }] },
          2: { size: 0x4000, flags: F.READ, type: { type: 0x8086, subtype: 3 } },
          6: null,
        },
      }],
    });
    const dev = openDevice(EDU, { kernel: k });
    const regions = dev.regions();
    assert.deepEqual(regions[0]!.sparseMmap, [{ offset: 0n, size: 0x1000n }, { offset: 0x3000n, size: 0x2000n }]);
    assert.equal(regions[0]!.type, null);
    assert.deepEqual(regions[2]!.type, { type: 0x8086, subtype: 3 });
    assert.equal(regions[2]!.readable, true);
    assert.equal(regions[2]!.writable, false);
    assert.equal(regions[6]!.size, 0n, 'EINVAL for the ROM: absent');
    // 7 plain regions + 2 asked twice (once to learn argsz)
    assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_GET_REGION_INFO').length, 11);
    assert.throws(() => dev.writeRegion(2, 0, Buffer.alloc(1)), UsageError);
    dev.close();
    assertNoLeaks(k);
  });

  test('a capability chain that loops or points outside the buffer ends', () => {
    const buf = Buffer.alloc(48);
    buf.writeUInt16LE(1, 32); // id
    buf.writeUInt32LE(32, 36); // next: itself
    assert.deepEqual([...capabilities(buf, 32)].map((c) => c.at), [32]);
    buf.writeUInt32LE(44, 36); // next: a header that does not fit
    assert.deepEqual([...capabilities(buf, 32)].map((c) => c.at), [32]);
    assert.deepEqual([...capabilities(buf, 0)], []);
  });
});
