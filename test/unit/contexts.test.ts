// IOMMU contexts shared by several devices, what this process itself holds, closing (idempotent,
// reverse order, Symbol.dispose), and the beforeBind hook.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createContext, openDevice, type BeforeBindHook } from '../../src/index.js';
import { ClosedError, DeviceBusyError } from '../../src/errors.js';
import { ContainerContext } from '../../src/routes/legacy.js';
import { IommufdContext } from '../../src/routes/iommufd.js';
import { EDU, FakeKernel, TESTDEV } from '../fake-kernel.js';
import { assertNoLeaks, catchError } from '../helpers.js';

describe('a shared iommufd context', () => {
  test('two devices share one iommufd, one IOAS and its automatic domain', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU }, { address: TESTDEV, id: '1b36:0005' }] });
    const ctx = createContext('iommufd', { kernel: k });
    assert.ok(ctx instanceof IommufdContext);
    const a = openDevice(EDU, { kernel: k, context: ctx });
    const b = openDevice(TESTDEV, { kernel: k, context: ctx });
    assert.equal(a.route, 'iommufd');
    assert.equal(a.context, ctx);
    assert.equal(a.report.ids.ioas, b.report.ids.ioas);
    assert.equal(a.report.ids.ioas, ctx.ioasIdOrNull);
    assert.equal(a.report.ids.hwpt, b.report.ids.hwpt);
    assert.notEqual(a.report.ids.devid, b.report.ids.devid);
    assert.equal(k.ioctlNames().filter((n) => n === 'IOMMU_IOAS_ALLOC').length, 1);
    assert.equal(k.openedPaths().filter((p) => p === '/dev/iommu').length, 1);
    assert.equal(ctx.deviceCount, 2);
    // a device closed alone leaves the context and the other device working
    a.close();
    assert.equal(ctx.closed, false);
    assert.equal(ctx.deviceCount, 1);
    assert.equal(b.readConfig(0, 2), 0x1b36);
    // b's cdev, and the eventfd of its request channel (REQ), armed while it is open
    assert.deepEqual(k.openPaths().sort(), ['/dev/iommu', '/dev/vfio/devices/vfio1', 'anon_inode:[eventfd]']);
    ctx.close();
    assert.equal(b.closed, true);
    assertNoLeaks(k);
  });

  test('two devices of one group may share an iommufd context', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 3 }] });
    const ctx = createContext('iommufd', { kernel: k });
    const a = openDevice(EDU, { kernel: k, context: ctx });
    const b = openDevice(TESTDEV, { kernel: k, context: ctx });
    assert.equal(a.report.ids.hwpt, b.report.ids.hwpt);
    ctx.close();
    assertNoLeaks(k);
  });
});

describe('a shared legacy context', () => {
  test('two devices of the same group share one group fd; the last one out closes it', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 3 }] });
    const ctx = createContext('legacy', { kernel: k });
    assert.ok(ctx instanceof ContainerContext);
    const a = openDevice(EDU, { kernel: k, context: ctx });
    const b = openDevice(TESTDEV, { kernel: k, context: ctx });
    assert.equal(a.route, 'legacy');
    assert.equal(a.report.nodes.group, '/dev/vfio/3');
    assert.equal(b.report.nodes.group, '/dev/vfio/3');
    assert.equal(k.openedPaths().filter((p) => p === '/dev/vfio/3').length, 1, 'the group node is opened once');
    assert.equal(k.openPaths().filter((p) => p === '/dev/vfio/3').length, 1);
    assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_SET_IOMMU').length, 1);
    assert.equal(ctx.iommuType, 'type1v2');
    a.close();
    assert.equal(k.openPaths().filter((p) => p === '/dev/vfio/3').length, 1, 'b still needs the group');
    assert.equal(b.readConfig(0, 2), 0x1234);
    b.close();
    assert.deepEqual(k.openPaths(), ['/dev/vfio/vfio'], 'the container stays with its context');
    ctx.close();
    assertNoLeaks(k);
  });

  test('two groups in one container: the second group joins without a second SET_IOMMU', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 4 }] });
    const ctx = createContext('legacy', { kernel: k });
    const a = openDevice(EDU, { kernel: k, context: ctx });
    const b = openDevice(TESTDEV, { kernel: k, context: ctx });
    assert.deepEqual([a.report.ids.group, b.report.ids.group], [3, 4]);
    assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_SET_IOMMU').length, 1);
    ctx.close();
    assertNoLeaks(k);
  });
});

describe('what this process holds', () => {
  test('a device of a group held by another context of this process: DeviceBusyError naming "this process"', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 3 }] });
    const legacy = createContext('legacy', { kernel: k });
    const a = openDevice(EDU, { kernel: k, context: legacy });
    const iommufd = createContext('iommufd', { kernel: k });
    for (const options of [{ context: iommufd }, { context: createContext('legacy', { kernel: k }) }, {}, { route: 'legacy' as const }]) {
      const opensBefore = k.openedPaths().length;
      const e = catchError(() => openDevice(TESTDEV, { kernel: k, ...options }), DeviceBusyError);
      assert.match(e.message, /IOMMU group 3 \(of 0000:00:11\.0\) is already held by another legacy context of this process/);
      assert.equal(e.step, 'claim group');
      assert.match(e.hint ?? '', /same context/);
      // never asked the kernel (which would answer EBUSY and blame another process)
      assert.ok(!k.openedPaths().slice(opensBefore).some((p) => p.startsWith('/dev/vfio/devices/') || p === '/dev/vfio/3'));
      options.context?.close();
    }
    a.close();
    legacy.close();
    iommufd.close();
    assertNoLeaks(k);
    // released: the other device can now be opened anywhere
    const b = openDevice(TESTDEV, { kernel: k });
    b.close();
    assertNoLeaks(k);
  });

  test('the same device twice: DeviceBusyError ("already open in this process"), then fine once closed', () => {
    const k = FakeKernel.host();
    const a = openDevice(EDU, { kernel: k });
    for (const route of ['auto', 'iommufd', 'legacy'] as const) {
      const e = catchError(() => openDevice(EDU, { kernel: k, route }), DeviceBusyError);
      assert.match(e.message, /0000:00:10\.0 is already open in this process/);
      assert.equal(e.step, 'claim device');
    }
    const ctx = createContext('iommufd', { kernel: k });
    catchError(() => openDevice(EDU, { kernel: k, context: ctx }), DeviceBusyError);
    ctx.close();
    assert.deepEqual(k.openPaths().sort(), ['/dev/iommu', '/dev/vfio/devices/vfio0', 'anon_inode:[eventfd]'], 'the cdev, and its request channel\'s eventfd');
    assert.equal(k.deviceOpenCount(EDU), 1);
    a.close();
    const again = openDevice(EDU, { kernel: k });
    again.close();
    assertNoLeaks(k);
  });

  test('the same device through another spelling is the same device', () => {
    const k = FakeKernel.host();
    const a = openDevice(EDU, { kernel: k });
    catchError(() => openDevice('/dev/vfio/devices/vfio0', { kernel: k }), DeviceBusyError);
    catchError(() => openDevice(`/sys/bus/pci/devices/${EDU}`, { kernel: k }), DeviceBusyError);
    a.close();
    assertNoLeaks(k);
  });
});

describe('closing', () => {
  test('closing a context closes its devices, last bound first, then itself', () => {
    // each device closes its request channel's eventfd, then its own fd (and its group's, the last one out)
    const REQ = 'anon_inode:[eventfd]';
    const expected = {
      iommufd: [REQ, '/dev/vfio/devices/vfio1', REQ, '/dev/vfio/devices/vfio0', '/dev/iommu'],
      legacy: [REQ, 'anon_inode:[vfio-device]', '/dev/vfio/4', REQ, 'anon_inode:[vfio-device]', '/dev/vfio/3', '/dev/vfio/vfio'],
    };
    for (const route of ['iommufd', 'legacy'] as const) {
      const k = FakeKernel.host({ devices: [{ address: EDU }, { address: TESTDEV }] });
      const ctx = createContext(route, { kernel: k });
      const a = openDevice(EDU, { kernel: k, context: ctx });
      const b = openDevice(TESTDEV, { kernel: k, context: ctx });
      const closes: string[] = [];
      k.onCall((c) => {
        if (c.call === 'close') closes.push(k.describeFd(c.fd!)?.path ?? String(c.fd));
      });
      ctx.close();
      assert.equal(a.closed, true);
      assert.equal(b.closed, true);
      assert.equal(ctx.closed, true);
      assert.deepEqual(closes, expected[route]);
      assertNoLeaks(k, route);
      assert.throws(() => a.fd, ClosedError);
      assert.throws(() => a.readConfig(0, 2), ClosedError);
      assert.throws(() => b.regions(), ClosedError);
      assert.throws(() => b.info(), ClosedError);
    }
  });

  test('close() is idempotent, for devices and contexts', () => {
    const k = FakeKernel.host();
    const dev = openDevice(EDU, { kernel: k });
    dev.close();
    dev.close();
    dev.context.close();
    assertNoLeaks(k);
    const ctx = createContext('legacy', { kernel: k });
    const d2 = openDevice(EDU, { kernel: k, context: ctx });
    d2.close();
    d2.close();
    ctx.close();
    ctx.close();
    assertNoLeaks(k);
  });

  test('a device opened without a context owns the one created for it', () => {
    const k = FakeKernel.host();
    const dev = openDevice(EDU, { kernel: k });
    const ctx = dev.context;
    dev.close();
    assert.equal(ctx.closed, true);
    assertNoLeaks(k);
  });

  test('a device joining a context does not close it', () => {
    const k = FakeKernel.host();
    const ctx = createContext('iommufd', { kernel: k });
    openDevice(EDU, { kernel: k, context: ctx }).close();
    assert.equal(ctx.closed, false);
    assert.deepEqual(k.openPaths(), ['/dev/iommu']);
    ctx.close();
    assertNoLeaks(k);
  });

  test('Symbol.dispose closes devices and contexts; `using` works', () => {
    const k = FakeKernel.host();
    const dev = openDevice(EDU, { kernel: k });
    dev[Symbol.dispose]();
    assert.equal(dev.closed, true);
    assertNoLeaks(k);
    const ctx = createContext('iommufd', { kernel: k });
    ctx[Symbol.dispose]();
    assert.equal(ctx.closed, true);
    assertNoLeaks(k);

    let seen: { closed: boolean } | undefined;
    {
      using ctx2 = createContext('legacy', { kernel: k });
      using d = openDevice(EDU, { kernel: k, context: ctx2 });
      seen = d;
      assert.equal(d.readConfig(2, 2), 0x11e8);
    }
    assert.equal(seen.closed, true);
    assertNoLeaks(k);
  });
});

describe('beforeBind', () => {
  test('iommufd: called with the cdev fd, opened and not yet bound', () => {
    const k = FakeKernel.host();
    const calls: Parameters<BeforeBindHook>[0][] = [];
    const dev = openDevice(EDU, {
      kernel: k,
      beforeBind: (file) => {
        calls.push(file);
        assert.deepEqual(k.describeFd(file.fd), { fd: file.fd, path: '/dev/vfio/devices/vfio0', kind: 'device', via: 'cdev', bound: false, device: EDU });
        assert.ok(!k.ioctlNames().includes('VFIO_DEVICE_BIND_IOMMUFD'), 'before the bind ioctl');
      },
    });
    assert.equal(calls.length, 1);
    assert.equal(calls[0]!.route, 'iommufd');
    assert.equal(calls[0]!.path, '/dev/vfio/devices/vfio0');
    assert.equal(calls[0]!.fd, dev.fd, 'the cdev fd is the device fd');
    dev.close();
    assertNoLeaks(k);
  });

  test('legacy: called with the group fd, before the group joins the container', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    const calls: Parameters<BeforeBindHook>[0][] = [];
    const dev = openDevice(EDU, {
      kernel: k,
      beforeBind: (file) => {
        calls.push(file);
        assert.deepEqual(k.describeFd(file.fd), { fd: file.fd, path: '/dev/vfio/3', kind: 'group', groupId: 3, inContainer: false });
        assert.ok(!k.ioctlNames().includes('VFIO_GROUP_GET_DEVICE_FD'));
      },
    });
    assert.deepEqual(calls.map((c) => [c.route, c.path]), [['legacy', '/dev/vfio/3']]);
    assert.equal(dev.route, 'legacy');
    dev.close();
    assertNoLeaks(k);
  });

  test('legacy: called once per group, not for a second device of a group already in the context', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 3 }] });
    const ctx = createContext('legacy', { kernel: k });
    const paths: string[] = [];
    const hook: BeforeBindHook = (f) => paths.push(f.path);
    openDevice(EDU, { kernel: k, context: ctx, beforeBind: hook });
    openDevice(TESTDEV, { kernel: k, context: ctx, beforeBind: hook });
    assert.deepEqual(paths, ['/dev/vfio/3']);
    ctx.close();
    assertNoLeaks(k);
  });

  test('a hook that throws: its error propagates and nothing stays open', () => {
    for (const host of [() => FakeKernel.host(), () => FakeKernel.host({ kernel: 'stock' })]) {
      const k = host();
      const boom = new Error('KVM_DEV_VFIO_FILE_ADD failed');
      assert.throws(() => openDevice(EDU, { kernel: k, beforeBind: () => { throw boom; } }), (e) => e === boom);
      assertNoLeaks(k);
      assert.equal(k.deviceOpenCount(EDU), 0);
      assert.equal(k.groupHolder(3), null);
      // and the device is not left claimed by this process
      openDevice(EDU, { kernel: k }).close();
      assertNoLeaks(k);
    }
  });
});
