// The call layer for iommufd's hardware page tables and what the IOMMU behind a device can do:
// IOMMU_GET_HW_INFO, IOMMU_HWPT_ALLOC, IOMMU_HWPT_SET_DIRTY_TRACKING, IOMMU_HWPT_GET_DIRTY_BITMAP.
// One typed function per request; data the kernel writes through a pointer lives in addon memory.
import type { StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import {
  IOMMU_HWPT_DATA_NONE,
  IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
  IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR,
  IOMMU_HW_INFO_TYPE,
  iommu_hw_info,
  iommu_hw_info_vtd,
  iommu_hwpt_alloc,
  iommu_hwpt_get_dirty_bitmap,
  iommu_hwpt_set_dirty_tracking,
} from '../uapi/iommufd.js';
import { decode, encode } from '../uapi/struct.js';
import { withScratch } from './scratch.js';

export interface RawHwInfo {
  /** enum iommu_hw_info_type */
  type: number;
  /** IOMMU_HW_CAP_* */
  capabilities: bigint;
  maxPasidLog2: number;
  /** INTEL_VTD's data (struct iommu_hw_info_vtd): the capability and extended capability registers */
  vtd: { capReg: bigint; ecapReg: bigint } | null;
}

/** the data a type may have: a page is far more than any (iommu_hw_info_vtd is 24 bytes) */
const HW_INFO_ROOM = 4096;

/** IOMMU_GET_HW_INFO for a device bound to this iommufd (its devid). */
export function getHwInfo(calls: StepCalls, kernel: Kernel, iommufd: number, devid: number): RawHwInfo {
  return withScratch(calls, kernel, 'allocate the IOMMU hardware info', HW_INFO_ROOM, (memory, address) => {
    const arg = encode(iommu_hw_info, { size: iommu_hw_info.size, dev_id: devid, data_len: HW_INFO_ROOM, data_uptr: address });
    calls.ioctl('IOMMU_GET_HW_INFO', iommufd, arg);
    const info = decode(iommu_hw_info, arg);
    const vtd = info.out_data_type === IOMMU_HW_INFO_TYPE.INTEL_VTD && info.data_len >= iommu_hw_info_vtd.size ? decode(iommu_hw_info_vtd, memory) : null;
    return {
      type: info.out_data_type, capabilities: info.out_capabilities, maxPasidLog2: info.out_max_pasid_log2,
      vtd: vtd ? { capReg: vtd.cap_reg, ecapReg: vtd.ecap_reg } : null,
    };
  });
}

/** IOMMU_HWPT_ALLOC: a paging HWPT for the device over the IOAS `ptId` (flags: IOMMU_HWPT_ALLOC_*); returns its id. */
export function hwptAlloc(calls: StepCalls, iommufd: number, devid: number, ptId: number, flags: number): number {
  const arg = encode(iommu_hwpt_alloc, { size: iommu_hwpt_alloc.size, flags, dev_id: devid, pt_id: ptId, data_type: IOMMU_HWPT_DATA_NONE });
  calls.ioctl('IOMMU_HWPT_ALLOC', iommufd, arg);
  return decode(iommu_hwpt_alloc, arg).out_hwpt_id;
}

/** IOMMU_HWPT_SET_DIRTY_TRACKING: turns the HWPT's dirty tracking on or off. */
export function hwptSetDirtyTracking(calls: StepCalls, iommufd: number, hwptId: number, enable: boolean): void {
  const arg = encode(iommu_hwpt_set_dirty_tracking, { size: iommu_hwpt_set_dirty_tracking.size, flags: enable ? IOMMU_HWPT_DIRTY_TRACKING_ENABLE : 0, hwpt_id: hwptId });
  calls.ioctl('IOMMU_HWPT_SET_DIRTY_TRACKING', iommufd, arg);
}

/** IOMMU_HWPT_GET_DIRTY_BITMAP over [iova, iova+length): one bit per pageSize at `bitmap` (the kernel only sets bits). */
export function hwptGetDirtyBitmap(calls: StepCalls, iommufd: number, hwptId: number,
  r: { iova: bigint; length: bigint; pageSize: bigint; clear: boolean }, bitmap: bigint): void {
  const arg = encode(iommu_hwpt_get_dirty_bitmap, {
    size: iommu_hwpt_get_dirty_bitmap.size, hwpt_id: hwptId, flags: r.clear ? 0 : IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR,
    iova: r.iova, length: r.length, page_size: r.pageSize, data: bitmap,
  });
  calls.ioctl('IOMMU_HWPT_GET_DIRTY_BITMAP', iommufd, arg);
}
