// BAR mmap and exact-width MMIO on both routes against the fake edu.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openDevice, type VfioDevice } from '../../src/index.js';
import { ClosedError, KernelError, UsageError } from '../../src/errors.js';
import { VFIO_REGION_INFO_FLAG } from '../../src/uapi/vfio.js';
import { EDU, EDU_REG, FakeKernel, type HostOptions } from '../fake-kernel.js';
import { catchError } from '../helpers.js';
import { DEVICE_ROUTES, assertClean } from '../devices.js';

for (const r of DEVICE_ROUTES) {
  describe(`BAR mmap and MMIO (${r.name})`, () => {
    function open(o: HostOptions = {}): { k: FakeKernel; dev: VfioDevice } {
      const k = r.host(o);
      return { k, dev: openDevice(EDU, { kernel: k }) };
    }

    test('mapRegion(BAR0): edu\'s identification and liveness registers, one access each of the asked width', () => {
      const { k, dev } = open();
      const bar = dev.mapRegion('BAR0');
      assert.equal(bar.size, 0x100000);
      assert.equal(bar.offset, 0n);
      assert.equal(bar.writable, true);
      assert.equal(bar.region.name, 'BAR0');
      assert.equal(k.calls.filter((c) => c.call === 'mmap').length, 1);
      assert.equal(bar.read32(EDU_REG.ID), 0x010000ed);
      bar.write32(EDU_REG.LIVENESS, 0x12345678);
      assert.equal(bar.read32(EDU_REG.LIVENESS), 0xedcba987);
      bar.write32(EDU_REG.LIVENESS, 0xffffffff);
      assert.equal(bar.read32(EDU_REG.LIVENESS), 0);
      assert.deepEqual(k.mmioLog.map((a) => [a.op, a.offset, a.width]), [
        ['read', 0, 4], ['write', 4, 4], ['read', 4, 4], ['write', 4, 4], ['read', 4, 4],
      ]);
      // the raw mapping shows the registers too (bulk reads); views of it go empty when it closes
      const view = new Uint32Array(bar.arrayBuffer);
      assert.equal(view[0], 0x010000ed);
      assert.equal(view[1], 0);
      dev.close();
      assert.equal(view.length, 0);
      assertClean(k);
    });

    test('width rules: edu answers 4-byte accesses below 0x80 and 4 or 8 from 0x80; others read all ones, writes are ignored', () => {
      const { k, dev } = open();
      const bar = dev.mapRegion('BAR0');
      assert.equal(bar.read8(EDU_REG.ID), 0xff);
      assert.equal(bar.read16(EDU_REG.ID), 0xffff);
      assert.equal(bar.read64(EDU_REG.ID), 0xffffffffffffffffn);
      bar.write32(EDU_REG.LIVENESS, 0);
      bar.write8(EDU_REG.LIVENESS, 0x12);
      bar.write16(EDU_REG.LIVENESS, 0x1234);
      bar.write64(0, 0n);
      assert.equal(bar.read32(EDU_REG.LIVENESS), 0xffffffff, 'the 1-, 2- and 8-byte writes were ignored');
      bar.write64(EDU_REG.DMA_SRC, 0x1122334455667788n);
      assert.equal(bar.read64(EDU_REG.DMA_SRC), 0x1122334455667788n);
      assert.equal(bar.read32(EDU_REG.DMA_SRC), 0x55667788);
      bar.write32(EDU_REG.DMA_DST, 0xabcd);
      assert.equal(bar.read64(EDU_REG.DMA_DST), 0xabcdn);
      assert.equal(bar.read16(EDU_REG.DMA_DST), 0xffff);
      assert.equal(bar.read32(0x84), 0xffffffff, 'no register there');
      // write32 takes a negative number as its 32-bit pattern
      bar.write32(EDU_REG.LIVENESS, -1);
      assert.equal(bar.read32(EDU_REG.LIVENESS), 0);
      dev.close();
      assertClean(k);
    });

    test('an offset out of range or not aligned to the width: RangeError (ERR_OUT_OF_RANGE), and no access', () => {
      const { k, dev } = open();
      const bar = dev.mapRegion('BAR0');
      const before = k.mmioLog.length;
      const cases: [string, () => unknown][] = [
        ['read32(0x100000)', () => bar.read32(0x100000)],
        ['read32(0xffffe)', () => bar.read32(0xffffe)],
        ['read64(0xffffc)', () => bar.read64(0xffffc)],
        ['read32(2)', () => bar.read32(2)],
        ['read64(4)', () => bar.read64(4)],
        ['read16(1)', () => bar.read16(1)],
        ['read32(-4)', () => bar.read32(-4)],
        ['write32(0x100000)', () => bar.write32(0x100000, 0)],
        ['write64(0x84)', () => bar.write64(0x84, 0n)],
      ];
      for (const [name, fn] of cases) {
        assert.throws(fn, (e: unknown) => e instanceof RangeError && (e as { code?: string }).code === 'ERR_OUT_OF_RANGE', name);
      }
      assert.equal(k.mmioLog.length, before);
      assert.equal(bar.read8(0xfffff), 0xff, 'the last byte is in range');
      dev.close();
      assertClean(k);
    });

    test('after close (of the mapping or of the device): ClosedError; close is idempotent', () => {
      const { k, dev } = open();
      const bar = dev.mapRegion('BAR0');
      bar.close();
      bar.close();
      assert.equal(bar.closed, true);
      assert.equal(bar.size, 0);
      assert.equal(k.liveMappings(), 0);
      for (const fn of [() => bar.read32(0), () => bar.write32(4, 1), () => bar.read64(0x80), () => bar.arrayBuffer]) catchError(fn, ClosedError);
      const bar2 = dev.mapRegion(0);
      dev.close();
      assert.equal(bar2.closed, true, 'the device closed its mapping');
      catchError(() => bar2.read32(0), ClosedError);
      catchError(() => dev.mapRegion('BAR0'), ClosedError);
      assertClean(k);
    });

    test('the mappings are unmapped when the device closes, before its fd (the device is released)', () => {
      const { k, dev } = open();
      const maps = [dev.mapRegion('BAR0'), dev.mapRegion('BAR0'), dev.mapRegion('BAR0', { writable: false })];
      assert.equal(k.liveMappings(), 3);
      dev.close();
      assert.ok(maps.every((m) => m.closed));
      assert.equal(k.deviceOpenCount(EDU), 0);
      assertClean(k);
    });

    test('a read-only mapping: reads work, writes are a UsageError before any access', () => {
      const { k, dev } = open();
      const bar = dev.mapRegion('BAR0', { writable: false });
      assert.equal(bar.writable, false);
      assert.equal(bar.read32(0), 0x010000ed);
      for (const fn of [() => bar.write32(4, 1), () => bar.write8(4, 1), () => bar.write16(4, 1), () => bar.write64(0x80, 1n)]) {
        assert.match(catchError(fn, UsageError).message, /the mapping of BAR0 is read-only/);
      }
      assert.equal(k.mmioLog.filter((a) => a.op === 'write').length, 0);
      dev.close();
      assertClean(k);
    });

    test('regions that cannot be mmapped: UsageError, and no mmap is tried', () => {
      const { k, dev } = open();
      assert.match(catchError(() => dev.mapRegion('CONFIG'), UsageError).message, /region CONFIG of 0000:00:10\.0 cannot be mmapped: use readRegion\(\)\/writeRegion\(\)/);
      catchError(() => dev.mapRegion('BAR1'), UsageError); // empty
      catchError(() => dev.mapRegion('VGA'), UsageError); // absent
      catchError(() => dev.mapRegion('rom'), UsageError);
      assert.match(catchError(() => dev.mapRegion('BAR9'), UsageError).message, /has no region BAR9/);
      assert.match(catchError(() => dev.mapRegion('BAR0', { area: 1 }), UsageError).message, /region BAR0 maps whole: it has no area 1/);
      assert.equal(k.calls.filter((c) => c.call === 'mmap').length, 0);
      dev.close();
      assertClean(k);
    });

    test('sparse mmap: one area at a time, at its offset in the region', () => {
      const F = VFIO_REGION_INFO_FLAG;
      const { k, dev } = open({
        devices: [{ address: EDU, regions: { 0: { size: 0x100000, flags: F.READ | F.WRITE | F.MMAP, sparseMmap: [{ offset: 0n, size: 0x1000n }, { offset: 0x3000n, size: 0x2000n }] } } }],
      });
      const first = dev.mapRegion('BAR0');
      assert.deepEqual([first.offset, first.size], [0n, 0x1000]);
      assert.equal(first.read32(0), 0x010000ed);
      const second = dev.mapRegion('BAR0', { area: 1 });
      assert.deepEqual([second.offset, second.size], [0x3000n, 0x2000]);
      second.read32(0);
      assert.equal(k.mmioLog.at(-1)!.offset, 0x3000, 'offset 0 of the area is 0x3000 in the BAR');
      assert.match(catchError(() => dev.mapRegion('BAR0', { area: 2 }), UsageError).message, /region BAR0 has 2 mmap-able area\(s\); there is no area 2/);
      dev.close();
      assertClean(k);
    });

    test('plain-memory BARs: what is written is read back, at every width', () => {
      const F = VFIO_REGION_INFO_FLAG;
      const { k, dev } = open({ devices: [{ address: EDU, id: '1b36:0005', regions: { 2: { size: 0x4000, flags: F.READ | F.WRITE | F.MMAP } } }] });
      const bar = dev.mapRegion('BAR2');
      bar.write64(8, 0x0102030405060708n);
      assert.equal(bar.read8(8), 0x08);
      assert.equal(bar.read16(8), 0x0708);
      assert.equal(bar.read32(12), 0x01020304);
      assert.deepEqual([...dev.readRegion('BAR2', 8, 4)], [8, 7, 6, 5], 'the same memory through pread');
      dev.writeRegion('BAR2', 16, Buffer.from([0xaa, 0xbb]));
      assert.equal(bar.read16(16), 0xbbaa);
      dev.close();
      assertClean(k);
    });

    test('a refused mmap is a KernelError naming the step; nothing is mapped', () => {
      const { k, dev } = open();
      k.failNext({ call: 'mmap', errno: 'ENOMEM' });
      const e = catchError(() => dev.mapRegion('BAR0'), KernelError);
      assert.equal(e.step, 'mmap BAR0');
      assert.equal(e.errno, 'ENOMEM');
      assert.equal(k.liveMappings(), 0);
      assert.equal(dev.mapRegion('BAR0').read32(0), 0x010000ed, 'the device is still usable');
      dev.close();
      assertClean(k);
    });
  });

}
