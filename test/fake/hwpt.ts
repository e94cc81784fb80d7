// /dev/iommu's hardware page tables and hardware info (drivers/iommu/iommufd/hw_pagetable.c,
// device.c's iommufd_get_hw_info, io_pagetable.c's dirty bitmap checks): a paging HWPT over an IOAS,
// with dirty tracking where the fake IOMMU has it (HostOptions.iommuDirtyTracking); the devices
// attached to it mark the pages their DMA writes (memory.ts).
import { decode, writeField } from '../../src/uapi/struct.js';
import {
  IOMMU_HWPT_ALLOC_FLAG,
  IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
  IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR,
  IOMMU_HW_CAP,
  IOMMU_HW_INFO_TYPE,
  iommu_hw_info,
  iommu_hw_info_vtd,
  iommu_hwpt_alloc,
  iommu_hwpt_get_dirty_bitmap,
  iommu_hwpt_set_dirty_tracking,
} from '../../src/uapi/iommufd.js';
import { ioctlError } from './errno.js';
import { iommufdCmd as cmd } from './iommufd.js';
import { userMemory } from './memory.js';
import { U64_MAX, type DeviceState, type FakeState, type HwptObject, type IommufdCtx } from './state.js';

type Arg = number | Buffer | undefined;

/** what QEMU 7.2's emulated VT-d reports: the test bed's iommufd-6.12-intel guest read them from /sys/class/iommu/dmar0/intel-iommu/{cap,ecap} */
export const FAKE_VTD = { cap: 0xd2008c22260206n, ecap: 0xf00f4an } as const;

/** iommufd_get_device: an id that is a bound (physical) device; an mdev is an access, not a device */
function physicalDevice(ctx: IommufdCtx, id: number): DeviceState {
  const o = ctx.objects.get(id);
  if (o?.type !== 'device' || o.device.group?.emulated) throw ioctlError('ENOENT');
  return o.device;
}

function hwptPaging(ctx: IommufdCtx, id: number): HwptObject {
  const o = ctx.objects.get(id);
  if (o?.type !== 'hwpt') throw ioctlError('ENOENT');
  return o;
}

export function getHwInfo(s: FakeState, ctx: IommufdCtx, arg: Arg): number {
  const buf = cmd(arg, iommu_hw_info.size);
  const c = decode(iommu_hw_info, buf);
  if (c.flags !== 0 || buf.readUIntLE(29, 3) !== 0) throw ioctlError('EOPNOTSUPP'); // flags, __reserved[3]
  physicalDevice(ctx, c.dev_id);
  // intel_iommu_hw_info; virtio-iommu has no hw_info op: TYPE_NONE, no data
  const data = Buffer.alloc(s.iommu === 'intel' ? iommu_hw_info_vtd.size : 0);
  if (data.length > 0) {
    writeField(data, iommu_hw_info_vtd.fields.cap_reg, FAKE_VTD.cap);
    writeField(data, iommu_hw_info_vtd.fields.ecap_reg, FAKE_VTD.ecap);
  }
  const copy = Math.min(c.data_len, data.length);
  if (c.data_len > 0) {
    const user = userMemory(s, c.data_uptr, c.data_len);
    user.fill(0);
    data.copy(user, 0, 0, copy);
  }
  writeField(buf, iommu_hw_info.fields.data_len, data.length);
  writeField(buf, iommu_hw_info.fields.out_data_type, s.iommu === 'intel' ? IOMMU_HW_INFO_TYPE.INTEL_VTD : IOMMU_HW_INFO_TYPE.NONE);
  writeField(buf, iommu_hw_info.fields.out_capabilities, s.iommuDirtyTracking ? BigInt(IOMMU_HW_CAP.DIRTY_TRACKING) : 0n);
  writeField(buf, iommu_hw_info.fields.out_max_pasid_log2, 0);
  return 0;
}

export function hwptAlloc(s: FakeState, ctx: IommufdCtx, arg: Arg): number {
  const buf = cmd(arg, iommu_hwpt_alloc.size);
  const c = decode(iommu_hwpt_alloc, buf);
  if (buf.readUInt32LE(20) !== 0) throw ioctlError('EOPNOTSUPP'); // __reserved
  if (c.data_type !== 0 || c.data_len !== 0) throw ioctlError('EINVAL'); // nested (user data) HWPTs are not modelled
  physicalDevice(ctx, c.dev_id);
  const ioas = ctx.objects.get(c.pt_id);
  if (ioas?.type !== 'ioas') throw ioctlError('EINVAL');
  const F = IOMMU_HWPT_ALLOC_FLAG;
  // virtio-iommu has no domain_alloc_user: any flag is EOPNOTSUPP there
  if (c.flags !== 0 && s.iommu !== 'intel') throw ioctlError('EOPNOTSUPP');
  if ((c.flags & ~(F.NEST_PARENT | F.DIRTY_TRACKING)) !== 0) throw ioctlError('EOPNOTSUPP');
  if ((c.flags & F.DIRTY_TRACKING) !== 0 && !s.iommuDirtyTracking) throw ioctlError('EOPNOTSUPP');
  // iopt_table_add_domain: 6.12's virtio-iommu sets a domain's aperture at its first attach, so a
  // domain allocated apart covers none of the IOAS's mappings
  if (s.iommu === 'virtio' && ioas.areas.length > 0) throw ioctlError('EADDRINUSE');
  const id = ctx.nextId++;
  ctx.objects.set(id, { type: 'hwpt', ioas: c.pt_id, users: 0, user: true, dirtyOps: (c.flags & F.DIRTY_TRACKING) !== 0, tracking: false, dirty: new Set() });
  writeField(buf, iommu_hwpt_alloc.fields.out_hwpt_id, id);
  return 0;
}

export function hwptSetDirtyTracking(_s: FakeState, ctx: IommufdCtx, arg: Arg): number {
  const c = decode(iommu_hwpt_set_dirty_tracking, cmd(arg, iommu_hwpt_set_dirty_tracking.size));
  if ((c.flags & ~IOMMU_HWPT_DIRTY_TRACKING_ENABLE) !== 0) throw ioctlError('EOPNOTSUPP');
  const h = hwptPaging(ctx, c.hwpt_id);
  if (!h.dirtyOps) throw ioctlError('EOPNOTSUPP');
  const enable = c.flags === IOMMU_HWPT_DIRTY_TRACKING_ENABLE;
  if (enable && !h.tracking) h.dirty!.clear(); // enabling clears the domain's dirty bits first
  h.tracking = enable;
  return 0;
}

export function hwptGetDirtyBitmap(s: FakeState, ctx: IommufdCtx, arg: Arg): number {
  const buf = cmd(arg, iommu_hwpt_get_dirty_bitmap.size);
  const c = decode(iommu_hwpt_get_dirty_bitmap, buf);
  if ((c.flags & ~IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR) !== 0 || buf.readUInt32LE(12) !== 0) throw ioctlError('EOPNOTSUPP');
  const h = hwptPaging(ctx, c.hwpt_id);
  // iommufd_check_iova_range
  const last = c.iova + c.length - 1n;
  if (c.length === 0n || last > U64_MAX) throw ioctlError('EOVERFLOW');
  if ((c.iova & 0xfffn) !== 0n || ((last + 1n) & 0xfffn) !== 0n) throw ioctlError('EINVAL');
  if (c.page_size === 0n) throw ioctlError('EINVAL');
  if ((c.iova & (c.page_size - 1n)) !== 0n || ((last + 1n) & (c.page_size - 1n)) !== 0n) throw ioctlError('EINVAL');
  if (!h.dirtyOps) throw ioctlError('EOPNOTSUPP');
  const pages = (c.length + c.page_size - 1n) / c.page_size;
  const bitmap = userMemory(s, c.data, Number(((pages + 63n) / 64n) * 8n));
  for (const page of [...h.dirty!]) {
    if (page < c.iova || page > last) continue;
    const bit = (page - c.iova) / c.page_size;
    bitmap[Number(bit >> 3n)]! |= 1 << Number(bit & 7n);
    if ((c.flags & IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR) === 0) h.dirty!.delete(page);
  }
  return 0;
}
