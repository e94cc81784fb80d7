// Device DMA logging against the fake kernel's mtty model (the core's input checks as vfio_main.c has
// them; a device that logs the writes a test tells it of), on both routes: start over ranges or over
// the context's mappings, the bitmap a report gives and clears, the refusals by reason, one log at a
// time, and the log stopped at the device's close. test/vm/dma-logging.test.ts proves it on the real mtty.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { allocDmaBuffer, DirtyBitmap, openDevice } from '../../src/index.js';
import { ClosedError, DirtyTrackingError, KernelError, UnsupportedError, UsageError } from '../../src/errors.js';
import { EDU, FakeKernel } from '../fake-kernel.js';
import { catchError } from '../helpers.js';
import { DEVICE_ROUTES, assertClean } from '../devices.js';
import { VFIO } from '../../src/uapi/vfio.js';

const MTTY = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
const NO_LOG = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1002';
const MiB = 1n << 20n;

for (const r of DEVICE_ROUTES) {
  describe(`device DMA logging (${r.name})`, () => {
    const host = (): FakeKernel => r.host({ iommu: 'none', devices: [{ address: EDU }], mdevs: [{ uuid: MTTY }, { uuid: NO_LOG, dmaLogging: false }] });

    test('start over two ranges, the device writes, a report gives one bit per page and clears them', () => {
      const k = host();
      using dev = openDevice(MTTY, { kernel: k });
      assert.equal(dev.dmaLogging.supported(), true);
      const log = dev.dmaLogging.start([{ iova: 0n, length: MiB }, { iova: 16n * MiB, length: 64n * 1024n }]);
      assert.equal(k.migration(MTTY).loggingStarted, true);
      assert.equal(log.pageSize, 4096n);
      assert.equal(dev.dmaLogging.active, log);
      k.migration(MTTY).deviceWrote(0x3000n, 0x2000n); // pages 3 and 4
      k.migration(MTTY).deviceWrote(16n * MiB + 0x1ff0n, 0x20n); // straddles pages 1 and 2 of the second range
      k.migration(MTTY).deviceWrote(8n * MiB, 4096n); // outside every range: not logged
      const [first, second] = log.reportAll();
      assert.ok(first instanceof DirtyBitmap);
      assert.deepEqual([first!.pages, first!.dirtyCount, first!.dirtyPages()], [256, 2, [0x3000n, 0x4000n]]);
      assert.equal(first!.isDirty(0x3fffn), true);
      assert.equal(first!.isDirty(0x5000n), false);
      assert.deepEqual(second!.dirtyPages(), [16n * MiB + 0x1000n, 16n * MiB + 0x2000n]);
      assert.deepEqual(log.reportAll().map((b) => b.dirtyCount), [0, 0], 'a report clears what it read');
      log.stop();
      assert.equal(k.migration(MTTY).loggingStarted, false);
      assert.equal(dev.dmaLogging.active, null);
      log.stop(); // idempotent
    });

    test('a coarser report page size: the driver folds the 4 KiB log into 64 KiB bits', () => {
      const k = host();
      using dev = openDevice(MTTY, { kernel: k });
      using log = dev.dmaLogging.start([{ iova: 0n, length: MiB }]);
      k.migration(MTTY).deviceWrote(0x11000n, 8n);
      k.migration(MTTY).deviceWrote(0x1f000n, 8n);
      const bits = log.report(undefined, { pageSize: 0x10000 });
      assert.deepEqual([bits.pageSize, bits.pages, bits.dirtyPages()], [0x10000n, 16, [0x10000n]]);
      assert.equal(bits.bits.length, 8, 'whole u64 words, as the kernel writes them');
    });

    test('the page size the device chose is the log\'s, and start() without ranges logs the context\'s mappings', () => {
      const k = host();
      k.migration(MTTY).logPageSize = 0x10000n;
      using dev = openDevice(MTTY, { kernel: k });
      const buf = allocDmaBuffer(0x20000, { kernel: k });
      const m = dev.context.map(buf);
      try {
        using log = dev.dmaLogging.start();
        assert.equal(log.pageSize, 0x10000n);
        assert.deepEqual(log.ranges, [{ iova: m.iova, length: m.size }]);
        k.migration(MTTY).deviceWrote(m.iova + 0x100n, 4n);
        assert.deepEqual(log.report().dirtyPages(), [m.iova]);
      } finally {
        dev.context.unmap(m);
        buf.free();
      }
    });

    test('the kernel\'s input checks, each a DirtyTrackingError with its reason; the device is not left logging', () => {
      const k = host();
      using dev = openDevice(MTTY, { kernel: k });
      const refused = (ranges: { iova: bigint; length: bigint }[], pageSize?: number): DirtyTrackingError => {
        const e = catchError(() => dev.dmaLogging.start(ranges, pageSize === undefined ? {} : { pageSize }), DirtyTrackingError);
        assert.equal(e.exitCode, 7);
        assert.equal(e.step, 'VFIO_DEVICE_FEATURE_DMA_LOGGING_START');
        assert.equal(k.migration(MTTY).loggingStarted, false);
        assert.equal(dev.dmaLogging.active, null);
        return e;
      };
      assert.deepEqual([refused([]).reason, refused([]).errno], ['no-ranges', 'EINVAL']);
      const many = Array.from({ length: 257 }, (_, i) => ({ iova: BigInt(i) * MiB, length: 4096n }));
      assert.deepEqual([refused(many).reason, refused(many).errno], ['too-many-ranges', 'E2BIG']);
      assert.equal(refused([{ iova: 0x800n, length: 4096n }]).reason, 'unaligned');
      assert.equal(refused([{ iova: 0n, length: 0x10000n }], 0x20000).reason, 'unaligned');
      assert.equal(refused([{ iova: 0n, length: 0x2000n }, { iova: 0x1000n, length: 0x1000n }]).reason, 'overlapping');
      const e = refused([{ iova: (1n << 64n) - 4096n, length: 8192n }]);
      assert.deepEqual([e.reason, e.errno], ['overflow', 'EOVERFLOW']);
      assert.match(e.message, /past the end of the address space/);
      assert.equal(e.toJSON().reason, 'overflow');
      // 256 ranges is the limit, and fine
      using log = dev.dmaLogging.start(many.slice(0, 256));
      assert.equal(log.ranges.length, 256);
    });

    test('a report the kernel refuses: page size not a power of two or under 4 KiB; a report after stop()', () => {
      const k = host();
      using dev = openDevice(MTTY, { kernel: k });
      const log = dev.dmaLogging.start([{ iova: 0n, length: MiB }]);
      for (const pageSize of [2048, 12288]) {
        const e = catchError(() => log.report(undefined, { pageSize }), DirtyTrackingError);
        assert.deepEqual([e.reason, e.errno], ['page-size', 'EINVAL']);
      }
      log.stop();
      assert.equal(catchError(() => log.report(), DirtyTrackingError).reason, 'not-started');
    });

    test('one log at a time; no range to pick with several; a device without logging; edu (vfio-pci) has none', () => {
      const k = host();
      using dev = openDevice(MTTY, { kernel: k });
      using log = dev.dmaLogging.start([{ iova: 0n, length: MiB }, { iova: 2n * MiB, length: MiB }]);
      assert.match(catchError(() => dev.dmaLogging.start([{ iova: 4n * MiB, length: MiB }]), UsageError).message, /already logging/);
      assert.match(catchError(() => log.report(), UsageError).message, /has 2 ranges/);
      const withIommu = r.host({ devices: [{ address: EDU }] });
      for (const [name, kernel] of [[NO_LOG, k], [EDU, withIommu]] as const) {
        using other = openDevice(name, { kernel });
        assert.equal(other.dmaLogging.supported(), false);
        const e = catchError(() => other.dmaLogging.start([{ iova: 0n, length: MiB }]), UnsupportedError);
        assert.equal(e.errno, 'ENOTTY');
        assert.match(e.message, /has no DMA logging/);
      }
    });

    test('closing the device stops its log first; the facet of a closed device is a ClosedError', () => {
      const k = host();
      const dev = openDevice(MTTY, { kernel: k });
      const log = dev.dmaLogging.start([{ iova: 0n, length: MiB }]);
      dev.close();
      assert.equal(k.migration(MTTY).loggingStarted, false, 'DMA_LOGGING_STOP went before the fd closed');
      assert.equal(log.stopped, true);
      catchError(() => log.report(), ClosedError);
      catchError(() => dev.dmaLogging, ClosedError);
      assertClean(k);
    });

    test('the bitmap\'s memory cannot be had (ENOMEM): a KernelError naming the allocation, and the log still runs', () => {
      const k = host();
      using dev = openDevice(MTTY, { kernel: k });
      using log = dev.dmaLogging.start([{ iova: 0n, length: MiB }]);
      k.failNext({ call: 'allocDma', errno: 'ENOMEM' });
      const e = catchError(() => log.report(), KernelError);
      assert.deepEqual([e.errno, e.step], ['ENOMEM', 'allocate the dirty bitmap']);
      assert.equal(log.report().pages, 256);
    });

    test('a refusal other than the input checks stays a KernelError naming the feature', () => {
      const k = host();
      using dev = openDevice(MTTY, { kernel: k });
      k.failNext({ call: 'ioctl', request: VFIO.DEVICE_FEATURE, errno: 'ENOMEM' });
      const e = catchError(() => dev.dmaLogging.start([{ iova: 0n, length: MiB }]), KernelError);
      assert.deepEqual([e.errno, e.step], ['ENOMEM', 'VFIO_DEVICE_FEATURE_DMA_LOGGING_START']);
      assert.equal(dev.dmaLogging.active, null);
    });
  });
}
