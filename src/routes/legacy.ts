// The legacy route: a VFIO container (/dev/vfio/vfio) holding IOMMU groups (/dev/vfio/N, or
// /dev/vfio/noiommu-N), devices taken from their group with VFIO_GROUP_GET_DEVICE_FD.
import type { DeviceLocation } from '../discovery/locate.js';
import type { Logger } from '../log.js';
import { closeQuietly, FdStack, StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import { decode, encode } from '../uapi/struct.js';
import {
  VFIO,
  VFIO_API_VERSION,
  VFIO_DMA_MAP_FLAG,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_NOIOMMU_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  capabilities,
  vfio_group_status,
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  vfio_iommu_type1_info,
  vfio_iommu_type1_info_cap_iova_range,
  vfio_iova_range,
} from '../uapi/vfio.js';
import type { IovaRange } from '../dma/iova.js';
import { IommuContext, type BeforeBindHook, type Binding, type PassedFd } from './route.js';

export const CONTAINER_NODE = '/dev/vfio/vfio';

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
  readonly node = CONTAINER_NODE;
  private type: LegacyIommuType | null = null;
  private readonly groups = new Map<number, HeldGroup>();

  private constructor(kernel: Kernel, log: Logger, readonly fd: number, private readonly ownsFd = true) {
    super(kernel, log);
  }

  /** Opens /dev/vfio/vfio and checks the API version (steps "open /dev/vfio/vfio", VFIO_GET_API_VERSION). */
  static open(kernel: Kernel, log: Logger): ContainerContext {
    const calls = new StepCalls(kernel, 'legacy', log);
    const fd = calls.open('open /dev/vfio/vfio', CONTAINER_NODE);
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
        const status = encode(vfio_group_status, { argsz: vfio_group_status.size });
        calls.ioctl('VFIO_GROUP_GET_STATUS', groupFd, VFIO.GROUP_GET_STATUS, status);
        if ((decode(vfio_group_status, status).flags & VFIO_GROUP_FLAGS_VIABLE) === 0) {
          calls.fail('VFIO_GROUP_GET_STATUS', null, `IOMMU group ${group.id} is not viable`, group.node);
        }
        beforeBind?.({ route: 'legacy', fd: groupFd, path: group.node });
        // The container filters IOMMU drivers only once a group is in it (TYPE1v2 is "supported" even
        // with no IOMMU at all before that), so the group goes in first, as QEMU does.
        calls.ioctl('VFIO_GROUP_SET_CONTAINER', groupFd, VFIO.GROUP_SET_CONTAINER, int32(this.fd));
        // A container without groups has no IOMMU type: the kernel unsets it when the last group
        // leaves ("deprivileges" the container), so the type is set again for the next first group.
        if (this.groups.size === 0) {
          const type = this.chooseType(calls, group.noiommu);
          calls.ioctl('VFIO_SET_IOMMU', this.fd, VFIO.SET_IOMMU, IOMMU_TYPE_NUMBER[type]);
          this.type = type;
        } else if ((this.type === 'noiommu') !== group.noiommu) {
          calls.fail('VFIO_GROUP_SET_CONTAINER', null,
            `group ${group.id} is ${group.noiommu ? '' : 'not '}a noiommu group, and this container's IOMMU type is ${this.type}`, group.node);
        }
        held = { fd: groupFd, node: passed ? `fd ${passed.fd}` : group.node, devices: 0, owned: !passed };
      }
      const deviceFd = fds.push(calls.ioctl('VFIO_GROUP_GET_DEVICE_FD', held.fd, VFIO.GROUP_GET_DEVICE_FD, cString(loc.name)));
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
      if (newGroup && passed) unsetContainer(this.kernel, passed.fd);
      if (this.groups.size === 0) this.type = null; // the failed group was the only one: the kernel unset the type
      throw e;
    }
  }

  /** type1v2, else type1; noiommu for a noiommu group (step VFIO_CHECK_EXTENSION). */
  private chooseType(calls: StepCalls, noiommu: boolean): LegacyIommuType {
    const supports = (type: LegacyIommuType): boolean =>
      calls.ioctl('VFIO_CHECK_EXTENSION', this.fd, VFIO.CHECK_EXTENSION, IOMMU_TYPE_NUMBER[type]) > 0;
    if (noiommu) {
      if (supports('noiommu')) return 'noiommu';
      return calls.fail('VFIO_CHECK_EXTENSION', null, 'the container does not offer the noiommu IOMMU type', CONTAINER_NODE);
    }
    if (supports('type1v2')) return 'type1v2';
    if (supports('type1')) return 'type1';
    return calls.fail('VFIO_CHECK_EXTENSION', null, 'the container offers neither the type1v2 nor the type1 IOMMU', CONTAINER_NODE);
  }

  private releaseGroup(groupId: number): void {
    const held = this.groups.get(groupId);
    if (!held || --held.devices > 0) return;
    // Closing the last fd of a group takes it out of the container; the last group takes the type too.
    // A lent group fd is only taken out (its owner closes it).
    this.groups.delete(groupId);
    if (held.owned) closeQuietly(this.kernel, held.fd);
    else unsetContainer(this.kernel, held.fd);
    if (this.groups.size === 0) {
      this.type = null;
      this.dmaReset(); // the container lost its IOMMU, and the mappings with it
    }
  }

  protected closeResources(): void {
    for (const held of this.groups.values()) {
      if (held.owned) closeQuietly(this.kernel, held.fd);
      else unsetContainer(this.kernel, held.fd);
    }
    this.groups.clear();
    if (this.ownsFd) closeQuietly(this.kernel, this.fd);
  }

  dmaUnavailable(): string | null {
    if (this.type === 'noiommu') return 'its device is in noiommu mode: no IOMMU translates the device\'s DMA';
    if (this.type === null) return 'no device has joined it yet (a container has no IOMMU until its first group does)';
    return null;
  }

  geometry(): { ranges: IovaRange[]; alignment: bigint } {
    const calls = this.steps();
    let buf = encode(vfio_iommu_type1_info, { argsz: vfio_iommu_type1_info.size });
    calls.ioctl('VFIO_IOMMU_GET_INFO', this.fd, VFIO.IOMMU_GET_INFO, buf);
    let info = decode(vfio_iommu_type1_info, buf);
    if ((info.flags & VFIO_IOMMU_INFO_CAPS) !== 0 && info.argsz > buf.length) {
      buf = encode(vfio_iommu_type1_info, { argsz: info.argsz }, info.argsz);
      calls.ioctl('VFIO_IOMMU_GET_INFO', this.fd, VFIO.IOMMU_GET_INFO, buf);
      info = decode(vfio_iommu_type1_info, buf);
    }
    // the smallest IOMMU page size is the alignment of IOVAs and sizes
    const pgsizes = (info.flags & VFIO_IOMMU_INFO_PGSIZES) !== 0 ? info.iova_pgsizes : 4096n;
    const alignment = pgsizes & -pgsizes;
    let ranges: IovaRange[] = [{ start: 0n, last: 0xffff_ffff_ffff_ffffn }]; // kernels without the capability
    if ((info.flags & VFIO_IOMMU_INFO_CAPS) !== 0) {
      for (const cap of capabilities(buf, info.cap_offset)) {
        if (cap.id !== VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) continue;
        const n = decode(vfio_iommu_type1_info_cap_iova_range, buf, cap.at).nr_iovas;
        ranges = Array.from({ length: n }, (_, i) => {
          const r = decode(vfio_iova_range, buf, cap.at + vfio_iommu_type1_info_cap_iova_range.size + i * vfio_iova_range.size);
          return { start: r.start, last: r.end };
        });
      }
    }
    return { ranges, alignment: alignment > 0n ? alignment : 4096n };
  }

  mapRaw(vaddr: bigint, iova: bigint, size: bigint, readable: boolean, writable: boolean): void {
    const flags = (readable ? VFIO_DMA_MAP_FLAG.READ : 0) | (writable ? VFIO_DMA_MAP_FLAG.WRITE : 0);
    const arg = encode(vfio_iommu_type1_dma_map, { argsz: vfio_iommu_type1_dma_map.size, flags, vaddr, iova, size });
    this.steps().ioctl('VFIO_IOMMU_MAP_DMA', this.fd, VFIO.IOMMU_MAP_DMA, arg);
  }

  unmapRaw(iova: bigint, size: bigint): void {
    const calls = this.steps();
    const arg = encode(vfio_iommu_type1_dma_unmap, { argsz: vfio_iommu_type1_dma_unmap.size, iova, size });
    calls.ioctl('VFIO_IOMMU_UNMAP_DMA', this.fd, VFIO.IOMMU_UNMAP_DMA, arg);
    const unmapped = decode(vfio_iommu_type1_dma_unmap, arg).size;
    if (unmapped !== size) calls.fail('VFIO_IOMMU_UNMAP_DMA', null, `the kernel unmapped ${unmapped} of ${size} bytes`);
  }
}

function checkApiVersion(calls: StepCalls, fd: number): void {
  const version = calls.ioctl('VFIO_GET_API_VERSION', fd, VFIO.GET_API_VERSION);
  if (version !== VFIO_API_VERSION) {
    calls.fail('VFIO_GET_API_VERSION', null, `the kernel's VFIO API version is ${version}, not ${VFIO_API_VERSION}`, CONTAINER_NODE);
  }
}

/** Takes a lent group out of our container, leaving its fd open for its owner. */
function unsetContainer(kernel: Kernel, groupFd: number): void {
  try {
    kernel.ioctl(groupFd, VFIO.GROUP_UNSET_CONTAINER);
  } catch {
    // already out (or the fd is gone): nothing of ours is left in it either way
  }
}

/** A 4-byte int passed by address (VFIO_GROUP_SET_CONTAINER takes an int *). */
function int32(value: number): Buffer {
  const buf = Buffer.alloc(4);
  buf.writeInt32LE(value);
  return buf;
}

/** A NUL-terminated string passed by address (VFIO_GROUP_GET_DEVICE_FD takes a char *). */
function cString(value: string): Buffer {
  return Buffer.from(`${value}\0`, 'utf8');
}
