// The fake kernel's memory, MMIO, eventfd, interrupt and DMA-mapping models, through raw Kernel calls:
// each answer as the addon (native/vfio_addon.c) or the kernel (vfio_iommu_type1.c, iommufd/ioas.c,
// io_pagetable.c, vfio_pci_core.c, vfio_pci_intrs.c) gives it, so the library's tests can rely on them.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { isSysError } from '../../src/sys/kernel.js';
import { decode, encode } from '../../src/uapi/struct.js';
import {
  IOMMU,
  IOMMU_IOAS_MAP_FLAG,
  iommu_ioas_alloc,
  iommu_ioas_iova_ranges,
  iommu_ioas_map,
  iommu_ioas_unmap,
  iommu_iova_range,
} from '../../src/uapi/iommufd.js';
import {
  VFIO,
  VFIO_DMA_MAP_FLAG,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IRQ_SET,
  VFIO_NOIOMMU_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  capabilities,
  vfio_device_attach_iommufd_pt,
  vfio_device_bind_iommufd,
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  vfio_iommu_type1_info,
  vfio_irq_set,
  vfio_pci_hot_reset_info,
} from '../../src/uapi/vfio.js';
import { EDU, FakeKernel, TESTDEV, type Errno } from '../fake-kernel.js';

const K = 4096;
const U64_MAX = (1n << 64n) - 1n;

function throwsErrno(fn: () => unknown, code: Errno, syscall?: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isSysError(e), `not a system error: ${String(e)}`);
    assert.equal(e.code, code);
    if (syscall) assert.equal(e.syscall, syscall);
    return true;
  });
}
const isAddonTypeError = (e: unknown): boolean => e instanceof TypeError && (e as { code?: string }).code === 'ERR_INVALID_ARG_TYPE';
const isOutOfRange = (e: unknown): boolean => e instanceof RangeError && (e as { code?: string }).code === 'ERR_OUT_OF_RANGE';
const int32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
};

/** An iommufd with a bound, attached edu: [iommufd, cdev, ioas] */
function iommufdWithDevice(k: FakeKernel): [number, number, number] {
  const iommufd = k.open('/dev/iommu');
  const cdev = k.open('/dev/vfio/devices/vfio0');
  k.ioctl(cdev, VFIO.DEVICE_BIND_IOMMUFD, encode(vfio_device_bind_iommufd, { argsz: 16, iommufd }));
  const ioas = ioasAlloc(k, iommufd);
  k.ioctl(cdev, VFIO.DEVICE_ATTACH_IOMMUFD_PT, encode(vfio_device_attach_iommufd_pt, { argsz: 12, pt_id: ioas }));
  return [iommufd, cdev, ioas];
}
function ioasAlloc(k: FakeKernel, iommufd: number): number {
  const b = encode(iommu_ioas_alloc, { size: iommu_ioas_alloc.size });
  k.ioctl(iommufd, IOMMU.IOAS_ALLOC, b);
  return decode(iommu_ioas_alloc, b).out_ioas_id;
}
function ioasMap(k: FakeKernel, iommufd: number, ioas: number, uva: bigint, length: bigint, iova: bigint, flags = IOMMU_IOAS_MAP_FLAG.FIXED_IOVA | IOMMU_IOAS_MAP_FLAG.READABLE | IOMMU_IOAS_MAP_FLAG.WRITEABLE): bigint {
  const b = encode(iommu_ioas_map, { size: iommu_ioas_map.size, flags, ioas_id: ioas, user_va: uva, length, iova });
  k.ioctl(iommufd, IOMMU.IOAS_MAP, b);
  return decode(iommu_ioas_map, b).iova;
}
function ioasUnmap(k: FakeKernel, iommufd: number, ioas: number, iova: bigint, length: bigint): bigint {
  const b = encode(iommu_ioas_unmap, { size: iommu_ioas_unmap.size, ioas_id: ioas, iova, length });
  k.ioctl(iommufd, IOMMU.IOAS_UNMAP, b);
  return decode(iommu_ioas_unmap, b).length;
}

/** A container with edu's group in it and the IOMMU type set: [container, group, device] */
function container(k: FakeKernel, type = VFIO_TYPE1v2_IOMMU): [number, number, number] {
  const c = k.open('/dev/vfio/vfio');
  const g = k.open(k.iommu === 'noiommu' ? '/dev/vfio/noiommu-0' : '/dev/vfio/3');
  k.ioctl(g, VFIO.GROUP_SET_CONTAINER, int32(c));
  k.ioctl(c, VFIO.SET_IOMMU, type);
  const d = k.ioctl(g, VFIO.GROUP_GET_DEVICE_FD, Buffer.from(`${EDU}\0`));
  return [c, g, d];
}
function mapDma(k: FakeKernel, c: number, vaddr: bigint, iova: bigint, size: bigint, flags = VFIO_DMA_MAP_FLAG.READ | VFIO_DMA_MAP_FLAG.WRITE): void {
  k.ioctl(c, VFIO.IOMMU_MAP_DMA, encode(vfio_iommu_type1_dma_map, { argsz: 32, flags, vaddr, iova, size }));
}
function unmapDma(k: FakeKernel, c: number, iova: bigint, size: bigint, flags = 0): bigint {
  const b = encode(vfio_iommu_type1_dma_unmap, { argsz: 24, flags, iova, size });
  k.ioctl(c, VFIO.IOMMU_UNMAP_DMA, b);
  return decode(vfio_iommu_type1_dma_unmap, b).size;
}
function closeAll(k: FakeKernel, ...fds: number[]): void {
  for (const fd of fds.reverse()) k.close(fd);
  assert.equal(k.openFds(), 0);
}

describe('memory (the addon\'s mappings)', () => {
  test('allocDma: distinct page-aligned addresses (2 MiB for huge pages); unmap detaches; addressOf after it is EFAULT', () => {
    const k = FakeKernel.host();
    const a = k.allocDma(100, false);
    const b = k.allocDma(K, false);
    const h = k.allocDma(K, true);
    assert.equal(a.byteLength, 100);
    assert.equal(k.addressOf(a) % BigInt(K), 0n);
    assert.ok(k.addressOf(b) >= k.addressOf(a) + BigInt(2 * K), 'a guard page between mappings');
    assert.equal(k.addressOf(h) % (2n << 20n), 0n);
    assert.equal(k.liveMappings(), 3);
    const view = new Uint8Array(a);
    k.unmap(a);
    assert.equal(view.length, 0);
    assert.equal(a.byteLength, 0);
    k.unmap(a);
    throwsErrno(() => k.addressOf(a), 'EFAULT', 'addressOf');
    throwsErrno(() => k.mmioRead(a, 0, 4), 'EFAULT', 'mmio');
    k.unmap(b);
    k.unmap(h);
    assert.equal(k.liveMappings(), 0);
  });

  test('what the addon refuses before any system call: foreign buffers, length 0, bad widths and values', () => {
    const k = FakeKernel.host();
    assert.throws(() => k.addressOf(new ArrayBuffer(8)), isAddonTypeError);
    assert.throws(() => k.unmap(new ArrayBuffer(8)), isAddonTypeError);
    assert.throws(() => k.allocDma(0, false), isAddonTypeError);
    const m = k.allocDma(K, false);
    assert.throws(() => k.mmioRead(m, 0, 3 as 4), isAddonTypeError);
    assert.throws(() => k.mmioWrite(m, 0, 4, -1), isAddonTypeError);
    for (const [off, w] of [[K, 1], [K - 2, 4], [2, 4], [4, 8], [-1, 1]] as const) {
      assert.throws(() => k.mmioRead(m, off, w as 4), isOutOfRange, `${off}/${w}`);
    }
    k.unmap(m);
  });

  test('mmio on DMA memory: little-endian loads and stores of exactly the width', () => {
    const k = FakeKernel.host();
    const m = k.allocDma(K, false);
    k.mmioWrite(m, 8, 8, 0x0102030405060708n);
    assert.equal(k.mmioRead(m, 8, 1), 0x08);
    assert.equal(k.mmioRead(m, 8, 2), 0x0708);
    assert.equal(k.mmioRead(m, 12, 4), 0x01020304);
    assert.equal(k.mmioRead(m, 8, 8), 0x0102030405060708n);
    k.mmioWrite(m, 0, 2, 0x12345);
    assert.deepEqual([...new Uint8Array(m, 0, 3)], [0x45, 0x23, 0], 'truncated to the width');
    k.unmap(m);
  });

  test('huge pages run out: ENOMEM (mmap), and come back when unmapped', () => {
    const k = FakeKernel.host();
    k.hugePagesFree = 2;
    const a = k.allocDma(3 << 20, true);
    throwsErrno(() => k.allocDma(1, true), 'ENOMEM', 'mmap');
    k.unmap(a);
    k.unmap(k.allocDma(4 << 20, true));
  });

  test('mmap of a device region: only mmap-able BARs, inside them, at page offsets', () => {
    const k = FakeKernel.host();
    const iommufd = k.open('/dev/iommu');
    const cdev = k.open('/dev/vfio/devices/vfio0');
    throwsErrno(() => k.mmap(cdev, 0n, K, true), 'EINVAL', 'mmap'); // parked
    k.ioctl(cdev, VFIO.DEVICE_BIND_IOMMUFD, encode(vfio_device_bind_iommufd, { argsz: 16, iommufd }));
    throwsErrno(() => k.mmap(99, 0n, K, true), 'EBADF');
    throwsErrno(() => k.mmap(iommufd, 0n, K, true), 'ENODEV');
    throwsErrno(() => k.mmap(cdev, 7n << 40n, 256, true), 'EINVAL'); // CONFIG
    throwsErrno(() => k.mmap(cdev, 1n << 40n, K, true), 'EINVAL'); // BAR1: empty
    throwsErrno(() => k.mmap(cdev, 0x800n, K, true), 'EINVAL'); // not a page offset
    throwsErrno(() => k.mmap(cdev, 0xff000n, 2 * K, true), 'EINVAL'); // past the BAR
    assert.throws(() => k.mmap(cdev, 0n, 0, true), isAddonTypeError);
    const bar = k.mmap(cdev, 0n, 0x100000, true);
    assert.equal(k.mmioRead(bar, 0, 4), 0x010000ed);
    const tail = k.mmap(cdev, 0xff000n, K, false);
    assert.equal(k.mmioRead(tail, 0, 4), 0xffffffff);
    assert.throws(() => k.mmioWrite(tail, 0, 4, 0), /read-only mapping/);
    // the device file outlives its fd while a region is mapped (vma->vm_file)
    k.close(cdev);
    assert.equal(k.deviceOpenCount(EDU), 1);
    k.unmap(bar);
    assert.equal(k.deviceOpenCount(EDU), 1);
    k.unmap(tail);
    assert.equal(k.deviceOpenCount(EDU), 0);
    closeAll(k, iommufd);
    assert.equal(k.liveMappings(), 0);
  });

  test('/proc/self/limits: a Max locked memory line, as setMemlock sets it', () => {
    const k = FakeKernel.host();
    const line = (): string => k.readText('/proc/self/limits').split('\n').find((l) => l.startsWith('Max locked memory'))!;
    assert.match(line(), /^Max locked memory\s+8388608\s+8388608\s+bytes\s*$/);
    k.setMemlock('unlimited');
    assert.match(line(), /^Max locked memory\s+unlimited\s+unlimited\s+bytes/);
    k.setMemlock(65536, 131072);
    assert.match(line(), /^Max locked memory\s+65536\s+131072\s+bytes/);
    assert.match(k.readText('/proc/self/limits'), /^Limit\s+Soft Limit\s+Hard Limit\s+Units/);
  });
});

describe('eventfds', () => {
  test('watch delivers the count on a later turn of the loop, once per read; unwatch stops it', async () => {
    const k = FakeKernel.host();
    const fd = k.eventfd();
    assert.deepEqual(k.describeFd(fd), { fd, path: 'anon_inode:[eventfd]', kind: 'eventfd' });
    const got: bigint[] = [];
    const record = (err: Error | null, count?: bigint): void => {
      assert.equal(err, null);
      got.push(count!);
    };
    const h = k.watch(fd, record);
    k.signalEventfd(fd);
    k.signalEventfd(fd);
    assert.deepEqual(got, [], 'not synchronously');
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(got, [2n], 'one read takes the whole counter');
    k.unwatch(h);
    k.unwatch(h);
    k.signalEventfd(fd);
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(got, [2n]);
    // a watch on an eventfd already signalled fires at once
    k.watch(fd, record);
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(got, [2n, 1n]);
    assert.equal(k.activeWatches(), 1, 'a watch left is counted');
    k.close(fd);
    assert.equal(k.openFds(), 0);
  });

  test('watch refuses what is not an open eventfd', () => {
    const k = FakeKernel.host();
    throwsErrno(() => k.watch(99, () => undefined), 'EBADF');
    const c = k.open('/dev/vfio/vfio');
    throwsErrno(() => k.watch(c, () => undefined), 'EPERM');
    k.close(c);
  });
});

describe('interrupts (VFIO_DEVICE_SET_IRQS)', () => {
  function irqSet(index: number, flags: number, start: number, count: number, fds: number[] = []): Buffer {
    const b = encode(vfio_irq_set, { argsz: vfio_irq_set.size + 4 * fds.length, flags, index, start, count }, vfio_irq_set.size + 4 * fds.length);
    fds.forEach((fd, i) => b.writeInt32LE(fd, vfio_irq_set.size + 4 * i));
    return b;
  }
  const S = VFIO_IRQ_SET;

  test('MSI while INTx is enabled: EINVAL; disabling takes DATA_NONE|TRIGGER with count 0; loopback fires', async () => {
    const k = FakeKernel.host();
    const [c, g, d] = container(k);
    const e1 = k.eventfd();
    const e2 = k.eventfd();
    k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(0, S.DATA_EVENTFD | S.ACTION_TRIGGER, 0, 1, [e1]));
    assert.equal(k.irqState(EDU).type, 'intx');
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(1, S.DATA_EVENTFD | S.ACTION_TRIGGER, 0, 1, [e2])), 'EINVAL');
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(1, S.DATA_NONE | S.ACTION_TRIGGER, 0, 0)), 'EINVAL', 'ioctl'); // MSI is not enabled
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(1, S.DATA_NONE | S.ACTION_UNMASK, 0, 1)), 'ENOTTY'); // no MSI masking
    k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(0, S.DATA_NONE | S.ACTION_TRIGGER, 0, 0));
    assert.equal(k.irqState(EDU).type, 'none');
    k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(1, S.DATA_EVENTFD | S.ACTION_TRIGGER, 0, 1, [e2]));
    let fired = 0n;
    k.watch(e2, (_e, n) => (fired += n!));
    k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(1, S.DATA_NONE | S.ACTION_TRIGGER, 0, 1)); // loopback
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(fired, 1n);
    closeAll(k, c, g, d, e1, e2);
    assert.equal(k.irqState(EDU).type, 'none', 'closing the device disabled its interrupts');
  });

  test('validation: index, start/count beyond the vectors, data shorter than argsz says, not an eventfd', () => {
    const k = FakeKernel.host();
    const [c, g, d] = container(k);
    const efd = k.eventfd();
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(5, S.DATA_NONE | S.ACTION_TRIGGER, 0, 0)), 'EINVAL');
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(1, S.DATA_EVENTFD | S.ACTION_TRIGGER, 0, 2, [efd, efd])), 'EINVAL'); // 1 vector
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(2, S.DATA_EVENTFD | S.ACTION_TRIGGER, 0, 1, [efd])), 'EINVAL'); // no MSI-X
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_SET_IRQS, encode(vfio_irq_set, { argsz: 20, flags: S.DATA_EVENTFD | S.ACTION_TRIGGER, index: 1, count: 1 })), 'EINVAL');
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(1, S.DATA_EVENTFD | S.ACTION_TRIGGER, 0, 1, [c])), 'EINVAL'); // a container
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(1, S.DATA_EVENTFD | S.ACTION_TRIGGER, 0, 1, [999])), 'EBADF');
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(3, S.DATA_EVENTFD | S.ACTION_TRIGGER, 0, 1, [efd])), 'EINVAL'); // ERR: not PCIe
    k.ioctl(d, VFIO.DEVICE_SET_IRQS, irqSet(4, S.DATA_EVENTFD | S.ACTION_TRIGGER, 0, 1, [efd])); // REQ beside anything
    assert.equal(k.irqState(EDU).req, true);
    closeAll(k, c, g, d, efd);
  });

  test('VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: ENOSPC with the count when argsz is too small', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, hotReset: [EDU, TESTDEV] }, { address: TESTDEV }] });
    const [c, g, d] = container(k);
    const hdr = encode(vfio_pci_hot_reset_info, { argsz: 12 });
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_GET_PCI_HOT_RESET_INFO, hdr), 'ENOSPC');
    assert.equal(decode(vfio_pci_hot_reset_info, hdr).count, 2);
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_GET_PCI_HOT_RESET_INFO, encode(vfio_pci_hot_reset_info, { argsz: 8 })), 'EINVAL');
    closeAll(k, c, g, d);
  });
});

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
