// Raw-call fixtures shared by the fake kernel's own tests (fake-kernel, fake-memory, fake-iommu): the
// ioctls the library's call layer would make, issued by hand so that each answer of the fake is seen.
import assert from 'node:assert/strict';
import { isSysError } from '../src/sys/kernel.js';
import { decode, encode } from '../src/uapi/struct.js';
import { IOMMU, IOMMU_IOAS_MAP_FLAG, iommu_ioas_alloc, iommu_ioas_map, iommu_ioas_unmap } from '../src/uapi/iommufd.js';
import {
  VFIO,
  VFIO_DMA_MAP_FLAG,
  VFIO_TYPE1v2_IOMMU,
  vfio_device_attach_iommufd_pt,
  vfio_device_bind_iommufd,
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
} from '../src/uapi/vfio.js';
import { EDU, type Errno, type FakeKernel } from './fake-kernel.js';

export const K = 4096;
export const U64_MAX = (1n << 64n) - 1n;

/** fn throws the fake's system error `code` (a negative errno, as libuv's), from `syscall` if given. */
export function throwsErrno(fn: () => unknown, code: Errno, syscall?: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isSysError(e), `not a system error: ${String(e)}`);
    assert.equal(e.code, code);
    assert.ok(e.errno < 0);
    if (syscall) assert.equal(e.syscall, syscall);
    return true;
  });
}
export const isAddonTypeError = (e: unknown): boolean => e instanceof TypeError && (e as { code?: string }).code === 'ERR_INVALID_ARG_TYPE';
export const isOutOfRange = (e: unknown): boolean => e instanceof RangeError && (e as { code?: string }).code === 'ERR_OUT_OF_RANGE';
export const int32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
};

export function bind(k: FakeKernel, cdevFd: number, iommufd: number): number {
  const b = encode(vfio_device_bind_iommufd, { argsz: vfio_device_bind_iommufd.size, iommufd });
  k.ioctl(cdevFd, VFIO.DEVICE_BIND_IOMMUFD, b);
  return decode(vfio_device_bind_iommufd, b).out_devid;
}
export function ioasAlloc(k: FakeKernel, iommufd: number): number {
  const b = encode(iommu_ioas_alloc, { size: iommu_ioas_alloc.size });
  k.ioctl(iommufd, IOMMU.IOAS_ALLOC, b);
  return decode(iommu_ioas_alloc, b).out_ioas_id;
}
export function attach(k: FakeKernel, cdevFd: number, pt: number): number {
  const b = encode(vfio_device_attach_iommufd_pt, { argsz: vfio_device_attach_iommufd_pt.size, pt_id: pt });
  k.ioctl(cdevFd, VFIO.DEVICE_ATTACH_IOMMUFD_PT, b);
  return decode(vfio_device_attach_iommufd_pt, b).pt_id;
}
export function iommufdWithDevice(k: FakeKernel): [number, number, number] {
  const iommufd = k.open('/dev/iommu');
  const cdev = k.open('/dev/vfio/devices/vfio0');
  k.ioctl(cdev, VFIO.DEVICE_BIND_IOMMUFD, encode(vfio_device_bind_iommufd, { argsz: 16, iommufd }));
  const ioas = ioasAlloc(k, iommufd);
  k.ioctl(cdev, VFIO.DEVICE_ATTACH_IOMMUFD_PT, encode(vfio_device_attach_iommufd_pt, { argsz: 12, pt_id: ioas }));
  return [iommufd, cdev, ioas];
}
export function ioasMap(k: FakeKernel, iommufd: number, ioas: number, uva: bigint, length: bigint, iova: bigint, flags = IOMMU_IOAS_MAP_FLAG.FIXED_IOVA | IOMMU_IOAS_MAP_FLAG.READABLE | IOMMU_IOAS_MAP_FLAG.WRITEABLE): bigint {
  const b = encode(iommu_ioas_map, { size: iommu_ioas_map.size, flags, ioas_id: ioas, user_va: uva, length, iova });
  k.ioctl(iommufd, IOMMU.IOAS_MAP, b);
  return decode(iommu_ioas_map, b).iova;
}
export function ioasUnmap(k: FakeKernel, iommufd: number, ioas: number, iova: bigint, length: bigint): bigint {
  const b = encode(iommu_ioas_unmap, { size: iommu_ioas_unmap.size, ioas_id: ioas, iova, length });
  k.ioctl(iommufd, IOMMU.IOAS_UNMAP, b);
  return decode(iommu_ioas_unmap, b).length;
}

/** A container with edu's group in it and the IOMMU type set: [container, group, device] */
export function container(k: FakeKernel, type = VFIO_TYPE1v2_IOMMU): [number, number, number] {
  const c = k.open('/dev/vfio/vfio');
  const g = k.open(k.iommu === 'noiommu' ? '/dev/vfio/noiommu-0' : '/dev/vfio/3');
  k.ioctl(g, VFIO.GROUP_SET_CONTAINER, int32(c));
  k.ioctl(c, VFIO.SET_IOMMU, type);
  const d = k.ioctl(g, VFIO.GROUP_GET_DEVICE_FD, Buffer.from(`${EDU}\0`));
  return [c, g, d];
}
export function mapDma(k: FakeKernel, c: number, vaddr: bigint, iova: bigint, size: bigint, flags = VFIO_DMA_MAP_FLAG.READ | VFIO_DMA_MAP_FLAG.WRITE): void {
  k.ioctl(c, VFIO.IOMMU_MAP_DMA, encode(vfio_iommu_type1_dma_map, { argsz: 32, flags, vaddr, iova, size }));
}
export function unmapDma(k: FakeKernel, c: number, iova: bigint, size: bigint, flags = 0): bigint {
  const b = encode(vfio_iommu_type1_dma_unmap, { argsz: 24, flags, iova, size });
  k.ioctl(c, VFIO.IOMMU_UNMAP_DMA, b);
  return decode(vfio_iommu_type1_dma_unmap, b).size;
}
export function closeAll(k: FakeKernel, ...fds: number[]): void {
  for (const fd of fds.reverse()) k.close(fd);
  assert.equal(k.openFds(), 0);
}

