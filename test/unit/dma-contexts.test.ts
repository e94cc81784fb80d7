// DMA in IOMMU contexts against the fake kernel: the geometry asked once per change of devices, the
// legacy container and its groups, the iommufd IOAS, and every failure of map and unmap leaving nothing behind.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { allocDmaBuffer, createContext, openDevice } from '../../src/index.js';
import { KernelError, NoRouteError, UsageError, VfioError } from '../../src/errors.js';
import { IOMMU } from '../../src/uapi/iommufd.js';
import { VFIO } from '../../src/uapi/vfio.js';
import { EDU, FakeKernel, TESTDEV } from '../fake-kernel.js';
import { assertNoLeaks, catchError } from '../helpers.js';
import { K, DMA_ROUTES, INTEL_RANGES, assertClean } from '../dma.js';

describe('the IOMMU geometry is asked for once per change of devices', () => {
  for (const r of DMA_ROUTES) {
    test(r.name, () => {
      const k = r.host({ devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 4 }] });
      const asks = (): number => k.ioctlNames().filter((n) => n === 'IOMMU_IOAS_IOVA_RANGES' || n === 'VFIO_IOMMU_GET_INFO').length;
      using ctx = createContext(r.name, { kernel: k }); // closes its devices too, should an assertion fail
      const a = openDevice(EDU, { kernel: k, context: ctx });
      const bufs = Array.from({ length: 4 }, () => allocDmaBuffer(K, { kernel: k }));
      const first = asks();
      const maps = bufs.map((b) => ctx.map(b));
      ctx.iovaRanges();
      const once = asks() - first;
      assert.ok(once >= 1 && once <= 2, `four maps and a ranges() asked ${once} times`); // type1 may ask twice (argsz)
      for (const m of maps) ctx.unmap(m);
      // a device joining may bring reserved regions: the next map asks again
      const b = openDevice(TESTDEV, { kernel: k, context: ctx });
      const before = asks();
      ctx.unmap(ctx.map(bufs[0]!));
      assert.ok(asks() > before, 'a map after a device joined asks the IOMMU again');
      b.close();
      const afterLeave = asks();
      ctx.unmap(ctx.map(bufs[0]!));
      assert.ok(asks() > afterLeave, 'a map after a device left asks the IOMMU again');
      a.close();
      ctx.close();
      for (const x of bufs) x.free();
      assertClean(k);
    });
  }
});

describe('legacy: the container and its groups', () => {
  test('the container losing its last group drops every mapping, in the kernel and in the books', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    const ctx = createContext('legacy', { kernel: k });
    const dev = openDevice(EDU, { kernel: k, context: ctx });
    const buf = allocDmaBuffer(K, { kernel: k });
    const m = ctx.map(buf, { iova: 0x1000n });
    dev.close();
    assert.deepEqual(k.iommuMappings(), [], 'the kernel dropped the mapping with the IOMMU');
    assert.deepEqual(ctx.mappings(), []);
    assert.equal(buf.mappings, 0);
    buf.free();
    // the context refuses to map until a device joins again; then the old IOVA is free
    const e = catchError(() => ctx.map(allocDmaBuffer(K, { kernel: k })), NoRouteError);
    assert.match(e.message, /this legacy context cannot map DMA: no device has joined it yet/);
    openDevice(EDU, { kernel: k, context: ctx });
    const again = allocDmaBuffer(K, { kernel: k });
    assert.equal(ctx.map(again, { iova: m.iova }).iova, 0x1000n);
    ctx.close();
    again.free();
    assert.deepEqual(k.iommuMappings(), []);
    assertNoLeaks(k);
  });

  test('two devices of one group: closing one keeps the group in the container and the mappings', () => {
    const k = FakeKernel.host({ kernel: 'stock', devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 3 }] });
    const ctx = createContext('legacy', { kernel: k });
    const a = openDevice(EDU, { kernel: k, context: ctx });
    openDevice(TESTDEV, { kernel: k, context: ctx });
    const buf = allocDmaBuffer(K, { kernel: k });
    ctx.map(buf);
    a.close();
    assert.equal(ctx.mappings().length, 1);
    assert.equal(k.iommuMappings().length, 1);
    ctx.close();
    buf.free();
    assertClean(k);
  });

  test('a container without a device refuses to map, naming why, and asks the kernel nothing', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    const ctx = createContext('legacy', { kernel: k });
    const buf = allocDmaBuffer(K, { kernel: k });
    const before = k.ioctlNames().length;
    for (const fn of [() => ctx.map(buf), () => ctx.iovaRanges()]) {
      const e = catchError(fn, NoRouteError);
      assert.match(e.message, /no device has joined it yet \(a container has no IOMMU until its first group does\)/);
      assert.equal(e.exitCode, 6);
    }
    assert.equal(k.ioctlNames().length, before);
    ctx.close();
    buf.free();
    assertClean(k);
  });

  test('a noiommu context refuses to map with NoRouteError (its MAP_DMA would answer ENOTTY)', () => {
    const k = FakeKernel.host({ iommu: 'noiommu' });
    const dev = openDevice(EDU, { kernel: k });
    assert.equal(dev.route, 'legacy');
    assert.equal((dev.context as unknown as { iommuType: string }).iommuType, 'noiommu');
    const buf = allocDmaBuffer(K, { kernel: k });
    const e = catchError(() => dev.context.map(buf), NoRouteError);
    assert.match(e.message, /this legacy context cannot map DMA: its device is in noiommu mode: no IOMMU translates the device's DMA/);
    catchError(() => dev.context.iovaRanges(), NoRouteError);
    assert.ok(!k.ioctlNames().includes('VFIO_IOMMU_MAP_DMA'));
    dev.close();
    buf.free();
    assertClean(k);
  });

  test('ENOSPC past vfio_iommu_type1.dma_entry_limit: a KernelError naming the parameter', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    k.dmaEntryLimit = 2;
    const dev = openDevice(EDU, { kernel: k });
    const bufs = [0, 1, 2].map(() => allocDmaBuffer(K, { kernel: k }));
    dev.context.map(bufs[0]!);
    dev.context.map(bufs[1]!);
    const e = catchError(() => dev.context.map(bufs[2]!), KernelError);
    assert.equal(e.errno, 'ENOSPC');
    assert.equal(e.step, 'VFIO_IOMMU_MAP_DMA');
    assert.match(e.message, /the type1 IOMMU holds at most vfio_iommu_type1\.dma_entry_limit mappings at once \(65535 by default\) \(VFIO_IOMMU_MAP_DMA answered ENOSPC\)/);
    assert.match(e.hint ?? '', /raise the module parameter vfio_iommu_type1\.dma_entry_limit/);
    // unmapping one makes room
    dev.context.unmap(dev.context.mappings()[0]!);
    dev.context.map(bufs[2]!);
    dev.close();
    for (const b of bufs) b.free();
    assertClean(k);
  });

});

describe('iommufd: the IOAS', () => {
  test('closing the last device keeps the IOAS and its mappings while the context is open', () => {
    const k = FakeKernel.host();
    const ctx = createContext('iommufd', { kernel: k });
    const dev = openDevice(EDU, { kernel: k, context: ctx });
    const buf = allocDmaBuffer(K, { kernel: k });
    const m = ctx.map(buf);
    dev.close();
    assert.deepEqual(ctx.mappings(), [m]);
    assert.equal(k.iommuMappings().length, 1);
    // without a device the IOAS has no reserved regions: the whole space
    assert.deepEqual(ctx.iovaRanges(), [{ start: 0n, last: (1n << 64n) - 1n }]);
    ctx.close();
    assert.equal(buf.mappings, 0);
    buf.free();
    assertClean(k);
  });

  test('a context may map before any device joins; the device then sees the mapping', () => {
    const k = FakeKernel.host();
    const ctx = createContext('iommufd', { kernel: k });
    const buf = allocDmaBuffer(K, { kernel: k });
    const m = ctx.map(buf);
    assert.equal(m.iova, 0x1000n);
    const dev = openDevice(EDU, { kernel: k, context: ctx });
    assert.deepEqual(ctx.mappings(), [m]);
    assert.deepEqual(ctx.iovaRanges(), INTEL_RANGES);
    dev.close();
    ctx.close();
    buf.free();
    assertClean(k);
  });

  test('an unaligned IOVA is refused even before a device joins (the empty IOAS reports byte alignment)', () => {
    const k = FakeKernel.host();
    const ctx = createContext('iommufd', { kernel: k });
    const buf = allocDmaBuffer(K, { kernel: k });
    try {
      catchError(() => ctx.map(buf, { iova: 0x1800n }), UsageError);
      openDevice(EDU, { kernel: k, context: ctx }).close();
    } finally {
      ctx.close();
      buf.free();
    }
  });

  test('the scratch page for IOMMU_IOAS_IOVA_RANGES failing to allocate is a KernelError, not a raw system error', () => {
    const k = FakeKernel.host();
    const dev = openDevice(EDU, { kernel: k });
    const buf = allocDmaBuffer(K, { kernel: k });
    try {
      k.failNext({ call: 'allocDma', errno: 'ENOMEM' });
      catchError(() => dev.context.map(buf), KernelError);
    } finally {
      dev.close();
      buf.free();
    }
  });
});

describe('every failure of map and unmap leaves nothing behind', () => {
  const STEPS = {
    iommufd: {
      map: [{ call: 'allocDma' as const }, { request: IOMMU.IOAS_IOVA_RANGES }, { request: IOMMU.IOAS_MAP }],
      unmap: [{ request: IOMMU.IOAS_UNMAP }],
    },
    legacy: {
      map: [{ request: VFIO.IOMMU_GET_INFO, path: '/dev/vfio/vfio' }, { request: VFIO.IOMMU_MAP_DMA, path: '/dev/vfio/vfio' }],
      unmap: [{ request: VFIO.IOMMU_UNMAP_DMA }],
    },
  };
  const ERRNOS = ['EPERM', 'ENOENT', 'EIO', 'ENOMEM', 'EFAULT', 'EBUSY', 'EEXIST', 'EINVAL', 'ENOSPC', 'ENOTTY', 'EOVERFLOW', 'EMSGSIZE'] as const;

  for (const r of DMA_ROUTES) {
    test(`${r.name}: every errno at every map step: the map fails, nothing is mapped, nothing leaks`, () => {
      for (const step of STEPS[r.name].map) {
        for (const errno of ERRNOS) {
          const k = r.host();
          const dev = openDevice(EDU, { kernel: k });
          const buf = allocDmaBuffer(K, { kernel: k });
          const where = `${JSON.stringify(step)} ${errno}`;
          k.failNext({ ...step, errno });
          let error: unknown;
          try {
            dev.context.map(buf);
          } catch (e) {
            error = e;
          }
          assert.equal(k.pendingFailures().length, 0, `${where}: not reached`);
          assert.ok(error !== undefined, `${where}: the map succeeded`);
          assert.ok(error instanceof VfioError, `${where}: ${String(error)}`);
          assert.equal(buf.mappings, 0, where);
          assert.deepEqual(dev.context.mappings(), [], where);
          assert.deepEqual(k.iommuMappings(), [], where);
          assert.equal(k.liveMappings(), 1, `${where}: only the DMA buffer is mapped (the scratch page was unmapped)`);
          // the context still works
          const m = dev.context.map(buf);
          dev.context.unmap(m);
          dev.close();
          buf.free();
          assertClean(k, where);
        }
      }
    });

    test(`${r.name}: every errno at the unmap step: the unmap fails, the mapping stays, close releases it`, () => {
      for (const step of STEPS[r.name].unmap) {
        for (const errno of ERRNOS) {
          const k = r.host();
          const dev = openDevice(EDU, { kernel: k });
          const buf = allocDmaBuffer(K, { kernel: k });
          const m = dev.context.map(buf);
          k.failNext({ ...step, errno });
          const e = catchError(() => dev.context.unmap(m), KernelError);
          assert.equal(e.errno, errno);
          assert.deepEqual(dev.context.mappings(), [m]);
          assert.equal(buf.mappings, 1);
          dev.close();
          assert.equal(buf.mappings, 0);
          buf.free();
          assertClean(k, `${r.name} ${errno}`);
        }
      }
    });
  }
});
