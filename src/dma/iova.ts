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
  /** every allocation, sorted by IOVA (they never overlap, so their ends are sorted too) */
  private readonly used: Allocation[] = [];
  /**
   * The same space as maximal runs of touching allocations. First fit skips a packed run in one step:
   * a VMM mapping 16,384 pages one by one would otherwise rescan every earlier page for each new one.
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
    const clash = overlapping(this.used, iova, size);
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
        const clash = overlapping(this.runs, candidate, size);
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
    const i = firstEndingAfter(this.used, iova);
    const a = this.used[i];
    if (a?.iova !== iova) return;
    this.used.splice(i, 1);
    // cut it out of its run, leaving what lies on either side
    const j = firstEndingAfter(this.runs, iova);
    const run = this.runs[j]!;
    const pieces: Allocation[] = [];
    if (run.iova < iova) pieces.push({ iova: run.iova, size: iova - run.iova });
    const runEnd = run.iova + run.size;
    const end = iova + a.size;
    if (end < runEnd) pieces.push({ iova: end, size: runEnd - end });
    this.runs.splice(j, 1, ...pieces);
  }

  clear(): void {
    this.used.length = 0;
    this.runs.length = 0;
  }

  private insert(a: Allocation): void {
    this.used.splice(firstEndingAfter(this.used, a.iova), 0, a);
    // join the run that ends where it starts and the one that starts where it ends
    let start = a.iova;
    let end = a.iova + a.size;
    const i = firstEndingAfter(this.runs, a.iova - 1n); // the first run ending at or after a.iova
    let replaced = 0;
    const before = this.runs[i];
    if (before && before.iova + before.size === a.iova) {
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

/** The index of the first entry of a sorted, non-overlapping list that ends after `at` (binary search). */
function firstEndingAfter(list: readonly Allocation[], at: bigint): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const u = list[mid]!;
    if (u.iova + u.size > at) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** The entry of a sorted, non-overlapping list that overlaps [iova, iova+size), if any. */
function overlapping(list: readonly Allocation[], iova: bigint, size: bigint): Allocation | undefined {
  const u = list[firstEndingAfter(list, iova)];
  return u && u.iova < iova + size ? u : undefined;
}
