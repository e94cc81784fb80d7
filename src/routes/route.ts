// The interface both routes implement, as QEMU's VFIOIOMMUClass has a container and an iommufd
// backend: a route's descriptor (filled in at the bottom of each backend, looked up in routes/index.ts)
// says what it is and opens its IOMMU context, and the context binds devices into it.
import { ClosedError, DeviceBusyError, type VfioError } from '../errors.js';
import type { RouteName } from './names.js';
import type { PassedFds } from './passed-fds.js';
import type { DmaBuffer } from '../dma/buffer.js';
import type { DmaMemory } from '../dma/memory.js';
import type { IovaRange } from '../dma/iova.js';
import { DmaMappings, type DmaBackend, type DmaBatchEntry, type DmaMapOptions, type DmaMapping, type RawMap } from '../dma/mappings.js';
import type { DeviceLocation } from '../discovery/locate.js';
import type { Logger } from '../log.js';
import type { Kernel } from '../sys/kernel.js';
import { StepCalls } from '../sys/calls.js';

/** Called with the fd a VMM registers with KVM (KVM_DEV_VFIO_FILE_ADD) before the device is bound. */
export type BeforeBindHook = (file: { route: RouteName; fd: number; path: string }) => void;

/**
 * A file descriptor someone else opened for us (an unprivileged VMM is handed its nodes). The routes
 * only borrow it: whatever they did to it is undone, and it is never closed here (with ownFds, the
 * device closes it last, after everything else).
 */
export interface PassedFd {
  fd: number;
}

/** One device bound into a context: what the device object then owns. */
export interface Binding {
  deviceFd: number;
  nodes: Record<string, string>;
  ids: Record<string, number | string>;
  /** the group fd on the legacy route (the file KVM is given), owned by the context */
  groupFd?: number;
  /** closes the device fd and releases what the context holds for this device (a group reference) */
  release(): void;
}

/** Everything the rest of the library needs to know of a route, in one place per route. */
export interface RouteDescriptor {
  readonly name: RouteName;
  /** the context's node */
  readonly node: '/dev/iommu' | '/dev/vfio/vfio';
  /** the step that opens it */
  readonly openStep: 'open /dev/iommu' | 'open /dev/vfio/vfio';
  /** the sysfs dev attribute of that node (a passed fd is checked against it) */
  readonly nodeDevAttr: string;
  /** the module whose allow_unsafe_interrupts parameter lets this route accept an IOMMU without interrupt isolation */
  readonly unsafeInterruptsModule: 'iommufd' | 'vfio_iommu_type1';
  /** which passed fd is the context node, and which the device side (the cdev, or the group) */
  readonly fds: { readonly context: keyof PassedFds; readonly device: keyof PassedFds };
  /** the device-side node of a located device: its cdev, or its group node (null: it has none) */
  deviceNode(loc: DeviceLocation): string | null;
  /** the device-side node's device number as sysfs gives it, for checking a passed fd */
  deviceDevnum(kernel: Kernel, loc: DeviceLocation): number | null;
  /** whether this route's nodes exist for the device (nothing opened) */
  visible(kernel: Kernel, loc: DeviceLocation): boolean;
  /** opens a new, empty context */
  open(kernel: Kernel, log: Logger): IommuContext;
  /** a context on a node someone else opened (the caller checked it) */
  adopt(kernel: Kernel, log: Logger, passed: PassedFd): IommuContext;
}

/** The module parameter, as it goes on the kernel command line. */
export const unsafeInterruptsParam = (route: RouteDescriptor): string => `${route.unsafeInterruptsModule}.allow_unsafe_interrupts=1`;

/**
 * An IOMMU context: one iommufd with one IOAS, or one legacy container. Devices bound into the same
 * context share one IO address space. Closing it closes the devices still bound into it first.
 */
export abstract class IommuContext implements Disposable, DmaBackend {
  abstract readonly route: RouteName;
  private readonly members = new Set<{ close(): void }>();
  private isClosed = false;
  private closedBy: (() => VfioError) | null = null;
  private dmaState: DmaMappings | null = null;

  constructor(
    protected readonly kernel: Kernel,
    protected readonly log: Logger,
  ) {}

  get closed(): boolean {
    return this.isClosed;
  }

  /** System calls as steps of this context's route (logged; failures become StepErrors). */
  protected steps(): StepCalls {
    return new StepCalls(this.kernel, this.route, this.log);
  }

  /** @internal a device bound into this context registers itself so that close() can close it */
  track(device: { close(): void }): void {
    this.members.add(device);
    this.dmaState?.invalidateGeometry(); // its reserved regions may shrink the IOVA ranges
  }
  /** @internal */
  untrack(device: { close(): void }): void {
    this.members.delete(device);
    this.dmaState?.invalidateGeometry();
  }
  get deviceCount(): number {
    return this.members.size;
  }

  /** @internal binds a located device into this context (from a pre-opened cdev or group fd, if given) */
  abstract bind(loc: DeviceLocation, beforeBind?: BeforeBindHook, passed?: PassedFd): Binding;

  protected abstract closeResources(): void;

  // DMA: one API on both routes; the raw ioctls are each route's (DmaBackend).
  abstract dmaUnavailable(): string | null;
  abstract geometry(): { ranges: IovaRange[]; alignment: bigint };
  abstract mapRaw(vaddr: bigint, iova: bigint, size: bigint, readable: boolean, writable: boolean): void;
  abstract mapRawEach(maps: readonly RawMap[]): void;
  abstract unmapRaw(iova: bigint, size: bigint): void;

  /** Throws the ClosedError (or why it was closed) once the context is closed. */
  protected assertOpen(): void {
    if (this.isClosed) throw this.closedBy?.() ?? new ClosedError(`this ${this.route} context is closed`);
  }

  protected get dma(): DmaMappings {
    this.assertOpen();
    return (this.dmaState ??= new DmaMappings(this, this.kernel));
  }

  /**
   * Maps a DMA buffer (from allocDmaBuffer) for every device of the context; the context keeps it
   * alive until unmapped. A region mapping of another device (its BAR) maps too, for peer-to-peer DMA
   * (legacy route only: iommufd cannot map MMIO); closing that device takes the mapping out first.
   */
  map<M extends DmaMemory = DmaBuffer>(buffer: M, options?: DmaMapOptions): DmaMapping<M> {
    return this.dma.map(buffer, options);
  }

  /** Unmaps a mapping (or the mapping at an IOVA). */
  unmap(mapping: DmaMapping | bigint): void {
    this.dma.unmap(mapping);
  }

  /**
   * Maps many buffers in one call, all or nothing: if the kernel refuses one, those before it are
   * unmapped again and the error names the entry. Entries are buffers or { buffer, ...options }.
   */
  mapBatch<M extends DmaMemory = DmaBuffer>(entries: readonly (M | DmaBatchEntry<M>)[], defaults?: DmaMapOptions): DmaMapping<M>[] {
    return this.dma.mapBatch(entries, defaults);
  }

  /** Unmaps many mappings; mappings that touch go in one ranged unmap (a mapBatch() batch: one system call). */
  unmapBatch(mappings: readonly DmaMapping[]): void {
    this.dma.unmapBatch(mappings);
  }

  /** The IOVA ranges the IOMMU accepts for the devices bound now. */
  iovaRanges(): IovaRange[] {
    return this.dma.ranges();
  }

  /** The current mappings, by IOVA. */
  mappings(): DmaMapping[] {
    return this.dmaState?.list() ?? [];
  }

  /** @internal the kernel dropped every mapping (a container lost its last group) */
  protected dmaReset(): void {
    this.dmaState?.reset();
    this.dmaState?.invalidateGeometry();
  }

  /** Closes the devices still bound into it, then its fds. `why` (internal) says why later calls fail (its device was released). */
  close(why?: () => VfioError): void {
    if (this.isClosed) return;
    // Closed first: a device that owns this context closes it again from its own close().
    this.isClosed = true;
    this.closedBy = why ?? null;
    for (const device of [...this.members].reverse()) device.close();
    this.closeResources(); // the kernel drops the mappings with the fds
    this.dmaState?.reset();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * What this process holds: which context owns each IOMMU group, and which devices are open. The kernel
 * allows one owner per group, and one iommufd bind per device: without this record a second context
 * or open of our own would meet EBUSY, EPERM or EINVAL, and we would blame "another process".
 */
class ProcessHolds {
  private readonly groups = new Map<number, { ctx: IommuContext; devices: number }>();
  private readonly devices = new Set<string>();

  /** Records that `sysfsPath` (in `groupId`, if any) is being bound into ctx; throws if we already hold it elsewhere. */
  claim(ctx: IommuContext, sysfsPath: string, deviceName: string, groupId: number | null): void {
    if (this.devices.has(sysfsPath)) {
      throw new DeviceBusyError(`${deviceName} is already open in this process`, {
        route: ctx.route, step: 'claim device', hint: 'close the other device object first, or share it',
      });
    }
    if (groupId !== null) {
      const held = this.groups.get(groupId);
      if (held && held.ctx !== ctx) {
        throw new DeviceBusyError(
          `IOMMU group ${groupId} (of ${deviceName}) is already held by another ${held.ctx.route} context of this process`,
          { route: ctx.route, step: 'claim group', hint: 'bind every device of one IOMMU group into the same context (the `context` option)' },
        );
      }
      this.groups.set(groupId, { ctx, devices: (held?.devices ?? 0) + 1 });
    }
    this.devices.add(sysfsPath);
  }

  release(sysfsPath: string, groupId: number | null): void {
    this.devices.delete(sysfsPath);
    if (groupId === null) return;
    const held = this.groups.get(groupId);
    if (held && --held.devices <= 0) this.groups.delete(groupId);
  }
}
export const processHolds = new ProcessHolds();

/**
 * Everything one bind holds, released in one place, last taken first: the binding (the device fd and
 * the context's reference for it), this process's claim on the device and its group, and the context
 * when it was made for this device alone. As QEMU's container owns its groups.
 */
export class DeviceHold {
  private binding: Binding | null = null;
  private released = false;

  private constructor(
    readonly context: IommuContext,
    /** the context was made for this device, and closes with it */
    readonly ownsContext: boolean,
    private readonly loc: DeviceLocation,
  ) {}

  /** Claims the device (and its group) for the context; a refused claim closes a context made for it. */
  static take(context: IommuContext, ownsContext: boolean, loc: DeviceLocation): DeviceHold {
    try {
      processHolds.claim(context, loc.sysfsPath, loc.name, loc.group?.id ?? null);
    } catch (e) {
      if (ownsContext) context.close();
      throw e;
    }
    return new DeviceHold(context, ownsContext, loc);
  }

  /** The device got bound: its binding is released with the hold. */
  bound(binding: Binding): Binding {
    this.binding = binding;
    return binding;
  }

  release(why?: () => VfioError): void {
    if (this.released) return;
    this.released = true;
    this.binding?.release();
    processHolds.release(this.loc.sysfsPath, this.loc.group?.id ?? null);
    if (this.ownsContext) this.context.close(why);
  }
}
