// The call layer for the iommufd route: /dev/iommu's IOAS requests, and the VFIO cdev requests that
// tie a device to it (bind, attach, detach). One typed function per ioctl, as QEMU's
// backends/iommufd.c has one per request.
import type { StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import {
  IOMMU_IOAS_MAP_FLAG,
  iommu_destroy,
  iommu_ioas_alloc,
  iommu_ioas_iova_ranges,
  iommu_ioas_map,
  iommu_ioas_unmap,
  iommu_iova_range,
} from '../uapi/iommufd.js';
import { decode, encode, encodeEach } from '../uapi/struct.js';
import { withScratch } from './scratch.js';
import { vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfio_device_detach_iommufd_pt } from '../uapi/vfio.js';

/** VFIO_DEVICE_BIND_IOMMUFD: the ownership contract; returns the device's id in the iommufd. */
export function bindIommufd(calls: StepCalls, deviceFd: number, iommufd: number): { devid: number } {
  const arg = encode(vfio_device_bind_iommufd, { argsz: vfio_device_bind_iommufd.size, iommufd });
  calls.ioctl('VFIO_DEVICE_BIND_IOMMUFD', deviceFd, arg);
  return { devid: decode(vfio_device_bind_iommufd, arg).out_devid };
}

/** VFIO_DEVICE_ATTACH_IOMMUFD_PT: attaches the device to an IOAS (or HWPT); returns the page table it got. */
export function attachIommufdPt(calls: StepCalls, deviceFd: number, ptId: number): { ptId: number } {
  const arg = encode(vfio_device_attach_iommufd_pt, { argsz: vfio_device_attach_iommufd_pt.size, pt_id: ptId });
  calls.ioctl('VFIO_DEVICE_ATTACH_IOMMUFD_PT', deviceFd, arg);
  return { ptId: decode(vfio_device_attach_iommufd_pt, arg).pt_id };
}

/** VFIO_DEVICE_DETACH_IOMMUFD_PT. */
export function detachIommufdPt(calls: StepCalls, deviceFd: number): void {
  calls.ioctl('VFIO_DEVICE_DETACH_IOMMUFD_PT', deviceFd, encode(vfio_device_detach_iommufd_pt, { argsz: vfio_device_detach_iommufd_pt.size }));
}

/** IOMMU_IOAS_ALLOC: a new IO address space; returns its id. */
export function ioasAlloc(calls: StepCalls, iommufd: number): number {
  const arg = encode(iommu_ioas_alloc, { size: iommu_ioas_alloc.size });
  calls.ioctl('IOMMU_IOAS_ALLOC', iommufd, arg);
  return decode(iommu_ioas_alloc, arg).out_ioas_id;
}

/** IOMMU_DESTROY: frees an iommufd object (an IOAS, a HWPT) by id. */
export function destroy(calls: StepCalls, iommufd: number, id: number): void {
  calls.ioctl('IOMMU_DESTROY', iommufd, encode(iommu_destroy, { size: iommu_destroy.size, id }));
}

/**
 * IOMMU_IOAS_IOVA_RANGES: the IOVA ranges the IOAS accepts for its devices now, and the alignment
 * (0 when no device constrains it). The ranges come back through a user pointer, so the array lives
 * in addon memory; a page holds 256.
 */
export function ioasIovaRanges(calls: StepCalls, kernel: Kernel, iommufd: number, ioasId: number): { ranges: { start: bigint; last: bigint }[]; alignment: bigint } {
  return withScratch(calls, kernel, 'allocate the IOVA range list', 4096, (bytes, address) => {
    const capacity = bytes.length / iommu_iova_range.size;
    const arg = encode(iommu_ioas_iova_ranges, { size: iommu_ioas_iova_ranges.size, ioas_id: ioasId, num_iovas: capacity, allowed_iovas: address });
    calls.ioctl('IOMMU_IOAS_IOVA_RANGES', iommufd, arg);
    const out = decode(iommu_ioas_iova_ranges, arg);
    const ranges = Array.from({ length: Math.min(out.num_iovas, capacity) }, (_, i) => {
      const r = decode(iommu_iova_range, bytes, i * iommu_iova_range.size);
      return { start: r.start, last: r.last };
    });
    return { ranges, alignment: out.out_iova_alignment };
  });
}

export interface IoasMap {
  ioasId: number;
  vaddr: bigint;
  iova: bigint;
  length: bigint;
  readable: boolean;
  writable: boolean;
}

const ioasMapRecord = (m: IoasMap) => ({
  size: iommu_ioas_map.size, ioas_id: m.ioasId, user_va: m.vaddr, length: m.length, iova: m.iova,
  flags: IOMMU_IOAS_MAP_FLAG.FIXED_IOVA | (m.readable ? IOMMU_IOAS_MAP_FLAG.READABLE : 0) | (m.writable ? IOMMU_IOAS_MAP_FLAG.WRITEABLE : 0),
});

/** IOMMU_IOAS_MAP at a fixed IOVA. */
export function ioasMap(calls: StepCalls, iommufd: number, m: IoasMap): void {
  calls.ioctl('IOMMU_IOAS_MAP', iommufd, encode(iommu_ioas_map, ioasMapRecord(m)));
}

/**
 * IOMMU_IOAS_MAP of each mapping in turn, in one addon call. A failure is the StepError of the mapping
 * that failed, with its index: those before it are mapped.
 */
export function ioasMapEach(calls: StepCalls, iommufd: number, maps: readonly IoasMap[]): void {
  calls.ioctlEach('IOMMU_IOAS_MAP', iommufd, encodeEach(iommu_ioas_map, maps.map(ioasMapRecord)), iommu_ioas_map.size);
}

/** IOMMU_IOAS_UNMAP: returns the bytes the kernel unmapped. */
export function ioasUnmap(calls: StepCalls, iommufd: number, ioasId: number, iova: bigint, length: bigint): bigint {
  const arg = encode(iommu_ioas_unmap, { size: iommu_ioas_unmap.size, ioas_id: ioasId, iova, length });
  calls.ioctl('IOMMU_IOAS_UNMAP', iommufd, arg);
  return decode(iommu_ioas_unmap, arg).length;
}
