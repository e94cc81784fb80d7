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

export const IOMMUFD_STRUCTS = [
  iommu_destroy, iommu_ioas_alloc, iommu_ioas_iova_ranges, iommu_iova_range, iommu_ioas_map, iommu_ioas_unmap,
] as const;
