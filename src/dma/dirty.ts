// A dirty bitmap as every tracker answers it (device DMA logging, type1's dirty pages, an iommufd
// HWPT's dirty bits): one bit per page of an IOVA range, bit i of u64 word i/64 for page i.
import { withScratch } from '../ioctl/scratch.js';
import type { StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';

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
    return this.bit(Number((iova - this.iova) / this.pageSize));
  }

  /** the IOVAs of the dirty pages, in order */
  dirtyPages(): bigint[] {
    const out: bigint[] = [];
    for (let page = 0; page < this.pages; page++) if (this.bit(page)) out.push(this.iova + BigInt(page) * this.pageSize);
    return out;
  }

  get dirtyCount(): number {
    let n = 0;
    for (let page = 0; page < this.pages; page++) if (this.bit(page)) n++;
    return n;
  }

  private bit(page: number): boolean {
    return ((this.bits[page >> 3] ?? 0) & (1 << (page & 7))) !== 0;
  }
}

/** bytes of the bitmap for [iova, iova+length) at `pageSize`, in whole u64 words as the kernel writes them */
export const bitmapBytes = (length: bigint, pageSize: bigint): number => Math.ceil(Number((length + pageSize - 1n) / pageSize) / 64) * 8;

/**
 * A bitmap the kernel writes through a pointer: zeroed addon memory (the kernel only sets bits) that
 * `fill` hands to its request, copied out before the memory is unmapped.
 */
export function readDirtyBitmap(calls: StepCalls, kernel: Kernel, range: { iova: bigint; length: bigint }, pageSize: bigint,
  fill: (address: bigint, bytes: number) => void): DirtyBitmap {
  const bytes = bitmapBytes(range.length, pageSize);
  const bits = withScratch(calls, kernel, 'allocate the dirty bitmap', bytes, (memory, address) => {
    fill(address, bytes);
    return Buffer.from(memory.subarray(0, bytes));
  });
  return new DirtyBitmap(range.iova, range.length, pageSize, bits);
}
