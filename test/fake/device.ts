// A VFIO device file, from its cdev (cdev.ts) or from its group (group.ts), as vfio_main.c and
// vfio_pci_core.c answer it: the gate every request but BIND_IOMMUFD passes (access granted), device
// info, features (VFIO_DEVICE_FEATURE), reset and hot reset info, and the release of the file. Regions are in regions.ts, interrupts
// in irqs.ts.
import { decode, writeField } from '../../src/uapi/struct.js';
import {
  VFIO_DEVICE_FEATURE_FLAG,
  VFIO_DEVICE_FLAGS,
  VFIO_PCI_HOT_RESET_FLAG,
  VFIO_PCI_NUM_REGIONS,
  vfio_device_feature,
  vfio_device_info,
  vfio_pci_dependent_device,
  vfio_pci_hot_reset_info,
} from '../../src/uapi/vfio.js';
import { unbindCdev } from './cdev.js';
import { deviceFeature, disableFiles, resetMigration } from './migration.js';
import { ioctlError, userStruct } from './errno.js';
import { releaseGroupFile } from './group.js';
import { noIrqs, type DeviceFile, type FakeState } from './state.js';

type Arg = number | Buffer | undefined;

/** vfio_device_fops_unl_ioctl: `if (!smp_load_acquire(&df->access_granted)) return -EINVAL;` */
export function accessGranted(_s: FakeState, file: DeviceFile): void {
  if (!file.bound) throw ioctlError('EINVAL');
}

export function getInfo(_s: FakeState, file: DeviceFile, arg: Arg): number {
  const buf = userStruct(arg, 16);
  if (decode(vfio_device_info, buf).argsz < 16) throw ioctlError('EINVAL');
  writeField(buf, vfio_device_info.fields.flags, file.device.flags);
  writeField(buf, vfio_device_info.fields.num_regions, VFIO_PCI_NUM_REGIONS);
  writeField(buf, vfio_device_info.fields.num_irqs, 5);
  return 0;
}

/**
 * VFIO_DEVICE_FEATURE (vfio_ioctl_device_feature): the header checks, then the feature's handler
 * (migration.ts); a device without a migration driver answers ENOTTY, as any feature without one.
 */
export function feature(s: FakeState, file: DeviceFile, arg: Arg): number {
  const buf = userStruct(arg, vfio_device_feature.size);
  const { argsz, flags } = decode(vfio_device_feature, buf);
  const F = VFIO_DEVICE_FEATURE_FLAG;
  if (argsz < vfio_device_feature.size) throw ioctlError('EINVAL');
  if ((flags & ~(F.MASK | F.SET | F.GET | F.PROBE)) !== 0) throw ioctlError('EINVAL');
  if ((flags & F.PROBE) === 0 && (flags & F.SET) !== 0 && (flags & F.GET) !== 0) throw ioctlError('EINVAL');
  return deviceFeature(s, file.device, arg);
}

export function reset(_s: FakeState, file: DeviceFile): number {
  const dev = file.device;
  if (dev.bus === 'mdev') {
    // mtty_ioctl answers VFIO_DEVICE_RESET itself, without VFIO_DEVICE_FLAGS_RESET: its migration state goes back to RUNNING
    dev.resets++;
    if (dev.mig) resetMigration(dev.mig);
    return 0;
  }
  if ((dev.flags & VFIO_DEVICE_FLAGS.RESET) === 0) throw ioctlError('EINVAL'); // !vdev->reset_works
  dev.resets++;
  return 0;
}

/** vfio_pci_ioctl_get_pci_hot_reset_info */
export function hotResetInfo(s: FakeState, file: DeviceFile, arg: Arg): number {
  const dev = file.device;
  const buf = userStruct(arg, vfio_pci_hot_reset_info.size);
  const h = decode(vfio_pci_hot_reset_info, buf);
  if (h.argsz < vfio_pci_hot_reset_info.size) throw ioctlError('EINVAL');
  if (!dev.hotReset) throw ioctlError('ENODEV'); // neither a slot nor a bus reset
  const count = dev.hotReset.length;
  if (count > Math.floor((h.argsz - vfio_pci_hot_reset_info.size) / vfio_pci_dependent_device.size)) {
    writeField(buf, vfio_pci_hot_reset_info.fields.flags, 0);
    writeField(buf, vfio_pci_hot_reset_info.fields.count, count);
    throw ioctlError('ENOSPC');
  }
  const F = VFIO_PCI_HOT_RESET_FLAG;
  let flags = file.via === 'cdev' ? F.DEV_ID | F.DEV_ID_OWNED : 0;
  const entries = dev.hotReset.map((h2) => {
    const other = s.devices.get(h2.address);
    let id: number;
    if (flags & F.DEV_ID) {
      // vfio_pci_fill_devs: its devid in our iommufd, OWNED (0) if our iommufd holds its group, else NOT_OWNED (-1)
      const bound = other && [...other.files].find((f) => f.via === 'cdev' && f.bound && f.ctx === file.ctx);
      const groupHeld = other?.group && [...s.devices.values()].some((d) => d.group === other.group && [...d.files].some((f) => f.via === 'cdev' && f.bound && f.ctx === file.ctx));
      id = bound ? bound.devid! : groupHeld ? 0 : 0xffffffff;
      if (id === 0xffffffff) flags &= ~F.DEV_ID_OWNED;
    } else {
      const group = h2.group !== undefined ? h2.group : other?.group?.id ?? null;
      if (group === null) throw ioctlError('EPERM'); // cannot reset non-isolated devices
      id = group;
    }
    const [segment, bus, devfn] = parsePciAddress(h2.address);
    return { id, segment, bus, devfn };
  });
  const need = vfio_pci_hot_reset_info.size + count * vfio_pci_dependent_device.size;
  if (buf.length < need) throw ioctlError('EFAULT');
  entries.forEach((d, i) => {
    const at = vfio_pci_hot_reset_info.size + i * vfio_pci_dependent_device.size;
    writeField(buf, vfio_pci_dependent_device.fields.group_id, d.id, at);
    writeField(buf, vfio_pci_dependent_device.fields.segment, d.segment, at);
    writeField(buf, vfio_pci_dependent_device.fields.bus, d.bus, at);
    writeField(buf, vfio_pci_dependent_device.fields.devfn, d.devfn, at);
  });
  writeField(buf, vfio_pci_hot_reset_info.fields.flags, flags);
  writeField(buf, vfio_pci_hot_reset_info.fields.count, count);
  return 0;
}

/** 0000:01:00.0 -> segment, bus, devfn */
function parsePciAddress(address: string): [number, number, number] {
  const m = /^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i.exec(address);
  if (!m) throw new Error(`fake: ${address} is not a PCI address`);
  return [parseInt(m[1]!, 16), parseInt(m[2]!, 16), (parseInt(m[3]!, 16) << 3) | Number(m[4])];
}

/** vfio_device_fops_release: its fd closed and no region of it mapped any more */
export function releaseDeviceFile(s: FakeState, file: DeviceFile): void {
  const dev = file.device;
  dev.files.delete(file);
  if (file.bound && dev.mig) disableFiles(dev.mig); // mtty_close: the sessions end, the state stays
  if (file.bound) {
    // vfio_pci_core_close_device: interrupts off, the eventfds let go
    dev.irq = noIrqs();
  }
  if (file.via === 'group') {
    dev.openCount--;
    file.groupFile!.deviceFiles--;
    releaseGroupFile(s, file.groupFile!);
    return;
  }
  if (!file.bound) return;
  unbindCdev(s, file);
}
