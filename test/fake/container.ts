// /dev/vfio/vfio: the legacy container (drivers/vfio/container.c) and its type1 IOMMU
// (vfio_iommu_type1.c): the IOMMU drivers it offers, SET_IOMMU once a group is in, and type1's
// GET_INFO/MAP_DMA/UNMAP_DMA with RLIMIT_MEMLOCK and dma_entry_limit, and its dirty page tracking.
// The container returns to its unset state, and its mappings go, when its last group leaves.
import { decode, writeField } from '../../src/uapi/struct.js';
import {
  VFIO_DMA_MAP_FLAG,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  VFIO_NOIOMMU_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  vfio_info_cap_header,
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  vfio_iommu_type1_info,
  vfio_iommu_type1_info_cap_iova_range,
  vfio_iommu_type1_info_dma_avail,
  vfio_iova_range,
} from '../../src/uapi/vfio.js';
import { VFIO_IOMMU_DIRTY_PAGES_FLAG, vfio_bitmap, vfio_iommu_type1_dirty_bitmap, vfio_iommu_type1_dirty_bitmap_get } from '../../src/uapi/migration.js';
import { ioctlError, userStruct } from './errno.js';
import { dropAreas, insertArea, pinArea, userMemory } from './memory.js';
import { U64_MAX, type ContainerState, type DmaArea, type FakeState, type GroupFile, type GroupState, type OpenFile } from './state.js';

type Arg = number | Buffer | undefined;

const EXTENSIONS: Record<'type1' | 'noiommu', readonly number[]> = {
  type1: [VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU],
  noiommu: [VFIO_NOIOMMU_IOMMU],
};

export function driverOf(type: number): 'type1' | 'noiommu' {
  return type === VFIO_NOIOMMU_IOMMU ? 'noiommu' : 'type1';
}

export function openContainer(s: FakeState): OpenFile {
  const container: ContainerState = { fdOpen: true, groups: new Set(), iommuType: null, areas: [], dmaAvail: 0, dirtyTracking: false };
  s.containers.add(container);
  return { kind: 'container', container };
}

export function releaseContainer(s: FakeState, c: ContainerState): void {
  c.fdOpen = false; // its groups keep it alive
  if (c.groups.size === 0) s.containers.delete(c);
}

export function leaveContainer(s: FakeState, file: GroupFile): void {
  const c = file.container!;
  c.groups.delete(file);
  file.container = null;
  if (c.groups.size === 0) {
    // the last group out returns the container to its unset state: the IOMMU goes, and every mapping with it
    c.iommuType = null;
    dropAreas(s, c.areas);
    c.dmaAvail = 0;
    c.dirtyTracking = false;
    if (!c.fdOpen) s.containers.delete(c);
  }
}

function drivers(s: FakeState): ('type1' | 'noiommu')[] {
  const type1: 'type1'[] = s.type1Available ? ['type1'] : [];
  return s.iommu === 'noiommu' ? [...type1, 'noiommu'] : type1;
}

export function containerIsNoiommu(c: ContainerState): boolean {
  return [...c.groups].some((g) => g.group.noiommu);
}

/** the IOMMU drivers a container may use: once a group is in, noiommu and the others exclude each other */
function allowedDrivers(s: FakeState, c: ContainerState): ('type1' | 'noiommu')[] {
  if (c.groups.size === 0) return drivers(s);
  const noiommu = containerIsNoiommu(c);
  return drivers(s).filter((d) => (d === 'noiommu') === noiommu);
}

/** vfio_iommu_type1_attach_group: no MSI isolation and no allow_unsafe_interrupts -> EPERM */
export function checkType1Attach(s: FakeState, driver: 'type1' | 'noiommu', g: GroupState): void {
  if (driver === 'type1' && !g.emulated && s.iommu === 'virtio' && !s.allowUnsafe.type1) throw ioctlError('EPERM');
}

// ---------------------------------------------------------------------------------------------------
// the container's own ioctls

export function apiVersion(s: FakeState): number {
  return s.apiVersion;
}

export function checkExtension(s: FakeState, c: ContainerState, arg: Arg): number {
  // A pointer passed where the kernel expects a number is an unknown extension to it.
  const ext = typeof arg === 'number' ? arg : -1;
  if (c.iommuType !== null) return EXTENSIONS[driverOf(c.iommuType)].includes(ext) ? 1 : 0;
  return allowedDrivers(s, c).some((d) => EXTENSIONS[d].includes(ext)) ? 1 : 0;
}

export function setIommu(s: FakeState, c: ContainerState, arg: Arg): number {
  if (c.groups.size === 0 || c.iommuType !== null) throw ioctlError('EINVAL');
  const type = typeof arg === 'number' ? arg : -1;
  const driver = allowedDrivers(s, c).find((d) => EXTENSIONS[d].includes(type));
  if (!driver) throw ioctlError('ENODEV');
  for (const g of c.groups) checkType1Attach(s, driver, g.group);
  c.iommuType = type;
  c.dmaAvail = s.dmaEntryLimit;
  return 0;
}

/** vfio_fops_unl_ioctl: the other requests are passed to the IOMMU driver; without one, EINVAL */
export function iommuDriverGate(_s: FakeState, c: ContainerState): void {
  if (c.iommuType === null) throw ioctlError('EINVAL');
  if (driverOf(c.iommuType) === 'noiommu') throw ioctlError('ENOTTY'); // vfio_noiommu_ioctl
}

// ---------------------------------------------------------------------------------------------------
// type1's ioctls

/** the type1 IOMMU's view: a domain once a group with a real IOMMU is in (an mdev's group has none) */
function type1Geometry(s: FakeState, c: ContainerState): { ranges: { start: bigint; last: bigint }[]; pgsizes: bigint; domain: boolean } {
  const domain = [...c.groups].some((g) => !g.group.emulated && !g.group.noiommu);
  if (!domain) return { ranges: [], pgsizes: ~BigInt(s.pageSize - 1) & U64_MAX, domain }; // PAGE_MASK; an empty iova_list
  return { ranges: s.geometry.ranges.map((r) => ({ ...r })), pgsizes: s.geometry.pgsizes, domain };
}

/** vfio_iommu_type1_get_info, with its capability chain: migration, DMA_AVAIL, IOVA_RANGE */
export function type1Info(s: FakeState, c: ContainerState, arg: Arg): number {
  const buf = userStruct(arg, 16);
  const argsz = buf.readUInt32LE(0);
  if (argsz < 16) throw ioctlError('EINVAL');
  const g = type1Geometry(s, c);
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
export function type1Map(s: FakeState, c: ContainerState, arg: Arg): number {
  const buf = userStruct(arg, vfio_iommu_type1_dma_map.size);
  const m = decode(vfio_iommu_type1_dma_map, buf);
  const VADDR = 1 << 2;
  if (m.argsz < vfio_iommu_type1_dma_map.size || (m.flags & ~(VFIO_DMA_MAP_FLAG.READ | VFIO_DMA_MAP_FLAG.WRITE | VADDR)) !== 0) throw ioctlError('EINVAL');
  const prot = m.flags & (VFIO_DMA_MAP_FLAG.READ | VFIO_DMA_MAP_FLAG.WRITE);
  if (prot === 0 || (m.flags & VADDR) !== 0) throw ioctlError('EINVAL'); // updating a vaddr is not modelled
  const g = type1Geometry(s, c);
  const pgsize = g.pgsizes & -g.pgsizes;
  if (m.size === 0n || ((m.size | m.iova | m.vaddr) & (pgsize - 1n)) !== 0n) throw ioctlError('EINVAL');
  if (m.iova + m.size - 1n > U64_MAX || m.vaddr + m.size - 1n > U64_MAX) throw ioctlError('EINVAL');
  if (c.areas.some((a) => m.iova < a.iova + a.length && a.iova < m.iova + m.size)) throw ioctlError('EEXIST');
  if (c.dmaAvail === 0) throw ioctlError('ENOSPC');
  // vfio_iommu_iova_dma_valid: inside one range (an empty list, as with only an mdev, accepts all)
  if (g.ranges.length > 0 && !g.ranges.some((r) => m.iova >= r.start && m.iova + m.size - 1n <= r.last)) throw ioctlError('EINVAL');
  const area = pinArea(s, m.vaddr, m.iova, m.size, (prot & VFIO_DMA_MAP_FLAG.READ) !== 0, (prot & VFIO_DMA_MAP_FLAG.WRITE) !== 0, g.domain, true);
  insertArea(c.areas, area);
  c.dmaAvail--;
  return 0;
}

/** vfio_iommu_type1_unmap_dma -> vfio_dma_do_unmap: v2 refuses to bisect a mapping; nothing there unmaps 0 bytes */
export function type1Unmap(s: FakeState, c: ContainerState, arg: Arg): number {
  const buf = userStruct(arg, vfio_iommu_type1_dma_unmap.size);
  const u = decode(vfio_iommu_type1_dma_unmap, buf);
  const ALL = 1 << 1;
  if (u.argsz < vfio_iommu_type1_dma_unmap.size || (u.flags & ~0x7) !== 0) throw ioctlError('EINVAL');
  const GET_DIRTY_BITMAP = 1 << 0;
  if ((u.flags & GET_DIRTY_BITMAP) !== 0 && (u.flags & ~GET_DIRTY_BITMAP) !== 0) throw ioctlError('EINVAL');
  if ((u.flags & ~(ALL | GET_DIRTY_BITMAP)) !== 0) throw ioctlError('EINVAL'); // vaddr updates are not modelled
  const g = type1Geometry(s, c);
  let bitmap: ReturnType<typeof decode<typeof vfio_bitmap.fields>> | null = null;
  if ((u.flags & GET_DIRTY_BITMAP) !== 0) {
    if (u.argsz < vfio_iommu_type1_dma_unmap.size + vfio_bitmap.size) throw ioctlError('EINVAL');
    bitmap = decode(vfio_bitmap, userStruct(arg, vfio_iommu_type1_dma_unmap.size + vfio_bitmap.size), vfio_iommu_type1_dma_unmap.size);
    verifyBitmapSize(u.size >> ffs(bitmap.pgsize), bitmap.size);
  }
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
  if (bitmap && (!c.dirtyTracking || bitmap.pgsize !== pgsize)) throw ioctlError('EINVAL');
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
  if (bitmap) for (const a of victims) writeBitmap(s, c, a, bitmap.data, iova, pgsize);
  const unmapped = victims.reduce((n, a) => n + a.length, 0n);
  dropAreas(s, c.areas, victims);
  c.dmaAvail += victims.length;
  writeField(buf, vfio_iommu_type1_dma_unmap.fields.size, unmapped);
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// type1's dirty page tracking (vfio_iommu_type1_dirty_pages). No fake driver pins pages, so a bitmap
// is all clear, except that while a group behind a real IOMMU is in the container (it never pins:
// num_non_pinned_groups) every page its IOMMU maps reads dirty.

const DIRTY_BITMAP_SIZE_MAX = 0x10000000n;
const ffs = (n: bigint): bigint => {
  let i = 0n;
  while (n > 0n && (n & 1n) === 0n) { n >>= 1n; i++; }
  return i;
};

function verifyBitmapSize(npages: bigint, bytes: bigint): void {
  if (npages === 0n || bytes === 0n || bytes > DIRTY_BITMAP_SIZE_MAX || bytes < ((npages + 63n) / 64n) * 8n) throw ioctlError('EINVAL');
}

/** update_user_bitmap: the area's bits, at its offset from base, into the user's bitmap */
function writeBitmap(s: FakeState, c: ContainerState, a: DmaArea, data: bigint, base: bigint, pgsize: bigint): void {
  const g = type1Geometry(s, c);
  const nonPinned = [...c.groups].some((f) => !f.group.emulated && !f.group.noiommu);
  if (!(nonPinned && g.domain)) return;
  const first = (a.iova - base) / pgsize;
  const n = a.length / pgsize;
  const bytes = Number(((first + n + 63n) / 64n) * 8n);
  const user = userMemory(s, data, bytes);
  for (let bit = first; bit < first + n; bit++) user[Number(bit >> 3n)]! |= 1 << Number(bit & 7n);
}

export function type1DirtyPages(s: FakeState, c: ContainerState, arg: Arg): number {
  if (c.iommuType !== VFIO_TYPE1v2_IOMMU) throw ioctlError('EACCES');
  const head = userStruct(arg, vfio_iommu_type1_dirty_bitmap.size);
  const d = decode(vfio_iommu_type1_dirty_bitmap, head);
  const F = VFIO_IOMMU_DIRTY_PAGES_FLAG;
  if (d.argsz < vfio_iommu_type1_dirty_bitmap.size || (d.flags & ~(F.START | F.STOP | F.GET_BITMAP)) !== 0) throw ioctlError('EINVAL');
  if (d.flags === 0 || (d.flags & (d.flags - 1)) !== 0) throw ioctlError('EINVAL'); // one flag at a time
  if (d.flags === F.START) { c.dirtyTracking = true; return 0; }
  if (d.flags === F.STOP) { c.dirtyTracking = false; return 0; }
  if (d.argsz - vfio_iommu_type1_dirty_bitmap.size < vfio_iommu_type1_dirty_bitmap_get.size) throw ioctlError('EINVAL');
  const r = decode(vfio_iommu_type1_dirty_bitmap_get, userStruct(arg, vfio_iommu_type1_dirty_bitmap.size + vfio_iommu_type1_dirty_bitmap_get.size), vfio_iommu_type1_dirty_bitmap.size);
  if (r.iova + r.size > U64_MAX) throw ioctlError('EINVAL');
  verifyBitmapSize(r.size >> ffs(r['bitmap.pgsize']), r['bitmap.size']);
  const g = type1Geometry(s, c);
  const pgsize = g.pgsizes & -g.pgsizes;
  if (r['bitmap.pgsize'] !== pgsize || (r.iova & (pgsize - 1n)) !== 0n || r.size === 0n || (r.size & (pgsize - 1n)) !== 0n) throw ioctlError('EINVAL');
  if (!c.dirtyTracking) throw ioctlError('EINVAL');
  // vfio_iova_dirty_bitmap: whole mappings only
  const end = r.iova + r.size;
  if (c.areas.some((a) => (a.iova < r.iova && a.iova + a.length > r.iova) || (a.iova < end && a.iova + a.length > end))) throw ioctlError('EINVAL');
  for (const a of c.areas) if (a.iova >= r.iova && a.iova < end) writeBitmap(s, c, a, r['bitmap.data'], r.iova, pgsize);
  return 0;
}
