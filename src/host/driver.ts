// Moving a PCI device between its host driver and vfio-pci through sysfs (driver_override, unbind,
// drivers_probe), remembering the original driver under /run so that a later process can restore it.
// Writing drivers_probe succeeds even when the probe failed: the `driver` link is the only truth.
import { DeviceBusyError, KernelError, NoRouteError, PermissionDeniedError, UsageError } from '../errors.js';
import { driverOf, locateDevice, type DeviceLocation } from '../discovery/locate.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { isSysError, type Kernel } from '../sys/kernel.js';

export const STATE_DIR = '/run/vfio-bind/drivers';
const VFIO_PCI = 'vfio-pci';

export interface DriverChange {
  device: string;
  /** the driver before (null: none) */
  from: string | null;
  /** the driver after */
  to: string | null;
  /** false when the device already had the wanted driver */
  changed: boolean;
}

export interface DriverOptions {
  /** also move the other devices of the IOMMU group that are on host drivers (default: refuse) */
  group?: boolean;
  logger?: Logger;
}

function statePath(name: string): string {
  return `${STATE_DIR}/${name}.json`;
}

function readState(kernel: Kernel, name: string): { driver: string | null } | null {
  try {
    const parsed = JSON.parse(kernel.readText(statePath(name))) as { driver?: unknown };
    return { driver: typeof parsed.driver === 'string' ? parsed.driver : null };
  } catch {
    return null;
  }
}

/** A sysfs write; a refusal becomes an error naming the file. */
function sysfsWrite(kernel: Kernel, path: string, text: string): void {
  try {
    kernel.writeText(path, text);
  } catch (e) {
    if (!isSysError(e)) throw e;
    if (e.code === 'EACCES' || e.code === 'EPERM') {
      throw new PermissionDeniedError(`changing a device's driver needs root: writing ${path} answered ${e.code}`, {
        errno: e.code, path, hint: 'run as root (sudo)', cause: e,
      });
    }
    throw new KernelError(`writing "${text.trim()}" to ${path} answered ${e.code}`, { errno: e.code, path, step: 'sysfs write', cause: e });
  }
}

/**
 * The processes that hold VFIO nodes of the device's IOMMU group open (the group node, or the cdev of
 * any member), from /proc/<pid>/fd: while one does, unbinding any member from vfio-pci would block,
 * and a host driver could not take it (the group is claimed for user DMA).
 */
export function vfioUsers(kernel: Kernel, loc: DeviceLocation): number[] {
  const nodes = new Set<string>();
  if (loc.group) nodes.add(loc.group.node);
  const members = loc.group ? loc.group.members.map((m) => m.name) : [loc.name];
  for (const name of members) {
    let cdev = name === loc.name ? loc.cdev : null;
    if (name !== loc.name) {
      try {
        cdev = locateDevice(kernel, name).cdev;
      } catch {
        cdev = null; // a member that vanished holds nothing
      }
    }
    for (const n of cdev?.nodes ?? []) nodes.add(n);
  }
  if (nodes.size === 0) return [];
  const pids: number[] = [];
  let entries: string[] = [];
  try {
    entries = kernel.readdir('/proc');
  } catch {
    return [];
  }
  for (const pid of entries) {
    if (!/^[0-9]+$/.test(pid)) continue;
    let fds: string[] = [];
    try {
      fds = kernel.readdir(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours to see
    }
    for (const fd of fds) {
      try {
        if (nodes.has(kernel.readlink(`/proc/${pid}/fd/${fd}`))) {
          pids.push(Number(pid));
          break;
        }
      } catch {
        // closed meanwhile
      }
    }
  }
  return pids;
}

function pciOnly(loc: DeviceLocation): void {
  if (loc.bus !== 'pci') throw new UsageError(`${loc.name} is an mdev: its driver is its parent's, not ours to change`);
}

/** The devices to move: the device, and with `group` the other group members on host drivers. */
function membersToMove(kernel: Kernel, loc: DeviceLocation, group: boolean, direction: 'to' | 'from'): DeviceLocation[] {
  const others = (loc.group?.members ?? []).filter((m) => m.name !== loc.name);
  const hosts = others.filter((m) => !m.vfioSafe);
  if (direction === 'to' && hosts.length > 0 && !group) {
    throw new UsageError(
      `IOMMU group ${loc.group!.id} of ${loc.name} also holds ${hosts.map((m) => `${m.name} (${m.driver})`).join(', ')}: ` +
        'VFIO needs the whole group, so moving only this device would not make it usable',
      { hint: 'move the whole group with --group (every member then leaves its host driver)' },
    );
  }
  if (!group) return [loc];
  const names = direction === 'to' ? hosts.map((m) => m.name) : others.filter((m) => readState(kernel, m.name)).map((m) => m.name);
  return [loc, ...names.map((n) => locateDevice(kernel, n))];
}

/** Binds the device (and with `group`, its group's other host-driver devices) to vfio-pci. */
export function moveToVfio(kernel: Kernel, spec: string, options: DriverOptions = {}): DriverChange[] {
  const log = options.logger ?? silentLogger;
  const loc = locateDevice(kernel, spec);
  pciOnly(loc);
  if (!kernel.exists(`/sys/bus/pci/drivers/${VFIO_PCI}`)) {
    throw new NoRouteError('the vfio-pci driver is not loaded', { path: `/sys/bus/pci/drivers/${VFIO_PCI}`, hint: 'load it: modprobe vfio-pci' });
  }
  return membersToMove(kernel, loc, options.group ?? false, 'to').map((dev) => moveOne(kernel, dev, log));
}

function moveOne(kernel: Kernel, loc: DeviceLocation, log: Logger): DriverChange {
  const from = driverOf(kernel, loc.sysfsPath);
  if (from === VFIO_PCI) return { device: loc.name, from, to: from, changed: false };
  // Remember the host driver first: if anything below fails half-way, --restore still knows it.
  if (!readState(kernel, loc.name)) {
    try {
      kernel.mkdirp(STATE_DIR);
    } catch (e) {
      if (isSysError(e) && (e.code === 'EACCES' || e.code === 'EPERM')) {
        throw new PermissionDeniedError(`changing a device's driver needs root (cannot create ${STATE_DIR})`, { errno: e.code, path: STATE_DIR, hint: 'run as root (sudo)' });
      }
      throw e;
    }
    sysfsWrite(kernel, statePath(loc.name), `${JSON.stringify({ driver: from, since: new Date().toISOString() })}\n`);
  }
  sysfsWrite(kernel, `${loc.sysfsPath}/driver_override`, VFIO_PCI);
  if (from) sysfsWrite(kernel, `${loc.sysfsPath}/driver/unbind`, loc.name);
  probe(kernel, loc.name);
  const to = driverOf(kernel, loc.sysfsPath);
  log.info({ device: loc.name, from, to }, 'driver change');
  if (to !== VFIO_PCI) {
    // Put the device back where it was: its driver, or none if it had none.
    sysfsWrite(kernel, `${loc.sysfsPath}/driver_override`, '\n');
    if (to === null && from !== null) probe(kernel, loc.name);
    kernel.unlink(statePath(loc.name));
    throw new KernelError(`vfio-pci did not take ${loc.name} (its probe failed${to ? `; ${to} has it` : ''}): the kernel log says why`, {
      path: `${loc.sysfsPath}/driver`,
      hint: 'a device without an IOMMU group cannot go to vfio-pci: enable the IOMMU (intel_iommu=on or amd_iommu=on)',
    });
  }
  return { device: loc.name, from, to, changed: true };
}

/** Gives the device (and with `group`, the group members moved with it) back to its original driver. */
export function restoreDriver(kernel: Kernel, spec: string, options: DriverOptions = {}): DriverChange[] {
  const log = options.logger ?? silentLogger;
  const loc = locateDevice(kernel, spec);
  pciOnly(loc);
  const users = vfioUsers(kernel, loc);
  if (users.length > 0) {
    throw new DeviceBusyError(`${loc.name}${loc.group && loc.group.members.length > 1 ? ` (or a device of its IOMMU group ${loc.group.id})` : ''} is in use through VFIO by process ${users.join(', ')}: its driver stays`, {
      path: loc.group?.node, hint: 'close the device in that process first (unbinding vfio-pci would wait for it)',
    });
  }
  return membersToMove(kernel, loc, options.group ?? false, 'from').map((dev) => restoreOne(kernel, dev, log));
}

function restoreOne(kernel: Kernel, loc: DeviceLocation, log: Logger): DriverChange {
  const state = readState(kernel, loc.name);
  const from = driverOf(kernel, loc.sysfsPath);
  const override = (() => {
    try {
      return kernel.readText(`${loc.sysfsPath}/driver_override`).trim();
    } catch {
      return '';
    }
  })();
  if (!state && from !== VFIO_PCI && (override === '' || override === '(null)')) {
    return { device: loc.name, from, to: from, changed: false };
  }
  sysfsWrite(kernel, `${loc.sysfsPath}/driver_override`, '\n');
  if (from) sysfsWrite(kernel, `${loc.sysfsPath}/driver/unbind`, loc.name);
  // A device remembered without a driver stays without one; otherwise its driver takes it back.
  if (!state || state.driver !== null) probe(kernel, loc.name);
  const to = driverOf(kernel, loc.sysfsPath);
  log.info({ device: loc.name, from, to }, 'driver restored');
  if (state?.driver && to !== state.driver) {
    throw new KernelError(`${loc.name} went to ${to ?? 'no driver'}, not back to ${state.driver}`, {
      path: `${loc.sysfsPath}/driver`, hint: `is the ${state.driver} module loaded? (modprobe ${state.driver})`,
    });
  }
  if (state) kernel.unlink(statePath(loc.name));
  return { device: loc.name, from, to, changed: true };
}

/** Asks the driver core to probe the device again; the result is read from the driver link. */
function probe(kernel: Kernel, name: string): void {
  try {
    kernel.writeText('/sys/bus/pci/drivers_probe', name);
  } catch (e) {
    // Some kernels answer an error when no driver took it; the driver link tells either way.
    if (!isSysError(e)) throw e;
    if (e.code === 'EACCES' || e.code === 'EPERM') sysfsWrite(kernel, '/sys/bus/pci/drivers_probe', name);
  }
}
