// The call layer for a bound device's fd: info, regions, interrupts, reset, hot-reset info. One typed
// function per ioctl; the device layer (src/device) turns the answers into its own types.
import { StepError } from '../errors.js';
import type { StepCalls } from '../sys/calls.js';
import { decode, encode } from '../uapi/struct.js';
import {
  VFIO_DEVICE_FEATURE_FLAG,
  VFIO_DEVICE_FEATURE_INDEX,
  VFIO_IRQ_SET,
  VFIO_PCI_HOT_RESET_FLAG,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG,
  capabilities,
  vfio_device_feature,
  vfio_device_feature_migration,
  vfio_device_info,
  vfio_irq_info,
  vfio_irq_set,
  vfio_pci_dependent_device,
  vfio_pci_hot_reset_info,
  vfio_region_info,
  vfio_region_info_cap_sparse_mmap,
  vfio_region_info_cap_type,
  vfio_region_sparse_mmap_area,
} from '../uapi/vfio.js';
import { ioctlWithRoom } from './room.js';

/**
 * The struct VFIO_DEVICE_GET_INFO fills, reused: the call is synchronous and its answer is read
 * before it returns, so one buffer per thread serves every call without an allocation each. It is
 * written and read through a DataView (little-endian, as the addon's targets), which the JIT turns
 * into plain loads and stores: this ioctl is a VMM's cheapest question, and Buffer's fill and
 * write/read methods cost more than the system call's own Node-API crossing (measured on the host:
 * 150-200 ns a call through them, against 8-14 through the view).
 */
const deviceInfoBuffer = Buffer.alloc(vfio_device_info.size);
const deviceInfoView = new DataView(deviceInfoBuffer.buffer, deviceInfoBuffer.byteOffset, deviceInfoBuffer.length);
const INFO = vfio_device_info.fields;

/** VFIO_DEVICE_GET_INFO. */
export function deviceGetInfo(calls: StepCalls, deviceFd: number): { flags: number; numRegions: number; numIrqs: number } {
  const v = deviceInfoView;
  // argsz alone: of the input a driver reads only argsz (vfio-pci and the mdev samples copy in up to
  // num_irqs and fill flags, num_regions and num_irqs themselves). argsz is set on every call because
  // vfio-pci enlarges it when there are capabilities; cap_offset, which nothing here reads, keeps
  // whatever the last answer had.
  v.setUint32(INFO.argsz[1], vfio_device_info.size, true);
  calls.ioctl('VFIO_DEVICE_GET_INFO', deviceFd, deviceInfoBuffer);
  return { flags: v.getUint32(INFO.flags[1], true), numRegions: v.getUint32(INFO.num_regions[1], true), numIrqs: v.getUint32(INFO.num_irqs[1], true) };
}

export interface RawRegionInfo {
  /** VFIO_REGION_INFO_FLAG_* */
  flags: number;
  size: bigint;
  offset: bigint;
  /** VFIO_REGION_INFO_CAP_SPARSE_MMAP: the parts that may be mmapped */
  sparseMmap: { offset: bigint; size: bigint }[] | null;
  /** VFIO_REGION_INFO_CAP_TYPE */
  type: { type: number; subtype: number } | null;
}

/** VFIO_DEVICE_GET_REGION_INFO with its capability chain. */
export function deviceGetRegionInfo(calls: StepCalls, deviceFd: number, index: number): RawRegionInfo {
  const buf = ioctlWithRoom(calls, 'VFIO_DEVICE_GET_REGION_INFO', deviceFd,
    (size) => encode(vfio_region_info, { argsz: size, index }, size), vfio_region_info.size,
    (answer) => {
      const info = decode(vfio_region_info, answer);
      return (info.flags & VFIO_REGION_INFO_FLAG.CAPS) !== 0 ? info.argsz : 0;
    });
  const info = decode(vfio_region_info, buf);
  const region: RawRegionInfo = { flags: info.flags, size: info.size, offset: info.offset, sparseMmap: null, type: null };
  if ((info.flags & VFIO_REGION_INFO_FLAG.CAPS) === 0) return region;
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
  return region;
}

/** VFIO_DEVICE_GET_IRQ_INFO. */
export function deviceGetIrqInfo(calls: StepCalls, deviceFd: number, index: number): { flags: number; count: number } {
  const buf = encode(vfio_irq_info, { argsz: vfio_irq_info.size, index });
  calls.ioctl('VFIO_DEVICE_GET_IRQ_INFO', deviceFd, buf);
  const info = decode(vfio_irq_info, buf);
  return { flags: info.flags, count: info.count };
}

/**
 * VFIO_DEVICE_GET_IRQ_INFO for an index the device may not have: null where the kernel answers EINVAL
 * (vfio-pci's error interrupt on a device that is not PCIe), without the cost of a thrown error.
 */
export function deviceGetIrqInfoIfAny(calls: StepCalls, deviceFd: number, index: number): { flags: number; count: number } | null {
  const buf = encode(vfio_irq_info, { argsz: vfio_irq_info.size, index });
  if (!calls.query('VFIO_DEVICE_GET_IRQ_INFO', deviceFd, buf, 'EINVAL')) return null;
  const info = decode(vfio_irq_info, buf);
  return { flags: info.flags, count: info.count };
}

/** VFIO_DEVICE_SET_IRQS with eventfds (or -1 to leave a vector unwired) for vectors start.. */
export function setIrqEventfds(calls: StepCalls, deviceFd: number, index: number, start: number, eventfds: number[]): void {
  const size = vfio_irq_set.size + 4 * eventfds.length;
  const buf = encode(vfio_irq_set, { argsz: size, flags: VFIO_IRQ_SET.DATA_EVENTFD | VFIO_IRQ_SET.ACTION_TRIGGER, index, start, count: eventfds.length }, size);
  eventfds.forEach((efd, i) => buf.writeInt32LE(efd, vfio_irq_set.size + 4 * i));
  calls.ioctl('VFIO_DEVICE_SET_IRQS', deviceFd, buf);
}

/** VFIO_DEVICE_SET_IRQS with no data: disable an index (TRIGGER, count 0) or unmask vectors (UNMASK). */
export function setIrqNone(calls: StepCalls, deviceFd: number, index: number, action: 'disable' | 'unmask', start = 0, count = 0): void {
  const flags = VFIO_IRQ_SET.DATA_NONE | (action === 'disable' ? VFIO_IRQ_SET.ACTION_TRIGGER : VFIO_IRQ_SET.ACTION_UNMASK);
  calls.ioctl('VFIO_DEVICE_SET_IRQS', deviceFd, encode(vfio_irq_set, { argsz: vfio_irq_set.size, flags, index, start, count: action === 'disable' ? 0 : count }));
}

/** VFIO_DEVICE_RESET. */
export function deviceReset(calls: StepCalls, deviceFd: number): void {
  calls.ioctl('VFIO_DEVICE_RESET', deviceFd);
}

export interface DependentDevice {
  segment: number;
  bus: number;
  devfn: number;
  /** a group id, or (with byDevid) a devid in the caller's iommufd, 0xffffffff when not the caller's */
  id: number;
}

/** VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: the devices a bus reset of this one would reset too. */
export function deviceGetPciHotResetInfo(calls: StepCalls, deviceFd: number): { byDevid: boolean; devices: DependentDevice[] } {
  const header = vfio_pci_hot_reset_info.size;
  const buf = ioctlWithRoom(calls, 'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO', deviceFd,
    (size) => encode(vfio_pci_hot_reset_info, { argsz: size }, size), header,
    (answer) => header + decode(vfio_pci_hot_reset_info, answer).count * vfio_pci_dependent_device.size,
    { enospc: true });
  const info = decode(vfio_pci_hot_reset_info, buf);
  const devices = Array.from({ length: info.count }, (_, i) => {
    const d = decode(vfio_pci_dependent_device, buf, header + i * vfio_pci_dependent_device.size);
    return { segment: d.segment, bus: d.bus, devfn: d.devfn, id: d.group_id };
  });
  return { byDevid: (info.flags & VFIO_PCI_HOT_RESET_FLAG.DEV_ID) !== 0, devices };
}

/**
 * VFIO_DEVICE_FEATURE with PROBE: whether the device offers a feature for the given operations. The
 * kernel answers 0 when it does and ENOTTY when the device lacks the feature: that answer is the
 * probe's result, not a failure.
 */
export function deviceFeatureProbe(calls: StepCalls, deviceFd: number, feature: keyof typeof VFIO_DEVICE_FEATURE_INDEX, ops: 'get' | 'set' | 'get+set'): boolean {
  const want = (ops === 'set' ? 0 : VFIO_DEVICE_FEATURE_FLAG.GET) | (ops === 'get' ? 0 : VFIO_DEVICE_FEATURE_FLAG.SET);
  const flags = VFIO_DEVICE_FEATURE_INDEX[feature] | VFIO_DEVICE_FEATURE_FLAG.PROBE | want;
  try {
    calls.ioctl('VFIO_DEVICE_FEATURE', deviceFd, encode(vfio_device_feature, { argsz: vfio_device_feature.size, flags }));
    return true;
  } catch (e) {
    if (e instanceof StepError && e.errno === 'ENOTTY') return false;
    throw e;
  }
}

/** VFIO_DEVICE_FEATURE GET of VFIO_DEVICE_FEATURE_MIGRATION: the device's VFIO_MIGRATION_* flags. */
export function deviceFeatureGetMigration(calls: StepCalls, deviceFd: number): { flags: bigint } {
  const size = vfio_device_feature.size + vfio_device_feature_migration.size;
  const buf = encode(vfio_device_feature, { argsz: size, flags: VFIO_DEVICE_FEATURE_INDEX.MIGRATION | VFIO_DEVICE_FEATURE_FLAG.GET }, size);
  calls.ioctl('VFIO_DEVICE_FEATURE', deviceFd, buf);
  return { flags: decode(vfio_device_feature_migration, buf, vfio_device_feature.size).flags };
}
