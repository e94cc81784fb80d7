// Driver binding through sysfs (drivers/base/bus.c, dd.c, drivers/pci/pci-sysfs.c): driver modules
// with their bind and unbind attributes, drivers_probe (which binds the override if set, else the
// device's natural driver, and succeeds whether or not a probe did), and module parameters.
// vfio-pci's probe fails without an IOMMU group; a host driver's fails while the group is claimed for
// user DMA. Unbinding a device open through VFIO blocks in the real kernel: the fake refuses it, and
// records the attempt in blockedUnbinds. kernelLog keeps what dmesg would say.
import { errnoNumber, sysError, type Errno } from './errno.js';
import { setDriver } from './host.js';
import { findDevice, vfioDriver, type DeviceState, type FakeState } from './state.js';
import { attr, mkdir, remove } from './sysfs.js';

/** sysfs_streq: what a bus attribute takes as a device name (one trailing newline ignored) */
const sysfsName = (text: string): string => text.replace(/\n$/, '').toLowerCase();

/** A PCI driver module is loaded: /sys/bus/pci/drivers/<name> with its bind and unbind attributes. */
export function loadDriver(s: FakeState, name: string): void {
  if (s.loadedDrivers.has(name)) return;
  s.loadedDrivers.add(name);
  const dir = `/sys/bus/pci/drivers/${name}`;
  mkdir(s, dir);
  mkdir(s, `/sys/module/${name.replace(/-/g, '_')}`);
  const writeOnly = (p: string) => (): string => {
    throw sysError('EACCES', 'open', p);
  };
  // drivers/base/bus.c unbind_store: the device must be bound to this driver, else ENODEV
  attr(s, `${dir}/unbind`, writeOnly(`${dir}/unbind`), (text, p) => {
    const dev = s.devices.get(sysfsName(text));
    if (!dev || dev.bus !== 'pci' || dev.driver !== name) throw sysError('ENODEV', 'write', p);
    unbindDevice(s, dev, p);
  });
  // bind_store: the driver must match (driver_override, else its id table) and probe it
  attr(s, `${dir}/bind`, writeOnly(`${dir}/bind`), (text, p) => {
    const dev = s.devices.get(sysfsName(text));
    if (!dev || dev.bus !== 'pci') throw sysError('ENODEV', 'write', p);
    if (dev.driver) throw sysError('EBUSY', 'write', p);
    if ((dev.override ?? dev.hostDriver) !== name) throw sysError('ENODEV', 'write', p);
    const why = probeFails(dev, name);
    if (why) {
      s.kernelLog.push(`${name} ${dev.name}: probe failed with error -${errnoNumber(why.errno)} (${why.reason})`);
      throw sysError(why.errno, 'write', p);
    }
    s.kernelLog.push(`${name} ${dev.name}: bound`);
    setDriver(s, dev.name, name);
  });
}

/** rmmod: the module goes (a device bound to it is unbound first). */
export function unloadDriver(s: FakeState, name: string): void {
  for (const d of s.devices.values()) if (d.bus === 'pci' && d.driver === name) setDriver(s, d.name, null);
  s.loadedDrivers.delete(name);
  remove(s, `/sys/bus/pci/drivers/${name}`);
  remove(s, `/sys/module/${name.replace(/-/g, '_')}`);
}

/** /sys/bus/pci/drivers_probe (write-only): the device written to it is probed, as probe() below */
export function driversProbe(s: FakeState): void {
  attr(s, '/sys/bus/pci/drivers_probe', () => {
    throw sysError('EACCES', 'open', '/sys/bus/pci/drivers_probe'); // write-only
  }, (text, p) => {
    const dev = s.devices.get(sysfsName(text));
    if (!dev || dev.bus !== 'pci') throw sysError('ENODEV', 'write', p);
    probe(s, dev); // succeeds whether or not a driver took it
  });
}

/**
 * Why unbinding the device would block in the real kernel (null: it would not): vfio-pci's remove
 * waits until every VFIO file of the device is closed (vfio_unregister_group_dev), and so does the
 * write to unbind. The fake counts a cdev open here (parked or bound), a device fd taken from the
 * group, a bind by another process, and a group held by another process (which may hold device fds).
 */
export function vfioInUse(s: FakeState, name: string): string | null {
  const dev = findDevice(s, name);
  if (!vfioDriver(dev)) return null;
  if (dev.files.size > 0) return 'this process has it open';
  if (dev.boundElsewhere) return 'another process has it bound through its cdev';
  if (dev.openCount > 0) return 'it is open';
  if (dev.group?.openedBy === 'elsewhere') return 'another process holds its group';
  return null;
}

/** device_release_driver, unless the device is open through VFIO (then the write would never return). */
function unbindDevice(s: FakeState, dev: DeviceState, p: string): void {
  const busy = vfioInUse(s, dev.name);
  if (busy) {
    s.blockedUnbinds.push({ device: dev.name, driver: dev.driver!, path: p });
    s.kernelLog.push(`${dev.driver} ${dev.name}: Relaying device request to user (${busy}); the unbind waits`);
    throw new Error(`fake: writing ${dev.name} to ${p} would block: ${dev.name} is in use through VFIO (${busy})`);
  }
  s.kernelLog.push(`${dev.driver} ${dev.name}: unbound`);
  setDriver(s, dev.name, null);
}

/** Why `driver` would fail to probe the device, or null. */
function probeFails(dev: DeviceState, driver: string): { errno: Errno; reason: string } | null {
  if (driver.startsWith('vfio')) {
    // vfio_pci_core_register_device -> vfio_device_set_group: no IOMMU group, no VFIO device
    return dev.group ? null : { errno: 'EINVAL', reason: 'no iommu_group' };
  }
  if (driver === 'pci-stub' || driver === 'pcieport') return null;
  // iommu_device_use_default_domain: a kernel driver may not join a group claimed for user DMA
  // (a group is claimed by a bind through a cdev, or once its group file is in a container; another
  // process's hold is taken as claimed)
  const g = dev.group;
  const claimed = g && (g.cdevBound > 0 || g.openedBy === 'elsewhere' || (g.openedBy !== null && g.openedBy.container !== null));
  if (claimed) return { errno: 'EBUSY', reason: 'its IOMMU group is owned for user DMA' };
  return null;
}

/** device_attach: the override if set, else the natural driver, if loaded and its probe succeeds. */
function probe(s: FakeState, dev: DeviceState): void {
  if (dev.driver) return;
  const driver = dev.override ?? dev.hostDriver;
  if (!driver || !s.loadedDrivers.has(driver)) return;
  const why = probeFails(dev, driver);
  if (why) {
    s.kernelLog.push(`${driver} ${dev.name}: probe failed with error -${errnoNumber(why.errno)} (${why.reason})`);
    return;
  }
  s.kernelLog.push(`${driver} ${dev.name}: bound`);
  setDriver(s, dev.name, driver);
}

/** /sys/module/<module>/parameters/allow_unsafe_interrupts, live with allowUnsafe (writable by root as the real one). */
export function moduleParam(s: FakeState, module: string, key: 'iommufd' | 'type1'): void {
  const p = `/sys/module/${module}/parameters/allow_unsafe_interrupts`;
  attr(s, p, () => (s.allowUnsafe[key] ? 'Y' : 'N'), (text, path2) => {
    const v = text.trim();
    if (!/^[YyNn10]$/.test(v)) throw sysError('EINVAL', 'write', path2);
    s.allowUnsafe[key] = /^[Yy1]$/.test(v);
  });
}
