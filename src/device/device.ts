// A bound VFIO device: what a VMM holds after bind. It owns its device fd (and, when it was opened
// without a shared context, its IOMMU context) and closes them, in reverse order, exactly once.
import type { DeviceLocation } from '../discovery/locate.js';
import { ClosedError, KernelError, StepError, UsageError, type RouteName } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { bindDevice, type FallbackReport, type RoutePolicy } from '../routes/select.js';
import { processHolds, type BeforeBindHook, type Binding, type IommuContext } from '../routes/route.js';
import { StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import { decode, encode } from '../uapi/struct.js';
import { VFIO, VFIO_DEVICE_FLAGS, VFIO_PCI_REGION, vfio_device_info } from '../uapi/vfio.js';
import { absentRegion, readRegionInfo, type RegionInfo } from './regions.js';

export interface DeviceInfo {
  /** VFIO_DEVICE_FLAGS_* names without the prefix: PCI, RESET, CAPS, ... */
  flags: string[];
  rawFlags: number;
  regions: number;
  irqs: number;
}

/** What `bind --json` prints: the route taken and why. */
export interface RouteReport {
  device: string;
  route: RouteName;
  nodes: Record<string, string>;
  ids: Record<string, number | string>;
  fallback: FallbackReport | null;
  device_info: { flags: string[]; regions: number; irqs: number };
}

export interface OpenDeviceOptions {
  /** auto (default): iommufd, falling back to legacy where that route is unavailable */
  route?: RoutePolicy;
  /** join this IOMMU context (so several devices share one IOAS or container); its route decides */
  context?: IommuContext;
  /** called with the cdev fd (iommufd) or group fd (legacy) before bind: KVM_DEV_VFIO_FILE_ADD goes here */
  beforeBind?: BeforeBindHook;
  logger?: Logger;
  /** the system-call seam; tests inject a fake */
  kernel?: Kernel;
}

export function decodeDeviceFlags(flags: number): string[] {
  return Object.entries(VFIO_DEVICE_FLAGS).filter(([, bit]) => (flags & bit) !== 0).map(([name]) => name);
}

export class VfioDevice implements Disposable {
  readonly route: RouteName;
  readonly report: RouteReport;
  readonly context: IommuContext;
  private readonly cachedInfo: DeviceInfo;
  private regionCache: RegionInfo[] | null = null;
  private isClosed = false;

  /** @internal use openDevice() */
  constructor(
    readonly location: DeviceLocation,
    private readonly kernel: Kernel,
    private readonly log: Logger,
    private readonly binding: Binding,
    private readonly ownsContext: boolean,
    context: IommuContext,
    fallback: FallbackReport | null,
  ) {
    this.context = context;
    this.route = context.route;
    this.cachedInfo = this.readInfo();
    this.report = {
      device: location.name,
      route: this.route,
      nodes: binding.nodes,
      ids: binding.ids,
      fallback,
      device_info: { flags: this.cachedInfo.flags, regions: this.cachedInfo.regions, irqs: this.cachedInfo.irqs },
    };
    context.track(this);
  }

  get name(): string {
    return this.location.name;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** The device fd, for ioctls this library does not wrap. Owned by this object: do not close it. */
  get fd(): number {
    this.assertOpen();
    return this.binding.deviceFd;
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
      this.regionCache = this.kernelStep(() => {
        const calls = this.calls();
        return Array.from({ length: this.cachedInfo.regions }, (_, i) => {
          try {
            return readRegionInfo(calls, this.binding.deviceFd, i, pci);
          } catch (e) {
            // vfio-pci answers EINVAL for a region the device lacks (VGA on a non-VGA device).
            if (e instanceof StepError && e.errno === 'EINVAL') return absentRegion(i, pci);
            throw e;
          }
        });
      });
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
      this.kernel.pread(this.binding.deviceFd, buf, region.offset + BigInt(offset))));
    if (n !== length) throw new KernelError(`short read of ${region.name} at ${offset}: ${n} of ${length} bytes`, { route: this.route, step: `read ${region.name}` });
    return buf;
  }

  /** Writes bytes at `offset` in a region (pwrite on the device fd). */
  writeRegion(which: number | string, offset: number | bigint, data: Buffer): void {
    const region = this.checkedRange(which, offset, data.length, 'write');
    const n = this.kernelStep(() => this.calls().run(`write ${region.name}`, undefined, () =>
      this.kernel.pwrite(this.binding.deviceFd, data, region.offset + BigInt(offset))));
    if (n !== data.length) throw new KernelError(`short write of ${region.name} at ${offset}: ${n} of ${data.length} bytes`, { route: this.route, step: `write ${region.name}` });
  }

  /** PCI config space, little-endian, by access width in bytes. */
  readConfig(offset: number, width: 1 | 2 | 4): number {
    const buf = this.readRegion(VFIO_PCI_REGION.CONFIG, offset, width);
    return width === 1 ? buf.readUInt8(0) : width === 2 ? buf.readUInt16LE(0) : buf.readUInt32LE(0);
  }

  writeConfig(offset: number, width: 1 | 2 | 4, value: number): void {
    const buf = Buffer.alloc(width);
    if (width === 1) buf.writeUInt8(value);
    else if (width === 2) buf.writeUInt16LE(value);
    else buf.writeUInt32LE(value >>> 0);
    this.writeRegion(VFIO_PCI_REGION.CONFIG, offset, buf);
  }

  private checkedRange(which: number | string, offset: number | bigint, length: number, what: 'read' | 'write'): RegionInfo {
    const region = this.region(which);
    if (typeof offset === 'number' && !Number.isSafeInteger(offset)) throw new UsageError(`offset ${offset} is not an integer`);
    if (!Number.isSafeInteger(length)) throw new UsageError(`length ${length} is not an integer`);
    if (what === 'read' ? !region.readable : !region.writable) {
      throw new UsageError(`region ${region.name} of ${this.name} is not ${what === 'read' ? 'readable' : 'writable'}`);
    }
    const start = BigInt(offset);
    if (start < 0n || length < 0 || start + BigInt(length) > region.size) {
      throw new UsageError(`${what} of ${length} bytes at ${start} is outside ${region.name} (size ${region.size})`);
    }
    return region;
  }

  private calls(): StepCalls {
    return new StepCalls(this.kernel, this.route, this.log);
  }

  /** Runs kernel steps on the bound device: a refusal is a KernelError naming the step. */
  private kernelStep<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (e instanceof StepError) {
        throw new KernelError(`the kernel refused ${e.step} on ${this.name}: ${e.errno ?? e.message}`, {
          errno: e.errno, route: e.route, step: e.step, attempts: [e.attempt], cause: e,
        });
      }
      throw e;
    }
  }

  private readInfo(): DeviceInfo {
    const calls = new StepCalls(this.kernel, this.route, this.log);
    const buf = encode(vfio_device_info, { argsz: vfio_device_info.size });
    calls.ioctl('VFIO_DEVICE_GET_INFO', this.binding.deviceFd, VFIO.DEVICE_GET_INFO, buf);
    const info = decode(vfio_device_info, buf);
    return { flags: decodeDeviceFlags(info.flags), rawFlags: info.flags, regions: info.num_regions, irqs: info.num_irqs };
  }

  protected assertOpen(): void {
    if (this.isClosed) throw new ClosedError(`${this.name} is closed`);
  }

  /** Closes the device fd, then (if this device created it) its IOMMU context. Idempotent. */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.context.untrack(this);
    this.binding.release();
    processHolds.release(this.location.sysfsPath, this.location.group?.id ?? null);
    if (this.ownsContext) this.context.close();
    this.log.debug({}, 'closed');
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** @internal binds by the policy and wraps the result; closes everything if the device info fails. */
export function bindAndWrap(loc: DeviceLocation, kernel: Kernel, options: OpenDeviceOptions): VfioDevice {
  const log = (options.logger ?? silentLogger).child({ device: loc.name });
  const bound = bindDevice(loc, {
    kernel,
    log,
    policy: options.route ?? 'auto',
    ...(options.context ? { context: options.context } : {}),
    ...(options.beforeBind ? { beforeBind: options.beforeBind } : {}),
  });
  try {
    const device = new VfioDevice(loc, kernel, log, bound.binding, bound.ownsContext, bound.context, bound.fallback);
    log.info({ report: device.report }, 'bound');
    return device;
  } catch (e) {
    bound.binding.release();
    processHolds.release(loc.sysfsPath, loc.group?.id ?? null);
    if (bound.ownsContext) bound.context.close();
    if (e instanceof StepError) {
      throw new KernelError(`the kernel refused ${e.step} on ${loc.name}, which is bound: ${e.errno ?? e.message}`, {
        errno: e.errno, route: e.route, step: e.step, attempts: [e.attempt], cause: e,
      });
    }
    throw e;
  }
}
