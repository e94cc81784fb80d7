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
  /** every allocation's size, by IOVA */
  private readonly sizes = new Map<bigint, bigint>();
  /**
   * The allocated space as maximal runs of touching allocations, sorted by IOVA. First fit skips a
   * packed run in one step, and a VMM mapping (or unmapping) 16,384 pages one by one touches only the
   * run at the end: no rescan of every earlier page, no shifting of a long array.
   */
  private readonly runs: Allocation[] = [];

  constructor(public ranges: readonly IovaRange[]) {}

  /** Whether [iova, iova+size) lies inside one valid range. */
  inRanges(iova: bigint, size: bigint): boolean {
    return this.ranges.some((r) => iova >= r.start && iova + size - 1n <= r.last);
  }

  /** Reserves a caller-chosen IOVA; returns a reason when it cannot. */
  reserve(iova: bigint, size: bigint): string | null {
    if (!this.inRanges(iova, size)) return 'outside the IOVA ranges the IOMMU accepts';
    const run = overlappingRun(this.runs, iova, size);
    if (run) {
      const clash = this.allocationIn(run, iova);
      return `it overlaps the mapping at 0x${clash.iova.toString(16)} (+0x${clash.size.toString(16)})`;
    }
    this.insert(iova, size);
    return null;
  }

  /** The lowest free IOVA for `size` bytes, aligned, below `limit` (exclusive) if given; null if none. */
  allocate(size: bigint, alignment: bigint, limit?: bigint): bigint | null {
    for (const r of this.ranges) {
      let candidate = alignUp(r.start === 0n ? alignment : r.start, alignment); // never IOVA 0: a null DMA address hides bugs
      for (;;) {
        const end = candidate + size - 1n;
        if (end > r.last || (limit !== undefined && end >= limit)) break;
        const clash = overlappingRun(this.runs, candidate, size);
        if (!clash) {
          this.insert(candidate, size);
          return candidate;
        }
        candidate = alignUp(clash.iova + clash.size, alignment);
      }
    }
    return null;
  }

  free(iova: bigint): void {
    const size = this.sizes.get(iova);
    if (size === undefined) return;
    this.sizes.delete(iova);
    // cut it out of its run, leaving what lies on either side
    const j = firstEndingAfter(this.runs, iova);
    const run = this.runs[j]!;
    const pieces: Allocation[] = [];
    if (run.iova < iova) pieces.push({ iova: run.iova, size: iova - run.iova });
    const runEnd = run.iova + run.size;
    const end = iova + size;
    if (end < runEnd) pieces.push({ iova: end, size: runEnd - end });
    this.runs.splice(j, 1, ...pieces);
  }

  clear(): void {
    this.sizes.clear();
    this.runs.length = 0;
  }

  /** The allocation of a run that holds the first of the bytes from `from` on (for an error message). */
  private allocationIn(run: Allocation, from: bigint): Allocation {
    let at = run.iova;
    for (;;) {
      const size = this.sizes.get(at)!;
      if (at + size > from || at + size >= run.iova + run.size) return { iova: at, size };
      at += size;
    }
  }

  private insert(iova: bigint, size: bigint): void {
    this.sizes.set(iova, size);
    // join the run that ends where it starts and the one that starts where it ends
    let start = iova;
    let end = iova + size;
    const i = firstEndingAfter(this.runs, iova - 1n); // the first run ending at or after iova
    let replaced = 0;
    const before = this.runs[i];
    if (before && before.iova + before.size === iova) {
      start = before.iova;
      replaced = 1;
    }
    const after = this.runs[i + replaced];
    if (after && after.iova === end) {
      end = after.iova + after.size;
      replaced++;
    }
    this.runs.splice(i, replaced, { iova: start, size: end - start });
  }
}

/** The index of the first run (sorted, disjoint) that ends after `at`: a binary search. */
function firstEndingAfter(runs: readonly Allocation[], at: bigint): number {
  let lo = 0;
  let hi = runs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const u = runs[mid]!;
    if (u.iova + u.size > at) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** The run that overlaps [iova, iova+size), if any. */
function overlappingRun(runs: readonly Allocation[], iova: bigint, size: bigint): Allocation | undefined {
  const u = runs[firstEndingAfter(runs, iova)];
  return u && u.iova < iova + size ? u : undefined;
}
