// iommufd's hardware page tables (HWPT) and what the IOMMU behind a device reports of itself. A bind
// attaches the device to the context's IOAS, and the kernel makes an automatic HWPT for it; a VMM
// that wants dirty tracking (or to pick the page table itself) allocates one over the same IOAS and
// attaches the device to it: the mappings stay the IOAS's. Dirty tracking needs an IOMMU that reports
// IOMMU_HW_CAP_DIRTY_TRACKING (VT-d with second-level A/D bits, AMD v1 with HD, SMMUv3 with HTTU);
// the test bed's emulated VT-d and virtio-iommu have none, so there the kernel refuses.
import { hex } from '../dma/buffer.js';
import { readDirtyBitmap, type DirtyBitmap } from '../dma/dirty.js';
import { DirtyTrackingError, kernelRefused, onKernel, StepError, UnsupportedError, UsageError } from '../errors.js';
import { getHwInfo, hwptGetDirtyBitmap, hwptSetDirtyTracking } from '../ioctl/hwpt.js';
import { destroy } from '../ioctl/iommufd.js';
import type { StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import { IOMMU_HW_CAP, IOMMU_HW_INFO_TYPE } from '../uapi/iommufd.js';

export type HwCapability = keyof typeof IOMMU_HW_CAP;

export interface IommuHwInfo {
  /** INTEL_VTD, or NONE for a driver that reports nothing of itself (virtio-iommu, AMD in 6.12) */
  type: keyof typeof IOMMU_HW_INFO_TYPE | `unknown ${number}`;
  capabilities: HwCapability[];
  maxPasidLog2: number;
  /** VT-d's capability and extended capability registers, as /sys/class/iommu/dmarN/intel-iommu/{cap,ecap} show them */
  vtd: { capReg: bigint; ecapReg: bigint } | null;
}

/** A device of an iommufd context, as the HWPT calls need it (VfioDevice is one). */
export interface HwptDevice {
  readonly name: string;
  readonly fd: number;
  readonly report: { ids: Record<string, number | string> };
}

export function decodeHwInfo(raw: ReturnType<typeof getHwInfo>): IommuHwInfo {
  const type = (Object.entries(IOMMU_HW_INFO_TYPE).find(([, n]) => n === raw.type)?.[0] ?? `unknown ${raw.type}`) as IommuHwInfo['type'];
  const capabilities = (Object.entries(IOMMU_HW_CAP) as [HwCapability, number][]).filter(([, bit]) => (raw.capabilities & BigInt(bit)) !== 0n).map(([n]) => n);
  return { type, capabilities, maxPasidLog2: raw.maxPasidLog2, vtd: raw.vtd };
}

/** What a HWPT needs of its IommufdContext. */
export interface HwptHost {
  readonly kernel: Kernel;
  readonly fd: number;
  steps(): StepCalls;
  assertOpen(): void;
  forget(hwpt: HwPagetable): void;
}

/** A paging HWPT this context allocated over its IOAS. */
export class HwPagetable implements Disposable {
  private isDestroyed = false;
  private tracking = false;

  /** @internal IommufdContext.allocHwpt() */
  constructor(
    private readonly host: HwptHost,
    readonly id: number,
    /** allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING */
    readonly dirtyCapable: boolean,
    /** the devices attached to it now (by name) */
    readonly attached = new Set<string>(),
  ) {}

  get destroyed(): boolean {
    return this.isDestroyed;
  }

  get dirtyTracking(): boolean {
    return this.tracking;
  }

  /** Turns dirty tracking on (IOMMU_HWPT_SET_DIRTY_TRACKING): from now on the IOMMU marks the pages DMA writes. */
  startDirtyTracking(): void {
    this.setTracking(true);
  }

  stopDirtyTracking(): void {
    this.setTracking(false);
  }

  /**
   * The pages written in [iova, iova+length) since the last read, one bit per `pageSize` (default
   * 4096); read and cleared unless `clear: false`. iova and length must be multiples of the page size.
   */
  dirtyBitmap(range: { iova: bigint; length: bigint }, options: { pageSize?: bigint | number; clear?: boolean } = {}): DirtyBitmap {
    this.check();
    const pageSize = BigInt(options.pageSize ?? 4096);
    if (range.length <= 0n || pageSize <= 0n) throw new UsageError(`a dirty bitmap needs a positive length and page size (got ${range.length}, ${pageSize})`);
    // onKernel: the bitmap's own allocation may fail too (ENOMEM), as a KernelError
    return onKernel(`HWPT ${this.id}`, () => readDirtyBitmap(this.host.steps(), this.host.kernel, range, pageSize, (address) => {
      try {
        hwptGetDirtyBitmap(this.host.steps(), this.host.fd, this.id, { ...range, pageSize, clear: options.clear ?? true }, address);
      } catch (e) {
        if (!(e instanceof StepError)) throw e;
        if (e.errno === 'EOPNOTSUPP') throw new UnsupportedError(`HWPT ${this.id} has no dirty tracking: allocate it with { dirtyTracking: true }`, e.details());
        const mask = pageSize - 1n;
        const reason = e.errno === 'EOVERFLOW' ? 'overflow' : e.errno === 'EINVAL' && ((range.iova & mask) !== 0n || (range.length & mask) !== 0n) ? 'unaligned' : null;
        if (reason) throw new DirtyTrackingError(`iommufd refused the dirty bitmap of [${hex(range.iova)}, +${hex(range.length)}) at ${pageSize}-byte pages (${e.errno})`, reason, e.details());
        throw kernelRefused(e, `HWPT ${this.id}`);
      }
    }));
  }

  /** Frees the HWPT (IOMMU_DESTROY); every device must have left it (attach them back to the IOAS). */
  destroy(): void {
    if (this.isDestroyed) return;
    if (this.attached.size > 0) throw new UsageError(`HWPT ${this.id} still has ${[...this.attached].join(', ')} attached: attach ${this.attached.size > 1 ? 'them' : 'it'} to the IOAS (or close ${this.attached.size > 1 ? 'them' : 'it'}) first`);
    this.host.assertOpen();
    onKernel(`HWPT ${this.id}`, () => destroy(this.host.steps(), this.host.fd, this.id));
    this.lost();
  }

  /** @internal the context closed: the kernel freed the HWPT with it */
  lost(): void {
    this.isDestroyed = true;
    this.host.forget(this);
  }

  [Symbol.dispose](): void {
    if (!this.isDestroyed && this.attached.size === 0) this.destroy();
  }

  private setTracking(enable: boolean): void {
    this.check();
    try {
      hwptSetDirtyTracking(this.host.steps(), this.host.fd, this.id, enable);
    } catch (e) {
      if (e instanceof StepError && e.errno === 'EOPNOTSUPP') {
        throw new UnsupportedError(`HWPT ${this.id} has no dirty tracking: ${this.dirtyCapable ? 'its IOMMU domain has no dirty ops' : 'allocate it with { dirtyTracking: true }'}`, e.details());
      }
      throw e instanceof StepError ? kernelRefused(e, `HWPT ${this.id}`) : e;
    }
    this.tracking = enable;
  }

  private check(): void {
    this.host.assertOpen();
    if (this.isDestroyed) throw new UsageError(`HWPT ${this.id} was destroyed`);
  }
}

/** IOMMU_GET_HW_INFO of a bound device, decoded. */
export function readHwInfo(calls: StepCalls, kernel: Kernel, iommufd: number, device: HwptDevice): IommuHwInfo {
  try {
    return decodeHwInfo(getHwInfo(calls, kernel, iommufd, devidOf(device)));
  } catch (e) {
    throw explainDeviceStep(e, device);
  }
}

export function devidOf(device: HwptDevice): number {
  const devid = device.report.ids.devid;
  if (typeof devid !== 'number') throw new UsageError(`${device.name} was not bound through iommufd`);
  return devid;
}

/** An emulated device (an mdev) is bound as an access, not a device: iommufd finds no device by its id. */
export function explainDeviceStep(e: unknown, device: HwptDevice): unknown {
  if (!(e instanceof StepError)) return e;
  if (e.errno === 'ENOENT') return new UnsupportedError(`${device.name} has no IOMMU of its own (an emulated device, such as an mdev): ${e.step} answers ENOENT`, e.details());
  return kernelRefused(e, device.name);
}
