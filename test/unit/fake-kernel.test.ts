// The fake kernel itself: the layout and the answers the other unit tests rely on, each as the test
// bed's real kernels give it (FINDINGS.md sections 4-6, drivers/vfio and drivers/iommu/iommufd).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { isSysError, major, makedev, minor } from '../../src/sys/kernel.js';
import { decode, encode } from '../../src/uapi/struct.js';
import { IOMMU, iommu_destroy, iommu_ioas_alloc } from '../../src/uapi/iommufd.js';
import {
  VFIO,
  VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_NOIOMMU_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  vfio_device_attach_iommufd_pt,
  vfio_device_bind_iommufd,
  vfio_device_info,
  vfio_group_status,
  vfio_region_info,
} from '../../src/uapi/vfio.js';
import { EDU, FakeKernel, TESTDEV } from '../fake-kernel.js';
import { attach, bind, closeAll, int32, ioasAlloc, throwsErrno } from '../fake-raw.js';

const MDEV = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';




describe('errors', () => {
  test('shaped as Node fs errors: code, negative errno, syscall, path, message', () => {
    const k = FakeKernel.host();
    let real: unknown;
    try {
      fs.openSync('/nonexistent-vfio-bind-test', fs.constants.O_RDWR);
    } catch (e) {
      real = e;
    }
    let fake: unknown;
    try {
      k.open('/nonexistent-vfio-bind-test');
    } catch (e) {
      fake = e;
    }
    assert.ok(isSysError(real) && isSysError(fake));
    for (const key of ['code', 'errno', 'syscall', 'path', 'message'] as const) assert.equal(fake[key], real[key], key);
  });

  test('ioctl errors carry no path, as the addon throws them', () => {
    const k = FakeKernel.host();
    const fd = k.open('/dev/iommu'); // (a container without an IOMMU answers EINVAL to what it does not know)
    assert.throws(() => k.ioctl(fd, 0x1234), { code: 'ENOTTY', errno: -25, syscall: 'ioctl', message: 'ENOTTY: inappropriate ioctl for device, ioctl' });
    k.close(fd);
  });

  test('close of an unknown fd: EBADF, and it is recorded', () => {
    const k = FakeKernel.host();
    throwsErrno(() => k.close(99), 'EBADF', 'close');
    const fd = k.open('/dev/iommu');
    k.close(fd);
    throwsErrno(() => k.close(fd), 'EBADF');
    assert.deepEqual(k.badCloses, [99, fd]);
    throwsErrno(() => k.ioctl(fd, VFIO.GET_API_VERSION), 'EBADF', 'ioctl');
    throwsErrno(() => k.fstat(fd), 'EBADF');
  });
});

describe('layout', () => {
  test('the ioctl numbers are those of the x86_64 6.12 headers (FINDINGS.md 5)', () => {
    assert.deepEqual(
      [VFIO.GET_API_VERSION, VFIO.GROUP_GET_DEVICE_FD, VFIO.DEVICE_GET_REGION_INFO, VFIO.DEVICE_BIND_IOMMUFD, VFIO.DEVICE_ATTACH_IOMMUFD_PT, IOMMU.IOAS_ALLOC],
      [0x3b64, 0x3b6a, 0x3b6c, 0x3b76, 0x3b77, 0x3b81],
    );
  });

  test('sysfs of a PCI device on an iommufd kernel', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 3, cdev: 0 }] });
    const dir = `/sys/devices/pci0000:00/${EDU}`;
    assert.equal(k.readlink(`/sys/bus/pci/devices/${EDU}`), `../../../devices/pci0000:00/${EDU}`);
    assert.equal(k.realpath(`/sys/bus/pci/devices/${EDU}`), dir);
    assert.equal(k.readlink(`${dir}/iommu_group`), '../../../kernel/iommu_groups/3');
    assert.equal(k.readlink(`${dir}/driver`), '../../../bus/pci/drivers/vfio-pci');
    assert.equal(k.realpath(`${dir}/subsystem`), '/sys/bus/pci');
    assert.equal(k.realpath(`/sys/kernel/iommu_groups/3/devices/${EDU}`), dir);
    assert.equal(k.readText(`${dir}/vfio-dev/vfio0/dev`), '246:0');
    assert.equal(k.realpath('/sys/class/vfio-dev/vfio0/device'), dir);
    assert.equal(k.readText(`${dir}/vendor`), '0x1234');
    assert.ok(k.exists('/sys/class/misc/iommu'));
    assert.deepEqual(k.readdir('/dev/vfio').sort(), ['3', 'devices', 'vfio']);
    const cdev = k.stat('/dev/vfio/devices/vfio0');
    assert.ok(cdev.isCharacterDevice);
    assert.deepEqual([major(cdev.rdev), minor(cdev.rdev)], [246, 0]);
    assert.equal(k.stat(`/dev/char/246:0`).rdev, cdev.rdev);
    assert.equal(k.stat('/dev/vfio/vfio').rdev, makedev(10, 196));
    throwsErrno(() => k.readlink(dir), 'EINVAL', 'readlink');
    throwsErrno(() => k.readdir(`${dir}/vendor`), 'ENOTDIR');
    throwsErrno(() => k.readText(`${dir}/nothing`), 'ENOENT');
  });

  test('a stock kernel: vfio-dev without dev, no /dev/iommu, no /dev/vfio/devices, no misc/iommu', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    assert.ok(k.exists(`/sys/devices/pci0000:00/${EDU}/vfio-dev/vfio0`));
    assert.ok(!k.exists(`/sys/devices/pci0000:00/${EDU}/vfio-dev/vfio0/dev`));
    for (const p of ['/dev/iommu', '/dev/vfio/devices', '/sys/class/misc/iommu']) assert.ok(!k.exists(p), p);
    assert.ok(k.exists('/dev/vfio/3'));
  });

  test('noiommu: /dev/vfio/noiommu-0, no cdev, /dev/iommu present', () => {
    const k = FakeKernel.host({ iommu: 'noiommu' });
    assert.deepEqual(k.readdir('/dev/vfio').sort(), ['noiommu-0', 'vfio']);
    assert.ok(!k.exists(`/sys/devices/pci0000:00/${EDU}/vfio-dev/vfio0/dev`));
    assert.equal(k.readText('/sys/kernel/iommu_groups/0/name'), 'vfio-noiommu');
    assert.ok(k.exists('/dev/iommu'));
  });

  test('a device bound to a host driver has no vfio-dev and no group node; rebinding it to vfio-pci makes them', () => {
    const k = FakeKernel.host({ devices: [{ address: '0000:00:12.0', driver: 'e1000e', group: 5 }] });
    assert.ok(!k.exists('/dev/vfio/5'));
    assert.ok(!k.exists('/sys/devices/pci0000:00/0000:00:12.0/vfio-dev'));
    k.setDriver('0000:00:12.0', 'vfio-pci');
    assert.ok(k.exists('/dev/vfio/5'));
    assert.ok(k.exists('/dev/vfio/devices/vfio0'));
    k.setDriver('0000:00:12.0', 'e1000e');
    assert.ok(!k.exists('/dev/vfio/5'));
    assert.ok(!k.exists('/dev/vfio/devices/vfio0'));
  });

  test('inaccessible nodes: access(2) fails and open answers EACCES; hidden nodes answer ENOENT', () => {
    const k = FakeKernel.host().inaccessible('/dev/vfio/3').hide('/dev/iommu');
    assert.equal(k.accessible('/dev/vfio/3'), false);
    assert.equal(k.accessible('/dev/vfio/vfio'), true);
    throwsErrno(() => k.open('/dev/vfio/3'), 'EACCES', 'open');
    throwsErrno(() => k.open('/dev/iommu'), 'ENOENT', 'open');
    assert.equal(k.accessible('/dev/iommu'), false);
  });

  test('a planted node with an unknown device number: ENXIO; /dev/null opens', () => {
    const k = FakeKernel.host().plantNode('/dev/vfio/devices/vfio9', makedev(240, 9)).plantNode('/dev/null', makedev(1, 3), 0o666);
    throwsErrno(() => k.open('/dev/vfio/devices/vfio9'), 'ENXIO');
    const fd = k.open('/dev/null');
    throwsErrno(() => k.ioctl(fd, VFIO.GET_API_VERSION), 'ENOTTY');
    k.close(fd);
  });
});

describe('iommufd and the cdev', () => {
  test('a parked cdev refuses everything but BIND with EINVAL, and cannot be read', () => {
    const k = FakeKernel.host();
    const cdev = k.open('/dev/vfio/devices/vfio0');
    assert.equal(k.describeFd(cdev)?.bound, false);
    for (const req of [VFIO.DEVICE_GET_INFO, VFIO.DEVICE_GET_REGION_INFO, VFIO.DEVICE_ATTACH_IOMMUFD_PT, VFIO.DEVICE_RESET, 0x3bff]) {
      throwsErrno(() => k.ioctl(cdev, req, Buffer.alloc(64)), 'EINVAL');
    }
    throwsErrno(() => k.pread(cdev, Buffer.alloc(2), 0x70000000000n), 'EINVAL', 'read');
    closeAll(k, cdev);
  });

  test('bind, IOAS_ALLOC, attach: ids as on 6.12c (devid 1, ioas 2, hwpt 3); a second IOAS gets the next id', () => {
    const k = FakeKernel.host();
    const iommufd = k.open('/dev/iommu');
    const cdev = k.open('/dev/vfio/devices/vfio0');
    assert.equal(bind(k, cdev, iommufd), 1);
    assert.equal(k.deviceOpenCount(EDU), 1);
    assert.equal(ioasAlloc(k, iommufd), 2);
    assert.equal(attach(k, cdev, 2), 3);
    assert.equal(ioasAlloc(k, iommufd), 4);
    const info = encode(vfio_device_info, { argsz: vfio_device_info.size });
    k.ioctl(cdev, VFIO.DEVICE_GET_INFO, info);
    assert.deepEqual(decode(vfio_device_info, info), { argsz: 24, flags: 2, num_regions: 9, num_irqs: 5, cap_offset: 0 });
    throwsErrno(() => attach(k, cdev, 99), 'ENOENT');
    throwsErrno(() => attach(k, cdev, 1), 'EINVAL'); // a device is no page table
    // an IOAS with a domain attached cannot be destroyed; an unused one can
    throwsErrno(() => k.ioctl(iommufd, IOMMU.DESTROY, encode(iommu_destroy, { size: 8, id: 2 })), 'EBUSY');
    k.ioctl(iommufd, IOMMU.DESTROY, encode(iommu_destroy, { size: 8, id: 4 }));
    throwsErrno(() => k.ioctl(iommufd, IOMMU.DESTROY, encode(iommu_destroy, { size: 8, id: 4 })), 'ENOENT');
    throwsErrno(() => k.ioctl(iommufd, IOMMU.IOAS_ALLOC, encode(iommu_ioas_alloc, { size: 4 })), 'EINVAL');
    throwsErrno(() => k.ioctl(iommufd, IOMMU.IOAS_ALLOC, encode(iommu_ioas_alloc, { size: 12, flags: 1 })), 'EOPNOTSUPP');
    throwsErrno(() => k.ioctl(iommufd, IOMMU.IOAS_MAP, Buffer.alloc(40)), 'EINVAL'); // size 0: smaller than the command
    closeAll(k, iommufd, cdev);
    assert.equal(k.deviceOpenCount(EDU), 0);
  });

  test('two devices attached to one IOAS share its automatic domain', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU }, { address: TESTDEV }] });
    const iommufd = k.open('/dev/iommu');
    const a = k.open('/dev/vfio/devices/vfio0');
    const b = k.open('/dev/vfio/devices/vfio1');
    bind(k, a, iommufd);
    bind(k, b, iommufd);
    const ioas = ioasAlloc(k, iommufd);
    assert.equal(attach(k, a, ioas), attach(k, b, ioas));
    closeAll(k, iommufd, a, b);
  });

  test('an emulated (mdev) device is attached to the IOAS itself', () => {
    const k = FakeKernel.host({ iommu: 'none', devices: [], mdevs: [{ uuid: MDEV }] });
    const iommufd = k.open('/dev/iommu');
    const cdev = k.open('/dev/vfio/devices/vfio0');
    bind(k, cdev, iommufd);
    const ioas = ioasAlloc(k, iommufd);
    assert.equal(attach(k, cdev, ioas), ioas);
    closeAll(k, iommufd, cdev);
  });

  test('ownership: one bind per device; the group is blocked while bound; closing releases', () => {
    const k = FakeKernel.host();
    const iommufd = k.open('/dev/iommu');
    const cdev = k.open('/dev/vfio/devices/vfio0');
    bind(k, cdev, iommufd);
    throwsErrno(() => bind(k, cdev, iommufd), 'EINVAL'); // the same fd twice
    const other = k.open('/dev/vfio/devices/vfio0'); // a second open succeeds (parked)...
    throwsErrno(() => bind(k, other, iommufd), 'EINVAL'); // ...its bind does not (open_count != 0)
    throwsErrno(() => k.open('/dev/vfio/3'), 'EBUSY'); // the group is blocked by the cdev bind
    k.close(cdev);
    assert.equal(bind(k, other, iommufd) > 0, true, 'free once the first fd is closed');
    k.close(other);
    const group = k.open('/dev/vfio/3');
    const again = k.open('/dev/vfio/devices/vfio0');
    throwsErrno(() => bind(k, again, iommufd), 'EBUSY'); // vfio_device_block_group: the group is open
    closeAll(k, iommufd, group, again);
  });

  test('bind argument checks', () => {
    const k = FakeKernel.host();
    const iommufd = k.open('/dev/iommu');
    const container = k.open('/dev/vfio/vfio');
    const cdev = k.open('/dev/vfio/devices/vfio0');
    throwsErrno(() => k.ioctl(cdev, VFIO.DEVICE_BIND_IOMMUFD, encode(vfio_device_bind_iommufd, { argsz: 8, iommufd })), 'EINVAL');
    throwsErrno(() => k.ioctl(cdev, VFIO.DEVICE_BIND_IOMMUFD, encode(vfio_device_bind_iommufd, { argsz: 16, flags: 1, iommufd })), 'EINVAL');
    throwsErrno(() => k.ioctl(cdev, VFIO.DEVICE_BIND_IOMMUFD, Buffer.alloc(8)), 'EFAULT');
    throwsErrno(() => k.ioctl(cdev, VFIO.DEVICE_BIND_IOMMUFD, 0), 'EFAULT');
    throwsErrno(() => bind(k, cdev, 999), 'EBADF');
    throwsErrno(() => bind(k, cdev, container), 'EBADFD');
    closeAll(k, iommufd, container, cdev);
  });

  test('no MSI isolation (virtio-iommu): EPERM at bind, unless iommufd.allow_unsafe_interrupts', () => {
    for (const [unsafe, ok] of [[false, false], [true, true]] as const) {
      const k = FakeKernel.host({ iommu: 'virtio', allowUnsafeInterrupts: { iommufd: unsafe } });
      const iommufd = k.open('/dev/iommu');
      const cdev = k.open('/dev/vfio/devices/vfio0');
      if (ok) bind(k, cdev, iommufd);
      else throwsErrno(() => bind(k, cdev, iommufd), 'EPERM');
      closeAll(k, iommufd, cdev);
    }
  });

  test('another process: holding the group -> EBUSY at open and bind; bound through its cdev -> EINVAL at bind, EBUSY at the group', () => {
    const k = FakeKernel.host().holdGroupElsewhere(3);
    const iommufd = k.open('/dev/iommu');
    throwsErrno(() => k.open('/dev/vfio/3'), 'EBUSY');
    const cdev = k.open('/dev/vfio/devices/vfio0');
    throwsErrno(() => bind(k, cdev, iommufd), 'EBUSY');
    k.releaseElsewhere().bindElsewhere(EDU);
    throwsErrno(() => bind(k, cdev, iommufd), 'EINVAL');
    throwsErrno(() => k.open('/dev/vfio/3'), 'EBUSY');
    k.releaseElsewhere();
    bind(k, cdev, iommufd);
    closeAll(k, iommufd, cdev);
  });
});

describe('the legacy container and groups', () => {
  function status(k: FakeKernel, group: number): number {
    const b = encode(vfio_group_status, { argsz: 8 });
    k.ioctl(group, VFIO.GROUP_GET_STATUS, b);
    return decode(vfio_group_status, b).flags;
  }

  test('the sequence of FINDINGS.md 5, with the kernel refusing each step out of order', () => {
    const k = FakeKernel.host();
    const c = k.open('/dev/vfio/vfio');
    assert.equal(k.ioctl(c, VFIO.GET_API_VERSION), 0);
    assert.deepEqual([VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU, VFIO_NOIOMMU_IOMMU].map((t) => k.ioctl(c, VFIO.CHECK_EXTENSION, t)), [1, 1, 0]);
    throwsErrno(() => k.ioctl(c, VFIO.SET_IOMMU, VFIO_TYPE1v2_IOMMU), 'EINVAL'); // no group yet
    const g = k.open('/dev/vfio/3');
    assert.equal(status(k, g), VFIO_GROUP_FLAGS_VIABLE);
    throwsErrno(() => k.ioctl(g, VFIO.GROUP_GET_DEVICE_FD, Buffer.from(`${EDU}\0`)), 'EINVAL'); // no container
    throwsErrno(() => k.ioctl(g, VFIO.GROUP_SET_CONTAINER, c), 'EFAULT'); // an int *, not an int
    k.ioctl(g, VFIO.GROUP_SET_CONTAINER, int32(c));
    assert.equal(status(k, g), VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET);
    throwsErrno(() => k.ioctl(g, VFIO.GROUP_SET_CONTAINER, int32(c)), 'EINVAL');
    throwsErrno(() => k.ioctl(g, VFIO.GROUP_GET_DEVICE_FD, Buffer.from(`${EDU}\0`)), 'EINVAL'); // no IOMMU set
    throwsErrno(() => k.ioctl(c, VFIO.SET_IOMMU, VFIO_NOIOMMU_IOMMU), 'ENODEV');
    k.ioctl(c, VFIO.SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    throwsErrno(() => k.ioctl(c, VFIO.SET_IOMMU, VFIO_TYPE1v2_IOMMU), 'EINVAL'); // already set
    throwsErrno(() => k.ioctl(g, VFIO.GROUP_GET_DEVICE_FD, Buffer.from('0000:00:11.0\0')), 'ENODEV');
    throwsErrno(() => k.ioctl(g, VFIO.GROUP_GET_DEVICE_FD, Buffer.from(EDU)), 'EFAULT'); // no NUL
    const d = k.ioctl(g, VFIO.GROUP_GET_DEVICE_FD, Buffer.from(`${EDU}\0`));
    assert.equal(k.describeFd(d)?.via, 'group');
    const d2 = k.ioctl(g, VFIO.GROUP_GET_DEVICE_FD, Buffer.from(`${EDU}\0`)); // the group route may open a device twice
    assert.equal(k.deviceOpenCount(EDU), 2);
    const cfg = Buffer.alloc(4);
    assert.equal(k.pread(d, cfg, 0x70000000000n), 4);
    assert.deepEqual([cfg.readUInt16LE(0), cfg.readUInt16LE(2)], [0x1234, 0x11e8]);
    throwsErrno(() => k.ioctl(d, VFIO.DEVICE_BIND_IOMMUFD, encode(vfio_device_bind_iommufd, { argsz: 16, iommufd: c })), 'EINVAL');
    throwsErrno(() => k.ioctl(g, VFIO.GROUP_UNSET_CONTAINER), 'EBUSY'); // devices open
    closeAll(k, c, g, d, d2);
    assert.equal(k.groupHolder(3), null);
  });

  test('the group stays held while a device fd taken from it is open; the last group out unsets the container', () => {
    const k = FakeKernel.host();
    const c = k.open('/dev/vfio/vfio');
    const g = k.open('/dev/vfio/3');
    k.ioctl(g, VFIO.GROUP_SET_CONTAINER, int32(c));
    k.ioctl(c, VFIO.SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    const d = k.ioctl(g, VFIO.GROUP_GET_DEVICE_FD, Buffer.from(`${EDU}\0`));
    k.close(g);
    assert.equal(k.groupHolder(3), 'this process');
    throwsErrno(() => k.open('/dev/vfio/3'), 'EBUSY');
    k.close(d);
    assert.equal(k.groupHolder(3), null);
    // the container is unset again: SET_IOMMU is needed once a group is back in
    const g2 = k.open('/dev/vfio/3');
    k.ioctl(g2, VFIO.GROUP_SET_CONTAINER, int32(c));
    throwsErrno(() => k.ioctl(g2, VFIO.GROUP_GET_DEVICE_FD, Buffer.from(`${EDU}\0`)), 'EINVAL');
    k.ioctl(c, VFIO.SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    closeAll(k, c, g2);
  });

  test('noiommu: CAP_SYS_RAWIO to open the group, the noiommu type only once it is in', () => {
    const k = FakeKernel.host({ iommu: 'noiommu', rawio: false });
    throwsErrno(() => k.open('/dev/vfio/noiommu-0'), 'EPERM');
    k.rawio = true;
    const c = k.open('/dev/vfio/vfio');
    assert.equal(k.ioctl(c, VFIO.CHECK_EXTENSION, VFIO_NOIOMMU_IOMMU), 1);
    assert.equal(k.ioctl(c, VFIO.CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU), 1, 'before a group is in, every loaded driver answers');
    const g = k.open('/dev/vfio/noiommu-0');
    k.ioctl(g, VFIO.GROUP_SET_CONTAINER, int32(c));
    assert.equal(k.ioctl(c, VFIO.CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU), 0);
    throwsErrno(() => k.ioctl(c, VFIO.SET_IOMMU, VFIO_TYPE1v2_IOMMU), 'ENODEV');
    k.ioctl(c, VFIO.SET_IOMMU, VFIO_NOIOMMU_IOMMU);
    closeAll(k, c, g);
  });

  test('no MSI isolation: EPERM at SET_IOMMU(type1), unless vfio_iommu_type1.allow_unsafe_interrupts', () => {
    for (const unsafe of [false, true]) {
      const k = FakeKernel.host({ iommu: 'virtio', allowUnsafeInterrupts: { type1: unsafe } });
      const c = k.open('/dev/vfio/vfio');
      const g = k.open('/dev/vfio/3');
      k.ioctl(g, VFIO.GROUP_SET_CONTAINER, int32(c));
      if (unsafe) k.ioctl(c, VFIO.SET_IOMMU, VFIO_TYPE1v2_IOMMU);
      else throwsErrno(() => k.ioctl(c, VFIO.SET_IOMMU, VFIO_TYPE1v2_IOMMU), 'EPERM');
      closeAll(k, c, g);
    }
  });

  test('a non-viable group: GET_STATUS says so, SET_CONTAINER answers EPERM (the host driver holds the DMA ownership)', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 5 }, { address: '0000:00:12.0', driver: 'e1000e', group: 5 }] });
    const c = k.open('/dev/vfio/vfio');
    const g = k.open('/dev/vfio/5');
    assert.equal(status(k, g), 0);
    throwsErrno(() => k.ioctl(g, VFIO.GROUP_SET_CONTAINER, int32(c)), 'EPERM');
    closeAll(k, c, g);
  });
});

describe('region info', () => {
  test('BAR0, CONFIG, EINVAL for VGA and past the last region, size 0 for the others', () => {
    const k = FakeKernel.host();
    const iommufd = k.open('/dev/iommu');
    const cdev = k.open('/dev/vfio/devices/vfio0');
    bind(k, cdev, iommufd);
    const info = (index: number): ReturnType<typeof decode<typeof vfio_region_info.fields>> => {
      const b = encode(vfio_region_info, { argsz: 32, index });
      k.ioctl(cdev, VFIO.DEVICE_GET_REGION_INFO, b);
      return decode(vfio_region_info, b);
    };
    assert.deepEqual(info(0), { argsz: 32, flags: 7, index: 0, cap_offset: 0, size: 0x100000n, offset: 0n });
    assert.deepEqual(info(7), { argsz: 32, flags: 3, index: 7, cap_offset: 0, size: 0x100n, offset: 0x70000000000n });
    assert.equal(info(1).size, 0n);
    throwsErrno(() => info(8), 'EINVAL');
    throwsErrno(() => info(9), 'EINVAL');
    throwsErrno(() => k.ioctl(cdev, VFIO.DEVICE_GET_REGION_INFO, encode(vfio_region_info, { argsz: 16, index: 0 })), 'EINVAL');
    throwsErrno(() => k.ioctl(cdev, VFIO.DEVICE_GET_REGION_INFO, Buffer.alloc(16)), 'EFAULT');
    throwsErrno(() => k.pread(cdev, Buffer.alloc(1), 0x10000000000n), 'EINVAL'); // BAR1: empty
    throwsErrno(() => k.pread(cdev, Buffer.alloc(1), 0x70000000100n), 'EINVAL'); // past the config space
    assert.equal(k.pread(cdev, Buffer.alloc(8), 0x700000000fcn), 4, 'a read across the end is short');
    closeAll(k, iommufd, cdev);
  });
});

describe('injection', () => {
  test('failNext fires on the matching call only, as often as asked; failOpen keeps the node', () => {
    const k = FakeKernel.host()
      .failNext({ request: VFIO.GET_API_VERSION, errno: 'EIO', times: 2 })
      .failOpen('/dev/iommu', 'EACCES');
    assert.equal(k.pendingFailures().length, 2);
    const c = k.open('/dev/vfio/vfio');
    assert.equal(k.ioctl(c, VFIO.CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU), 1);
    throwsErrno(() => k.ioctl(c, VFIO.GET_API_VERSION), 'EIO', 'ioctl');
    throwsErrno(() => k.ioctl(c, VFIO.GET_API_VERSION), 'EIO');
    assert.equal(k.ioctl(c, VFIO.GET_API_VERSION), 0);
    assert.equal(k.accessible('/dev/iommu'), true);
    assert.throws(() => k.open('/dev/iommu'), { code: 'EACCES', path: '/dev/iommu', syscall: 'open' });
    k.close(k.open('/dev/iommu'));
    assert.deepEqual(k.pendingFailures(), []);
    assert.deepEqual(k.calls.filter((x) => x.injected).map((x) => `${x.call} ${x.requestName ?? x.path} ${x.errno}`), [
      'ioctl VFIO_GET_API_VERSION EIO',
      'ioctl VFIO_GET_API_VERSION EIO',
      'open /dev/iommu EACCES',
    ]);
    closeAll(k, c);
  });
});
