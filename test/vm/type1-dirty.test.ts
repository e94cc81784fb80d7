// Type1's dirty page tracking on real kernels (a legacy context): edu behind intel-iommu pins nothing,
// so type1 reports every mapped page dirty on every read (num_non_pinned_groups); the real mtty's
// container reports clear; bitmaps cover whole mappings; unmap hands back the last one.
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { allocDmaBuffer, ContainerContext, createContext, DirtyTrackingError, openDevice, PCI_COMMAND, type DmaBuffer } from '../../src/index.js';
import { CASE, EDU, EDU_BUFFER, eduDma } from './helpers.js';

const MTTY = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1005'; // an mtty-2 (migration.test.ts creates it too)

test('type1 dirty pages with edu: after edu\'s DMA, every mapped page dirty on each report, whole mappings only, unmap returns the last bitmap', { skip: !['stock-6.1-intel', 'stock-6.12-intel'].includes(CASE) && 'stock kernels' }, async () => {
  const ctx = createContext('legacy');
  assert.ok(ctx instanceof ContainerContext);
  const bufs: DmaBuffer[] = [];
  try {
    using dev = openDevice(EDU, { context: ctx });
    bufs.push(allocDmaBuffer(0x4000), allocDmaBuffer(0x2000));
    const [a, b] = bufs.map((x) => ctx.map(x, { limit: 1n << 28n }));
    using tracker = ctx.startDirtyTracking();
    assert.equal(tracker.pageSize, 4096n);
    assert.equal(tracker.maxBitmapBytes, 0x10000000n, 'DIRTY_BITMAP_SIZE_MAX');
    // edu writes 64 bytes into the second page of a: the IOMMU records nothing type1 could read
    dev.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
    using bar = dev.mapRegion('BAR0');
    await eduDma(bar, EDU_BUFFER, a!.iova + 0x1000n, 64, true);
    dev.setCommand(0, PCI_COMMAND.MASTER);
    for (let round = 0; round < 2; round++) {
      assert.deepEqual(tracker.reportAll().map((x) => [x.pages, x.dirtyCount]), [[4, 4], [2, 2]], `round ${round}`);
    }
    const cut = (() => { try { tracker.report({ iova: a!.iova + 0x1000n, length: 0x1000n }); } catch (e) { return e; } return null; })();
    assert.ok(cut instanceof DirtyTrackingError && cut.reason === 'partial-mapping' && cut.errno === 'EINVAL', String(cut));
    const last = tracker.unmap(b!);
    assert.deepEqual([last.iova, last.pages, last.dirtyCount], [b!.iova, 2, 2]);
    assert.deepEqual(ctx.mappings(), [a]);
    tracker.stop();
    assert.throws(() => tracker.report(a!), (e: unknown) => e instanceof DirtyTrackingError && e.reason === 'not-started');
    ctx.unmap(a!);
  } finally {
    ctx.close();
    for (const x of bufs) x.free();
  }
});

test('type1 dirty pages in the real mtty\'s container: nothing pinned, nothing dirty', { skip: CASE !== 'iommufd-6.12-mtty' && 'mtty case only' }, () => {
  if (!fs.existsSync(`/sys/bus/mdev/devices/${MTTY}`)) fs.writeFileSync('/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create', MTTY);
  using dev = openDevice(MTTY, { route: 'legacy' });
  const ctx = dev.context;
  assert.ok(ctx instanceof ContainerContext);
  const buf = allocDmaBuffer(0x8000);
  try {
    const m = ctx.map(buf);
    using tracker = ctx.startDirtyTracking();
    const bits = tracker.report(m);
    assert.deepEqual([bits.pages, bits.dirtyCount], [8, 0]);
    assert.equal(tracker.unmap(m).dirtyCount, 0);
  } finally {
    dev.close();
    buf.free();
  }
});
