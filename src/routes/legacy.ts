// The legacy route: a VFIO container (/dev/vfio/vfio) holding IOMMU groups (/dev/vfio/N, or
// /dev/vfio/noiommu-N), devices taken from their group with VFIO_GROUP_GET_DEVICE_FD.
import { readDevnum, type DeviceLocation } from '../discovery/locate.js';
import type { IovaRange } from '../dma/iova.js';
import type { DmaMapping, RawMap } from '../dma/mappings.js';
import {
  checkExtension,
  getApiVersion,
  groupGetDeviceFd,
  groupGetStatus,
  groupSetContainer,
  groupUnsetContainer,
  iommuGetInfo,
  iommuMapDma,
  iommuMapDmaEach,
  iommuUnmapDma,
  setIommu,
} from '../ioctl/container.js';
import type { Logger } from '../log.js';
import { closeQuietly, FdStack, quietly, StepCalls } from '../sys/calls.js';
import { makedev, type Kernel } from '../sys/kernel.js';
import { VFIO_API_VERSION, VFIO_NOIOMMU_IOMMU, VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU } from '../uapi/vfio.js';
import { IommuContext, type BeforeBindHook, type Binding, type PassedFd, type RouteDescriptor } from './route.js';
import { Type1DirtyTracker } from './type1-dirty.js';
import { type1DirtyPages } from '../ioctl/dirty-pages.js';
import { kernelRefused, onKernel, StepError, UnsupportedError, UsageError } from '../errors.js';

export type LegacyIommuType = 'type1v2' | 'type1' | 'noiommu';
const IOMMU_TYPE_NUMBER: Record<LegacyIommuType, number> = {
  type1v2: VFIO_TYPE1v2_IOMMU,
  type1: VFIO_TYPE1_IOMMU,
  noiommu: VFIO_NOIOMMU_IOMMU,
};

interface HeldGroup {
  fd: number;
  node: string;
  devices: number;
  /** false for a group fd lent by the caller: taken out of the container, never closed here */
  owned: boolean;
}

export class ContainerContext extends IommuContext {
  readonly route = 'legacy' as const;
  readonly node = LEGACY_ROUTE.node;
  private type: LegacyIommuType | null = null;
  private readonly groups = new Map<number, HeldGroup>();
  private tracker: Type1DirtyTracker | null = null;

  private constructor(kernel: Kernel, log: Logger, readonly fd: number, private readonly ownsFd = true) {
    super(kernel, log);
  }

  /** Opens /dev/vfio/vfio and checks the API version (steps "open /dev/vfio/vfio", VFIO_GET_API_VERSION). */
  static open(kernel: Kernel, log: Logger): ContainerContext {
    const calls = new StepCalls(kernel, 'legacy', log);
    const fd = calls.open(LEGACY_ROUTE.openStep, LEGACY_ROUTE.node);
    try {
      checkApiVersion(calls, fd);
    } catch (e) {
      closeQuietly(kernel, fd);
      throw e;
    }
    return new ContainerContext(kernel, log, fd);
  }

  /** Uses a container opened by someone else (checked by the caller to be /dev/vfio/vfio). */
  static adopt(kernel: Kernel, log: Logger, passed: PassedFd): ContainerContext {
    checkApiVersion(new StepCalls(kernel, 'legacy', log), passed.fd);
    return new ContainerContext(kernel, log, passed.fd, false);
  }

  /** The IOMMU type set on the container while it holds groups. */
  get iommuType(): LegacyIommuType | null {
    return this.type;
  }

  bind(loc: DeviceLocation, beforeBind?: BeforeBindHook, passed?: PassedFd): Binding {
    const calls = this.steps();
    const group = loc.group;
    if (!group) {
      return calls.fail('find group', 'ENOENT', `${loc.name} has no IOMMU group`, `${loc.sysfsPath}/iommu_group`);
    }
    const fds = new FdStack(this.kernel);
    let held = this.groups.get(group.id);
    const newGroup = held === undefined;
    try {
      if (!held) {
        const groupFd = passed ? passed.fd : fds.push(calls.open('open group', group.node));
        if (!groupGetStatus(calls, groupFd).viable) {
          calls.fail('VFIO_GROUP_GET_STATUS', null, `IOMMU group ${group.id} is not viable`, group.node);
        }
        beforeBind?.({ route: 'legacy', fd: groupFd, path: group.node });
        // The container filters IOMMU drivers only once a group is in it (TYPE1v2 is "supported" even
        // with no IOMMU at all before that), so the group goes in first, as QEMU does.
        groupSetContainer(calls, groupFd, this.fd);
        // A container without groups has no IOMMU type: the kernel unsets it when the last group
        // leaves ("deprivileges" the container), so the type is set again for the next first group.
        if (this.groups.size === 0) {
          const type = this.chooseType(calls, group.noiommu);
          setIommu(calls, this.fd, IOMMU_TYPE_NUMBER[type]);
          this.type = type;
        } else if ((this.type === 'noiommu') !== group.noiommu) {
          calls.fail('VFIO_GROUP_SET_CONTAINER', null,
            `group ${group.id} is ${group.noiommu ? '' : 'not '}a noiommu group, and this container's IOMMU type is ${this.type}`, group.node);
        }
        held = { fd: groupFd, node: passed ? `fd ${passed.fd}` : group.node, devices: 0, owned: !passed };
      }
      const deviceFd = fds.push(groupGetDeviceFd(calls, held.fd, loc.name));
      fds.release();
      if (newGroup) this.groups.set(group.id, held);
      held.devices++;
      const groupId = group.id;
      return {
        deviceFd,
        groupFd: held.fd,
        nodes: { container: this.node, group: held.node },
        ids: { group: groupId, iommu_type: this.type! },
        release: () => {
          closeQuietly(this.kernel, deviceFd);
          this.releaseGroup(groupId);
        },
      };
    } catch (e) {
      fds.closeAll();
      // a lent group fd stays open: take it out of our container (a no-op if it never got in)
      if (newGroup && passed) quietly(() => groupUnsetContainer(calls, passed.fd));
      if (this.groups.size === 0) this.type = null; // the failed group was the only one: the kernel unset the type
      throw e;
    }
  }

  /** type1v2, else type1; noiommu for a noiommu group (step VFIO_CHECK_EXTENSION). */
  private chooseType(calls: StepCalls, noiommu: boolean): LegacyIommuType {
    const supports = (type: LegacyIommuType): boolean => checkExtension(calls, this.fd, IOMMU_TYPE_NUMBER[type]);
    if (noiommu) {
      if (supports('noiommu')) return 'noiommu';
      return calls.fail('VFIO_CHECK_EXTENSION', null, 'the container does not offer the noiommu IOMMU type', LEGACY_ROUTE.node);
    }
    if (supports('type1v2')) return 'type1v2';
    if (supports('type1')) return 'type1';
    return calls.fail('VFIO_CHECK_EXTENSION', null, 'the container offers neither the type1v2 nor the type1 IOMMU', LEGACY_ROUTE.node);
  }

  private releaseGroup(groupId: number): void {
    const held = this.groups.get(groupId);
    if (!held || --held.devices > 0) return;
    // Closing the last fd of a group takes it out of the container; the last group takes the type too.
    // A lent group fd is only taken out (its owner closes it).
    this.groups.delete(groupId);
    this.letGo(held);
    if (this.groups.size === 0) {
      this.type = null;
      this.dmaReset(); // the container lost its IOMMU, and the mappings with it
      this.dropTracker();
    }
  }

  /** Closes a group fd of ours, which takes it out of the container; a lent one is only taken out (its owner closes it). */
  private letGo(held: HeldGroup): void {
    if (held.owned) closeQuietly(this.kernel, held.fd);
    else quietly(() => groupUnsetContainer(this.steps(), held.fd));
  }

  protected closeResources(): void {
    this.dropTracker();
    for (const held of this.groups.values()) this.letGo(held);
    this.groups.clear();
    if (this.ownsFd) closeQuietly(this.kernel, this.fd);
  }

  dmaUnavailable(): string | null {
    if (this.type === 'noiommu') return 'its device is in noiommu mode: no IOMMU translates the device\'s DMA';
    if (this.type === null) return 'no device has joined it yet (a container has no IOMMU until its first group does)';
    return null;
  }

  geometry(): { ranges: IovaRange[]; alignment: bigint } {
    const info = iommuGetInfo(this.steps(), this.fd);
    // the smallest IOMMU page size is the alignment of IOVAs and sizes
    const pgsizes = info.pageSizes ?? 4096n;
    const alignment = pgsizes & -pgsizes;
    // kernels without the IOVA range capability accept the whole space
    return { ranges: info.ranges ?? [{ start: 0n, last: 0xffff_ffff_ffff_ffffn }], alignment: alignment > 0n ? alignment : 4096n };
  }

  /**
   * Starts type1's dirty page tracking for every mapping of the container, now and later
   * (VFIO_IOMMU_DIRTY_PAGES START). Only pages a VFIO driver pinned can be told apart: with a device
   * behind a real IOMMU in the container, every mapped page reports dirty.
   */
  startDirtyTracking(): Type1DirtyTracker {
    if (this.tracker) throw new UsageError('this container already tracks dirty pages: use that tracker, or stop() it first');
    const why = this.dmaUnavailable();
    if (why) throw new UnsupportedError(`this legacy context cannot track dirty pages: ${why}`);
    const calls = this.steps();
    const info = onKernel('the container', () => iommuGetInfo(calls, this.fd)).dirtyTracking;
    if (!info) throw new UnsupportedError('this kernel\'s type1 IOMMU has no dirty page tracking (no VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION; 5.8+ has it)');
    try {
      type1DirtyPages(calls, this.fd, 'START');
    } catch (e) {
      if (e instanceof StepError && e.errno === 'EACCES') throw new UnsupportedError('type1 tracks dirty pages only in v2 mode (VFIO_TYPE1v2_IOMMU); this container is v1', e.details());
      throw e instanceof StepError ? kernelRefused(e, 'the container') : e;
    }
    const host = {
      kernel: this.kernel, fd: this.fd, steps: () => this.steps(), mappings: () => this.mappings(),
      unmapWith: (m: DmaMapping, raw: (iova: bigint, size: bigint) => void) => this.dma.unmap(m, raw),
      assertOpen: () => this.assertOpen(),
    };
    const tracker = new Type1DirtyTracker(host, info.pageSizes & -info.pageSizes, info.maxBitmapBytes, (t) => {
      if (this.tracker === t) this.tracker = null;
    });
    this.tracker = tracker;
    return tracker;
  }

  /** The running dirty page tracker, or null. */
  get dirtyTracker(): Type1DirtyTracker | null {
    return this.tracker;
  }

  private dropTracker(): void {
    this.tracker?.lost();
    this.tracker = null;
  }

  mapRaw(vaddr: bigint, iova: bigint, size: bigint, readable: boolean, writable: boolean): void {
    iommuMapDma(this.steps(), this.fd, { vaddr, iova, size, readable, writable });
  }

  mapRawEach(maps: readonly RawMap[]): void {
    iommuMapDmaEach(this.steps(), this.fd, maps);
  }

  unmapRaw(iova: bigint, size: bigint): void {
    const calls = this.steps();
    const unmapped = iommuUnmapDma(calls, this.fd, iova, size);
    if (unmapped !== size) calls.fail('VFIO_IOMMU_UNMAP_DMA', null, `the kernel unmapped ${unmapped} of ${size} bytes`);
  }
}

function checkApiVersion(calls: StepCalls, fd: number): void {
  const version = getApiVersion(calls, fd);
  if (version !== VFIO_API_VERSION) {
    calls.fail('VFIO_GET_API_VERSION', null, `the kernel's VFIO API version is ${version}, not ${VFIO_API_VERSION}`, LEGACY_ROUTE.node);
  }
}

/** The legacy route: the container /dev/vfio/vfio and the device's group node (/dev/vfio/N, or noiommu-N). */
export const LEGACY_ROUTE: RouteDescriptor = {
  name: 'legacy',
  node: '/dev/vfio/vfio',
  openStep: 'open /dev/vfio/vfio',
  nodeDevAttr: '/sys/class/misc/vfio/dev',
  unsafeInterruptsModule: 'vfio_iommu_type1',
  fds: { context: 'container', device: 'group' },
  deviceNode: (loc) => loc.group?.node ?? null,
  deviceDevnum: (kernel, loc) => {
    const g = loc.group;
    const d = g ? readDevnum(kernel, `/sys/class/vfio/${g.noiommu ? 'noiommu-' : ''}${g.id}/dev`) : null;
    return d ? makedev(d.major, d.minor) : null;
  },
  visible: (kernel, loc) => loc.group !== null && kernel.exists('/dev/vfio/vfio') && kernel.exists(loc.group.node),
  open: (kernel, log) => ContainerContext.open(kernel, log),
  adopt: (kernel, log, passed) => ContainerContext.adopt(kernel, log, passed),
};
