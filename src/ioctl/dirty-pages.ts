// The call layer for type1's dirty page tracking (vfio_iommu_type1.c, 5.8+): VFIO_IOMMU_DIRTY_PAGES
// with one of START, STOP or GET_BITMAP, and VFIO_IOMMU_UNMAP_DMA with GET_DIRTY_BITMAP, which hands
// back a mapping's bitmap as it goes. Each bitmap is one bit per page of `pageSize` (the IOMMU's
// smallest) in u64 words, written by the kernel into memory at `bitmap` (addon memory the caller zeroed).
import type { StepCalls } from '../sys/calls.js';
import { VFIO_DMA_UNMAP_FLAG, VFIO_IOMMU_DIRTY_PAGES_FLAG, vfio_bitmap, vfio_iommu_type1_dirty_bitmap, vfio_iommu_type1_dirty_bitmap_get } from '../uapi/migration.js';
import { decode, encode } from '../uapi/struct.js';
import { vfio_iommu_type1_dma_unmap } from '../uapi/vfio.js';

export interface BitmapTarget {
  /** the bitmap's page size: type1 takes only its smallest */
  pageSize: bigint;
  /** where the kernel writes, and how many bytes it may */
  address: bigint;
  bytes: number;
}

/** VFIO_IOMMU_DIRTY_PAGES with START or STOP (both idempotent in the kernel). */
export function type1DirtyPages(calls: StepCalls, containerFd: number, op: 'START' | 'STOP'): void {
  const arg = encode(vfio_iommu_type1_dirty_bitmap, { argsz: vfio_iommu_type1_dirty_bitmap.size, flags: VFIO_IOMMU_DIRTY_PAGES_FLAG[op] });
  calls.ioctl('VFIO_IOMMU_DIRTY_PAGES', containerFd, arg);
}

/** VFIO_IOMMU_DIRTY_PAGES GET_BITMAP over [iova, iova+size), which must cover whole mappings. */
export function type1GetDirtyBitmap(calls: StepCalls, containerFd: number, iova: bigint, size: bigint, bitmap: BitmapTarget): void {
  const head = vfio_iommu_type1_dirty_bitmap.size;
  const arg = Buffer.alloc(head + vfio_iommu_type1_dirty_bitmap_get.size);
  encode(vfio_iommu_type1_dirty_bitmap, { argsz: arg.length, flags: VFIO_IOMMU_DIRTY_PAGES_FLAG.GET_BITMAP }).copy(arg);
  encode(vfio_iommu_type1_dirty_bitmap_get, {
    iova, size, 'bitmap.pgsize': bitmap.pageSize, 'bitmap.size': BigInt(bitmap.bytes), 'bitmap.data': bitmap.address,
  }).copy(arg, head);
  calls.ioctl('VFIO_IOMMU_DIRTY_PAGES', containerFd, arg);
}

/** VFIO_IOMMU_UNMAP_DMA with GET_DIRTY_BITMAP: unmaps and writes the range's bitmap; returns the bytes unmapped. */
export function type1UnmapWithBitmap(calls: StepCalls, containerFd: number, iova: bigint, size: bigint, bitmap: BitmapTarget): bigint {
  const head = vfio_iommu_type1_dma_unmap.size;
  const arg = Buffer.alloc(head + vfio_bitmap.size);
  encode(vfio_iommu_type1_dma_unmap, { argsz: arg.length, flags: VFIO_DMA_UNMAP_FLAG.GET_DIRTY_BITMAP, iova, size }).copy(arg);
  encode(vfio_bitmap, { pgsize: bitmap.pageSize, size: BigInt(bitmap.bytes), data: bitmap.address }).copy(arg, head);
  calls.ioctl('VFIO_IOMMU_UNMAP_DMA', containerFd, arg);
  return decode(vfio_iommu_type1_dma_unmap, arg).size;
}
