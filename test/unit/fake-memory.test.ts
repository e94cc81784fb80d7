// The fake kernel's memory, MMIO, eventfd, interrupt and DMA-mapping models, through raw Kernel calls:
// each answer as the addon (native/vfio_addon.c) or the kernel (vfio_iommu_type1.c, iommufd/ioas.c,
// io_pagetable.c, vfio_pci_core.c, vfio_pci_intrs.c) gives it, so the library's tests can rely on them.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { decode, encode } from '../../src/uapi/struct.js';
import { VFIO, VFIO_IRQ_SET, vfio_device_bind_iommufd, vfio_irq_set, vfio_pci_hot_reset_info } from '../../src/uapi/vfio.js';
import { EDU, FakeKernel, TESTDEV } from '../fake-kernel.js';
import { K, throwsErrno, isAddonTypeError, isOutOfRange, container, closeAll } from '../fake-raw.js';

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
