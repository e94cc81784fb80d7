// Type1's dirty page tracking on a legacy context: the container's IOMMU driver keeps a bitmap per
// mapping while tracking is on, and hands it back on request (GET_BITMAP, which must cover whole
// mappings) or as a mapping is unmapped. What it can know: pages a VFIO driver pinned or wrote through
// vfio_dma_rw (an mdev's DMA); a device behind a real IOMMU pins nothing, so while one is in the
// container every mapped page reads dirty, on every report (vfio_iommu_type1.c, update_user_bitmap).
import { hex } from '../dma/buffer.js';
import { bitmapBytes, readDirtyBitmap, type DirtyBitmap } from '../dma/dirty.js';
import type { DmaMapping } from '../dma/mappings.js';
import { DirtyTrackingError, kernelRefused, onKernel, StepError, UsageError } from '../errors.js';
import { type1DirtyPages, type1GetDirtyBitmap, type1UnmapWithBitmap, type BitmapTarget } from '../ioctl/dirty-pages.js';
import type { StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';

/** What a tracker needs of its ContainerContext. */
export interface Type1DirtyHost {
  readonly kernel: Kernel;
  readonly fd: number;
  steps(): StepCalls;
  mappings(): DmaMapping[];
  /** unmaps through `raw` and forgets the mapping as unmap() would */
  unmapWith(mapping: DmaMapping, raw: (iova: bigint, size: bigint) => void): void;
  assertOpen(): void;
}

export class Type1DirtyTracker implements Disposable {
  private isStopped = false;

  /** @internal ContainerContext.startDirtyTracking() */
  constructor(
    private readonly host: Type1DirtyHost,
    /** the bitmap granularity: type1 reports only at its smallest IOMMU page size */
    readonly pageSize: bigint,
    /** the largest bitmap one request may ask for (DIRTY_BITMAP_SIZE_MAX) */
    readonly maxBitmapBytes: bigint,
    private readonly onStop: (t: Type1DirtyTracker) => void,
  ) {}

  get stopped(): boolean {
    return this.isStopped;
  }

  /**
   * The dirty bitmap of a mapping, or of a range covering whole mappings (GET_BITMAP). Reading clears
   * what the kernel can clear: pages still pinned stay dirty.
   */
  report(target: DmaMapping | { iova: bigint; length: bigint }): DirtyBitmap {
    const size = 'size' in target ? target.size : target.length;
    return this.withBitmap(target.iova, size, 'VFIO_IOMMU_DIRTY_PAGES', (bitmap) =>
      type1GetDirtyBitmap(this.host.steps(), this.host.fd, target.iova, size, bitmap));
  }

  /** One bitmap per mapping of the context. */
  reportAll(): DirtyBitmap[] {
    return this.host.mappings().map((m) => this.report(m));
  }

  /** Unmaps a mapping of the context and returns its last bitmap (UNMAP_DMA with GET_DIRTY_BITMAP). */
  unmap(mapping: DmaMapping): DirtyBitmap {
    if (!this.host.mappings().includes(mapping)) throw new UsageError(`nothing of this context is mapped at IOVA ${hex(mapping.iova)} (unmapped already?)`);
    let bits: DirtyBitmap | null = null;
    this.host.unmapWith(mapping, (iova, size) => {
      bits = this.withBitmap(iova, size, 'VFIO_IOMMU_UNMAP_DMA', (bitmap) => {
        const unmapped = type1UnmapWithBitmap(this.host.steps(), this.host.fd, iova, size, bitmap);
        if (unmapped !== size) this.host.steps().fail('VFIO_IOMMU_UNMAP_DMA', null, `the kernel unmapped ${unmapped} of ${size} bytes`);
      });
    });
    return bits!;
  }

  /** Stops tracking (idempotent): the kernel frees its bitmaps. */
  stop(): void {
    if (this.isStopped) return;
    this.isStopped = true;
    this.onStop(this);
    onKernel('the container', () => type1DirtyPages(this.host.steps(), this.host.fd, 'STOP'));
  }

  /** @internal the kernel dropped the tracking with the container's IOMMU (its last group left, or it closed) */
  lost(): void {
    this.isStopped = true;
  }

  [Symbol.dispose](): void {
    if (!this.isStopped) this.stop();
  }

  private withBitmap(iova: bigint, size: bigint, step: 'VFIO_IOMMU_DIRTY_PAGES' | 'VFIO_IOMMU_UNMAP_DMA', fn: (bitmap: BitmapTarget) => void): DirtyBitmap {
    this.host.assertOpen();
    if (this.isStopped) throw new DirtyTrackingError('dirty page tracking was stopped on this container', 'not-started');
    if (size <= 0n) throw new UsageError(`a dirty bitmap needs a positive length (got ${size})`);
    const need = bitmapBytes(size, this.pageSize);
    if (BigInt(need) > this.maxBitmapBytes) throw new UsageError(`a bitmap of ${hex(size)} bytes needs ${need} bytes, over the kernel's ${this.maxBitmapBytes}: ask for less at a time`);
    // onKernel: the bitmap's own allocation may fail too (ENOMEM), as a KernelError
    return onKernel('the container', () => readDirtyBitmap(this.host.steps(), this.host.kernel, { iova, length: size }, this.pageSize, (address, bytes) => {
      try {
        fn({ pageSize: this.pageSize, address, bytes });
      } catch (e) {
        if (!(e instanceof StepError) || e.errno !== 'EINVAL') throw e instanceof StepError ? kernelRefused(e, 'the container') : e;
        const why = this.explainRange(iova, size);
        throw new DirtyTrackingError(`type1 refused the dirty bitmap of [${hex(iova)}, +${hex(size)}) (${step}, EINVAL): ${why.text}`, why.reason, e.details());
      }
    }));
  }

  /** Why type1 answered EINVAL, read from the request (its checks share the errno). */
  private explainRange(iova: bigint, size: bigint): { reason: DirtyTrackingError['reason']; text: string } {
    const mask = this.pageSize - 1n;
    if ((iova & mask) !== 0n || (size & mask) !== 0n) return { reason: 'unaligned', text: `the IOVA and length must be multiples of ${this.pageSize}` };
    const end = iova + size;
    const cut = this.host.mappings().find((m) => (m.iova < iova && m.iova + m.size > iova) || (m.iova < end && m.iova + m.size > end));
    if (cut) return { reason: 'partial-mapping', text: `the range cuts the mapping at ${hex(cut.iova)} (+${hex(cut.size)}): a bitmap covers whole mappings` };
    return { reason: 'refused', text: 'the kernel gave no other reason' };
  }
}
