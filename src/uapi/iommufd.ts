// iommufd's kernel ABI (include/uapi/linux/iommufd.h): the /dev/iommu ioctls we use.
// Checked against the real headers by test/uapi.
import { IO } from './ioctl.js';
import { struct } from './struct.js';

const IOMMUFD_TYPE = 0x3b; // ';', shared with VFIO
const IOMMUFD_CMD_BASE = 0x80;
const cmd = (n: number): number => IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + n);

export const IOMMU = {
  DESTROY: cmd(0),
  IOAS_ALLOC: cmd(1),
  IOAS_ALLOW_IOVAS: cmd(2),
  IOAS_COPY: cmd(3),
  IOAS_IOVA_RANGES: cmd(4),
  IOAS_MAP: cmd(5),
  IOAS_UNMAP: cmd(6),
  OPTION: cmd(7),
  VFIO_IOAS: cmd(8),
  HWPT_ALLOC: cmd(9),
  GET_HW_INFO: cmd(10),
  HWPT_SET_DIRTY_TRACKING: cmd(11),
  HWPT_GET_DIRTY_BITMAP: cmd(12),
} as const;

export const IOMMU_IOAS_MAP_FLAG = { FIXED_IOVA: 1 << 0, WRITEABLE: 1 << 1, READABLE: 1 << 2 } as const;

export const iommu_destroy = struct('iommu_destroy', 8, { size: ['u32', 0], id: ['u32', 4] });

export const iommu_ioas_alloc = struct('iommu_ioas_alloc', 12, {
  size: ['u32', 0], flags: ['u32', 4], out_ioas_id: ['u32', 8],
});

/** followed (at allowed_iovas, a user pointer) by num_iovas iommu_iova_range items */
export const iommu_ioas_iova_ranges = struct('iommu_ioas_iova_ranges', 32, {
  size: ['u32', 0], ioas_id: ['u32', 4], num_iovas: ['u32', 8], allowed_iovas: ['u64', 16], out_iova_alignment: ['u64', 24],
});
export const iommu_iova_range = struct('iommu_iova_range', 16, { start: ['u64', 0], last: ['u64', 8] });

export const iommu_ioas_map = struct('iommu_ioas_map', 40, {
  size: ['u32', 0], flags: ['u32', 4], ioas_id: ['u32', 8], user_va: ['u64', 16], length: ['u64', 24], iova: ['u64', 32],
});

export const iommu_ioas_unmap = struct('iommu_ioas_unmap', 24, {
  size: ['u32', 0], ioas_id: ['u32', 4], iova: ['u64', 8], length: ['u64', 16],
});

/** what IOMMU_GET_HW_INFO says the IOMMU behind a device is, and what it can do */
export const IOMMU_HW_INFO_TYPE = { NONE: 0, INTEL_VTD: 1 } as const;
export const IOMMU_HW_CAP = { DIRTY_TRACKING: 1 << 0, PCI_PASID_EXEC: 1 << 1, PCI_PASID_PRIV: 1 << 2 } as const;
/** data_uptr points at data_len bytes the kernel fills with the type's data (iommu_hw_info_vtd) */
export const iommu_hw_info = struct('iommu_hw_info', 40, {
  size: ['u32', 0], flags: ['u32', 4], dev_id: ['u32', 8], data_len: ['u32', 12], data_uptr: ['u64', 16],
  out_data_type: ['u32', 24], out_max_pasid_log2: ['u8', 28], out_capabilities: ['u64', 32],
});
export const iommu_hw_info_vtd = struct('iommu_hw_info_vtd', 24, { flags: ['u32', 0], cap_reg: ['u64', 8], ecap_reg: ['u64', 16] });

export const IOMMU_HWPT_ALLOC_FLAG = { NEST_PARENT: 1 << 0, DIRTY_TRACKING: 1 << 1 } as const;
export const IOMMU_HWPT_DATA_NONE = 0;
export const iommu_hwpt_alloc = struct('iommu_hwpt_alloc', 48, {
  size: ['u32', 0], flags: ['u32', 4], dev_id: ['u32', 8], pt_id: ['u32', 12], out_hwpt_id: ['u32', 16],
  data_type: ['u32', 24], data_len: ['u32', 28], data_uptr: ['u64', 32], fault_id: ['u32', 40],
});
export const IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1;
export const iommu_hwpt_set_dirty_tracking = struct('iommu_hwpt_set_dirty_tracking', 16, {
  size: ['u32', 0], flags: ['u32', 4], hwpt_id: ['u32', 8],
});
export const IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1;
/** data points at the bitmap: one bit per page_size of IOVA from iova */
export const iommu_hwpt_get_dirty_bitmap = struct('iommu_hwpt_get_dirty_bitmap', 48, {
  size: ['u32', 0], hwpt_id: ['u32', 4], flags: ['u32', 8], iova: ['u64', 16], length: ['u64', 24], page_size: ['u64', 32], data: ['u64', 40],
});

export const IOMMUFD_STRUCTS = [
  iommu_destroy, iommu_ioas_alloc, iommu_ioas_iova_ranges, iommu_iova_range, iommu_ioas_map, iommu_ioas_unmap,
  iommu_hw_info, iommu_hw_info_vtd, iommu_hwpt_alloc, iommu_hwpt_set_dirty_tracking, iommu_hwpt_get_dirty_bitmap,
] as const;
