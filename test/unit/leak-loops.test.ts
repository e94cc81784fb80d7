// Leak loops on the fake: 10,000 failed binds of kinds only the fake can produce (errnos the test bed's
// kernels never give at those steps), and 1,000 bind/use/close cycles, on the same fake kernels all
// along. Afterwards the fake's open fds, live mappings, IOMMU mappings, pinned pages, eventfd watches,
// bindings and group holds are what they were before, and the device still binds.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { allocDmaBuffer, createContext, openDevice } from '../../src/index.js';
import { DeviceNotFoundError, KernelError, NoRouteError, VfioError } from '../../src/errors.js';
import type { RoutePolicy } from '../../src/routes/select.js';
import { IOMMU } from '../../src/uapi/iommufd.js';
import { VFIO } from '../../src/uapi/vfio.js';
import { EDU, FakeKernel, TESTDEV, type FailRule } from '../fake-kernel.js';
import { assertNoLeaks } from '../helpers.js';

const FAILED_BINDS = 10_000;
const CYCLES = 1_000;

interface Kind {
  name: string;
  host: 'iommufd' | 'stock';
  route: RoutePolicy;
  rules: FailRule[];
  error: abstract new (...args: never[]) => VfioError;
}

const CDEV = '/dev/vfio/devices/vfio0';
const KINDS: Kind[] = [
  { name: 'ENOTTY at VFIO_DEVICE_BIND_IOMMUFD (route iommufd)', host: 'iommufd', route: 'iommufd', rules: [{ request: VFIO.DEVICE_BIND_IOMMUFD, errno: 'ENOTTY' }], error: NoRouteError },
  { name: 'EFAULT at VFIO_DEVICE_BIND_IOMMUFD', host: 'iommufd', route: 'auto', rules: [{ request: VFIO.DEVICE_BIND_IOMMUFD, errno: 'EFAULT' }], error: KernelError },
  { name: 'ENODEV at VFIO_DEVICE_BIND_IOMMUFD', host: 'iommufd', route: 'auto', rules: [{ request: VFIO.DEVICE_BIND_IOMMUFD, errno: 'ENODEV' }], error: DeviceNotFoundError },
  { name: 'EIO at VFIO_DEVICE_ATTACH_IOMMUFD_PT', host: 'iommufd', route: 'auto', rules: [{ request: VFIO.DEVICE_ATTACH_IOMMUFD_PT, errno: 'EIO' }], error: KernelError },
  { name: 'EMFILE at open cdev', host: 'iommufd', route: 'auto', rules: [{ call: 'open', path: CDEV, errno: 'EMFILE' }], error: KernelError },
  { name: 'EMFILE at open /dev/iommu', host: 'iommufd', route: 'iommufd', rules: [{ call: 'open', path: '/dev/iommu', errno: 'EMFILE' }], error: KernelError },
  { name: 'ENOMEM at IOMMU_IOAS_ALLOC', host: 'iommufd', route: 'auto', rules: [{ request: IOMMU.IOAS_ALLOC, errno: 'ENOMEM' }], error: KernelError },
  { name: 'EOVERFLOW at the cdev\'s fstat', host: 'iommufd', route: 'auto', rules: [{ call: 'fstat', errno: 'EOVERFLOW' }], error: KernelError },
  { name: 'EIO at VFIO_DEVICE_GET_INFO after an iommufd bind', host: 'iommufd', route: 'auto', rules: [{ request: VFIO.DEVICE_GET_INFO, errno: 'EIO' }], error: KernelError },
  {
    name: 'ENOTTY at bind, then EIO at VFIO_SET_IOMMU after the fallback', host: 'iommufd', route: 'auto',
    rules: [{ request: VFIO.DEVICE_BIND_IOMMUFD, errno: 'ENOTTY' }, { request: VFIO.SET_IOMMU, errno: 'EIO' }], error: KernelError,
  },
  { name: 'EMFILE at open /dev/vfio/vfio', host: 'stock', route: 'auto', rules: [{ call: 'open', path: '/dev/vfio/vfio', errno: 'EMFILE' }], error: KernelError },
  { name: 'ENOTTY at VFIO_GET_API_VERSION', host: 'stock', route: 'legacy', rules: [{ request: VFIO.GET_API_VERSION, errno: 'ENOTTY' }], error: KernelError },
  { name: 'EMFILE at open group', host: 'stock', route: 'legacy', rules: [{ call: 'open', path: '/dev/vfio/3', errno: 'EMFILE' }], error: KernelError },
  { name: 'EIO at VFIO_GROUP_GET_STATUS', host: 'stock', route: 'legacy', rules: [{ request: VFIO.GROUP_GET_STATUS, errno: 'EIO' }], error: KernelError },
  { name: 'EFAULT at VFIO_GROUP_SET_CONTAINER', host: 'stock', route: 'legacy', rules: [{ request: VFIO.GROUP_SET_CONTAINER, errno: 'EFAULT' }], error: KernelError },
  { name: 'EIO at VFIO_SET_IOMMU', host: 'stock', route: 'legacy', rules: [{ request: VFIO.SET_IOMMU, errno: 'EIO' }], error: KernelError },
  { name: 'ENODEV at VFIO_GROUP_GET_DEVICE_FD', host: 'stock', route: 'legacy', rules: [{ request: VFIO.GROUP_GET_DEVICE_FD, errno: 'ENODEV' }], error: DeviceNotFoundError },
  { name: 'EMFILE at VFIO_GROUP_GET_DEVICE_FD', host: 'stock', route: 'legacy', rules: [{ request: VFIO.GROUP_GET_DEVICE_FD, errno: 'EMFILE' }], error: KernelError },
  { name: 'EIO at VFIO_DEVICE_GET_INFO after a legacy bind', host: 'stock', route: 'legacy', rules: [{ request: VFIO.DEVICE_GET_INFO, errno: 'EIO' }], error: KernelError },
];

/** Everything a bind can leave behind, as one comparable snapshot. */
function snapshot(k: FakeKernel): Record<string, unknown> {
  return {
    fds: k.openFds(), mappings: k.liveMappings(), iommu: k.iommuMappings().length, pinned: k.pinnedBytes(), watches: k.activeWatches(),
    bound: [EDU, TESTDEV].map((d) => k.deviceOpenCount(d)), groups: [3, 4].map((g) => k.groupHolder(g)), badCloses: k.badCloses.length,
  };
}

describe('leak loops', () => {
  test(`${FAILED_BINDS} failed binds of ${KINDS.length} kinds only the fake produces: nothing accumulates`, (t) => {
    const devices = [{ address: EDU, group: 3 }, { address: TESTDEV, group: 4 }];
    const hosts = { iommufd: FakeKernel.host({ kernel: 'iommufd', devices }), stock: FakeKernel.host({ kernel: 'stock', devices }) };
    const before = { iommufd: snapshot(hosts.iommufd), stock: snapshot(hosts.stock) };
    const counts = new Map<string, number>();
    for (let i = 0; i < FAILED_BINDS; i++) {
      const kind = KINDS[i % KINDS.length]!;
      const k = hosts[kind.host];
      if (i % 1000 < KINDS.length) k.calls.length = 0; // keep the call log bounded
      for (const rule of kind.rules) k.failNext(rule);
      let thrown: unknown;
      try {
        openDevice(EDU, { kernel: k, route: kind.route }).close();
      } catch (e) {
        thrown = e;
      }
      if (!(thrown instanceof kind.error)) {
        assert.fail(`iteration ${i}, ${kind.name}: expected ${kind.error.name}, got ${thrown instanceof Error ? `${thrown.name}: ${thrown.message}` : 'success'}`);
      }
      if (k.pendingFailures().length > 0) assert.fail(`iteration ${i}, ${kind.name}: the step was not reached`);
      if (k.openFds() !== 0) assert.fail(`iteration ${i}, ${kind.name}: ${k.openPaths().join(', ')} left open`);
      counts.set(kind.name, (counts.get(kind.name) ?? 0) + 1);
    }
    for (const h of ['iommufd', 'stock'] as const) {
      assert.deepEqual(snapshot(hosts[h]), before[h], `${h}: the fake's state changed`);
      const dev = openDevice(EDU, { kernel: hosts[h] }); // nothing of this process still claims the device or group
      assert.equal(dev.route, h === 'iommufd' ? 'iommufd' : 'legacy');
      dev.close();
      assertNoLeaks(hosts[h]);
    }
    assert.equal([...counts.values()].reduce((a, b) => a + b, 0), FAILED_BINDS);
    t.diagnostic(`${FAILED_BINDS} failed binds, ${Math.min(...counts.values())}-${Math.max(...counts.values())} of each kind`);
  });

  test(`${CYCLES} bind/use/close cycles (DMA map, BAR0 mmap and MMIO, MSI, both routes, shared contexts): nothing accumulates`, () => {
    const hosts = {
      iommufd: FakeKernel.host({ kernel: 'iommufd', devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 4 }] }),
      stock: FakeKernel.host({ kernel: 'stock', devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 4 }] }),
    };
    const before = { iommufd: snapshot(hosts.iommufd), stock: snapshot(hosts.stock) };
    const routes: [keyof typeof hosts, RoutePolicy][] = [['iommufd', 'auto'], ['iommufd', 'legacy'], ['stock', 'auto'], ['iommufd', 'iommufd']];
    for (let i = 0; i < CYCLES; i++) {
      const [h, route] = routes[i % routes.length]!;
      const k = hosts[h];
      if (i % 200 < routes.length) k.calls.length = 0;
      const buf = allocDmaBuffer(8192, { kernel: k });
      if (i % 10 === 9) {
        // two devices in one shared context, closed with it
        const ctx = createContext(route === 'legacy' || h === 'stock' ? 'legacy' : 'iommufd', { kernel: k });
        const a = openDevice(EDU, { kernel: k, context: ctx });
        openDevice(TESTDEV, { kernel: k, context: ctx });
        ctx.map(buf);
        a.enableIrqs('MSI');
        ctx.close();
      } else {
        const dev = openDevice(EDU, { kernel: k, route });
        const m = dev.context.map(buf);
        const bar = dev.mapRegion('BAR0');
        assert.equal(bar.read32(0), 0x010000ed); // edu's id
        const irq = dev.enableIrqs('MSI');
        assert.equal(irq.vectors.length, 1);
        if (i % 2 === 0) dev.context.unmap(m); // else close drops it
        dev.close();
      }
      buf.free();
      const now = snapshot(k);
      if (JSON.stringify(now, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v)) !== JSON.stringify(before[h], (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))) {
        assert.deepEqual(now, before[h], `cycle ${i} (${h}, ${route})`);
      }
    }
    for (const h of ['iommufd', 'stock'] as const) {
      assert.deepEqual(snapshot(hosts[h]), before[h]);
      assertNoLeaks(hosts[h]);
    }
  });
});
