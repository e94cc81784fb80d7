// A dirty bitmap as every tracker answers it (device DMA logging, type1's dirty pages, an iommufd
// HWPT's dirty bits): one bit per page of an IOVA range, bit i of u64 word i/64 for page i.
export class DirtyBitmap {
  constructor(
    readonly iova: bigint,
    readonly length: bigint,
    readonly pageSize: bigint,
    /** the kernel's bits, little-endian u64 words */
    readonly bits: Buffer,
  ) {}

  /** pages in the range */
  get pages(): number {
    return Number((this.length + this.pageSize - 1n) / this.pageSize);
  }

  /** whether the page holding `iova` is marked dirty */
  isDirty(iova: bigint): boolean {
    if (iova < this.iova || iova >= this.iova + this.length) return false;
    const page = Number((iova - this.iova) / this.pageSize);
    return ((this.bits[page >> 3] ?? 0) & (1 << (page & 7))) !== 0;
  }

  /** the IOVAs of the dirty pages, in order */
  dirtyPages(): bigint[] {
    const out: bigint[] = [];
    for (let page = 0; page < this.pages; page++) {
      if (((this.bits[page >> 3] ?? 0) & (1 << (page & 7))) !== 0) out.push(this.iova + BigInt(page) * this.pageSize);
    }
    return out;
  }

  get dirtyCount(): number {
    let n = 0;
    for (let page = 0; page < this.pages; page++) if (((this.bits[page >> 3] ?? 0) & (1 << (page & 7))) !== 0) n++;
    return n;
  }
}

/** bytes of a bitmap for `pages` pages, in whole u64 words as the kernel writes them */
export const bitmapBytes = (pages: number): number => Math.ceil(pages / 64) * 8;
