// Pre-opened fds (src/routes/passed-fds.ts, and how both routes use them): openDevice with
// { device, iommufd } or { group, container } opened by "a privileged parent" (here: the test, on the
// fake). Each fd is checked with fstat against the device number sysfs gives; a lent fd is never closed
// by the library, on any path; an owned one is closed with the device; a lent group fd is taken out of
// the container (VFIO_GROUP_UNSET_CONTAINER) rather than closed.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { allocDmaBuffer, createContext, openDevice } from '../../src/index.js';
import { BadFdError, DeviceBusyError, ExitCode, KernelError, UsageError, VfioError } from '../../src/errors.js';
import type { PassedFds } from '../../src/routes/passed-fds.js';
import { VFIO } from '../../src/uapi/vfio.js';
import { EDU, FakeKernel, RDEV, TESTDEV } from '../fake-kernel.js';
import { assertNoLeaks, catchError } from '../helpers.js';

const CDEV = '/dev/vfio/devices/vfio0';

interface Opened {
  k: FakeKernel;
  fds: Required<PassedFds>;
}

/**
 * The parent's side, on an iommufd kernel with edu in group 3: the nodes of one route (holding the group
 * open blocks a bind through the cdev, as in the kernel), or of both for checks that fail before any ioctl.
 */
function parent(route: 'iommufd' | 'legacy' | 'both' = 'both'): Opened {
  const k = FakeKernel.host({ devices: [{ address: EDU, group: 3, cdev: 0 }, { address: TESTDEV, group: 4, cdev: 1 }] });
  const fds = { iommufd: -1, device: -1, container: -1, group: -1 };
  if (route !== 'legacy') {
    fds.iommufd = k.open('/dev/iommu');
    fds.device = k.open(CDEV);
  }
  if (route !== 'iommufd') {
    fds.container = k.open('/dev/vfio/vfio');
    fds.group = k.open('/dev/vfio/3');
  }
  return { k, fds };
}
const mine = (fds: Required<PassedFds>): number[] => Object.values(fds).filter((fd) => fd >= 0);

/** the close(2) calls the library made on these fds */
const closesOf = (k: FakeKernel, fds: number[]): number[] => k.calls.filter((c) => c.call === 'close' && fds.includes(c.fd!)).map((c) => c.fd!);

/** The test closes what it still holds, then nothing may be open or closed twice. */
function closeRest(k: FakeKernel, fds: number[]): void {
  for (const fd of fds) if (k.describeFd(fd)) k.close(fd);
  assertNoLeaks(k);
}

describe('passed fds: the iommufd route ({ device, iommufd })', () => {
  const parent_ = (): Opened => parent('iommufd');
  test('lent (default): the checks pass, the device binds through them, and the library never closes them', () => {
    const { k, fds } = parent_();
    const lent = [fds.device, fds.iommufd];
    const dev = openDevice(EDU, { kernel: k, fds: { device: fds.device, iommufd: fds.iommufd } });
    assert.equal(dev.route, 'iommufd');
    assert.equal(dev.report.nodes.cdev, `fd ${fds.device}`);
    assert.equal(dev.report.fallback, null);
    assert.equal(dev.fd, fds.device);
    assert.ok(k.calls.some((c) => c.call === 'fstat' && c.fd === fds.device) && k.calls.some((c) => c.call === 'fstat' && c.fd === fds.iommufd), 'each fd checked with fstat');
    assert.equal(k.openedPaths().length, 2, 'no node opened by the library');
    dev.close();
    assert.deepEqual(closesOf(k, lent), [], 'lent fds stay open');
    assert.equal(k.describeFd(fds.device)?.bound, true, 'still the caller\'s (bound to its iommufd)');
    closeRest(k, mine(fds));
    assert.equal(k.deviceOpenCount(EDU), 0);
  });

  test('owned (ownFds): closed with the device, once each', () => {
    const { k, fds } = parent_();
    const dev = openDevice(EDU, { kernel: k, fds: { device: fds.device, iommufd: fds.iommufd }, ownFds: true });
    dev.close();
    assert.deepEqual(closesOf(k, [fds.device, fds.iommufd]).sort(), [fds.device, fds.iommufd].sort());
    assert.equal(k.describeFd(fds.device), undefined);
    assert.equal(k.describeFd(fds.iommufd), undefined);
    closeRest(k, mine(fds));
  });

  test('lent: closing the device leaves no DMA mapping of ours in the caller\'s iommufd', {
  }, () => {
    const { k, fds } = parent_();
    const dev = openDevice(EDU, { kernel: k, fds: { device: fds.device, iommufd: fds.iommufd } });
    const buf = allocDmaBuffer(8192, { kernel: k });
    dev.context.map(buf);
    dev.close();
    const left = k.iommuMappings().length;
    buf.free(); // the library says nothing maps it any more
    closeRest(k, mine(fds));
    assert.equal(left, 0, 'the IOVA mapping outlived the device: the caller\'s device can still DMA into a freed buffer\'s pages');
  });

  test('a lent device fd into a shared iommufd context (no iommufd fd needed)', () => {
    const { k, fds } = parent_();
    const ctx = createContext('iommufd', { kernel: k });
    const dev = openDevice(EDU, { kernel: k, context: ctx, fds: { device: fds.device } });
    assert.equal(dev.route, 'iommufd');
    ctx.close();
    assert.ok(dev.closed);
    assert.deepEqual(closesOf(k, [fds.device]), []);
    closeRest(k, mine(fds));
  });
});

describe('passed fds: the legacy route ({ group, container })', () => {
  const parent_ = (): Opened => parent('legacy');
  test('lent: the group fd is taken out of the container (GROUP_UNSET_CONTAINER), not closed; the container fd stays open', () => {
    const { k, fds } = parent_();
    const dev = openDevice(EDU, { kernel: k, fds: { group: fds.group, container: fds.container } });
    assert.equal(dev.route, 'legacy');
    assert.equal(dev.groupFd, fds.group);
    assert.equal(dev.report.nodes.group, `fd ${fds.group}`);
    assert.equal(k.describeFd(fds.group)?.inContainer, true);
    dev.close();
    assert.deepEqual(closesOf(k, [fds.group, fds.container]), []);
    assert.ok(k.calls.some((c) => c.call === 'ioctl' && c.fd === fds.group && c.requestName === 'VFIO_GROUP_UNSET_CONTAINER'));
    assert.equal(k.describeFd(fds.group)?.inContainer, false, 'out of the container, still open');
    assert.equal(k.groupHolder(3), 'this process', 'the caller still holds its group');
    // the caller can use its fds again
    const again = openDevice(EDU, { kernel: k, fds: { group: fds.group, container: fds.container } });
    again.close();
    closeRest(k, mine(fds));
    assert.equal(k.groupHolder(3), null);
  });

  test('owned: both closed with the device', () => {
    const { k, fds } = parent_();
    openDevice(EDU, { kernel: k, fds: { group: fds.group, container: fds.container }, ownFds: true }).close();
    assert.deepEqual(closesOf(k, [fds.group, fds.container]).sort(), [fds.group, fds.container].sort());
    closeRest(k, mine(fds));
  });

  test('a lent group fd into a shared legacy context', () => {
    const { k, fds } = parent_();
    const ctx = createContext('legacy', { kernel: k });
    const dev = openDevice(EDU, { kernel: k, context: ctx, fds: { group: fds.group } });
    dev.close();
    assert.equal(k.describeFd(fds.group)?.inContainer, false);
    ctx.close();
    assert.deepEqual(closesOf(k, mine(fds)), []);
    closeRest(k, mine(fds));
  });
});

describe('passed fds that do not check out: BadFdError (exit 2), nothing of the caller\'s closed', () => {
  interface Bad {
    name: string;
    fds: (o: Opened) => PassedFds;
    message: RegExp;
    errno?: string;
  }
  const BAD: Bad[] = [
    { name: 'a device fd that is not open (EBADF)', fds: (o) => ({ device: 9999, iommufd: o.fds.iommufd }), message: /fd 9999, given as the device fd, is not open \(EBADF\)/, errno: 'EBADF' },
    { name: 'an iommufd that is not open', fds: (o) => ({ device: o.fds.device, iommufd: 9998 }), message: /given as the iommufd fd, is not open/, errno: 'EBADF' },
    { name: 'a group fd that is not open', fds: (o) => ({ group: 9997, container: o.fds.container }), message: /given as the group fd, is not open/, errno: 'EBADF' },
    { name: 'an eventfd as the device fd: not a character device', fds: (o) => ({ device: o.k.eventfd(), iommufd: o.fds.iommufd }), message: /is not a character device/, errno: 'EBADFD' },
    { name: 'a regular file as the container fd', fds: (o) => ({ group: o.fds.group, container: o.k.open('/proc/cmdline') }), message: /given as the container fd, is not a character device/ },
    { name: 'device and iommufd swapped', fds: (o) => ({ device: o.fds.iommufd, iommufd: o.fds.device }), message: new RegExp(`given as the device fd, is device 10:258, not ${EDU}'s cdev \\(${RDEV.cdevMajor}:0\\)`), errno: 'EBADFD' },
    { name: 'group and container swapped', fds: (o) => ({ group: o.fds.container, container: o.fds.group }), message: /given as the group fd, is device 10:196, not \/dev\/vfio\/3/ },
    { name: 'the group node of another group', fds: (o) => ({ group: o.k.open('/dev/vfio/4'), container: o.fds.container }), message: /is device 245:1, not \/dev\/vfio\/3 \(245:0\)/ },
    { name: 'the cdev of another device', fds: (o) => ({ device: o.k.open('/dev/vfio/devices/vfio1'), iommufd: o.fds.iommufd }), message: new RegExp(`is device ${RDEV.cdevMajor}:1, not`) },
    { name: 'the group fd as the device fd', fds: (o) => ({ device: o.fds.group, iommufd: o.fds.iommufd }), message: /given as the device fd, is device 245:0/ },
    { name: '/dev/null as the iommufd', fds: (o) => ({ device: o.fds.device, iommufd: (o.k.plantNode('/dev/null', 0x103, 0o666), o.k.open('/dev/null')) }), message: /is device 1:3, not \/dev\/iommu \(10:258\)/ },
    { name: 'a negative fd', fds: (o) => ({ device: -1, iommufd: o.fds.iommufd }), message: /the device fd -1 is not a file descriptor number/ },
    { name: 'NaN (what --device-fd abc parses to)', fds: (o) => ({ group: Number.NaN, container: o.fds.container }), message: /the group fd NaN is not a file descriptor number/ },
    { name: 'a fractional fd', fds: (o) => ({ group: o.fds.group + 0.5, container: o.fds.container }), message: /is not a file descriptor number/ },
    { name: 'both routes\' fds at once', fds: (o) => ({ device: o.fds.device, iommufd: o.fds.iommufd, group: o.fds.group }), message: /pass either the device \(cdev\) fd with an iommufd, or the group fd with a container fd/ },
    { name: 'an iommufd without the device fd', fds: (o) => ({ iommufd: o.fds.iommufd }), message: /an iommufd fd needs the device \(cdev\) fd too/ },
    { name: 'a device fd without an iommufd (and no context)', fds: (o) => ({ device: o.fds.device }), message: /a device \(cdev\) fd needs an iommufd fd/ },
    { name: 'a container without the group fd', fds: (o) => ({ container: o.fds.container }), message: /a container fd needs the group fd too/ },
    { name: 'a group fd without a container (and no context)', fds: (o) => ({ group: o.fds.group }), message: /a group fd needs a container fd/ },
    { name: 'no fd at all ({})', fds: () => ({}), message: /pass either/ },
  ];

  for (const b of BAD) {
    for (const ownFds of [false, true]) {
      test(`${b.name}${ownFds ? ' (ownFds)' : ''}`, () => {
        const o = parent();
        const before = new Set(o.k.openPaths());
        const passed = b.fds(o);
        const opened = [...mine(o.fds), ...Object.values(passed).filter((fd): fd is number => Number.isInteger(fd) && fd >= 0)];
        const e = catchError(() => openDevice(EDU, { kernel: o.k, fds: passed, ownFds }), BadFdError);
        assert.equal(e.exitCode, ExitCode.USAGE);
        assert.equal(e.kind, 'bad-fd');
        assert.match(e.message, b.message);
        if (b.errno) assert.equal(e.errno, b.errno);
        if (!ownFds) assert.deepEqual(closesOf(o.k, opened), [], 'no lent fd closed');
        assert.ok(!o.k.calls.some((c) => c.call === 'ioctl'), 'no ioctl on an fd that failed its check');
        assert.ok(o.k.openPaths().every((p) => before.has(p) || p === 'anon_inode:[eventfd]' || p === '/proc/cmdline' || p.startsWith('/dev/')), 'the library opened nothing');
        closeRest(o.k, [...new Set(opened)]);
      });
    }
  }

  test('a failed open never closes passed fds, owned or not (the caller cannot know which were)', () => {
    const o = parent();
    catchError(() => openDevice(EDU, { kernel: o.k, fds: { device: o.fds.iommufd, iommufd: o.fds.device }, ownFds: true }), BadFdError);
    assert.deepEqual(closesOf(o.k, mine(o.fds)), []);
    closeRest(o.k, mine(o.fds));
  });

  test('a context of the other route: UsageError, nothing closed', () => {
    const o = parent();
    const ctx = createContext('legacy', { kernel: o.k });
    const e = catchError(() => openDevice(EDU, { kernel: o.k, context: ctx, fds: { device: o.fds.device, iommufd: o.fds.iommufd } }), UsageError);
    assert.match(e.message, /the fds passed are for the iommufd route, but the context is a legacy one/);
    ctx.close();
    assert.deepEqual(closesOf(o.k, mine(o.fds)), []);
    closeRest(o.k, mine(o.fds));
  });
});

describe('passed fds: the kernel refuses after the checks', () => {
  test('iommufd: EBUSY at bind (lent fds): DeviceBusyError, the fds stay open and unbound', () => {
    const { k, fds } = parent('iommufd');
    k.failNext({ request: VFIO.DEVICE_BIND_IOMMUFD, errno: 'EBUSY' });
    catchError(() => openDevice(EDU, { kernel: k, fds: { device: fds.device, iommufd: fds.iommufd } }), DeviceBusyError);
    assert.deepEqual(closesOf(k, mine(fds)), []);
    assert.equal(k.describeFd(fds.device)?.bound, false);
    closeRest(k, mine(fds));
  });

  test('iommufd: EIO at attach (lent fds): KernelError, nothing of the caller\'s closed', () => {
    const { k, fds } = parent('iommufd');
    k.failNext({ request: VFIO.DEVICE_ATTACH_IOMMUFD_PT, errno: 'EIO' });
    const e = catchError(() => openDevice(EDU, { kernel: k, fds: { device: fds.device, iommufd: fds.iommufd } }), KernelError);
    assert.equal(e.step, 'VFIO_DEVICE_ATTACH_IOMMUFD_PT');
    assert.deepEqual(closesOf(k, mine(fds)), []);
    closeRest(k, mine(fds));
  });

  for (const step of ['VFIO_SET_IOMMU', 'VFIO_GROUP_GET_DEVICE_FD', 'VFIO_DEVICE_GET_INFO'] as const) {
    test(`legacy: a refusal at ${step} (lent fds): the group fd taken out of the container, not closed`, () => {
      const { k, fds } = parent('legacy');
      const request = step === 'VFIO_SET_IOMMU' ? VFIO.SET_IOMMU : step === 'VFIO_GROUP_GET_DEVICE_FD' ? VFIO.GROUP_GET_DEVICE_FD : VFIO.DEVICE_GET_INFO;
      k.failNext({ request, errno: 'EIO' });
      const e = catchError(() => openDevice(EDU, { kernel: k, fds: { group: fds.group, container: fds.container } }), VfioError);
      assert.equal(e.step, step);
      assert.deepEqual(closesOf(k, mine(fds)), [], 'no lent fd closed');
      assert.equal(k.describeFd(fds.group)?.inContainer, false, 'out of our container');
      assert.deepEqual(k.openPaths().sort(), ['/dev/vfio/3', '/dev/vfio/vfio'], 'only the caller\'s fds are open');
      closeRest(k, mine(fds));
    });
  }

  test('legacy, owned fds: a refusal leaves them open too (only close() closes owned fds)', () => {
    const { k, fds } = parent('legacy');
    k.failNext({ request: VFIO.GROUP_GET_DEVICE_FD, errno: 'EIO' });
    catchError(() => openDevice(EDU, { kernel: k, fds: { group: fds.group, container: fds.container }, ownFds: true }), KernelError);
    assert.deepEqual(closesOf(k, mine(fds)), []);
    closeRest(k, mine(fds));
  });
});
