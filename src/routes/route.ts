// The interface both routes implement, as QEMU's VFIOIOMMUClass has a container and an iommufd
// backend: a route creates an IOMMU context and binds devices into it.
import { ClosedError, DeviceBusyError, type RouteName } from '../errors.js';
import type { DmaBuffer } from '../dma/buffer.js';
import type { IovaRange } from '../dma/iova.js';
import { DmaMappings, type DmaBackend, type DmaMapOptions, type DmaMapping } from '../dma/mappings.js';
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

/**
 * An IOMMU context: one iommufd with one IOAS, or one legacy container. Devices bound into the same
 * context share one IO address space. Closing it closes the devices still bound into it first.
 */
export abstract class IommuContext implements Disposable, DmaBackend {
  abstract readonly route: RouteName;
  private readonly members = new Set<{ close(): void }>();
  private isClosed = false;
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
  abstract unmapRaw(iova: bigint, size: bigint): void;

  protected get dma(): DmaMappings {
    if (this.isClosed) throw new ClosedError(`this ${this.route} context is closed`);
    return (this.dmaState ??= new DmaMappings(this, this.kernel));
  }

  /** Maps a DMA buffer (from allocDmaBuffer) for every device of the context; the context keeps it alive until unmapped. */
  map(buffer: DmaBuffer, options?: DmaMapOptions): DmaMapping {
    return this.dma.map(buffer, options);
  }

  /** Unmaps a mapping (or the mapping at an IOVA). */
  unmap(mapping: DmaMapping | bigint): void {
    this.dma.unmap(mapping);
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

  close(): void {
    if (this.isClosed) return;
    // Closed first: a device that owns this context closes it again from its own close().
    this.isClosed = true;
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
