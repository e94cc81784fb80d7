// VFIO's kernel ABI (include/uapi/linux/vfio.h): ioctl numbers, flags and struct layouts.
// Every number and layout here is checked against the real headers by test/uapi.
import { IO } from './ioctl.js';
import { decode, struct } from './struct.js';

export const VFIO_TYPE = 0x3b; // ';'
const VFIO_BASE = 100;
const vfio = (n: number): number => IO(VFIO_TYPE, VFIO_BASE + n);

export const VFIO_API_VERSION = 0;

/** ioctl requests, named as in vfio.h (without the VFIO_ prefix) */
export const VFIO = {
  GET_API_VERSION: vfio(0),
  CHECK_EXTENSION: vfio(1),
  SET_IOMMU: vfio(2),
  GROUP_GET_STATUS: vfio(3),
  GROUP_SET_CONTAINER: vfio(4),
  GROUP_UNSET_CONTAINER: vfio(5),
  GROUP_GET_DEVICE_FD: vfio(6),
  DEVICE_GET_INFO: vfio(7),
  DEVICE_GET_REGION_INFO: vfio(8),
  DEVICE_GET_IRQ_INFO: vfio(9),
  DEVICE_SET_IRQS: vfio(10),
  DEVICE_RESET: vfio(11),
  DEVICE_GET_PCI_HOT_RESET_INFO: vfio(12),
  DEVICE_PCI_HOT_RESET: vfio(13),
  IOMMU_GET_INFO: vfio(12), // same number as GET_PCI_HOT_RESET_INFO: one is sent to a container, one to a device
  IOMMU_MAP_DMA: vfio(13),
  IOMMU_UNMAP_DMA: vfio(14),
  DEVICE_FEATURE: vfio(17),
  IOMMU_DIRTY_PAGES: vfio(17), // same number as DEVICE_FEATURE: one is sent to a container, one to a device
  DEVICE_BIND_IOMMUFD: vfio(18),
  DEVICE_ATTACH_IOMMUFD_PT: vfio(19),
  DEVICE_DETACH_IOMMUFD_PT: vfio(20),
  /** sent to a migration data fd, not to the device */
  MIG_GET_PRECOPY_INFO: vfio(21),
} as const;

/** IOMMU types for CHECK_EXTENSION and SET_IOMMU */
export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_TYPE1v2_IOMMU = 3;
export const VFIO_NOIOMMU_IOMMU = 8;

export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

export const VFIO_DEVICE_FLAGS = {
  RESET: 1 << 0,
  PCI: 1 << 1,
  PLATFORM: 1 << 2,
  AMBA: 1 << 3,
  CCW: 1 << 4,
  AP: 1 << 5,
  FSL_MC: 1 << 6,
  CAPS: 1 << 7,
  CDX: 1 << 8,
} as const;

export const VFIO_REGION_INFO_FLAG = { READ: 1 << 0, WRITE: 1 << 1, MMAP: 1 << 2, CAPS: 1 << 3 } as const;
export const VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;
export const VFIO_REGION_INFO_CAP_TYPE = 2;

/** the fixed region indexes of a vfio-pci device */
export const VFIO_PCI_REGION = {
  BAR0: 0, BAR1: 1, BAR2: 2, BAR3: 3, BAR4: 4, BAR5: 5, ROM: 6, CONFIG: 7, VGA: 8,
} as const;
export const VFIO_PCI_NUM_REGIONS = 9;

export const VFIO_PCI_IRQ = { INTX: 0, MSI: 1, MSIX: 2, ERR: 3, REQ: 4 } as const;
export const VFIO_IRQ_INFO_FLAG = { EVENTFD: 1 << 0, MASKABLE: 1 << 1, AUTOMASKED: 1 << 2, NORESIZE: 1 << 3 } as const;
export const VFIO_IRQ_SET = {
  DATA_NONE: 1 << 0,
  DATA_BOOL: 1 << 1,
  DATA_EVENTFD: 1 << 2,
  ACTION_MASK: 1 << 3,
  ACTION_UNMASK: 1 << 4,
  ACTION_TRIGGER: 1 << 5,
} as const;

export const VFIO_DMA_MAP_FLAG = { READ: 1 << 0, WRITE: 1 << 1 } as const;
export const VFIO_PCI_HOT_RESET_FLAG = { DEV_ID: 1 << 0, DEV_ID_OWNED: 1 << 1 } as const;
export const VFIO_IOMMU_INFO_PGSIZES = 1 << 0;
export const VFIO_IOMMU_INFO_CAPS = 1 << 1;
export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
export const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;

/** VFIO_DEVICE_FEATURE's flags: the feature's index in the low 16 bits, and what is asked of it */
export const VFIO_DEVICE_FEATURE_FLAG = { MASK: 0xffff, GET: 1 << 16, SET: 1 << 17, PROBE: 1 << 18 } as const;
/** feature indexes, named as VFIO_DEVICE_FEATURE_<name> */
export const VFIO_DEVICE_FEATURE_INDEX = {
  MIGRATION: 1, MIG_DEVICE_STATE: 2, DMA_LOGGING_START: 6, DMA_LOGGING_STOP: 7, DMA_LOGGING_REPORT: 8, MIG_DATA_SIZE: 9,
} as const;
/** what VFIO_DEVICE_FEATURE_MIGRATION says a device's migration supports */
export const VFIO_MIGRATION = { STOP_COPY: 1 << 0, P2P: 1 << 1, PRE_COPY: 1 << 2 } as const;

export const vfio_group_status = struct('vfio_group_status', 8, {
  argsz: ['u32', 0], flags: ['u32', 4],
});

export const vfio_device_info = struct('vfio_device_info', 24, {
  argsz: ['u32', 0], flags: ['u32', 4], num_regions: ['u32', 8], num_irqs: ['u32', 12], cap_offset: ['u32', 16],
});

export const vfio_region_info = struct('vfio_region_info', 32, {
  argsz: ['u32', 0], flags: ['u32', 4], index: ['u32', 8], cap_offset: ['u32', 12], size: ['u64', 16], offset: ['u64', 24],
});

export const vfio_info_cap_header = struct('vfio_info_cap_header', 8, {
  id: ['u16', 0], version: ['u16', 2], next: ['u32', 4],
});

export const vfio_region_info_cap_sparse_mmap = struct('vfio_region_info_cap_sparse_mmap', 16, {
  nr_areas: ['u32', 8],
});
export const vfio_region_sparse_mmap_area = struct('vfio_region_sparse_mmap_area', 16, {
  offset: ['u64', 0], size: ['u64', 8],
});

export const vfio_region_info_cap_type = struct('vfio_region_info_cap_type', 16, {
  type: ['u32', 8], subtype: ['u32', 12],
});

export const vfio_irq_info = struct('vfio_irq_info', 16, {
  argsz: ['u32', 0], flags: ['u32', 4], index: ['u32', 8], count: ['u32', 12],
});

/** followed by `count` data items (u8 bools or s32 eventfds) */
export const vfio_irq_set = struct('vfio_irq_set', 20, {
  argsz: ['u32', 0], flags: ['u32', 4], index: ['u32', 8], start: ['u32', 12], count: ['u32', 16],
});

export const vfio_pci_hot_reset_info = struct('vfio_pci_hot_reset_info', 12, {
  argsz: ['u32', 0], flags: ['u32', 4], count: ['u32', 8],
});
export const vfio_pci_dependent_device = struct('vfio_pci_dependent_device', 8, {
  group_id: ['u32', 0], segment: ['u16', 4], bus: ['u8', 6], devfn: ['u8', 7],
});
/** followed by `count` s32 group fds (or, with a cdev, one iommufd or none) */
export const vfio_pci_hot_reset = struct('vfio_pci_hot_reset', 12, {
  argsz: ['u32', 0], flags: ['u32', 4], count: ['u32', 8],
});

export const vfio_iommu_type1_info = struct('vfio_iommu_type1_info', 24, {
  argsz: ['u32', 0], flags: ['u32', 4], iova_pgsizes: ['u64', 8], cap_offset: ['u32', 16],
});
export const vfio_iommu_type1_info_cap_iova_range = struct('vfio_iommu_type1_info_cap_iova_range', 16, {
  nr_iovas: ['u32', 8],
});
export const vfio_iova_range = struct('vfio_iova_range', 16, { start: ['u64', 0], end: ['u64', 8] });
export const vfio_iommu_type1_info_dma_avail = struct('vfio_iommu_type1_info_dma_avail', 12, { avail: ['u32', 8] });

export const vfio_iommu_type1_dma_map = struct('vfio_iommu_type1_dma_map', 32, {
  argsz: ['u32', 0], flags: ['u32', 4], vaddr: ['u64', 8], iova: ['u64', 16], size: ['u64', 24],
});
/** followed, with GET_DIRTY_BITMAP, by a vfio_bitmap */
export const vfio_iommu_type1_dma_unmap = struct('vfio_iommu_type1_dma_unmap', 24, {
  argsz: ['u32', 0], flags: ['u32', 4], iova: ['u64', 8], size: ['u64', 16],
});

export const vfio_device_bind_iommufd = struct('vfio_device_bind_iommufd', 16, {
  argsz: ['u32', 0], flags: ['u32', 4], iommufd: ['s32', 8], out_devid: ['u32', 12],
});
// 6.12's layout. Kernels from 6.13 append a pasid field; they accept this shorter argsz.
export const vfio_device_attach_iommufd_pt = struct('vfio_device_attach_iommufd_pt', 12, {
  argsz: ['u32', 0], flags: ['u32', 4], pt_id: ['u32', 8],
});
export const vfio_device_detach_iommufd_pt = struct('vfio_device_detach_iommufd_pt', 8, {
  argsz: ['u32', 0], flags: ['u32', 4],
});

/** followed by the feature's data */
export const vfio_device_feature = struct('vfio_device_feature', 8, { argsz: ['u32', 0], flags: ['u32', 4] });
export const vfio_device_feature_migration = struct('vfio_device_feature_migration', 8, { flags: ['u64', 0] });

/** Walks a VFIO info capability chain (offsets from the start of the info buffer; 0 ends it). */
export function* capabilities(buf: Buffer, first: number): Generator<{ id: number; version: number; at: number }> {
  const seen = new Set<number>();
  for (let at = first; at !== 0 && !seen.has(at); ) {
    if (at + vfio_info_cap_header.size > buf.length) return; // a chain pointing outside the buffer ends here
    seen.add(at);
    const header = decode(vfio_info_cap_header, buf, at);
    yield { id: header.id, version: header.version, at };
    at = header.next;
  }
}

/** Every layout above, for the header check. */
export const VFIO_STRUCTS = [
  vfio_group_status, vfio_device_info, vfio_region_info, vfio_info_cap_header, vfio_region_info_cap_sparse_mmap,
  vfio_region_sparse_mmap_area, vfio_region_info_cap_type, vfio_irq_info, vfio_irq_set, vfio_pci_hot_reset_info,
  vfio_pci_dependent_device, vfio_pci_hot_reset, vfio_iommu_type1_info, vfio_iommu_type1_info_cap_iova_range,
  vfio_iova_range, vfio_iommu_type1_info_dma_avail, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
  vfio_device_bind_iommufd, vfio_device_attach_iommufd_pt, vfio_device_detach_iommufd_pt, vfio_device_feature,
  vfio_device_feature_migration,
] as const;
