// Building the host: the tree a kernel of the test bed boots with (the vfio and iommufd modules and
// their nodes, the IOMMU class, the bus directories), PCI devices and mdevs with their IOMMU groups,
// and what binding a device to a driver makes appear: the driver links, and for a VFIO driver the
// group node /dev/vfio/N, the vfio-dev entry and, on iommufd kernels, the cdev
// /dev/vfio/devices/vfioN. Driver binding through sysfs (bind, unbind, drivers_probe) is in drivers.ts.
import { gzipSync } from 'node:zlib';
import { newMigrationDriver } from './migration.js';
import { makedev } from '../../src/sys/kernel.js';
import { VFIO_DEVICE_FLAGS, VFIO_MIGRATION, VFIO_PCI_NUM_REGIONS, VFIO_PCI_REGION, VFIO_REGION_INFO_FLAG } from '../../src/uapi/vfio.js';
import { driversProbe, loadDriver, moduleParam } from './drivers.js';
import { newEdu } from './edu.js';
import { FAKE_VTD } from './hwpt.js';
import { sysError } from './errno.js';
import { defaultCmdline, kernelConfigText, procInterrupts, procStatus, writeLimits } from './proc.js';
import { findDevice, groupName, noIrqs, PAGE, RDEV, vfioDriver, type DeviceState, type FakeState } from './state.js';
import { attr, link, mkdir, mknod, mknodIfAbsent, put, remove, symlink, writeFile } from './sysfs.js';
import type { FakeRegion, HostOptions, MdevOptions, PciDeviceOptions } from './types.js';

/** each IOMMU unit's device directory, where /sys/class/iommu/<unit> points */
const IOMMU_UNIT = {
  intel: '/sys/devices/virtual/iommu/dmar0',
  virtio: '/sys/devices/pci0000:00/0000:00:01.0/virtio0/iommu/0000:00:01.0',
  smmuv3: '/sys/devices/platform/9050000.smmuv3/iommu/smmu3.0x0000000009050000',
} as const;
/** QEMU virt's GICv3 ITS in the device tree, as an arm64 guest of the test bed shows it */
const GIC_ITS_NODE = '/sys/firmware/devicetree/base/intc@8000000/its@8080000';

/** The tree before any device: /proc/self, the modules loaded, the bus's attributes, what doctor reads. */
export function buildHost(s: FakeState, options: Omit<HostOptions, 'devices' | 'mdevs'>): void {
  mkdir(s, `/proc/${s.pid}/fd`);
  symlink(s, '/proc/self', String(s.pid));
  writeLimits(s);

  for (const dir of ['/sys/bus/pci/devices', '/sys/bus/pci/drivers', '/sys/bus/mdev/devices', '/sys/kernel/iommu_groups', '/sys/class/vfio-dev', '/sys/class/iommu', '/dev/char']) {
    mkdir(s, dir);
  }
  if (s.iommu === 'intel') {
    symlink(s, '/sys/class/iommu/dmar0', '../../devices/virtual/iommu/dmar0');
    // intel-iommu's attributes print the registers with %llx
    writeFile(s, `${IOMMU_UNIT.intel}/intel-iommu/cap`, FAKE_VTD.cap.toString(16));
    writeFile(s, `${IOMMU_UNIT.intel}/intel-iommu/ecap`, (s.iommuDirtyTracking ? FAKE_VTD.ecap | (1n << 45n) | (1n << 43n) : FAKE_VTD.ecap).toString(16));
  }
  if (s.iommu === 'smmuv3') {
    symlink(s, '/sys/class/iommu/smmu3.0x0000000009050000', '../../devices/platform/9050000.smmuv3/iommu/smmu3.0x0000000009050000');
    writeFile(s, `${GIC_ITS_NODE}/compatible`, 'arm,gic-v3-its\0');
  }
  if (s.iommu === 'virtio') {
    symlink(s, '/sys/class/iommu/0000:00:01.0', '../../devices/pci0000:00/0000:00:01.0/virtio0/iommu/0000:00:01.0');
    writeFile(s, '/sys/devices/pci0000:00/0000:00:01.0/virtio0/modalias', 'virtio:d00000017v00001AF4');
    link(s, `${IOMMU_UNIT.virtio}/device`, '/sys/devices/pci0000:00/0000:00:01.0/virtio0');
  }
  const vfio = options.vfio ?? true;
  if (vfio) {
    mknod(s, '/dev/vfio/vfio', RDEV.vfioContainer, 0o666);
    writeFile(s, '/sys/class/misc/vfio/dev', '10:196');
    mkdir(s, '/sys/module/vfio/parameters');
    mkdir(s, '/sys/module/vfio_pci');
    writeFile(s, '/sys/module/vfio/parameters/enable_unsafe_noiommu_mode', s.iommu === 'noiommu' ? 'Y' : 'N');
    loadDriver(s, 'vfio-pci');
    if (s.type1Available) moduleParam(s, 'vfio_iommu_type1', 'type1');
  }
  if (s.hasIommufd) {
    mkdir(s, '/sys/class/misc/iommu');
    writeFile(s, '/sys/class/misc/iommu/dev', '10:258');
    mknod(s, '/dev/iommu', RDEV.iommu, 0o660);
    moduleParam(s, 'iommufd', 'iommufd');
  }
  for (const d of options.drivers ?? []) loadDriver(s, d);

  driversProbe(s); // the bus's own attribute

  // what doctor reads
  const release = options.release ?? (s.hasIommufd ? '6.12.9-vfio' : '6.1.0-28-amd64');
  writeFile(s, '/proc/sys/kernel/osrelease', release);
  writeFile(s, '/proc/cmdline', options.cmdline ?? defaultCmdline(release, s.iommu, s.allowUnsafe));
  attr(s, '/proc/interrupts', () => procInterrupts(s.interruptRemapping, s.iommu));
  attr(s, `/proc/${s.pid}/status`, () => procStatus(s));
  const config = kernelConfigText(s.hasIommufd);
  if ((options.kernelConfig ?? 'boot') === 'boot') writeFile(s, `/boot/config-${release}`, config);
  else if (options.kernelConfig === 'proc') put(s, '/proc/config.gz', { kind: 'file', text: '', data: gzipSync(Buffer.from(config)) });
}

/** vfio-pci's answer for QEMU's edu device (FINDINGS.md section 5). */
function defaultRegions(): Map<number, FakeRegion | null> {
  const m = new Map<number, FakeRegion | null>();
  for (let i = 0; i < VFIO_PCI_NUM_REGIONS; i++) m.set(i, { size: 0, flags: 0 });
  const F = VFIO_REGION_INFO_FLAG;
  m.set(VFIO_PCI_REGION.BAR0, { size: 0x100000, flags: F.READ | F.WRITE | F.MMAP });
  m.set(VFIO_PCI_REGION.CONFIG, { size: 0x100, flags: F.READ | F.WRITE });
  m.set(VFIO_PCI_REGION.VGA, null); // vfio-pci: EINVAL for VGA on a non-VGA device
  return m;
}

function configSpace(id: string, capabilities: { id: number; offset: number }[] = [{ id: 0x05, offset: 0x40 }]): Buffer {
  const [vendor, device] = id.split(':').map((h) => parseInt(h, 16));
  const c = Buffer.alloc(256);
  c.writeUInt16LE(vendor ?? 0xffff, 0x00);
  c.writeUInt16LE(device ?? 0xffff, 0x02);
  c.writeUInt16LE(0x0010, 0x06); // status: capabilities list
  c.writeUInt8(0x10, 0x08); // revision
  c.writeUIntLE(0x00ff00, 0x09, 3); // class: unassigned
  c.writeUInt32LE(0xfea00000, 0x10); // BAR0
  c.writeUInt16LE(0x1af4, 0x2c);
  c.writeUInt16LE(0x1100, 0x2e);
  c.writeUInt8(0x01, 0x3d); // INTA
  // the capability list: 0x34 points at the first, each one's byte 1 at the next
  c.writeUInt8(capabilities[0]?.offset ?? 0, 0x34);
  capabilities.forEach((cap, i) => {
    c.writeUInt8(cap.id, cap.offset);
    c.writeUInt8(capabilities[i + 1]?.offset ?? 0, cap.offset + 1);
  });
  return c;
}

/** A PCI device under /sys/devices/pciDDDD:BB, with its driver, group and vfio-dev entries. */
export function addPciDevice(s: FakeState, o: PciDeviceOptions): void {
  const address = o.address.toLowerCase();
  if (s.devices.has(address)) throw new Error(`fake: ${address} exists`);
  const noIommu = s.iommu === 'none';
  const driver = o.driver !== undefined ? o.driver : noIommu ? null : 'vfio-pci';
  const groupId = o.group !== undefined ? o.group : noIommu ? null : freeGroupId(s);
  const dir = `/sys/devices/pci${address.slice(0, 7)}/${address}`;
  const id = o.id ?? '1234:11e8';
  const hostDriver = o.hostDriver !== undefined ? o.hostDriver : driver !== null && !driver.startsWith('vfio') ? driver : null;
  const dev: DeviceState = {
    name: address, bus: 'pci', sysfsPath: dir, driver, hostDriver, override: null, group: null, cdevIndex: null, openCount: 0, boundElsewhere: false,
    flags: o.flags ?? VFIO_DEVICE_FLAGS.PCI, regions: defaultRegions(), config: configSpace(id, o.capabilities),
    bars: new Map(), edu: (o.bar0 ?? (id === '1234:11e8' ? 'edu' : 'ram')) === 'edu' ? newEdu() : null,
    irqCounts: { intx: o.irqs?.intx ?? 1, msi: o.irqs?.msi ?? 1, msix: o.irqs?.msix ?? 0, pcie: o.irqs?.pcie ?? false },
    irq: noIrqs(), hotReset: o.hotReset?.map((h) => (typeof h === 'string' ? { address: h.toLowerCase(), group: undefined } : { ...h, address: h.address.toLowerCase() })) ?? null,
    resets: 0, migration: null, mig: null, files: new Set(), mirrors: new Set(),
  };
  for (const [index, region] of Object.entries(o.regions ?? {})) dev.regions.set(Number(index), region);
  const [vendor, device] = id.split(':');
  writeFile(s, `${dir}/vendor`, `0x${vendor}`);
  writeFile(s, `${dir}/device`, `0x${device}`);
  writeFile(s, `${dir}/class`, '0x00ff00');
  // drivers/pci/pci-sysfs.c driver_override_store -> driver_set_override: one trailing newline
  // stripped, empty clears it; PAGE_SIZE or longer is EINVAL. Only drivers_probe acts on it.
  attr(s, `${dir}/driver_override`, () => dev.override ?? '(null)', (text, p) => {
    if (text.length >= PAGE - 1) throw sysError('EINVAL', 'write', p);
    const value = text.endsWith('\n') ? text.slice(0, -1) : text;
    dev.override = value === '' ? null : value;
  });
  link(s, `${dir}/subsystem`, '/sys/bus/pci');
  if (hostDriver) loadDriver(s, hostDriver);
  link(s, `/sys/bus/pci/devices/${address}`, dir);
  s.devices.set(address, dev);
  attach(s, dev, groupId, false, o.cdev);
  setDriver(s, address, driver);
}

/** An mdev (mtty-like): bound to its parent's vendor driver, in an emulated-IOMMU group whose node is /dev/vfio/N. */
export function addMdev(s: FakeState, o: MdevOptions): void {
  const uuid = o.uuid.toLowerCase();
  const dir = `/sys/devices/virtual/mtty/mtty/${uuid}`;
  const dev: DeviceState = {
    name: uuid, bus: 'mdev', sysfsPath: dir, driver: o.driver ?? 'mtty', hostDriver: null, override: null, group: null, cdevIndex: null, openCount: 0, boundElsewhere: false,
    flags: VFIO_DEVICE_FLAGS.PCI, regions: defaultRegions(), config: configSpace('4348:3253'), bars: new Map(), edu: null,
    irqCounts: { intx: 1, msi: 1, msix: 0, pcie: false }, irq: noIrqs(), hotReset: null, resets: 0, files: new Set(), mirrors: new Set(),
    // samples/vfio-mdev/mtty.c: STOP_COPY | P2P | PRE_COPY
    migration: o.migration === undefined ? VFIO_MIGRATION.STOP_COPY | VFIO_MIGRATION.P2P | VFIO_MIGRATION.PRE_COPY : o.migration,
    mig: null,
  };
  if (dev.migration !== null) dev.mig = newMigrationDriver(dev, o.ports ?? 2, o.dmaLogging ?? true);
  link(s, `${dir}/subsystem`, '/sys/bus/mdev');
  link(s, `/sys/bus/mdev/devices/${uuid}`, dir);
  s.devices.set(uuid, dev);
  attach(s, dev, o.group ?? freeGroupId(s), true, o.cdev);
  setDriver(s, uuid, dev.driver);
}

function freeGroupId(s: FakeState): number {
  let id = s.firstGroup;
  while (s.groups.has(id)) id++;
  return id;
}

function attach(s: FakeState, dev: DeviceState, groupId: number | null, emulated: boolean, cdev: number | null | undefined): void {
  if (groupId !== null) {
    let g = s.groups.get(groupId);
    if (!g) {
      g = { id: groupId, noiommu: s.iommu === 'noiommu' && !emulated, emulated, minor: s.nextGroupMinor++, members: [], openedBy: null, cdevBound: 0 };
      s.groups.set(groupId, g);
      const gdir = `/sys/kernel/iommu_groups/${groupId}`;
      mkdir(s, `${gdir}/devices`);
      writeFile(s, `${gdir}/type`, g.noiommu || emulated ? 'identity' : 'DMA');
      if (g.noiommu || emulated) writeFile(s, `${gdir}/name`, 'vfio-noiommu');
    }
    g.members.push(dev);
    dev.group = g;
    link(s, `${dev.sysfsPath}/iommu_group`, `/sys/kernel/iommu_groups/${groupId}`);
    const unit = s.iommu === 'intel' || s.iommu === 'virtio' || s.iommu === 'smmuv3' ? IOMMU_UNIT[s.iommu] : null;
    if (unit && !emulated) link(s, `${dev.sysfsPath}/iommu`, unit);
    link(s, `/sys/kernel/iommu_groups/${groupId}/devices/${dev.name}`, dev.sysfsPath);
  }
  if (cdev !== undefined) dev.cdevIndex = cdev; // null: never one; a number: this one, once bound to VFIO
  else dev.cdevIndex = -1; // the next free one, once bound to VFIO
}

/**
 * Binds the device to `driver` (null: unbinds it): the driver link, and for a VFIO driver the
 * vfio-dev entry, the cdev node (iommufd kernels, not noiommu) and the group node.
 */
export function setDriver(s: FakeState, name: string, driver: string | null): void {
  const dev = findDevice(s, name);
  const bus = dev.bus === 'pci' ? '/sys/bus/pci' : '/sys/bus/mdev';
  remove(s, `${dev.sysfsPath}/driver`);
  if (dev.driver) remove(s, `${bus}/drivers/${dev.driver}/${dev.name}`);
  dev.driver = driver;
  if (driver) {
    if (dev.bus === 'pci') loadDriver(s, driver);
    else mkdir(s, `${bus}/drivers/${driver}`);
    link(s, `${dev.sysfsPath}/driver`, `${bus}/drivers/${driver}`);
    link(s, `${bus}/drivers/${driver}/${dev.name}`, dev.sysfsPath);
  }
  if (vfioDriver(dev)) registerVfio(s, dev);
  else unregisterVfio(s, dev);
}

/** The device left VFIO: its vfio-dev entry and cdev node go, and the group node with its last VFIO member. */
function unregisterVfio(s: FakeState, dev: DeviceState): void {
  remove(s, `/sys/kernel/debug/vfio/${dev.name}`);
  if (dev.cdevIndex !== null && dev.cdevIndex >= 0) {
    const n = dev.cdevIndex;
    remove(s, `${dev.sysfsPath}/vfio-dev`);
    remove(s, `/sys/class/vfio-dev/vfio${n}`);
    remove(s, `/dev/vfio/devices/vfio${n}`);
    remove(s, `/dev/char/${RDEV.cdevMajor}:${n}`);
    remove(s, `/sys/dev/char/${RDEV.cdevMajor}:${n}`);
  }
  const g = dev.group;
  if (g && !g.members.some(vfioDriver)) {
    remove(s, `/dev/vfio/${groupName(g)}`);
    remove(s, `/sys/class/vfio/${groupName(g)}`);
    remove(s, `/sys/devices/virtual/vfio/${groupName(g)}`);
  }
}

function registerVfio(s: FakeState, dev: DeviceState): void {
  // VFIO's debugfs (CONFIG_VFIO_DEBUGFS): a directory per registered device, with migration/ where its driver has migration ops
  mkdir(s, `/sys/kernel/debug/vfio/${dev.name}`);
  if (dev.mig) writeFile(s, `/sys/kernel/debug/vfio/${dev.name}/migration/state`, 'RUNNING');
  const g = dev.group;
  if (g) {
    // the group's device in the vfio class (drivers/vfio/group.c): /dev/vfio/N, /sys/class/vfio/N/dev
    mknodIfAbsent(s, `/dev/vfio/${groupName(g)}`, makedev(RDEV.groupMajor, g.minor), 0o600);
    const gdir = `/sys/devices/virtual/vfio/${groupName(g)}`;
    if (!s.fs.has(gdir)) {
      writeFile(s, `${gdir}/dev`, `${RDEV.groupMajor}:${g.minor}`);
      link(s, `/sys/class/vfio/${groupName(g)}`, gdir);
    }
  }
  if (dev.cdevIndex === null) return;
  if (dev.cdevIndex === -1) {
    while ([...s.devices.values()].some((d) => d.cdevIndex === s.nextCdev)) s.nextCdev++;
    dev.cdevIndex = s.nextCdev++;
  }
  const n = dev.cdevIndex;
  const vdir = `${dev.sysfsPath}/vfio-dev/vfio${n}`;
  if (s.fs.has(vdir)) return;
  link(s, `${vdir}/device`, dev.sysfsPath);
  link(s, `${vdir}/subsystem`, '/sys/class/vfio-dev');
  link(s, `/sys/class/vfio-dev/vfio${n}`, vdir);
  // Stock kernels and noiommu devices have the vfio-dev entry but no cdev (no `dev` attribute).
  if (s.hasIommufd && !g?.noiommu) {
    writeFile(s, `${vdir}/dev`, `${RDEV.cdevMajor}:${n}`);
    writeFile(s, `${vdir}/uevent`, `MAJOR=${RDEV.cdevMajor}\nMINOR=${n}\nDEVNAME=vfio/devices/vfio${n}`);
    mknod(s, `/dev/vfio/devices/vfio${n}`, makedev(RDEV.cdevMajor, n), 0o600);
    link(s, `/sys/dev/char/${RDEV.cdevMajor}:${n}`, vdir); // the kernel's link for every char device number
    if (s.charLinks) symlink(s, `/dev/char/${RDEV.cdevMajor}:${n}`, `../vfio/devices/vfio${n}`);
  }
}
