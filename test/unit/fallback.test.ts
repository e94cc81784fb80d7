// Every row of FALLBACK_TABLE, driven through openDevice() with route 'auto' against the fake: the device
// ends on the legacy route, the report says which step and errno made it leave iommufd and why, and
// close() closes every fd. The rows that fall back only "if the group node is usable" are also driven
// with an unusable group node.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openDevice } from '../../src/index.js';
import { DeviceBusyError, NoRouteError, PermissionDeniedError, type VfioError } from '../../src/errors.js';
import { FALLBACK_TABLE, type FallbackRule } from '../../src/routes/select.js';
import { VFIO } from '../../src/uapi/vfio.js';
import { EDU, FakeKernel, RDEV } from '../fake-kernel.js';
import { assertNoLeaks, catchError } from '../helpers.js';

interface Scenario {
  name: string;
  host: () => FakeKernel;
  /** the fallback report's path, when the step has one */
  path?: string;
  /** what the reason must say in this scenario, beyond equalling the rule's own text */
  reason?: RegExp;
  /** the legacy group node */
  group?: string;
}

const key = (r: { step: string; errno: string | null }): string => `${r.step} / ${r.errno ?? 'no errno'}`;

/** How each row is met: as the kernels of the test bed produce it where they can, else injected. */
const SCENARIOS: Record<string, Scenario[]> = {
  'open /dev/iommu / ENOENT': [
    { name: 'a stock kernel (no CONFIG_IOMMUFD)', host: () => FakeKernel.host({ kernel: 'stock' }), path: '/dev/iommu', reason: /CONFIG_IOMMUFD not set/ },
    { name: 'an iommufd kernel whose /dev/iommu is not visible', host: () => FakeKernel.host().hide('/dev/iommu'), path: '/dev/iommu', reason: /\/sys\/class\/misc\/iommu exists/ },
  ],
  'open /dev/iommu / EACCES': [
    { name: 'a user who may open the group node but not /dev/iommu', host: () => FakeKernel.host().inaccessible('/dev/iommu'), path: '/dev/iommu' },
  ],
  'find cdev / no errno': [
    { name: 'a noiommu device (vfio-dev without dev)', host: () => FakeKernel.host({ iommu: 'noiommu' }), group: '/dev/vfio/noiommu-0' },
    { name: 'a device without a vfio-dev entry', host: () => FakeKernel.host({ devices: [{ address: EDU, cdev: null }] }) },
    // (as on a stock kernel: no dev attribute, and so no node; the node alone would be tried, see routes.test)
    { name: 'a vfio-dev entry whose dev attribute is missing', host: () => FakeKernel.host().hide(`/sys/devices/pci0000:00/${EDU}/vfio-dev/vfio0/dev`).hide('/dev/vfio/devices/vfio0').hide(`/dev/char/${RDEV.cdevMajor}:0`) },
  ],
  'open cdev / ENOENT': [
    {
      name: 'no /dev/vfio/devices node and no /dev/char link',
      host: () => FakeKernel.host().hide('/dev/vfio/devices/vfio0').hide(`/dev/char/${RDEV.cdevMajor}:0`),
      path: '/dev/vfio/devices/vfio0',
    },
    {
      name: 'a node with the number of another device (never trusted)',
      host: () => {
        const k = FakeKernel.host().hide(`/dev/char/${RDEV.cdevMajor}:0`);
        return k.plantNode('/dev/vfio/devices/vfio0', k.stat('/dev/vfio/vfio').rdev);
      },
      path: '/dev/vfio/devices/vfio0',
    },
  ],
  'open cdev / EACCES': [
    { name: 'a user who may not open the cdev', host: () => FakeKernel.host().inaccessible('/dev/vfio/devices/vfio0'), path: '/dev/vfio/devices/vfio0' },
  ],
  'VFIO_DEVICE_BIND_IOMMUFD / ENOTTY': [
    { name: 'a kernel without VFIO_DEVICE_BIND_IOMMUFD', host: () => FakeKernel.host().failNext({ request: VFIO.DEVICE_BIND_IOMMUFD, errno: 'ENOTTY' }) },
  ],
  'VFIO_DEVICE_BIND_IOMMUFD / EINVAL': [
    { name: 'a bind answering EINVAL while the group is free', host: () => FakeKernel.host().failNext({ request: VFIO.DEVICE_BIND_IOMMUFD, errno: 'EINVAL' }) },
  ],
};

test('every row of FALLBACK_TABLE has a scenario here, and every scenario a row', () => {
  assert.deepEqual(Object.keys(SCENARIOS).sort(), FALLBACK_TABLE.map(key).sort());
});

for (const rule of FALLBACK_TABLE) {
  describe(`fallback: ${key(rule)} (${rule.action})`, () => {
    for (const s of SCENARIOS[key(rule)] ?? []) {
      test(s.name, () => {
        const k = s.host();
        const facts = { kernelHasIommufd: k.exists('/sys/class/misc/iommu'), groupUsable: true };
        const dev = openDevice(EDU, { kernel: k, route: 'auto' });
        try {
          assert.equal(dev.route, 'legacy');
          assert.equal(dev.report.route, 'legacy');
          assert.deepEqual(dev.report.fallback, {
            from: 'iommufd',
            step: rule.step,
            errno: rule.errno,
            ...(dev.report.fallback?.path !== undefined ? { path: dev.report.fallback.path } : {}),
            reason: rule.reason(facts),
          });
          if (s.path) assert.equal(dev.report.fallback?.path, s.path);
          if (s.reason) assert.match(dev.report.fallback!.reason, s.reason);
          assert.equal(dev.report.nodes.group, s.group ?? '/dev/vfio/3');
          assert.deepEqual(dev.report.device_info, { flags: ['PCI'], regions: 9, irqs: 5 });
          // the iommufd route's fds were closed before the legacy route began (the eventfd is the bound
          // device's request channel, REQ)
          assert.deepEqual(k.openPaths().sort(), ['/dev/vfio/vfio', s.group ?? '/dev/vfio/3', 'anon_inode:[vfio-device]', 'anon_inode:[eventfd]'].sort());
          assert.equal(dev.readConfig(0, 2), 0x1234, 'the device works');
          assert.deepEqual(k.pendingFailures(), [], 'the injected failure was met');
        } finally {
          dev.close();
        }
        assertNoLeaks(k);
        assert.equal(k.groupHolder(3), null);
      });
    }
  });
}

describe('"fall back if the group node is usable", when it is not', () => {
  const rows = FALLBACK_TABLE.filter((r) => r.action === 'fall back if the group node is usable');

  test('the table has such rows (EACCES at /dev/iommu and at the cdev)', () => {
    assert.deepEqual(rows.map(key).sort(), ['open /dev/iommu / EACCES', 'open cdev / EACCES']);
  });

  for (const rule of rows) {
    for (const s of SCENARIOS[key(rule)] ?? []) {
      test(`${key(rule)}: ${s.name}, group node not accessible -> PermissionDeniedError naming both`, () => {
        const k = s.host().inaccessible('/dev/vfio/3');
        const e = catchError(() => openDevice(EDU, { kernel: k, route: 'auto' }), PermissionDeniedError);
        assert.equal(e.exitCode, 5);
        assert.equal(e.errno, 'EACCES');
        assert.equal(e.route, 'iommufd');
        assert.equal(e.step, rule.step);
        assert.ok(e.message.includes(s.path!), `names ${s.path}: ${e.message}`);
        assert.ok(e.message.includes('/dev/vfio/3'), `names the group node: ${e.message}`);
        assert.match(e.hint ?? '', /\/dev\/iommu.*\/dev\/vfio\/vfio.*\/dev\/vfio\/3/);
        assert.deepEqual(e.attempts.map((a) => [a.route, a.step, a.errno]), [['iommufd', rule.step, 'EACCES']]);
        // no legacy attempt was made
        assert.ok(!k.openedPaths().includes('/dev/vfio/vfio'));
        assert.ok(!k.openedPaths().includes('/dev/vfio/3'));
        assertNoLeaks(k);
      });
    }
  }
});

describe('route iommufd: the same answers never fall back', () => {
  const expected: Record<FallbackRule['action'], new (...a: never[]) => VfioError> = {
    'fall back': NoRouteError,
    'fall back if the group node is usable': PermissionDeniedError,
    'try legacy, keep the error': DeviceBusyError,
  };
  for (const rule of FALLBACK_TABLE) {
    const s = SCENARIOS[key(rule)]![0]!;
    test(`${key(rule)}: ${s.name} -> ${expected[rule.action].name}`, () => {
      const k = s.host();
      const e = catchError(() => openDevice(EDU, { kernel: k, route: 'iommufd' }), expected[rule.action]);
      assert.equal(e.route, 'iommufd');
      assert.equal(e.step, rule.step);
      assert.equal(e.errno, rule.errno);
      assert.equal(e.attempts.length, 1);
      if (e instanceof NoRouteError) {
        assert.equal(e.exitCode, 6);
        assert.ok(e.message.includes(rule.reason({ kernelHasIommufd: k.exists('/sys/class/misc/iommu'), groupUsable: true })));
        assert.match(e.hint ?? '', /--route auto or --route legacy/);
      }
      assert.ok(!k.openedPaths().includes('/dev/vfio/vfio'), 'no legacy attempt');
      assertNoLeaks(k);
    });
  }
});

describe('a fallback whose legacy route fails too', () => {
  test('EINVAL at bind, then EBUSY at the group: in use by another process, with both attempts', () => {
    const k = FakeKernel.host().bindElsewhere(EDU);
    const e = catchError(() => openDevice(EDU, { kernel: k }), DeviceBusyError);
    assert.equal(e.exitCode, 4);
    assert.match(e.message, /in use by another process: its iommufd bind answered EINVAL and its group open answered EBUSY/);
    assert.deepEqual(e.attempts.map((a) => [a.route, a.step, a.errno, a.path]), [
      ['iommufd', 'VFIO_DEVICE_BIND_IOMMUFD', 'EINVAL', undefined],
      ['legacy', 'open group', 'EBUSY', '/dev/vfio/3'],
    ]);
    assert.match(e.hint ?? '', /fuser/);
    assertNoLeaks(k);
  });

  test('no iommufd, and no /dev/vfio/vfio either: NoRouteError with both attempts', () => {
    const k = FakeKernel.host({ kernel: 'stock' }).hide('/dev/vfio/vfio');
    const e = catchError(() => openDevice(EDU, { kernel: k }), NoRouteError);
    assert.match(e.message, /the legacy route is unavailable: \/dev\/vfio\/vfio does not exist/);
    assert.deepEqual(e.attempts.map((a) => [a.route, a.step, a.errno]), [
      ['iommufd', 'open /dev/iommu', 'ENOENT'],
      ['legacy', 'open /dev/vfio/vfio', 'ENOENT'],
    ]);
    assertNoLeaks(k);
  });

  test('EACCES at /dev/iommu with a usable group node, then EACCES at /dev/vfio/vfio: PermissionDeniedError', () => {
    const k = FakeKernel.host().inaccessible('/dev/iommu').inaccessible('/dev/vfio/vfio');
    const e = catchError(() => openDevice(EDU, { kernel: k }), PermissionDeniedError);
    assert.equal(e.route, 'legacy');
    assert.equal(e.attempts.length, 2);
    assertNoLeaks(k);
  });
});
