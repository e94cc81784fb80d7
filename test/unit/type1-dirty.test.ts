// Type1's dirty page tracking on a legacy context, against the fake type1 (vfio_iommu_type1.c's
// checks and what it can know): edu behind a real IOMMU pins nothing, so all its mapped pages read
// dirty; an mdev-only container reads clear; bitmaps cover whole mappings; unmap hands back the last
// bitmap; tracking goes with the container's IOMMU. test/vm/type1-dirty.test.ts proves it on real kernels.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { allocDmaBuffer, ContainerContext, createContext, openDevice, type DmaBuffer } from '../../src/index.js';
import { DirtyTrackingError, KernelError, UnsupportedError, UsageError } from '../../src/errors.js';
import { EDU, FakeKernel } from '../fake-kernel.js';
import { catchError } from '../helpers.js';
import { assertClean } from '../devices.js';
import { VFIO } from '../../src/uapi/vfio.js';

const MTTY = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
const legacy = (k: FakeKernel): ContainerContext => {
  const ctx = createContext('legacy', { kernel: k });
  assert.ok(ctx instanceof ContainerContext);
  return ctx;
};

describe('type1 dirty page tracking (legacy context)', () => {
  test('edu behind the IOMMU: every mapped page reads dirty on every report; unmap returns the last bitmap', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU }] });
    using ctx = legacy(k);
    using dev = openDevice(EDU, { kernel: k, context: ctx });
    const bufs: DmaBuffer[] = [allocDmaBuffer(0x4000, { kernel: k }), allocDmaBuffer(0x2000, { kernel: k })];
    const [a, b] = bufs.map((x) => ctx.map(x));
    const tracker = ctx.startDirtyTracking();
    assert.equal(ctx.dirtyTracker, tracker);
    assert.equal(tracker.pageSize, 4096n);
    assert.ok(tracker.maxBitmapBytes > 0n);
    assert.deepEqual(tracker.reportAll().map((x) => [x.iova, x.pages, x.dirtyCount]), [[a!.iova, 4, 4], [b!.iova, 2, 2]]);
    assert.equal(tracker.report(a!).dirtyCount, 4, 'read again: still dirty (the IOMMU cannot tell)');
    // a range over both mappings, with the gap between them clear
    const span = tracker.report({ iova: a!.iova, length: b!.iova + b!.size - a!.iova });
    assert.equal(span.dirtyCount, 6);
    const last = tracker.unmap(b!);
    assert.deepEqual([last.iova, last.dirtyCount], [b!.iova, 2]);
    assert.deepEqual(ctx.mappings(), [a], 'the tracker\'s unmap is the context\'s');
    assert.equal(bufs[1]!.mappings, 0);
    tracker.stop();
    assert.equal(ctx.dirtyTracker, null);
    assert.equal(catchError(() => tracker.report(a!), DirtyTrackingError).reason, 'not-started');
    ctx.unmap(a!);
    for (const x of bufs) x.free();
    assert.ok(dev);
  });

  test('bitmaps cover whole mappings at the IOMMU\'s page size: a cut mapping and an unaligned range, by reason', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU }] });
    using ctx = legacy(k);
    using _dev = openDevice(EDU, { kernel: k, context: ctx });
    const buf = allocDmaBuffer(0x4000, { kernel: k });
    const m = ctx.map(buf);
    using tracker = ctx.startDirtyTracking();
    const cut = catchError(() => tracker.report({ iova: m.iova + 0x1000n, length: 0x1000n }), DirtyTrackingError);
    assert.deepEqual([cut.reason, cut.errno, cut.step], ['partial-mapping', 'EINVAL', 'VFIO_IOMMU_DIRTY_PAGES']);
    assert.match(cut.message, /a bitmap covers whole mappings/);
    assert.equal(catchError(() => tracker.report({ iova: m.iova, length: 0x800n }), DirtyTrackingError).reason, 'unaligned');
    assert.match(catchError(() => ctx.startDirtyTracking(), UsageError).message, /already tracks/);
    ctx.unmap(m);
    buf.free();
  });

  test('an mdev-only container: nothing pinned, nothing dirty', () => {
    const k = FakeKernel.host({ kernel: 'stock', iommu: 'none', mdevs: [{ uuid: MTTY }] });
    using dev = openDevice(MTTY, { kernel: k, route: 'legacy' });
    const ctx = dev.context as ContainerContext;
    const buf = allocDmaBuffer(0x8000, { kernel: k });
    const m = ctx.map(buf);
    using tracker = ctx.startDirtyTracking();
    assert.deepEqual([tracker.report(m).pages, tracker.report(m).dirtyCount], [8, 0]);
    assert.equal(tracker.unmap(m).dirtyCount, 0);
    buf.free();
  });

  test('the tracking goes with the container: its last group leaving, or its close; what cannot track says so', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU }] });
    const ctx = legacy(k);
    assert.match(catchError(() => ctx.startDirtyTracking(), UnsupportedError).message, /no device has joined it yet/);
    const dev = openDevice(EDU, { kernel: k, context: ctx });
    const tracker = ctx.startDirtyTracking();
    dev.close(); // the last group leaves: type1 is released, tracking and all
    assert.equal(tracker.stopped, true);
    assert.equal(ctx.dirtyTracker, null);
    const again = openDevice(EDU, { kernel: k, context: ctx });
    const second = ctx.startDirtyTracking();
    ctx.close();
    assert.equal(second.stopped, true);
    second[Symbol.dispose](); // nothing left to stop: no throw
    assert.ok(again.closed);
    assertClean(k);
  });

  test('the bitmap\'s memory cannot be had (ENOMEM): a KernelError naming the allocation, for a report and for an unmap (which then leaves the mapping)', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU }] });
    using ctx = legacy(k);
    using _dev = openDevice(EDU, { kernel: k, context: ctx });
    const buf = allocDmaBuffer(0x2000, { kernel: k });
    const m = ctx.map(buf);
    using tracker = ctx.startDirtyTracking();
    for (const fn of [() => tracker.report(m), () => tracker.unmap(m)]) {
      k.failNext({ call: 'allocDma', errno: 'ENOMEM' });
      const e = catchError(fn, KernelError);
      assert.deepEqual([e.errno, e.step], ['ENOMEM', 'allocate the dirty bitmap']);
    }
    assert.deepEqual(ctx.mappings(), [m], 'nothing was unmapped');
    assert.equal(tracker.unmap(m).dirtyCount, 2);
    buf.free();
  });

  test('a refusal other than the range checks is a KernelError naming the request', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU }] });
    using ctx = legacy(k);
    using _dev = openDevice(EDU, { kernel: k, context: ctx });
    k.failNext({ call: 'ioctl', request: VFIO.IOMMU_DIRTY_PAGES, errno: 'ENOMEM' });
    const e = catchError(() => ctx.startDirtyTracking(), KernelError);
    assert.deepEqual([e.errno, e.step], ['ENOMEM', 'VFIO_IOMMU_DIRTY_PAGES']);
    assert.equal(ctx.dirtyTracker, null);
  });
});
