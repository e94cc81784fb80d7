// Device DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_*): the device itself records the pages it
// writes inside IOVA ranges it was given, and a report reads and clears that record as a bitmap. This
// is the dirty tracking a migration uses when the device, not the IOMMU, can tell (mlx5, pds; mtty's
// sample ops accept every request and log nothing). The uAPI allows one log at a time: a DmaLog owns it
// from start() until stop(), dispose or the device's close.
import { DirtyTrackingError, kernelRefused, onKernel, StepError, UnsupportedError, UsageError } from '../errors.js';
import { deviceFeatureProbe } from '../ioctl/device.js';
import { dmaLoggingReport, dmaLoggingStart, dmaLoggingStop, type IovaRange } from '../ioctl/migration.js';
import { hex } from '../dma/buffer.js';
import { readDirtyBitmap, type DirtyBitmap } from '../dma/dirty.js';
import type { DmaMapping } from '../dma/mappings.js';
import type { MigrationHost } from './migration.js';

/** A range to log: an IOVA range, or a mapping of the device's context. */
export type LogRange = { iova: bigint; length: bigint | number } | Pick<DmaMapping, 'iova' | 'size'>;

export interface DmaLoggingHost extends MigrationHost {
  /** the context's current mappings: what start() logs when given no ranges */
  mappings(): readonly Pick<DmaMapping, 'iova' | 'size'>[];
}

/** the most ranges the core guarantees (LOG_MAX_RANGES: the ranges that fit in one page) */
export const DMA_LOG_MAX_RANGES = 256;

const toRange = (r: LogRange): IovaRange => ({ iova: r.iova, length: 'size' in r ? r.size : BigInt(r.length) });

/** Why the kernel's input checks refused a START, read back from the request (they share EINVAL). */
function startRefusal(errno: string | null, ranges: readonly IovaRange[], pageSize: bigint): DirtyTrackingError['reason'] | null {
  if (errno === 'E2BIG') return 'too-many-ranges';
  if (errno === 'EOVERFLOW') return 'overflow';
  if (errno !== 'EINVAL') return null;
  if (ranges.length === 0) return 'no-ranges';
  const mask = pageSize - 1n;
  if (pageSize === 0n || ranges.some((r) => (r.iova & mask) !== 0n || (r.length & mask) !== 0n)) return 'unaligned';
  const sorted = [...ranges].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  if (sorted.some((r, i) => i > 0 && r.iova < sorted[i - 1]!.iova + sorted[i - 1]!.length)) return 'overlapping';
  return 'refused'; // the driver's own log_start
}

const REASON_TEXT: Record<DirtyTrackingError['reason'], string> = {
  'no-ranges': 'no IOVA range was given (the context has no mappings?)',
  'too-many-ranges': `more than the ${DMA_LOG_MAX_RANGES} ranges the kernel takes`,
  unaligned: 'a range\'s IOVA or length is not a multiple of the page size',
  overlapping: 'two ranges overlap',
  overflow: 'a range runs past the end of the address space',
  'page-size': 'the report page size must be a power of two, at least 4096',
  'partial-mapping': 'a bitmap covers whole mappings',
  'not-started': 'the log was stopped',
  refused: 'the driver refused it',
};

/** The device's DMA log while it runs: report() reads and clears it, stop() ends it. */
export class DmaLog implements Disposable {
  private isStopped = false;

  /** @internal DeviceDmaLogging.start() */
  constructor(
    private readonly host: DmaLoggingHost,
    /** the tracking granularity the device chose (it may differ from the one asked) */
    readonly pageSize: bigint,
    readonly ranges: readonly IovaRange[],
    private readonly onStop: (log: DmaLog) => void,
  ) {}

  get stopped(): boolean {
    return this.isStopped;
  }

  /**
   * Reads and clears the log for one range (default: each logged range, one bitmap each), one bit per
   * `pageSize` (default: the log's; any power of two from 4096 works, the driver replicates bits).
   * A failed report leaves the log in doubt: the uAPI says to treat all memory as dirty.
   */
  report(range?: LogRange, options: { pageSize?: bigint | number } = {}): DirtyBitmap {
    if (!range && this.ranges.length !== 1) throw new UsageError(`the log has ${this.ranges.length} ranges: name one, or call reportAll()`);
    return this.reportOne(range ? toRange(range) : this.ranges[0]!, BigInt(options.pageSize ?? this.pageSize));
  }

  /** One bitmap per logged range. */
  reportAll(options: { pageSize?: bigint | number } = {}): DirtyBitmap[] {
    return this.ranges.map((r) => this.reportOne(r, BigInt(options.pageSize ?? this.pageSize)));
  }

  private reportOne(range: IovaRange, pageSize: bigint): DirtyBitmap {
    this.host.assertOpen();
    if (this.isStopped) throw new DirtyTrackingError(`${this.host.name}: no DMA log to report: ${REASON_TEXT['not-started']}`, 'not-started');
    if (pageSize <= 0n || range.length <= 0n) throw new UsageError(`a report needs a positive page size and length (page size ${pageSize}, length ${range.length})`);
    // onKernel: the bitmap's own allocation may fail too (ENOMEM), as a KernelError
    return onKernel(this.host.name, () => readDirtyBitmap(this.host.calls(), this.host.kernel, range, pageSize, (address) => {
      try {
        dmaLoggingReport(this.host.calls(), this.host.deviceFd(), range, pageSize, address);
      } catch (e) {
        if (!(e instanceof StepError)) throw e;
        const reason = e.errno === 'EOVERFLOW' ? 'overflow' : e.errno === 'EINVAL' && (pageSize < 4096n || (pageSize & (pageSize - 1n)) !== 0n) ? 'page-size' : null;
        if (reason) throw new DirtyTrackingError(`${this.host.name} refused the DMA log report of ${hexRange(range)}: ${REASON_TEXT[reason]} (${e.errno})`, reason, e.details());
        throw kernelRefused(e, this.host.name);
      }
    }));
  }

  /** Stops the device's logging (idempotent). A refusal still leaves this log stopped. */
  stop(): void {
    if (this.isStopped) return;
    this.isStopped = true;
    this.onStop(this);
    onKernel(this.host.name, () => dmaLoggingStop(this.host.calls(), this.host.deviceFd()));
  }

  /** @internal the device closes: stop the log before its fd goes (the core leaves that to each driver's close) */
  stopQuietly(): void {
    try {
      this.stop();
    } catch (e) {
      this.host.log.warn({ err: e }, 'DMA logging stop at close failed');
    }
  }

  [Symbol.dispose](): void {
    if (!this.isStopped) this.stop();
  }
}

const hexRange = (r: IovaRange): string => `[${hex(r.iova)}, +${hex(r.length)})`;

export class DeviceDmaLogging {
  private log: DmaLog | null = null;
  private cachedSupport: boolean | undefined;

  /** @internal VfioDevice.dmaLogging */
  constructor(private readonly host: DmaLoggingHost) {}

  /** Whether the device's driver has DMA logging (the PROBE of DMA_LOGGING_START). */
  supported(): boolean {
    this.host.assertOpen();
    this.cachedSupport ??= onKernel(this.host.name, () => deviceFeatureProbe(this.host.calls(), this.host.deviceFd(), 'DMA_LOGGING_START', 'set'));
    return this.cachedSupport;
  }

  /** The running log, or null. */
  get active(): DmaLog | null {
    return this.log;
  }

  /**
   * Starts the device's DMA log over `ranges` (default: every mapping of its context), at `pageSize`
   * granularity (default 4096; the device may choose another, see DmaLog.pageSize). The kernel's input
   * checks answer as a DirtyTrackingError naming what was wrong; a device without logging as
   * UnsupportedError.
   */
  start(ranges?: readonly LogRange[], options: { pageSize?: bigint | number } = {}): DmaLog {
    this.host.assertOpen();
    if (this.log) throw new UsageError(`${this.host.name} is already logging its DMA: stop() that log first (the uAPI allows one)`);
    const list = (ranges ?? this.host.mappings()).map(toRange);
    const pageSize = BigInt(options.pageSize ?? 4096);
    let chosen: bigint;
    try {
      chosen = dmaLoggingStart(this.host.calls(), this.host.kernel, this.host.deviceFd(), pageSize, list).pageSize;
    } catch (e) {
      if (!(e instanceof StepError)) throw e;
      if (e.errno === 'ENOTTY') {
        throw new UnsupportedError(`${this.host.name} has no DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_START answers ENOTTY): track dirty pages in the IOMMU instead`, e.details());
      }
      const reason = startRefusal(e.errno, list, pageSize);
      if (reason) throw new DirtyTrackingError(`${this.host.name} refused to start DMA logging over ${list.length} range(s): ${REASON_TEXT[reason]} (${e.errno})`, reason, e.details());
      throw kernelRefused(e, this.host.name);
    }
    const log = new DmaLog(this.host, chosen, list, (l) => {
      if (this.log === l) this.log = null;
    });
    this.log = log;
    this.host.log.debug({ ranges: list.length, pageSize: chosen }, 'DMA logging started');
    return log;
  }

  /** @internal the device closes: a running log is stopped first (the core does not stop it on close) */
  shutdown(): void {
    this.log?.stopQuietly();
    this.log = null;
  }
}
