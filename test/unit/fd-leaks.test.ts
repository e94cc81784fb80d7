// Every errno the fake knows, injected at every step of both routes, reached in every way a route is
// reached (auto, forced, after a fallback, inside a shared context): afterwards no fd is open, none was
// closed twice, the device is not left bound and no group is left held; the outcome is a public
// VfioError naming the failed step, or a device that reached the legacy route by the fallback table.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createContext, openDevice } from '../../src/index.js';
import { VfioError } from '../../src/errors.js';
import type { IommuContext } from '../../src/routes/route.js';
import { IOMMU } from '../../src/uapi/iommufd.js';
import { VFIO } from '../../src/uapi/vfio.js';
import type { VfioDevice } from '../../src/device/device.js';
import { EDU, ERRNO_NAMES, FakeKernel, type FailRule } from '../fake-kernel.js';
import { assertNoLeaks } from '../helpers.js';

interface Step {
  /** the step name the library reports */
  name: string;
  rule: Omit<FailRule, 'errno'>;
}

export const IOMMUFD_STEPS: Step[] = [
  { name: 'open /dev/iommu', rule: { call: 'open', path: '/dev/iommu' } },
  { name: 'open cdev', rule: { call: 'open', path: '/dev/vfio/devices/vfio0' } },
  { name: 'VFIO_DEVICE_BIND_IOMMUFD', rule: { request: VFIO.DEVICE_BIND_IOMMUFD } },
  { name: 'IOMMU_IOAS_ALLOC', rule: { request: IOMMU.IOAS_ALLOC } },
  { name: 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', rule: { request: VFIO.DEVICE_ATTACH_IOMMUFD_PT } },
  { name: 'VFIO_DEVICE_GET_INFO', rule: { request: VFIO.DEVICE_GET_INFO, path: '/dev/vfio/devices/vfio0' } },
];

export const LEGACY_STEPS: Step[] = [
  { name: 'open /dev/vfio/vfio', rule: { call: 'open', path: '/dev/vfio/vfio' } },
  { name: 'VFIO_GET_API_VERSION', rule: { request: VFIO.GET_API_VERSION } },
  { name: 'open group', rule: { call: 'open', path: '/dev/vfio/3' } },
  { name: 'VFIO_GROUP_GET_STATUS', rule: { request: VFIO.GROUP_GET_STATUS } },
  { name: 'VFIO_GROUP_SET_CONTAINER', rule: { request: VFIO.GROUP_SET_CONTAINER } },
  { name: 'VFIO_CHECK_EXTENSION', rule: { request: VFIO.CHECK_EXTENSION } },
  { name: 'VFIO_SET_IOMMU', rule: { request: VFIO.SET_IOMMU } },
  { name: 'VFIO_GROUP_GET_DEVICE_FD', rule: { request: VFIO.GROUP_GET_DEVICE_FD } },
  { name: 'VFIO_DEVICE_GET_INFO', rule: { request: VFIO.DEVICE_GET_INFO, path: 'anon_inode:[vfio-device]' } },
];

interface Scenario {
  name: string;
  steps: Step[];
  host: () => FakeKernel;
  route?: 'auto' | 'iommufd' | 'legacy';
  /** a shared context, created before the failure is injected */
  context?: 'iommufd' | 'legacy';
}

const SCENARIOS: Scenario[] = [
  { name: 'auto, iommufd kernel', steps: IOMMUFD_STEPS, host: () => FakeKernel.host(), route: 'auto' },
  { name: 'route iommufd', steps: IOMMUFD_STEPS, host: () => FakeKernel.host(), route: 'iommufd' },
  { name: 'shared iommufd context', steps: IOMMUFD_STEPS.slice(1), host: () => FakeKernel.host(), context: 'iommufd' },
  { name: 'auto, stock kernel (legacy after the fallback)', steps: LEGACY_STEPS, host: () => FakeKernel.host({ kernel: 'stock' }), route: 'auto' },
  {
    name: 'auto, iommufd kernel whose bind answers ENOTTY (legacy after the fallback)',
    steps: LEGACY_STEPS,
    host: () => FakeKernel.host().failNext({ request: VFIO.DEVICE_BIND_IOMMUFD, errno: 'ENOTTY' }),
    route: 'auto',
  },
  { name: 'route legacy', steps: LEGACY_STEPS, host: () => FakeKernel.host(), route: 'legacy' },
  { name: 'shared legacy context', steps: LEGACY_STEPS.slice(2), host: () => FakeKernel.host(), context: 'legacy' },
];

interface Outcome {
  errno: string;
  device?: VfioDevice;
  error?: unknown;
}

/** Injects errno at the step, opens the device, checks nothing leaked, and returns what happened. */
function inject(s: Scenario, step: Step, errno: (typeof ERRNO_NAMES)[number]): Outcome {
  const k = s.host();
  let ctx: IommuContext | undefined;
  if (s.context) ctx = createContext(s.context, { kernel: k });
  k.failNext({ ...step.rule, errno });
  const outcome: Outcome = { errno };
  try {
    outcome.device = openDevice(EDU, { kernel: k, ...(s.route ? { route: s.route } : {}), ...(ctx ? { context: ctx } : {}) });
  } catch (e) {
    outcome.error = e;
  }
  const where = `${s.name}, ${step.name} ${errno}`;
  assert.equal(k.pendingFailures().length, 0, `${where}: the step was not reached`);
  if (outcome.device) {
    // Only a fallback (or the second cdev node, after ENOENT at the first) may survive a failure.
    const fb = outcome.device.report.fallback;
    if (fb) assert.deepEqual([fb.step, fb.errno], [step.name, errno], where);
    else assert.ok(step.name === 'open cdev' && errno === 'ENOENT', `${where}: succeeded without a fallback`);
    outcome.device.close();
  }
  if (ctx) {
    if (!outcome.device) assert.deepEqual(k.openPaths(), [s.context === 'iommufd' ? '/dev/iommu' : '/dev/vfio/vfio'], `${where}: the context alone is left`);
    ctx.close();
  }
  assertNoLeaks(k, where);
  assert.equal(k.deviceOpenCount(EDU), 0, `${where}: the device is left bound`);
  assert.equal(k.groupHolder(3), null, `${where}: the group is left held`);
  return outcome;
}

for (const s of SCENARIOS) {
  describe(`fd leaks: ${s.name}`, () => {
    for (const step of s.steps) {
      test(`every errno at ${step.name}: no fd left open`, () => {
        for (const errno of ERRNO_NAMES) {
          const o = inject(s, step, errno);
          // whatever class the error is, it names the step and the errno (StepError or VfioError)
          if (o.error instanceof VfioError) {
            assert.ok(o.error.attempts.some((a) => a.step === step.name && a.errno === errno), `${step.name} ${errno}: ${JSON.stringify(o.error.attempts)}`);
          } else if (o.error !== undefined) {
            assert.fail(`${step.name} ${errno}: not a VfioError: ${String(o.error)}`);
          }
        }
      });
    }

    test('every failure is reported as a public VfioError', () => {
      for (const step of s.steps) {
        for (const errno of ERRNO_NAMES) {
          const o = inject(s, step, errno);
          if (o.error !== undefined) assert.ok(o.error instanceof VfioError, `${step.name} ${errno}: ${String(o.error)}`);
        }
      }
    });
  });
}

for (const route of ['iommufd', 'legacy'] as const) {
  test(`a failure inside a shared ${route} context leaves the context usable`, () => {
    const k = FakeKernel.host();
    const ctx = createContext(route, { kernel: k });
    try {
      k.failNext({ request: VFIO.DEVICE_GET_INFO, errno: 'EIO' });
      assert.throws(() => openDevice(EDU, { kernel: k, context: ctx }), VfioError);
      assert.equal(ctx.closed, false);
      const dev = openDevice(EDU, { kernel: k, context: ctx });
      assert.equal(dev.readConfig(0, 2), 0x1234);
      ctx.close();
      assert.equal(dev.closed, true);
    } finally {
      ctx.close();
    }
    assertNoLeaks(k, route);
  });
}
