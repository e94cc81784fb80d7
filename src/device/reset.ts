// Resetting a bound device: VFIO_DEVICE_RESET (whatever reset the kernel can do for it: FLR, PM or a
// bus reset when the device is alone on its bus), and which devices a PCI hot (bus) reset would take
// with it (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO).
import { UnsupportedError } from '../errors.js';
import { deviceGetPciHotResetInfo, deviceReset } from '../ioctl/device.js';
import type { StepCalls } from '../sys/calls.js';
import { hexId } from './config.js';

/** A device a PCI hot reset would also reset. */
export interface HotResetDevice {
  /** PCI address */
  address: string;
  /** its IOMMU group (legacy route), or its devid in our iommufd context (cdev route; -1 if not ours) */
  groupId: number | null;
  devid: number | null;
}

/** VFIO_DEVICE_RESET, refused up front (a clear UnsupportedError) when the device info says it has no reset. */
export function resetDevice(calls: StepCalls, deviceFd: number, name: string, canReset: boolean): void {
  if (!canReset) {
    throw new UnsupportedError(`${name} cannot be reset: it has no FLR or PM reset, and is not alone on a bus the kernel could reset`, {
      hint: 'a device alone behind a PCIe port (root port or switch port) gets a bus reset',
    });
  }
  deviceReset(calls, deviceFd);
}

/** VFIO_PCI_DEVID_NOT_OWNED: -1 in a u32, a device bound to another context */
const NOT_OWNED = 0xffff_ffff;

export function hotResetInfo(calls: StepCalls, deviceFd: number): HotResetDevice[] {
  const { byDevid, devices } = deviceGetPciHotResetInfo(calls, deviceFd);
  return devices.map((d) => ({
    address: `${hexId(d.segment, 4)}:${hexId(d.bus, 2)}:${hexId(d.devfn >> 3, 2)}.${d.devfn & 7}`,
    groupId: byDevid ? null : d.id,
    devid: byDevid ? (d.id === NOT_OWNED ? -1 : d.id) : null,
  }));
}
