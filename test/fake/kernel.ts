// FakeKernel: the Kernel the unit tests inject. A facade: it owns the one FakeState and hands each
// call to the module of its subsystem (files.ts, sysfs.ts, ioctl.ts, memory.ts, regions.ts, irqs.ts;
// host.ts, drivers.ts and proc.ts for what tests change), logging it through calls.ts on the way.
// See ../fake-kernel.ts for what the fake models.
import { isSysError, type FileStat, type Kernel, type SysErrorLike } from '../../src/sys/kernel.js';
import type { VFIO_PCI_IRQ } from '../../src/uapi/vfio.js';
import { fdCall, failNext, run } from './calls.js';
import * as drivers from './drivers.js';
import type { EduState } from './edu.js';
import type { Errno } from './errno.js';
import * as files from './files.js';
import * as host from './host.js';
import { ioctl, requestName } from './ioctl.js';
import * as irqs from './irqs.js';
import * as memory from './memory.js';
import * as migration from './migration.js';
import { VFIO_DEVICE_STATE } from '../../src/uapi/migration.js';

type StateName = keyof typeof VFIO_DEVICE_STATE;
const STATE_NAMES = new Map(Object.entries(VFIO_DEVICE_STATE).map(([k, v]) => [v as number, k as StateName]));

/** A migration driver as tests see it (FakeKernel.migration). */
export interface MigrationView {
  readonly state: StateName;
  /** the device's state bytes (nr_ports * 36): what a save streams after the header */
  readonly payload: Buffer;
  /** data files alive (held by the device or by an fd) */
  readonly liveFiles: number;
  readonly loggingStarted: boolean;
  /** the device wrote [iova, iova+length): logged where it falls inside the started log's ranges */
  deviceWrote(iova: bigint, length: bigint): void;
  /** the page size the driver's log_start picks (default: it keeps the one asked, as mtty) */
  logPageSize: bigint | null;
  /** a drained PRE_COPY read answers ENOMSG (the uAPI's way) instead of 0 (mtty's) */
  enomsg: boolean;
  /** the next arc from -> to fails with errno; toError leaves the device in ERROR */
  failArc(from: StateName, to: StateName, errno: Errno, toError?: boolean): void;
}
import * as proc from './proc.js';
import * as regions from './regions.js';
import { EDU, FakeState, findDevice, type IrqState } from './state.js';
import * as sysfs from './sysfs.js';
import type {
  CallInfo, DmaFault, DmaTransfer, FailRule, FdInfo, HostOptions, IommuGeometry, MdevOptions, MmioAccess, PciDeviceOptions,
} from './types.js';

export class FakeKernel implements Kernel {
  private readonly s: FakeState;

  constructor(options: Omit<HostOptions, 'devices' | 'mdevs'> = {}) {
    this.s = new FakeState(options);
    host.buildHost(this.s, options);
  }

  get pageSize(): number { return this.s.pageSize; }
  get hugePageSize(): number { return this.s.hugePageSize; }

  /** A host as the test bed boots it: the kernel, the IOMMU, and devices bound as given. */
  static host(options: HostOptions = {}): FakeKernel {
    const k = new FakeKernel(options);
    for (const d of options.devices ?? [{ address: EDU }]) k.addPciDevice(d);
    for (const m of options.mdevs ?? []) k.addMdev(m);
    return k;
  }

  // -------------------------------------------------------------------------------------------------
  // the host's state, as tests read and change it (see FakeState for each one)

  /** every open/close/ioctl/pread/pwrite/fstat, in order, with the errno of the ones that failed */
  get calls(): CallInfo[] { return this.s.calls; }
  /** fds closed that were not open (closeQuietly swallows the EBADF; tests look here) */
  get badCloses(): number[] { return this.s.badCloses; }
  get hasIommufd(): boolean { return this.s.hasIommufd; }
  get iommu(): NonNullable<HostOptions['iommu']> { return this.s.iommu; }
  /** this process's pid, /proc/self */
  get pid(): number { return this.s.pid; }
  /** the pid of "another process" (holdGroupElsewhere, bindElsewhere, openElsewhere) */
  get otherPid(): number { return this.s.otherPid; }
  /** unbinds the real kernel would have blocked on (the device was open through VFIO): the fake refused them */
  get blockedUnbinds(): { device: string; driver: string; path: string }[] { return this.s.blockedUnbinds; }
  /** what the driver core would have said in dmesg: binds, unbinds, failed probes */
  get kernelLog(): string[] { return this.s.kernelLog; }
  /** DMAs the fake IOMMU refused, in order */
  get dmaFaults(): DmaFault[] { return this.s.dmaFaults; }
  /** DMAs that went through, in order */
  get dmaTransfers(): DmaTransfer[] { return this.s.dmaTransfers; }
  /** every mmioRead/mmioWrite on a device region, in order */
  get mmioLog(): MmioAccess[] { return this.s.mmioLog; }
  /** every dmaWriteBarrier/dmaReadBarrier, with how many mmioLog entries came before it */
  get barriers(): { kind: 'write' | 'read'; at: number }[] { return this.s.barriers; }
  /**
   * Let RegionMapping read and write plain-memory BARs through its own typed-array views, as on a
   * real kernel (their accesses then bypass mmioLog and the BAR's backing store). edu's BAR0 always
   * goes through mmioRead/mmioWrite: its registers are a model, not memory.
   */
  set directMmio(on: boolean) { this.s.directMmio = on; }

  /** running as root: see HostOptions.root */
  get root(): boolean { return this.s.root; }
  set root(v: boolean) { this.s.root = v; }
  get rawio(): boolean { return this.s.rawio; }
  set rawio(v: boolean) { this.s.rawio = v; }
  /** /proc/interrupts lists IR- (remapped) domains */
  get interruptRemapping(): boolean { return this.s.interruptRemapping; }
  set interruptRemapping(v: boolean) { this.s.interruptRemapping = v; }
  /** vfio_iommu_type1 is loaded: the container offers type1v2 and type1 */
  get type1Available(): boolean { return this.s.type1Available; }
  set type1Available(v: boolean) { this.s.type1Available = v; }
  get apiVersion(): number { return this.s.apiVersion; }
  set apiVersion(v: number) { this.s.apiVersion = v; }
  get allowUnsafe(): { iommufd: boolean; type1: boolean } { return this.s.allowUnsafe; }
  set allowUnsafe(v: { iommufd: boolean; type1: boolean }) { this.s.allowUnsafe = v; }
  /** free 2 MiB huge pages (nr_hugepages less those in use): allocDma(..., true) answers ENOMEM beyond them; 0 as on a host that reserved none */
  get hugePagesFree(): number { return this.s.hugePagesFree; }
  set hugePagesFree(v: number) { this.s.hugePagesFree = v; }
  /** CAP_IPC_LOCK: pinned pages are not charged against RLIMIT_MEMLOCK (default true, as root) */
  get ipcLock(): boolean { return this.s.ipcLock; }
  set ipcLock(v: boolean) { this.s.ipcLock = v; }
  /** vfio_iommu_type1.dma_entry_limit, read when a container's IOMMU is set */
  get dmaEntryLimit(): number { return this.s.dmaEntryLimit; }
  set dmaEntryLimit(v: number) { this.s.dmaEntryLimit = v; }
  /** the hardware IOMMU's IOVA ranges and page sizes (intel by default, virtio-iommu's for iommu: 'virtio') */
  get geometry(): IommuGeometry { return this.s.geometry; }
  set geometry(v: IommuGeometry) { this.s.geometry = v; }
  /** when edu performs a DMA its command register started: at once (default), or on a later turn of the event loop as QEMU's timer does */
  get eduDmaTiming(): 'sync' | 'deferred' { return this.s.eduDmaTiming; }
  set eduDmaTiming(v: 'sync' | 'deferred') { this.s.eduDmaTiming = v; }

  // -------------------------------------------------------------------------------------------------
  // building and changing the host (host.ts, drivers.ts, proc.ts, sysfs.ts)

  /** A PCI device under /sys/devices/pciDDDD:BB, with its driver, group and vfio-dev entries. */
  addPciDevice(o: PciDeviceOptions): this { host.addPciDevice(this.s, o); return this; }
  /** An mdev (mtty-like): bound to its parent's vendor driver, in an emulated-IOMMU group whose node is /dev/vfio/N. */
  addMdev(o: MdevOptions): this { host.addMdev(this.s, o); return this; }
  /**
   * Binds the device to `driver` (null: unbinds it): the driver link, and for a VFIO driver the
   * vfio-dev entry, the cdev node (iommufd kernels, not noiommu) and the group node.
   */
  setDriver(name: string, driver: string | null): this { host.setDriver(this.s, name, driver); return this; }
  /** Removes a node (and what is under it): a hidden /dev/iommu, a missing attribute... */
  hide(p: string): this { sysfs.hide(this.s, p); return this; }
  /** This process may not open the node (access(2) fails, open answers EACCES). */
  inaccessible(p: string, inaccessible = true): this { sysfs.inaccessible(this.s, p, inaccessible); return this; }
  /** A character device node: a stale or planted one when its number belongs to something else. */
  plantNode(p: string, rdev: number, mode = 0o600): this { sysfs.plantNode(this.s, p, rdev, mode); return this; }
  /** Another process holds the group open through the legacy route. */
  holdGroupElsewhere(groupId: number): this { proc.holdGroupElsewhere(this.s, groupId); return this; }
  /** Another process opened the device's cdev and bound it to its iommufd. */
  bindElsewhere(name: string): this { proc.bindElsewhere(this.s, name); return this; }
  /**
   * Another process (pid otherPid, or the one given) has `target` open: an entry in its /proc/<pid>/fd,
   * nothing more (holdGroupElsewhere and bindElsewhere also change the kernel's state).
   */
  openElsewhere(target: string, pid = this.otherPid): this { proc.openElsewhere(this.s, target, pid); return this; }
  /** The other process exits. */
  releaseElsewhere(): this { proc.releaseElsewhere(this.s); return this; }
  /** A PCI driver module is loaded: /sys/bus/pci/drivers/<name> with its bind and unbind attributes. */
  loadDriver(name: string): this { drivers.loadDriver(this.s, name); return this; }
  /** rmmod: the module goes (a device bound to it is unbound first). */
  unloadDriver(name: string): this { drivers.unloadDriver(this.s, name); return this; }
  /** RLIMIT_MEMLOCK, as /proc/self/limits shows it (bytes, or 'unlimited') */
  setMemlock(soft: number | 'unlimited', hard: number | 'unlimited' = soft): this { proc.setMemlock(this.s, soft, hard); return this; }

  mkdir(p: string): this { sysfs.mkdir(this.s, p); return this; }
  writeFile(p: string, text: string): this { sysfs.writeFile(this.s, p, text); return this; }
  /** a binary file (an ACPI table), as readBytes returns it */
  writeBytes(p: string, data: Buffer): this { sysfs.put(this.s, p, { kind: 'file', text: '', data }); return this; }
  /** A sysfs or procfs attribute: reads run `read`, writes run `write` (none: read-only, EACCES). */
  attr(p: string, read: () => string, write?: (text: string, path: string) => void): this { sysfs.attr(this.s, p, read, write); return this; }
  symlink(p: string, target: string): this { sysfs.symlink(this.s, p, target); return this; }

  /** The next `times` matching calls fail with errno (an ioctl by default). */
  failNext(rule: FailRule): this { failNext(this.s, rule); return this; }
  /** The next `times` opens of path fail with errno (the node itself is unchanged). */
  failOpen(p: string, errno: Errno, times = 1): this { return this.failNext({ call: 'open', path: p, errno, times }); }
  /** Failure rules that have not fired (as often as asked) yet. */
  pendingFailures(): FailRule[] { return this.s.rules.filter((r) => r.left > 0); }
  /** Runs before every call the fake logs (tests use it to change the host mid-way). */
  onCall(listener: (call: CallInfo) => void): this { this.s.listeners.push(listener); return this; }

  // -------------------------------------------------------------------------------------------------
  // what tests inspect

  openFds(): number { return this.s.fdTable.size; }
  openPaths(): string[] { return [...this.s.fdTable.values()].map((e) => e.path); }
  /** every path the library tried to open, in order, whether or not the open succeeded */
  openedPaths(): string[] { return this.s.calls.filter((c) => c.call === 'open').map((c) => c.path!); }
  /** the ioctls made, by name, in order */
  ioctlNames(): string[] { return this.s.calls.filter((c) => c.call === 'ioctl').map((c) => c.requestName!); }
  describeFd(fd: number): FdInfo | undefined { return files.describeFd(this.s, fd); }
  /** who holds a group: this process (through an fd), another one, or nobody */
  groupHolder(groupId: number): 'this process' | 'elsewhere' | null {
    const g = this.s.groups.get(groupId);
    if (!g?.openedBy) return null;
    return g.openedBy === 'elsewhere' ? 'elsewhere' : 'this process';
  }
  /** device->open_count: how many opened and bound it */
  deviceOpenCount(name: string): number { return findDevice(this.s, name).openCount; }
  /** driver_override of a PCI device (null: cleared) */
  driverOverride(name: string): string | null { return findDevice(this.s, name).override; }
  /** the driver a device is bound to now */
  driverOf(name: string): string | null { return findDevice(this.s, name).driver; }
  /** Why unbinding the device would block in the real kernel (null: it would not); see drivers.ts. */
  vfioInUse(name: string): string | null { return drivers.vfioInUse(this.s, name); }
  /** mmap/allocDma mappings not unmapped yet */
  liveMappings(): number { return [...this.s.memList].filter((m) => m.mapped).length; }
  /** bytes charged against RLIMIT_MEMLOCK by IOMMU mappings */
  pinnedBytes(): bigint { return this.s.pinned; }
  /** every IOMMU mapping the kernel holds, in every IOAS and container (open or kept alive by a device) */
  iommuMappings(): { owner: 'ioas' | 'container'; iova: bigint; length: bigint; address: bigint }[] { return memory.iommuMappings(this.s); }
  /** eventfd watches not unwatched */
  activeWatches(): number { return this.s.watchList.size; }
  /** eventfd watches ever started */
  startedWatches(): number { return this.s.watchesStarted; }
  /** eventfd watches that keep the event loop alive (a device's request channel does not) */
  keepAliveWatches(): number { return [...this.s.watchList].filter((w) => w.keepAlive).length; }
  /** edu's registers and DMA buffer (the live state: tests may change it) */
  edu(name: string): EduState {
    const e = findDevice(this.s, name).edu;
    if (!e) throw new Error(`fake: ${name} is not an edu device`);
    return e;
  }
  /** its migration driver (test/fake/migration.ts): state, payload, sessions; tests may change it */
  migration(name: string): MigrationView {
    const m = findDevice(this.s, name).mig;
    if (!m) throw new Error(`fake: ${name} has no migration driver`);
    return {
      get state() { return STATE_NAMES.get(m.state)!; },
      payload: m.payload,
      get liveFiles() { return m.liveFiles.size; },
      get loggingStarted() { return m.loggingStarted; },
      deviceWrote: (iova, length) => migration.logDeviceWrite(m, iova, length),
      get logPageSize() { return m.logPageSize; },
      set logPageSize(v: bigint | null) { m.logPageSize = v; },
      get enomsg() { return m.enomsg; },
      set enomsg(v: boolean) { m.enomsg = v; },
      failArc: (from, to, errno, toError = false) => { m.failArc = { from: VFIO_DEVICE_STATE[from], to: VFIO_DEVICE_STATE[to], errno, toError }; },
    };
  }
  /** VFIO_DEVICE_RESETs done on the device */
  resetCount(name: string): number { return findDevice(this.s, name).resets; }
  /** vfio-pci's interrupt state: the enabled index, the vectors wired to an eventfd, INTx masked */
  irqState(name: string): { type: IrqState['type']; wired: number; masked: boolean; err: boolean; req: boolean } {
    const q = findDevice(this.s, name).irq;
    return { type: q.type, wired: q.triggers.filter((t) => t !== null).length, masked: q.intxMasked, err: q.err !== null, req: q.req !== null };
  }
  /**
   * The device raises an interrupt, as its hardware would: vfio-pci's handler signals the eventfd wired
   * to it (INTx: unless masked, and then masks it). Returns whether an eventfd was signalled.
   */
  raiseIrq(name: string, which: keyof typeof VFIO_PCI_IRQ | number, vector = 0): boolean { return irqs.raiseIrq(findDevice(this.s, name), which, vector); }
  /** Signals an eventfd of this process by its fd (what a write(2) of 1 to it does). */
  signalEventfd(fd: number): void { irqs.signalEventfd(this.s, fd); }

  // -------------------------------------------------------------------------------------------------
  // Kernel

  open(p: string): number { return run(this.s, { call: 'open', path: p }, () => files.open(this.s, p)); }
  close(fd: number): void { run(this.s, { call: 'close', fd }, () => files.close(this.s, fd)); }

  ioctl(fd: number, request: number, arg?: number | Buffer): number {
    const e = this.s.fdTable.get(fd);
    const call: CallInfo = { call: 'ioctl', fd, request, requestName: requestName(request, e?.file.kind) };
    if (e) call.path = e.path;
    return run(this.s, call, () => ioctl(this.s, e, request, arg));
  }
  /** As the addon's: the errno of a failure is returned, negative, not thrown. */
  ioctlErrno(fd: number, request: number, arg?: number | Buffer): number {
    try {
      return this.ioctl(fd, request, arg);
    } catch (e) {
      if (isSysError(e)) return e.errno;
      throw e;
    }
  }
  /** As the addon's: one ioctl per record (each logged as its own call), the failing one's error with .index. */
  ioctlEach(fd: number, request: number, records: Buffer, stride: number): number {
    if (stride <= 0 || records.length % stride !== 0) throw new RangeError('records must be a whole number of stride-byte records');
    const count = records.length / stride;
    for (let i = 0; i < count; i++) {
      try {
        this.ioctl(fd, request, records.subarray(i * stride, (i + 1) * stride));
      } catch (e) {
        throw Object.assign(e as Error, { index: i });
      }
    }
    return count;
  }

  pread(fd: number, buf: Buffer, offset: bigint | number): number {
    const e = this.s.fdTable.get(fd);
    return run(this.s, fdCall('pread', fd, e), () => regions.rw(this.s, 'pread', e, buf, BigInt(offset)));
  }
  pwrite(fd: number, buf: Buffer, offset: bigint | number): number {
    const e = this.s.fdTable.get(fd);
    return run(this.s, fdCall('pwrite', fd, e), () => regions.rw(this.s, 'pwrite', e, buf, BigInt(offset)));
  }
  read(fd: number, buf: Buffer, callback: (err: SysErrorLike | null, bytes: number) => void): void { this.stream('read', fd, buf, callback); }
  write(fd: number, buf: Buffer, callback: (err: SysErrorLike | null, bytes: number) => void): void { this.stream('write', fd, buf, callback); }
  /** read(2)/write(2) off the event loop: the answer comes on a later turn, as libuv's threadpool gives it */
  private stream(op: 'read' | 'write', fd: number, buf: Buffer, callback: (err: SysErrorLike | null, bytes: number) => void): void {
    setImmediate(() => {
      let n: number;
      try {
        n = run(this.s, fdCall(op, fd, this.s.fdTable.get(fd)), () => migration.streamIo(op, this.s.fdTable.get(fd), buf));
      } catch (e) {
        callback(e as SysErrorLike, 0);
        return;
      }
      callback(null, n);
    });
  }
  fstat(fd: number): FileStat { return run(this.s, { call: 'fstat', fd }, () => files.fstat(this.s, fd)); }

  // path calls: not logged (only the failure rules and listeners see them)
  stat(p: string): FileStat { return run(this.s, { call: 'stat', path: p }, () => sysfs.stat(this.s, p), false); }
  readlink(p: string): string { return run(this.s, { call: 'readlink', path: p }, () => sysfs.readlink(this.s, p), false); }
  realpath(p: string): string { return run(this.s, { call: 'realpath', path: p }, () => sysfs.realpath(this.s, p), false); }
  readdir(p: string): string[] { return run(this.s, { call: 'readdir', path: p }, () => sysfs.readdir(this.s, p), false); }
  readText(p: string): string { return run(this.s, { call: 'readText', path: p }, () => sysfs.readText(this.s, p), false); }
  /** a file's bytes: its data (/proc/config.gz), or its text */
  readBytes(p: string): Buffer { return run(this.s, { call: 'readBytes', path: p }, () => sysfs.readBytes(this.s, p), false); }
  exists(p: string): boolean { return sysfs.exists(this.s, p); }
  accessible(p: string): boolean { return sysfs.accessible(this.s, p); }
  // writes: logged
  writeText(p: string, text: string): void { run(this.s, { call: 'writeText', path: p }, () => sysfs.writeText(this.s, p, text)); }
  unlink(p: string): void { run(this.s, { call: 'unlink', path: p }, () => sysfs.unlink(this.s, p)); }
  mkdirp(p: string): void { run(this.s, { call: 'mkdirp', path: p }, () => sysfs.mkdirp(this.s, p)); }

  mmap(fd: number, offset: bigint, length: number, writable: boolean): ArrayBuffer {
    const len = memory.addonLength(length);
    const e = this.s.fdTable.get(fd);
    return run(this.s, fdCall('mmap', fd, e), () => regions.mmap(this.s, e, offset, len, writable));
  }
  allocDma(length: number, hugePages: boolean): ArrayBuffer {
    const len = memory.addonLength(length);
    return run(this.s, { call: 'allocDma' }, () => memory.allocDma(this.s, len, hugePages));
  }
  unmap(buffer: ArrayBuffer): void { memory.unmap(this.s, buffer); }
  addressOf(buffer: ArrayBuffer): bigint { return memory.addressOf(this.s, buffer); }
  mmioRead(buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4): number;
  mmioRead(buffer: ArrayBuffer, offset: number, width: 8): bigint;
  mmioRead(buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4 | 8): number | bigint { return memory.mmioRead(this.s, buffer, offset, width); }
  mmioWrite(buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4 | 8, value: number | bigint): void { memory.mmioWrite(this.s, buffer, offset, width, value); }
  mmioDirect(buffer: ArrayBuffer): boolean { return memory.mmioDirect(this.s, buffer); }
  dmaWriteBarrier(): void { this.s.barriers.push({ kind: 'write', at: this.s.mmioLog.length }); }
  dmaReadBarrier(): void { this.s.barriers.push({ kind: 'read', at: this.s.mmioLog.length }); }

  eventfd(): number { return run(this.s, { call: 'eventfd' }, () => irqs.eventfd(this.s)); }
  watch(fd: number, callback: (err: Error | null, count?: bigint) => void, options: { keepAlive?: boolean } = {}): object {
    // not in the call log (libuv's epoll is not a VFIO call), but a rule can fail it
    return run(this.s, { call: 'watch', fd }, () => irqs.watch(this.s, fd, callback, options.keepAlive ?? true), false);
  }
  unwatch(handle: object): void { irqs.unwatch(this.s, handle); }
}
