// The fake kernel's IOMMU: iommufd IOAS mappings (iommufd/ioas.c, io_pagetable.c) and type1 container
// mappings (vfio_iommu_type1.c), through raw Kernel calls, each answer as the kernel gives it.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { decode, encode } from '../../src/uapi/struct.js';
import { IOMMU, IOMMU_IOAS_MAP_FLAG, iommu_ioas_iova_ranges, iommu_iova_range } from '../../src/uapi/iommufd.js';
import { VFIO, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES, VFIO_NOIOMMU_IOMMU, VFIO_TYPE1_IOMMU, capabilities, vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfio_iommu_type1_info } from '../../src/uapi/vfio.js';
import { FakeKernel } from '../fake-kernel.js';
import { K, U64_MAX, throwsErrno, ioasAlloc, iommufdWithDevice, ioasMap, ioasUnmap, container, mapDma, unmapDma, closeAll } from '../fake-raw.js';

describe('iommufd IOAS mappings', () => {
  test('IOAS_IOVA_RANGES writes through allowed_iovas; EMSGSIZE (count written) when num_iovas is too small', () => {
    const k = FakeKernel.host();
    const [iommufd, cdev, ioas] = iommufdWithDevice(k);
    const out = k.allocDma(K, false);
    const q = (num: number, ptr: bigint): Buffer => encode(iommu_ioas_iova_ranges, { size: 32, ioas_id: ioas, num_iovas: num, allowed_iovas: ptr });
    const b = q(256, k.addressOf(out));
    k.ioctl(iommufd, IOMMU.IOAS_IOVA_RANGES, b);
    assert.deepEqual(decode(iommu_ioas_iova_ranges, b).num_iovas, 2);
    assert.equal(decode(iommu_ioas_iova_ranges, b).out_iova_alignment, 4096n);
    const bytes = Buffer.from(out);
    assert.deepEqual([0, 1].map((i) => decode(iommu_iova_range, bytes, 16 * i)), [{ start: 0n, last: 0xfedfffffn }, { start: 0xfef00000n, last: 0x7fffffffffn }]);
    const small = q(1, k.addressOf(out));
    throwsErrno(() => k.ioctl(iommufd, IOMMU.IOAS_IOVA_RANGES, small), 'EMSGSIZE');
    assert.equal(decode(iommu_ioas_iova_ranges, small).num_iovas, 2);
    const count = q(0, 0n);
    throwsErrno(() => k.ioctl(iommufd, IOMMU.IOAS_IOVA_RANGES, count), 'EMSGSIZE');
    assert.equal(decode(iommu_ioas_iova_ranges, count).num_iovas, 2);
    throwsErrno(() => k.ioctl(iommufd, IOMMU.IOAS_IOVA_RANGES, q(4, 0x1000n)), 'EFAULT');
    throwsErrno(() => k.ioctl(iommufd, IOMMU.IOAS_IOVA_RANGES, encode(iommu_ioas_iova_ranges, { size: 32, ioas_id: 99 })), 'ENOENT');
    // an IOAS without a device: all of it, at byte alignment
    const empty = ioasAlloc(k, iommufd);
    const e = encode(iommu_ioas_iova_ranges, { size: 32, ioas_id: empty, num_iovas: 4, allowed_iovas: k.addressOf(out) });
    k.ioctl(iommufd, IOMMU.IOAS_IOVA_RANGES, e);
    assert.equal(decode(iommu_ioas_iova_ranges, e).out_iova_alignment, 1n);
    assert.deepEqual(decode(iommu_iova_range, Buffer.from(out)), { start: 0n, last: U64_MAX });
    k.unmap(out);
    closeAll(k, iommufd, cdev);
  });

  test('IOAS_MAP: EEXIST on overlap, EINVAL outside the ranges or unaligned, EFAULT for memory not mapped, ENOMEM past memlock', () => {
    const k = FakeKernel.host();
    const [iommufd, cdev, ioas] = iommufdWithDevice(k);
    const buf = k.allocDma(4 * K, false);
    const va = k.addressOf(buf);
    assert.equal(ioasMap(k, iommufd, ioas, va, BigInt(2 * K), 0x10000n), 0x10000n);
    throwsErrno(() => ioasMap(k, iommufd, ioas, va, BigInt(K), 0x11000n), 'EEXIST');
    throwsErrno(() => ioasMap(k, iommufd, ioas, va, BigInt(K), 0xfee00000n), 'EINVAL');
    throwsErrno(() => ioasMap(k, iommufd, ioas, va, BigInt(K), 0x8000000000n), 'EINVAL');
    throwsErrno(() => ioasMap(k, iommufd, ioas, va, BigInt(K), 0x20800n), 'EINVAL');
    throwsErrno(() => ioasMap(k, iommufd, ioas, va, 0n, 0x20000n), 'EINVAL');
    throwsErrno(() => ioasMap(k, iommufd, ioas, va + BigInt(4 * K), BigInt(K), 0x20000n), 'EFAULT');
    throwsErrno(() => ioasMap(k, iommufd, ioas, va, BigInt(K), 0x20000n, IOMMU_IOAS_MAP_FLAG.FIXED_IOVA), 'EINVAL'); // neither R nor W
    throwsErrno(() => ioasMap(k, iommufd, ioas, va, BigInt(K), 0x20000n, 1 << 3), 'EOPNOTSUPP');
    throwsErrno(() => ioasMap(k, iommufd, 99, va, BigInt(K), 0x20000n), 'ENOENT');
    // without FIXED_IOVA the kernel picks (never 0)
    assert.equal(ioasMap(k, iommufd, ioas, va, BigInt(K), 0n, IOMMU_IOAS_MAP_FLAG.READABLE), 0x1000n);
    k.ipcLock = false;
    k.setMemlock(2 * K);
    throwsErrno(() => ioasMap(k, iommufd, ioas, va, BigInt(3 * K), 0x40000n), 'ENOMEM');
    assert.equal(ioasMap(k, iommufd, ioas, va, BigInt(2 * K), 0x40000n), 0x40000n);
    assert.equal(k.pinnedBytes(), BigInt(2 * K));
    assert.equal(k.iommuMappings().length, 3);
    k.unmap(buf);
    closeAll(k, iommufd, cdev);
    assert.deepEqual(k.iommuMappings(), [], 'closing the iommufd (and the device bound to it) dropped the IOAS');
    assert.equal(k.pinnedBytes(), 0n);
    assert.equal(k.liveMappings(), 0);
  });

  test('IOAS_UNMAP: ENOENT when nothing is there or an area would be cut; whole areas, the length written back; all at once', () => {
    const k = FakeKernel.host();
    const [iommufd, cdev, ioas] = iommufdWithDevice(k);
    const buf = k.allocDma(4 * K, false);
    const va = k.addressOf(buf);
    ioasMap(k, iommufd, ioas, va, BigInt(2 * K), 0x10000n);
    ioasMap(k, iommufd, ioas, va, BigInt(K), 0x12000n);
    ioasMap(k, iommufd, ioas, va, BigInt(K), 0x20000n);
    throwsErrno(() => ioasUnmap(k, iommufd, ioas, 0x30000n, BigInt(K)), 'ENOENT');
    throwsErrno(() => ioasUnmap(k, iommufd, ioas, 0x11000n, BigInt(K)), 'ENOENT');
    assert.equal(ioasUnmap(k, iommufd, ioas, 0x10000n, BigInt(3 * K)), BigInt(3 * K), 'two areas at once');
    assert.equal(ioasUnmap(k, iommufd, ioas, 0n, U64_MAX), BigInt(K));
    assert.deepEqual(k.iommuMappings(), []);
    k.unmap(buf);
    closeAll(k, iommufd, cdev);
  });

  test('a bound device keeps the iommufd (and its mappings) alive after its fd closes; the last unbind drops them', () => {
    const k = FakeKernel.host();
    const [iommufd, cdev, ioas] = iommufdWithDevice(k);
    const buf = k.allocDma(K, false);
    ioasMap(k, iommufd, ioas, k.addressOf(buf), BigInt(K), 0x1000n);
    k.unmap(buf);
    assert.equal(k.liveMappings(), 0);
    assert.equal(k.iommuMappings().length, 1, 'the pages stay pinned for the device');
    k.close(iommufd);
    assert.equal(k.iommuMappings().length, 1);
    k.close(cdev);
    assert.deepEqual(k.iommuMappings(), []);
  });

  test('attaching a device whose geometry the IOAS\'s mappings do not fit: EADDRINUSE', () => {
    const k = FakeKernel.host();
    const iommufd = k.open('/dev/iommu');
    const cdev = k.open('/dev/vfio/devices/vfio0');
    k.ioctl(cdev, VFIO.DEVICE_BIND_IOMMUFD, encode(vfio_device_bind_iommufd, { argsz: 16, iommufd }));
    const ioas = ioasAlloc(k, iommufd);
    const buf = k.allocDma(K, false);
    ioasMap(k, iommufd, ioas, k.addressOf(buf), BigInt(K), 0xfee00000n); // the MSI window, free while no device is attached
    throwsErrno(() => k.ioctl(cdev, VFIO.DEVICE_ATTACH_IOMMUFD_PT, encode(vfio_device_attach_iommufd_pt, { argsz: 12, pt_id: ioas })), 'EADDRINUSE');
    ioasUnmap(k, iommufd, ioas, 0xfee00000n, BigInt(K));
    k.ioctl(cdev, VFIO.DEVICE_ATTACH_IOMMUFD_PT, encode(vfio_device_attach_iommufd_pt, { argsz: 12, pt_id: ioas }));
    k.unmap(buf);
    closeAll(k, iommufd, cdev);
  });
});

describe('type1 container mappings', () => {
  function info(k: FakeKernel, c: number): { flags: number; pgsizes: bigint; caps: { id: number; at: number }[]; buf: Buffer } {
    const probe = encode(vfio_iommu_type1_info, { argsz: vfio_iommu_type1_info.size });
    k.ioctl(c, VFIO.IOMMU_GET_INFO, probe);
    const argsz = decode(vfio_iommu_type1_info, probe).argsz;
    assert.ok(argsz > vfio_iommu_type1_info.size, 'argsz grown to hold the capabilities');
    const buf = encode(vfio_iommu_type1_info, { argsz }, argsz);
    k.ioctl(c, VFIO.IOMMU_GET_INFO, buf);
    const i = decode(vfio_iommu_type1_info, buf);
    return { flags: i.flags, pgsizes: i.iova_pgsizes, caps: [...capabilities(buf, i.cap_offset)], buf };
  }

  test('GET_INFO: page sizes, and the migration, DMA_AVAIL and IOVA_RANGE capabilities', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    const [c, g, d] = container(k);
    const i = info(k, c);
    assert.equal(i.flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
    assert.equal(i.pgsizes, 0x40201000n);
    assert.deepEqual(i.caps.map((x) => x.id), [2, 3, 1]);
    assert.ok(i.caps.every((x) => x.at % 8 === 0), 'capabilities are 8-byte aligned');
    const avail = i.buf.readUInt32LE(i.caps[1]!.at + 8);
    assert.equal(avail, 65535);
    const r = i.caps[2]!.at;
    assert.equal(i.buf.readUInt32LE(r + 8), 2);
    assert.deepEqual([i.buf.readBigUInt64LE(r + 16), i.buf.readBigUInt64LE(r + 24), i.buf.readBigUInt64LE(r + 32), i.buf.readBigUInt64LE(r + 40)], [0n, 0xfedfffffn, 0xfef00000n, 0x7fffffffffn]);
    throwsErrno(() => k.ioctl(c, VFIO.IOMMU_GET_INFO, encode(vfio_iommu_type1_info, { argsz: 8 })), 'EINVAL');
    const buf = k.allocDma(K, false);
    mapDma(k, c, k.addressOf(buf), 0x1000n, BigInt(K));
    assert.equal(info(k, c).buf.readUInt32LE(info(k, c).caps[1]!.at + 8), 65534, 'DMA_AVAIL counts down');
    k.unmap(buf);
    closeAll(k, c, g, d);
  });

  test('MAP_DMA: EINVAL before SET_IOMMU, EEXIST on overlap, ENOSPC past dma_entry_limit, EINVAL outside the ranges', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    k.dmaEntryLimit = 2;
    const bare = k.open('/dev/vfio/vfio');
    throwsErrno(() => mapDma(k, bare, 0n, 0n, BigInt(K)), 'EINVAL');
    k.close(bare);
    const [c, g, d] = container(k);
    const buf = k.allocDma(4 * K, false);
    const va = k.addressOf(buf);
    mapDma(k, c, va, 0x10000n, BigInt(2 * K));
    throwsErrno(() => mapDma(k, c, va, 0x11000n, BigInt(K)), 'EEXIST');
    throwsErrno(() => mapDma(k, c, va, 0x20000n, BigInt(K), 0), 'EINVAL');
    throwsErrno(() => mapDma(k, c, va + 0x800n, 0x20000n, BigInt(K)), 'EINVAL');
    throwsErrno(() => mapDma(k, c, va, 0xfee00000n, BigInt(K)), 'EINVAL');
    mapDma(k, c, va, 0x20000n, BigInt(K));
    throwsErrno(() => mapDma(k, c, va, 0x30000n, BigInt(K)), 'ENOSPC');
    k.unmap(buf);
    closeAll(k, c, g, d);
  });

  test('UNMAP_DMA (v2): the size unmapped written back; 0 when nothing is there; EINVAL when it would cut a mapping', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    const [c, g, d] = container(k);
    const buf = k.allocDma(4 * K, false);
    const va = k.addressOf(buf);
    mapDma(k, c, va, 0x10000n, BigInt(2 * K));
    mapDma(k, c, va, 0x12000n, BigInt(K));
    assert.equal(unmapDma(k, c, 0x40000n, BigInt(K)), 0n);
    throwsErrno(() => unmapDma(k, c, 0x11000n, BigInt(K)), 'EINVAL');
    throwsErrno(() => unmapDma(k, c, 0x10000n, BigInt(K)), 'EINVAL');
    assert.equal(unmapDma(k, c, 0x10000n, BigInt(3 * K)), BigInt(3 * K));
    mapDma(k, c, va, 0x10000n, BigInt(K));
    assert.equal(unmapDma(k, c, 0n, 0n, 1 << 1), BigInt(K), 'VFIO_DMA_UNMAP_FLAG_ALL');
    k.unmap(buf);
    closeAll(k, c, g, d);
  });

  test('UNMAP_DMA (v1): an unmap starting inside a mapping unmaps nothing; one covering its start unmaps it whole', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    const [c, g, d] = container(k, VFIO_TYPE1_IOMMU);
    const buf = k.allocDma(4 * K, false);
    mapDma(k, c, k.addressOf(buf), 0x10000n, BigInt(4 * K));
    assert.equal(unmapDma(k, c, 0x11000n, BigInt(K)), 0n);
    assert.equal(unmapDma(k, c, 0x10000n, BigInt(K)), BigInt(4 * K));
    k.unmap(buf);
    closeAll(k, c, g, d);
  });

  test('the last group leaving the container takes the IOMMU and every mapping', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    const [c, g, d] = container(k);
    const buf = k.allocDma(K, false);
    mapDma(k, c, k.addressOf(buf), 0x1000n, BigInt(K));
    k.close(d);
    assert.equal(k.iommuMappings().length, 1, 'the group is still in the container');
    k.close(g);
    assert.deepEqual(k.iommuMappings(), []);
    throwsErrno(() => mapDma(k, c, k.addressOf(buf), 0x1000n, BigInt(K)), 'EINVAL', 'ioctl');
    k.unmap(buf);
    closeAll(k, c);
  });

  test('noiommu: MAP_DMA and GET_INFO answer ENOTTY', () => {
    const k = FakeKernel.host({ iommu: 'noiommu' });
    const [c, g, d] = container(k, VFIO_NOIOMMU_IOMMU);
    const buf = k.allocDma(K, false);
    throwsErrno(() => mapDma(k, c, k.addressOf(buf), 0x1000n, BigInt(K)), 'ENOTTY');
    throwsErrno(() => k.ioctl(c, VFIO.IOMMU_GET_INFO, encode(vfio_iommu_type1_info, { argsz: 24 })), 'ENOTTY');
    k.unmap(buf);
    closeAll(k, c, g, d);
  });
});
