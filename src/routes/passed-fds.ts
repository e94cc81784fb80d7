// File descriptors handed to us instead of paths: an unprivileged VMM (libvirt, kata, kubevirt style)
// gets its nodes from a privileged parent. Each is checked with fstat before any ioctl: a character
// device whose number is the one sysfs gives for what it is said to be.
import { BadFdError } from '../errors.js';
import { readDevnum, type DeviceLocation } from '../discovery/locate.js';
import { isSysError, major, makedev, minor, type Kernel } from '../sys/kernel.js';
import type { Step } from '../sys/steps.js';
import { ROUTES } from './index.js';
import type { RouteName } from './names.js';

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
function checkFd(kernel: Kernel, fd: number, role: keyof PassedFds, expected: number | null, expectedName: string): void {
  const step: Step = `check ${role} fd`;
  if (!Number.isInteger(fd) || fd < 0) throw new BadFdError(`the ${role} fd ${fd} is not a file descriptor number`);
  let st;
  try {
    st = kernel.fstat(fd);
  } catch (e) {
    if (isSysError(e)) throw new BadFdError(`fd ${fd}, given as the ${role} fd, is not open (${e.code})`, { errno: e.code, step });
    throw e;
  }
  if (!st.isCharacterDevice) {
    throw new BadFdError(`fd ${fd}, given as the ${role} fd, is not a character device`, { errno: 'EBADFD', step });
  }
  if (expected === null) {
    throw new BadFdError(`cannot check fd ${fd} as the ${role} fd: sysfs gives no device number for ${expectedName}`, { errno: 'EBADFD', step });
  }
  if (st.rdev !== expected) {
    throw new BadFdError(`fd ${fd}, given as the ${role} fd, is device ${devString(st.rdev)}, not ${expectedName} (${devString(expected)})`, {
      errno: 'EBADFD', step,
    });
  }
}

/** How each route's pair of fds is named in the errors. */
const PAIR: Record<RouteName, { lacksDevice: string; lacksContext: string; device: (loc: DeviceLocation) => string }> = {
  iommufd: {
    lacksDevice: 'an iommufd fd needs the device (cdev) fd too',
    lacksContext: 'a device (cdev) fd needs an iommufd fd (or an iommufd context)',
    device: (loc) => `${loc.name}'s cdev`,
  },
  legacy: {
    lacksDevice: 'a container fd needs the group fd too',
    lacksContext: 'a group fd needs a container fd (or a legacy context)',
    device: (loc) => (loc.group ? loc.group.node : `${loc.name}'s group (it has none)`),
  },
};

/** Which route the fds are for, after checking each against what sysfs says it should be. */
export function checkPassedFds(kernel: Kernel, loc: DeviceLocation, fds: PassedFds, contextRoute: RouteName | null): RouteName {
  const given = (name: RouteName): boolean => fds[ROUTES[name].fds.device] !== undefined || fds[ROUTES[name].fds.context] !== undefined;
  if (given('iommufd') === given('legacy')) {
    throw new BadFdError('pass either the device (cdev) fd with an iommufd, or the group fd with a container fd');
  }
  const r = ROUTES[given('iommufd') ? 'iommufd' : 'legacy'];
  const deviceFd = fds[r.fds.device];
  const contextFd = fds[r.fds.context];
  if (deviceFd === undefined) throw new BadFdError(PAIR[r.name].lacksDevice);
  if (contextFd === undefined && contextRoute !== r.name) throw new BadFdError(PAIR[r.name].lacksContext);
  checkFd(kernel, deviceFd, r.fds.device, r.deviceDevnum(kernel, loc), PAIR[r.name].device(loc));
  if (contextFd !== undefined) checkFd(kernel, contextFd, r.fds.context, devnumAt(kernel, r.nodeDevAttr), r.node);
  return r.name;
}
