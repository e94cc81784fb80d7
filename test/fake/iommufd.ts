// /dev/iommu: an iommufd context and its objects (IOAS, the automatic HW pagetables of attached
// devices, the devices bound to it), as drivers/iommu/iommufd (main.c, ioas.c, io_pagetable.c).
// Mappings die with their IOAS, and the context outlives its fd while a device is bound to it.
// Binding and attaching a device through its cdev is in cdev.ts.
import { decode, writeField } from '../../src/uapi/struct.js';
import {
  IOMMU_IOAS_MAP_FLAG,
  iommu_destroy,
  iommu_ioas_alloc,
  iommu_ioas_iova_ranges,
  iommu_ioas_map,
  iommu_ioas_unmap,
  iommu_iova_range,
} from '../../src/uapi/iommufd.js';
import { ioctlError } from './errno.js';
import { allocIova, dropAreas, insertArea, pinArea, userMemory } from './memory.js';
import { U64_MAX, type DmaArea, type FakeState, type IoasObject, type IommufdCtx, type OpenFile } from './state.js';

type Arg = number | Buffer | undefined;

export function openIommufd(s: FakeState): OpenFile {
  const ctx: IommufdCtx = { fdOpen: true, nextId: 1, objects: new Map() };
  s.iommufdCtxs.add(ctx);
  return { kind: 'iommufd', ctx };
}

export function releaseIommufd(s: FakeState, ctx: IommufdCtx): void {
  ctx.fdOpen = false; // the bound devices keep the context (and its IOAS) alive
  maybeFreeCtx(s, ctx);
}

/** iommufd_fops_release, once the last device bound to it has gone: every object and mapping goes */
export function maybeFreeCtx(s: FakeState, ctx: IommufdCtx): void {
  if (ctx.fdOpen || [...ctx.objects.values()].some((o) => o.type === 'device')) return;
  for (const o of ctx.objects.values()) if (o.type === 'ioas') dropAreas(s, o.areas);
  ctx.objects.clear();
  s.iommufdCtxs.delete(ctx);
}

/** iommufd's ucmd: the first u32 is the size; smaller than the command's minimum -> EINVAL */
export function iommufdCmd(arg: Arg, minsz: number): Buffer {
  if (!Buffer.isBuffer(arg) || arg.length < 4) throw ioctlError('EFAULT');
  const size = arg.readUInt32LE(0);
  if (size < minsz) throw ioctlError('EINVAL');
  if (arg.length < size) throw ioctlError('EFAULT');
  return arg;
}

// ---------------------------------------------------------------------------------------------------
// ioctls (HWPT_ALLOC, IOAS_COPY, OPTION... are not modelled: answered as unknown requests)

export function ioasAlloc(_s: FakeState, ctx: IommufdCtx, arg: Arg): number {
  const buf = iommufdCmd(arg, iommu_ioas_alloc.size);
  if (decode(iommu_ioas_alloc, buf).flags !== 0) throw ioctlError('EOPNOTSUPP');
  const id = ctx.nextId++;
  ctx.objects.set(id, { type: 'ioas', areas: [] });
  writeField(buf, iommu_ioas_alloc.fields.out_ioas_id, id);
  return 0;
}

export function destroy(s: FakeState, ctx: IommufdCtx, arg: Arg): number {
  const buf = iommufdCmd(arg, iommu_destroy.size);
  const id = decode(iommu_destroy, buf).id;
  const obj = ctx.objects.get(id);
  if (!obj) throw ioctlError('ENOENT');
  const inUse = obj.type === 'device' || (obj.type === 'hwpt' && obj.users > 0) ||
    (obj.type === 'ioas' && [...ctx.objects.values()].some((o) => o.type === 'hwpt' && o.ioas === id));
  if (inUse) throw ioctlError('EBUSY');
  if (obj.type === 'ioas') dropAreas(s, obj.areas);
  ctx.objects.delete(id);
  return 0;
}

function getIoas(ctx: IommufdCtx, id: number): IoasObject {
  const o = ctx.objects.get(id);
  if (o?.type !== 'ioas') throw ioctlError('ENOENT'); // iommufd_get_ioas
  return o;
}

/**
 * What the IOAS accepts now: with a device's IOMMU domain attached, the hardware's ranges (the MSI
 * window and what lies past the aperture reserved) and its smallest page; with none, all of the
 * address space at byte alignment (an emulated device's access asks for pages).
 */
function ioasGeometry(s: FakeState, ctx: IommufdCtx, ioasId: number): { ranges: { start: bigint; last: bigint }[]; alignment: bigint; domain: boolean } {
  const domain = [...ctx.objects.values()].some((o) => o.type === 'hwpt' && o.ioas === ioasId && o.users > 0);
  const access = [...s.devices.values()].some((d) => [...d.files].some((f) => f.ctx === ctx && f.attachedPt === ioasId));
  if (domain) return { ranges: s.geometry.ranges.map((r) => ({ ...r })), alignment: s.geometry.pgsizes & -s.geometry.pgsizes, domain };
  return { ranges: [{ start: 0n, last: U64_MAX }], alignment: access ? BigInt(s.pageSize) : 1n, domain };
}

/** iommufd_ioas_iova_ranges: the ranges go through the user pointer allowed_iovas */
export function ioasIovaRanges(s: FakeState, ctx: IommufdCtx, arg: Arg): number {
  const buf = iommufdCmd(arg, iommu_ioas_iova_ranges.size);
  const q = decode(iommu_ioas_iova_ranges, buf);
  if (buf.readUInt32LE(12) !== 0) throw ioctlError('EOPNOTSUPP'); // __reserved
  getIoas(ctx, q.ioas_id);
  const g = ioasGeometry(s, ctx, q.ioas_id);
  const max = q.num_iovas;
  const n = Math.min(max, g.ranges.length);
  if (n > 0) {
    const out = userMemory(s, q.allowed_iovas, n * iommu_iova_range.size);
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
export function ioasMap(s: FakeState, ctx: IommufdCtx, arg: Arg): number {
  const buf = iommufdCmd(arg, iommu_ioas_map.size);
  const m = decode(iommu_ioas_map, buf);
  const F = IOMMU_IOAS_MAP_FLAG;
  if ((m.flags & ~(F.FIXED_IOVA | F.WRITEABLE | F.READABLE)) !== 0 || buf.readUInt32LE(12) !== 0) throw ioctlError('EOPNOTSUPP');
  if (m.iova >= U64_MAX || m.length >= U64_MAX) throw ioctlError('EOVERFLOW');
  if ((m.flags & (F.WRITEABLE | F.READABLE)) === 0) throw ioctlError('EINVAL');
  const ioas = getIoas(ctx, m.ioas_id);
  const g = ioasGeometry(s, ctx, m.ioas_id);
  if (m.length === 0n || (m.length & (g.alignment - 1n)) !== 0n) throw ioctlError('EINVAL');
  let iova = m.iova;
  if ((m.flags & F.FIXED_IOVA) !== 0) {
    // iopt_check_iova
    if ((iova & (g.alignment - 1n)) !== 0n) throw ioctlError('EINVAL');
    if (iova + m.length - 1n > U64_MAX) throw ioctlError('EOVERFLOW');
    if (!g.ranges.some((r) => iova >= r.start && iova + m.length - 1n <= r.last)) throw ioctlError('EINVAL'); // a reserved IOVA intersects
    if (ioas.areas.some((a) => iova < a.iova + a.length && a.iova < iova + m.length)) throw ioctlError('EEXIST');
  } else {
    const found = allocIova(ioas.areas, g.ranges, m.length, BigInt(Math.max(s.pageSize, Number(g.alignment))));
    if (found === null) throw ioctlError('ENOSPC');
    iova = found;
  }
  if ((m.user_va % BigInt(s.pageSize)) & (g.alignment - 1n)) throw ioctlError('EINVAL'); // area->page_offset
  const area = pinArea(s, m.user_va, iova, m.length, (m.flags & F.READABLE) !== 0, (m.flags & F.WRITEABLE) !== 0, g.domain);
  insertArea(ioas.areas, area);
  writeField(buf, iommu_ioas_map.fields.iova, iova);
  return 0;
}

/** iommufd_ioas_unmap: whole areas only; nothing there is ENOENT */
export function ioasUnmap(s: FakeState, ctx: IommufdCtx, arg: Arg): number {
  const buf = iommufdCmd(arg, iommu_ioas_unmap.size);
  const u = decode(iommu_ioas_unmap, buf);
  const ioas = getIoas(ctx, u.ioas_id);
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
      dropAreas(s, ioas.areas, victims.slice(0, bisected));
      throw ioctlError('ENOENT');
    }
    if (victims.length === 0) throw ioctlError('ENOENT');
  }
  const unmapped = victims.reduce((n, a) => n + a.length, 0n);
  dropAreas(s, ioas.areas, victims);
  writeField(buf, iommu_ioas_unmap.fields.length, unmapped);
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// a device joins an IOAS (cdev.ts, DEVICE_ATTACH_IOMMUFD_PT)

/**
 * iopt_table_add_domain / the access's alignment: the mappings already in the IOAS must fit the new
 * geometry (EADDRINUSE), and a first domain pins them (ENOMEM past RLIMIT_MEMLOCK).
 */
export function checkAttach(s: FakeState, ctx: IommufdCtx, ioasId: number, ioas: IoasObject, domain: boolean): void {
  const before = ioasGeometry(s, ctx, ioasId);
  if (before.domain) return;
  const ranges = domain ? s.geometry.ranges : before.ranges;
  const align = domain ? s.geometry.pgsizes & -s.geometry.pgsizes : BigInt(s.pageSize);
  for (const a of ioas.areas) {
    if (!ranges.some((r) => a.iova >= r.start && a.iova + a.length - 1n <= r.last)) throw ioctlError('EADDRINUSE');
    if ((a.iova | a.length | BigInt(a.offset)) & (align - 1n)) throw ioctlError('EADDRINUSE');
  }
  if (!domain || s.ipcLock) return;
  const charge = ioas.areas.reduce((n, a) => n + (a.accounted === 0n ? a.length : 0n), 0n);
  if (charge > 0n && s.pinned + charge > BigInt(Math.min(s.memlockLimit.soft, Number.MAX_SAFE_INTEGER))) throw ioctlError('ENOMEM');
  for (const a of ioas.areas) {
    if (a.accounted === 0n) {
      a.accounted = a.length;
      s.pinned += a.length;
    }
  }
}
