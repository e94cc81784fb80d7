// A bound VFIO device: what a VMM holds after bind. It owns its device fd (and, when it was opened
// without a shared context, its IOMMU context) and closes them, in reverse order, exactly once.
import { EventEmitter } from 'node:events';
import type { DeviceLocation } from '../discovery/locate.js';
import { ClosedError, DeviceReleasedError, KernelError, onKernel, StepError, UnsupportedError, UsageError, type VfioError } from '../errors.js';
import { deviceGetInfo, setIrqEventfds, setIrqNone } from '../ioctl/device.js';
import type { Logger } from '../log.js';
import type { RouteName } from '../routes/names.js';
import type { BoundRoute } from '../routes/select.js';
import type { IommuContext } from '../routes/route.js';
import { StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import { VFIO_DEVICE_FLAGS, VFIO_PCI_IRQ } from '../uapi/vfio.js';
import type { PciCapability, PciIds } from './config.js';
import { absentIrq, IrqSet, IrqVector, readIrqInfo, type IrqInfo } from './irqs.js';
import { HostChannels, type HostSignal } from './host-requests.js';
import { DeviceDmaLogging, type DmaLoggingHost } from './dma-logging.js';
import { DeviceMigration, type MigrationSupport } from './migration.js';
import { RegionMapping, type MmioAccessMode } from './mmio.js';
import { PciFunction } from './pci.js';
import { absentRegion, checkAccess, readRegionInfo, type RegionInfo } from './regions.js';
import { hotResetInfo, resetDevice, type HotResetDevice } from './reset.js';
import type { DeviceInfo, RouteReport, VfioDeviceEvents } from './types.js';

export type { DeviceInfo, DeviceRequest, OpenDeviceOptions, RouteReport, VfioDeviceEvents } from './types.js';
export type { HotResetDevice } from './reset.js';

const DEFAULT_REQUEST_GRACE_MS = 100;

export function decodeDeviceFlags(flags: number): string[] {
  return Object.entries(VFIO_DEVICE_FLAGS).filter(([, bit]) => (flags & bit) !== 0).map(([name]) => name);
}

export class VfioDevice extends EventEmitter<VfioDeviceEvents> implements Disposable {
  readonly route: RouteName;
  readonly report: RouteReport;
  readonly context: IommuContext;
  private readonly cachedInfo: DeviceInfo;
  private regionCache: RegionInfo[] | null = null;
  private readonly regionMappings = new Set<RegionMapping>();
  private readonly irqSets = new Map<number, IrqSet>();
  private isClosed = false;
  /** why it was closed, when not by close(): later calls throw this */
  private closedBecause: string | null = null;
  private pciFacet: PciFunction | null = null;
  private migrationFacet: DeviceMigration | null = null;
  private dmaLoggingFacet: DeviceDmaLogging | null = null;
  private channels: HostChannels | null = null;
  private readonly signals = { request: 0, error: 0 };
  private releaseTimer: NodeJS.Timeout | null = null;

  /** @internal use openDevice() */
  constructor(
    readonly location: DeviceLocation,
    private readonly kernel: Kernel,
    private readonly log: Logger,
    /** what the bind holds (binding, claims, a context made for this device), released by close() */
    private readonly bound: BoundRoute,
    /** runs last in close(): closes passed fds the device was given to own */
    private readonly afterClose?: () => void,
    private readonly requestGraceMs = DEFAULT_REQUEST_GRACE_MS,
  ) {
    super();
    this.context = bound.hold.context;
    this.route = bound.route;
    this.cachedInfo = this.readInfo();
    if (this.cachedInfo.flags.includes('PCI')) {
      this.channels = this.kernelStep(() => HostChannels.arm(this.kernel, this.calls(), bound.binding.deviceFd, this.cachedInfo.irqs,
        (signal, count) => this.hostSignal(signal, Number(count)),
        (signal, e) => this.watchFailed(signal, e)));
    }
    this.report = {
      device: location.name,
      route: this.route,
      nodes: bound.binding.nodes,
      ids: bound.binding.ids,
      fallback: bound.fallback,
      device_info: { flags: this.cachedInfo.flags, regions: this.cachedInfo.regions, irqs: this.cachedInfo.irqs },
    };
    this.context.track(this);
  }

  get name(): string {
    return this.location.name;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Whether the host can ask for the device back (REQ) and report its errors (ERR), as the kernel offers them. */
  get hostChannels(): { request: boolean; error: boolean } {
    return { request: this.channels?.has('request') ?? false, error: this.channels?.has('error') ?? false };
  }

  /** A channel's watch could not start (after the bind returned): said where a user sees it, not thrown into the loop. */
  private watchFailed(signal: HostSignal, e: unknown): void {
    const message = `${this.name}: the ${signal} channel's eventfd cannot be watched (${e instanceof Error ? e.message : String(e)}): the host's ${signal === 'request' ? 'requests for the device go unanswered until it is closed' : 'error reports go unheard'}`;
    this.log.warn({ signal, err: e }, message);
    process.emitWarning(message, { code: 'VFIO_BIND_WATCH_FAILED' });
  }

  private hostSignal(signal: HostSignal, count: number): void {
    if (this.isClosed) return;
    this.signals[signal] += count;
    if (signal === 'error') {
      if (!this.emit('device-error', { device: this.name, count: this.signals.error })) this.log.warn({ count: this.signals.error }, 'the device reported an error (AER)');
      return;
    }
    if (this.listenerCount('request') > 0) {
      this.emit('request', { device: this.name, count: this.signals.request, release: () => this.release() });
      return;
    }
    this.log.info({ count: this.signals.request, graceMs: this.requestGraceMs }, 'the host asked for the device back, and nothing listens: releasing it');
    this.releaseTimer ??= setTimeout(() => this.release(), this.requestGraceMs);
  }

  /** Gives the device back at the host's request: closed, and every later call says why. */
  private release(): void {
    if (this.isClosed) return;
    const reason = `the host asked for ${this.name} back (a VFIO device request: an unbind, a remove or a hot-unplug), and it was released`;
    this.shutdown(reason);
    this.emit('released', { device: this.name, reason });
  }

  private closedError(): VfioError {
    return this.closedBecause ? new DeviceReleasedError(this.closedBecause) : new ClosedError(`${this.name} is closed`);
  }

  /** The device fd, for ioctls this library does not wrap. Owned by this object: do not close it. */
  get fd(): number {
    this.assertOpen();
    return this.bound.binding.deviceFd;
  }

  /** The group fd on the legacy route (what KVM_DEV_VFIO_FILE_ADD takes there), else null. Owned by the context. */
  get groupFd(): number | null {
    this.assertOpen();
    return this.bound.binding.groupFd ?? null;
  }

  info(): DeviceInfo {
    this.assertOpen();
    return { ...this.cachedInfo, flags: [...this.cachedInfo.flags] };
  }

  /** Every region's info (VFIO_DEVICE_GET_REGION_INFO with its capability chain). */
  regions(): RegionInfo[] {
    this.assertOpen();
    if (!this.regionCache) {
      const pci = this.cachedInfo.flags.includes('PCI');
      this.regionCache = this.readEach(this.cachedInfo.regions,
        (calls, i) => readRegionInfo(calls, this.bound.binding.deviceFd, i, pci), (i) => absentRegion(i, pci));
    }
    return this.regionCache.map((r) => ({ ...r }));
  }

  /** One region, by index or name (BAR0, CONFIG, ...). */
  region(which: number | string): RegionInfo {
    const regions = this.regions();
    const found = typeof which === 'number' ? regions[which] : regions.find((r) => r.name === which.toUpperCase());
    if (!found) throw new UsageError(`${this.name} has no region ${String(which)} (it has ${regions.map((r) => r.name).join(', ')})`);
    return found;
  }

  /** Reads `length` bytes at `offset` in a region (pread on the device fd). */
  readRegion(which: number | string, offset: number | bigint, length: number): Buffer {
    const region = this.checkedRange(which, offset, length, 'read');
    const buf = Buffer.alloc(length);
    const n = this.kernelStep(() => this.calls().run(`read ${region.name}`, undefined, () =>
      this.kernel.pread(this.bound.binding.deviceFd, buf, region.offset + BigInt(offset))));
    if (n !== length) throw new KernelError(`short read of ${region.name} at ${offset}: ${n} of ${length} bytes`, { route: this.route, step: `read ${region.name}` });
    return buf;
  }

  /** Writes bytes at `offset` in a region (pwrite on the device fd). */
  writeRegion(which: number | string, offset: number | bigint, data: Buffer): void {
    const region = this.checkedRange(which, offset, data.length, 'write');
    const n = this.kernelStep(() => this.calls().run(`write ${region.name}`, undefined, () =>
      this.kernel.pwrite(this.bound.binding.deviceFd, data, region.offset + BigInt(offset))));
    if (n !== data.length) throw new KernelError(`short write of ${region.name} at ${offset}: ${n} of ${data.length} bytes`, { route: this.route, step: `write ${region.name}` });
  }

  /** The PCI facet: config space, ids, capabilities, the command register (src/device/pci.ts). */
  get pci(): PciFunction {
    this.assertOpen();
    return (this.pciFacet ??= new PciFunction(this));
  }

  /** PCI config space, little-endian, by access width in bytes (as pci.readConfig). */
  readConfig(offset: number, width: 1 | 2 | 4): number {
    return this.pci.readConfig(offset, width);
  }

  writeConfig(offset: number, width: 1 | 2 | 4, value: number): void {
    this.pci.writeConfig(offset, width, value);
  }

  /** Vendor, device, revision, class and subsystem ids from config space. */
  pciIds(): PciIds {
    return this.pci.ids();
  }

  /** The standard PCI capability list. */
  pciCapabilities(): PciCapability[] {
    return this.pci.capabilities();
  }

  /** The command register; setCommand() sets bits (MEMORY, MASTER for DMA, ...) and clears others as given. */
  command(): number {
    return this.pci.command();
  }

  setCommand(set: number, clear = 0): void {
    this.pci.setCommand(set, clear);
  }

  /**
   * Maps an mmap-able region (a BAR) into the process, or one area of a region the kernel lets map
   * only in parts (sparse mmap). Closed with the device. `access: 'call'` keeps every register access
   * an addon call, where typed-array views would otherwise be used (mapping.access tells which).
   */
  mapRegion(which: number | string, options: { area?: number; writable?: boolean; access?: MmioAccessMode } = {}): RegionMapping {
    if (options.access !== undefined && options.access !== 'auto' && options.access !== 'call') {
      throw new UsageError(`access must be 'auto' or 'call', not ${JSON.stringify(options.access)}`);
    }
    const region = this.region(which);
    if (!region.mmappable || region.size === 0n) {
      throw new UsageError(`region ${region.name} of ${this.name} cannot be mmapped: use readRegion()/writeRegion()`);
    }
    let offset = 0n;
    let size = region.size;
    if (region.sparseMmap) {
      const area = region.sparseMmap[options.area ?? 0];
      if (!area) throw new UsageError(`region ${region.name} has ${region.sparseMmap.length} mmap-able area(s); there is no area ${options.area ?? 0}`);
      offset = area.offset;
      size = area.size;
    } else if (options.area !== undefined && options.area !== 0) {
      throw new UsageError(`region ${region.name} maps whole: it has no area ${options.area}`);
    }
    const writable = options.writable ?? region.writable;
    const memory = this.kernelStep(() => this.calls().run(`mmap ${region.name}`, undefined, () =>
      this.kernel.mmap(this.bound.binding.deviceFd, region.offset + offset, Number(size), writable)));
    const mapping = new RegionMapping(this.kernel, region, offset, memory, writable, (m) => this.regionMappings.delete(m), this.name, options.access);
    this.regionMappings.add(mapping);
    return mapping;
  }

  /** Every IRQ index's info (INTX, MSI, MSIX, ERR, REQ on PCI). */
  irqs(): IrqInfo[] {
    this.assertOpen();
    const pci = this.cachedInfo.flags.includes('PCI');
    return this.readEach(this.cachedInfo.irqs, (calls, i) => readIrqInfo(calls, this.bound.binding.deviceFd, i, pci), (i) => absentIrq(i, pci));
  }

  irq(which: number | string): IrqInfo {
    const irqs = this.irqs();
    const found = typeof which === 'number' ? irqs[which] : irqs.find((i) => i.name === which.toUpperCase());
    if (!found) throw new UsageError(`${this.name} has no IRQ index ${String(which)} (it has ${irqs.map((i) => i.name).join(', ')})`);
    return found;
  }

  /**
   * Wires `count` vectors (default: all) of an IRQ index to eventfds. One index at a time: the
   * kernel does not mix INTx, MSI and MSI-X. Disabled with the device.
   */
  enableIrqs(which: number | string, options: { count?: number } = {}): IrqSet {
    const info = this.irq(which);
    const count = options.count ?? info.count;
    if (info.count === 0) throw new UsageError(`${this.name} has no ${info.name} interrupts`);
    const channel = info.index === VFIO_PCI_IRQ.REQ ? 'request' : info.index === VFIO_PCI_IRQ.ERR ? 'error' : null;
    if (channel && this.channels?.has(channel)) {
      throw new UsageError(`${info.name} of ${this.name} is the library's ${channel} channel: listen for the device's '${channel === 'request' ? 'request' : 'device-error'}' event instead`);
    }
    if (!Number.isInteger(count) || count < 1 || count > info.count) {
      throw new UsageError(`${info.name} of ${this.name} has ${info.count} vector(s); cannot enable ${count}`);
    }
    if (!info.eventfd) throw new UnsupportedError(`${info.name} of ${this.name} cannot signal an eventfd`);
    // INTx, MSI and MSI-X exclude each other (one interrupt mode at a time); ERR and REQ sit beside them.
    const MODES = ['INTX', 'MSI', 'MSIX'];
    const clash = [...this.irqSets.values()].find((s) => !s.disabled && (s.info.index === info.index || (MODES.includes(s.info.name) && MODES.includes(info.name))));
    if (clash) throw new UsageError(`${clash.info.name} is enabled on ${this.name}: disable it before enabling ${info.name}`);
    const vectors: IrqVector[] = [];
    try {
      const isIntx = info.name === 'INTX';
      for (let v = 0; v < count; v++) {
        const efd = this.kernelStep(() => this.calls().run('eventfd', undefined, () => this.kernel.eventfd()));
        vectors.push(new IrqVector(this.kernel, v, efd, isIntx ? () => this.kernelStep(() => setIrqNone(this.calls(), this.bound.binding.deviceFd, info.index, 'unmask', 0, 1)) : null));
      }
      this.kernelStep(() => setIrqEventfds(this.calls(), this.bound.binding.deviceFd, info.index, 0, vectors.map((v) => v.eventfd)));
    } catch (e) {
      for (const v of vectors) v.close();
      throw e;
    }
    const set = new IrqSet(info, vectors,
      () => this.kernelStep(() => setIrqNone(this.calls(), this.bound.binding.deviceFd, info.index, 'disable')),
      (s) => this.irqSets.delete(s.info.index));
    this.irqSets.set(info.index, set);
    return set;
  }

  /** VFIO_DEVICE_RESET: a function-level, power-management or bus reset, whichever the kernel can do. */
  reset(): void {
    this.assertOpen();
    this.kernelStep(() => resetDevice(this.calls(), this.bound.binding.deviceFd, this.name, this.cachedInfo.flags.includes('RESET')));
  }

  /** What the device's migration supports (STOP_COPY, P2P, PRE_COPY), or null when it has none. */
  migration(): MigrationSupport | null {
    return this.migrator.support();
  }

  /** VFIO migration v2: the device's state machine, its data sessions and streams (src/device/migration.ts). */
  get migrator(): DeviceMigration {
    this.assertOpen();
    return (this.migrationFacet ??= new DeviceMigration(this.facetHost()));
  }

  /** Device DMA logging: the device records the pages it writes (src/device/dma-logging.ts). */
  get dmaLogging(): DeviceDmaLogging {
    this.assertOpen();
    return (this.dmaLoggingFacet ??= new DeviceDmaLogging(this.facetHost()));
  }

  /** what a facet (migration, DMA logging) may use of its device */
  private facetHost(): DmaLoggingHost {
    return {
      kernel: this.kernel, name: this.name, log: this.log, calls: () => this.calls(),
      deviceFd: () => this.bound.binding.deviceFd, assertOpen: () => this.assertOpen(), mappings: () => this.context.mappings(),
    };
  }

  /** Which devices a PCI hot (bus) reset of this device would reset too (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO). */
  hotResetInfo(): HotResetDevice[] {
    this.assertOpen();
    return this.kernelStep(() => hotResetInfo(this.calls(), this.bound.binding.deviceFd));
  }

  private checkedRange(which: number | string, offset: number | bigint, length: number, what: 'read' | 'write'): RegionInfo {
    return checkAccess(this.region(which), this.name, offset, length, what);
  }

  /**
   * Reads the info of every region or IRQ index. vfio-pci answers EINVAL for an index the device
   * lacks (the VGA region of a non-VGA device, ERR on one that is not PCIe): that index reads as absent.
   */
  private readEach<T>(count: number, read: (calls: StepCalls, index: number) => T, absent: (index: number) => T): T[] {
    return this.kernelStep(() => {
      const calls = this.calls();
      return Array.from({ length: count }, (_, i) => {
        try {
          return read(calls, i);
        } catch (e) {
          if (e instanceof StepError && e.errno === 'EINVAL') return absent(i);
          throw e;
        }
      });
    });
  }

  private calls(): StepCalls {
    return new StepCalls(this.kernel, this.route, this.log);
  }

  /** Runs kernel steps on the bound device: a refusal is a KernelError naming the step. */
  private kernelStep<T>(fn: () => T): T {
    return onKernel(this.name, fn);
  }

  private readInfo(): DeviceInfo {
    const info = deviceGetInfo(this.calls(), this.bound.binding.deviceFd);
    return { flags: decodeDeviceFlags(info.flags), rawFlags: info.flags, regions: info.numRegions, irqs: info.numIrqs };
  }

  protected assertOpen(): void {
    if (this.isClosed) throw this.closedError();
  }

  /** Disables its interrupts, unmaps its regions, closes the device fd, then (if this device created it) its IOMMU context. Idempotent. */
  close(): void {
    this.shutdown(null);
  }

  private shutdown(reason: string | null): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closedBecause = reason;
    if (this.releaseTimer) clearTimeout(this.releaseTimer);
    const why = (): VfioError => this.closedError();
    this.channels?.close(this.calls(), this.bound.binding.deviceFd);
    this.migrationFacet?.shutdown(why());
    this.dmaLoggingFacet?.shutdown();
    for (const set of [...this.irqSets.values()]) {
      try {
        set.disable(why);
      } catch {
        // the eventfds are closed either way, and closing the device fd below frees its interrupts
      }
    }
    for (const mapping of [...this.regionMappings]) mapping.close(why);
    this.context.untrack(this);
    this.bound.hold.release(reason === null ? undefined : why);
    this.afterClose?.();
    this.log.debug({ reason }, 'closed');
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
