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
//
// Memory, interrupts and DMA are modelled too:
// - allocDma/mmap hand out ArrayBuffers with fake page-aligned addresses; unmap detaches them as the
//   addon does (liveMappings() counts what is left). mmap of a device fd maps an mmap-able BAR; behind
//   BAR0 of a 1234:11e8 device sits QEMU's edu (hw/misc/edu.c: id, liveness, factorial, interrupt
//   raise/ack, DMA engine), other BARs are plain memory. mmioRead/mmioWrite reach the device model with
//   exactly one access (mmioLog records them); pread/pwrite split accesses as vfio_pci_core_do_io_rw.
// - eventfd/watch: the counter is delivered to a watcher on a later turn of the loop (setImmediate).
//   VFIO_DEVICE_GET_IRQ_INFO/SET_IRQS follow vfio_pci_intrs.c (INTx automask/unmask, MSI/MSI-X, ERR and
//   REQ triggers, loopback); raiseIrq() fires a device's interrupt as its hardware would.
// - The IOMMU: IOAS_IOVA_RANGES/MAP/UNMAP (iommufd/ioas.c, io_pagetable.c) and type1 GET_INFO/MAP_DMA/
//   UNMAP_DMA (vfio_iommu_type1.c), RLIMIT_MEMLOCK (setMemlock, ipcLock, /proc/self/limits) and
//   dma_entry_limit; mappings die with their IOAS or container as in the kernel (iommuMappings()).
//   edu's DMA engine translates its IOVAs through the domain its device is attached to: a transfer to
//   an unmapped IOVA is recorded in dmaFaults and copies nothing; dmaTransfers records the others.
//
// And the host around VFIO, as src/host (driver, doctor) and the passed-fd checks read it:
// - Driver binding through sysfs (drivers/base/bus.c, dd.c, drivers/pci/pci-sysfs.c): driver_override
//   ("(null)" once cleared with "\n"), drivers/<drv>/unbind and bind, drivers_probe (which binds the
//   override if set, else the device's natural driver, and succeeds whether or not a probe did).
//   vfio-pci's probe fails without an IOMMU group; a host driver's fails while the group is claimed for
//   user DMA. Unbinding a device open through VFIO blocks in the real kernel: the fake refuses it, and
//   records the attempt in blockedUnbinds. kernelLog keeps what dmesg would say.
// - /proc/<pid>/fd of this process (every fd the fake hands out) and of "another process"
//   (holdGroupElsewhere, bindElsewhere, openElsewhere), /proc/self -> /proc/<pid>.
// - What doctor reads: /proc/interrupts (IR- domains or not), /proc/cmdline, /proc/sys/kernel/osrelease,
//   /proc/self/status (CapEff), /boot/config-<release> or /proc/config.gz, /sys/module/*/parameters,
//   /sys/class/iommu, /sys/class/misc/{iommu,vfio}/dev, /sys/class/vfio/<N>/dev. `root: false` makes
//   writes under /sys, /proc, /run and /boot answer EACCES and the 0600/0660 VFIO nodes inaccessible.
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { makedev, type FileStat, type Kernel } from '../src/sys/kernel.js';
import { decode, writeField } from '../src/uapi/struct.js';
import {
  IOMMU,
  IOMMU_IOAS_MAP_FLAG,
  iommu_destroy,
  iommu_ioas_alloc,
  iommu_ioas_iova_ranges,
  iommu_ioas_map,
  iommu_ioas_unmap,
  iommu_iova_range,
} from '../src/uapi/iommufd.js';
import {
  VFIO,
  VFIO_DEVICE_FLAGS,
  VFIO_DMA_MAP_FLAG,
  VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  VFIO_IRQ_INFO_FLAG,
  VFIO_IRQ_SET,
  VFIO_NOIOMMU_IOMMU,
  VFIO_PCI_HOT_RESET_FLAG,
  VFIO_PCI_IRQ,
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
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  vfio_iommu_type1_info,
  vfio_iommu_type1_info_cap_iova_range,
  vfio_iommu_type1_info_dma_avail,
  vfio_iova_range,
  vfio_irq_info,
  vfio_irq_set,
  vfio_pci_dependent_device,
  vfio_pci_hot_reset_info,
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
  EOVERFLOW: [75, 'value too large for defined data type'],
  EBADFD: [77, 'file descriptor in bad state'],
  EMSGSIZE: [90, 'message too long'],
  EOPNOTSUPP: [95, 'operation not supported'],
  EADDRINUSE: [98, 'address already in use'],
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
  /**
   * The driver whose id table matches the device: what drivers_probe binds when driver_override is
   * not set. Default: `driver` when that is a host driver (e1000e...), else none (edu has no driver).
   */
  hostDriver?: string | null;
  /** IOMMU group id: default a new group (none on an `iommu: 'none'` host); null: no group */
  group?: number | null;
  /** vfio-dev index N (vfioN): default the next free one for a device bound to a VFIO driver; null: no vfio-dev entry */
  cdev?: number | null;
  /** region overrides, by index: `null` makes the index answer EINVAL (as VGA does on a non-VGA device) */
  regions?: Record<number, FakeRegion | null>;
  /** VFIO_DEVICE_FLAGS_* (default PCI; add RESET for a device with FLR, PM or bus reset) */
  flags?: number;
  /** interrupt vectors as vfio-pci counts them (default edu's: INTx 1, MSI 1, MSI-X 0, not PCIe so no ERR) */
  irqs?: { intx?: number; msi?: number; msix?: number; pcie?: boolean };
  /**
   * The devices a hot (bus or slot) reset would reset, itself included, by address (their group is
   * looked up; an address the fake does not know has none, unless given). Default null: no slot or
   * bus reset is possible (edu on the root bus), GET_PCI_HOT_RESET_INFO answers ENODEV.
   */
  hotReset?: (string | { address: string; group: number | null })[] | null;
  /** the standard capability list in config space (default edu's: MSI at 0x40) */
  capabilities?: { id: number; offset: number }[];
  /** BAR0's model: QEMU's edu registers (default for 1234:11e8) or plain memory */
  bar0?: 'edu' | 'ram';
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
  /**
   * Running as root (default true). false: writes under /sys, /proc, /run and /boot answer EACCES,
   * the VFIO nodes that are not world-accessible (all but /dev/vfio/vfio) cannot be opened, and rawio
   * and ipcLock default to false; /proc/self/status shows no capabilities.
   */
  root?: boolean;
  /** /proc/interrupts lists IR- (remapped) domains (default: with iommu 'intel') */
  interruptRemapping?: boolean;
  /** /proc/cmdline (default: what the test bed boots with for the IOMMU asked) */
  cmdline?: string;
  /** /proc/sys/kernel/osrelease (default 6.1.0-28-amd64 on stock, 6.12.9-vfio on iommufd kernels) */
  release?: string;
  /** where the kernel config can be read: /boot/config-<release> (default), /proc/config.gz, or nowhere */
  kernelConfig?: 'boot' | 'proc' | 'none';
  /** host driver modules loaded besides the devices' own and vfio-pci (drivers_probe binds only loaded ones) */
  drivers?: string[];
  /** vfio_iommu_type1 is loaded (default true): without it the container offers neither type1 nor type1v2 */
  type1?: boolean;
}

/** A call as the fake saw it, for the call log, listeners and failure rules. */
export interface CallInfo {
  call: 'open' | 'close' | 'ioctl' | 'pread' | 'pwrite' | 'fstat' | 'stat' | 'readlink' | 'realpath' | 'readdir' | 'readText'
    | 'mmap' | 'allocDma' | 'eventfd' | 'writeText' | 'unlink' | 'mkdirp' | 'readBytes';
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
  /** its device files not yet released (a closed fd whose region is still mmapped stays here) */
  files: Set<DeviceFile>;
  /** live mmaps of its regions, refreshed after every access that changes what they show */
  mirrors: Set<MemMapping>;
}

interface IoasObject {
  type: 'ioas';
  /** the IOVA mappings, sorted by iova */
  areas: DmaArea[];
}

interface IommufdCtx {
  fdOpen: boolean;
  nextId: number;
  objects: Map<number, IoasObject | { type: 'hwpt'; ioas: number; users: number } | { type: 'device'; device: DeviceState }>;
}

interface ContainerState {
  fdOpen: boolean;
  groups: Set<GroupFile>;
  iommuType: number | null;
  /** the type1 IOMMU's mappings (vfio_dma), sorted by iova */
  areas: DmaArea[];
  /** iommu->dma_avail: vfio_iommu_type1.dma_entry_limit when the IOMMU was set, less the mappings */
  dmaAvail: number;
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
  /** its fd is closed (the file lives on while a region of it is mmapped, as vma->vm_file holds it) */
  fdClosed?: boolean;
  /** live mmaps of its regions */
  mmaps?: number;
}

type OpenFile =
  | { kind: 'iommufd'; ctx: IommufdCtx }
  | { kind: 'container'; container: ContainerState }
  | GroupFile
  | DeviceFile
  | { kind: 'file'; node: FileNode }
  | { kind: 'chr'; rdev: number }
  | { kind: 'eventfd'; efd: EventfdState };

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

/**
 * A file: plain text, bytes (/proc/config.gz), or a sysfs/procfs attribute whose read and write run
 * the kernel's show/store (read: what a read shows, without the trailing newline; write: the text of
 * one write(2), which may throw as the store does).
 */
type FileNode = { kind: 'file'; text: string; data?: Buffer; read?: () => string; write?: (text: string, path: string) => void };
const fileText = (node: FileNode): string => (node.read ? node.read() : node.data ? node.data.toString('latin1') : node.text);
type FsNode =
  | { kind: 'dir'; children: Set<string> }
  | FileNode
  | { kind: 'link'; target: string }
  | { kind: 'chr'; rdev: number; mode: number; accessible: boolean };

// memory, DMA and interrupts

const PAGE = 4096;
const HUGE_PAGE = 2 * 1024 * 1024;
const U64_MAX = (1n << 64n) - 1n;
/** where allocDma and mmap place their mappings: x86-64's mmap area */
const VADDR_BASE = 0x7f00_0000_0000n;

/** A mapping made by mmap or allocDma, as the addon's `struct mapping`. */
interface MemMapping {
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
interface DmaArea {
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

/** A DMA the fake IOMMU refused (nothing was copied). */
export interface DmaFault {
  device: string;
  /** the address the device used (after edu's 28-bit clamp) */
  iova: bigint;
  length: number;
  /** the device wrote memory (edu -> RAM) */
  write: boolean;
  reason: 'unmapped' | 'read-only' | 'write-only' | 'no domain' | 'noiommu' | 'bus master disabled' | 'edu range';
}

/** A DMA the device made through the fake IOMMU. */
export interface DmaTransfer {
  device: string;
  iova: bigint;
  length: number;
  write: boolean;
}

/** One MMIO access through a mapping (mmioRead/mmioWrite). */
export interface MmioAccess {
  device: string;
  region: number;
  /** offset in the region */
  offset: number;
  width: number;
  op: 'read' | 'write';
  value: bigint;
}

interface EventfdState {
  counter: bigint;
  watches: WatchState[];
  scheduled: boolean;
  fdOpen: boolean;
}

interface WatchState {
  efd: EventfdState;
  callback: (err: Error | null, count?: bigint) => void;
  active: boolean;
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

const noIrqs = (): IrqState => ({ type: 'none', triggers: [], intxMasked: false, intxLine: false, err: null, req: null });

/** QEMU's edu (hw/misc/edu.c) */
export interface EduState {
  addr4: number;
  fact: number;
  status: number;
  irqStatus: number;
  dma: { src: bigint; dst: bigint; cnt: bigint; cmd: bigint };
  /** its 4 KiB DMA buffer, at 0x40000 in its own address space */
  buffer: Buffer;
}

export const EDU_REG = {
  ID: 0x00, LIVENESS: 0x04, FACTORIAL: 0x08, STATUS: 0x20, IRQ_STATUS: 0x24, IRQ_RAISE: 0x60, IRQ_ACK: 0x64,
  DMA_SRC: 0x80, DMA_DST: 0x88, DMA_COUNT: 0x90, DMA_CMD: 0x98,
} as const;
export const EDU_DMA = { START: 0x1n, TO_RAM: 0x2n, IRQ: 0x4n, BUFFER: 0x40000n, BUFFER_SIZE: 4096, DONE_IRQ: 0x100, FACT_IRQ: 0x1 } as const;
const EDU_STATUS_COMPUTING = 0x01;
const EDU_STATUS_IRQFACT = 0x80;
const EDU_DMA_MASK = (1n << 28n) - 1n;

const newEdu = (): EduState => ({
  addr4: 0, fact: 0, status: 0, irqStatus: 0, dma: { src: 0n, dst: 0n, cnt: 0n, cmd: 0n }, buffer: Buffer.alloc(EDU_DMA.BUFFER_SIZE),
});

/** The IOMMU's geometry as the hardware reports it: usable IOVA ranges (reserved regions excluded) and page sizes. */
export interface IommuGeometry {
  ranges: { start: bigint; last: bigint }[];
  pgsizes: bigint;
}

/** intel-iommu in QEMU (aw-bits 39) with its MSI window; virtio-iommu (64-bit input range, 4 KiB pages) with the same window */
const GEOMETRY: Record<'intel' | 'virtio', IommuGeometry> = {
  intel: { ranges: [{ start: 0n, last: 0xfedfffffn }, { start: 0xfef00000n, last: 0x7fffffffffn }], pgsizes: 0x40201000n },
  virtio: { ranges: [{ start: 0n, last: 0xfedfffffn }, { start: 0xfef00000n, last: U64_MAX }], pgsizes: ~0xfffn & U64_MAX },
};

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
  private readonly loadedDrivers = new Set<string>();
  private otherFds = 3;
  /** unbinds the real kernel would have blocked on (the device was open through VFIO): the fake refused them */
  readonly blockedUnbinds: { device: string; driver: string; path: string }[] = [];
  /** what the driver core would have said in dmesg: binds, unbinds, failed probes */
  readonly kernelLog: string[] = [];
  apiVersion: number;
  allowUnsafe: { iommufd: boolean; type1: boolean };
  private readonly charLinks: boolean;
  private readonly firstGroup: number;

  // memory, DMA and interrupts
  private readonly mem = new WeakMap<ArrayBuffer, MemMapping>();
  /** mappings still mapped, or unmapped but pinned by an IOMMU mapping */
  private readonly memList = new Set<MemMapping>();
  private nextVaddr = VADDR_BASE;
  private readonly watchHandles = new WeakMap<object, WatchState>();
  private readonly watchList = new Set<WatchState>();
  private readonly iommufdCtxs = new Set<IommufdCtx>();
  private readonly containers = new Set<ContainerState>();
  private pinned = 0n;
  private memlockLimit: { soft: number; hard: number } = { soft: 8 * 1024 * 1024, hard: 8 * 1024 * 1024 };

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

  constructor(options: Omit<HostOptions, 'devices' | 'mdevs'> = {}) {
    this.hasIommufd = (options.kernel ?? 'iommufd') === 'iommufd';
    this.iommu = options.iommu ?? 'intel';
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
    const g = GEOMETRY[this.iommu === 'virtio' ? 'virtio' : 'intel'];
    this.geometry = { ranges: g.ranges.map((r) => ({ ...r })), pgsizes: g.pgsizes };
    this.mkdir(`/proc/${this.pid}/fd`);
    this.symlink('/proc/self', String(this.pid));
    this.writeLimits();

    for (const dir of ['/sys/bus/pci/devices', '/sys/bus/pci/drivers', '/sys/bus/mdev/devices', '/sys/kernel/iommu_groups', '/sys/class/vfio-dev', '/sys/class/iommu', '/dev/char']) {
      this.mkdir(dir);
    }
    if (this.iommu === 'intel') this.symlink('/sys/class/iommu/dmar0', '../../devices/virtual/iommu/dmar0');
    if (this.iommu === 'virtio') this.symlink('/sys/class/iommu/0000:00:01.0', '../../devices/pci0000:00/0000:00:01.0/virtio0/iommu/0000:00:01.0');
    const vfio = options.vfio ?? true;
    if (vfio) {
      this.mknod('/dev/vfio/vfio', RDEV.vfioContainer, 0o666);
      this.writeFile('/sys/class/misc/vfio/dev', '10:196');
      this.mkdir('/sys/module/vfio/parameters');
      this.mkdir('/sys/module/vfio_pci');
      this.writeFile('/sys/module/vfio/parameters/enable_unsafe_noiommu_mode', this.iommu === 'noiommu' ? 'Y' : 'N');
      this.loadDriver('vfio-pci');
      if (this.type1Available) this.moduleParam('vfio_iommu_type1', 'type1');
    }
    if (this.hasIommufd) {
      this.mkdir('/sys/class/misc/iommu');
      this.writeFile('/sys/class/misc/iommu/dev', '10:258');
      this.mknod('/dev/iommu', RDEV.iommu, 0o660);
      this.moduleParam('iommufd', 'iommufd');
    }
    for (const d of options.drivers ?? []) this.loadDriver(d);

    // the bus's own attributes
    this.attr('/sys/bus/pci/drivers_probe', () => {
      throw sysError('EACCES', 'open', '/sys/bus/pci/drivers_probe'); // write-only
    }, (text, p) => {
      const dev = this.devices.get(sysfsName(text));
      if (!dev || dev.bus !== 'pci') throw sysError('ENODEV', 'write', p);
      this.probe(dev); // succeeds whether or not a driver took it
    });

    // what doctor reads
    const release = options.release ?? (this.hasIommufd ? '6.12.9-vfio' : '6.1.0-28-amd64');
    this.writeFile('/proc/sys/kernel/osrelease', release);
    this.writeFile('/proc/cmdline', options.cmdline ?? defaultCmdline(release, this.iommu, this.allowUnsafe));
    this.attr('/proc/interrupts', () => procInterrupts(this.interruptRemapping, this.iommu));
    this.attr(`/proc/${this.pid}/status`, () => this.procStatus());
    const config = kernelConfigText(this.hasIommufd);
    if ((options.kernelConfig ?? 'boot') === 'boot') this.writeFile(`/boot/config-${release}`, config);
    else if (options.kernelConfig === 'proc') this.put('/proc/config.gz', { kind: 'file', text: '', data: gzipSync(Buffer.from(config)) });
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
    const hostDriver = o.hostDriver !== undefined ? o.hostDriver : driver !== null && !driver.startsWith('vfio') ? driver : null;
    const dev: DeviceState = {
      name: address, bus: 'pci', sysfsPath: dir, driver, hostDriver, override: null, group: null, cdevIndex: null, openCount: 0, boundElsewhere: false,
      flags: o.flags ?? VFIO_DEVICE_FLAGS.PCI, regions: defaultRegions(), config: configSpace(id, o.capabilities),
      bars: new Map(), edu: (o.bar0 ?? (id === '1234:11e8' ? 'edu' : 'ram')) === 'edu' ? newEdu() : null,
      irqCounts: { intx: o.irqs?.intx ?? 1, msi: o.irqs?.msi ?? 1, msix: o.irqs?.msix ?? 0, pcie: o.irqs?.pcie ?? false },
      irq: noIrqs(), hotReset: o.hotReset?.map((h) => (typeof h === 'string' ? { address: h.toLowerCase(), group: undefined } : { ...h, address: h.address.toLowerCase() })) ?? null,
      resets: 0, files: new Set(), mirrors: new Set(),
    };
    for (const [index, region] of Object.entries(o.regions ?? {})) dev.regions.set(Number(index), region);
    const [vendor, device] = id.split(':');
    this.writeFile(`${dir}/vendor`, `0x${vendor}`);
    this.writeFile(`${dir}/device`, `0x${device}`);
    this.writeFile(`${dir}/class`, '0x00ff00');
    // drivers/pci/pci-sysfs.c driver_override_store -> driver_set_override: one trailing newline
    // stripped, empty clears it; PAGE_SIZE or longer is EINVAL. Only drivers_probe acts on it.
    this.attr(`${dir}/driver_override`, () => dev.override ?? '(null)', (text, p) => {
      if (text.length >= PAGE - 1) throw sysError('EINVAL', 'write', p);
      const value = text.endsWith('\n') ? text.slice(0, -1) : text;
      dev.override = value === '' ? null : value;
    });
    this.link(`${dir}/subsystem`, '/sys/bus/pci');
    if (hostDriver) this.loadDriver(hostDriver);
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
      name: uuid, bus: 'mdev', sysfsPath: dir, driver: o.driver ?? 'mtty', hostDriver: null, override: null, group: null, cdevIndex: null, openCount: 0, boundElsewhere: false,
      flags: VFIO_DEVICE_FLAGS.PCI, regions: defaultRegions(), config: configSpace('4348:3253'), bars: new Map(), edu: null,
      irqCounts: { intx: 1, msi: 1, msix: 0, pcie: false }, irq: noIrqs(), hotReset: null, resets: 0, files: new Set(), mirrors: new Set(),
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
      if (dev.bus === 'pci') this.loadDriver(driver);
      else this.mkdir(`${bus}/drivers/${driver}`);
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
    if (g && !g.members.some(vfioDriver)) {
      this.remove(`/dev/vfio/${groupName(g)}`);
      this.remove(`/sys/class/vfio/${groupName(g)}`);
      this.remove(`/sys/devices/virtual/vfio/${groupName(g)}`);
    }
  }

  private registerVfio(dev: DeviceState): void {
    const g = dev.group;
    if (g) {
      // the group's device in the vfio class (drivers/vfio/group.c): /dev/vfio/N, /sys/class/vfio/N/dev
      this.mknodIfAbsent(`/dev/vfio/${groupName(g)}`, makedev(RDEV.groupMajor, g.minor), 0o600);
      const gdir = `/sys/devices/virtual/vfio/${groupName(g)}`;
      if (!this.fs.has(gdir)) {
        this.writeFile(`${gdir}/dev`, `${RDEV.groupMajor}:${g.minor}`);
        this.link(`/sys/class/vfio/${groupName(g)}`, gdir);
      }
    }
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
    return this.openElsewhere(`/dev/vfio/${groupName(g)}`);
  }

  /** Another process opened the device's cdev and bound it to its iommufd. */
  bindElsewhere(name: string): this {
    const dev = this.device(name);
    if (dev.openCount > 0) throw new Error(`fake: ${name} is already open`);
    dev.openCount++;
    dev.boundElsewhere = true;
    if (dev.group) dev.group.cdevBound++;
    if (dev.cdevIndex !== null && dev.cdevIndex >= 0) this.openElsewhere(`/dev/vfio/devices/vfio${dev.cdevIndex}`);
    return this;
  }

  /**
   * Another process (pid otherPid, or the one given) has `target` open: an entry in its /proc/<pid>/fd,
   * nothing more (holdGroupElsewhere and bindElsewhere also change the kernel's state).
   */
  openElsewhere(target: string, pid = this.otherPid): this {
    this.symlink(`/proc/${pid}/fd/${this.otherFds++}`, target);
    return this;
  }

  /** The other process exits. */
  releaseElsewhere(): this {
    const proc = this.fs.get('/proc');
    for (const name of proc?.kind === 'dir' ? [...proc.children] : []) {
      if (/^[0-9]+$/.test(name) && Number(name) !== this.pid) this.remove(`/proc/${name}`); // its /proc/<pid> goes
    }
    for (const g of this.groups.values()) if (g.openedBy === 'elsewhere') g.openedBy = null;
    for (const d of this.devices.values()) {
      if (!d.boundElsewhere) continue;
      d.boundElsewhere = false;
      d.openCount--;
      if (d.group) d.group.cdevBound--;
    }
    return this;
  }

  // -------------------------------------------------------------------------------------------------
  // driver binding through sysfs

  /** A PCI driver module is loaded: /sys/bus/pci/drivers/<name> with its bind and unbind attributes. */
  loadDriver(name: string): this {
    if (this.loadedDrivers.has(name)) return this;
    this.loadedDrivers.add(name);
    const dir = `/sys/bus/pci/drivers/${name}`;
    this.mkdir(dir);
    this.mkdir(`/sys/module/${name.replace(/-/g, '_')}`);
    const writeOnly = (p: string) => (): string => {
      throw sysError('EACCES', 'open', p);
    };
    // drivers/base/bus.c unbind_store: the device must be bound to this driver, else ENODEV
    this.attr(`${dir}/unbind`, writeOnly(`${dir}/unbind`), (text, p) => {
      const dev = this.devices.get(sysfsName(text));
      if (!dev || dev.bus !== 'pci' || dev.driver !== name) throw sysError('ENODEV', 'write', p);
      this.unbindDevice(dev, p);
    });
    // bind_store: the driver must match (driver_override, else its id table) and probe it
    this.attr(`${dir}/bind`, writeOnly(`${dir}/bind`), (text, p) => {
      const dev = this.devices.get(sysfsName(text));
      if (!dev || dev.bus !== 'pci') throw sysError('ENODEV', 'write', p);
      if (dev.driver) throw sysError('EBUSY', 'write', p);
      if ((dev.override ?? dev.hostDriver) !== name) throw sysError('ENODEV', 'write', p);
      const why = this.probeFails(dev, name);
      if (why) {
        this.kernelLog.push(`${name} ${dev.name}: probe failed with error -${ERRNO[why.errno][0]} (${why.reason})`);
        throw sysError(why.errno, 'write', p);
      }
      this.kernelLog.push(`${name} ${dev.name}: bound`);
      this.setDriver(dev.name, name);
    });
    return this;
  }

  /** rmmod: the module goes (a device bound to it is unbound first). */
  unloadDriver(name: string): this {
    for (const d of this.devices.values()) if (d.bus === 'pci' && d.driver === name) this.setDriver(d.name, null);
    this.loadedDrivers.delete(name);
    this.remove(`/sys/bus/pci/drivers/${name}`);
    this.remove(`/sys/module/${name.replace(/-/g, '_')}`);
    return this;
  }

  /** driver_override of a PCI device (null: cleared) */
  driverOverride(name: string): string | null {
    return this.device(name).override;
  }

  /** the driver a device is bound to now */
  driverOf(name: string): string | null {
    return this.device(name).driver;
  }

  /**
   * Why unbinding the device would block in the real kernel (null: it would not): vfio-pci's remove
   * waits until every VFIO file of the device is closed (vfio_unregister_group_dev), and so does the
   * write to unbind. The fake counts a cdev open here (parked or bound), a device fd taken from the
   * group, a bind by another process, and a group held by another process (which may hold device fds).
   */
  vfioInUse(name: string): string | null {
    const dev = this.device(name);
    if (!vfioDriver(dev)) return null;
    if (dev.files.size > 0) return 'this process has it open';
    if (dev.boundElsewhere) return 'another process has it bound through its cdev';
    if (dev.openCount > 0) return 'it is open';
    if (dev.group?.openedBy === 'elsewhere') return 'another process holds its group';
    return null;
  }

  /** device_release_driver, unless the device is open through VFIO (then the write would never return). */
  private unbindDevice(dev: DeviceState, p: string): void {
    const busy = this.vfioInUse(dev.name);
    if (busy) {
      this.blockedUnbinds.push({ device: dev.name, driver: dev.driver!, path: p });
      this.kernelLog.push(`${dev.driver} ${dev.name}: Relaying device request to user (${busy}); the unbind waits`);
      throw new Error(`fake: writing ${dev.name} to ${p} would block: ${dev.name} is in use through VFIO (${busy})`);
    }
    this.kernelLog.push(`${dev.driver} ${dev.name}: unbound`);
    this.setDriver(dev.name, null);
  }

  /** Why `driver` would fail to probe the device, or null. */
  private probeFails(dev: DeviceState, driver: string): { errno: Errno; reason: string } | null {
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
  private probe(dev: DeviceState): void {
    if (dev.driver) return;
    const driver = dev.override ?? dev.hostDriver;
    if (!driver || !this.loadedDrivers.has(driver)) return;
    const why = this.probeFails(dev, driver);
    if (why) {
      this.kernelLog.push(`${driver} ${dev.name}: probe failed with error -${ERRNO[why.errno][0]} (${why.reason})`);
      return;
    }
    this.kernelLog.push(`${driver} ${dev.name}: bound`);
    this.setDriver(dev.name, driver);
  }

  /** /sys/module/<module>/parameters/allow_unsafe_interrupts, live with allowUnsafe (writable by root as the real one). */
  private moduleParam(module: string, key: 'iommufd' | 'type1'): void {
    const p = `/sys/module/${module}/parameters/allow_unsafe_interrupts`;
    this.attr(p, () => (this.allowUnsafe[key] ? 'Y' : 'N'), (text, path2) => {
      const v = text.trim();
      if (!/^[YyNn10]$/.test(v)) throw sysError('EINVAL', 'write', path2);
      this.allowUnsafe[key] = /^[Yy1]$/.test(v);
    });
  }

  /** /proc/<pid>/status: the capability sets as this process has them */
  private procStatus(): string {
    const CAP_IPC_LOCK = 1n << 14n;
    const CAP_SYS_RAWIO = 1n << 17n;
    let caps = this.root ? 0x1ffffffffffn & ~CAP_IPC_LOCK & ~CAP_SYS_RAWIO : 0n;
    if (this.ipcLock) caps |= CAP_IPC_LOCK;
    if (this.rawio) caps |= CAP_SYS_RAWIO;
    const hex16 = (n: bigint): string => n.toString(16).padStart(16, '0');
    const uid = this.root ? 0 : 1000;
    return [
      'Name:\tnode', 'State:\tR (running)', `Pid:\t${this.pid}`, `Uid:\t${uid}\t${uid}\t${uid}\t${uid}`, `Gid:\t${uid}\t${uid}\t${uid}\t${uid}`,
      'CapInh:\t0000000000000000', `CapPrm:\t${hex16(caps)}`, `CapEff:\t${hex16(caps)}`, `CapBnd:\t${hex16(0x1ffffffffffn)}`, 'CapAmb:\t0000000000000000',
    ].join('\n');
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

  /** RLIMIT_MEMLOCK, as /proc/self/limits shows it (bytes, or 'unlimited') */
  setMemlock(soft: number | 'unlimited', hard: number | 'unlimited' = soft): this {
    const n = (v: number | 'unlimited'): number => (v === 'unlimited' ? Infinity : v);
    this.memlockLimit = { soft: n(soft), hard: n(hard) };
    this.writeLimits();
    return this;
  }

  private writeLimits(): void {
    const v = (n: number): string => (n === Infinity ? 'unlimited' : String(n));
    const row = (name: string, soft: string, hard: string, units: string): string =>
      `${name.padEnd(26)}${soft.padEnd(21)}${hard.padEnd(21)}${units.padEnd(10)}`;
    this.writeFile(`/proc/${this.pid}/limits`, [
      row('Limit', 'Soft Limit', 'Hard Limit', 'Units'),
      row('Max cpu time', 'unlimited', 'unlimited', 'seconds'),
      row('Max file size', 'unlimited', 'unlimited', 'bytes'),
      row('Max data size', 'unlimited', 'unlimited', 'bytes'),
      row('Max stack size', '8388608', 'unlimited', 'bytes'),
      row('Max core file size', '0', 'unlimited', 'bytes'),
      row('Max resident set', 'unlimited', 'unlimited', 'bytes'),
      row('Max processes', '7823', '7823', 'processes'),
      row('Max open files', '1024', '524288', 'files'),
      row('Max locked memory', v(this.memlockLimit.soft), v(this.memlockLimit.hard), 'bytes'),
      row('Max address space', 'unlimited', 'unlimited', 'bytes'),
      row('Max file locks', 'unlimited', 'unlimited', 'locks'),
      row('Max pending signals', '7823', '7823', 'signals'),
      row('Max msgqueue size', '819200', '819200', 'bytes'),
      row('Max nice priority', '0', '0', ''),
      row('Max realtime priority', '0', '0', ''),
      row('Max realtime timeout', 'unlimited', 'unlimited', 'us'),
    ].join('\n'));
  }

  /** mmap/allocDma mappings not unmapped yet */
  liveMappings(): number {
    return [...this.memList].filter((m) => m.mapped).length;
  }
  /** bytes charged against RLIMIT_MEMLOCK by IOMMU mappings */
  pinnedBytes(): bigint {
    return this.pinned;
  }
  /** every IOMMU mapping the kernel holds, in every IOAS and container (open or kept alive by a device) */
  iommuMappings(): { owner: 'ioas' | 'container'; iova: bigint; length: bigint; address: bigint }[] {
    const out: { owner: 'ioas' | 'container'; iova: bigint; length: bigint; address: bigint }[] = [];
    for (const ctx of this.iommufdCtxs) {
      for (const o of ctx.objects.values()) {
        if (o.type === 'ioas') for (const a of o.areas) out.push({ owner: 'ioas', iova: a.iova, length: a.length, address: a.mem.address + BigInt(a.offset) });
      }
    }
    for (const c of this.containers) for (const a of c.areas) out.push({ owner: 'container', iova: a.iova, length: a.length, address: a.mem.address + BigInt(a.offset) });
    return out;
  }
  /** eventfd watches not unwatched */
  activeWatches(): number {
    return this.watchList.size;
  }
  /** edu's registers and DMA buffer (the live state: tests may change it) */
  edu(name: string): EduState {
    const e = this.device(name).edu;
    if (!e) throw new Error(`fake: ${name} is not an edu device`);
    return e;
  }
  /** VFIO_DEVICE_RESETs done on the device */
  resetCount(name: string): number {
    return this.device(name).resets;
  }
  /** vfio-pci's interrupt state: the enabled index, the vectors wired to an eventfd, INTx masked */
  irqState(name: string): { type: IrqState['type']; wired: number; masked: boolean; err: boolean; req: boolean } {
    const q = this.device(name).irq;
    return { type: q.type, wired: q.triggers.filter((t) => t !== null).length, masked: q.intxMasked, err: q.err !== null, req: q.req !== null };
  }

  /**
   * The device raises an interrupt, as its hardware would: vfio-pci's handler signals the eventfd wired
   * to it (INTx: unless masked, and then masks it). Returns whether an eventfd was signalled.
   */
  raiseIrq(name: string, which: keyof typeof VFIO_PCI_IRQ | number, vector = 0): boolean {
    const dev = this.device(name);
    const index = typeof which === 'number' ? which : VFIO_PCI_IRQ[which];
    const q = dev.irq;
    switch (index) {
      case VFIO_PCI_IRQ.INTX:
        if (q.type !== 'intx' || q.intxMasked) return false;
        q.intxMasked = true;
        return this.signal(q.triggers[0] ?? null);
      case VFIO_PCI_IRQ.MSI:
      case VFIO_PCI_IRQ.MSIX:
        if (q.type !== (index === VFIO_PCI_IRQ.MSI ? 'msi' : 'msix')) return false;
        return this.signal(q.triggers[vector] ?? null);
      case VFIO_PCI_IRQ.ERR:
        return this.signal(q.err);
      case VFIO_PCI_IRQ.REQ:
        return this.signal(q.req);
      default:
        throw new Error(`fake: no IRQ index ${String(which)}`);
    }
  }

  /** Signals an eventfd of this process by its fd (what a write(2) of 1 to it does). */
  signalEventfd(fd: number): void {
    const e = this.fdTable.get(fd);
    if (e?.file.kind !== 'eventfd') throw new Error(`fake: fd ${fd} is not an eventfd`);
    this.signal(e.file.efd);
  }

  // -------------------------------------------------------------------------------------------------
  // Kernel

  open(p: string): number {
    const call: CallInfo = { call: 'open', path: p };
    return this.run(call, () => {
      const real = this.resolve(p, true, 'open');
      const node = this.fs.get(real)!;
      if (node.kind === 'dir') throw sysError('EISDIR', 'open', p);
      if (node.kind === 'file') return this.install(p, { mode: S_IFREG | 0o644, rdev: 0, isCharacterDevice: false }, { kind: 'file', node }, real);
      if (node.kind !== 'chr') throw sysError('ENOENT', 'open', p);
      if (!this.mayOpen(node)) throw sysError('EACCES', 'open', p);
      const stat: FileStat = { mode: S_IFCHR | node.mode, rdev: node.rdev, isCharacterDevice: true };
      return this.install(p, stat, this.openChr(node.rdev, p), real);
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
      this.remove(`/proc/${this.pid}/fd/${fd}`);
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
      return fileText(node).replace(/\n$/, '');
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

  /** a file's bytes: its data (/proc/config.gz), or its text */
  readBytes(p: string): Buffer {
    return this.run({ call: 'readBytes', path: p }, () => {
      const node = this.fs.get(this.resolve(p, true, 'open'))!;
      if (node.kind === 'dir') throw sysError('EISDIR', 'read', p);
      if (node.kind !== 'file') throw sysError('EINVAL', 'read', p);
      return node.data ? Buffer.from(node.data) : Buffer.from(fileText(node));
    }, false);
  }

  // A plain file is created or replaced; a sysfs or procfs attribute runs its store (driver_override,
  // unbind, drivers_probe...). Files cannot be created in sysfs or procfs, and their read-only
  // attributes refuse writes (kernfs_fop_open: EACCES). Without root, nothing under /sys, /proc, /run
  // or /boot may be written.

  writeText(p: string, text: string): void {
    this.run({ call: 'writeText', path: p }, () => {
      const parent = this.resolve(path.posix.dirname(p), true, 'open');
      if (this.fs.get(parent)?.kind !== 'dir') throw sysError('ENOTDIR', 'open', p);
      const real = parent === '/' ? `/${path.posix.basename(p)}` : `${parent}/${path.posix.basename(p)}`;
      const node = this.fs.get(real);
      if (node?.kind === 'dir') throw sysError('EISDIR', 'open', p);
      this.checkWritable(real, p, 'open');
      if (node?.kind === 'file' && node.write) node.write(text, p);
      else if (isKernfs(real)) throw sysError('EACCES', 'open', p);
      else if (node?.kind === 'file') {
        node.text = text;
        delete node.data;
      } else if (node === undefined) this.writeFile(real, text);
      else throw sysError('EINVAL', 'write', p);
    });
  }

  unlink(p: string): void {
    this.run({ call: 'unlink', path: p }, () => {
      const parent = this.resolve(path.posix.dirname(p), true, 'unlink');
      const real = parent === '/' ? `/${path.posix.basename(p)}` : `${parent}/${path.posix.basename(p)}`;
      const node = this.fs.get(real);
      if (!node) throw sysError('ENOENT', 'unlink', p);
      if (node.kind === 'dir') throw sysError('EISDIR', 'unlink', p);
      this.checkWritable(real, p, 'unlink');
      if (isKernfs(real)) throw sysError('EPERM', 'unlink', p);
      this.remove(real);
    });
  }

  mkdirp(p: string): void {
    this.run({ call: 'mkdirp', path: p }, () => {
      let cur = '';
      for (const part of p.split('/').filter(Boolean)) {
        cur = `${cur}/${part}`;
        const node = this.fs.get(cur);
        if (node && node.kind !== 'dir' && node.kind !== 'link') throw sysError('ENOTDIR', 'mkdir', p);
        if (!node) {
          this.checkWritable(cur, p, 'mkdir');
          if (isKernfs(cur)) throw sysError('EACCES', 'mkdir', p);
          this.mkdir(cur);
        }
      }
    });
  }

  accessible(p: string): boolean {
    try {
      const node = this.fs.get(this.resolve(p, true, 'access'))!;
      return node.kind !== 'chr' || this.mayOpen(node);
    } catch {
      return false;
    }
  }

  /** Without root, only world read-write device nodes (/dev/vfio/vfio) can be opened. */
  private mayOpen(node: Extract<FsNode, { kind: 'chr' }>): boolean {
    return node.accessible && (this.root || (node.mode & 0o006) === 0o006);
  }

  /** Root owns /sys, /proc, /run and /boot: EACCES for anyone else. */
  private checkWritable(real: string, p: string, syscall: string): void {
    if (!this.root && /^\/(sys|proc|run|boot)(\/|$)/.test(real)) throw sysError('EACCES', syscall, p);
  }

  // Memory, as the addon maps it: each mapping is an ArrayBuffer with a fake, page-aligned virtual
  // address; unmap detaches it (views go empty). A region mapping shows the device's registers (each
  // access through mmioRead/mmioWrite reaches the device model; writes through a view do not).

  mmap(fd: number, offset: bigint, length: number, writable: boolean): ArrayBuffer {
    const len = addonLength(length);
    const e = this.fdTable.get(fd);
    const info: CallInfo = { call: 'mmap', fd };
    if (e) info.path = e.path;
    return this.run(info, () => {
      if (!e) throw sysError('EBADF', 'mmap');
      const f = e.file;
      if (f.kind !== 'device') throw sysError('ENODEV', 'mmap'); // no mmap file operation
      if (!f.bound) throw sysError('EINVAL', 'mmap'); // vfio_device_fops_mmap: !access_granted
      const off = BigInt(offset);
      if (off % BigInt(PAGE) !== 0n) throw sysError('EINVAL', 'mmap');
      // vfio_pci_core_mmap
      const index = Number(off >> REGION_SHIFT);
      const at = Number(off & ((1n << REGION_SHIFT) - 1n));
      const region = f.device.regions.get(index);
      if (index >= VFIO_PCI_REGION.ROM || !region || (region.flags & VFIO_REGION_INFO_FLAG.MMAP) === 0) throw sysError('EINVAL', 'mmap');
      const physLen = pageAlign(Number(region.size));
      if (at + pageAlign(len) > physLen) throw sysError('EINVAL', 'mmap');
      if (region.sparseMmap && !region.sparseMmap.some((a) => BigInt(at) >= a.offset && BigInt(at + len) <= a.offset + a.size)) {
        throw sysError('EINVAL', 'mmap'); // the fake's choice: only the areas the capability names are mappable
      }
      const m = this.newMapping('region', len, false);
      m.region = { file: f, device: f.device, index, at, writable };
      f.mmaps = (f.mmaps ?? 0) + 1;
      f.device.mirrors.add(m);
      new Uint8Array(m.buffer).fill(0xff);
      this.refreshMirror(m);
      return m.buffer;
    });
  }

  allocDma(length: number, hugePages: boolean): ArrayBuffer {
    const len = addonLength(length);
    return this.run({ call: 'allocDma' }, () => {
      if (hugePages) {
        const pages = Math.ceil(len / HUGE_PAGE);
        if (pages > this.hugePagesFree) throw sysError('ENOMEM', 'mmap'); // MAP_HUGETLB without reserved pages
        this.hugePagesFree -= pages;
      }
      return this.newMapping('dma', len, hugePages).buffer;
    });
  }

  private newMapping(kind: MemMapping['kind'], length: number, hugePages: boolean): MemMapping {
    const align = BigInt(hugePages ? HUGE_PAGE : PAGE);
    const address = ((this.nextVaddr + align - 1n) / align) * align;
    // a guard page between mappings: an access past one end never lands in the next one
    this.nextVaddr = address + BigInt(Math.ceil(length / Number(align)) * Number(align) + PAGE);
    const buffer = new ArrayBuffer(length);
    const m: MemMapping = { kind, buffer, pages: buffer, address, length, mapped: true, hugePages, pins: 0 };
    this.mem.set(buffer, m);
    this.memList.add(m);
    return m;
  }

  unmap(buffer: ArrayBuffer): void {
    const m = this.mapping(buffer);
    if (!m.mapped) return;
    m.mapped = false;
    // napi_detach_arraybuffer: the views go empty; pages an IOMMU mapping pins stay with the device
    const pages = buffer.byteLength > 0 ? structuredClone(buffer, { transfer: [buffer] }) : null;
    m.pages = m.pins > 0 ? pages : null;
    if (m.pins === 0) this.memList.delete(m);
    if (m.hugePages) this.hugePagesFree += Math.ceil(m.length / HUGE_PAGE);
    if (m.region) {
      const r = m.region;
      r.device.mirrors.delete(m);
      r.file.mmaps = (r.file.mmaps ?? 1) - 1;
      if (r.file.fdClosed && r.file.mmaps === 0) this.releaseDeviceFile(r.file); // the last reference to the device file
    }
  }

  addressOf(buffer: ArrayBuffer): bigint {
    const m = this.mapping(buffer);
    if (!m.mapped) throw sysError('EFAULT', 'addressOf');
    return m.address;
  }

  mmioRead(buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4): number;
  mmioRead(buffer: ArrayBuffer, offset: number, width: 8): bigint;
  mmioRead(buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4 | 8): number | bigint {
    const m = this.registerAt(buffer, offset, width);
    let value: bigint;
    if (m.region) {
      const r = m.region;
      value = this.barRead(r.device, r.index, r.at + offset, width);
      this.mmioLog.push({ device: r.device.name, region: r.index, offset: r.at + offset, width, op: 'read', value });
    } else {
      value = readLE(new Uint8Array(buffer), offset, width);
    }
    return width === 8 ? value : Number(value);
  }

  mmioWrite(buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4 | 8, value: number | bigint): void {
    const v = addonU64(value, 'value') & ((1n << BigInt(8 * width)) - 1n);
    const m = this.registerAt(buffer, offset, width);
    if (m.region) {
      const r = m.region;
      // the addon's store to a PROT_READ mapping: SIGSEGV, the process dies
      if (!r.writable) throw new Error('fake: a store to a read-only mapping (SIGSEGV on a real kernel)');
      this.mmioLog.push({ device: r.device.name, region: r.index, offset: r.at + offset, width, op: 'write', value: v });
      this.barWrite(r.device, r.index, r.at + offset, width, v);
    } else {
      writeLE(new Uint8Array(buffer), offset, width, v);
    }
  }

  /** the addon's register_at: a live mapping, a width of 1/2/4/8, an offset in range and aligned to it */
  private registerAt(buffer: ArrayBuffer, offset: number, width: number): MemMapping {
    const m = this.mapping(buffer);
    if (!m.mapped || (buffer.byteLength === 0 && m.length > 0)) throw sysError('EFAULT', 'mmio');
    if (width !== 1 && width !== 2 && width !== 4 && width !== 8) throw addonTypeError('width must be 1, 2, 4 or 8');
    if (typeof offset !== 'number' || !Number.isFinite(offset) || Math.trunc(offset) < 0 || Math.trunc(offset) + width > m.length || Math.trunc(offset) % width !== 0) {
      const e = new RangeError('register offset out of range or not aligned to its width') as RangeError & { code: string };
      e.code = 'ERR_OUT_OF_RANGE';
      throw e;
    }
    return m;
  }

  private mapping(buffer: ArrayBuffer): MemMapping {
    const m = buffer instanceof ArrayBuffer ? this.mem.get(buffer) : undefined;
    if (!m) throw addonTypeError('not a mapping made by this addon');
    return m;
  }

  // Interrupts: eventfds whose counter the fake increments, delivered to watchers on a later turn of
  // the event loop (setImmediate), as the addon's uv_poll does.

  eventfd(): number {
    return this.run({ call: 'eventfd' }, () => {
      const efd: EventfdState = { counter: 0n, watches: [], scheduled: false, fdOpen: true };
      return this.install('anon_inode:[eventfd]', { mode: 0o600, rdev: 0, isCharacterDevice: false }, { kind: 'eventfd', efd });
    });
  }

  watch(fd: number, callback: (err: Error | null, count?: bigint) => void): object {
    const e = this.fdTable.get(fd);
    if (!e) throw sysError('EBADF', 'uv_poll_init');
    if (e.file.kind !== 'eventfd') throw sysError('EPERM', 'uv_poll_init'); // epoll: the fake polls only eventfds
    const efd = e.file.efd;
    const w: WatchState = { efd, callback, active: true };
    efd.watches.push(w);
    this.watchList.add(w);
    const handle = {};
    this.watchHandles.set(handle, w);
    if (efd.counter > 0n) this.schedule(efd); // level-triggered: an eventfd already readable fires at once
    return handle;
  }

  unwatch(handle: object): void {
    const w = this.watchHandles.get(handle);
    if (!w) return; // already unwatched
    this.watchHandles.delete(handle);
    w.active = false;
    this.watchList.delete(w);
    w.efd.watches.splice(w.efd.watches.indexOf(w), 1);
  }

  /** eventfd_signal: the counter goes up and a watcher reads it on a later turn of the loop. false: no eventfd */
  private signal(efd: EventfdState | null): boolean {
    if (!efd) return false;
    efd.counter += 1n;
    this.schedule(efd);
    return true;
  }

  private schedule(efd: EventfdState): void {
    if (efd.scheduled || !efd.fdOpen || efd.watches.length === 0) return;
    efd.scheduled = true;
    setImmediate(() => {
      efd.scheduled = false;
      const w = efd.watches[0];
      if (!w || !efd.fdOpen || efd.counter === 0n) return;
      const count = efd.counter; // read(2) of an eventfd: the count, and the counter back to 0
      efd.counter = 0n;
      w.callback(null, count);
    });
  }

  // -------------------------------------------------------------------------------------------------
  // calls: log, listeners, injected failures

  private run<T>(call: CallInfo, fn: () => T, logged = true): T {
    if (logged) this.calls.push(call);
    for (const l of this.listeners) l(call);
    const rule = this.rules.find((r) => r.left > 0 && matches(r, call));
    try {
      if (rule) {
        // spent rules go: a long test injects thousands, and every call would scan them all
        if (--rule.left === 0) this.rules.splice(this.rules.indexOf(rule), 1);
        call.injected = true;
        // an injected open failure carries the path, as Node's does; the addon's ioctl errors carry none
        const syscall = call.call === 'readText' || call.call === 'readBytes' ? 'open' : call.call === 'allocDma' ? 'mmap' : call.call;
        throw sysError(rule.errno, syscall, call.call === 'ioctl' || call.fd !== undefined ? undefined : call.path);
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

  /** A sysfs or procfs attribute: reads run `read`, writes run `write` (none: read-only, EACCES). */
  attr(p: string, read: () => string, write?: (text: string, path: string) => void): this {
    this.put(p, { kind: 'file', text: '', read, ...(write ? { write } : {}) });
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

  /** A new fd, shown in /proc/<pid>/fd as the path it was opened by (resolved, as d_path shows it). */
  private install(p: string, stat: FileStat, file: OpenFile, shownAs = p): number {
    const fd = this.nextFd++;
    this.fdTable.set(fd, { fd, path: p, stat, file });
    this.symlink(`/proc/${this.pid}/fd/${fd}`, shownAs);
    return fd;
  }

  /** What the driver behind a device number does on open. */
  private openChr(rdev: number, p: string): OpenFile {
    if (rdev === RDEV.iommu) {
      const ctx: IommufdCtx = { fdOpen: true, nextId: 1, objects: new Map() };
      this.iommufdCtxs.add(ctx);
      return { kind: 'iommufd', ctx };
    }
    if (rdev === RDEV.vfioContainer) {
      const container: ContainerState = { fdOpen: true, groups: new Set(), iommuType: null, areas: [], dmaAvail: 0 };
      this.containers.add(container);
      return { kind: 'container', container };
    }
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
      const file: DeviceFile = { kind: 'device', device, via: 'cdev', groupFile: null, bound: false, ctx: null, devid: null, attachedPt: null };
      device.files.add(file);
      return file;
    }
    if (rdev === makedev(1, 3) || rdev === makedev(1, 5)) return { kind: 'chr', rdev }; // /dev/null, /dev/zero
    throw sysError('ENXIO', 'open', p);
  }

  private release(file: OpenFile): void {
    switch (file.kind) {
      case 'iommufd':
        file.ctx.fdOpen = false; // the bound devices keep the context (and its IOAS) alive
        this.maybeFreeCtx(file.ctx);
        break;
      case 'container':
        file.container.fdOpen = false; // its groups keep it alive
        if (file.container.groups.size === 0) this.containers.delete(file.container);
        break;
      case 'group':
        file.fdOpen = false;
        this.releaseGroupFile(file);
        break;
      case 'device':
        // an mmap of one of its regions holds the file (vma->vm_file): released at the last munmap
        if ((file.mmaps ?? 0) > 0) file.fdClosed = true;
        else this.releaseDeviceFile(file);
        break;
      case 'eventfd':
        file.efd.fdOpen = false; // the kernel may still hold its eventfd_ctx (SET_IRQS) and signal it
        break;
      default:
        break;
    }
  }

  /** iommufd_fops_release, once the last device bound to it has gone: every object and mapping goes */
  private maybeFreeCtx(ctx: IommufdCtx): void {
    if (ctx.fdOpen || [...ctx.objects.values()].some((o) => o.type === 'device')) return;
    for (const o of ctx.objects.values()) if (o.type === 'ioas') this.dropAreas(o.areas);
    ctx.objects.clear();
    this.iommufdCtxs.delete(ctx);
  }

  /** The IOMMU unmaps: the pages are unpinned (and freed, if this process already unmapped them). */
  private dropAreas(areas: DmaArea[], which: DmaArea[] = [...areas]): void {
    for (const a of which) {
      areas.splice(areas.indexOf(a), 1);
      this.pinned -= a.accounted;
      a.mem.pins--;
      if (!a.mem.mapped && a.mem.pins === 0) {
        a.mem.pages = null;
        this.memList.delete(a.mem);
      }
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
    if (c.groups.size === 0) {
      // the last group out returns the container to its unset state: the IOMMU goes, and every mapping with it
      c.iommuType = null;
      this.dropAreas(c.areas);
      c.dmaAvail = 0;
      if (!c.fdOpen) this.containers.delete(c);
    }
  }

  private releaseDeviceFile(file: DeviceFile): void {
    const dev = file.device;
    dev.files.delete(file);
    if (file.bound) {
      // vfio_pci_core_close_device: interrupts off, the eventfds let go
      dev.irq = noIrqs();
    }
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
    this.maybeFreeCtx(file.ctx!);
  }

  /**
   * iopt_table_add_domain / the access's alignment: the mappings already in the IOAS must fit the new
   * geometry (EADDRINUSE), and a first domain pins them (ENOMEM past RLIMIT_MEMLOCK).
   */
  private checkAttach(ctx: IommufdCtx, ioasId: number, ioas: IoasObject, domain: boolean): void {
    const before = this.ioasGeometry(ctx, ioasId);
    if (before.domain) return;
    const ranges = domain ? this.geometry.ranges : before.ranges;
    const align = domain ? this.geometry.pgsizes & -this.geometry.pgsizes : BigInt(PAGE);
    for (const a of ioas.areas) {
      if (!ranges.some((r) => a.iova >= r.start && a.iova + a.length - 1n <= r.last)) throw ioctlError('EADDRINUSE');
      if ((a.iova | a.length | BigInt(a.offset)) & (align - 1n)) throw ioctlError('EADDRINUSE');
    }
    if (!domain || this.ipcLock) return;
    const charge = ioas.areas.reduce((n, a) => n + (a.accounted === 0n ? a.length : 0n), 0n);
    if (charge > 0n && this.pinned + charge > BigInt(Math.min(this.memlockLimit.soft, Number.MAX_SAFE_INTEGER))) throw ioctlError('ENOMEM');
    for (const a of ioas.areas) {
      if (a.accounted === 0n) {
        a.accounted = a.length;
        this.pinned += a.length;
      }
    }
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
        ctx.objects.set(id, { type: 'ioas', areas: [] });
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
        if (obj.type === 'ioas') this.dropAreas(obj.areas);
        ctx.objects.delete(id);
        return 0;
      }
      case IOMMU.IOAS_IOVA_RANGES:
        return this.ioasIovaRanges(ctx, arg);
      case IOMMU.IOAS_MAP:
        return this.ioasMap(ctx, arg);
      case IOMMU.IOAS_UNMAP:
        return this.ioasUnmap(ctx, arg);
      default:
        // HWPT_ALLOC, IOAS_COPY, OPTION... are not modelled: answered as unknown requests.
        throw ioctlError('ENOTTY');
    }
  }

  private ioas(ctx: IommufdCtx, id: number): IoasObject {
    const o = ctx.objects.get(id);
    if (o?.type !== 'ioas') throw ioctlError('ENOENT'); // iommufd_get_ioas
    return o;
  }

  /**
   * What the IOAS accepts now: with a device's IOMMU domain attached, the hardware's ranges (the MSI
   * window and what lies past the aperture reserved) and its smallest page; with none, all of the
   * address space at byte alignment (an emulated device's access asks for pages).
   */
  private ioasGeometry(ctx: IommufdCtx, ioasId: number): { ranges: { start: bigint; last: bigint }[]; alignment: bigint; domain: boolean } {
    const domain = [...ctx.objects.values()].some((o) => o.type === 'hwpt' && o.ioas === ioasId && o.users > 0);
    const access = [...this.devices.values()].some((d) => [...d.files].some((f) => f.ctx === ctx && f.attachedPt === ioasId));
    if (domain) return { ranges: this.geometry.ranges.map((r) => ({ ...r })), alignment: this.geometry.pgsizes & -this.geometry.pgsizes, domain };
    return { ranges: [{ start: 0n, last: U64_MAX }], alignment: access ? BigInt(PAGE) : 1n, domain };
  }

  /** iommufd_ioas_iova_ranges: the ranges go through the user pointer allowed_iovas */
  private ioasIovaRanges(ctx: IommufdCtx, arg: number | Buffer | undefined): number {
    const buf = iommufdCmd(arg, iommu_ioas_iova_ranges.size);
    const q = decode(iommu_ioas_iova_ranges, buf);
    if (buf.readUInt32LE(12) !== 0) throw ioctlError('EOPNOTSUPP'); // __reserved
    this.ioas(ctx, q.ioas_id);
    const g = this.ioasGeometry(ctx, q.ioas_id);
    const max = q.num_iovas;
    const n = Math.min(max, g.ranges.length);
    if (n > 0) {
      const out = this.userMemory(q.allowed_iovas, n * iommu_iova_range.size);
      g.ranges.slice(0, n).forEach((r, i) => {
        writeField(out, iommu_iova_range.fields.start, r.start, i * iommu_iova_range.size);
        writeField(out, iommu_iova_range.fields.last, r.last, i * iommu_iova_range.size);
      });
    }
    writeField(buf, iommu_ioas_iova_ranges.fields.num_iovas, g.ranges.length);
    writeField(buf, iommu_ioas_iova_ranges.fields.out_iova_alignment, g.alignment);
    if (g.ranges.length > max) throw ioctlError('EMSGSIZE'); // the count was written back
    return 0;
  }

  /** iommufd_ioas_map -> iopt_map_user_pages */
  private ioasMap(ctx: IommufdCtx, arg: number | Buffer | undefined): number {
    const buf = iommufdCmd(arg, iommu_ioas_map.size);
    const m = decode(iommu_ioas_map, buf);
    const F = IOMMU_IOAS_MAP_FLAG;
    if ((m.flags & ~(F.FIXED_IOVA | F.WRITEABLE | F.READABLE)) !== 0 || buf.readUInt32LE(12) !== 0) throw ioctlError('EOPNOTSUPP');
    if (m.iova >= U64_MAX || m.length >= U64_MAX) throw ioctlError('EOVERFLOW');
    if ((m.flags & (F.WRITEABLE | F.READABLE)) === 0) throw ioctlError('EINVAL');
    const ioas = this.ioas(ctx, m.ioas_id);
    const g = this.ioasGeometry(ctx, m.ioas_id);
    if (m.length === 0n || (m.length & (g.alignment - 1n)) !== 0n) throw ioctlError('EINVAL');
    let iova = m.iova;
    if ((m.flags & F.FIXED_IOVA) !== 0) {
      // iopt_check_iova
      if ((iova & (g.alignment - 1n)) !== 0n) throw ioctlError('EINVAL');
      if (iova + m.length - 1n > U64_MAX) throw ioctlError('EOVERFLOW');
      if (!g.ranges.some((r) => iova >= r.start && iova + m.length - 1n <= r.last)) throw ioctlError('EINVAL'); // a reserved IOVA intersects
      if (ioas.areas.some((a) => iova < a.iova + a.length && a.iova < iova + m.length)) throw ioctlError('EEXIST');
    } else {
      const found = this.allocIova(ioas.areas, g.ranges, m.length, BigInt(Math.max(PAGE, Number(g.alignment))));
      if (found === null) throw ioctlError('ENOSPC');
      iova = found;
    }
    if ((m.user_va % BigInt(PAGE)) & (g.alignment - 1n)) throw ioctlError('EINVAL'); // area->page_offset
    const area = this.pinArea(m.user_va, iova, m.length, (m.flags & F.READABLE) !== 0, (m.flags & F.WRITEABLE) !== 0, g.domain);
    insertArea(ioas.areas, area);
    writeField(buf, iommu_ioas_map.fields.iova, iova);
    return 0;
  }

  /** iommufd_ioas_unmap: whole areas only; nothing there is ENOENT */
  private ioasUnmap(ctx: IommufdCtx, arg: number | Buffer | undefined): number {
    const buf = iommufdCmd(arg, iommu_ioas_unmap.size);
    const u = decode(iommu_ioas_unmap, buf);
    const ioas = this.ioas(ctx, u.ioas_id);
    let victims: DmaArea[];
    if (u.iova === 0n && u.length === U64_MAX) {
      victims = [...ioas.areas];
    } else {
      if (u.iova >= U64_MAX || u.length >= U64_MAX) throw ioctlError('EOVERFLOW');
      const last = u.iova + u.length - 1n;
      victims = ioas.areas.filter((a) => a.iova <= last && u.iova <= a.iova + a.length - 1n);
      // a bisected area: ENOENT, and the areas before it stay unmapped (iopt_unmap_iova_range stops there)
      const bisected = victims.findIndex((a) => a.iova < u.iova || a.iova + a.length - 1n > last);
      if (bisected >= 0) {
        this.dropAreas(ioas.areas, victims.slice(0, bisected));
        throw ioctlError('ENOENT');
      }
      if (victims.length === 0) throw ioctlError('ENOENT');
    }
    const unmapped = victims.reduce((n, a) => n + a.length, 0n);
    this.dropAreas(ioas.areas, victims);
    writeField(buf, iommu_ioas_unmap.fields.length, unmapped);
    return 0;
  }

  /**
   * The pages behind [vaddr, vaddr+length): memory this process mapped with allocDma, or EFAULT (the
   * fake pins DMA buffers only, not device mmaps). They are charged against RLIMIT_MEMLOCK once an
   * IOMMU domain needs them pinned, unless this process has CAP_IPC_LOCK.
   */
  private pinArea(vaddr: bigint, iova: bigint, length: bigint, readable: boolean, writable: boolean, domain: boolean): DmaArea {
    const mem = [...this.memList].find((x) => x.mapped && x.kind === 'dma' && vaddr >= x.address && vaddr + length <= x.address + BigInt(x.length));
    if (!mem) throw ioctlError('EFAULT');
    const charge = domain && !this.ipcLock ? length : 0n;
    if (charge > 0n && this.pinned + charge > BigInt(Math.min(this.memlockLimit.soft, Number.MAX_SAFE_INTEGER))) throw ioctlError('ENOMEM');
    this.pinned += charge;
    mem.pins++;
    return { iova, length, mem, offset: Number(vaddr - mem.address), readable, writable, accounted: charge };
  }

  /** The lowest free IOVA for `length` bytes, aligned, inside the ranges (never 0). */
  private allocIova(areas: DmaArea[], ranges: { start: bigint; last: bigint }[], length: bigint, align: bigint): bigint | null {
    for (const r of ranges) {
      let iova = ((r.start === 0n ? align : r.start) + align - 1n) / align * align;
      while (iova + length - 1n <= r.last) {
        const clash = areas.find((a) => iova < a.iova + a.length && a.iova < iova + length);
        if (!clash) return iova;
        iova = (clash.iova + clash.length + align - 1n) / align * align;
      }
    }
    return null;
  }

  /** Reads or writes process memory at a user pointer the way copy_to_user does: EFAULT outside a live mapping. */
  private userMemory(address: bigint, length: number): Buffer {
    const m = [...this.memList].find((x) => x.mapped && address >= x.address && address + BigInt(length) <= x.address + BigInt(x.length));
    if (!m) throw ioctlError('EFAULT');
    return Buffer.from(m.buffer, Number(address - m.address), length);
  }

  // -------------------------------------------------------------------------------------------------
  // /dev/vfio/vfio

  private drivers(): ('type1' | 'noiommu')[] {
    const type1: 'type1'[] = this.type1Available ? ['type1'] : [];
    return this.iommu === 'noiommu' ? [...type1, 'noiommu'] : type1;
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
        c.dmaAvail = this.dmaEntryLimit;
        return 0;
      }
      default:
        // vfio_fops_unl_ioctl: passed to the IOMMU driver; without one, EINVAL
        if (c.iommuType === null) throw ioctlError('EINVAL');
        if (driverOf(c.iommuType) === 'noiommu') throw ioctlError('ENOTTY'); // vfio_noiommu_ioctl
        switch (request) {
          case VFIO.IOMMU_GET_INFO: return this.type1Info(c, arg);
          case VFIO.IOMMU_MAP_DMA: return this.type1Map(c, arg);
          case VFIO.IOMMU_UNMAP_DMA: return this.type1Unmap(c, arg);
          default: throw ioctlError('ENOTTY');
        }
    }
  }

  /** the type1 IOMMU's view: a domain once a group with a real IOMMU is in (an mdev's group has none) */
  private type1Geometry(c: ContainerState): { ranges: { start: bigint; last: bigint }[]; pgsizes: bigint; domain: boolean } {
    const domain = [...c.groups].some((g) => !g.group.emulated && !g.group.noiommu);
    if (!domain) return { ranges: [], pgsizes: ~BigInt(PAGE - 1) & U64_MAX, domain }; // PAGE_MASK; an empty iova_list
    return { ranges: this.geometry.ranges.map((r) => ({ ...r })), pgsizes: this.geometry.pgsizes, domain };
  }

  /** vfio_iommu_type1_get_info, with its capability chain: migration, DMA_AVAIL, IOVA_RANGE */
  private type1Info(c: ContainerState, arg: number | Buffer | undefined): number {
    const buf = userStruct(arg, 16);
    const argsz = buf.readUInt32LE(0);
    if (argsz < 16) throw ioctlError('EINVAL');
    const g = this.type1Geometry(c);
    const caps: Buffer[] = [];
    const mig = Buffer.alloc(32); // vfio_iommu_type1_info_cap_migration
    writeField(mig, vfio_info_cap_header.fields.id, 2);
    writeField(mig, vfio_info_cap_header.fields.version, 1);
    mig.writeBigUInt64LE(g.pgsizes & -g.pgsizes, 16);
    mig.writeBigUInt64LE(0x10000000n, 24); // DIRTY_BITMAP_SIZE_MAX
    caps.push(mig);
    const avail = Buffer.alloc(16); // 12 bytes, aligned to 8 by vfio_info_cap_add
    writeField(avail, vfio_info_cap_header.fields.id, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL);
    writeField(avail, vfio_info_cap_header.fields.version, 1);
    writeField(avail, vfio_iommu_type1_info_dma_avail.fields.avail, c.dmaAvail);
    caps.push(avail);
    if (g.ranges.length > 0) {
      const r = Buffer.alloc(vfio_iommu_type1_info_cap_iova_range.size + g.ranges.length * vfio_iova_range.size);
      writeField(r, vfio_info_cap_header.fields.id, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
      writeField(r, vfio_info_cap_header.fields.version, 1);
      writeField(r, vfio_iommu_type1_info_cap_iova_range.fields.nr_iovas, g.ranges.length);
      g.ranges.forEach((x, i) => {
        const at = vfio_iommu_type1_info_cap_iova_range.size + i * vfio_iova_range.size;
        writeField(r, vfio_iova_range.fields.start, x.start, at);
        writeField(r, vfio_iova_range.fields.end, x.last, at);
      });
      caps.push(r);
    }
    const size = vfio_iommu_type1_info.size;
    let off = size;
    caps.forEach((cap, i) => {
      off += cap.length;
      writeField(cap, vfio_info_cap_header.fields.next, i < caps.length - 1 ? off : 0);
    });
    const chain = Buffer.concat(caps);
    const info = Buffer.alloc(size);
    info.writeUInt32LE(argsz, 0);
    const flags = VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS;
    writeField(info, vfio_iommu_type1_info.fields.iova_pgsizes, g.pgsizes);
    if (argsz < size + chain.length) {
      writeField(info, vfio_iommu_type1_info.fields.argsz, size + chain.length); // ask again with room for the chain
    } else {
      if (buf.length < size + chain.length) throw ioctlError('EFAULT');
      chain.copy(buf, size);
      writeField(info, vfio_iommu_type1_info.fields.cap_offset, size);
    }
    writeField(info, vfio_iommu_type1_info.fields.flags, flags);
    // copy_to_user(arg, &info, min(argsz, sizeof(info)))
    info.copy(buf, 0, 0, Math.min(argsz, size, buf.length));
    return 0;
  }

  /** vfio_iommu_type1_map_dma -> vfio_dma_do_map */
  private type1Map(c: ContainerState, arg: number | Buffer | undefined): number {
    const buf = userStruct(arg, vfio_iommu_type1_dma_map.size);
    const m = decode(vfio_iommu_type1_dma_map, buf);
    const VADDR = 1 << 2;
    if (m.argsz < vfio_iommu_type1_dma_map.size || (m.flags & ~(VFIO_DMA_MAP_FLAG.READ | VFIO_DMA_MAP_FLAG.WRITE | VADDR)) !== 0) throw ioctlError('EINVAL');
    const prot = m.flags & (VFIO_DMA_MAP_FLAG.READ | VFIO_DMA_MAP_FLAG.WRITE);
    if (prot === 0 || (m.flags & VADDR) !== 0) throw ioctlError('EINVAL'); // updating a vaddr is not modelled
    const g = this.type1Geometry(c);
    const pgsize = g.pgsizes & -g.pgsizes;
    if (m.size === 0n || ((m.size | m.iova | m.vaddr) & (pgsize - 1n)) !== 0n) throw ioctlError('EINVAL');
    if (m.iova + m.size - 1n > U64_MAX || m.vaddr + m.size - 1n > U64_MAX) throw ioctlError('EINVAL');
    if (c.areas.some((a) => m.iova < a.iova + a.length && a.iova < m.iova + m.size)) throw ioctlError('EEXIST');
    if (c.dmaAvail === 0) throw ioctlError('ENOSPC');
    // vfio_iommu_iova_dma_valid: inside one range (an empty list, as with only an mdev, accepts all)
    if (g.ranges.length > 0 && !g.ranges.some((r) => m.iova >= r.start && m.iova + m.size - 1n <= r.last)) throw ioctlError('EINVAL');
    const area = this.pinArea(m.vaddr, m.iova, m.size, (prot & VFIO_DMA_MAP_FLAG.READ) !== 0, (prot & VFIO_DMA_MAP_FLAG.WRITE) !== 0, g.domain);
    insertArea(c.areas, area);
    c.dmaAvail--;
    return 0;
  }

  /** vfio_iommu_type1_unmap_dma -> vfio_dma_do_unmap: v2 refuses to bisect a mapping; nothing there unmaps 0 bytes */
  private type1Unmap(c: ContainerState, arg: number | Buffer | undefined): number {
    const buf = userStruct(arg, vfio_iommu_type1_dma_unmap.size);
    const u = decode(vfio_iommu_type1_dma_unmap, buf);
    const ALL = 1 << 1;
    if (u.argsz < vfio_iommu_type1_dma_unmap.size || (u.flags & ~0x7) !== 0) throw ioctlError('EINVAL');
    if ((u.flags & ~ALL) !== 0) throw ioctlError('EINVAL'); // dirty bitmaps and vaddr updates are not modelled
    const g = this.type1Geometry(c);
    const pgsize = g.pgsizes & -g.pgsizes;
    const v2 = c.iommuType === VFIO_TYPE1v2_IOMMU;
    let { iova, size } = u;
    if ((iova & (pgsize - 1n)) !== 0n) throw ioctlError('EINVAL');
    if ((u.flags & ALL) !== 0) {
      if (iova !== 0n || size !== 0n) throw ioctlError('EINVAL');
      size = U64_MAX;
    } else if (size === 0n || (size & (pgsize - 1n)) !== 0n || iova + size - 1n > U64_MAX) {
      throw ioctlError('EINVAL');
    }
    const last = iova + size - 1n;
    const containing = (x: bigint): DmaArea | undefined => c.areas.find((a) => x >= a.iova && x < a.iova + a.length);
    if (v2 && (u.flags & ALL) === 0) {
      const first = containing(iova);
      if (first && first.iova !== iova) throw ioctlError('EINVAL');
      const end = containing(last);
      if (end && end.iova + end.length !== iova + size) throw ioctlError('EINVAL');
    }
    const victims: DmaArea[] = [];
    for (const a of c.areas) {
      if (a.iova + a.length - 1n < iova) continue;
      if (a.iova > last) break;
      if (!v2 && iova > a.iova) break; // v1: a mapping that starts before the range ends the walk
      victims.push(a);
    }
    const unmapped = victims.reduce((n, a) => n + a.length, 0n);
    this.dropAreas(c.areas, victims);
    c.dmaAvail += victims.length;
    writeField(buf, vfio_iommu_type1_dma_unmap.fields.size, unmapped);
    return 0;
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
        dev.files.add(device);
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
        if (obj.type === 'ioas') this.checkAttach(ctx, a.pt_id, obj, !dev.group?.emulated);
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
        // vfio_pci_ioctl_get_irq_info
        const buf = userStruct(arg, vfio_irq_info.size);
        const q = decode(vfio_irq_info, buf);
        if (q.argsz < vfio_irq_info.size || q.index >= 5) throw ioctlError('EINVAL');
        if (q.index === VFIO_PCI_IRQ.ERR && !dev.irqCounts.pcie) throw ioctlError('EINVAL'); // ERR only on PCIe
        const F = VFIO_IRQ_INFO_FLAG;
        const flags = F.EVENTFD | (q.index === VFIO_PCI_IRQ.INTX ? F.MASKABLE | F.AUTOMASKED : F.NORESIZE);
        writeField(buf, vfio_irq_info.fields.flags, flags);
        writeField(buf, vfio_irq_info.fields.count, irqCount(dev, q.index));
        return 0;
      }
      case VFIO.DEVICE_SET_IRQS:
        return this.setIrqs(dev, arg);
      case VFIO.DEVICE_RESET:
        if ((dev.flags & VFIO_DEVICE_FLAGS.RESET) === 0) throw ioctlError('EINVAL'); // !vdev->reset_works
        dev.resets++;
        return 0;
      case VFIO.DEVICE_GET_PCI_HOT_RESET_INFO:
        return this.hotResetInfo(file, arg);
      default:
        throw ioctlError('ENOTTY');
    }
  }

  /** vfio_pci_ioctl_set_irqs: vfio_set_irqs_validate_and_prepare, then the index's action */
  private setIrqs(dev: DeviceState, arg: number | Buffer | undefined): number {
    const buf = userStruct(arg, vfio_irq_set.size);
    const h = decode(vfio_irq_set, buf);
    const S = VFIO_IRQ_SET;
    const DATA = S.DATA_NONE | S.DATA_BOOL | S.DATA_EVENTFD;
    const ACTION = S.ACTION_MASK | S.ACTION_UNMASK | S.ACTION_TRIGGER;
    const max = irqCount(dev, h.index);
    if (h.argsz < vfio_irq_set.size || h.index >= 5 || h.count >= 0xffffffff - h.start || (h.flags & ~(DATA | ACTION)) !== 0) throw ioctlError('EINVAL');
    if (h.start >= max || h.start + h.count > max) throw ioctlError('EINVAL');
    const dataType = h.flags & DATA;
    const size = dataType === S.DATA_NONE ? 0 : dataType === S.DATA_BOOL ? 1 : dataType === S.DATA_EVENTFD ? 4 : -1;
    if (size < 0) throw ioctlError('EINVAL');
    if (size > 0 && h.argsz - vfio_irq_set.size < h.count * size) throw ioctlError('EINVAL');
    if (buf.length < vfio_irq_set.size + h.count * size) throw ioctlError('EFAULT'); // memdup_user
    const data = buf.subarray(vfio_irq_set.size, vfio_irq_set.size + h.count * size);
    const fds = dataType === S.DATA_EVENTFD ? Array.from({ length: h.count }, (_, i) => data.readInt32LE(4 * i)) : [];
    const bools = dataType === S.DATA_BOOL ? [...data] : [];
    const action = h.flags & ACTION;
    const q = dev.irq;
    const none = dataType === S.DATA_NONE;

    if (h.index === VFIO_PCI_IRQ.INTX) {
      if (action === S.ACTION_MASK || action === S.ACTION_UNMASK) {
        if (q.type !== 'intx' || h.start !== 0 || h.count !== 1) throw ioctlError('EINVAL');
        if (dataType === S.DATA_EVENTFD) throw ioctlError('EINVAL'); // irqfd (un)masking is not modelled
        if (!none && !bools[0]) return 0;
        if (action === S.ACTION_MASK) q.intxMasked = true;
        else if (q.intxMasked) {
          // vfio_pci_intx_unmask: a line still asserted fires again at once (and stays masked)
          if (q.intxLine) this.signal(q.triggers[0] ?? null);
          else q.intxMasked = false;
        }
        return 0;
      }
      if (action !== S.ACTION_TRIGGER) throw ioctlError('ENOTTY');
      // vfio_pci_set_intx_trigger
      if (q.type === 'intx' && h.count === 0 && none) {
        dev.irq = { ...noIrqs(), err: q.err, req: q.req, intxLine: q.intxLine };
        return 0;
      }
      if ((q.type !== 'intx' && q.type !== 'none') || h.start !== 0 || h.count !== 1) throw ioctlError('EINVAL');
      if (dataType === S.DATA_EVENTFD) {
        const trigger = fds[0]! >= 0 ? this.eventfdCtx(fds[0]!) : null;
        if (q.type === 'none') {
          q.type = 'intx';
          q.intxMasked = false;
        }
        q.triggers = [trigger];
        if (q.intxLine && !q.intxMasked) {
          q.intxMasked = true;
          this.signal(trigger);
        }
        return 0;
      }
      if (q.type !== 'intx') throw ioctlError('EINVAL');
      if (none || bools[0]) this.signal(q.triggers[0] ?? null); // loopback
      return 0;
    }

    if (h.index === VFIO_PCI_IRQ.MSI || h.index === VFIO_PCI_IRQ.MSIX) {
      if (action !== S.ACTION_TRIGGER) throw ioctlError('ENOTTY'); // no MSI masking
      const type = h.index === VFIO_PCI_IRQ.MSI ? 'msi' : 'msix';
      // vfio_pci_set_msi_trigger
      if (q.type === type && h.count === 0 && none) {
        dev.irq = { ...noIrqs(), err: q.err, req: q.req, intxLine: q.intxLine };
        return 0;
      }
      if (q.type !== type && q.type !== 'none') throw ioctlError('EINVAL'); // INTx (or the other MSI kind) is enabled
      if (dataType === S.DATA_EVENTFD) {
        const enabling = q.type === 'none';
        const n = enabling ? h.start + h.count : q.triggers.length;
        if (h.start + h.count > n) throw ioctlError('EINVAL'); // vfio_msi_set_block beyond the vectors enabled
        const triggers = enabling ? Array.from({ length: n }, () => null as EventfdState | null) : [...q.triggers];
        for (let i = 0; i < h.count; i++) triggers[h.start + i] = fds[i]! >= 0 ? this.eventfdCtx(fds[i]!) : null;
        q.type = type;
        q.triggers = triggers;
        q.intxLine = false; // MSI enabled: the device stops driving INTx
        return 0;
      }
      if (q.type !== type) throw ioctlError('EINVAL');
      for (let i = h.start; i < h.start + h.count; i++) if (none || bools[i - h.start]) this.signal(q.triggers[i] ?? null);
      return 0;
    }

    // ERR (PCIe only) and REQ: one trigger each, independent of the index enabled (vfio_pci_set_ctx_trigger_single)
    if (action !== S.ACTION_TRIGGER || (h.index === VFIO_PCI_IRQ.ERR && !dev.irqCounts.pcie)) throw ioctlError('ENOTTY');
    if (h.start !== 0 || h.count > 1) throw ioctlError('EINVAL');
    const key = h.index === VFIO_PCI_IRQ.ERR ? 'err' : 'req';
    if (none) {
      if (!q[key]) throw ioctlError('EINVAL');
      if (h.count) this.signal(q[key]);
      else q[key] = null;
      return 0;
    }
    if (dataType === S.DATA_BOOL) {
      if (h.count === 0) throw ioctlError('EINVAL');
      if (bools[0]) this.signal(q[key]);
      return 0;
    }
    if (h.count === 0) throw ioctlError('EINVAL');
    q[key] = fds[0]! >= 0 ? this.eventfdCtx(fds[0]!) : fds[0] === -1 ? null : q[key];
    return 0;
  }

  /** eventfd_ctx_fdget: EBADF for no fd, EINVAL for an fd that is not an eventfd */
  private eventfdCtx(fd: number): EventfdState {
    const e = this.fdTable.get(fd);
    if (!e) throw ioctlError('EBADF');
    if (e.file.kind !== 'eventfd') throw ioctlError('EINVAL');
    return e.file.efd;
  }

  /** vfio_pci_ioctl_get_pci_hot_reset_info */
  private hotResetInfo(file: DeviceFile, arg: number | Buffer | undefined): number {
    const dev = file.device;
    const buf = userStruct(arg, vfio_pci_hot_reset_info.size);
    const h = decode(vfio_pci_hot_reset_info, buf);
    if (h.argsz < vfio_pci_hot_reset_info.size) throw ioctlError('EINVAL');
    if (!dev.hotReset) throw ioctlError('ENODEV'); // neither a slot nor a bus reset
    const count = dev.hotReset.length;
    if (count > Math.floor((h.argsz - vfio_pci_hot_reset_info.size) / vfio_pci_dependent_device.size)) {
      writeField(buf, vfio_pci_hot_reset_info.fields.flags, 0);
      writeField(buf, vfio_pci_hot_reset_info.fields.count, count);
      throw ioctlError('ENOSPC');
    }
    const F = VFIO_PCI_HOT_RESET_FLAG;
    let flags = file.via === 'cdev' ? F.DEV_ID | F.DEV_ID_OWNED : 0;
    const entries = dev.hotReset.map((h2) => {
      const other = this.devices.get(h2.address);
      let id: number;
      if (flags & F.DEV_ID) {
        // vfio_pci_fill_devs: its devid in our iommufd, OWNED (0) if our iommufd holds its group, else NOT_OWNED (-1)
        const bound = other && [...other.files].find((f) => f.via === 'cdev' && f.bound && f.ctx === file.ctx);
        const groupHeld = other?.group && [...this.devices.values()].some((d) => d.group === other.group && [...d.files].some((f) => f.via === 'cdev' && f.bound && f.ctx === file.ctx));
        id = bound ? bound.devid! : groupHeld ? 0 : 0xffffffff;
        if (id === 0xffffffff) flags &= ~F.DEV_ID_OWNED;
      } else {
        const group = h2.group !== undefined ? h2.group : other?.group?.id ?? null;
        if (group === null) throw ioctlError('EPERM'); // cannot reset non-isolated devices
        id = group;
      }
      const [segment, bus, devfn] = parsePciAddress(h2.address);
      return { id, segment, bus, devfn };
    });
    const need = vfio_pci_hot_reset_info.size + count * vfio_pci_dependent_device.size;
    if (buf.length < need) throw ioctlError('EFAULT');
    entries.forEach((d, i) => {
      const at = vfio_pci_hot_reset_info.size + i * vfio_pci_dependent_device.size;
      writeField(buf, vfio_pci_dependent_device.fields.group_id, d.id, at);
      writeField(buf, vfio_pci_dependent_device.fields.segment, d.segment, at);
      writeField(buf, vfio_pci_dependent_device.fields.bus, d.bus, at);
      writeField(buf, vfio_pci_dependent_device.fields.devfn, d.devfn, at);
    });
    writeField(buf, vfio_pci_hot_reset_info.fields.flags, flags);
    writeField(buf, vfio_pci_hot_reset_info.fields.count, count);
    return 0;
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
        return Buffer.from(`${fileText(f.node)}\n`).copy(buf, 0, Number(offset));
      }
      if (f.kind === 'chr') return call === 'pread' ? 0 : buf.length;
      if (f.kind !== 'device' || !f.bound) throw sysError('EINVAL', call === 'pread' ? 'read' : 'write');
      const index = Number(offset >> REGION_SHIFT);
      const at = Number(offset & ((1n << REGION_SHIFT) - 1n));
      const region = f.device.regions.get(index);
      const readable = call === 'pread' ? VFIO_REGION_INFO_FLAG.READ : VFIO_REGION_INFO_FLAG.WRITE;
      if (!region || (region.flags & readable) === 0 || at >= Number(region.size)) throw sysError('EINVAL', call === 'pread' ? 'read' : 'write');
      const n = Math.min(buf.length, Number(region.size) - at);
      if (index === VFIO_PCI_REGION.CONFIG) {
        const backing = f.device.config;
        if (call === 'pread') backing.copy(buf, 0, at, at + n);
        // vfio-pci virtualizes config space: the IDs are read-only
        else for (let i = 0; i < n; i++) if (at + i >= 4) backing[at + i] = buf[i]!;
        return n;
      }
      // vfio_pci_core_do_io_rw: the widest aligned access that fits, 8, 4, 2 or 1 bytes at a time
      for (let done = 0; done < n; ) {
        const pos = at + done;
        const left = n - done;
        const width = left >= 8 && pos % 8 === 0 ? 8 : left >= 4 && pos % 4 === 0 ? 4 : left >= 2 && pos % 2 === 0 ? 2 : 1;
        if (call === 'pread') writeLE(buf, done, width, this.barRead(f.device, index, pos, width));
        else this.barWrite(f.device, index, pos, width, readLE(buf, done, width));
        done += width;
      }
      return n;
    });
  }

  // -------------------------------------------------------------------------------------------------
  // the devices behind the BARs: QEMU's edu, or plain memory

  private ram(dev: DeviceState, index: number): Buffer {
    let b = dev.bars.get(index);
    if (!b) {
      b = Buffer.alloc(Number(dev.regions.get(index)?.size ?? 0));
      dev.bars.set(index, b);
    }
    return b;
  }

  /** One load of `width` bytes at `at` in the region, as the device answers it. */
  private barRead(dev: DeviceState, index: number, at: number, width: number): bigint {
    if (dev.edu && index === VFIO_PCI_REGION.BAR0) return this.eduRead(dev.edu, at, width);
    return readLE(this.ram(dev, index), at, width);
  }

  /** One store of `width` bytes at `at` in the region. */
  private barWrite(dev: DeviceState, index: number, at: number, width: number, value: bigint): void {
    if (dev.edu && index === VFIO_PCI_REGION.BAR0) this.eduWrite(dev, dev.edu, at, width, value);
    else writeLE(this.ram(dev, index), at, width, value);
    this.refreshMirrors(dev);
  }

  /** What the mappings of a device's regions show changes with the device's state. */
  private refreshMirrors(dev: DeviceState): void {
    for (const m of dev.mirrors) this.refreshMirror(m);
  }

  private refreshMirror(m: MemMapping): void {
    const r = m.region!;
    const view = new Uint8Array(m.buffer);
    if (view.length === 0) return;
    if (r.device.edu && r.index === VFIO_PCI_REGION.BAR0) {
      // edu's registers as a 4-byte read shows them (reads have no side effect on edu)
      for (let reg = 0; reg < 0xa0; reg += 4) {
        const at = reg - r.at;
        if (at >= 0 && at + 4 <= view.length) writeLE(view, at, 4, this.eduRead(r.device.edu, reg, 4));
      }
      return;
    }
    const ram = this.ram(r.device, r.index);
    view.set(ram.subarray(r.at, r.at + view.length));
  }

  /** edu_mmio_read: only 4-byte accesses below 0x80, 4 or 8 bytes from 0x80; anything else reads as all ones */
  private eduRead(e: EduState, at: number, width: number): bigint {
    const ones = (1n << BigInt(8 * width)) - 1n;
    if ((at < 0x80 && width !== 4) || (at >= 0x80 && width !== 4 && width !== 8)) return ones;
    let v: bigint;
    switch (at) {
      case EDU_REG.ID: v = 0x010000edn; break;
      case EDU_REG.LIVENESS: v = BigInt(e.addr4); break;
      case EDU_REG.FACTORIAL: v = BigInt(e.fact); break;
      case EDU_REG.STATUS: v = BigInt(e.status); break;
      case EDU_REG.IRQ_STATUS: v = BigInt(e.irqStatus); break;
      case EDU_REG.DMA_SRC: v = e.dma.src; break;
      case EDU_REG.DMA_DST: v = e.dma.dst; break;
      case EDU_REG.DMA_COUNT: v = e.dma.cnt; break;
      case EDU_REG.DMA_CMD: v = e.dma.cmd; break;
      default: v = U64_MAX;
    }
    return v & ones;
  }

  /** edu_mmio_write */
  private eduWrite(dev: DeviceState, e: EduState, at: number, width: number, value: bigint): void {
    if ((at < 0x80 && width !== 4) || (at >= 0x80 && width !== 4 && width !== 8)) return;
    const u32 = Number(value & 0xffffffffn);
    const running = (e.dma.cmd & EDU_DMA.START) !== 0n; // dma_rw: no register changes while a DMA runs
    switch (at) {
      case EDU_REG.LIVENESS:
        e.addr4 = ~u32 >>> 0;
        break;
      case EDU_REG.FACTORIAL: {
        if (e.status & EDU_STATUS_COMPUTING) break;
        let fact = 1;
        for (let n = u32; n > 0; n--) fact = Math.imul(fact, n) >>> 0;
        e.fact = fact;
        if (e.status & EDU_STATUS_IRQFACT) this.eduRaise(dev, e, EDU_DMA.FACT_IRQ);
        break;
      }
      case EDU_REG.STATUS:
        e.status = (u32 & EDU_STATUS_IRQFACT) !== 0 ? e.status | EDU_STATUS_IRQFACT : e.status & ~EDU_STATUS_IRQFACT;
        break;
      case EDU_REG.IRQ_RAISE:
        this.eduRaise(dev, e, u32);
        break;
      case EDU_REG.IRQ_ACK:
        e.irqStatus = (e.irqStatus & ~u32) >>> 0;
        if (e.irqStatus === 0 && dev.irq.type !== 'msi') dev.irq.intxLine = false;
        break;
      case EDU_REG.DMA_SRC:
        if (!running) e.dma.src = value;
        break;
      case EDU_REG.DMA_DST:
        if (!running) e.dma.dst = value;
        break;
      case EDU_REG.DMA_COUNT:
        if (!running) e.dma.cnt = value;
        break;
      case EDU_REG.DMA_CMD:
        if ((value & EDU_DMA.START) === 0n || running) break;
        e.dma.cmd = value;
        if (this.eduDmaTiming === 'sync') this.eduDma(dev, e);
        else setImmediate(() => this.eduDma(dev, e));
        break;
      default:
        break;
    }
  }

  /** edu_raise_irq: MSI when vfio-pci enabled it (and the device may master the bus), else the INTx line */
  private eduRaise(dev: DeviceState, e: EduState, bits: number): void {
    e.irqStatus = (e.irqStatus | bits) >>> 0;
    if (e.irqStatus === 0) return;
    const q = dev.irq;
    if (q.type === 'msi') {
      if (busMaster(dev)) this.signal(q.triggers[0] ?? null); // an MSI is a DMA write: dropped without bus mastering
      return;
    }
    if (q.intxLine) return; // the line is already high: no new edge
    q.intxLine = true;
    // vfio_intx_handler: signal and mask until the user unmasks
    if (q.type === 'intx' && !q.intxMasked) {
      q.intxMasked = true;
      this.signal(q.triggers[0] ?? null);
    }
  }

  /** edu_dma_timer: one transfer between edu's buffer and memory, through the IOMMU */
  private eduDma(dev: DeviceState, e: EduState): void {
    const cmd = e.dma.cmd;
    if ((cmd & EDU_DMA.START) === 0n) return;
    const toRam = (cmd & EDU_DMA.TO_RAM) !== 0n;
    const count = e.dma.cnt;
    const eduAddr = toRam ? e.dma.src : e.dma.dst;
    const iova = (toRam ? e.dma.dst : e.dma.src) & EDU_DMA_MASK; // edu_clamp_addr: a 28-bit DMA mask
    // edu_check_range as in QEMU 7.2 (the test bed's): a transfer ending at the buffer's last byte is refused too
    const end = eduAddr + count;
    const inside = eduAddr >= EDU_DMA.BUFFER && eduAddr < EDU_DMA.BUFFER + BigInt(EDU_DMA.BUFFER_SIZE) && end > eduAddr && end < EDU_DMA.BUFFER + BigInt(EDU_DMA.BUFFER_SIZE);
    if (!inside) {
      // QEMU stops the VM with a hardware error; the fake records it and completes without a copy
      this.dmaFaults.push({ device: dev.name, iova, length: Number(count), write: toRam, reason: 'edu range' });
    } else {
      const at = Number(eduAddr - EDU_DMA.BUFFER);
      const n = Number(count);
      this.deviceDma(dev, iova, e.buffer.subarray(at, at + n), toRam);
    }
    e.dma.cmd &= ~EDU_DMA.START;
    if ((cmd & EDU_DMA.IRQ) !== 0n) this.eduRaise(dev, e, EDU_DMA.DONE_IRQ);
    this.refreshMirrors(dev);
  }

  // -------------------------------------------------------------------------------------------------
  // the fake IOMMU: a device's DMA, translated through the mappings of the domain it is attached to

  /** The mappings the device's DMA goes through, or why there are none. */
  private dmaDomain(dev: DeviceState): DmaArea[] | DmaFault['reason'] {
    for (const f of dev.files) {
      if (f.via !== 'cdev' || !f.bound || f.attachedPt === null) continue;
      const obj = f.ctx!.objects.get(f.attachedPt);
      const ioas = obj?.type === 'hwpt' ? f.ctx!.objects.get(obj.ioas) : obj;
      if (ioas?.type === 'ioas') return ioas.areas;
    }
    // legacy: the group's devices are attached to the container's domain once the group is in it
    const held = dev.group?.openedBy;
    if (held && held !== 'elsewhere' && held.container?.iommuType != null) {
      if (held.container.iommuType === VFIO_NOIOMMU_IOMMU) return 'noiommu';
      return held.container.areas;
    }
    return 'no domain';
  }

  /** [iova, iova+length) as pieces of the memory behind it, or why the IOMMU refuses it */
  private translate(dev: DeviceState, iova: bigint, length: number, write: boolean): { mem: MemMapping; at: number; n: number }[] | DmaFault['reason'] {
    if (!busMaster(dev)) return 'bus master disabled';
    const areas = this.dmaDomain(dev);
    if (typeof areas === 'string') return areas;
    const pieces: { mem: MemMapping; at: number; n: number }[] = [];
    for (let done = 0; done < length; ) {
      const cur = iova + BigInt(done);
      const a = areas.find((x) => cur >= x.iova && cur < x.iova + x.length);
      if (!a) return 'unmapped';
      if (write ? !a.writable : !a.readable) return write ? 'read-only' : 'write-only';
      const n = Math.min(length - done, Number(a.iova + a.length - cur));
      pieces.push({ mem: a.mem, at: a.offset + Number(cur - a.iova), n });
      done += n;
    }
    return pieces;
  }

  /**
   * The device's DMA at iova: a write copies `buf` into memory, a read copies memory into `buf`. On a
   * fault nothing is copied and the fault is recorded.
   */
  private deviceDma(dev: DeviceState, iova: bigint, buf: Buffer, write: boolean): boolean {
    const t = this.translate(dev, iova, buf.length, write);
    if (typeof t === 'string') {
      this.dmaFaults.push({ device: dev.name, iova, length: buf.length, write, reason: t });
      return false;
    }
    let done = 0;
    for (const p of t) {
      const memory = new Uint8Array(p.mem.pages!, p.at, p.n);
      if (write) memory.set(buf.subarray(done, done + p.n));
      else buf.set(memory, done);
      done += p.n;
    }
    this.dmaTransfers.push({ device: dev.name, iova, length: buf.length, write });
    return true;
  }
}

// ---------------------------------------------------------------------------------------------------
// helpers

/** the name a group's node and its vfio-class device have: N, or noiommu-N */
const groupName = (g: GroupState): string => (g.noiommu ? `noiommu-${g.id}` : String(g.id));

/** sysfs_streq: what a bus attribute takes as a device name (one trailing newline ignored) */
const sysfsName = (text: string): string => text.replace(/\n$/, '').toLowerCase();

/** sysfs and procfs: no file can be created, and only attributes with a store can be written */
const isKernfs = (real: string): boolean => /^\/(sys|proc)(\/|$)/.test(real);

/** the test bed's kernel command lines */
function defaultCmdline(release: string, iommu: HostOptions['iommu'], unsafe: { iommufd: boolean; type1: boolean }): string {
  const parts = [`BOOT_IMAGE=/boot/vmlinuz-${release}`, 'root=/dev/vda1', 'ro', 'console=ttyS0'];
  if (iommu === 'intel') parts.push('intel_iommu=on');
  if (iommu === 'noiommu') parts.push('vfio.enable_unsafe_noiommu_mode=1');
  if (unsafe.type1) parts.push('vfio_iommu_type1.allow_unsafe_interrupts=1');
  if (unsafe.iommufd) parts.push('iommufd.allow_unsafe_interrupts=1');
  return parts.join(' ');
}

/** /proc/interrupts of a 2-CPU x86 guest: IR-IO-APIC and IR-PCI-MSI* domains when interrupts are remapped */
function procInterrupts(remapped: boolean, iommu: HostOptions['iommu']): string {
  const ir = remapped ? 'IR-' : '';
  const row = (irq: string, a: number, b: number, chip: string): string => `${`${irq}:`.padStart(4)} ${String(a).padStart(10)} ${String(b).padStart(10)}  ${chip}`;
  return [
    '            CPU0       CPU1',
    row('0', 36, 0, `${ir}IO-APIC    2-edge      timer`),
    row('1', 0, 9, `${ir}IO-APIC    1-edge      i8042`),
    row('4', 0, 512, `${ir}IO-APIC    4-edge      ttyS0`),
    ...(iommu === 'intel' ? [row('24', 0, 0, 'DMAR-MSI    0-edge      dmar0')] : []),
    row('25', 0, 0, `${ir}PCI-MSI-0000:00:01.0    0-edge      virtio0-config`),
    row('26', 1843, 0, `${ir}PCI-MSIX-0000:00:02.0    0-edge      virtio1-req.0`),
    row('NMI', 0, 0, ' Non-maskable interrupts'),
    row('LOC', 12345, 11234, ' Local timer interrupts'),
  ].join('\n');
}

/** the options doctor looks at, as Debian's 6.1 (stock) or the test bed's 6.12c (iommufd) sets them */
function kernelConfigText(iommufd: boolean): string {
  const opt = (name: string, value: string | null): string => (value === null ? `# ${name} is not set` : `${name}=${value}`);
  return [
    '#', '# Automatically generated file; DO NOT EDIT.', '#',
    opt('CONFIG_IOMMU_SUPPORT', 'y'), opt('CONFIG_INTEL_IOMMU', 'y'), opt('CONFIG_IRQ_REMAP', 'y'),
    opt('CONFIG_IOMMUFD', iommufd ? 'm' : null), opt('CONFIG_VFIO', 'm'), opt('CONFIG_VFIO_CONTAINER', 'y'),
    opt('CONFIG_VFIO_DEVICE_CDEV', iommufd ? 'y' : null), opt('CONFIG_VFIO_NOIOMMU', 'y'), opt('CONFIG_VFIO_PCI', 'm'),
    '',
  ].join('\n');
}

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

/** PCI_COMMAND_MASTER in the device's config space */
const busMaster = (dev: DeviceState): boolean => (dev.config.readUInt16LE(0x04) & 0x4) !== 0;

const pageAlign = (n: number): number => Math.ceil(n / PAGE) * PAGE;

/** little-endian, `width` bytes */
function readLE(b: Uint8Array, at: number, width: number): bigint {
  let v = 0n;
  for (let i = width - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[at + i]!);
  return v;
}
function writeLE(b: Uint8Array, at: number, width: number, value: bigint): void {
  for (let i = 0; i < width; i++) b[at + i] = Number((value >> BigInt(8 * i)) & 0xffn);
}

/** what the addon's napi_throw_type_error throws */
function addonTypeError(message: string): TypeError {
  const e = new TypeError(message) as TypeError & { code: string };
  e.code = 'ERR_INVALID_ARG_TYPE';
  return e;
}

/** the addon's get_u64: a bigint (taken modulo 2^64), or a non-negative number */
function addonU64(v: unknown, what: string): bigint {
  if (typeof v === 'bigint') return BigInt.asUintN(64, v);
  if (typeof v === 'number' && Number.isFinite(v) && v >= 0) return BigInt(Math.trunc(v));
  throw addonTypeError(`${what} must be a non-negative number or bigint`);
}

/** a mapping's length as the addon takes it: 0 is refused before any system call */
function addonLength(length: unknown): number {
  const n = addonU64(length, 'length');
  if (n === 0n) throw addonTypeError('length must not be 0');
  return Number(n);
}

/** keeps areas sorted by iova */
function insertArea(areas: DmaArea[], area: DmaArea): void {
  const i = areas.findIndex((a) => a.iova > area.iova);
  areas.splice(i < 0 ? areas.length : i, 0, area);
}

/** vfio_pci_get_irq_count */
function irqCount(dev: DeviceState, index: number): number {
  const c = dev.irqCounts;
  return [c.intx, c.msi, c.msix, c.pcie ? 1 : 0, 1][index] ?? 0;
}

/** 0000:01:00.0 -> segment, bus, devfn */
function parsePciAddress(address: string): [number, number, number] {
  const m = /^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i.exec(address);
  if (!m) throw new Error(`fake: ${address} is not a PCI address`);
  return [parseInt(m[1]!, 16), parseInt(m[2]!, 16), (parseInt(m[3]!, 16) << 3) | Number(m[4])];
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
