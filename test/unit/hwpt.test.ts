// iommufd HW page tables against the fake (hw_pagetable.c's checks, iommufd_get_hw_info): the IOMMU's
// hardware info by type, a HWPT allocated over the context's IOAS with edu attached to it and its DMA
// going through, dirty tracking where the IOMMU has it (edu's DMA writes set the bits), and the
// refusals where it has not. test/vm/hwpt.test.ts proves what the test bed's IOMMUs allow.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { allocDmaBuffer, DirtyTrackingError, HwPagetable, IommufdContext, KernelError, openDevice, PCI_COMMAND, UnsupportedError, UsageError, type RegionMapping } from '../../src/index.js';
import { EDU, EDU_DMA, FakeKernel } from '../fake-kernel.js';
import { FAKE_VTD } from '../fake/hwpt.js';
import { IOMMU } from '../../src/uapi/iommufd.js';
import { catchError } from '../helpers.js';
import { assertClean } from '../devices.js';
import { eduDma } from '../dma.js';

const MTTY = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';

/** edu writes `count` bytes of its buffer to RAM at `dst` */
const eduWrite = (bar: RegionMapping, dst: bigint, count: number): Promise<void> => eduDma(bar, EDU_DMA.BUFFER, dst, count, EDU_DMA.TO_RAM);

describe('iommufd HW page tables', () => {
  test('hardware info: VT-d with its registers, virtio-iommu as NONE, the dirty tracking capability', () => {
    for (const [options, want] of [
      [{}, { type: 'INTEL_VTD', capabilities: [], maxPasidLog2: 0, vtd: { capReg: FAKE_VTD.cap, ecapReg: FAKE_VTD.ecap } }],
      [{ iommuDirtyTracking: true }, { type: 'INTEL_VTD', capabilities: ['DIRTY_TRACKING'], maxPasidLog2: 0, vtd: { capReg: FAKE_VTD.cap, ecapReg: FAKE_VTD.ecap } }],
      [{ iommu: 'virtio' as const, allowUnsafeInterrupts: true }, { type: 'NONE', capabilities: [], maxPasidLog2: 0, vtd: null }],
    ] as const) {
      const k = FakeKernel.host(options);
      using dev = openDevice(EDU, { kernel: k });
      const ctx = dev.context as IommufdContext;
      assert.deepEqual(ctx.hwInfo(dev), want);
    }
  });

  test('a HWPT over the IOAS: edu attached to it DMAs through the same mappings; back to the IOAS; destroy', async () => {
    const k = FakeKernel.host();
    const dev = openDevice(EDU, { kernel: k });
    const ctx = dev.context as IommufdContext;
    const buf = allocDmaBuffer(0x4000, { kernel: k });
    const m = ctx.map(buf, { limit: 1n << 28n });
    const hwpt = ctx.allocHwpt(dev);
    assert.ok(hwpt instanceof HwPagetable);
    assert.notEqual(hwpt.id, dev.report.ids.hwpt, 'not the automatic one');
    ctx.attach(dev, hwpt);
    assert.deepEqual([...hwpt.attached], [EDU]);
    dev.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
    const bar = dev.mapRegion('BAR0');
    k.edu(EDU).buffer.fill(0x5a, 0, 64);
    await eduWrite(bar, m.iova + 0x1000n, 64);
    assert.equal(buf.bytes[0x1000], 0x5a, 'the DMA went through the HWPT to the IOAS\'s mapping');
    assert.match(catchError(() => hwpt.destroy(), UsageError).message, /still has 0000:00:10\.0 attached/);
    ctx.attach(dev, 'ioas');
    assert.equal(hwpt.attached.size, 0);
    hwpt.destroy();
    assert.equal(hwpt.destroyed, true);
    assert.deepEqual(ctx.hwPagetables, []);
    assert.match(catchError(() => ctx.attach(dev, hwpt), UsageError).message, /not a live HWPT/);
    bar.close();
    ctx.unmap(m);
    dev.close();
    buf.free();
    assertClean(k);
  });

  test('dirty tracking where the IOMMU has it: edu\'s DMA writes read back dirty, cleared by a read unless clear: false', async () => {
    const k = FakeKernel.host({ iommuDirtyTracking: true });
    using dev = openDevice(EDU, { kernel: k });
    const ctx = dev.context as IommufdContext;
    const buf = allocDmaBuffer(0x8000, { kernel: k });
    const m = ctx.map(buf, { iova: 0x100000n }); // aligned to the 32 KiB bitmap pages below
    try {
      using hwpt = ctx.allocHwpt(dev, { dirtyTracking: true });
      ctx.attach(dev, hwpt);
      hwpt.startDirtyTracking();
      assert.equal(hwpt.dirtyTracking, true);
      dev.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
      using bar = dev.mapRegion('BAR0');
      await eduWrite(bar, m.iova + 0x2ff0n, 0x20); // straddles pages 2 and 3
      const range = { iova: m.iova, length: m.size };
      assert.deepEqual(hwpt.dirtyBitmap(range, { clear: false }).dirtyPages(), [m.iova + 0x2000n, m.iova + 0x3000n]);
      assert.deepEqual(hwpt.dirtyBitmap(range).dirtyPages(), [m.iova + 0x2000n, m.iova + 0x3000n], 'NO_CLEAR left them');
      assert.equal(hwpt.dirtyBitmap(range).dirtyCount, 0, 'the read before cleared them');
      await eduWrite(bar, m.iova + 0x7000n, 8);
      assert.deepEqual(hwpt.dirtyBitmap(range, { pageSize: 0x8000 }).dirtyPages(), [m.iova], 'one bit per 32 KiB');
      k.failNext({ call: 'allocDma', errno: 'ENOMEM' });
      const nomem = catchError(() => hwpt.dirtyBitmap(range), KernelError);
      assert.deepEqual([nomem.errno, nomem.step], ['ENOMEM', 'allocate the dirty bitmap'], 'the bitmap\'s memory cannot be had: a KernelError');
      const e = catchError(() => hwpt.dirtyBitmap({ iova: m.iova + 0x800n, length: 0x1000n }), DirtyTrackingError);
      assert.deepEqual([e.reason, e.errno, e.step], ['unaligned', 'EINVAL', 'IOMMU_HWPT_GET_DIRTY_BITMAP']);
      hwpt.stopDirtyTracking();
      ctx.attach(dev, 'ioas');
    } finally {
      ctx.unmap(m);
      buf.free();
    }
  });

  test('no dirty tracking in the IOMMU: the DIRTY_TRACKING HWPT is refused naming its capabilities; a plain HWPT has none', () => {
    const k = FakeKernel.host();
    using dev = openDevice(EDU, { kernel: k });
    const ctx = dev.context as IommufdContext;
    const e = catchError(() => ctx.allocHwpt(dev, { dirtyTracking: true }), UnsupportedError);
    assert.deepEqual([e.errno, e.step], [null, 'IOMMU_GET_HW_INFO'], 'not asked for: the hardware said it cannot');
    assert.ok(!k.calls.some((c) => c.request === IOMMU.HWPT_ALLOC), 'no HWPT_ALLOC was issued');
    assert.match(e.message, /has no dirty tracking \(IOMMU_GET_HW_INFO capabilities: none\)/);
    using plain = ctx.allocHwpt(dev);
    assert.equal(catchError(() => plain.startDirtyTracking(), UnsupportedError).errno, 'EOPNOTSUPP');
    assert.equal(catchError(() => plain.dirtyBitmap({ iova: 0n, length: 0x1000n }), UnsupportedError).step, 'IOMMU_HWPT_GET_DIRTY_BITMAP');
  });

  test('virtio-iommu: a HWPT allocated apart over an IOAS with mappings is refused (EADDRINUSE), explained', () => {
    const k = FakeKernel.host({ iommu: 'virtio', allowUnsafeInterrupts: true });
    using dev = openDevice(EDU, { kernel: k });
    const ctx = dev.context as IommufdContext;
    const buf = allocDmaBuffer(4096, { kernel: k });
    const m = ctx.map(buf);
    const e = catchError(() => ctx.allocHwpt(dev), UnsupportedError);
    assert.deepEqual([e.errno, e.step], ['EADDRINUSE', 'IOMMU_HWPT_ALLOC']);
    assert.match(e.message, /only when a device attaches/);
    assert.deepEqual(ctx.hwPagetables, []);
    ctx.unmap(m);
    buf.free();
  });

  test('an mdev has no IOMMU of its own: hardware info and HWPT_ALLOC say so', () => {
    const k = FakeKernel.host({ iommu: 'none', mdevs: [{ uuid: MTTY }] });
    using dev = openDevice(MTTY, { kernel: k, route: 'iommufd' });
    const ctx = dev.context as IommufdContext;
    for (const fn of [() => ctx.hwInfo(dev), () => ctx.allocHwpt(dev)]) {
      assert.match(catchError(fn, UnsupportedError).message, /has no IOMMU of its own/);
    }
  });

  test('the context\'s close frees its HWPTs; a device\'s close detaches it', () => {
    const k = FakeKernel.host();
    const dev = openDevice(EDU, { kernel: k });
    const ctx = dev.context as IommufdContext;
    const hwpt = ctx.allocHwpt(dev);
    ctx.attach(dev, hwpt);
    dev.close();
    assert.equal(hwpt.destroyed, true, 'the device\'s own context went with it');
    assert.equal(hwpt.attached.size, 0);
    hwpt[Symbol.dispose]();
    assertClean(k);
  });
});
