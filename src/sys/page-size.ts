// The page size of the running kernel: 4 KiB on x86-64; 4, 16 or 64 KiB on arm64 (RHEL 8's kernel and
// RHEL 9's kernel-64k use 64 KiB). DMA buffers are whole pages, and IOVAs and sizes follow the IOMMU's
// pages, which are at least these. Read from the auxiliary vector the kernel handed this process.
import fs from 'node:fs';

const AT_NULL = 0n;
const AT_PAGESZ = 6n;

/** AT_PAGESZ from /proc/self/auxv (64-bit little-endian entries: x86-64 and arm64); 4096 without procfs */
export function systemPageSize(): number {
  let auxv: Buffer;
  try {
    auxv = fs.readFileSync('/proc/self/auxv');
  } catch {
    return 4096;
  }
  for (let at = 0; at + 16 <= auxv.length; at += 16) {
    const type = auxv.readBigUInt64LE(at);
    if (type === AT_NULL) break;
    if (type === AT_PAGESZ) return Number(auxv.readBigUInt64LE(at + 8));
  }
  return 4096;
}

/**
 * The PMD-sized huge page that goes with a page size: a page of 8-byte page-table entries maps
 * page/8 pages, so 2 MiB with 4 KiB pages, 32 MiB with 16 KiB, 512 MiB with 64 KiB. It is the size of
 * MAP_HUGETLB's default pages and of transparent huge pages, and an IOMMU block size alike.
 */
export const hugePageSizeFor = (pageSize: number): number => (pageSize / 8) * pageSize;

/** this host's page size, read once per process: 4096, or 16384 or 65536 on some arm64 kernels */
export const PAGE_SIZE = systemPageSize();
/** the huge page that goes with it: 2 MiB with 4 KiB pages, 512 MiB with 64 KiB */
export const HUGE_PAGE_SIZE = hugePageSizeFor(PAGE_SIZE);
