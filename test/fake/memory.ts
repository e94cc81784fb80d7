// Memory, as the addon maps it: each mapping is an ArrayBuffer with a fake, page-aligned virtual
// address; unmap detaches it (views go empty) as napi_detach_arraybuffer does. A region mapping
// (regions.ts) shows the device's registers: each access through mmioRead/mmioWrite reaches the
// device model with exactly one access; writes through a view do not.
//
// And the fake IOMMU: the mappings of an IOAS or a type1 container pin the pages behind them
// (RLIMIT_MEMLOCK unless CAP_IPC_LOCK), and a device's DMA is translated through the mappings of the
// domain it is attached to. A DMA to an unmapped IOVA is recorded in dmaFaults and copies nothing.
import { VFIO_NOIOMMU_IOMMU, VFIO_PCI_REGION } from '../../src/uapi/vfio.js';
import { releaseDeviceFile } from './device.js';
import { ioctlError, sysError } from './errno.js';
import { barRead, barWrite } from './regions.js';
import { HUGE_PAGE, type DeviceState, type DmaArea, type FakeState, type MemMapping } from './state.js';
import type { DmaFault } from './types.js';

// ---------------------------------------------------------------------------------------------------
// the addon's mappings

export function allocDma(s: FakeState, len: number, hugePages: boolean): ArrayBuffer {
  if (hugePages) {
    const pages = Math.ceil(len / s.hugePageSize);
    if (pages > s.hugePagesFree) throw sysError('ENOMEM', 'mmap'); // MAP_HUGETLB without reserved pages
    s.hugePagesFree -= pages;
  }
  // the addon aligns 2 MiB or more to 2 MiB (for THP) without reserved huge pages too
  return newMapping(s, 'dma', len, hugePages, !hugePages && len >= HUGE_PAGE).buffer;
}

export function newMapping(s: FakeState, kind: MemMapping['kind'], length: number, hugePages: boolean, thpAligned = false): MemMapping {
  const align = BigInt(hugePages ? s.hugePageSize : thpAligned ? HUGE_PAGE : s.pageSize);
  const address = ((s.nextVaddr + align - 1n) / align) * align;
  // a guard page between mappings: an access past one end never lands in the next one
  s.nextVaddr = address + BigInt(Math.ceil(length / Number(align)) * Number(align) + s.pageSize);
  const buffer = new ArrayBuffer(length);
  const m: MemMapping = { kind, buffer, pages: buffer, address, length, mapped: true, hugePages, pins: 0 };
  s.mem.set(buffer, m);
  s.memList.add(m);
  return m;
}

export function unmap(s: FakeState, buffer: ArrayBuffer): void {
  const m = mapping(s, buffer);
  if (!m.mapped) return;
  m.mapped = false;
  // napi_detach_arraybuffer: the views go empty; pages an IOMMU mapping pins stay with the device
  const pages = buffer.byteLength > 0 ? structuredClone(buffer, { transfer: [buffer] }) : null;
  m.pages = m.pins > 0 ? pages : null;
  if (m.pins === 0) s.memList.delete(m);
  if (m.hugePages) s.hugePagesFree += Math.ceil(m.length / s.hugePageSize);
  if (m.region) {
    const r = m.region;
    r.device.mirrors.delete(m);
    r.file.mmaps = (r.file.mmaps ?? 1) - 1;
    if (r.file.fdClosed && r.file.mmaps === 0) releaseDeviceFile(s, r.file); // the last reference to the device file
  }
}

export function addressOf(s: FakeState, buffer: ArrayBuffer): bigint {
  const m = mapping(s, buffer);
  if (!m.mapped) throw sysError('EFAULT', 'addressOf');
  return m.address;
}

export function mmioRead(s: FakeState, buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4 | 8): number | bigint {
  const m = registerAt(s, buffer, offset, width);
  let value: bigint;
  if (m.region) {
    const r = m.region;
    value = barRead(r.device, r.index, r.at + offset, width);
    s.mmioLog.push({ device: r.device.name, region: r.index, offset: r.at + offset, width, op: 'read', value });
  } else {
    value = readLE(new Uint8Array(buffer), offset, width);
  }
  return width === 8 ? value : Number(value);
}

export function mmioWrite(s: FakeState, buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4 | 8, value: number | bigint): void {
  const v = addonU64(value, 'value') & ((1n << BigInt(8 * width)) - 1n);
  const m = registerAt(s, buffer, offset, width);
  if (m.region) {
    const r = m.region;
    // the addon's store to a PROT_READ mapping: SIGSEGV, the process dies
    if (!r.writable) throw new Error('fake: a store to a read-only mapping (SIGSEGV on a real kernel)');
    s.mmioLog.push({ device: r.device.name, region: r.index, offset: r.at + offset, width, op: 'write', value: v });
    barWrite(s, r.device, r.index, r.at + offset, width, v);
  } else {
    writeLE(new Uint8Array(buffer), offset, width, v);
  }
}

/** typed-array access to a region mapping's registers: only where asked, and never edu's model */
export function mmioDirect(s: FakeState, buffer: ArrayBuffer): boolean {
  const r = mapping(s, buffer).region;
  return s.directMmio && r !== undefined && !(r.device.edu && r.index === VFIO_PCI_REGION.BAR0);
}

/** the addon's register_at: a live mapping, a width of 1/2/4/8, an offset in range and aligned to it */
function registerAt(s: FakeState, buffer: ArrayBuffer, offset: number, width: number): MemMapping {
  const m = mapping(s, buffer);
  if (!m.mapped || (buffer.byteLength === 0 && m.length > 0)) throw sysError('EFAULT', 'mmio');
  if (width !== 1 && width !== 2 && width !== 4 && width !== 8) throw addonTypeError('width must be 1, 2, 4 or 8');
  if (typeof offset !== 'number' || !Number.isFinite(offset) || Math.trunc(offset) < 0 || Math.trunc(offset) + width > m.length || Math.trunc(offset) % width !== 0) {
    const e = new RangeError('register offset out of range or not aligned to its width') as RangeError & { code: string };
    e.code = 'ERR_OUT_OF_RANGE';
    throw e;
  }
  return m;
}

function mapping(s: FakeState, buffer: ArrayBuffer): MemMapping {
  const m = buffer instanceof ArrayBuffer ? s.mem.get(buffer) : undefined;
  if (!m) throw addonTypeError('not a mapping made by this addon');
  return m;
}

/** what the addon's napi_throw_type_error throws */
function addonTypeError(message: string): TypeError {
  const e = new TypeError(message) as TypeError & { code: string };
  e.code = 'ERR_INVALID_ARG_TYPE';
  return e;
}

/** the addon's get_u64: a bigint (taken modulo 2^64), or a non-negative number */
function addonU64(v: unknown, what: string): bigint {
  if (typeof v === 'bigint') return BigInt.asUintN(64, v);
  if (typeof v === 'number' && Number.isFinite(v) && v >= 0) return BigInt(Math.trunc(v));
  throw addonTypeError(`${what} must be a non-negative number or bigint`);
}

/** a mapping's length as the addon takes it: 0 is refused before any system call */
export function addonLength(length: unknown): number {
  const n = addonU64(length, 'length');
  if (n === 0n) throw addonTypeError('length must not be 0');
  return Number(n);
}

export const pageAlign = (s: FakeState, n: number): number => Math.ceil(n / s.pageSize) * s.pageSize;

/** little-endian, `width` bytes */
export function readLE(b: Uint8Array, at: number, width: number): bigint {
  let v = 0n;
  for (let i = width - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[at + i]!);
  return v;
}
export function writeLE(b: Uint8Array, at: number, width: number, value: bigint): void {
  for (let i = 0; i < width; i++) b[at + i] = Number((value >> BigInt(8 * i)) & 0xffn);
}

// ---------------------------------------------------------------------------------------------------
// IOMMU mappings (the IOAS's iopt_areas, the container's vfio_dmas)

/**
 * The pages behind [vaddr, vaddr+length): memory this process mapped with allocDma, or EFAULT. They are
 * charged against RLIMIT_MEMLOCK once an IOMMU domain needs them pinned, unless this process has
 * CAP_IPC_LOCK. `pfnmap` (type1's vaddr_get_pfns) also takes a device's region mmap (a VM_PFNMAP range:
 * peer-to-peer DMA), faulting it in as follow_fault_pfn does: EFAULT for a write through a read-only
 * mapping or while the device's memory decoding is off (vfio-pci's fault handler answers SIGBUS), and
 * never charged (MMIO pfns are not RAM). iommufd's pin_user_pages refuses such ranges: EFAULT.
 */
export function pinArea(s: FakeState, vaddr: bigint, iova: bigint, length: bigint, readable: boolean, writable: boolean, domain: boolean, pfnmap = false): DmaArea {
  const mem = [...s.memList].find((x) => x.mapped && (x.kind === 'dma' || (pfnmap && x.kind === 'region')) && vaddr >= x.address && vaddr + length <= x.address + BigInt(x.length));
  if (!mem) throw ioctlError('EFAULT');
  if (mem.region && ((writable && !mem.region.writable) || !memoryDecoding(mem.region.device))) throw ioctlError('EFAULT');
  const charge = mem.kind === 'dma' && domain && !s.ipcLock ? length : 0n;
  if (charge > 0n && s.pinned + charge > BigInt(Math.min(s.memlockLimit.soft, Number.MAX_SAFE_INTEGER))) throw ioctlError('ENOMEM');
  s.pinned += charge;
  mem.pins++;
  return { iova, length, mem, offset: Number(vaddr - mem.address), readable, writable, accounted: charge };
}

/** The IOMMU unmaps: the pages are unpinned (and freed, if this process already unmapped them). */
export function dropAreas(s: FakeState, areas: DmaArea[], which: DmaArea[] = [...areas]): void {
  for (const a of which) {
    areas.splice(areas.indexOf(a), 1);
    s.pinned -= a.accounted;
    a.mem.pins--;
    if (!a.mem.mapped && a.mem.pins === 0) {
      a.mem.pages = null;
      s.memList.delete(a.mem);
    }
  }
}

/** keeps areas sorted by iova */
export function insertArea(areas: DmaArea[], area: DmaArea): void {
  const i = areas.findIndex((a) => a.iova > area.iova);
  areas.splice(i < 0 ? areas.length : i, 0, area);
}

/** The lowest free IOVA for `length` bytes, aligned, inside the ranges (never 0). */
export function allocIova(areas: DmaArea[], ranges: { start: bigint; last: bigint }[], length: bigint, align: bigint): bigint | null {
  for (const r of ranges) {
    let iova = ((r.start === 0n ? align : r.start) + align - 1n) / align * align;
    while (iova + length - 1n <= r.last) {
      const clash = areas.find((a) => iova < a.iova + a.length && a.iova < iova + length);
      if (!clash) return iova;
      iova = (clash.iova + clash.length + align - 1n) / align * align;
    }
  }
  return null;
}

/** Reads or writes process memory at a user pointer the way copy_to_user does: EFAULT outside a live mapping. */
export function userMemory(s: FakeState, address: bigint, length: number): Buffer {
  const m = [...s.memList].find((x) => x.mapped && address >= x.address && address + BigInt(length) <= x.address + BigInt(x.length));
  if (!m) throw ioctlError('EFAULT');
  return Buffer.from(m.buffer, Number(address - m.address), length);
}

// ---------------------------------------------------------------------------------------------------
// the fake IOMMU: a device's DMA, translated through the mappings of the domain it is attached to

/** PCI_COMMAND_MASTER in the device's config space */
export const busMaster = (dev: DeviceState): boolean => (dev.config.readUInt16LE(0x04) & 0x4) !== 0;
/** PCI_COMMAND_MEMORY: the device answers accesses to its memory BARs */
const memoryDecoding = (dev: DeviceState): boolean => (dev.config.readUInt16LE(0x04) & 0x2) !== 0;

/** The mappings the device's DMA goes through, or why there are none. */
function dmaDomain(dev: DeviceState): DmaArea[] | DmaFault['reason'] {
  for (const f of dev.files) {
    if (f.via !== 'cdev' || !f.bound || f.attachedPt === null) continue;
    const obj = f.ctx!.objects.get(f.attachedPt);
    const ioas = obj?.type === 'hwpt' ? f.ctx!.objects.get(obj.ioas) : obj;
    if (ioas?.type === 'ioas') return ioas.areas;
  }
  // legacy: the group's devices are attached to the container's domain once the group is in it
  const held = dev.group?.openedBy;
  if (held && held !== 'elsewhere' && held.container?.iommuType != null) {
    if (held.container.iommuType === VFIO_NOIOMMU_IOMMU) return 'noiommu';
    return held.container.areas;
  }
  return 'no domain';
}

/** [iova, iova+length) as pieces of the memory behind it, or why the IOMMU refuses it */
function translate(dev: DeviceState, iova: bigint, length: number, write: boolean): { mem: MemMapping; at: number; n: number }[] | DmaFault['reason'] {
  if (!busMaster(dev)) return 'bus master disabled';
  const areas = dmaDomain(dev);
  if (typeof areas === 'string') return areas;
  const pieces: { mem: MemMapping; at: number; n: number }[] = [];
  for (let done = 0; done < length; ) {
    const cur = iova + BigInt(done);
    const a = areas.find((x) => cur >= x.iova && cur < x.iova + x.length);
    if (!a) return 'unmapped';
    if (write ? !a.writable : !a.readable) return write ? 'read-only' : 'write-only';
    const n = Math.min(length - done, Number(a.iova + a.length - cur));
    pieces.push({ mem: a.mem, at: a.offset + Number(cur - a.iova), n });
    done += n;
  }
  return pieces;
}

/** A DMA write through a HWPT that tracks dirty pages sets their dirty bits (the IOMMU's A/D bits). */
function markDirty(dev: DeviceState, iova: bigint, length: bigint): void {
  for (const f of dev.files) {
    const obj = f.via === 'cdev' && f.bound && f.attachedPt !== null ? f.ctx!.objects.get(f.attachedPt) : undefined;
    if (obj?.type !== 'hwpt' || !obj.tracking) continue;
    for (let page = iova & ~0xfffn; page < iova + length; page += 0x1000n) obj.dirty!.add(page);
  }
}

/**
 * The device's DMA at iova: a write copies `buf` into memory, a read copies memory into `buf`. On a
 * fault nothing is copied and the fault is recorded.
 */
export function deviceDma(s: FakeState, dev: DeviceState, iova: bigint, buf: Buffer, write: boolean): boolean {
  const t = translate(dev, iova, buf.length, write);
  if (typeof t === 'string') {
    s.dmaFaults.push({ device: dev.name, iova, length: buf.length, write, reason: t });
    return false;
  }
  let done = 0;
  for (const p of t) {
    if (p.mem.region) peerAccess(s, p.mem, p.at, buf.subarray(done, done + p.n), write);
    else {
      const memory = new Uint8Array(p.mem.pages!, p.at, p.n);
      if (write) memory.set(buf.subarray(done, done + p.n));
      else buf.set(memory, done);
    }
    done += p.n;
  }
  if (write) markDirty(dev, iova, BigInt(buf.length));
  s.dmaTransfers.push({ device: dev.name, iova, length: buf.length, write });
  return true;
}

/**
 * A DMA that the IOMMU translated to another device's BAR (peer-to-peer): it reaches that device's
 * registers as 4-byte accesses where aligned, bytes elsewhere. A device with memory decoding off does
 * not answer: writes are dropped, reads see all ones (a master abort).
 */
function peerAccess(s: FakeState, mem: MemMapping, at: number, data: Buffer, write: boolean): void {
  const r = mem.region!;
  const decoding = memoryDecoding(r.device);
  for (let i = 0; i < data.length;) {
    const width = (r.at + at + i) % 4 === 0 && data.length - i >= 4 ? 4 : 1;
    if (write && decoding) barWrite(s, r.device, r.index, r.at + at + i, width, readLE(data, i, width));
    else if (!write) writeLE(data, i, width, decoding ? barRead(r.device, r.index, r.at + at + i, width) : (1n << BigInt(8 * width)) - 1n);
    i += width;
  }
}

// ---------------------------------------------------------------------------------------------------
// what tests inspect

/** every IOMMU mapping the kernel holds, in every IOAS and container (open or kept alive by a device) */
export function iommuMappings(s: FakeState): { owner: 'ioas' | 'container'; iova: bigint; length: bigint; address: bigint }[] {
  const out: { owner: 'ioas' | 'container'; iova: bigint; length: bigint; address: bigint }[] = [];
  for (const ctx of s.iommufdCtxs) {
    for (const o of ctx.objects.values()) {
      if (o.type === 'ioas') for (const a of o.areas) out.push({ owner: 'ioas', iova: a.iova, length: a.length, address: a.mem.address + BigInt(a.offset) });
    }
  }
  for (const c of s.containers) for (const a of c.areas) out.push({ owner: 'container', iova: a.iova, length: a.length, address: a.mem.address + BigInt(a.offset) });
  return out;
}
