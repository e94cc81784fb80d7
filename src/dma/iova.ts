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
    this.cut(iova, iova + size);
  }

  /**
   * Frees the allocations that tile [start, end) exactly (a run of touching mappings unmapped in one
   * call): the span leaves its run in one cut instead of one per allocation.
   */
  freeTiling(allocations: readonly { iova: bigint }[], start: bigint, end: bigint): void {
    for (const a of allocations) this.sizes.delete(a.iova);
    this.cut(start, end);
  }

  /** Cuts [start, end), which lies inside one run, out of it, leaving what lies on either side. */
  private cut(start: bigint, end: bigint): void {
    const j = firstEndingAfter(this.runs, start);
    const run = this.runs[j]!;
    const runEnd = run.iova + run.size;
    if (run.iova < start && end < runEnd) {
      this.runs.splice(j, 1, { iova: run.iova, size: start - run.iova }, { iova: end, size: runEnd - end });
    } else if (run.iova < start) {
      run.size = start - run.iova;
    } else if (end < runEnd) {
      run.iova = end;
      run.size = runEnd - end;
    } else {
      this.runs.splice(j, 1);
    }
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
    const end = iova + size;
    // join the run that ends where it starts and the one that starts where it ends; the runs are
    // private, so a run is grown in place (mapping page after page only ever grows the last one)
    const last = this.runs[this.runs.length - 1];
    if (last && last.iova + last.size === iova) {
      last.size += size;
      return;
    }
    const i = firstEndingAfter(this.runs, iova - 1n); // the first run ending at or after iova
    const before = this.runs[i];
    if (before && before.iova + before.size === iova) {
      const after = this.runs[i + 1];
      if (after && after.iova === end) {
        before.size = after.iova + after.size - before.iova;
        this.runs.splice(i + 1, 1);
      } else {
        before.size += size;
      }
      return;
    }
    // otherwise runs[i] (if any) starts at or after end: reserve() and allocate() checked the overlap
    if (before && before.iova === end) {
      before.iova = iova;
      before.size += size;
      return;
    }
    this.runs.splice(i, 0, { iova, size });
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
