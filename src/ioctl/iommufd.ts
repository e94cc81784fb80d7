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
import { decode, encode, reusableStruct, viewOf } from '../uapi/struct.js';
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

/** One mapping as IOMMU_IOAS_MAP takes it, at a fixed IOVA. */
export interface IoasMapEntry {
  vaddr: bigint;
  iova: bigint;
  size: bigint;
  readable: boolean;
  writable: boolean;
}

// DMA map and unmap are a VMM's hot path (one per guest page, for some): their structs are written in
// place through a DataView, one buffer reused per request (ioctls run one at a time on this thread).
const MAP = iommu_ioas_map.fields;
const UNMAP = iommu_ioas_unmap.fields;
const mapArg = reusableStruct(iommu_ioas_map);
const unmapArg = reusableStruct(iommu_ioas_unmap);

/** Writes an iommu_ioas_map at `at`; every field, so a reused buffer keeps nothing of the last call. */
function putIoasMap(v: DataView, at: number, ioasId: number, m: IoasMapEntry): void {
  const flags = IOMMU_IOAS_MAP_FLAG.FIXED_IOVA | (m.readable ? IOMMU_IOAS_MAP_FLAG.READABLE : 0) | (m.writable ? IOMMU_IOAS_MAP_FLAG.WRITEABLE : 0);
  v.setUint32(at + MAP.size[1], iommu_ioas_map.size, true);
  v.setUint32(at + MAP.flags[1], flags, true);
  v.setUint32(at + MAP.ioas_id[1], ioasId, true);
  v.setBigUint64(at + MAP.user_va[1], m.vaddr, true);
  v.setBigUint64(at + MAP.length[1], m.size, true);
  v.setBigUint64(at + MAP.iova[1], m.iova, true);
}

/** IOMMU_IOAS_MAP at a fixed IOVA. */
export function ioasMap(calls: StepCalls, iommufd: number, ioasId: number, m: IoasMapEntry): void {
  putIoasMap(mapArg.view, 0, ioasId, m);
  calls.ioctl('IOMMU_IOAS_MAP', iommufd, mapArg.buffer);
}

/**
 * IOMMU_IOAS_MAP of each mapping in turn, in one addon call. A failure is the StepError of the mapping
 * that failed, with its index: those before it are mapped.
 */
export function ioasMapEach(calls: StepCalls, iommufd: number, ioasId: number, maps: readonly IoasMapEntry[]): void {
  const records = Buffer.alloc(iommu_ioas_map.size * maps.length);
  const v = viewOf(records);
  for (let i = 0; i < maps.length; i++) putIoasMap(v, i * iommu_ioas_map.size, ioasId, maps[i]!);
  calls.ioctlEach('IOMMU_IOAS_MAP', iommufd, records, iommu_ioas_map.size);
}

/** IOMMU_IOAS_UNMAP: returns the bytes the kernel unmapped. */
export function ioasUnmap(calls: StepCalls, iommufd: number, ioasId: number, iova: bigint, length: bigint): bigint {
  const v = unmapArg.view;
  v.setUint32(UNMAP.size[1], iommu_ioas_unmap.size, true);
  v.setUint32(UNMAP.ioas_id[1], ioasId, true);
  v.setBigUint64(UNMAP.iova[1], iova, true);
  v.setBigUint64(UNMAP.length[1], length, true);
  calls.ioctl('IOMMU_IOAS_UNMAP', iommufd, unmapArg.buffer);
  return v.getBigUint64(UNMAP.length[1], true);
}
