// An IOVA allocator over the ranges the IOMMU accepts: first fit, aligned, with fixed reservations.

export interface IovaRange {
  start: bigint;
  /** inclusive */
  last: bigint;
}

interface Allocation {
  iova: bigint;
  size: bigint;
}

const alignUp = (n: bigint, a: bigint): bigint => ((n + a - 1n) / a) * a;

export class IovaAllocator {
  private readonly used: Allocation[] = []; // sorted by iova

  constructor(public ranges: readonly IovaRange[]) {}

  /** Whether [iova, iova+size) lies inside one valid range. */
  inRanges(iova: bigint, size: bigint): boolean {
    return this.ranges.some((r) => iova >= r.start && iova + size - 1n <= r.last);
  }

  private overlaps(iova: bigint, size: bigint): Allocation | undefined {
    return this.used.find((u) => iova < u.iova + u.size && u.iova < iova + size);
  }

  /** Reserves a caller-chosen IOVA; returns a reason when it cannot. */
  reserve(iova: bigint, size: bigint): string | null {
    if (!this.inRanges(iova, size)) return 'outside the IOVA ranges the IOMMU accepts';
    const clash = this.overlaps(iova, size);
    if (clash) return `it overlaps the mapping at 0x${clash.iova.toString(16)} (+0x${clash.size.toString(16)})`;
    this.insert({ iova, size });
    return null;
  }

  /** The lowest free IOVA for `size` bytes, aligned, below `limit` (exclusive) if given; null if none. */
  allocate(size: bigint, alignment: bigint, limit?: bigint): bigint | null {
    for (const r of this.ranges) {
      let candidate = alignUp(r.start === 0n ? alignment : r.start, alignment); // never IOVA 0: a null DMA address hides bugs
      for (;;) {
        const end = candidate + size - 1n;
        if (end > r.last || (limit !== undefined && end >= limit)) break;
        const clash = this.overlaps(candidate, size);
        if (!clash) {
          this.insert({ iova: candidate, size });
          return candidate;
        }
        candidate = alignUp(clash.iova + clash.size, alignment);
      }
    }
    return null;
  }

  free(iova: bigint): void {
    const i = this.used.findIndex((u) => u.iova === iova);
    if (i >= 0) this.used.splice(i, 1);
  }

  clear(): void {
    this.used.length = 0;
  }

  private insert(a: Allocation): void {
    const i = this.used.findIndex((u) => u.iova > a.iova);
    this.used.splice(i < 0 ? this.used.length : i, 0, a);
  }
}
