// An in-memory Linux for unit tests: sysfs and /dev as the real kernels of the test bed lay them out
// (../shared/reference/vm-prototype/FINDINGS.md sections 4-6), and the VFIO/iommufd semantics of the
// fds opened on them, close to drivers/vfio/{group,container,device_cdev,vfio_main}.c and
// drivers/iommu/iommufd. Every answer the library can meet can be produced, either as the kernel would
// (a host without MSI isolation answers EPERM at bind, another process holding the group answers
// EBUSY...) or injected (failNext, failOpen).
//
//   const k = FakeKernel.host({ kernel: 'iommufd', iommu: 'intel', devices: [{ address: '0000:00:10.0', group: 3 }] });
//   k.hide('/dev/iommu').inaccessible('/dev/vfio/3').failNext({ request: VFIO.DEVICE_BIND_IOMMUFD, errno: 'EPERM' });
//   ... openDevice('0000:00:10.0', { kernel: k }) ...
//   assert.equal(k.openFds(), 0);
import path from 'node:path';
import { makedev, type FileStat, type Kernel } from '../src/sys/kernel.js';
import { decode, writeField } from '../src/uapi/struct.js';
import { IOMMU, iommu_destroy, iommu_ioas_alloc } from '../src/uapi/iommufd.js';
import {
  VFIO,
  VFIO_DEVICE_FLAGS,
  VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_IRQ_INFO_FLAG,
  VFIO_NOIOMMU_IOMMU,
  VFIO_PCI_NUM_REGIONS,
  VFIO_PCI_REGION,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  vfio_device_attach_iommufd_pt,
  vfio_device_bind_iommufd,
  vfio_device_detach_iommufd_pt,
  vfio_device_info,
  vfio_group_status,
  vfio_info_cap_header,
  vfio_irq_info,
  vfio_region_info,
  vfio_region_info_cap_sparse_mmap,
  vfio_region_info_cap_type,
  vfio_region_sparse_mmap_area,
} from '../src/uapi/vfio.js';

// ---------------------------------------------------------------------------------------------------
// errno

const ERRNO = {
  EPERM: [1, 'operation not permitted'],
  ENOENT: [2, 'no such file or directory'],
  EIO: [5, 'i/o error'],
  ENXIO: [6, 'no such device or address'],
  EBADF: [9, 'bad file descriptor'],
  EAGAIN: [11, 'resource temporarily unavailable'],
  ENOMEM: [12, 'not enough memory'],
  EACCES: [13, 'permission denied'],
  EFAULT: [14, 'bad address in system call argument'],
  EBUSY: [16, 'resource busy or locked'],
  EEXIST: [17, 'file already exists'],
  ENODEV: [19, 'no such device'],
  ENOTDIR: [20, 'not a directory'],
  EISDIR: [21, 'illegal operation on a directory'],
  EINVAL: [22, 'invalid argument'],
  EMFILE: [24, 'too many open files'],
  ENOTTY: [25, 'inappropriate ioctl for device'],
  ENOSPC: [28, 'no space left on device'],
  ELOOP: [40, 'too many symbolic links encountered'],
  EBADFD: [77, 'file descriptor in bad state'],
  EOPNOTSUPP: [95, 'operation not supported'],
  ETIMEDOUT: [110, 'connection timed out'],
} as const;
export type Errno = keyof typeof ERRNO;
export const ERRNO_NAMES = Object.keys(ERRNO) as Errno[];

export interface FakeSysError extends Error {
  code: Errno;
  errno: number;
  syscall: string;
  path?: string;
}

/** An error shaped as Node's fs errors (and the addon's, which carry no path). */
export function sysError(code: Errno, syscall: string, filePath?: string): FakeSysError {
  const [num, text] = ERRNO[code];
  const err = new Error(`${code}: ${text}, ${syscall}${filePath !== undefined ? ` '${filePath}'` : ''}`) as FakeSysError;
  err.code = code;
  err.errno = -num;
  err.syscall = syscall;
  if (filePath !== undefined) err.path = filePath;
  return err;
}

// ---------------------------------------------------------------------------------------------------
// the host's shape

/** Device numbers as on the test bed's kernels. */
export const RDEV = {
  vfioContainer: makedev(10, 196),
  iommu: makedev(10, 258),
  groupMajor: 245,
  cdevMajor: 246,
} as const;

const S_IFCHR = 0o020000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

export const EDU = '0000:00:10.0';
export const TESTDEV = '0000:00:11.0';

export interface PciDeviceOptions {
  /** full PCI address, 0000:00:10.0 */
  address: string;
  /** vendor:device, default 1234:11e8 (QEMU's edu) */
  id?: string;
  /** default vfio-pci (none on an `iommu: 'none'` host, where vfio-pci's probe fails) */
  driver?: string | null;
  /** IOMMU group id: default a new group (none on an `iommu: 'none'` host); null: no group */
  group?: number | null;
  /** vfio-dev index N (vfioN): default the next free one for a device bound to a VFIO driver; null: no vfio-dev entry */
  cdev?: number | null;
  /** region overrides, by index: `null` makes the index answer EINVAL (as VGA does on a non-VGA device) */
  regions?: Record<number, FakeRegion | null>;
  /** VFIO_DEVICE_FLAGS_* (default PCI) */
  flags?: number;
}

export interface MdevOptions {
  uuid: string;
  /** the parent's vendor driver, which also drives the mdev (default mtty) */
  driver?: string;
  group?: number;
  cdev?: number | null;
}

export interface FakeRegion {
  size: number | bigint;
  /** VFIO_REGION_INFO_FLAG_* without CAPS (added when capabilities are given) */
  flags: number;
  sparseMmap?: { offset: bigint; size: bigint }[];
  type?: { type: number; subtype: number };
}

export interface HostOptions {
  /** stock: CONFIG_IOMMUFD/VFIO_DEVICE_CDEV unset (Debian 6.1/6.12); iommufd: the test bed's 6.12c */
  kernel?: 'stock' | 'iommufd';
  /** intel: MSI remapping; virtio: no MSI isolation (x86 virtio-iommu); none: no IOMMU; noiommu: vfio.enable_unsafe_noiommu_mode=1 */
  iommu?: 'intel' | 'virtio' | 'none' | 'noiommu';
  /** default: one edu device at 0000:00:10.0 */
  devices?: PciDeviceOptions[];
  mdevs?: MdevOptions[];
  /** the vfio modules are loaded (default true): /dev/vfio/vfio exists */
  vfio?: boolean;
  /** this process has CAP_SYS_RAWIO (default true, as root) */
  rawio?: boolean;
  /** iommufd.allow_unsafe_interrupts / vfio_iommu_type1.allow_unsafe_interrupts */
  allowUnsafeInterrupts?: boolean | { iommufd?: boolean; type1?: boolean };
  /** what VFIO_GET_API_VERSION answers (default 0) */
  apiVersion?: number;
  /** udev's /dev/char/MAJ:MIN links to the cdevs (default true) */
  charLinks?: boolean;
}

/** A call as the fake saw it, for the call log, listeners and failure rules. */
export interface CallInfo {
  call: 'open' | 'close' | 'ioctl' | 'pread' | 'pwrite' | 'fstat' | 'stat' | 'readlink' | 'realpath' | 'readdir' | 'readText';
  path?: string;
  fd?: number;
  request?: number;
  /** VFIO_/IOMMU_ name of the request, as the fd's kind decodes it */
  requestName?: string;
  /** set after the call: the errno it failed with */
  errno?: string;
  injected?: boolean;
}

export interface FailRule {
  call?: CallInfo['call'];
  /** the ioctl request number */
  request?: number;
  /** the path opened, or the path of the fd the call is made on */
  path?: string;
  errno: Errno;
  /** how many matching calls fail (default 1; Infinity for all) */
  times?: number;
}

// ---------------------------------------------------------------------------------------------------
// kernel objects

interface GroupState {
  id: number;
  noiommu: boolean;
  /** an mdev's group: no IOMMU behind it, VFIO emulates one (VFIO_EMULATED_IOMMU) */
  emulated: boolean;
  minor: number;
  members: DeviceState[];
  /** group->opened_file: this process's group open file, or another process's */
  openedBy: GroupFile | 'elsewhere' | null;
  /** group->cdev_device_open_cnt: members bound through their cdev, by anyone */
  cdevBound: number;
}

interface DeviceState {
  name: string;
  bus: 'pci' | 'mdev';
  sysfsPath: string;
  driver: string | null;
  group: GroupState | null;
  /** vfio-dev index N: null for none, -1 for the next free one, assigned once the device is bound to VFIO */
  cdevIndex: number | null;
  /** device->open_count */
  openCount: number;
  /** bound through a cdev by another process */
  boundElsewhere: boolean;
  flags: number;
  regions: Map<number, FakeRegion | null>;
  config: Buffer;
  bar0: Buffer;
}

interface IommufdCtx {
  fdOpen: boolean;
  nextId: number;
  objects: Map<number, { type: 'ioas' } | { type: 'hwpt'; ioas: number; users: number } | { type: 'device'; device: DeviceState }>;
}

interface ContainerState {
  fdOpen: boolean;
  groups: Set<GroupFile>;
  iommuType: number | null;
}

interface GroupFile {
  kind: 'group';
  group: GroupState;
  fdOpen: boolean;
  container: ContainerState | null;
  /** device fds taken from this group hold the group file open (vfio_group_fops_release) */
  deviceFiles: number;
}

interface DeviceFile {
  kind: 'device';
  device: DeviceState;
  via: 'cdev' | 'group';
  groupFile: GroupFile | null;
  /** df->access_granted */
  bound: boolean;
  ctx: IommufdCtx | null;
  devid: number | null;
  attachedPt: number | null;
}

type OpenFile =
  | { kind: 'iommufd'; ctx: IommufdCtx }
  | { kind: 'container'; container: ContainerState }
  | GroupFile
  | DeviceFile
  | { kind: 'file'; node: FileNode }
  | { kind: 'chr'; rdev: number };

interface FdEntry {
  fd: number;
  path: string;
  stat: FileStat;
  file: OpenFile;
}

export interface FdInfo {
  fd: number;
  path: string;
  kind: OpenFile['kind'];
  /** a device fd: opened from its cdev or taken from its group */
  via?: 'cdev' | 'group';
  /** a cdev fd: bound (VFIO_DEVICE_BIND_IOMMUFD succeeded) */
  bound?: boolean;
  device?: string;
  groupId?: number;
  /** a group fd: it is in a container */
  inContainer?: boolean;
}

type FileNode = { kind: 'file'; text: string };
type FsNode =
  | { kind: 'dir'; children: Set<string> }
  | FileNode
  | { kind: 'link'; target: string }
  | { kind: 'chr'; rdev: number; mode: number; accessible: boolean };

const EXTENSIONS: Record<'type1' | 'noiommu', readonly number[]> = {
  type1: [VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU],
  noiommu: [VFIO_NOIOMMU_IOMMU],
};

const REGION_SHIFT = 40n;

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

function configSpace(id: string): Buffer {
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
  return c;
}

const vfioDriver = (d: DeviceState): boolean => d.driver !== null && (d.bus === 'mdev' || d.driver.startsWith('vfio'));
/** driver_managed_dma or no driver: may share a group with a device assigned through VFIO */
const dmaSafe = (d: DeviceState): boolean => d.driver === null || vfioDriver(d) || d.driver === 'pci-stub' || d.driver === 'pcieport';

// ---------------------------------------------------------------------------------------------------

export class FakeKernel implements Kernel {
  private readonly fs = new Map<string, FsNode>([['/', { kind: 'dir', children: new Set() }]]);
  private readonly fdTable = new Map<number, FdEntry>();
  private nextFd = 20;
  private readonly groups = new Map<number, GroupState>();
  private readonly devices = new Map<string, DeviceState>();
  private readonly rules: (FailRule & { left: number })[] = [];
  private readonly listeners: ((call: CallInfo) => void)[] = [];
  private nextCdev = 0;
  private nextGroupMinor = 0;

  /** every open/close/ioctl/pread/pwrite/fstat, in order, with the errno of the ones that failed */
  readonly calls: CallInfo[] = [];
  /** fds closed that were not open (closeQuietly swallows the EBADF; tests look here) */
  readonly badCloses: number[] = [];

  readonly hasIommufd: boolean;
  readonly iommu: NonNullable<HostOptions['iommu']>;
  rawio: boolean;
  apiVersion: number;
  allowUnsafe: { iommufd: boolean; type1: boolean };
  private readonly charLinks: boolean;
  private readonly firstGroup: number;

  constructor(options: Omit<HostOptions, 'devices' | 'mdevs'> = {}) {
    this.hasIommufd = (options.kernel ?? 'iommufd') === 'iommufd';
    this.iommu = options.iommu ?? 'intel';
    this.rawio = options.rawio ?? true;
    this.apiVersion = options.apiVersion ?? 0;
    const unsafe = options.allowUnsafeInterrupts;
    this.allowUnsafe = typeof unsafe === 'object'
      ? { iommufd: unsafe.iommufd ?? false, type1: unsafe.type1 ?? false }
      : { iommufd: unsafe ?? false, type1: unsafe ?? false };
    this.charLinks = options.charLinks ?? true;
    this.firstGroup = this.iommu === 'noiommu' || this.iommu === 'none' ? 0 : 3;

    for (const dir of ['/sys/bus/pci/devices', '/sys/bus/pci/drivers', '/sys/bus/mdev/devices', '/sys/kernel/iommu_groups', '/sys/class/vfio-dev', '/sys/class/iommu', '/dev/char']) {
      this.mkdir(dir);
    }
    if (this.iommu === 'intel') this.symlink('/sys/class/iommu/dmar0', '../../devices/virtual/iommu/dmar0');
    if (this.iommu === 'virtio') this.symlink('/sys/class/iommu/0000:00:01.0', '../../devices/pci0000:00/0000:00:01.0/virtio0/iommu/0000:00:01.0');
    if (options.vfio ?? true) {
      this.mknod('/dev/vfio/vfio', RDEV.vfioContainer, 0o666);
      if (this.iommu === 'noiommu') this.writeFile('/sys/module/vfio/parameters/enable_unsafe_noiommu_mode', 'Y');
    }
    if (this.hasIommufd) {
      this.mkdir('/sys/class/misc/iommu');
      this.writeFile('/sys/class/misc/iommu/dev', '10:258');
      this.mknod('/dev/iommu', RDEV.iommu, 0o660);
    }
  }

  /** A host as the test bed boots it: the kernel, the IOMMU, and devices bound as given. */
  static host(options: HostOptions = {}): FakeKernel {
    const k = new FakeKernel(options);
    for (const d of options.devices ?? [{ address: EDU }]) k.addPciDevice(d);
    for (const m of options.mdevs ?? []) k.addMdev(m);
    return k;
  }

  // -------------------------------------------------------------------------------------------------
  // building the host

  /** A PCI device under /sys/devices/pciDDDD:BB, with its driver, group and vfio-dev entries. */
  addPciDevice(o: PciDeviceOptions): this {
    const address = o.address.toLowerCase();
    if (this.devices.has(address)) throw new Error(`fake: ${address} exists`);
    const noIommu = this.iommu === 'none';
    const driver = o.driver !== undefined ? o.driver : noIommu ? null : 'vfio-pci';
    const groupId = o.group !== undefined ? o.group : noIommu ? null : this.freeGroupId();
    const dir = `/sys/devices/pci${address.slice(0, 7)}/${address}`;
    const id = o.id ?? '1234:11e8';
    const dev: DeviceState = {
      name: address, bus: 'pci', sysfsPath: dir, driver, group: null, cdevIndex: null, openCount: 0, boundElsewhere: false,
      flags: o.flags ?? VFIO_DEVICE_FLAGS.PCI, regions: defaultRegions(), config: configSpace(id), bar0: Buffer.alloc(0),
    };
    for (const [index, region] of Object.entries(o.regions ?? {})) dev.regions.set(Number(index), region);
    const [vendor, device] = id.split(':');
    this.writeFile(`${dir}/vendor`, `0x${vendor}`);
    this.writeFile(`${dir}/device`, `0x${device}`);
    this.writeFile(`${dir}/class`, '0x00ff00');
    this.link(`${dir}/subsystem`, '/sys/bus/pci');
    this.link(`/sys/bus/pci/devices/${address}`, dir);
    this.devices.set(address, dev);
    this.attach(dev, groupId, false, o.cdev);
    this.setDriver(address, driver);
    return this;
  }

  /** An mdev (mtty-like): bound to its parent's vendor driver, in an emulated-IOMMU group whose node is /dev/vfio/N. */
  addMdev(o: MdevOptions): this {
    const uuid = o.uuid.toLowerCase();
    const dir = `/sys/devices/virtual/mtty/mtty/${uuid}`;
    const dev: DeviceState = {
      name: uuid, bus: 'mdev', sysfsPath: dir, driver: o.driver ?? 'mtty', group: null, cdevIndex: null, openCount: 0, boundElsewhere: false,
      flags: VFIO_DEVICE_FLAGS.PCI, regions: defaultRegions(), config: configSpace('4348:3253'), bar0: Buffer.alloc(0),
    };
    this.link(`${dir}/subsystem`, '/sys/bus/mdev');
    this.link(`/sys/bus/mdev/devices/${uuid}`, dir);
    this.devices.set(uuid, dev);
    this.attach(dev, o.group ?? this.freeGroupId(), true, o.cdev);
    this.setDriver(uuid, dev.driver);
    return this;
  }

  private freeGroupId(): number {
    let id = this.firstGroup;
    while (this.groups.has(id)) id++;
    return id;
  }

  private attach(dev: DeviceState, groupId: number | null, emulated: boolean, cdev: number | null | undefined): void {
    if (groupId !== null) {
      let g = this.groups.get(groupId);
      if (!g) {
        g = { id: groupId, noiommu: this.iommu === 'noiommu' && !emulated, emulated, minor: this.nextGroupMinor++, members: [], openedBy: null, cdevBound: 0 };
        this.groups.set(groupId, g);
        const gdir = `/sys/kernel/iommu_groups/${groupId}`;
        this.mkdir(`${gdir}/devices`);
        this.writeFile(`${gdir}/type`, g.noiommu || emulated ? 'identity' : 'DMA');
        if (g.noiommu || emulated) this.writeFile(`${gdir}/name`, 'vfio-noiommu');
      }
      g.members.push(dev);
      dev.group = g;
      this.link(`${dev.sysfsPath}/iommu_group`, `/sys/kernel/iommu_groups/${groupId}`);
      this.link(`/sys/kernel/iommu_groups/${groupId}/devices/${dev.name}`, dev.sysfsPath);
    }
    if (cdev !== undefined) dev.cdevIndex = cdev; // null: never one; a number: this one, once bound to VFIO
    else dev.cdevIndex = -1; // the next free one, once bound to VFIO
  }

  /**
   * Binds the device to `driver` (null: unbinds it): the driver link, and for a VFIO driver the
   * vfio-dev entry, the cdev node (iommufd kernels, not noiommu) and the group node.
   */
  setDriver(name: string, driver: string | null): this {
    const dev = this.device(name);
    const bus = dev.bus === 'pci' ? '/sys/bus/pci' : '/sys/bus/mdev';
    this.remove(`${dev.sysfsPath}/driver`);
    if (dev.driver) this.remove(`${bus}/drivers/${dev.driver}/${dev.name}`);
    dev.driver = driver;
    if (driver) {
      this.mkdir(`${bus}/drivers/${driver}`);
      this.link(`${dev.sysfsPath}/driver`, `${bus}/drivers/${driver}`);
      this.link(`${bus}/drivers/${driver}/${dev.name}`, dev.sysfsPath);
    }
    if (vfioDriver(dev)) this.registerVfio(dev);
    else this.unregisterVfio(dev);
    return this;
  }

  /** The device left VFIO: its vfio-dev entry and cdev node go, and the group node with its last VFIO member. */
  private unregisterVfio(dev: DeviceState): void {
    if (dev.cdevIndex !== null && dev.cdevIndex >= 0) {
      const n = dev.cdevIndex;
      this.remove(`${dev.sysfsPath}/vfio-dev`);
      this.remove(`/sys/class/vfio-dev/vfio${n}`);
      this.remove(`/dev/vfio/devices/vfio${n}`);
      this.remove(`/dev/char/${RDEV.cdevMajor}:${n}`);
    }
    const g = dev.group;
    if (g && !g.members.some(vfioDriver)) this.remove(g.noiommu ? `/dev/vfio/noiommu-${g.id}` : `/dev/vfio/${g.id}`);
  }

  private registerVfio(dev: DeviceState): void {
    const g = dev.group;
    if (g) this.mknodIfAbsent(g.noiommu ? `/dev/vfio/noiommu-${g.id}` : `/dev/vfio/${g.id}`, makedev(RDEV.groupMajor, g.minor), 0o600);
    if (dev.cdevIndex === null) return;
    if (dev.cdevIndex === -1) {
      while ([...this.devices.values()].some((d) => d.cdevIndex === this.nextCdev)) this.nextCdev++;
      dev.cdevIndex = this.nextCdev++;
    }
    const n = dev.cdevIndex;
    const vdir = `${dev.sysfsPath}/vfio-dev/vfio${n}`;
    if (this.fs.has(vdir)) return;
    this.link(`${vdir}/device`, dev.sysfsPath);
    this.link(`${vdir}/subsystem`, '/sys/class/vfio-dev');
    this.link(`/sys/class/vfio-dev/vfio${n}`, vdir);
    // Stock kernels and noiommu devices have the vfio-dev entry but no cdev (no `dev` attribute).
    if (this.hasIommufd && !g?.noiommu) {
      this.writeFile(`${vdir}/dev`, `${RDEV.cdevMajor}:${n}`);
      this.writeFile(`${vdir}/uevent`, `MAJOR=${RDEV.cdevMajor}\nMINOR=${n}\nDEVNAME=vfio/devices/vfio${n}`);
      this.mknod(`/dev/vfio/devices/vfio${n}`, makedev(RDEV.cdevMajor, n), 0o600);
      if (this.charLinks) this.symlink(`/dev/char/${RDEV.cdevMajor}:${n}`, `../vfio/devices/vfio${n}`);
    }
  }

  /** Removes a node (and what is under it): a hidden /dev/iommu, a missing attribute... */
  hide(p: string): this {
    if (!this.fs.has(p)) throw new Error(`fake: nothing to hide at ${p}`);
    this.remove(p);
    return this;
  }

  /** This process may not open the node (access(2) fails, open answers EACCES). */
  inaccessible(p: string, inaccessible = true): this {
    const node = this.fs.get(this.resolve(p, true, 'access'));
    if (node?.kind !== 'chr') throw new Error(`fake: ${p} is not a device node`);
    node.accessible = !inaccessible;
    return this;
  }

  /** A character device node: a stale or planted one when its number belongs to something else. */
  plantNode(p: string, rdev: number, mode = 0o600): this {
    this.remove(p);
    this.mknod(p, rdev, mode);
    return this;
  }

  /** Another process holds the group open through the legacy route. */
  holdGroupElsewhere(groupId: number): this {
    const g = this.groups.get(groupId);
    if (!g) throw new Error(`fake: no group ${groupId}`);
    if (g.openedBy !== null) throw new Error(`fake: group ${groupId} is already open`);
    g.openedBy = 'elsewhere';
    return this;
  }

  /** Another process opened the device's cdev and bound it to its iommufd. */
  bindElsewhere(name: string): this {
    const dev = this.device(name);
    if (dev.openCount > 0) throw new Error(`fake: ${name} is already open`);
    dev.openCount++;
    dev.boundElsewhere = true;
    if (dev.group) dev.group.cdevBound++;
    return this;
  }

  /** The other process exits. */
  releaseElsewhere(): this {
    for (const g of this.groups.values()) if (g.openedBy === 'elsewhere') g.openedBy = null;
    for (const d of this.devices.values()) {
      if (!d.boundElsewhere) continue;
      d.boundElsewhere = false;
      d.openCount--;
      if (d.group) d.group.cdevBound--;
    }
    return this;
  }

  /** The next `times` matching calls fail with errno (an ioctl by default). */
  failNext(rule: FailRule): this {
    const call = rule.call ?? (rule.request !== undefined ? 'ioctl' : undefined);
    this.rules.push({ ...rule, ...(call ? { call } : {}), left: rule.times ?? 1 });
    return this;
  }

  /** The next `times` opens of path fail with errno (the node itself is unchanged). */
  failOpen(p: string, errno: Errno, times = 1): this {
    return this.failNext({ call: 'open', path: p, errno, times });
  }

  /** Failure rules that have not fired (as often as asked) yet. */
  pendingFailures(): FailRule[] {
    return this.rules.filter((r) => r.left > 0);
  }

  /** Runs before every call the fake logs (tests use it to change the host mid-way). */
  onCall(listener: (call: CallInfo) => void): this {
    this.listeners.push(listener);
    return this;
  }

  // -------------------------------------------------------------------------------------------------
  // what tests inspect

  openFds(): number {
    return this.fdTable.size;
  }
  openPaths(): string[] {
    return [...this.fdTable.values()].map((e) => e.path);
  }
  /** every path the library tried to open, in order, whether or not the open succeeded */
  openedPaths(): string[] {
    return this.calls.filter((c) => c.call === 'open').map((c) => c.path!);
  }
  /** the ioctls made, by name, in order */
  ioctlNames(): string[] {
    return this.calls.filter((c) => c.call === 'ioctl').map((c) => c.requestName!);
  }
  describeFd(fd: number): FdInfo | undefined {
    const e = this.fdTable.get(fd);
    if (!e) return undefined;
    const f = e.file;
    const info: FdInfo = { fd, path: e.path, kind: f.kind };
    if (f.kind === 'device') {
      info.via = f.via;
      info.bound = f.bound;
      info.device = f.device.name;
    }
    if (f.kind === 'group') {
      info.groupId = f.group.id;
      info.inContainer = f.container !== null;
    }
    return info;
  }
  /** who holds a group: this process (through an fd), another one, or nobody */
  groupHolder(groupId: number): 'this process' | 'elsewhere' | null {
    const g = this.groups.get(groupId);
    if (!g?.openedBy) return null;
    return g.openedBy === 'elsewhere' ? 'elsewhere' : 'this process';
  }
  /** device->open_count: how many opened and bound it */
  deviceOpenCount(name: string): number {
    return this.device(name).openCount;
  }

  // -------------------------------------------------------------------------------------------------
  // Kernel

  open(p: string): number {
    const call: CallInfo = { call: 'open', path: p };
    return this.run(call, () => {
      const real = this.resolve(p, true, 'open');
      const node = this.fs.get(real)!;
      if (node.kind === 'dir') throw sysError('EISDIR', 'open', p);
      if (node.kind === 'file') return this.install(p, { mode: S_IFREG | 0o644, rdev: 0, isCharacterDevice: false }, { kind: 'file', node });
      if (node.kind !== 'chr') throw sysError('ENOENT', 'open', p);
      if (!node.accessible) throw sysError('EACCES', 'open', p);
      const stat: FileStat = { mode: S_IFCHR | node.mode, rdev: node.rdev, isCharacterDevice: true };
      return this.install(p, stat, this.openChr(node.rdev, p));
    });
  }

  close(fd: number): void {
    this.run({ call: 'close', fd }, () => {
      const e = this.fdTable.get(fd);
      if (!e) {
        this.badCloses.push(fd);
        throw sysError('EBADF', 'close');
      }
      this.fdTable.delete(fd);
      this.release(e.file);
    });
  }

  ioctl(fd: number, request: number, arg?: number | Buffer): number {
    const e = this.fdTable.get(fd);
    const call: CallInfo = { call: 'ioctl', fd, request, requestName: requestName(request, e?.file.kind) };
    if (e) call.path = e.path;
    return this.run(call, () => {
      if (!e) throw sysError('EBADF', 'ioctl');
      switch (e.file.kind) {
        case 'iommufd': return this.iommufdIoctl(e.file.ctx, request, arg);
        case 'container': return this.containerIoctl(e.file.container, request, arg);
        case 'group': return this.groupIoctl(e.file, request, arg);
        case 'device': return this.deviceIoctl(e.file, request, arg);
        default: throw ioctlError('ENOTTY');
      }
    });
  }

  pread(fd: number, buf: Buffer, offset: bigint | number): number {
    return this.rw('pread', fd, buf, BigInt(offset));
  }

  pwrite(fd: number, buf: Buffer, offset: bigint | number): number {
    return this.rw('pwrite', fd, buf, BigInt(offset));
  }

  fstat(fd: number): FileStat {
    return this.run({ call: 'fstat', fd }, () => {
      const e = this.fdTable.get(fd);
      if (!e) throw sysError('EBADF', 'fstat');
      return { ...e.stat };
    });
  }

  stat(p: string): FileStat {
    return this.run({ call: 'stat', path: p }, () => {
      const node = this.fs.get(this.resolve(p, true, 'stat'))!;
      return statOf(node);
    }, false);
  }

  readlink(p: string): string {
    return this.run({ call: 'readlink', path: p }, () => {
      const node = this.fs.get(this.resolve(p, false, 'readlink'))!;
      if (node.kind !== 'link') throw sysError('EINVAL', 'readlink', p);
      return node.target;
    }, false);
  }

  realpath(p: string): string {
    return this.run({ call: 'realpath', path: p }, () => this.resolve(p, true, 'lstat'), false);
  }

  readdir(p: string): string[] {
    return this.run({ call: 'readdir', path: p }, () => {
      const node = this.fs.get(this.resolve(p, true, 'scandir'))!;
      if (node.kind !== 'dir') throw sysError('ENOTDIR', 'scandir', p);
      return [...node.children];
    }, false);
  }

  readText(p: string): string {
    return this.run({ call: 'readText', path: p }, () => {
      const node = this.fs.get(this.resolve(p, true, 'open'))!;
      if (node.kind === 'dir') throw sysError('EISDIR', 'read', p);
      if (node.kind !== 'file') throw sysError('EINVAL', 'read', p);
      return node.text.replace(/\n$/, '');
    }, false);
  }

  exists(p: string): boolean {
    try {
      this.resolve(p, true, 'stat');
      return true;
    } catch {
      return false;
    }
  }

  accessible(p: string): boolean {
    try {
      const node = this.fs.get(this.resolve(p, true, 'access'))!;
      return node.kind !== 'chr' || node.accessible;
    } catch {
      return false;
    }
  }

  // Memory and interrupts are not modelled yet: the real-kernel suite covers them.
  mmap(): ArrayBuffer {
    throw sysError('EOPNOTSUPP', 'mmap');
  }
  allocDma(): ArrayBuffer {
    throw sysError('EOPNOTSUPP', 'mmap');
  }
  unmap(): void {
    throw sysError('EOPNOTSUPP', 'munmap');
  }
  addressOf(): bigint {
    throw sysError('EOPNOTSUPP', 'addressOf');
  }
  mmioRead(buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4): number;
  mmioRead(buffer: ArrayBuffer, offset: number, width: 8): bigint;
  mmioRead(): number | bigint {
    throw sysError('EOPNOTSUPP', 'mmio');
  }
  mmioWrite(): void {
    throw sysError('EOPNOTSUPP', 'mmio');
  }
  eventfd(): number {
    throw sysError('EOPNOTSUPP', 'eventfd');
  }
  watch(): object {
    throw sysError('EOPNOTSUPP', 'watch');
  }
  unwatch(): void {
    throw sysError('EOPNOTSUPP', 'unwatch');
  }

  // -------------------------------------------------------------------------------------------------
  // calls: log, listeners, injected failures

  private run<T>(call: CallInfo, fn: () => T, logged = true): T {
    if (logged) this.calls.push(call);
    for (const l of this.listeners) l(call);
    const rule = this.rules.find((r) => r.left > 0 && matches(r, call));
    try {
      if (rule) {
        rule.left--;
        call.injected = true;
        // an injected open failure carries the path, as Node's does; the addon's ioctl errors carry none
        throw sysError(rule.errno, call.call === 'readText' ? 'open' : call.call, call.call === 'ioctl' || call.fd !== undefined ? undefined : call.path);
      }
      return fn();
    } catch (e) {
      if (e instanceof Error && typeof (e as FakeSysError).code === 'string') call.errno = (e as FakeSysError).code;
      throw e;
    }
  }

  // -------------------------------------------------------------------------------------------------
  // the filesystem

  private resolve(p: string, followLast: boolean, syscall: string): string {
    if (!p.startsWith('/')) throw sysError('ENOENT', syscall, p);
    let hops = 0;
    let parts = p.split('/').filter((s) => s !== '' && s !== '.');
    let cur = '/';
    while (parts.length > 0) {
      const part = parts.shift()!;
      if (part === '..') {
        cur = path.posix.dirname(cur);
        continue;
      }
      const dir = this.fs.get(cur);
      if (dir?.kind !== 'dir') throw sysError('ENOTDIR', syscall, p);
      const next = cur === '/' ? `/${part}` : `${cur}/${part}`;
      const node = this.fs.get(next);
      if (!node) throw sysError('ENOENT', syscall, p);
      if (node.kind === 'link' && (parts.length > 0 || followLast)) {
        if (++hops > 40) throw sysError('ELOOP', syscall, p);
        const target = node.target.split('/').filter((s) => s !== '' && s !== '.');
        if (node.target.startsWith('/')) cur = '/';
        parts = [...target, ...parts];
        continue;
      }
      cur = next;
    }
    return cur;
  }

  private put(p: string, node: FsNode): void {
    const parent = path.posix.dirname(p);
    if (parent !== p) this.mkdir(parent);
    const dir = this.fs.get(parent);
    if (dir?.kind !== 'dir') throw new Error(`fake: ${parent} is not a directory`);
    dir.children.add(path.posix.basename(p));
    this.fs.set(p, node);
  }

  mkdir(p: string): this {
    const node = this.fs.get(p);
    if (node?.kind === 'dir') return this;
    if (node) throw new Error(`fake: ${p} exists`);
    this.put(p, { kind: 'dir', children: new Set() });
    return this;
  }

  writeFile(p: string, text: string): this {
    this.put(p, { kind: 'file', text });
    return this;
  }

  symlink(p: string, target: string): this {
    this.put(p, { kind: 'link', target });
    return this;
  }

  /** a symlink at p to `to`, relative as sysfs makes them */
  private link(p: string, to: string): void {
    this.symlink(p, path.posix.relative(path.posix.dirname(p), to));
  }

  private mknod(p: string, rdev: number, mode: number): void {
    this.put(p, { kind: 'chr', rdev, mode, accessible: true });
  }

  private mknodIfAbsent(p: string, rdev: number, mode: number): void {
    if (!this.fs.has(p)) this.mknod(p, rdev, mode);
  }

  private remove(p: string): void {
    const node = this.fs.get(p);
    if (!node) return;
    if (node.kind === 'dir') for (const child of [...node.children]) this.remove(`${p}/${child}`);
    this.fs.delete(p);
    const parent = this.fs.get(path.posix.dirname(p));
    if (parent?.kind === 'dir') parent.children.delete(path.posix.basename(p));
  }

  private device(name: string): DeviceState {
    const d = this.devices.get(name.toLowerCase());
    if (!d) throw new Error(`fake: no device ${name}`);
    return d;
  }

  // -------------------------------------------------------------------------------------------------
  // files

  private install(p: string, stat: FileStat, file: OpenFile): number {
    const fd = this.nextFd++;
    this.fdTable.set(fd, { fd, path: p, stat, file });
    return fd;
  }

  /** What the driver behind a device number does on open. */
  private openChr(rdev: number, p: string): OpenFile {
    if (rdev === RDEV.iommu) return { kind: 'iommufd', ctx: { fdOpen: true, nextId: 1, objects: new Map() } };
    if (rdev === RDEV.vfioContainer) return { kind: 'container', container: { fdOpen: true, groups: new Set(), iommuType: null } };
    const group = [...this.groups.values()].find((g) => makedev(RDEV.groupMajor, g.minor) === rdev);
    if (group) {
      // vfio_group_fops_open
      if (!group.members.some(vfioDriver)) throw sysError('ENODEV', 'open', p);
      if (group.noiommu && !this.rawio) throw sysError('EPERM', 'open', p);
      if (group.cdevBound > 0) throw sysError('EBUSY', 'open', p);
      if (group.openedBy !== null) throw sysError('EBUSY', 'open', p);
      const file: GroupFile = { kind: 'group', group, fdOpen: true, container: null, deviceFiles: 0 };
      group.openedBy = file;
      return file;
    }
    const device = [...this.devices.values()].find((d) => d.cdevIndex !== null && d.cdevIndex >= 0 && makedev(RDEV.cdevMajor, d.cdevIndex) === rdev);
    if (device && this.hasIommufd && !device.group?.noiommu) {
      // vfio_device_fops_cdev_open: opens "parked"; BIND_IOMMUFD grants access
      if (!vfioDriver(device)) throw sysError('ENODEV', 'open', p);
      return { kind: 'device', device, via: 'cdev', groupFile: null, bound: false, ctx: null, devid: null, attachedPt: null };
    }
    if (rdev === makedev(1, 3) || rdev === makedev(1, 5)) return { kind: 'chr', rdev }; // /dev/null, /dev/zero
    throw sysError('ENXIO', 'open', p);
  }

  private release(file: OpenFile): void {
    switch (file.kind) {
      case 'iommufd':
        file.ctx.fdOpen = false; // the bound devices keep the context (and its IOAS) alive
        break;
      case 'container':
        file.container.fdOpen = false; // its groups keep it alive
        break;
      case 'group':
        file.fdOpen = false;
        this.releaseGroupFile(file);
        break;
      case 'device':
        this.releaseDeviceFile(file);
        break;
      default:
        break;
    }
  }

  private releaseGroupFile(file: GroupFile): void {
    // Device fds hold a reference to their group file: it is released only when they are closed too.
    if (file.fdOpen || file.deviceFiles > 0) return;
    if (file.container) this.leaveContainer(file);
    if (file.group.openedBy === file) file.group.openedBy = null;
  }

  private leaveContainer(file: GroupFile): void {
    const c = file.container!;
    c.groups.delete(file);
    file.container = null;
    if (c.groups.size === 0) c.iommuType = null; // the last group out returns the container to its unset state
  }

  private releaseDeviceFile(file: DeviceFile): void {
    const dev = file.device;
    if (file.via === 'group') {
      dev.openCount--;
      file.groupFile!.deviceFiles--;
      this.releaseGroupFile(file.groupFile!);
      return;
    }
    if (!file.bound) return;
    file.bound = false;
    this.detach(file);
    file.ctx!.objects.delete(file.devid!);
    dev.openCount--;
    if (dev.group) dev.group.cdevBound--;
  }

  private detach(file: DeviceFile): void {
    if (file.attachedPt === null) return;
    const obj = file.ctx!.objects.get(file.attachedPt);
    if (obj?.type === 'hwpt' && --obj.users === 0) file.ctx!.objects.delete(file.attachedPt); // an automatic domain dies with its last device
    file.attachedPt = null;
  }

  // -------------------------------------------------------------------------------------------------
  // /dev/iommu

  private iommufdIoctl(ctx: IommufdCtx, request: number, arg: number | Buffer | undefined): number {
    switch (request) {
      case IOMMU.IOAS_ALLOC: {
        const buf = iommufdCmd(arg, iommu_ioas_alloc.size);
        if (decode(iommu_ioas_alloc, buf).flags !== 0) throw ioctlError('EOPNOTSUPP');
        const id = ctx.nextId++;
        ctx.objects.set(id, { type: 'ioas' });
        writeField(buf, iommu_ioas_alloc.fields.out_ioas_id, id);
        return 0;
      }
      case IOMMU.DESTROY: {
        const buf = iommufdCmd(arg, iommu_destroy.size);
        const id = decode(iommu_destroy, buf).id;
        const obj = ctx.objects.get(id);
        if (!obj) throw ioctlError('ENOENT');
        const inUse = obj.type === 'device' || (obj.type === 'hwpt' && obj.users > 0) ||
          (obj.type === 'ioas' && [...ctx.objects.values()].some((o) => o.type === 'hwpt' && o.ioas === id));
        if (inUse) throw ioctlError('EBUSY');
        ctx.objects.delete(id);
        return 0;
      }
      default:
        // IOAS_MAP/UNMAP/IOVA_RANGES, HWPT_ALLOC... are not modelled yet: answered as unknown requests.
        throw ioctlError('ENOTTY');
    }
  }

  // -------------------------------------------------------------------------------------------------
  // /dev/vfio/vfio

  private drivers(): ('type1' | 'noiommu')[] {
    return this.iommu === 'noiommu' ? ['type1', 'noiommu'] : ['type1'];
  }

  private containerIsNoiommu(c: ContainerState): boolean {
    return [...c.groups].some((g) => g.group.noiommu);
  }

  /** the IOMMU drivers a container may use: once a group is in, noiommu and the others exclude each other */
  private allowedDrivers(c: ContainerState): ('type1' | 'noiommu')[] {
    if (c.groups.size === 0) return this.drivers();
    const noiommu = this.containerIsNoiommu(c);
    return this.drivers().filter((d) => (d === 'noiommu') === noiommu);
  }

  private containerIoctl(c: ContainerState, request: number, arg: number | Buffer | undefined): number {
    switch (request) {
      case VFIO.GET_API_VERSION:
        return this.apiVersion;
      case VFIO.CHECK_EXTENSION: {
        // A pointer passed where the kernel expects a number is an unknown extension to it.
        const ext = typeof arg === 'number' ? arg : -1;
        if (c.iommuType !== null) return EXTENSIONS[driverOf(c.iommuType)].includes(ext) ? 1 : 0;
        return this.allowedDrivers(c).some((d) => EXTENSIONS[d].includes(ext)) ? 1 : 0;
      }
      case VFIO.SET_IOMMU: {
        if (c.groups.size === 0 || c.iommuType !== null) throw ioctlError('EINVAL');
        const type = typeof arg === 'number' ? arg : -1;
        const driver = this.allowedDrivers(c).find((d) => EXTENSIONS[d].includes(type));
        if (!driver) throw ioctlError('ENODEV');
        for (const g of c.groups) this.checkType1Attach(driver, g.group);
        c.iommuType = type;
        return 0;
      }
      default:
        // IOMMU_GET_INFO, MAP_DMA, UNMAP_DMA are not modelled yet.
        throw ioctlError('ENOTTY');
    }
  }

  /** vfio_iommu_type1_attach_group: no MSI isolation and no allow_unsafe_interrupts -> EPERM */
  private checkType1Attach(driver: 'type1' | 'noiommu', g: GroupState): void {
    if (driver === 'type1' && !g.emulated && this.iommu === 'virtio' && !this.allowUnsafe.type1) throw ioctlError('EPERM');
  }

  // -------------------------------------------------------------------------------------------------
  // /dev/vfio/N

  private groupIoctl(file: GroupFile, request: number, arg: number | Buffer | undefined): number {
    const g = file.group;
    switch (request) {
      case VFIO.GROUP_GET_STATUS: {
        const buf = userStruct(arg, vfio_group_status.size);
        if (decode(vfio_group_status, buf).argsz < vfio_group_status.size) throw ioctlError('EINVAL');
        let flags = g.members.every(dmaSafe) ? VFIO_GROUP_FLAGS_VIABLE : 0;
        if (file.container) flags |= VFIO_GROUP_FLAGS_CONTAINER_SET;
        writeField(buf, vfio_group_status.fields.flags, flags);
        return 0;
      }
      case VFIO.GROUP_SET_CONTAINER: {
        const buf = userStruct(arg, 4);
        if (file.container) throw ioctlError('EINVAL');
        const target = this.fdTable.get(buf.readInt32LE(0));
        if (!target) throw ioctlError('EBADF');
        if (target.file.kind !== 'container') throw ioctlError('EINVAL');
        const c = target.file.container;
        if (c.groups.size > 0 && this.containerIsNoiommu(c) !== g.noiommu) throw ioctlError('EPERM');
        if (g.noiommu && !this.rawio) throw ioctlError('EPERM');
        if (!g.members.every(dmaSafe)) throw ioctlError('EBUSY'); // iommu_group_claim_dma_owner
        if (c.iommuType !== null) this.checkType1Attach(driverOf(c.iommuType), g);
        c.groups.add(file);
        file.container = c;
        return 0;
      }
      case VFIO.GROUP_UNSET_CONTAINER:
        if (!file.container) throw ioctlError('EINVAL');
        if (file.deviceFiles > 0) throw ioctlError('EBUSY');
        this.leaveContainer(file);
        return 0;
      case VFIO.GROUP_GET_DEVICE_FD: {
        const name = cString(arg);
        const dev = g.members.find((d) => vfioDriver(d) && d.name === name);
        if (!dev) throw ioctlError('ENODEV');
        if (!file.container || file.container.iommuType === null) throw ioctlError('EINVAL');
        if (g.noiommu && !this.rawio) throw ioctlError('EPERM');
        dev.openCount++;
        file.deviceFiles++;
        const device: DeviceFile = { kind: 'device', device: dev, via: 'group', groupFile: file, bound: true, ctx: null, devid: null, attachedPt: null };
        return this.install('anon_inode:[vfio-device]', { mode: 0o600, rdev: 0, isCharacterDevice: false }, device);
      }
      default:
        throw ioctlError('ENOTTY');
    }
  }

  // -------------------------------------------------------------------------------------------------
  // device fds

  private deviceIoctl(file: DeviceFile, request: number, arg: number | Buffer | undefined): number {
    const dev = file.device;
    if (request === VFIO.DEVICE_BIND_IOMMUFD) return this.bindIommufd(file, arg);
    // vfio_device_fops_unl_ioctl: `if (!smp_load_acquire(&df->access_granted)) return -EINVAL;`
    if (!file.bound) throw ioctlError('EINVAL');
    switch (request) {
      case VFIO.DEVICE_ATTACH_IOMMUFD_PT: {
        if (file.via !== 'cdev') throw ioctlError('ENOTTY');
        const buf = userStruct(arg, vfio_device_attach_iommufd_pt.size);
        const a = decode(vfio_device_attach_iommufd_pt, buf);
        if (a.argsz < vfio_device_attach_iommufd_pt.size || a.flags !== 0) throw ioctlError('EINVAL');
        const ctx = file.ctx!;
        const obj = ctx.objects.get(a.pt_id);
        if (!obj) throw ioctlError('ENOENT');
        if (obj.type === 'device') throw ioctlError('EINVAL');
        let pt = a.pt_id;
        if (obj.type === 'ioas' && !dev.group?.emulated) {
          // an automatic domain, shared by the devices attached to the same IOAS
          const found = [...ctx.objects.entries()].find(([, o]) => o.type === 'hwpt' && o.ioas === a.pt_id);
          if (found) pt = found[0];
          else {
            pt = ctx.nextId++;
            ctx.objects.set(pt, { type: 'hwpt', ioas: a.pt_id, users: 0 });
          }
        }
        this.detach(file);
        const hwpt = ctx.objects.get(pt);
        if (hwpt?.type === 'hwpt') hwpt.users++;
        file.attachedPt = pt;
        // An emulated device is attached to the IOAS itself: pt_id comes back unchanged (FINDINGS.md 5).
        writeField(buf, vfio_device_attach_iommufd_pt.fields.pt_id, pt);
        return 0;
      }
      case VFIO.DEVICE_DETACH_IOMMUFD_PT: {
        if (file.via !== 'cdev') throw ioctlError('ENOTTY');
        const d = decode(vfio_device_detach_iommufd_pt, userStruct(arg, vfio_device_detach_iommufd_pt.size));
        if (d.argsz < vfio_device_detach_iommufd_pt.size || d.flags !== 0) throw ioctlError('EINVAL');
        this.detach(file);
        return 0;
      }
      case VFIO.DEVICE_GET_INFO: {
        const buf = userStruct(arg, 16);
        if (decode(vfio_device_info, buf).argsz < 16) throw ioctlError('EINVAL');
        writeField(buf, vfio_device_info.fields.flags, dev.flags);
        writeField(buf, vfio_device_info.fields.num_regions, VFIO_PCI_NUM_REGIONS);
        writeField(buf, vfio_device_info.fields.num_irqs, 5);
        return 0;
      }
      case VFIO.DEVICE_GET_REGION_INFO:
        return this.regionInfo(dev, arg);
      case VFIO.DEVICE_GET_IRQ_INFO: {
        const buf = userStruct(arg, vfio_irq_info.size);
        const q = decode(vfio_irq_info, buf);
        if (q.argsz < vfio_irq_info.size || q.index >= 5) throw ioctlError('EINVAL');
        const F = VFIO_IRQ_INFO_FLAG;
        const [flags, count] = [[F.EVENTFD | F.MASKABLE | F.AUTOMASKED, 1], [F.EVENTFD | F.NORESIZE, 1], [F.EVENTFD | F.NORESIZE, 0], [F.EVENTFD, 1], [F.EVENTFD, 1]][q.index]!;
        writeField(buf, vfio_irq_info.fields.flags, flags!);
        writeField(buf, vfio_irq_info.fields.count, count!);
        return 0;
      }
      case VFIO.DEVICE_RESET:
        if ((dev.flags & VFIO_DEVICE_FLAGS.RESET) === 0) throw ioctlError('EINVAL');
        return 0;
      default:
        throw ioctlError('ENOTTY');
    }
  }

  /** vfio_df_ioctl_bind_iommufd, in the kernel's order of checks */
  private bindIommufd(file: DeviceFile, arg: number | Buffer | undefined): number {
    const buf = userStruct(arg, vfio_device_bind_iommufd.size);
    const b = decode(vfio_device_bind_iommufd, buf);
    if (b.argsz < vfio_device_bind_iommufd.size || b.flags !== 0 || b.iommufd < 0) throw ioctlError('EINVAL');
    if (file.via === 'group') throw ioctlError('EINVAL'); // BIND_IOMMUFD only for cdev fds
    const dev = file.device;
    if (dev.group && dev.group.openedBy !== null) throw ioctlError('EBUSY'); // vfio_device_block_group
    if (file.bound) throw ioctlError('EINVAL'); // one device cannot be bound twice
    const target = this.fdTable.get(b.iommufd);
    if (!target) throw ioctlError('EBADF');
    if (target.file.kind !== 'iommufd') throw ioctlError('EBADFD');
    if (dev.openCount !== 0) throw ioctlError('EINVAL'); // vfio_df_open: open_count != 0 && !df->group
    if (!dev.group?.emulated && this.iommu === 'virtio' && !this.allowUnsafe.iommufd) throw ioctlError('EPERM'); // no isolated MSI
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

  private regionInfo(dev: DeviceState, arg: number | Buffer | undefined): number {
    const buf = userStruct(arg, vfio_region_info.size);
    const q = decode(vfio_region_info, buf);
    if (q.argsz < vfio_region_info.size) throw ioctlError('EINVAL');
    const region = q.index < VFIO_PCI_NUM_REGIONS ? dev.regions.get(q.index) : undefined;
    if (!region) throw ioctlError('EINVAL'); // out of range, or a region this device lacks (VGA)
    const caps = encodeCaps(region);
    const F = vfio_region_info.fields;
    writeField(buf, F.flags, region.flags | (caps.length > 0 ? VFIO_REGION_INFO_FLAG.CAPS : 0));
    writeField(buf, F.size, BigInt(region.size));
    writeField(buf, F.offset, BigInt(q.index) << REGION_SHIFT);
    writeField(buf, F.cap_offset, 0);
    if (caps.length > 0) {
      const need = vfio_region_info.size + caps.length;
      if (q.argsz < need) {
        writeField(buf, F.argsz, need); // "ask again with room for the chain"
      } else {
        if (buf.length < need) throw ioctlError('EFAULT');
        caps.copy(buf, vfio_region_info.size);
        writeField(buf, F.cap_offset, vfio_region_info.size);
      }
    }
    return 0;
  }

  // -------------------------------------------------------------------------------------------------
  // pread/pwrite: region index in bits 40.. of the offset, as vfio-pci

  private rw(call: 'pread' | 'pwrite', fd: number, buf: Buffer, offset: bigint): number {
    const e = this.fdTable.get(fd);
    const info: CallInfo = { call, fd };
    if (e) info.path = e.path;
    return this.run(info, () => {
      if (!e) throw sysError('EBADF', call === 'pread' ? 'read' : 'write');
      const f = e.file;
      if (f.kind === 'file') {
        if (call === 'pwrite') throw sysError('EINVAL', 'write');
        return Buffer.from(`${f.node.text}\n`).copy(buf, 0, Number(offset));
      }
      if (f.kind === 'chr') return call === 'pread' ? 0 : buf.length;
      if (f.kind !== 'device' || !f.bound) throw sysError('EINVAL', call === 'pread' ? 'read' : 'write');
      const index = Number(offset >> REGION_SHIFT);
      const at = Number(offset & ((1n << REGION_SHIFT) - 1n));
      const region = f.device.regions.get(index);
      const readable = call === 'pread' ? VFIO_REGION_INFO_FLAG.READ : VFIO_REGION_INFO_FLAG.WRITE;
      if (!region || (region.flags & readable) === 0 || at >= Number(region.size)) throw sysError('EINVAL', call === 'pread' ? 'read' : 'write');
      const n = Math.min(buf.length, Number(region.size) - at);
      const backing = index === VFIO_PCI_REGION.CONFIG ? f.device.config : this.bar(f.device, index, Number(region.size));
      if (call === 'pread') backing.copy(buf, 0, at, at + n);
      else if (index === VFIO_PCI_REGION.CONFIG) {
        // vfio-pci virtualizes config space: the IDs are read-only
        for (let i = 0; i < n; i++) if (at + i >= 4) backing[at + i] = buf[i]!;
      } else buf.copy(backing, at, 0, n);
      return n;
    });
  }

  private bar(dev: DeviceState, index: number, size: number): Buffer {
    if (index === VFIO_PCI_REGION.BAR0) {
      if (dev.bar0.length !== size) dev.bar0 = Buffer.alloc(size);
      return dev.bar0;
    }
    return Buffer.alloc(size);
  }
}

// ---------------------------------------------------------------------------------------------------
// helpers

function matches(r: FailRule, c: CallInfo): boolean {
  if (r.call !== undefined && r.call !== c.call) return false;
  if (r.request !== undefined && r.request !== c.request) return false;
  if (r.path !== undefined && r.path !== c.path) return false;
  return true;
}

/** an ioctl's error, as the addon throws it (no path) */
function ioctlError(code: Errno): FakeSysError {
  return sysError(code, 'ioctl');
}

/** A struct passed by address: a missing or short buffer is memory the kernel cannot copy (EFAULT). */
function userStruct(arg: number | Buffer | undefined, minsz: number): Buffer {
  if (!Buffer.isBuffer(arg) || arg.length < minsz) throw ioctlError('EFAULT');
  return arg;
}

/** iommufd's ucmd: the first u32 is the size; smaller than the command's minimum -> EINVAL */
function iommufdCmd(arg: number | Buffer | undefined, minsz: number): Buffer {
  if (!Buffer.isBuffer(arg) || arg.length < 4) throw ioctlError('EFAULT');
  const size = arg.readUInt32LE(0);
  if (size < minsz) throw ioctlError('EINVAL');
  if (arg.length < size) throw ioctlError('EFAULT');
  return arg;
}

function cString(arg: number | Buffer | undefined): string {
  if (!Buffer.isBuffer(arg)) throw ioctlError('EFAULT');
  const end = arg.indexOf(0);
  if (end < 0) throw ioctlError('EFAULT'); // strndup_user would read past the buffer
  return arg.subarray(0, end).toString('utf8');
}

function driverOf(type: number): 'type1' | 'noiommu' {
  return type === VFIO_NOIOMMU_IOMMU ? 'noiommu' : 'type1';
}

function encodeCaps(region: FakeRegion): Buffer {
  const parts: Buffer[] = [];
  const base = vfio_region_info.size;
  if (region.sparseMmap) {
    const n = region.sparseMmap.length;
    const b = Buffer.alloc(vfio_region_info_cap_sparse_mmap.size + n * vfio_region_sparse_mmap_area.size);
    writeField(b, vfio_info_cap_header.fields.id, VFIO_REGION_INFO_CAP_SPARSE_MMAP);
    writeField(b, vfio_info_cap_header.fields.version, 1);
    writeField(b, vfio_region_info_cap_sparse_mmap.fields.nr_areas, n);
    region.sparseMmap.forEach((a, i) => {
      const off = vfio_region_info_cap_sparse_mmap.size + i * vfio_region_sparse_mmap_area.size;
      writeField(b, vfio_region_sparse_mmap_area.fields.offset, a.offset, off);
      writeField(b, vfio_region_sparse_mmap_area.fields.size, a.size, off);
    });
    parts.push(b);
  }
  if (region.type) {
    const b = Buffer.alloc(vfio_region_info_cap_type.size);
    writeField(b, vfio_info_cap_header.fields.id, VFIO_REGION_INFO_CAP_TYPE);
    writeField(b, vfio_info_cap_header.fields.version, 1);
    writeField(b, vfio_region_info_cap_type.fields.type, region.type.type);
    writeField(b, vfio_region_info_cap_type.fields.subtype, region.type.subtype);
    parts.push(b);
  }
  // chain: each header's `next` is the offset (from the start of the info) of the one after it
  let off = base;
  for (let i = 0; i < parts.length - 1; i++) {
    off += parts[i]!.length;
    writeField(parts[i]!, vfio_info_cap_header.fields.next, off);
  }
  return Buffer.concat(parts);
}

function statOf(node: FsNode): FileStat {
  switch (node.kind) {
    case 'dir': return { mode: S_IFDIR | 0o755, rdev: 0, isCharacterDevice: false };
    case 'file': return { mode: S_IFREG | 0o444, rdev: 0, isCharacterDevice: false };
    case 'link': return { mode: S_IFLNK | 0o777, rdev: 0, isCharacterDevice: false };
    case 'chr': return { mode: S_IFCHR | node.mode, rdev: node.rdev, isCharacterDevice: true };
  }
}

const VFIO_NAMES = new Map<number, string>();
for (const [name, value] of Object.entries(VFIO)) if (!VFIO_NAMES.has(value)) VFIO_NAMES.set(value, `VFIO_${name}`);
const IOMMU_NAMES = new Map(Object.entries(IOMMU).map(([name, value]) => [value, `IOMMU_${name}`]));

/** The request's name as the fd it is sent to decodes it (some VFIO numbers mean one thing to a container, another to a device). */
export function requestName(request: number, kind?: OpenFile['kind']): string {
  if (kind === 'container') {
    if (request === VFIO.IOMMU_GET_INFO) return 'VFIO_IOMMU_GET_INFO';
    if (request === VFIO.IOMMU_MAP_DMA) return 'VFIO_IOMMU_MAP_DMA';
  }
  return VFIO_NAMES.get(request) ?? IOMMU_NAMES.get(request) ?? `0x${request.toString(16)}`;
}
