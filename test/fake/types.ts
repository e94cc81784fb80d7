// The fake's public types: what a test passes to build a host (HostOptions, PciDeviceOptions,
// MdevOptions, FakeRegion, FailRule) and the records it reads back (CallInfo, FdInfo, DmaFault,
// DmaTransfer, MmioAccess, IommuGeometry). The kernel's own objects are in state.ts.
import type { Errno } from './errno.js';
import type { OpenFile } from './state.js';

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
  /** its migration driver's VFIO_MIGRATION_* flags (default mtty's: STOP_COPY, P2P, PRE_COPY); null: no migration */
  migration?: number | null;
  /** its UART ports (mtty-1 has 1, mtty-2 has 2): the size of its migration stream */
  ports?: number;
  /** it has DMA logging ops (default true, as mtty's stubs) */
  dmaLogging?: boolean;
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
  /** intel: MSI remapping; virtio: no MSI isolation (x86 virtio-iommu); smmuv3: arm64's, MSIs isolated
   *  by the GICv3 ITS, its MSI window at 0x8000000; none: no IOMMU; noiommu: vfio.enable_unsafe_noiommu_mode=1 */
  iommu?: 'intel' | 'virtio' | 'smmuv3' | 'none' | 'noiommu';
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
  /** the kernel's page size (default 4096; 65536 is an arm64 kernel with CONFIG_ARM64_64K_PAGES, and
   *  the smmuv3 IOMMU then has 64 KiB pages too); huge pages follow it (512 MiB with 64 KiB) */
  pageSize?: 4096 | 16384 | 65536;
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
  /** the IOMMU has dirty tracking (IOMMU_CAP_DIRTY_TRACKING; default false, as the test bed's emulated ones) */
  iommuDirtyTracking?: boolean;
}

/** A call as the fake saw it, for the call log, listeners and failure rules. */
export interface CallInfo {
  call: 'open' | 'close' | 'ioctl' | 'pread' | 'pwrite' | 'fstat' | 'stat' | 'readlink' | 'realpath' | 'readdir' | 'readText'
    | 'mmap' | 'allocDma' | 'eventfd' | 'watch' | 'writeText' | 'unlink' | 'mkdirp' | 'readBytes' | 'read' | 'write';
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
  /** how many matching calls succeed first (default 0): the n-th map of a batch fails with after: n - 1 */
  after?: number;
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

/** The IOMMU's geometry as the hardware reports it: usable IOVA ranges (reserved regions excluded) and page sizes. */
export interface IommuGeometry {
  ranges: { start: bigint; last: bigint }[];
  pgsizes: bigint;
}
