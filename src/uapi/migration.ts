// VFIO migration v2 and dirty tracking (include/uapi/linux/vfio.h): the device's migration states and
// data stream (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, _MIG_DATA_SIZE, VFIO_MIG_GET_PRECOPY_INFO on the
// data fd), device DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_*), and type1's dirty page tracking
// (VFIO_IOMMU_DIRTY_PAGES, unmap with GET_DIRTY_BITMAP). Checked against the real headers by test/uapi.
import { struct } from './struct.js';

/** enum vfio_device_mig_state */
export const VFIO_DEVICE_STATE = {
  ERROR: 0, STOP: 1, RUNNING: 2, STOP_COPY: 3, RESUMING: 4, RUNNING_P2P: 5, PRE_COPY: 6, PRE_COPY_P2P: 7,
} as const;

/** VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE's data: the state to enter (SET) or the state it is in (GET) */
export const vfio_device_feature_mig_state = struct('vfio_device_feature_mig_state', 8, {
  device_state: ['u32', 0], data_fd: ['s32', 4],
});
export const vfio_device_feature_mig_data_size = struct('vfio_device_feature_mig_data_size', 8, {
  stop_copy_length: ['u64', 0],
});
/** VFIO_MIG_GET_PRECOPY_INFO's answer, on the data fd in the PRE_COPY states */
export const vfio_precopy_info = struct('vfio_precopy_info', 24, {
  argsz: ['u32', 0], flags: ['u32', 4], initial_bytes: ['u64', 8], dirty_bytes: ['u64', 16],
});

/** DMA_LOGGING_START's data; `ranges` points at num_ranges vfio_device_feature_dma_logging_range */
export const vfio_device_feature_dma_logging_control = struct('vfio_device_feature_dma_logging_control', 24, {
  page_size: ['u64', 0], num_ranges: ['u32', 8], ranges: ['u64', 16],
});
export const vfio_device_feature_dma_logging_range = struct('vfio_device_feature_dma_logging_range', 16, {
  iova: ['u64', 0], length: ['u64', 8],
});
/** DMA_LOGGING_REPORT's data; `bitmap` points at the u64s the kernel sets bits in (never clears) */
export const vfio_device_feature_dma_logging_report = struct('vfio_device_feature_dma_logging_report', 32, {
  iova: ['u64', 0], length: ['u64', 8], page_size: ['u64', 16], bitmap: ['u64', 24],
});

export const VFIO_IOMMU_DIRTY_PAGES_FLAG = { START: 1 << 0, STOP: 1 << 1, GET_BITMAP: 1 << 2 } as const;
export const VFIO_DMA_UNMAP_FLAG = { GET_DIRTY_BITMAP: 1 << 0, ALL: 1 << 1, VADDR: 1 << 2 } as const;
/** VFIO_IOMMU_GET_INFO's capability: dirty tracking's page sizes and largest bitmap */
export const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2;
export const vfio_iommu_type1_info_cap_migration = struct('vfio_iommu_type1_info_cap_migration', 32, {
  flags: ['u32', 8], pgsize_bitmap: ['u64', 16], max_dirty_bitmap_size: ['u64', 24],
});
/** followed, with GET_BITMAP, by a vfio_iommu_type1_dirty_bitmap_get */
export const vfio_iommu_type1_dirty_bitmap = struct('vfio_iommu_type1_dirty_bitmap', 8, {
  argsz: ['u32', 0], flags: ['u32', 4],
});
/** one bit per page of pgsize; `data` points at size bytes, zeroed by the caller */
export const vfio_bitmap = struct('vfio_bitmap', 24, { pgsize: ['u64', 0], size: ['u64', 8], data: ['u64', 16] });
export const vfio_iommu_type1_dirty_bitmap_get = struct('vfio_iommu_type1_dirty_bitmap_get', 40, {
  iova: ['u64', 0], size: ['u64', 8], 'bitmap.pgsize': ['u64', 16], 'bitmap.size': ['u64', 24], 'bitmap.data': ['u64', 32],
});

export const MIGRATION_STRUCTS = [
  vfio_device_feature_mig_state, vfio_device_feature_mig_data_size, vfio_precopy_info,
  vfio_device_feature_dma_logging_control, vfio_device_feature_dma_logging_range, vfio_device_feature_dma_logging_report,
  vfio_iommu_type1_info_cap_migration, vfio_iommu_type1_dirty_bitmap, vfio_bitmap, vfio_iommu_type1_dirty_bitmap_get,
] as const;
