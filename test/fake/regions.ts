// A device's regions, as vfio_pci_core.c serves them: VFIO_DEVICE_GET_REGION_INFO with its
// capability chain (sparse mmap, type), pread/pwrite at the region's offset (the region index in
// bits 40.. of it), split into accesses as vfio_pci_core_do_io_rw does, and mmap of an mmap-able BAR.
// Behind BAR0 of an edu device sits QEMU's edu (edu.ts); other BARs are plain memory.
import { decode, writeField } from '../../src/uapi/struct.js';
import {
  VFIO_PCI_NUM_REGIONS,
  VFIO_PCI_REGION,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG,
  vfio_info_cap_header,
  vfio_region_info,
  vfio_region_info_cap_sparse_mmap,
  vfio_region_info_cap_type,
  vfio_region_sparse_mmap_area,
} from '../../src/uapi/vfio.js';
import { eduRead, eduWrite } from './edu.js';
import { ioctlError, sysError, userStruct } from './errno.js';
import { newMapping, pageAlign, readLE, writeLE } from './memory.js';
import { REGION_SHIFT, type DeviceFile, type DeviceState, type FakeState, type FdEntry, type MemMapping } from './state.js';
import { fileText } from './sysfs.js';
import type { FakeRegion } from './types.js';

export function regionInfo(_s: FakeState, file: DeviceFile, arg: number | Buffer | undefined): number {
  const dev = file.device;
  const buf = userStruct(arg, vfio_region_info.size);
  const q = decode(vfio_region_info, buf);
  if (q.argsz < vfio_region_info.size) throw ioctlError('EINVAL');
  const region = q.index < VFIO_PCI_NUM_REGIONS ? dev.regions.get(q.index) : undefined;
  if (!region) throw ioctlError('EINVAL'); // out of range, or a region this device lacks (VGA)
  const caps = encodeCaps(region);
  const F = vfio_region_info.fields;
  writeField(buf, F.flags, region.flags | (caps.length > 0 ? VFIO_REGION_INFO_FLAG.CAPS : 0));
  writeField(buf, F.size, BigInt(region.size));
  writeField(buf, F.offset, BigInt(q.index) << REGION_SHIFT);
  writeField(buf, F.cap_offset, 0);
  if (caps.length > 0) {
    const need = vfio_region_info.size + caps.length;
    if (q.argsz < need) {
      writeField(buf, F.argsz, need); // "ask again with room for the chain"
    } else {
      if (buf.length < need) throw ioctlError('EFAULT');
      caps.copy(buf, vfio_region_info.size);
      writeField(buf, F.cap_offset, vfio_region_info.size);
    }
  }
  return 0;
}

function encodeCaps(region: FakeRegion): Buffer {
  const parts: Buffer[] = [];
  const base = vfio_region_info.size;
  if (region.sparseMmap) {
    const n = region.sparseMmap.length;
    const b = Buffer.alloc(vfio_region_info_cap_sparse_mmap.size + n * vfio_region_sparse_mmap_area.size);
    writeField(b, vfio_info_cap_header.fields.id, VFIO_REGION_INFO_CAP_SPARSE_MMAP);
    writeField(b, vfio_info_cap_header.fields.version, 1);
    writeField(b, vfio_region_info_cap_sparse_mmap.fields.nr_areas, n);
    region.sparseMmap.forEach((a, i) => {
      const off = vfio_region_info_cap_sparse_mmap.size + i * vfio_region_sparse_mmap_area.size;
      writeField(b, vfio_region_sparse_mmap_area.fields.offset, a.offset, off);
      writeField(b, vfio_region_sparse_mmap_area.fields.size, a.size, off);
    });
    parts.push(b);
  }
  if (region.type) {
    const b = Buffer.alloc(vfio_region_info_cap_type.size);
    writeField(b, vfio_info_cap_header.fields.id, VFIO_REGION_INFO_CAP_TYPE);
    writeField(b, vfio_info_cap_header.fields.version, 1);
    writeField(b, vfio_region_info_cap_type.fields.type, region.type.type);
    writeField(b, vfio_region_info_cap_type.fields.subtype, region.type.subtype);
    parts.push(b);
  }
  // chain: each header's `next` is the offset (from the start of the info) of the one after it
  let off = base;
  for (let i = 0; i < parts.length - 1; i++) {
    off += parts[i]!.length;
    writeField(parts[i]!, vfio_info_cap_header.fields.next, off);
  }
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------------------
// pread/pwrite: region index in bits 40.. of the offset, as vfio-pci (and plain reads of files)

export function rw(s: FakeState, call: 'pread' | 'pwrite', e: FdEntry | undefined, buf: Buffer, offset: bigint): number {
  if (!e) throw sysError('EBADF', call === 'pread' ? 'read' : 'write');
  const f = e.file;
  if (f.kind === 'file') {
    if (call === 'pwrite') throw sysError('EINVAL', 'write');
    return Buffer.from(`${fileText(f.node)}\n`).copy(buf, 0, Number(offset));
  }
  if (f.kind === 'chr') return call === 'pread' ? 0 : buf.length;
  if (f.kind === 'migration') throw sysError('ESPIPE', call); // stream_open: no positioned I/O
  if (f.kind !== 'device' || !f.bound) throw sysError('EINVAL', call === 'pread' ? 'read' : 'write');
  const index = Number(offset >> REGION_SHIFT);
  const at = Number(offset & ((1n << REGION_SHIFT) - 1n));
  const region = f.device.regions.get(index);
  const readable = call === 'pread' ? VFIO_REGION_INFO_FLAG.READ : VFIO_REGION_INFO_FLAG.WRITE;
  if (!region || (region.flags & readable) === 0 || at >= Number(region.size)) throw sysError('EINVAL', call === 'pread' ? 'read' : 'write');
  const n = Math.min(buf.length, Number(region.size) - at);
  if (index === VFIO_PCI_REGION.CONFIG) {
    const backing = f.device.config;
    if (call === 'pread') backing.copy(buf, 0, at, at + n);
    // vfio-pci virtualizes config space: the IDs are read-only
    else for (let i = 0; i < n; i++) if (at + i >= 4) backing[at + i] = buf[i]!;
    return n;
  }
  // vfio_pci_core_do_io_rw: the widest aligned access that fits, 8, 4, 2 or 1 bytes at a time
  for (let done = 0; done < n; ) {
    const pos = at + done;
    const left = n - done;
    const width = left >= 8 && pos % 8 === 0 ? 8 : left >= 4 && pos % 4 === 0 ? 4 : left >= 2 && pos % 2 === 0 ? 2 : 1;
    if (call === 'pread') writeLE(buf, done, width, barRead(f.device, index, pos, width));
    else barWrite(s, f.device, index, pos, width, readLE(buf, done, width));
    done += width;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------------
// mmap of a region

/** vfio_device_fops_mmap -> vfio_pci_core_mmap (len: the addon's length, already checked) */
export function mmap(s: FakeState, e: FdEntry | undefined, offset: bigint, len: number, writable: boolean): ArrayBuffer {
  if (!e) throw sysError('EBADF', 'mmap');
  const f = e.file;
  if (f.kind !== 'device') throw sysError('ENODEV', 'mmap'); // no mmap file operation
  if (!f.bound) throw sysError('EINVAL', 'mmap'); // vfio_device_fops_mmap: !access_granted
  const off = BigInt(offset);
  if (off % BigInt(s.pageSize) !== 0n) throw sysError('EINVAL', 'mmap');
  // vfio_pci_core_mmap
  const index = Number(off >> REGION_SHIFT);
  const at = Number(off & ((1n << REGION_SHIFT) - 1n));
  const region = f.device.regions.get(index);
  if (index >= VFIO_PCI_REGION.ROM || !region || (region.flags & VFIO_REGION_INFO_FLAG.MMAP) === 0) throw sysError('EINVAL', 'mmap');
  const physLen = pageAlign(s, Number(region.size));
  if (at + pageAlign(s, len) > physLen) throw sysError('EINVAL', 'mmap');
  if (region.sparseMmap && !region.sparseMmap.some((a) => BigInt(at) >= a.offset && BigInt(at + len) <= a.offset + a.size)) {
    throw sysError('EINVAL', 'mmap'); // the fake's choice: only the areas the capability names are mappable
  }
  const m = newMapping(s, 'region', len, false);
  m.region = { file: f, device: f.device, index, at, writable };
  f.mmaps = (f.mmaps ?? 0) + 1;
  f.device.mirrors.add(m);
  new Uint8Array(m.buffer).fill(0xff);
  refreshMirror(m);
  return m.buffer;
}

// ---------------------------------------------------------------------------------------------------
// the devices behind the BARs: QEMU's edu, or plain memory

function ram(dev: DeviceState, index: number): Buffer {
  let b = dev.bars.get(index);
  if (!b) {
    b = Buffer.alloc(Number(dev.regions.get(index)?.size ?? 0));
    dev.bars.set(index, b);
  }
  return b;
}

/** One load of `width` bytes at `at` in the region, as the device answers it. */
export function barRead(dev: DeviceState, index: number, at: number, width: number): bigint {
  if (dev.edu && index === VFIO_PCI_REGION.BAR0) return eduRead(dev.edu, at, width);
  return readLE(ram(dev, index), at, width);
}

/** One store of `width` bytes at `at` in the region. */
export function barWrite(s: FakeState, dev: DeviceState, index: number, at: number, width: number, value: bigint): void {
  if (dev.edu && index === VFIO_PCI_REGION.BAR0) eduWrite(s, dev, dev.edu, at, width, value);
  else writeLE(ram(dev, index), at, width, value);
  refreshMirrors(dev);
}

/** What the mappings of a device's regions show changes with the device's state. */
export function refreshMirrors(dev: DeviceState): void {
  for (const m of dev.mirrors) refreshMirror(m);
}

function refreshMirror(m: MemMapping): void {
  const r = m.region!;
  const view = new Uint8Array(m.buffer);
  if (view.length === 0) return;
  if (r.device.edu && r.index === VFIO_PCI_REGION.BAR0) {
    // edu's registers as a 4-byte read shows them (reads have no side effect on edu)
    for (let reg = 0; reg < 0xa0; reg += 4) {
      const at = reg - r.at;
      if (at >= 0 && at + 4 <= view.length) writeLE(view, at, 4, eduRead(r.device.edu, reg, 4));
    }
    return;
  }
  const bar = ram(r.device, r.index);
  view.set(bar.subarray(r.at, r.at + view.length));
}
