// The answers that are reported, not hidden by a fallback: each becomes the public error a user can act
// on (class, exit code, hint), no route is tried that should not be, and no fd stays open.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openDevice } from '../../src/index.js';
import { locateDevice } from '../../src/discovery/locate.js';
import {
  DeviceBusyError,
  DeviceNotFoundError,
  ExitCode,
  GroupNotViableError,
  KernelError,
  NoRouteError,
  NotVfioDeviceError,
  PermissionDeniedError,
  StepError,
} from '../../src/errors.js';
import { explain } from '../../src/routes/select.js';
import { IOMMU } from '../../src/uapi/iommufd.js';
import { VFIO } from '../../src/uapi/vfio.js';
import { EDU, FakeKernel, TESTDEV, type Errno } from '../fake-kernel.js';
import { assertNoLeaks, catchError } from '../helpers.js';

const LEGACY_NODES = ['/dev/vfio/vfio', '/dev/vfio/3'];
const noLegacyAttempt = (k: FakeKernel): void => {
  for (const p of LEGACY_NODES) assert.ok(!k.openedPaths().includes(p), `${p} was opened`);
};

describe('busy', () => {
  test('EBUSY at bind (another process holds the group): DeviceBusyError, exit 4, no legacy attempt', () => {
    const k = FakeKernel.host().holdGroupElsewhere(3);
    const e = catchError(() => openDevice(EDU, { kernel: k }), DeviceBusyError);
    assert.equal(e.exitCode, ExitCode.BUSY);
    assert.equal(e.errno, 'EBUSY');
    assert.equal(e.step, 'VFIO_DEVICE_BIND_IOMMUFD');
    assert.match(e.message, /in use by another process/);
    assert.match(e.hint ?? '', /fuser -v/);
    assert.equal(e.attempts.length, 1);
    noLegacyAttempt(k);
    assertNoLeaks(k);
    assert.equal(k.groupHolder(3), 'elsewhere');
  });

  test('EBUSY at bind, injected: the same', () => {
    const k = FakeKernel.host().failNext({ request: VFIO.DEVICE_BIND_IOMMUFD, errno: 'EBUSY' });
    catchError(() => openDevice(EDU, { kernel: k }), DeviceBusyError);
    noLegacyAttempt(k);
    assertNoLeaks(k);
  });

  test('EINVAL at bind with route auto, the group held by another process: DeviceBusyError with two attempts', () => {
    // the other process bound the device through its cdev: our bind answers EINVAL, the group EBUSY
    const k = FakeKernel.host().bindElsewhere(EDU);
    const e = catchError(() => openDevice(EDU, { kernel: k, route: 'auto' }), DeviceBusyError);
    assert.equal(e.exitCode, 4);
    assert.deepEqual(e.attempts.map((a) => `${a.route} ${a.step} ${a.errno}`), [
      'iommufd VFIO_DEVICE_BIND_IOMMUFD EINVAL',
      'legacy open group EBUSY',
    ]);
    assertNoLeaks(k);
  });

  test('EINVAL at bind (injected) with route auto while the group is held through the legacy route elsewhere', () => {
    const k = FakeKernel.host().failNext({ request: VFIO.DEVICE_BIND_IOMMUFD, errno: 'EINVAL' });
    k.onCall((c) => {
      if (c.call === 'close' && k.describeFd(c.fd!)?.via === 'cdev') k.holdGroupElsewhere(3); // another process wins the race
    });
    const e = catchError(() => openDevice(EDU, { kernel: k }), DeviceBusyError);
    assert.equal(e.attempts.length, 2);
    assert.equal(e.attempts[1]!.errno, 'EBUSY');
    assertNoLeaks(k);
  });

  test('EINVAL at bind with route iommufd: DeviceBusyError (already bound through iommufd)', () => {
    const k = FakeKernel.host().bindElsewhere(EDU);
    const e = catchError(() => openDevice(EDU, { kernel: k, route: 'iommufd' }), DeviceBusyError);
    assert.match(e.message, /already bound through iommufd by another opener/);
    assert.equal(e.attempts.length, 1);
    noLegacyAttempt(k);
    assertNoLeaks(k);
  });
});

describe('no MSI isolation', () => {
  test('EPERM at bind on a viable single-device group: NoRouteError naming iommufd.allow_unsafe_interrupts=1', () => {
    const k = FakeKernel.host({ iommu: 'virtio' });
    const e = catchError(() => openDevice(EDU, { kernel: k }), NoRouteError);
    assert.equal(e.exitCode, ExitCode.NO_ROUTE);
    assert.equal(e.errno, 'EPERM');
    assert.equal(e.step, 'VFIO_DEVICE_BIND_IOMMUFD');
    assert.match(e.hint ?? '', /iommufd\.allow_unsafe_interrupts=1/);
    assert.match(e.message, /no interrupt isolation/);
    assert.doesNotMatch(e.message, /another process holds a device of the same IOMMU group/);
    noLegacyAttempt(k);
    assertNoLeaks(k);
  });

  test('EPERM at bind in a group of two: the message also suspects the other member', () => {
    const k = FakeKernel.host({ iommu: 'virtio', devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 3 }] });
    const e = catchError(() => openDevice(EDU, { kernel: k }), NoRouteError);
    assert.match(e.message, /or another process holds a device of the same IOMMU group/);
    assertNoLeaks(k);
  });

  test('with iommufd.allow_unsafe_interrupts, the bind succeeds', () => {
    const k = FakeKernel.host({ iommu: 'virtio', allowUnsafeInterrupts: { iommufd: true } });
    const dev = openDevice(EDU, { kernel: k });
    assert.equal(dev.route, 'iommufd');
    dev.close();
    assertNoLeaks(k);
  });

  test('EPERM at VFIO_SET_IOMMU on the legacy route (stock kernel, auto): hint names vfio_iommu_type1.allow_unsafe_interrupts=1', () => {
    const k = FakeKernel.host({ kernel: 'stock', iommu: 'virtio' });
    const e = catchError(() => openDevice(EDU, { kernel: k }), NoRouteError);
    assert.equal(e.step, 'VFIO_SET_IOMMU');
    assert.equal(e.route, 'legacy');
    assert.match(e.hint ?? '', /vfio_iommu_type1\.allow_unsafe_interrupts=1/);
    assert.deepEqual(e.attempts.map((a) => a.step), ['open /dev/iommu', 'VFIO_SET_IOMMU']);
    assertNoLeaks(k);
    assert.equal(k.groupHolder(3), null);
  });
});

describe('refused by the kernel', () => {
  test('a non-viable group (a member bound to e1000e): the bind answers EPERM, GroupNotViableError names the member', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 5 }, { address: '0000:00:12.0', id: '8086:10d3', driver: 'e1000e', group: 5 }] });
    const refusedAt = { auto: 'VFIO_DEVICE_BIND_IOMMUFD', iommufd: 'VFIO_DEVICE_BIND_IOMMUFD', legacy: 'VFIO_GROUP_GET_STATUS' } as const;
    for (const route of ['auto', 'iommufd', 'legacy'] as const) {
      const e = catchError(() => openDevice(EDU, { kernel: k, route }), GroupNotViableError);
      assert.equal(e.exitCode, ExitCode.NOT_FOUND);
      assert.match(e.message, /IOMMU group 5 of 0000:00:10\.0 is not viable: 0000:00:12\.0 \(e1000e\) is bound to a host driver/);
      assert.equal(e.path, '/sys/kernel/iommu_groups/5/devices');
      assert.equal(e.step, refusedAt[route], route);
      assert.match(e.hint ?? '', /vfio-pci/);
      assertNoLeaks(k);
    }
  });
});

describe('refused before anything is opened', () => {
  test('a device bound to e1000e: NotVfioDeviceError, exit 3', () => {
    const k = FakeKernel.host({ devices: [{ address: '0000:00:12.0', id: '8086:10d3', driver: 'e1000e' }] });
    const e = catchError(() => openDevice('0000:00:12.0', { kernel: k }), NotVfioDeviceError);
    assert.equal(e.exitCode, 3);
    assert.match(e.message, /is bound to e1000e, not to a VFIO driver/);
    assert.match(e.hint ?? '', /echo vfio-pci > \/sys\/bus\/pci\/devices\/0000:00:12\.0\/driver_override/);
    assert.deepEqual(k.openedPaths(), []);
  });

  test('a device bound to no driver: NotVfioDeviceError', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, driver: null }] });
    const e = catchError(() => openDevice(EDU, { kernel: k }), NotVfioDeviceError);
    assert.match(e.message, /is not bound to any driver/);
    assert.deepEqual(k.openedPaths(), []);
  });

  test('an unknown device: DeviceNotFoundError', () => {
    const k = FakeKernel.host();
    catchError(() => openDevice('0000:00:1f.0', { kernel: k }), DeviceNotFoundError);
    assert.deepEqual(k.openedPaths(), []);
  });
});

describe('no route', () => {
  test('route iommufd on a stock kernel: NoRouteError, exit 6', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    const e = catchError(() => openDevice(EDU, { kernel: k, route: 'iommufd' }), NoRouteError);
    assert.equal(e.exitCode, 6);
    assert.match(e.message, /the iommufd route is unavailable: this kernel has no iommufd \(CONFIG_IOMMUFD not set\)/);
    noLegacyAttempt(k);
    assertNoLeaks(k);
  });

  test('a device without an IOMMU group (stock kernel, auto): NoRouteError hinting at intel_iommu=on', () => {
    const k = FakeKernel.host({ kernel: 'stock', devices: [{ address: EDU, group: null }] });
    const e = catchError(() => openDevice(EDU, { kernel: k }), NoRouteError);
    assert.equal(e.step, 'find group');
    assert.match(e.message, /has no IOMMU group/);
    assert.match(e.hint ?? '', /intel_iommu=on/);
    assertNoLeaks(k);
  });

  test('a noiommu group opened without CAP_SYS_RAWIO: PermissionDeniedError mentioning CAP_SYS_RAWIO', () => {
    const k = FakeKernel.host({ iommu: 'noiommu', rawio: false });
    const e = catchError(() => openDevice(EDU, { kernel: k }), PermissionDeniedError);
    assert.equal(e.exitCode, 5);
    assert.equal(e.errno, 'EPERM');
    assert.equal(e.step, 'open group');
    assert.match(e.message, /noiommu group \/dev\/vfio\/noiommu-0 needs CAP_SYS_RAWIO/);
    assert.deepEqual(e.attempts.map((a) => [a.step, a.errno]), [['find cdev', null], ['open group', 'EPERM']]);
    assertNoLeaks(k);
  });
});

describe('failures after bind: reported as KernelError, never a fallback', () => {
  const cases: { name: string; request: number; errno: Errno; route: 'auto' | 'iommufd' | 'legacy'; host?: () => FakeKernel }[] = [
    { name: 'IOMMU_IOAS_ALLOC ENOMEM', request: IOMMU.IOAS_ALLOC, errno: 'ENOMEM', route: 'auto' },
    { name: 'IOMMU_IOAS_ALLOC ENOSPC', request: IOMMU.IOAS_ALLOC, errno: 'ENOSPC', route: 'iommufd' },
    { name: 'VFIO_DEVICE_ATTACH_IOMMUFD_PT EINVAL', request: VFIO.DEVICE_ATTACH_IOMMUFD_PT, errno: 'EINVAL', route: 'auto' },
    { name: 'VFIO_DEVICE_ATTACH_IOMMUFD_PT ENOENT', request: VFIO.DEVICE_ATTACH_IOMMUFD_PT, errno: 'ENOENT', route: 'auto' },
    { name: 'VFIO_DEVICE_ATTACH_IOMMUFD_PT ENOTTY', request: VFIO.DEVICE_ATTACH_IOMMUFD_PT, errno: 'ENOTTY', route: 'auto' },
    { name: 'VFIO_DEVICE_GET_INFO EIO (iommufd)', request: VFIO.DEVICE_GET_INFO, errno: 'EIO', route: 'auto' },
    { name: 'VFIO_DEVICE_GET_INFO EINVAL (iommufd)', request: VFIO.DEVICE_GET_INFO, errno: 'EINVAL', route: 'auto' },
    { name: 'VFIO_DEVICE_GET_INFO EIO (legacy after a fallback)', request: VFIO.DEVICE_GET_INFO, errno: 'EIO', route: 'auto', host: () => FakeKernel.host({ kernel: 'stock' }) },
    { name: 'VFIO_DEVICE_GET_INFO ENOMEM (legacy)', request: VFIO.DEVICE_GET_INFO, errno: 'ENOMEM', route: 'legacy' },
  ];
  for (const c of cases) {
    test(`${c.name} (route ${c.route})`, () => {
      const k = (c.host ?? (() => FakeKernel.host()))().failNext({ request: c.request, errno: c.errno });
      const e = catchError(() => openDevice(EDU, { kernel: k, route: c.route }), KernelError);
      assert.equal(e.exitCode, ExitCode.KERNEL_REFUSED);
      assert.equal(e.errno, c.errno);
      assert.ok(e.step?.startsWith(c.name.split(' ')[0]!), `${e.step}`);
      assert.deepEqual(k.pendingFailures(), []);
      if (!c.host && c.route !== 'legacy') noLegacyAttempt(k);
      assert.equal(k.openedPaths().filter((p) => p === '/dev/iommu').length, c.route === 'legacy' ? 0 : 1, 'one attempt, no retry');
      assertNoLeaks(k);
      assert.equal(k.deviceOpenCount(EDU), 0, 'the device is not left bound');
      assert.equal(k.groupHolder(3), null);
    });
  }
});

describe('other answers', () => {
  test('ENODEV: the device went away between discovery and open -> DeviceNotFoundError', () => {
    const k = FakeKernel.host().failOpen('/dev/vfio/devices/vfio0', 'ENODEV');
    const e = catchError(() => openDevice(EDU, { kernel: k }), DeviceNotFoundError);
    assert.match(e.message, /went away \(iommufd route, open cdev .*answered ENODEV\)/);
    noLegacyAttempt(k);
    assertNoLeaks(k);
  });

  test('ENODEV at VFIO_GROUP_GET_DEVICE_FD (legacy, after a fallback) -> DeviceNotFoundError', () => {
    const k = FakeKernel.host({ kernel: 'stock' }).failNext({ request: VFIO.GROUP_GET_DEVICE_FD, errno: 'ENODEV' });
    const e = catchError(() => openDevice(EDU, { kernel: k }), DeviceNotFoundError);
    assert.equal(e.step, 'VFIO_GROUP_GET_DEVICE_FD');
    assertNoLeaks(k);
  });

  test('a missing group node (legacy, after a fallback) -> DeviceNotFoundError', () => {
    const k = FakeKernel.host({ kernel: 'stock' }).hide('/dev/vfio/3');
    const e = catchError(() => openDevice(EDU, { kernel: k }), DeviceNotFoundError);
    assert.match(e.message, /the group node \/dev\/vfio\/3 of 0000:00:10\.0 does not exist/);
    assertNoLeaks(k);
  });

  test('EACCES at the group node (stock kernel, non-root): PermissionDeniedError with the nodes to grant', () => {
    const k = FakeKernel.host({ kernel: 'stock' }).inaccessible('/dev/vfio/3');
    const e = catchError(() => openDevice(EDU, { kernel: k }), PermissionDeniedError);
    assert.match(e.message, /permission denied: legacy route, open group \(\/dev\/vfio\/3\)/);
    assertNoLeaks(k);
  });

  test('EPERM elsewhere (open /dev/vfio/vfio): PermissionDeniedError "operation not permitted"', () => {
    const k = FakeKernel.host({ kernel: 'stock' }).failOpen('/dev/vfio/vfio', 'EPERM');
    const e = catchError(() => openDevice(EDU, { kernel: k }), PermissionDeniedError);
    assert.match(e.message, /operation not permitted: legacy route, open \/dev\/vfio\/vfio/);
    assertNoLeaks(k);
  });

  test('the group becomes non-viable between discovery and GET_STATUS -> GroupNotViableError', () => {
    const k = FakeKernel.host({ kernel: 'stock', devices: [{ address: EDU, group: 5 }, { address: TESTDEV, group: 5 }] });
    k.onCall((c) => {
      if (c.call === 'open' && c.path === '/dev/vfio/5') k.setDriver(TESTDEV, 'e1000e');
    });
    const e = catchError(() => openDevice(EDU, { kernel: k }), GroupNotViableError);
    assert.equal(e.step, 'VFIO_GROUP_GET_STATUS');
    assert.equal(e.exitCode, 3);
    assertNoLeaks(k);
  });

  test('an unexpected VFIO API version -> KernelError', () => {
    const k = FakeKernel.host({ kernel: 'stock', apiVersion: 1 });
    const e = catchError(() => openDevice(EDU, { kernel: k }), KernelError);
    assert.match(e.message, /VFIO API version is 1, not 0/);
    assertNoLeaks(k);
  });

  test('a container offering no usable IOMMU type -> a reported error naming VFIO_CHECK_EXTENSION', () => {
    const k = FakeKernel.host({ kernel: 'stock' }).failNext({ request: VFIO.CHECK_EXTENSION, errno: 'EINVAL', times: 2 });
    const e = catchError(() => openDevice(EDU, { kernel: k }), KernelError);
    assert.equal(e.step, 'VFIO_CHECK_EXTENSION');
    assertNoLeaks(k);
  });
});

describe('explain(), called directly', () => {
  // checkBindable refuses a group with blockers before any route runs, so explain's own blocker branch
  // (EPERM on a non-viable group) is only reachable from here.
  test('EPERM on a group with blockers -> GroupNotViableError', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 5 }, { address: '0000:00:12.0', driver: 'e1000e', group: 5 }] });
    const loc = locateDevice(k, EDU);
    const step = new StepError('legacy', 'VFIO_GROUP_SET_CONTAINER', 'EPERM', 'VFIO_GROUP_SET_CONTAINER: EPERM');
    const e = explain(step, loc, { kernelHasIommufd: true, groupUsable: true }, 'auto', [step.attempt]);
    assert.ok(e instanceof GroupNotViableError);
    assert.equal(e.errno, 'EPERM');
    assert.deepEqual(e.attempts, [step.attempt]);
    assert.equal(e.cause, step);
  });

  test('the JSON form carries everything the CLI prints', () => {
    const k = FakeKernel.host().holdGroupElsewhere(3);
    const e = catchError(() => openDevice(EDU, { kernel: k }), DeviceBusyError);
    assert.deepEqual(Object.keys(e.toJSON()), ['error', 'message', 'errno', 'route', 'step', 'path', 'hint', 'attempts', 'exit_code']);
    assert.equal(e.toJSON().exit_code, 4);
    assert.equal(e.toJSON().error, 'busy');
  });
});
