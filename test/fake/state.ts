// The fake kernel's state: the objects the real kernel keeps (groups, devices, their open files, the
// iommufd contexts and containers with their mappings, eventfds, the filesystem tree) and FakeState,
// the one object that holds all of it. Every subsystem module (sysfs.ts, host.ts, iommufd.ts,
// container.ts, group.ts, device.ts...) is a set of functions taking the FakeState; FakeKernel
// (kernel.ts) owns one and delegates to them.
import { makedev, type FileStat } from '../../src/sys/kernel.js';
import type { EduState } from './edu.js';
import type { MigFile, MigrationDriver } from './migration.js';
import type { CallInfo, DmaFault, DmaTransfer, FailRule, FakeRegion, HostOptions, IommuGeometry, MmioAccess } from './types.js';

// ---------------------------------------------------------------------------------------------------
// the host's shape

/** Device numbers as on the test bed's kernels. */
export const RDEV = {
  vfioContainer: makedev(10, 196),
  iommu: makedev(10, 258),
  groupMajor: 245,
  cdevMajor: 246,
} as const;

export const S_IFCHR = 0o020000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;

export const EDU = '0000:00:10.0';
export const TESTDEV = '0000:00:11.0';

export const PAGE = 4096;
export const HUGE_PAGE = 2 * 1024 * 1024;
export const U64_MAX = (1n << 64n) - 1n;
/** where allocDma and mmap place their mappings: x86-64's mmap area */
const VADDR_BASE = 0x7f00_0000_0000n;
/** vfio-pci's region offsets: the region index in bits 40.. of the offset */
export const REGION_SHIFT = 40n;

// ---------------------------------------------------------------------------------------------------
// kernel objects

export interface GroupState {
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

export interface DeviceState {
  name: string;
  bus: 'pci' | 'mdev';
  sysfsPath: string;
  driver: string | null;
  /** the driver whose id table matches it (drivers_probe without an override) */
  hostDriver: string | null;
  /** driver_override (PCI only); null when cleared */
  override: string | null;
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
  /** the memory behind BARs modelled as plain memory, by region index */
  bars: Map<number, Buffer>;
  /** QEMU's edu behind BAR0, or null */
  edu: EduState | null;
  irqCounts: { intx: number; msi: number; msix: number; pcie: boolean };
  irq: IrqState;
  hotReset: { address: string; group: number | null | undefined }[] | null;
  /** VFIO_DEVICE_RESETs done */
  resets: number;
  /** its migration driver's VFIO_MIGRATION_* flags (device->migration_flags), or null without one (no mig_ops) */
  migration: number | null;
  /** its migration driver (mig_ops, log_ops): present exactly when `migration` is */
  mig: MigrationDriver | null;
  /** its device files not yet released (a closed fd whose region is still mmapped stays here) */
  files: Set<DeviceFile>;
  /** live mmaps of its regions, refreshed after every access that changes what they show */
  mirrors: Set<MemMapping>;
}

export interface IoasObject {
  type: 'ioas';
  /** the IOVA mappings, sorted by iova */
  areas: DmaArea[];
}

export interface HwptObject {
  type: 'hwpt';
  ioas: number;
  users: number;
  /** allocated by IOMMU_HWPT_ALLOC (an automatic one dies with its last device) */
  user?: boolean;
  /** allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING: its domain has dirty ops */
  dirtyOps?: boolean;
  tracking?: boolean;
  /** 4 KiB pages DMA wrote while tracking, not yet read and cleared */
  dirty?: Set<bigint>;
}

export interface IommufdCtx {
  fdOpen: boolean;
  nextId: number;
  objects: Map<number, IoasObject | HwptObject | { type: 'device'; device: DeviceState }>;
}

export interface ContainerState {
  fdOpen: boolean;
  groups: Set<GroupFile>;
  iommuType: number | null;
  /** the type1 IOMMU's mappings (vfio_dma), sorted by iova */
  areas: DmaArea[];
  /** iommu->dma_avail: vfio_iommu_type1.dma_entry_limit when the IOMMU was set, less the mappings */
  dmaAvail: number;
  /** iommu->dirty_page_tracking */
  dirtyTracking: boolean;
}

export interface GroupFile {
  kind: 'group';
  group: GroupState;
  fdOpen: boolean;
  container: ContainerState | null;
  /** device fds taken from this group hold the group file open (vfio_group_fops_release) */
  deviceFiles: number;
}

export interface DeviceFile {
  kind: 'device';
  device: DeviceState;
  via: 'cdev' | 'group';
  groupFile: GroupFile | null;
  /** df->access_granted */
  bound: boolean;
  ctx: IommufdCtx | null;
  devid: number | null;
  attachedPt: number | null;
  /** its fd is closed (the file lives on while a region of it is mmapped, as vma->vm_file holds it) */
  fdClosed?: boolean;
  /** live mmaps of its regions */
  mmaps?: number;
}

export type OpenFile =
  | { kind: 'iommufd'; ctx: IommufdCtx }
  | { kind: 'container'; container: ContainerState }
  | GroupFile
  | DeviceFile
  | { kind: 'file'; node: FileNode }
  | { kind: 'chr'; rdev: number }
  | { kind: 'eventfd'; efd: EventfdState }
  | MigFile;

export interface FdEntry {
  fd: number;
  path: string;
  stat: FileStat;
  file: OpenFile;
}

/**
 * A file: plain text, bytes (/proc/config.gz), or a sysfs/procfs attribute whose read and write run
 * the kernel's show/store (read: what a read shows, without the trailing newline; write: the text of
 * one write(2), which may throw as the store does).
 */
export type FileNode = { kind: 'file'; text: string; data?: Buffer; read?: () => string; write?: (text: string, path: string) => void };
export type FsNode =
  | { kind: 'dir'; children: Set<string> }
  | FileNode
  | { kind: 'link'; target: string }
  | { kind: 'chr'; rdev: number; mode: number; accessible: boolean };

// memory, DMA and interrupts

/** A mapping made by mmap or allocDma, as the addon's `struct mapping`. */
export interface MemMapping {
  kind: 'dma' | 'region';
  /** the ArrayBuffer handed out; unmap detaches it */
  buffer: ArrayBuffer;
  /** the pages: `buffer` while mapped; after unmap, its contents for as long as an IOMMU mapping pins them */
  pages: ArrayBuffer | null;
  address: bigint;
  length: number;
  mapped: boolean;
  hugePages: boolean;
  /** IOMMU mappings that pin these pages */
  pins: number;
  region?: { file: DeviceFile; device: DeviceState; index: number; at: number; writable: boolean };
}

/** One mapping of an IOAS (iopt_area) or a type1 container (vfio_dma). */
export interface DmaArea {
  iova: bigint;
  length: bigint;
  mem: MemMapping;
  /** where iova falls in mem */
  offset: number;
  readable: boolean;
  writable: boolean;
  /** bytes charged against RLIMIT_MEMLOCK (pages are pinned only once an IOMMU domain exists) */
  accounted: bigint;
}

export interface EventfdState {
  counter: bigint;
  watches: WatchState[];
  scheduled: boolean;
  fdOpen: boolean;
}

export interface WatchState {
  efd: EventfdState;
  callback: (err: Error | null, count?: bigint) => void;
  active: boolean;
  /** whether it keeps the event loop alive (the addon's uv_unref when false) */
  keepAlive: boolean;
}

/** vfio-pci's interrupt state of a device (vdev->irq_type, its contexts, err_trigger, req_trigger). */
export interface IrqState {
  type: 'none' | 'intx' | 'msi' | 'msix';
  /** INTx: [trigger]; MSI/MSI-X: one per vector enabled (null: allocated, not wired) */
  triggers: (EventfdState | null)[];
  /** INTx is masked (automasked after it fired, until UNMASK) */
  intxMasked: boolean;
  /** the INTx line as the device drives it */
  intxLine: boolean;
  err: EventfdState | null;
  req: EventfdState | null;
}

export const noIrqs = (): IrqState => ({ type: 'none', triggers: [], intxMasked: false, intxLine: false, err: null, req: null });

export const vfioDriver = (d: DeviceState): boolean => d.driver !== null && (d.bus === 'mdev' || d.driver.startsWith('vfio'));
/** driver_managed_dma or no driver: may share a group with a device assigned through VFIO */
export const dmaSafe = (d: DeviceState): boolean => d.driver === null || vfioDriver(d) || d.driver === 'pci-stub' || d.driver === 'pcieport';
/** the name a group's node and its vfio-class device have: N, or noiommu-N */
export const groupName = (g: GroupState): string => (g.noiommu ? `noiommu-${g.id}` : String(g.id));

/** intel-iommu in QEMU (aw-bits 39) with its MSI window; virtio-iommu (64-bit input range, 4 KiB pages) with the same window;
 *  SMMUv3 (44-bit input range) with the software MSI window arm-smmu-v3 reserves at 0x8000000 (1 MiB) */
const GEOMETRY: Record<'intel' | 'virtio' | 'smmuv3', IommuGeometry> = {
  intel: { ranges: [{ start: 0n, last: 0xfedfffffn }, { start: 0xfef00000n, last: 0x7fffffffffn }], pgsizes: 0x40201000n },
  virtio: { ranges: [{ start: 0n, last: 0xfedfffffn }, { start: 0xfef00000n, last: U64_MAX }], pgsizes: ~0xfffn & U64_MAX },
  smmuv3: { ranges: [{ start: 0n, last: 0x7ffffffn }, { start: 0x8100000n, last: 0xfffffffffffn }], pgsizes: 0x40201000n },
};
/** arm-smmu-v3's page sizes with the kernel's granule: the page, its PMD block, and with 4 KiB the 1 GiB block */
const smmuPageSizes = (page: number): bigint => (page === 4096 ? 0x40201000n : BigInt(page) | BigInt((page / 8) * page));

// ---------------------------------------------------------------------------------------------------

/** Everything the fake kernel holds, shared by the subsystem modules. FakeKernel exposes the public parts. */
export class FakeState {
  readonly fs = new Map<string, FsNode>([['/', { kind: 'dir', children: new Set() }]]);
  readonly fdTable = new Map<number, FdEntry>();
  nextFd = 20;
  readonly groups = new Map<number, GroupState>();
  readonly devices = new Map<string, DeviceState>();
  readonly rules: (FailRule & { left: number; pass: number })[] = [];
  readonly listeners: ((call: CallInfo) => void)[] = [];
  nextCdev = 0;
  nextGroupMinor = 0;

  /** every open/close/ioctl/pread/pwrite/fstat, in order, with the errno of the ones that failed */
  readonly calls: CallInfo[] = [];
  /** fds closed that were not open (closeQuietly swallows the EBADF; tests look here) */
  readonly badCloses: number[] = [];

  /** the kernel's page size and its PMD-sized huge page (HostOptions.pageSize) */
  readonly pageSize: number;
  readonly hugePageSize: number;
  readonly hasIommufd: boolean;
  readonly iommu: NonNullable<HostOptions['iommu']>;
  /** IOMMU_CAP_DIRTY_TRACKING */
  readonly iommuDirtyTracking: boolean;
  /** running as root: see HostOptions.root */
  root: boolean;
  rawio: boolean;
  /** /proc/interrupts lists IR- (remapped) domains */
  interruptRemapping: boolean;
  /** vfio_iommu_type1 is loaded: the container offers type1v2 and type1 */
  type1Available: boolean;
  /** this process's pid, /proc/self */
  readonly pid = 1000;
  /** the pid of "another process" (holdGroupElsewhere, bindElsewhere, openElsewhere) */
  readonly otherPid = 2345;
  /** driver modules loaded: a directory under /sys/bus/pci/drivers each */
  readonly loadedDrivers = new Set<string>();
  otherFds = 3;
  /** unbinds the real kernel would have blocked on (the device was open through VFIO): the fake refused them */
  readonly blockedUnbinds: { device: string; driver: string; path: string }[] = [];
  /** what the driver core would have said in dmesg: binds, unbinds, failed probes */
  readonly kernelLog: string[] = [];
  apiVersion: number;
  allowUnsafe: { iommufd: boolean; type1: boolean };
  readonly charLinks: boolean;
  readonly firstGroup: number;

  // memory, DMA and interrupts
  readonly mem = new WeakMap<ArrayBuffer, MemMapping>();
  /** mappings still mapped, or unmapped but pinned by an IOMMU mapping */
  readonly memList = new Set<MemMapping>();
  nextVaddr = VADDR_BASE;
  readonly watchHandles = new WeakMap<object, WatchState>();
  readonly watchList = new Set<WatchState>();
  watchesStarted = 0;
  readonly iommufdCtxs = new Set<IommufdCtx>();
  readonly containers = new Set<ContainerState>();
  pinned = 0n;
  memlockLimit: { soft: number; hard: number } = { soft: 8 * 1024 * 1024, hard: 8 * 1024 * 1024 };

  /** free 2 MiB huge pages (nr_hugepages less those in use): allocDma(..., true) answers ENOMEM beyond them; 0 as on a host that reserved none */
  hugePagesFree = 64;
  /** CAP_IPC_LOCK: pinned pages are not charged against RLIMIT_MEMLOCK (default true, as root) */
  ipcLock = true;
  /** vfio_iommu_type1.dma_entry_limit, read when a container's IOMMU is set */
  dmaEntryLimit = 65535;
  /** the hardware IOMMU's IOVA ranges and page sizes (intel by default, virtio-iommu's for iommu: 'virtio') */
  geometry: IommuGeometry;
  /** when edu performs a DMA its command register started: at once (default), or on a later turn of the event loop as QEMU's timer does */
  eduDmaTiming: 'sync' | 'deferred' = 'sync';
  /** DMAs the fake IOMMU refused, in order */
  readonly dmaFaults: DmaFault[] = [];
  /** DMAs that went through, in order */
  readonly dmaTransfers: DmaTransfer[] = [];
  /** every mmioRead/mmioWrite on a device region, in order */
  readonly mmioLog: MmioAccess[] = [];
  readonly barriers: { kind: 'write' | 'read'; at: number }[] = [];
  directMmio = false;

  constructor(options: Omit<HostOptions, 'devices' | 'mdevs'>) {
    this.hasIommufd = (options.kernel ?? 'iommufd') === 'iommufd';
    this.iommu = options.iommu ?? 'intel';
    this.iommuDirtyTracking = options.iommuDirtyTracking ?? false;
    this.root = options.root ?? true;
    this.rawio = options.rawio ?? this.root;
    this.ipcLock = this.root;
    this.interruptRemapping = options.interruptRemapping ?? this.iommu === 'intel';
    this.type1Available = options.type1 ?? true;
    this.apiVersion = options.apiVersion ?? 0;
    const unsafe = options.allowUnsafeInterrupts;
    this.allowUnsafe = typeof unsafe === 'object'
      ? { iommufd: unsafe.iommufd ?? false, type1: unsafe.type1 ?? false }
      : { iommufd: unsafe ?? false, type1: unsafe ?? false };
    this.charLinks = options.charLinks ?? true;
    this.firstGroup = this.iommu === 'noiommu' || this.iommu === 'none' ? 0 : 3;
    this.pageSize = options.pageSize ?? 4096;
    this.hugePageSize = (this.pageSize / 8) * this.pageSize;
    const g = GEOMETRY[this.iommu === 'virtio' || this.iommu === 'smmuv3' ? this.iommu : 'intel'];
    this.geometry = { ranges: g.ranges.map((r) => ({ ...r })), pgsizes: this.iommu === 'smmuv3' ? smmuPageSizes(this.pageSize) : g.pgsizes };
  }
}

/** the device by name (a PCI address or an mdev UUID, any case) */
export function findDevice(s: FakeState, name: string): DeviceState {
  const d = s.devices.get(name.toLowerCase());
  if (!d) throw new Error(`fake: no device ${name}`);
  return d;
}
