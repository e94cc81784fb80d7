// /dev/vfio/N: the legacy group file (drivers/vfio/group.c): one open file per group, in a container
// or not, from which device fds are taken. Device fds hold the group file open.
import { decode, writeField } from '../../src/uapi/struct.js';
import { VFIO_GROUP_FLAGS_CONTAINER_SET, VFIO_GROUP_FLAGS_VIABLE, vfio_group_status } from '../../src/uapi/vfio.js';
import { checkType1Attach, containerIsNoiommu, driverOf, leaveContainer } from './container.js';
import { cString, ioctlError, sysError, userStruct } from './errno.js';
import { install } from './files.js';
import { dmaSafe, vfioDriver, type DeviceFile, type FakeState, type GroupFile, type GroupState } from './state.js';

type Arg = number | Buffer | undefined;

/** vfio_group_fops_open */
export function openGroup(s: FakeState, group: GroupState, p: string): GroupFile {
  if (!group.members.some(vfioDriver)) throw sysError('ENODEV', 'open', p);
  if (group.noiommu && !s.rawio) throw sysError('EPERM', 'open', p);
  if (group.cdevBound > 0) throw sysError('EBUSY', 'open', p);
  if (group.openedBy !== null) throw sysError('EBUSY', 'open', p);
  const file: GroupFile = { kind: 'group', group, fdOpen: true, container: null, deviceFiles: 0 };
  group.openedBy = file;
  return file;
}

export function releaseGroupFile(s: FakeState, file: GroupFile): void {
  // Device fds hold a reference to their group file: it is released only when they are closed too.
  if (file.fdOpen || file.deviceFiles > 0) return;
  if (file.container) leaveContainer(s, file);
  if (file.group.openedBy === file) file.group.openedBy = null;
}

// ---------------------------------------------------------------------------------------------------
// ioctls

export function getStatus(_s: FakeState, file: GroupFile, arg: Arg): number {
  const g = file.group;
  const buf = userStruct(arg, vfio_group_status.size);
  if (decode(vfio_group_status, buf).argsz < vfio_group_status.size) throw ioctlError('EINVAL');
  let flags = g.members.every(dmaSafe) ? VFIO_GROUP_FLAGS_VIABLE : 0;
  if (file.container) flags |= VFIO_GROUP_FLAGS_CONTAINER_SET;
  writeField(buf, vfio_group_status.fields.flags, flags);
  return 0;
}

export function setContainer(s: FakeState, file: GroupFile, arg: Arg): number {
  const g = file.group;
  const buf = userStruct(arg, 4);
  if (file.container) throw ioctlError('EINVAL');
  const target = s.fdTable.get(buf.readInt32LE(0));
  if (!target) throw ioctlError('EBADF');
  if (target.file.kind !== 'container') throw ioctlError('EINVAL');
  const c = target.file.container;
  if (c.groups.size > 0 && containerIsNoiommu(c) !== g.noiommu) throw ioctlError('EPERM');
  if (g.noiommu && !s.rawio) throw ioctlError('EPERM');
  // iommu_group_claim_dma_owner: a host driver bound in the group holds owner_cnt (it uses the default domain)
  if (!g.members.every(dmaSafe)) throw ioctlError('EPERM');
  if (c.iommuType !== null) checkType1Attach(s, driverOf(c.iommuType), g);
  c.groups.add(file);
  file.container = c;
  return 0;
}

export function unsetContainer(s: FakeState, file: GroupFile): number {
  if (!file.container) throw ioctlError('EINVAL');
  if (file.deviceFiles > 0) throw ioctlError('EBUSY');
  leaveContainer(s, file);
  return 0;
}

export function getDeviceFd(s: FakeState, file: GroupFile, arg: Arg): number {
  const g = file.group;
  const name = cString(arg);
  const dev = g.members.find((d) => vfioDriver(d) && d.name === name);
  if (!dev) throw ioctlError('ENODEV');
  if (!file.container || file.container.iommuType === null) throw ioctlError('EINVAL');
  if (g.noiommu && !s.rawio) throw ioctlError('EPERM');
  dev.openCount++;
  file.deviceFiles++;
  const device: DeviceFile = { kind: 'device', device: dev, via: 'group', groupFile: file, bound: true, ctx: null, devid: null, attachedPt: null };
  dev.files.add(device);
  return install(s, 'anon_inode:[vfio-device]', { mode: 0o600, rdev: 0, isCharacterDevice: false }, device);
}
