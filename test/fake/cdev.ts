// The device cdev, /dev/vfio/devices/vfioN (drivers/vfio/device_cdev.c, drivers/vfio/iommufd.c):
// opened "parked", BIND_IOMMUFD grants access and makes the device an object of the iommufd context,
// ATTACH/DETACH_IOMMUFD_PT put it in an IOAS (through an automatic domain, unless it is emulated).
import { decode, writeField } from '../../src/uapi/struct.js';
import { vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfio_device_detach_iommufd_pt } from '../../src/uapi/vfio.js';
import { ioctlError, sysError, userStruct } from './errno.js';
import { checkAttach, maybeFreeCtx } from './iommufd.js';
import { dmaSafe, vfioDriver, type DeviceFile, type DeviceState, type FakeState } from './state.js';

type Arg = number | Buffer | undefined;

/** vfio_device_fops_cdev_open: opens "parked"; BIND_IOMMUFD grants access */
export function openCdev(device: DeviceState, p: string): DeviceFile {
  if (!vfioDriver(device)) throw sysError('ENODEV', 'open', p);
  const file: DeviceFile = { kind: 'device', device, via: 'cdev', groupFile: null, bound: false, ctx: null, devid: null, attachedPt: null };
  device.files.add(file);
  return file;
}

/** vfio_df_ioctl_bind_iommufd, in the kernel's order of checks */
export function bindIommufd(s: FakeState, file: DeviceFile, arg: Arg): number {
  const buf = userStruct(arg, vfio_device_bind_iommufd.size);
  const b = decode(vfio_device_bind_iommufd, buf);
  if (b.argsz < vfio_device_bind_iommufd.size || b.flags !== 0 || b.iommufd < 0) throw ioctlError('EINVAL');
  if (file.via === 'group') throw ioctlError('EINVAL'); // BIND_IOMMUFD only for cdev fds
  const dev = file.device;
  if (dev.group && dev.group.openedBy !== null) throw ioctlError('EBUSY'); // vfio_device_block_group
  if (file.bound) throw ioctlError('EINVAL'); // one device cannot be bound twice
  const target = s.fdTable.get(b.iommufd);
  if (!target) throw ioctlError('EBADF');
  if (target.file.kind !== 'iommufd') throw ioctlError('EBADFD');
  if (dev.openCount !== 0) throw ioctlError('EINVAL'); // vfio_df_open: open_count != 0 && !df->group
  if (!dev.group?.emulated && s.iommu === 'virtio' && !s.allowUnsafe.iommufd) throw ioctlError('EPERM'); // no isolated MSI
  // iommu_device_claim_dma_owner: a host driver bound in the group holds owner_cnt with no owner
  if (dev.group && !dev.group.members.every(dmaSafe)) throw ioctlError('EPERM');
  const ctx = target.file.ctx;
  const devid = ctx.nextId++;
  ctx.objects.set(devid, { type: 'device', device: dev });
  dev.openCount++;
  if (dev.group) dev.group.cdevBound++;
  file.bound = true;
  file.ctx = ctx;
  file.devid = devid;
  writeField(buf, vfio_device_bind_iommufd.fields.out_devid, devid);
  return 0;
}

export function attachPt(s: FakeState, file: DeviceFile, arg: Arg): number {
  const dev = file.device;
  if (file.via !== 'cdev') throw ioctlError('ENOTTY');
  const buf = userStruct(arg, vfio_device_attach_iommufd_pt.size);
  const a = decode(vfio_device_attach_iommufd_pt, buf);
  if (a.argsz < vfio_device_attach_iommufd_pt.size || a.flags !== 0) throw ioctlError('EINVAL');
  const ctx = file.ctx!;
  const obj = ctx.objects.get(a.pt_id);
  if (!obj) throw ioctlError('ENOENT');
  if (obj.type === 'device') throw ioctlError('EINVAL');
  let pt = a.pt_id;
  if (obj.type === 'ioas') checkAttach(s, ctx, a.pt_id, obj, !dev.group?.emulated);
  if (obj.type === 'ioas' && !dev.group?.emulated) {
    // an automatic domain, shared by the devices attached to the same IOAS
    const found = [...ctx.objects.entries()].find(([, o]) => o.type === 'hwpt' && !o.user && o.ioas === a.pt_id); // auto_domain only
    if (found) pt = found[0];
    else {
      pt = ctx.nextId++;
      ctx.objects.set(pt, { type: 'hwpt', ioas: a.pt_id, users: 0 });
    }
  }
  detach(file);
  const hwpt = ctx.objects.get(pt);
  if (hwpt?.type === 'hwpt') hwpt.users++;
  file.attachedPt = pt;
  // An emulated device is attached to the IOAS itself: pt_id comes back unchanged (FINDINGS.md 5).
  writeField(buf, vfio_device_attach_iommufd_pt.fields.pt_id, pt);
  return 0;
}

export function detachPt(_s: FakeState, file: DeviceFile, arg: Arg): number {
  if (file.via !== 'cdev') throw ioctlError('ENOTTY');
  const d = decode(vfio_device_detach_iommufd_pt, userStruct(arg, vfio_device_detach_iommufd_pt.size));
  if (d.argsz < vfio_device_detach_iommufd_pt.size || d.flags !== 0) throw ioctlError('EINVAL');
  detach(file);
  return 0;
}

function detach(file: DeviceFile): void {
  if (file.attachedPt === null) return;
  const obj = file.ctx!.objects.get(file.attachedPt);
  if (obj?.type === 'hwpt' && --obj.users === 0 && !obj.user) file.ctx!.objects.delete(file.attachedPt); // an automatic domain dies with its last device
  file.attachedPt = null;
}

/** A bound cdev file is released: the device leaves its IOAS and the context, which may go with it. */
export function unbindCdev(s: FakeState, file: DeviceFile): void {
  const dev = file.device;
  file.bound = false;
  detach(file);
  file.ctx!.objects.delete(file.devid!);
  dev.openCount--;
  if (dev.group) dev.group.cdevBound--;
  maybeFreeCtx(s, file.ctx!);
}
