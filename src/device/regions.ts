// Device regions: VFIO_DEVICE_GET_REGION_INFO and its capability chain, read/write at an offset.
import { decode, encode } from '../uapi/struct.js';
import {
  VFIO,
  VFIO_PCI_REGION,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG,
  vfio_region_info,
  vfio_region_info_cap_sparse_mmap,
  vfio_region_info_cap_type,
  vfio_region_sparse_mmap_area,
  capabilities,
} from '../uapi/vfio.js';
import type { StepCalls } from '../sys/calls.js';

export interface RegionInfo {
  index: number;
  /** BAR0..BAR5, ROM, CONFIG, VGA for a PCI device; REGION<n> otherwise */
  name: string;
  size: bigint;
  /** offset of the region in the device fd, for pread/pwrite/mmap */
  offset: bigint;
  readable: boolean;
  writable: boolean;
  mmappable: boolean;
  /** the parts that may be mmapped, when only some may (VFIO_REGION_INFO_CAP_SPARSE_MMAP) */
  sparseMmap: { offset: bigint; size: bigint }[] | null;
  /** a device-specific region's type (VFIO_REGION_INFO_CAP_TYPE) */
  type: { type: number; subtype: number } | null;
}

const PCI_NAMES = Object.fromEntries(Object.entries(VFIO_PCI_REGION).map(([name, index]) => [index, name]));

export function regionName(index: number, pci: boolean): string {
  return (pci ? PCI_NAMES[index] : undefined) ?? `REGION${index}`;
}

/** A region index the device does not implement: size 0, no access. */
export function absentRegion(index: number, pci: boolean): RegionInfo {
  return { index, name: regionName(index, pci), size: 0n, offset: 0n, readable: false, writable: false, mmappable: false, sparseMmap: null, type: null };
}

/** Reads one region's info, following the capability chain when the kernel reports one. */
export function readRegionInfo(calls: StepCalls, fd: number, index: number, pci: boolean): RegionInfo {
  let buf = encode(vfio_region_info, { argsz: vfio_region_info.size, index });
  calls.ioctl('VFIO_DEVICE_GET_REGION_INFO', fd, VFIO.DEVICE_GET_REGION_INFO, buf);
  let info = decode(vfio_region_info, buf);
  // With capabilities, argsz comes back larger than we sent: ask again with room for the chain.
  if ((info.flags & VFIO_REGION_INFO_FLAG.CAPS) !== 0 && info.argsz > buf.length) {
    buf = encode(vfio_region_info, { argsz: info.argsz, index }, info.argsz);
    calls.ioctl('VFIO_DEVICE_GET_REGION_INFO', fd, VFIO.DEVICE_GET_REGION_INFO, buf);
    info = decode(vfio_region_info, buf);
  }
  const region: RegionInfo = {
    index,
    name: regionName(index, pci),
    size: info.size,
    offset: info.offset,
    readable: (info.flags & VFIO_REGION_INFO_FLAG.READ) !== 0,
    writable: (info.flags & VFIO_REGION_INFO_FLAG.WRITE) !== 0,
    mmappable: (info.flags & VFIO_REGION_INFO_FLAG.MMAP) !== 0,
    sparseMmap: null,
    type: null,
  };
  if ((info.flags & VFIO_REGION_INFO_FLAG.CAPS) !== 0) {
    for (const cap of capabilities(buf, info.cap_offset)) {
      if (cap.id === VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
        const n = decode(vfio_region_info_cap_sparse_mmap, buf, cap.at).nr_areas;
        region.sparseMmap = [];
        for (let i = 0; i < n; i++) {
          const at = cap.at + vfio_region_info_cap_sparse_mmap.size + i * vfio_region_sparse_mmap_area.size;
          if (at + vfio_region_sparse_mmap_area.size > buf.length) break;
          region.sparseMmap.push(decode(vfio_region_sparse_mmap_area, buf, at));
        }
      } else if (cap.id === VFIO_REGION_INFO_CAP_TYPE) {
        const t = decode(vfio_region_info_cap_type, buf, cap.at);
        region.type = { type: t.type, subtype: t.subtype };
      }
    }
  }
  return region;
}
