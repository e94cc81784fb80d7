// Regression tests for bugs the fake kernel found in src/ (each describe names the mistake that was made).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createContext, openDevice } from '../../src/index.js';
import { ClosedError, DeviceBusyError, GroupNotViableError, NoRouteError, UsageError, VfioError } from '../../src/errors.js';
import { EDU, FakeKernel, TESTDEV } from '../fake-kernel.js';
import { assertNoLeaks, catchError } from '../helpers.js';

const MDEV = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';

describe('select.ts bindDevice: the legacy policy returns attempt() without explain()', () => {

  test('route legacy, group held by another process -> DeviceBusyError (exit 4)', () => {
    const k = FakeKernel.host().holdGroupElsewhere(3);
    const e = catchError(() => openDevice(EDU, { kernel: k, route: 'legacy' }), DeviceBusyError);
    assert.equal(e.exitCode, 4);
  });

  test('route legacy, EPERM at VFIO_SET_IOMMU -> NoRouteError naming vfio_iommu_type1.allow_unsafe_interrupts=1', () => {
    const k = FakeKernel.host({ iommu: 'virtio' });
    const e = catchError(() => openDevice(EDU, { kernel: k, route: 'legacy' }), NoRouteError);
    assert.match(e.hint ?? '', /vfio_iommu_type1\.allow_unsafe_interrupts=1/);
    assertNoLeaks(k);
  });

  test('a legacy context, group held by another process -> DeviceBusyError', () => {
    const k = FakeKernel.host().holdGroupElsewhere(3);
    const ctx = createContext('legacy', { kernel: k });
    try {
      catchError(() => openDevice(EDU, { kernel: k, context: ctx }), DeviceBusyError);
    } finally {
      ctx.close();
    }
  });
});

describe('legacy.ts ContainerContext: the IOMMU type outlives the last group in the container', () => {

  test('a device closed and opened again in the same legacy context', () => {
    const k = FakeKernel.host();
    const ctx = createContext('legacy', { kernel: k });
    try {
      openDevice(EDU, { kernel: k, context: ctx }).close();
      const again = openDevice(EDU, { kernel: k, context: ctx }); // VFIO_GROUP_GET_DEVICE_FD: EINVAL today
      assert.equal(again.readConfig(0, 2), 0x1234);
    } finally {
      ctx.close();
    }
    assertNoLeaks(k);
  });

  test('after a device of another group was closed, a new group joins the emptied container', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 4 }] });
    const ctx = createContext('legacy', { kernel: k });
    try {
      openDevice(EDU, { kernel: k, context: ctx }).close();
      openDevice(TESTDEV, { kernel: k, context: ctx });
    } finally {
      ctx.close();
    }
    assertNoLeaks(k);
  });
});

describe('route.ts IommuContext.close: closing a device\'s own context closes the context fd twice', () => {

  for (const route of ['iommufd', 'legacy'] as const) {
    test(`device.context.close() on a context openDevice created (${route})`, () => {
      const k = FakeKernel.host();
      const dev = openDevice(EDU, { kernel: k, route });
      dev.context.close();
      assert.equal(dev.closed, true);
      // A second close(2) of a number another thread (libuv's pool) reused in between would close
      // someone else's file: badCloses must stay empty.
      assertNoLeaks(k);
    });
  }
});

describe('locate.ts: an mdev bound to its parent\'s vendor driver counts as a blocker of its own group', () => {
  test('an mtty mdev (FINDINGS.md 4: "bound to the mtty driver") can be opened', () => {
    const k = FakeKernel.host({ iommu: 'none', devices: [], mdevs: [{ uuid: MDEV }] });
    let dev;
    try {
      dev = openDevice(MDEV, { kernel: k });
    } catch (e) {
      assert.ok(!(e instanceof GroupNotViableError), `${String(e)}`);
      throw e;
    }
    assert.equal(dev.route, 'iommufd');
    dev.close();
    assertNoLeaks(k);
  });
});

describe('device.ts: a non-integer offset or length throws a RangeError, not a UsageError', () => {
  test('readConfig(1.5, 1), readConfig(NaN, 1), readRegion(CONFIG, 0, 1.5)', () => {
    const k = FakeKernel.host();
    const dev = openDevice(EDU, { kernel: k });
    try {
      catchError(() => dev.readConfig(1.5, 1), UsageError);
      catchError(() => dev.readConfig(Number.NaN, 1), UsageError);
      catchError(() => dev.readRegion('CONFIG', 0, 1.5), UsageError);
    } finally {
      dev.close();
    }
  });
});

describe('iommufd.ts openCdev: an fstat failure leaks the cdev fd and escapes as a raw error', () => {
  test('fstat of the opened cdev fails', () => {
    const k = FakeKernel.host().failNext({ call: 'fstat', errno: 'ENOMEM' });
    let err: unknown;
    try {
      openDevice(EDU, { kernel: k }).close();
    } catch (e) {
      err = e;
    }
    assert.deepEqual(k.pendingFailures(), [], 'the injected fstat failure was reached');
    assertNoLeaks(k); // the cdev fd is closed too
    assert.ok(err instanceof VfioError, `a typed error, not ${String(err)}`);
    assert.deepEqual([err.step, err.errno, err.route], ['check cdev', 'ENOMEM', 'iommufd'], 'it names the step that failed');
  });
});

describe('select.ts notViable: message grammar when discovery saw no blocker', () => {
  test('the group turns non-viable after discovery: "a member is bound", not "a member are bound"', () => {
    const k = FakeKernel.host({ kernel: 'stock', devices: [{ address: EDU, group: 5 }, { address: TESTDEV, group: 5 }] });
    k.onCall((c) => {
      if (c.call === 'open' && c.path === '/dev/vfio/5') k.setDriver(TESTDEV, 'e1000e');
    });
    const e = catchError(() => openDevice(EDU, { kernel: k }), GroupNotViableError);
    assert.doesNotMatch(e.message, /a member are/);
  });
});

describe('binding into a closed context', () => {
  test('openDevice with a closed context -> ClosedError, without a system call on the stale fd', () => {
    const k = FakeKernel.host();
    const ctx = createContext('iommufd', { kernel: k });
    ctx.close();
    catchError(() => openDevice(EDU, { kernel: k, context: ctx }), ClosedError);
    assert.ok(!k.openedPaths().includes('/dev/vfio/devices/vfio0'));
  });
});
