// Device operations on both routes against the fake edu: BAR mmap with exact-width MMIO, interrupts on
// eventfds (MSI, INTx with unmask), reset and hot-reset info, config-space helpers; and every failure of
// mapRegion and enableIrqs leaving nothing behind.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openDevice, PCI_COMMAND, type VfioDevice } from '../../src/index.js';
import { ClosedError, KernelError, UnsupportedError, UsageError, VfioError } from '../../src/errors.js';
import { VFIO, VFIO_DEVICE_FLAGS, VFIO_REGION_INFO_FLAG } from '../../src/uapi/vfio.js';
import { EDU, EDU_REG, FakeKernel, TESTDEV, type HostOptions } from '../fake-kernel.js';
import { assertNoLeaks, catchError } from '../helpers.js';

const ROUTES = [
  { name: 'iommufd', host: (o: HostOptions = {}) => FakeKernel.host(o) },
  { name: 'legacy', host: (o: HostOptions = {}) => FakeKernel.host({ kernel: 'stock', ...o }) },
] as const;

/** No fd, no mapping and no eventfd watch left. */
function assertClean(k: FakeKernel, what = ''): void {
  assertNoLeaks(k, what);
  assert.equal(k.liveMappings(), 0, `mappings left ${what}`);
  assert.equal(k.activeWatches(), 0, `eventfd watches left ${what}`);
}

const eventfds = (k: FakeKernel): number => k.openPaths().filter((p) => p === 'anon_inode:[eventfd]').length;
const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

for (const r of ROUTES) {
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

  describe(`interrupts (${r.name})`, () => {
    function open(o: HostOptions = {}): { k: FakeKernel; dev: VfioDevice } {
      const k = r.host(o);
      return { k, dev: openDevice(EDU, { kernel: k }) };
    }

    test('irqs(): INTX, MSI, MSIX, ERR, REQ; ERR absent on a device that is not PCIe', () => {
      const { k, dev } = open();
      assert.deepEqual(dev.irqs(), [
        { index: 0, name: 'INTX', count: 1, eventfd: true, maskable: true, automasked: true, noresize: false },
        { index: 1, name: 'MSI', count: 1, eventfd: true, maskable: false, automasked: false, noresize: true },
        { index: 2, name: 'MSIX', count: 0, eventfd: true, maskable: false, automasked: false, noresize: true },
        { index: 3, name: 'ERR', count: 0, eventfd: false, maskable: false, automasked: false, noresize: false },
        { index: 4, name: 'REQ', count: 1, eventfd: true, maskable: false, automasked: false, noresize: true },
      ]);
      assert.equal(dev.irq('msi').index, 1);
      assert.equal(dev.irq(4).name, 'REQ');
      dev.close();
      assertClean(k);
    });

    test('irqs() on a PCIe device with MSI-X: ERR has one vector', () => {
      const { k, dev } = open({ devices: [{ address: EDU, irqs: { pcie: true, msix: 5, msi: 4 } }] });
      assert.deepEqual(dev.irqs().map((i) => [i.name, i.count]), [['INTX', 1], ['MSI', 4], ['MSIX', 5], ['ERR', 1], ['REQ', 1]]);
      dev.close();
      assertClean(k);
    });

    test('enableIrqs(MSI): vector.wait() resolves with the count when the device fires', async () => {
      const { k, dev } = open();
      const set = dev.enableIrqs('MSI');
      assert.equal(set.info.name, 'MSI');
      assert.equal(set.vectors.length, 1);
      assert.deepEqual(k.irqState(EDU), { type: 'msi', wired: 1, masked: false, err: false, req: false });
      assert.equal(eventfds(k), 1);
      const v = set.vector(0);
      const waiting = v.wait();
      assert.equal(k.activeWatches(), 1, 'watched while someone waits');
      assert.equal(k.raiseIrq(EDU, 'MSI'), true);
      assert.equal(await waiting, 1n);
      assert.equal(k.activeWatches(), 0, 'an idle vector is not watched');
      // interrupts while nobody waits are counted, and the next wait gets them at once
      k.raiseIrq(EDU, 'MSI');
      k.raiseIrq(EDU, 'MSI');
      k.raiseIrq(EDU, 'MSI');
      assert.equal(await v.wait(), 3n);
      assert.equal(v.total, 4n);
      dev.close();
      assertClean(k);
    });

    test('wait({ timeoutMs }) resolves null when nothing fires, and stops watching', async () => {
      const { k, dev } = open();
      const v = dev.enableIrqs('MSI').vector(0);
      assert.equal(await v.wait({ timeoutMs: 15 }), null);
      assert.equal(k.activeWatches(), 0);
      const late = v.wait({ timeoutMs: 1000 });
      k.raiseIrq(EDU, 'MSI');
      assert.equal(await late, 1n, 'an interrupt before the timeout resolves it');
      dev.close();
      assertClean(k);
    });

    test('edu raises its MSI when bus mastering is on (an MSI is a DMA write); without it nothing arrives', async () => {
      const { k, dev } = open();
      const bar = dev.mapRegion('BAR0');
      const v = dev.enableIrqs('MSI').vector(0);
      bar.write32(EDU_REG.IRQ_RAISE, 0x1);
      assert.equal(await v.wait({ timeoutMs: 15 }), null);
      assert.equal(bar.read32(EDU_REG.IRQ_STATUS), 0x1, 'edu raised it');
      bar.write32(EDU_REG.IRQ_ACK, 0x1);
      dev.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
      bar.write32(EDU_REG.IRQ_RAISE, 0x40);
      assert.equal(await v.wait({ timeoutMs: 1000 }), 1n);
      assert.equal(bar.read32(EDU_REG.IRQ_STATUS), 0x40);
      bar.write32(EDU_REG.IRQ_ACK, 0x40);
      assert.equal(bar.read32(EDU_REG.IRQ_STATUS), 0);
      dev.close();
      assertClean(k);
    });

    test('INTx: automasked after it fires; unmask() re-arms it (and fires again while edu still asserts it)', async () => {
      const { k, dev } = open();
      const bar = dev.mapRegion('BAR0');
      const set = dev.enableIrqs('INTX');
      const v = set.vector(0);
      bar.write32(EDU_REG.IRQ_RAISE, 0x1);
      assert.equal(await v.wait({ timeoutMs: 1000 }), 1n);
      assert.equal(k.irqState(EDU).masked, true);
      // still asserted: unmasking fires again at once
      v.unmask();
      assert.equal(await v.wait({ timeoutMs: 1000 }), 1n);
      // acknowledged: unmasking re-arms it quietly
      bar.write32(EDU_REG.IRQ_ACK, 0x1);
      v.unmask();
      assert.equal(k.irqState(EDU).masked, false);
      assert.equal(await v.wait({ timeoutMs: 15 }), null);
      bar.write32(EDU_REG.IRQ_RAISE, 0x2);
      assert.equal(await v.wait({ timeoutMs: 1000 }), 1n);
      assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_SET_IRQS').length, 3, 'enable, unmask, unmask');
      set.disable();
      catchError(() => v.unmask(), ClosedError);
      dev.close();
      assertClean(k);
    });

    test('one index at a time: a second one while one is enabled is a UsageError, and nothing is opened', () => {
      const { k, dev } = open();
      const set = dev.enableIrqs('MSI');
      const setIrqs = k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_SET_IRQS').length;
      const e = catchError(() => dev.enableIrqs('INTX'), UsageError);
      assert.match(e.message, /MSI is enabled on 0000:00:10\.0: disable it before enabling INTX/);
      catchError(() => dev.enableIrqs('MSI'), UsageError);
      assert.equal(eventfds(k), 1);
      assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_SET_IRQS').length, setIrqs);
      set.disable();
      dev.enableIrqs('INTX');
      assert.equal(k.irqState(EDU).type, 'intx');
      dev.close();
      assertClean(k);
    });

    test('REQ (device request) alongside MSI, as the kernel allows (vfio-pci keeps its trigger apart)', () => {
      const { k, dev } = open();
      try {
        dev.enableIrqs('MSI');
        dev.enableIrqs('REQ');
        assert.equal(k.irqState(EDU).req, true);
      } finally {
        dev.close();
      }
    });

    test('what cannot be enabled is a UsageError: an index out of range, an index without vectors, too many vectors', () => {
      const { k, dev } = open();
      assert.match(catchError(() => dev.enableIrqs(7), UsageError).message, /0000:00:10\.0 has no IRQ index 7 \(it has INTX, MSI, MSIX, ERR, REQ\)/);
      catchError(() => dev.enableIrqs('FOO'), UsageError);
      assert.match(catchError(() => dev.enableIrqs('MSIX'), UsageError).message, /0000:00:10\.0 has no MSIX interrupts/);
      catchError(() => dev.enableIrqs('ERR'), UsageError);
      assert.match(catchError(() => dev.enableIrqs('MSI', { count: 2 }), UsageError).message, /MSI of 0000:00:10\.0 has 1 vector\(s\); cannot enable 2/);
      catchError(() => dev.enableIrqs('MSI', { count: 0 }), UsageError);
      assert.equal(k.calls.filter((c) => c.call === 'eventfd').length, 0);
      assert.ok(!k.ioctlNames().includes('VFIO_DEVICE_SET_IRQS'));
      dev.close();
      assertClean(k);
    });

    test('several MSI-X vectors: each has its own eventfd; vector() out of range is a UsageError', async () => {
      const { k, dev } = open({ devices: [{ address: EDU, irqs: { msix: 4 } }] });
      const set = dev.enableIrqs('MSIX', { count: 3 });
      assert.equal(eventfds(k), 3);
      assert.deepEqual(k.irqState(EDU), { type: 'msix', wired: 3, masked: false, err: false, req: false });
      const w = set.vector(2).wait();
      k.raiseIrq(EDU, 'MSIX', 2);
      assert.equal(await w, 1n);
      assert.equal(set.vector(0).total, 0n);
      assert.match(catchError(() => set.vector(3), UsageError).message, /MSIX has 3 vector\(s\) enabled; there is no vector 3/);
      dev.close();
      assertClean(k);
    });

    test('unmask() on MSI is a UsageError (only INTx is unmasked)', () => {
      const { k, dev } = open();
      const v = dev.enableIrqs('MSI').vector(0);
      assert.match(catchError(() => v.unmask(), UsageError).message, /vector 0 is not an INTx line: only INTx is unmasked/);
      dev.close();
      assertClean(k);
    });

    test('disable(): the kernel stops signalling, the eventfds close, waiters are rejected; idempotent', async () => {
      const { k, dev } = open();
      const set = dev.enableIrqs('MSI');
      const v = set.vector(0);
      const waiting = v.wait();
      set.disable();
      await assert.rejects(waiting, ClosedError);
      await assert.rejects(v.wait(), ClosedError);
      assert.equal(set.disabled, true);
      assert.equal(eventfds(k), 0);
      assert.equal(k.activeWatches(), 0);
      assert.equal(k.irqState(EDU).type, 'none');
      assert.equal(k.raiseIrq(EDU, 'MSI'), false, 'nothing is wired any more');
      set.disable();
      set[Symbol.dispose]();
      assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_SET_IRQS').length, 2, 'enable and one disable');
      dev.close();
      assertClean(k);
    });

    test('a refused disable is a KernelError, but the eventfds are closed and the index may be enabled again', () => {
      const { k, dev } = open();
      const set = dev.enableIrqs('MSI');
      k.failNext({ request: VFIO.DEVICE_SET_IRQS, errno: 'EIO' });
      const e = catchError(() => set.disable(), KernelError);
      assert.equal(e.step, 'VFIO_DEVICE_SET_IRQS');
      assert.equal(eventfds(k), 0);
      dev.enableIrqs('MSI');
      dev.close();
      assertClean(k);
    });

    test('device.close() disables and closes everything: eventfds, watches, waiters, mappings', async () => {
      const { k, dev } = open();
      const bar = dev.mapRegion('BAR0');
      const v = dev.enableIrqs('MSI').vector(0);
      const waiting = v.wait();
      dev.close();
      await assert.rejects(waiting, ClosedError);
      assert.equal(bar.closed, true);
      assert.equal(k.irqState(EDU).type, 'none');
      assertClean(k);
    });

    test('device.close() still closes everything when the kernel refuses the disable', async () => {
      const { k, dev } = open();
      dev.enableIrqs('INTX');
      k.failNext({ request: VFIO.DEVICE_SET_IRQS, errno: 'ENODEV' });
      dev.close();
      await tick();
      assertClean(k);
    });
  });

  describe(`reset, hot reset and config space (${r.name})`, () => {
    test('reset() without the RESET flag: UnsupportedError (exit 7) with a hint, and no ioctl', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      const e = catchError(() => dev.reset(), UnsupportedError);
      assert.equal(e.exitCode, 7);
      assert.match(e.message, /0000:00:10\.0 cannot be reset: it has no FLR or PM reset, and is not alone on a bus the kernel could reset/);
      assert.match(e.hint ?? '', /bus reset/);
      assert.ok(!k.ioctlNames().includes('VFIO_DEVICE_RESET'));
      dev.close();
      catchError(() => dev.reset(), ClosedError);
      assertClean(k);
    });

    test('reset() with the RESET flag issues VFIO_DEVICE_RESET; a refusal is a KernelError', () => {
      const k = r.host({ devices: [{ address: EDU, flags: VFIO_DEVICE_FLAGS.PCI | VFIO_DEVICE_FLAGS.RESET }] });
      const dev = openDevice(EDU, { kernel: k });
      assert.deepEqual(dev.info().flags, ['RESET', 'PCI']);
      dev.reset();
      dev.reset();
      assert.equal(k.resetCount(EDU), 2);
      assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_RESET').length, 2);
      k.failNext({ request: VFIO.DEVICE_RESET, errno: 'EAGAIN' });
      const e = catchError(() => dev.reset(), KernelError);
      assert.equal(e.step, 'VFIO_DEVICE_RESET');
      assert.equal(e.errno, 'EAGAIN');
      dev.close();
      assertClean(k);
    });

    test('hotResetInfo(): asks with room for the devices after ENOSPC; addresses formatted', () => {
      const k = r.host({
        devices: [
          { address: '0000:01:00.0', group: 7, hotReset: ['0000:01:00.0', '0000:01:00.1', { address: '0001:1a:1f.7', group: 12 }] },
          { address: '0000:01:00.1', group: 8 },
        ],
      });
      const dev = openDevice('0000:01:00.0', { kernel: k });
      const info = dev.hotResetInfo();
      assert.deepEqual(info.map((d) => d.address), ['0000:01:00.0', '0000:01:00.1', '0001:1a:1f.7']);
      assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO').length, 2);
      if (r.name === 'legacy') {
        assert.deepEqual(info.map((d) => [d.groupId, d.devid]), [[7, null], [8, null], [12, null]]);
      } else {
        // the cdev route names devices by devid in our iommufd: ours by its devid, 0xffffffff (NOT_OWNED) for the others
        assert.deepEqual(info.map((d) => d.groupId), [null, null, null]);
        assert.equal(info[0]!.devid, dev.report.ids.devid);
      }
      dev.close();
      assertClean(k);
    });

    if (r.name === 'iommufd') {
      test('hotResetInfo() on the cdev route: a device of the same iommufd by its devid', () => {
        const k = r.host({
          devices: [
            { address: '0000:01:00.0', group: 7, hotReset: ['0000:01:00.0', '0000:01:00.1'] },
            { address: '0000:01:00.1', group: 8 },
          ],
        });
        const a = openDevice('0000:01:00.0', { kernel: k });
        const b = openDevice('0000:01:00.1', { kernel: k, context: a.context });
        assert.deepEqual(a.hotResetInfo().map((d) => d.devid), [a.report.ids.devid, b.report.ids.devid]);
        b.close();
        a.close();
        assertClean(k);
      });

      test('hotResetInfo() on the cdev route: a device not ours is -1 (VFIO_PCI_DEVID_NOT_OWNED), as documented', () => {
        const k = r.host({ devices: [{ address: '0000:01:00.0', hotReset: ['0000:01:00.0', '0000:01:00.1'] }, { address: '0000:01:00.1' }] });
        const dev = openDevice('0000:01:00.0', { kernel: k });
        try {
          assert.equal(dev.hotResetInfo()[1]!.devid, -1);
        } finally {
          dev.close();
        }
      });
    }

    test('hotResetInfo() where no slot or bus reset is possible: KernelError (ENODEV)', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      const e = catchError(() => dev.hotResetInfo(), KernelError);
      assert.equal(e.errno, 'ENODEV');
      assert.equal(e.step, 'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO');
      dev.close();
      catchError(() => dev.hotResetInfo(), ClosedError);
      assertClean(k);
    });

    test('pciIds(): vendor, device, revision, class, subsystem', () => {
      const k = r.host({ devices: [{ address: EDU }, { address: TESTDEV, id: '1b36:0005' }] });
      const dev = openDevice(EDU, { kernel: k });
      assert.deepEqual(dev.pciIds(), { vendor: 0x1234, device: 0x11e8, revision: 0x10, class: 0x00ff00, subsystemVendor: 0x1af4, subsystem: 0x1100 });
      const other = openDevice(TESTDEV, { kernel: k });
      assert.deepEqual([other.pciIds().vendor, other.pciIds().device], [0x1b36, 0x0005]);
      other.close();
      dev.close();
      assertClean(k);
    });

    test('pciCapabilities(): the list in order; none without the status bit; a loop ends', () => {
      const k = r.host({
        devices: [
          { address: EDU },
          { address: TESTDEV, capabilities: [{ id: 0x01, offset: 0x50 }, { id: 0x05, offset: 0x60 }, { id: 0x10, offset: 0x48 }] },
        ],
      });
      const edu = openDevice(EDU, { kernel: k });
      assert.deepEqual(edu.pciCapabilities(), [{ id: 0x05, offset: 0x40 }]);
      const dev = openDevice(TESTDEV, { kernel: k });
      assert.deepEqual(dev.pciCapabilities(), [{ id: 0x01, offset: 0x50 }, { id: 0x05, offset: 0x60 }, { id: 0x10, offset: 0x48 }]);
      dev.writeConfig(0x49, 1, 0x50); // the last one points back at the first
      assert.deepEqual(dev.pciCapabilities().map((c) => c.offset), [0x50, 0x60, 0x48]);
      dev.writeConfig(0x06, 2, 0); // status: no capability list
      assert.deepEqual(dev.pciCapabilities(), []);
      dev.close();
      edu.close();
      assertClean(k);
    });

    test('command() and setCommand(): bits set and cleared, others kept', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      assert.equal(dev.command(), 0);
      dev.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
      assert.equal(dev.command(), 0x6);
      dev.setCommand(PCI_COMMAND.INTX_DISABLE, PCI_COMMAND.MEMORY);
      assert.equal(dev.command(), 0x404);
      assert.equal(dev.readConfig(0x04, 2), 0x404);
      dev.setCommand(0, 0xffff);
      assert.equal(dev.command(), 0);
      dev.close();
      catchError(() => dev.command(), ClosedError);
      assertClean(k);
    });
  });

  describe(`every failure of mapRegion and enableIrqs leaves nothing behind (${r.name})`, () => {
    const ERRNOS = ['EPERM', 'ENOENT', 'EIO', 'ENOMEM', 'EFAULT', 'EBUSY', 'EINVAL', 'ENOSPC', 'ENOTTY', 'EAGAIN', 'EMFILE', 'ENODEV'] as const;

    test('mapRegion: every errno at GET_REGION_INFO and mmap', () => {
      for (const rule of [{ request: VFIO.DEVICE_GET_REGION_INFO }, { call: 'mmap' as const }]) {
        for (const errno of ERRNOS) {
          const k = r.host();
          const dev = openDevice(EDU, { kernel: k });
          const where = `${JSON.stringify(rule)} ${errno}`;
          try {
            k.failNext({ ...rule, errno });
            const e = catchError(() => dev.mapRegion('BAR0'), VfioError);
            assert.equal(k.pendingFailures().length, 0, where);
            assert.equal(k.liveMappings(), 0, where);
            if ('request' in rule && errno === 'EINVAL') {
              // vfio-pci's answer for a region the device lacks: BAR0 is taken as absent
              assert.ok(e instanceof UsageError, where);
              continue;
            }
            assert.equal(e.errno, errno, where);
            assert.equal(dev.mapRegion('BAR0').read32(0), 0x010000ed, where);
          } finally {
            dev.close();
          }
          assertClean(k, where);
        }
      }
    });

    test('enableIrqs: every errno at GET_IRQ_INFO, the third eventfd and SET_IRQS', () => {
      for (const step of ['VFIO_DEVICE_GET_IRQ_INFO', 'eventfd', 'VFIO_DEVICE_SET_IRQS'] as const) {
        for (const errno of ERRNOS) {
          const k = r.host({ devices: [{ address: EDU, irqs: { msix: 3 } }] });
          const dev = openDevice(EDU, { kernel: k });
          const where = `${step} ${errno}`;
          if (step === 'eventfd') {
            // the third of three fails: the two made before it must be closed
            let n = 0;
            k.onCall((c) => {
              if (c.call === 'eventfd' && ++n === 3) k.failNext({ call: 'eventfd', errno });
            });
          } else if (step === 'VFIO_DEVICE_GET_IRQ_INFO') {
            // the third query is MSIX's
            let n = 0;
            k.onCall((c) => {
              if (c.requestName === step && ++n === 3) k.failNext({ request: VFIO.DEVICE_GET_IRQ_INFO, errno });
            });
          } else {
            k.failNext({ request: VFIO.DEVICE_SET_IRQS, errno });
          }
          let error: unknown;
          try {
            try {
              dev.enableIrqs('MSIX');
            } catch (e) {
              error = e;
            }
            assert.ok(error !== undefined, `${where}: enabled`);
            if (step === 'VFIO_DEVICE_GET_IRQ_INFO' && errno === 'EINVAL') {
              // vfio-pci's answer for an index the device lacks: MSIX is taken as absent
              assert.ok(error instanceof UsageError, `${where}: ${String(error)}`);
            } else {
              assert.ok(error instanceof VfioError && error.errno === errno, `${where}: ${String(error)}`);
            }
            assert.equal(eventfds(k), 0, `${where}: eventfds left`);
            assert.equal(k.irqState(EDU).type, 'none', where);
            // the device is still usable
            dev.enableIrqs('MSIX').disable();
          } finally {
            dev.close();
          }
          assertClean(k, where);
        }
      }
    });

    test('a failed eventfd() is reported as a VfioError, not a raw system error', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      try {
        k.failNext({ call: 'eventfd', errno: 'EMFILE' });
        catchError(() => dev.enableIrqs('MSI'), VfioError);
      } finally {
        dev.close();
      }
    });
  });
}
