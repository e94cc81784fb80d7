// Device regions: what VFIO_DEVICE_GET_REGION_INFO says of each, under its name.
import { deviceGetRegionInfo } from '../ioctl/device.js';
import type { StepCalls } from '../sys/calls.js';
import { UsageError } from '../errors.js';
import { VFIO_PCI_REGION, VFIO_REGION_INFO_FLAG } from '../uapi/vfio.js';

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

/** Reads one region's info (VFIO_DEVICE_GET_REGION_INFO with its capability chain). */
export function readRegionInfo(calls: StepCalls, fd: number, index: number, pci: boolean): RegionInfo {
  const info = deviceGetRegionInfo(calls, fd, index);
  return {
    index,
    name: regionName(index, pci),
    size: info.size,
    offset: info.offset,
    readable: (info.flags & VFIO_REGION_INFO_FLAG.READ) !== 0,
    writable: (info.flags & VFIO_REGION_INFO_FLAG.WRITE) !== 0,
    mmappable: (info.flags & VFIO_REGION_INFO_FLAG.MMAP) !== 0,
    sparseMmap: info.sparseMmap,
    type: info.type,
  };
}

/** Checks a pread/pwrite of a region before it is issued: integers, the region's access, its bounds. */
export function checkAccess(region: RegionInfo, device: string, offset: number | bigint, length: number, what: 'read' | 'write'): RegionInfo {
  if (typeof offset === 'number' && !Number.isSafeInteger(offset)) throw new UsageError(`offset ${offset} is not an integer`);
  if (!Number.isSafeInteger(length)) throw new UsageError(`length ${length} is not an integer`);
  if (what === 'read' ? !region.readable : !region.writable) {
    throw new UsageError(`region ${region.name} of ${device} is not ${what === 'read' ? 'readable' : 'writable'}`);
  }
  const start = BigInt(offset);
  if (start < 0n || length < 0 || start + BigInt(length) > region.size) {
    throw new UsageError(`${what} of ${length} bytes at ${start} is outside ${region.name} (size ${region.size})`);
  }
  return region;
}
