// Device DMA logging on real kernels: the real mtty (whose log_ops accept every request and log nothing,
// so each report is all clear) on both routes, through the core's input checks in vfio_main.c; and edu
// under vfio-pci, which has no log_ops (ENOTTY), on a stock and on our kernel.
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { allocDmaBuffer, DirtyTrackingError, openDevice, UnsupportedError, UsageError } from '../../src/index.js';
import { CASE, EDU } from './helpers.js';

const MTTY = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1005'; // an mtty-2 (migration.test.ts creates it too)
const MiB = 1n << 20n;

function ensureMtty(): void {
  if (!fs.existsSync(`/sys/bus/mdev/devices/${MTTY}`)) fs.writeFileSync('/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create', MTTY);
}

function refusal(fn: () => unknown): DirtyTrackingError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof DirtyTrackingError, `DirtyTrackingError, got ${String(e)}`);
    return e;
  }
  assert.fail('the kernel accepted it');
}

for (const route of ['iommufd', 'legacy'] as const) {
  test(`mtty's DMA log on the ${route} route: start over the context's mappings, an all-clear report, stop; the kernel's input checks by reason`, { skip: CASE !== 'iommufd-6.12-mtty' && 'mtty case only' }, () => {
    ensureMtty();
    using dev = openDevice(MTTY, { route });
    assert.equal(dev.route, route);
    assert.equal(dev.dmaLogging.supported(), true);
    const buf = allocDmaBuffer(0x10000);
    const m = dev.context.map(buf);
    try {
      const log = dev.dmaLogging.start();
      assert.deepEqual(log.ranges, [{ iova: m.iova, length: m.size }]);
      assert.equal(log.pageSize, 4096n, 'mtty_log_start keeps the page size asked');
      assert.throws(() => dev.dmaLogging.start([{ iova: 0n, length: MiB }]), UsageError, 'one log at a time');
      const bits = log.report();
      assert.deepEqual([bits.pages, bits.dirtyCount, bits.bits.length], [16, 0, 8]);
      assert.equal(log.report(undefined, { pageSize: 2n * MiB }).pages, 1, 'any power of two from 4 KiB reports');
      for (const pageSize of [2048, 12288]) {
        const e = refusal(() => log.report(undefined, { pageSize }));
        assert.deepEqual([e.reason, e.errno, e.step], ['page-size', 'EINVAL', 'VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT']);
      }
      log.stop();
      assert.equal(dev.dmaLogging.active, null);
    } finally {
      dev.context.unmap(m);
      buf.free();
    }
    // what vfio_ioctl_device_feature_logging_start checks before the driver sees anything
    const cases: [string, { iova: bigint; length: bigint }[], number, DirtyTrackingError['reason'], string][] = [
      ['no range', [], 4096, 'no-ranges', 'EINVAL'],
      ['257 ranges', Array.from({ length: 257 }, (_, i) => ({ iova: BigInt(i) * MiB, length: 4096n })), 4096, 'too-many-ranges', 'E2BIG'],
      ['an unaligned IOVA', [{ iova: 0x800n, length: 4096n }], 4096, 'unaligned', 'EINVAL'],
      ['a length short of the page size asked', [{ iova: 0n, length: 0x10000n }], 0x20000, 'unaligned', 'EINVAL'],
      ['overlapping ranges', [{ iova: 0n, length: 0x2000n }, { iova: 0x1000n, length: 0x1000n }], 4096, 'overlapping', 'EINVAL'],
      ['a range past 2^64', [{ iova: (1n << 64n) - 4096n, length: 8192n }], 4096, 'overflow', 'EOVERFLOW'],
    ];
    for (const [what, ranges, pageSize, reason, errno] of cases) {
      const e = refusal(() => dev.dmaLogging.start(ranges, { pageSize }));
      assert.deepEqual([e.reason, e.errno, e.step, e.exitCode], [reason, errno, 'VFIO_DEVICE_FEATURE_DMA_LOGGING_START', 7], what);
    }
    using all = dev.dmaLogging.start(Array.from({ length: 256 }, (_, i) => ({ iova: BigInt(i) * MiB, length: 4096n })));
    assert.equal(all.reportAll().length, 256, 'the 256 ranges a page holds are accepted');
  });
}

test('edu under vfio-pci has no DMA logging: PROBE and START answer ENOTTY, an UnsupportedError', { skip: !['stock-6.1-intel', 'iommufd-6.12-intel'].includes(CASE) && 'two cases' }, () => {
  using dev = openDevice(EDU);
  assert.equal(dev.dmaLogging.supported(), false);
  assert.throws(() => dev.dmaLogging.start([{ iova: 0n, length: MiB }]), (e: unknown) =>
    e instanceof UnsupportedError && e.errno === 'ENOTTY' && e.step === 'VFIO_DEVICE_FEATURE_DMA_LOGGING_START' && /has no DMA logging/.test(e.message));
});
