// The call layer for the legacy route: the container (/dev/vfio/vfio), its type1 IOMMU, and groups
// (/dev/vfio/N). One typed function per ioctl: it encodes the struct, issues the request by name (a
// failure is a StepError naming it) and decodes the answer. Nothing above this file builds a struct.
import type { StepCalls } from '../sys/calls.js';
import { decode, encode, reusableStruct, viewOf } from '../uapi/struct.js';
import {
  VFIO_DMA_MAP_FLAG,
  VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  capabilities,
  vfio_group_status,
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  vfio_iommu_type1_info,
  vfio_iommu_type1_info_cap_iova_range,
  vfio_iova_range,
} from '../uapi/vfio.js';
import { VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, vfio_iommu_type1_info_cap_migration } from '../uapi/migration.js';
import { ioctlWithRoom } from './room.js';

/** VFIO_GET_API_VERSION: the container's API version (VFIO_API_VERSION, 0, on every kernel). */
export function getApiVersion(calls: StepCalls, containerFd: number): number {
  return calls.ioctl('VFIO_GET_API_VERSION', containerFd);
}

/** VFIO_CHECK_EXTENSION: whether the container offers an IOMMU type (or another extension). */
export function checkExtension(calls: StepCalls, containerFd: number, extension: number): boolean {
  return calls.ioctl('VFIO_CHECK_EXTENSION', containerFd, extension) > 0;
}

/** VFIO_SET_IOMMU: gives the container its IOMMU type (once it holds a group). */
export function setIommu(calls: StepCalls, containerFd: number, type: number): void {
  calls.ioctl('VFIO_SET_IOMMU', containerFd, type);
}

/** VFIO_GROUP_GET_STATUS. */
export function groupGetStatus(calls: StepCalls, groupFd: number): { viable: boolean; containerSet: boolean } {
  const buf = encode(vfio_group_status, { argsz: vfio_group_status.size });
  calls.ioctl('VFIO_GROUP_GET_STATUS', groupFd, buf);
  const { flags } = decode(vfio_group_status, buf);
  return { viable: (flags & VFIO_GROUP_FLAGS_VIABLE) !== 0, containerSet: (flags & VFIO_GROUP_FLAGS_CONTAINER_SET) !== 0 };
}

/** VFIO_GROUP_SET_CONTAINER (it takes an int * to the container fd). */
export function groupSetContainer(calls: StepCalls, groupFd: number, containerFd: number): void {
  const arg = Buffer.alloc(4);
  arg.writeInt32LE(containerFd);
  calls.ioctl('VFIO_GROUP_SET_CONTAINER', groupFd, arg);
}

/** VFIO_GROUP_UNSET_CONTAINER. */
export function groupUnsetContainer(calls: StepCalls, groupFd: number): void {
  calls.ioctl('VFIO_GROUP_UNSET_CONTAINER', groupFd);
}

/** VFIO_GROUP_GET_DEVICE_FD: the device fd for a device of the group, by name (a char *). */
export function groupGetDeviceFd(calls: StepCalls, groupFd: number, deviceName: string): number {
  return calls.ioctl('VFIO_GROUP_GET_DEVICE_FD', groupFd, Buffer.from(`${deviceName}\0`, 'utf8'));
}

export interface Type1Info {
  /** the IOMMU page sizes (a bitmap), when the kernel reports them */
  pageSizes: bigint | null;
  /** the usable IOVA ranges (inclusive), when the kernel reports them (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) */
  ranges: { start: bigint; last: bigint }[] | null;
  /** dirty page tracking (VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, 5.8+): its page sizes and largest bitmap */
  dirtyTracking: { pageSizes: bigint; maxBitmapBytes: bigint } | null;
}

/** VFIO_IOMMU_GET_INFO with its capability chain. */
export function iommuGetInfo(calls: StepCalls, containerFd: number): Type1Info {
  const buf = ioctlWithRoom(calls, 'VFIO_IOMMU_GET_INFO', containerFd,
    (size) => encode(vfio_iommu_type1_info, { argsz: size }, size), vfio_iommu_type1_info.size,
    (answer) => {
      const info = decode(vfio_iommu_type1_info, answer);
      return (info.flags & VFIO_IOMMU_INFO_CAPS) !== 0 ? info.argsz : 0;
    });
  const info = decode(vfio_iommu_type1_info, buf);
  let ranges: Type1Info['ranges'] = null;
  let dirtyTracking: Type1Info['dirtyTracking'] = null;
  if ((info.flags & VFIO_IOMMU_INFO_CAPS) !== 0) {
    for (const cap of capabilities(buf, info.cap_offset)) {
      if (cap.id === VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION) {
        const m = decode(vfio_iommu_type1_info_cap_migration, buf, cap.at);
        dirtyTracking = { pageSizes: m.pgsize_bitmap, maxBitmapBytes: m.max_dirty_bitmap_size };
      }
      if (cap.id !== VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) continue;
      const n = decode(vfio_iommu_type1_info_cap_iova_range, buf, cap.at).nr_iovas;
      ranges = Array.from({ length: n }, (_, i) => {
        const r = decode(vfio_iova_range, buf, cap.at + vfio_iommu_type1_info_cap_iova_range.size + i * vfio_iova_range.size);
        return { start: r.start, last: r.end };
      });
    }
  }
  return { pageSizes: (info.flags & VFIO_IOMMU_INFO_PGSIZES) !== 0 ? info.iova_pgsizes : null, ranges, dirtyTracking };
}

export interface Type1Map {
  vaddr: bigint;
  iova: bigint;
  size: bigint;
  readable: boolean;
  writable: boolean;
}

// DMA map and unmap are a VMM's hot path: their structs are written in place through a DataView, one
// buffer reused per request (ioctls run one at a time on this thread), as in src/ioctl/iommufd.ts.
const MAP = vfio_iommu_type1_dma_map.fields;
const UNMAP = vfio_iommu_type1_dma_unmap.fields;
const mapArg = reusableStruct(vfio_iommu_type1_dma_map);
const unmapArg = reusableStruct(vfio_iommu_type1_dma_unmap);

/** Writes a vfio_iommu_type1_dma_map at `at`; every field, so a reused buffer keeps nothing of the last call. */
function putDmaMap(v: DataView, at: number, m: Type1Map): void {
  v.setUint32(at + MAP.argsz[1], vfio_iommu_type1_dma_map.size, true);
  v.setUint32(at + MAP.flags[1], (m.readable ? VFIO_DMA_MAP_FLAG.READ : 0) | (m.writable ? VFIO_DMA_MAP_FLAG.WRITE : 0), true);
  v.setBigUint64(at + MAP.vaddr[1], m.vaddr, true);
  v.setBigUint64(at + MAP.iova[1], m.iova, true);
  v.setBigUint64(at + MAP.size[1], m.size, true);
}

/** VFIO_IOMMU_MAP_DMA. */
export function iommuMapDma(calls: StepCalls, containerFd: number, m: Type1Map): void {
  putDmaMap(mapArg.view, 0, m);
  calls.ioctl('VFIO_IOMMU_MAP_DMA', containerFd, mapArg.buffer);
}

/**
 * VFIO_IOMMU_MAP_DMA of each mapping in turn, in one addon call. A failure is the StepError of the
 * mapping that failed, with its index: those before it are mapped.
 */
export function iommuMapDmaEach(calls: StepCalls, containerFd: number, maps: readonly Type1Map[]): void {
  const records = Buffer.alloc(vfio_iommu_type1_dma_map.size * maps.length);
  const v = viewOf(records);
  for (let i = 0; i < maps.length; i++) putDmaMap(v, i * vfio_iommu_type1_dma_map.size, maps[i]!);
  calls.ioctlEach('VFIO_IOMMU_MAP_DMA', containerFd, records, vfio_iommu_type1_dma_map.size);
}

/** VFIO_IOMMU_UNMAP_DMA: returns the bytes the kernel unmapped. */
export function iommuUnmapDma(calls: StepCalls, containerFd: number, iova: bigint, size: bigint): bigint {
  const v = unmapArg.view;
  v.setUint32(UNMAP.argsz[1], vfio_iommu_type1_dma_unmap.size, true);
  v.setUint32(UNMAP.flags[1], 0, true);
  v.setBigUint64(UNMAP.iova[1], iova, true);
  v.setBigUint64(UNMAP.size[1], size, true);
  calls.ioctl('VFIO_IOMMU_UNMAP_DMA', containerFd, unmapArg.buffer);
  return v.getBigUint64(UNMAP.size[1], true);
}
