// File descriptors handed to us instead of paths: an unprivileged VMM (libvirt, kata, kubevirt style)
// gets its nodes from a privileged parent. Each is checked with fstat before any ioctl: a character
// device whose number is the one sysfs gives for what it is said to be.
import { BadFdError } from '../errors.js';
import { readDevnum, type DeviceLocation } from '../discovery/locate.js';
import { isSysError, major, makedev, minor, type Kernel } from '../sys/kernel.js';

export interface PassedFds {
  /** the device's VFIO cdev (iommufd route) */
  device?: number;
  /** /dev/iommu */
  iommufd?: number;
  /** the device's group node (legacy route) */
  group?: number;
  /** /dev/vfio/vfio */
  container?: number;
}

/** A sysfs dev attribute as a dev_t. */
function devnumAt(kernel: Kernel, path: string): number | null {
  const d = readDevnum(kernel, path);
  return d ? makedev(d.major, d.minor) : null;
}

const devString = (rdev: number): string => `${major(rdev)}:${minor(rdev)}`;

/** Checks one fd; throws BadFdError naming it. */
function checkFd(kernel: Kernel, fd: number, role: string, expected: number | null, expectedName: string): void {
  if (!Number.isInteger(fd) || fd < 0) throw new BadFdError(`the ${role} fd ${fd} is not a file descriptor number`);
  let st;
  try {
    st = kernel.fstat(fd);
  } catch (e) {
    if (isSysError(e)) throw new BadFdError(`fd ${fd}, given as the ${role} fd, is not open (${e.code})`, { errno: e.code, step: `check ${role} fd` });
    throw e;
  }
  if (!st.isCharacterDevice) {
    throw new BadFdError(`fd ${fd}, given as the ${role} fd, is not a character device`, { errno: 'EBADFD', step: `check ${role} fd` });
  }
  if (expected === null) {
    throw new BadFdError(`cannot check fd ${fd} as the ${role} fd: sysfs gives no device number for ${expectedName}`, { errno: 'EBADFD', step: `check ${role} fd` });
  }
  if (st.rdev !== expected) {
    throw new BadFdError(`fd ${fd}, given as the ${role} fd, is device ${devString(st.rdev)}, not ${expectedName} (${devString(expected)})`, {
      errno: 'EBADFD', step: `check ${role} fd`,
    });
  }
}

/** Which route the fds are for, after checking each against what sysfs says it should be. */
export function checkPassedFds(kernel: Kernel, loc: DeviceLocation, fds: PassedFds, contextRoute: 'iommufd' | 'legacy' | null): 'iommufd' | 'legacy' {
  const cdevMode = fds.device !== undefined || fds.iommufd !== undefined;
  const groupMode = fds.group !== undefined || fds.container !== undefined;
  if (cdevMode === groupMode) {
    throw new BadFdError('pass either the device (cdev) fd with an iommufd, or the group fd with a container fd');
  }
  if (cdevMode) {
    if (fds.device === undefined) throw new BadFdError('an iommufd fd needs the device (cdev) fd too');
    if (fds.iommufd === undefined && contextRoute !== 'iommufd') throw new BadFdError('a device (cdev) fd needs an iommufd fd (or an iommufd context)');
    const cdev = loc.cdev?.devnum ? makedev(loc.cdev.devnum.major, loc.cdev.devnum.minor) : null;
    checkFd(kernel, fds.device, 'device', cdev, `${loc.name}'s cdev`);
    if (fds.iommufd !== undefined) checkFd(kernel, fds.iommufd, 'iommufd', devnumAt(kernel, '/sys/class/misc/iommu/dev'), '/dev/iommu');
    return 'iommufd';
  }
  if (fds.group === undefined) throw new BadFdError('a container fd needs the group fd too');
  if (fds.container === undefined && contextRoute !== 'legacy') throw new BadFdError('a group fd needs a container fd (or a legacy context)');
  const g = loc.group;
  const groupDev = g ? devnumAt(kernel, `/sys/class/vfio/${g.noiommu ? 'noiommu-' : ''}${g.id}/dev`) : null;
  checkFd(kernel, fds.group, 'group', groupDev, g ? g.node : `${loc.name}'s group (it has none)`);
  if (fds.container !== undefined) checkFd(kernel, fds.container, 'container', devnumAt(kernel, '/sys/class/misc/vfio/dev'), '/dev/vfio/vfio');
  return 'legacy';
}
