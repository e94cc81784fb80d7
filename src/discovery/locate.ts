// sysfs and /dev discovery: from a device spec to everything the routes need to know, read without
// opening any VFIO node (opening one changes ownership; see routes/select.ts). What a successful bind
// does not use (the group's members and node, the cdev) is read when first asked for, then kept.
import { posix } from 'node:path';
import { DeviceNotFoundError, UsageError } from '../errors.js';
import type { Kernel } from '../sys/kernel.js';
import { parseDeviceSpec, printable, type DeviceSpec } from './spec.js';

export interface GroupMember {
  /** PCI address or mdev UUID */
  name: string;
  driver: string | null;
  /** may share the group with a device assigned through VFIO (see vfioSafeDriver) */
  vfioSafe: boolean;
}

/**
 * A device's IOMMU group. Only `id` is read when the device is located; the rest is read from sysfs
 * and /dev the first time it is asked for, then kept (a bind that succeeds needs none of it: the
 * kernel checks viability itself, and the report and the errors read it when they are written).
 */
export interface GroupLocation {
  readonly id: number;
  /** /dev/vfio/N, or /dev/vfio/noiommu-N for a group the kernel runs without an IOMMU */
  readonly node: string;
  readonly noiommu: boolean;
  readonly members: GroupMember[];
  /** the members that keep the group from being viable: bound to a driver that is not VFIO-safe */
  readonly blockers: GroupMember[];
}

/** A device's VFIO cdev. `name` is read when the device is located, the rest when first asked for. */
export interface CdevLocation {
  /** vfioN, the name under the device's sysfs vfio-dev/ */
  readonly name: string;
  /** the cdev's device number from vfio-dev/vfioN/dev, or null when the kernel has no cdev for it */
  readonly devnum: { major: number; minor: number } | null;
  /** /dev/vfio/devices/vfioN: the node tried first, named without reading anything */
  readonly node: string;
  /** nodes to try, in order (node, then udev's /dev/char link); each is used only if it is this cdev */
  readonly nodes: string[];
  /** the cdev's sysfs directory, where /sys/dev/char/MAJ:MIN of its node must lead */
  readonly sysfsDir: string;
}

export interface DeviceLocation {
  spec: string;
  /** PCI address or mdev UUID: the name VFIO_GROUP_GET_DEVICE_FD takes */
  name: string;
  bus: 'pci' | 'mdev';
  sysfsPath: string;
  driver: string | null;
  group: GroupLocation | null;
  /** read from sysfs when first asked for */
  readonly cdev: CdevLocation | null;
}

const SYS_DEVICES = '/sys/devices/';
const PCI_ADDRESS = /^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * Drivers that may hold a device in a group assigned through VFIO: VFIO's own (vfio-pci and its
 * variants, mdev parents' vendor drivers bind the mdev itself) and the ones the kernel marks
 * driver_managed_dma (pci-stub, pcieport). Anything else makes the group not viable.
 */
export function vfioSafeDriver(driver: string | null): boolean {
  return driver === null || driver.startsWith('vfio') || driver === 'pci-stub' || driver === 'pcieport';
}

const tail = (path: string): string => path.slice(path.lastIndexOf('/') + 1);

/** A function that computes its value on the first call and then returns the kept value. */
function once<V>(compute: () => V): () => V {
  let done = false;
  let value: V;
  return () => {
    if (!done) {
      value = compute();
      done = true;
    }
    return value;
  };
}

/** The driver a sysfs device directory is bound to, or null. */
export function driverOf(kernel: Kernel, sysfsPath: string): string | null {
  return tryReadlinkTail(kernel, `${sysfsPath}/driver`);
}

/** A sysfs `dev` attribute ("MAJ:MIN"), or null when it is absent or not one. */
export function readDevnum(kernel: Kernel, path: string): { major: number; minor: number } | null {
  try {
    const m = /^([0-9]+):([0-9]+)$/.exec(kernel.readText(path));
    return m ? { major: Number(m[1]), minor: Number(m[2]) } : null;
  } catch {
    return null;
  }
}

/** The last component of a symlink's target, or null where there is no link. */
export function tryReadlinkTail(kernel: Kernel, path: string): string | null {
  try {
    return tail(kernel.readlink(path));
  } catch {
    return null;
  }
}

/** A file's text, or null where it cannot be read. */
export function readOrNull(kernel: Kernel, path: string): string | null {
  try {
    return kernel.readText(path);
  } catch {
    return null;
  }
}

/**
 * The target of a /sys/bus/{pci,mdev}/devices/NAME link, which the kernel makes relative to a real
 * directory under /sys/devices: one readlink where realpath(3) checks every component of both paths
 * (a dozen system calls, each slow under emulation). Null for other specs, when it is not a link, or
 * when it leads elsewhere.
 */
function busLinkTarget(kernel: Kernel, spec: DeviceSpec, candidate: string): string | null {
  if (spec.kind !== 'pci' && spec.kind !== 'mdev') return null;
  let target: string;
  try {
    target = kernel.readlink(candidate);
  } catch {
    return null; // absent, or not a link: realpath() says which
  }
  const resolved = posix.resolve(posix.dirname(candidate), target);
  return resolved.startsWith(SYS_DEVICES) ? resolved : null; // anything odd: realpath() judges it
}

/**
 * Resolves a spec to its sysfs device directory (under /sys/devices) or throws. `bus` is known without
 * reading the subsystem link when the spec was found through /sys/bus/{pci,mdev}/devices, whose links
 * the kernel makes for that bus's devices only.
 */
function resolveSysfs(kernel: Kernel, spec: DeviceSpec, raw: string): { path: string; bus: DeviceLocation['bus'] | null } {
  let candidate: string;
  switch (spec.kind) {
    case 'pci': candidate = `/sys/bus/pci/devices/${spec.address}`; break;
    case 'mdev': candidate = `/sys/bus/mdev/devices/${spec.uuid}`; break;
    case 'cdev': candidate = `/sys/class/vfio-dev/${spec.name}/device`; break;
    case 'sysfs': candidate = spec.path; break;
  }
  let real: string;
  let bus: DeviceLocation['bus'] | null = null;
  try {
    const linked = busLinkTarget(kernel, spec, candidate);
    if (linked !== null && (spec.kind === 'pci' || spec.kind === 'mdev')) bus = spec.kind;
    real = linked ?? kernel.realpath(candidate);
  } catch {
    throw new DeviceNotFoundError(`no device ${printable(raw)}: ${candidate} does not exist`, {
      path: candidate,
      errno: 'ENOENT',
      hint: spec.kind === 'cdev'
        ? 'list the VFIO devices with `vfio-bind list`'
        : 'check the address with `lspci -D` or `vfio-bind list`',
    });
  }
  // A symlink under /sys/bus may point anywhere a malicious or confused caller arranged; only real
  // device directories are accepted.
  if (!real.startsWith(SYS_DEVICES)) {
    throw new UsageError(`invalid device ${printable(raw)}: ${candidate} resolves to ${real}, outside ${SYS_DEVICES}`);
  }
  return { path: real, bus };
}

/** `self` is the located device, whose driver and bus are known already (often the only member). */
function readGroup(kernel: Kernel, sysfsPath: string, self: { name: string; driver: string | null; bus: DeviceLocation['bus'] }): GroupLocation | null {
  const groupId = tryReadlinkTail(kernel, `${sysfsPath}/iommu_group`);
  if (groupId === null || !/^[0-9]+$/.test(groupId)) return null;
  const id = Number(groupId);
  const plain = `/dev/vfio/${id}`;
  const noiommuNode = `/dev/vfio/noiommu-${id}`;
  // The node name is the kernel's own statement: noiommu-N for a group VFIO runs without an IOMMU.
  // (The group's sysfs name, "vfio-noiommu", is shared by emulated mdev groups, whose node is N.)
  const noiommu = once(() => !kernel.exists(plain) && kernel.exists(noiommuNode));
  const members = once(() => {
    let names: string[] = [];
    try {
      names = kernel.readdir(`/sys/kernel/iommu_groups/${id}/devices`).sort();
    } catch {
      // A group without a devices/ directory lists no members; the routes will tell what is wrong.
    }
    return names.map((name) => {
      const dir = `/sys/kernel/iommu_groups/${id}/devices/${name}`;
      const own = name === self.name;
      const driver = own ? self.driver : tryReadlinkTail(kernel, `${dir}/driver`);
      // An mdev is bound to its parent's vendor driver (mtty, say), which is VFIO's own by construction.
      const mdev = own ? self.bus === 'mdev' : tryReadlinkTail(kernel, `${dir}/subsystem`) === 'mdev';
      return { name, driver, vfioSafe: mdev || vfioSafeDriver(driver) };
    });
  });
  // getters of an object literal are own and enumerable: JSON.stringify and spreads read them
  return {
    id,
    get noiommu() { return noiommu(); },
    get node() { return noiommu() ? noiommuNode : plain; },
    get members() { return members(); },
    get blockers() { return members().filter((m) => !m.vfioSafe); },
  };
}

function readCdev(kernel: Kernel, sysfsPath: string): CdevLocation | null {
  let entries: string[];
  try {
    entries = kernel.readdir(`${sysfsPath}/vfio-dev`);
  } catch {
    return null;
  }
  const name = entries.find((e) => /^vfio[0-9]+$/.test(e));
  if (!name) return null;
  const sysfsDir = `${sysfsPath}/vfio-dev/${name}`;
  // No `dev` attribute: the kernel has no cdev for this device (no VFIO_DEVICE_CDEV, or noiommu).
  const devnum = once(() => readDevnum(kernel, `${sysfsDir}/dev`));
  const node = `/dev/vfio/devices/${name}`;
  return {
    name,
    node,
    sysfsDir,
    get devnum() { return devnum(); },
    get nodes() {
      const d = devnum();
      return d ? [node, `/dev/char/${d.major}:${d.minor}`] : [node];
    },
  };
}

/** Everything the routes need about one device, from sysfs and /dev, without opening VFIO nodes. */
export function locateDevice(kernel: Kernel, rawSpec: string): DeviceLocation {
  const spec = parseDeviceSpec(rawSpec);
  const { path: sysfsPath, bus: linkedBus } = resolveSysfs(kernel, spec, rawSpec);
  const name = tail(sysfsPath);
  const subsystem = linkedBus ?? tryReadlinkTail(kernel, `${sysfsPath}/subsystem`);
  let bus: DeviceLocation['bus'];
  if (subsystem === 'pci' && PCI_ADDRESS.test(name)) bus = 'pci';
  else if (subsystem === 'mdev' && UUID.test(name)) bus = 'mdev';
  else {
    throw new UsageError(`${printable(rawSpec)} is not a PCI or mdev device (${sysfsPath}, bus ${subsystem ?? 'unknown'})`);
  }
  const driver = driverOf(kernel, sysfsPath);
  const cdev = once(() => readCdev(kernel, sysfsPath)); // the legacy route never asks
  return {
    spec: rawSpec,
    name,
    bus,
    sysfsPath,
    driver,
    group: readGroup(kernel, sysfsPath, { name, driver, bus }),
    get cdev() { return cdev(); },
  };
}

/** Devices VFIO could take or holds: everything with a vfio-dev entry or an IOMMU group, PCI and mdev. */
export function listDevices(kernel: Kernel): DeviceLocation[] {
  const found: DeviceLocation[] = [];
  for (const [dir, bus] of [['/sys/bus/pci/devices', 'pci'], ['/sys/bus/mdev/devices', 'mdev']] as const) {
    let names: string[] = [];
    try {
      names = kernel.readdir(dir).sort();
    } catch {
      continue; // no such bus here
    }
    for (const name of names) {
      try {
        const loc = locateDevice(kernel, bus === 'pci' ? name : name.toLowerCase());
        if (loc.driver?.startsWith('vfio') || loc.cdev || loc.bus === 'mdev') found.push(loc);
      } catch {
        // A device that vanished while we looked is simply not listed.
      }
    }
  }
  return found;
}

/** Why a host shows no VFIO device, in one sentence. */
export function whyNoVfio(kernel: Kernel): string {
  if (!kernel.exists('/sys/bus/pci/devices')) return 'this system has no PCI bus in sysfs';
  if (!kernel.exists('/dev/vfio')) return 'the VFIO modules are not loaded (no /dev/vfio): modprobe vfio-pci';
  if (!kernel.exists('/sys/class/iommu') || kernel.readdir('/sys/class/iommu').length === 0) {
    return 'no device is bound to a VFIO driver, and no IOMMU is enabled (nothing in /sys/class/iommu)';
  }
  return 'no device is bound to a VFIO driver (hand one to vfio-pci through its driver_override in sysfs)';
}
