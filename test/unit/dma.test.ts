// DMA buffers and IOMMU mappings on both routes, through the fake kernel's IOMMU: sizes, IOVAs chosen
// or allocated, the ranges, the errors a person can act on, and who keeps which mapping alive.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { allocDmaBuffer, createContext, openDevice, type DmaBuffer, type IommuContext, type VfioDevice } from '../../src/index.js';
import { ClosedError, KernelError, UsageError } from '../../src/errors.js';
import { IOMMU } from '../../src/uapi/iommufd.js';
import { VFIO } from '../../src/uapi/vfio.js';
import { EDU, FakeKernel, TESTDEV } from '../fake-kernel.js';
import { catchError } from '../helpers.js';
import { K, DMA_ROUTES, INTEL_RANGES, RANGES_HINT, assertClean, mapCalls } from '../dma.js';

describe('allocDmaBuffer', () => {
  test('sizes are rounded up to whole pages; the address is page-aligned and the memory usable', () => {
    const k = FakeKernel.host();
    for (const [size, want] of [[1, K], [K, K], [K + 1, 2 * K], [5000, 2 * K], [3 * K, 3 * K]] as const) {
      const b = allocDmaBuffer(size, { kernel: k });
      assert.equal(b.size, want, `size ${size}`);
      assert.equal(b.arrayBuffer.byteLength, want);
      assert.equal(b.address % BigInt(K), 0n);
      assert.equal(b.address, k.addressOf(b.arrayBuffer));
      assert.equal(b.pageSize, K);
      assert.equal(b.hugePages, false);
      b.bytes.fill(0xa5);
      assert.equal(b.bytes[want - 1], 0xa5);
      b.free();
    }
    assert.equal(k.liveMappings(), 0);
  });

  test('huge pages: 2 MiB rounded and aligned; none reserved -> KernelError with a hint', () => {
    const k = FakeKernel.host();
    const b = allocDmaBuffer(3 * 1024 * 1024, { kernel: k, hugePages: true });
    assert.equal(b.size, 4 * 1024 * 1024);
    assert.equal(b.address % (2n * 1024n * 1024n), 0n);
    assert.equal(b.pageSize, 2 * 1024 * 1024);
    b.free();
    k.hugePagesFree = 0;
    const e = catchError(() => allocDmaBuffer(1, { kernel: k, hugePages: true }), KernelError);
    assert.equal(e.errno, 'ENOMEM');
    assert.match(e.message, /cannot allocate a 2097152-byte DMA buffer of huge pages: ENOMEM/);
    assert.match(e.hint ?? '', /nr_hugepages/);
    assert.equal(allocDmaBuffer(1, { kernel: k }).size, K, 'ordinary pages still work');
  });

  test('2 MiB or more without huge pages: 2 MiB-aligned memory (THP) and a 2 MiB-aligned IOVA on both routes; smaller buffers keep 4 KiB', () => {
    for (const kernel of ['iommufd', 'stock'] as const) {
      const k = FakeKernel.host({ kernel });
      using dev = openDevice(EDU, { kernel: k });
      const small = allocDmaBuffer(K, { kernel: k });
      const big = allocDmaBuffer(2 * 1024 * 1024 + K, { kernel: k });
      assert.equal(big.address % (2n << 20n), 0n, 'the addon aligns it for THP');
      assert.equal(big.pageSize, K, 'still ordinary pages to the library');
      const s = dev.context.map(small);
      const b = dev.context.map(big);
      assert.equal(s.iova % BigInt(K), 0n);
      assert.notEqual(s.iova % (2n << 20n), 0n, 'a small buffer is not pushed to a 2 MiB boundary');
      assert.equal(b.iova % (2n << 20n), 0n, `${kernel}: the IOMMU can use 2 MiB pages for it`);
      dev.context.unmap(s);
      dev.context.unmap(b);
      small.free();
      big.free();
    }
  });

  test('an ENOMEM for ordinary pages is a KernelError without the huge-page hint', () => {
    const k = FakeKernel.host().failNext({ call: 'allocDma', errno: 'ENOMEM' });
    const e = catchError(() => allocDmaBuffer(K, { kernel: k }), KernelError);
    assert.equal(e.hint, undefined);
    assert.equal(k.liveMappings(), 0);
  });

  test('a size that is not a positive integer is a UsageError', () => {
    const k = FakeKernel.host();
    for (const size of [0, -1, 1.5, NaN, Infinity]) catchError(() => allocDmaBuffer(size, { kernel: k }), UsageError);
    assert.equal(k.calls.filter((c) => c.call === 'allocDma').length, 0);
  });

  test('free(): views go empty, the buffer is closed, free is idempotent; using frees it too', () => {
    const k = FakeKernel.host();
    const b = allocDmaBuffer(K, { kernel: k });
    const view = b.bytes;
    view[0] = 1;
    b.free();
    assert.equal(view.length, 0, 'the view of the unmapped memory is empty');
    assert.equal(b.freed, true);
    assert.throws(() => b.arrayBuffer, ClosedError);
    assert.throws(() => b.bytes, ClosedError);
    b.free();
    {
      using c = allocDmaBuffer(K, { kernel: k });
      assert.equal(c.freed, false);
    }
    assert.equal(k.liveMappings(), 0);
  });
});

for (const r of DMA_ROUTES) {
  describe(`DMA mappings (${r.name})`, () => {
    function setup(options = {}): { k: FakeKernel; dev: VfioDevice; ctx: IommuContext; buf: (size?: number) => DmaBuffer; done: () => void } {
      const k = r.host(options);
      const dev = openDevice(EDU, { kernel: k, route: r.name });
      const bufs: DmaBuffer[] = [];
      return {
        k,
        dev,
        ctx: dev.context,
        buf: (size = K) => {
          const b = allocDmaBuffer(size, { kernel: k });
          bufs.push(b);
          return b;
        },
        done: () => {
          dev.close();
          for (const b of bufs) b.free();
          assertClean(k, r.name);
        },
      };
    }

    test('iovaRanges(): the IOMMU\'s ranges without the MSI window (a copy each time)', () => {
      const { ctx, done } = setup();
      const ranges = ctx.iovaRanges();
      assert.deepEqual(ranges, INTEL_RANGES);
      ranges[0]!.start = 99n;
      assert.deepEqual(ctx.iovaRanges(), INTEL_RANGES);
      done();
    });

    test('map at a chosen IOVA: the kernel maps the buffer\'s pages there; mappings() lists it', () => {
      const { k, ctx, buf, done } = setup();
      const b = buf(2 * K);
      const m = ctx.map(b, { iova: 0x100000n });
      assert.equal(m.iova, 0x100000n);
      assert.equal(m.size, BigInt(2 * K));
      assert.equal(m.buffer, b);
      assert.deepEqual([m.readable, m.writable], [true, true]);
      assert.equal(b.mappings, 1);
      assert.deepEqual(k.iommuMappings().map((x) => [x.iova, x.length, x.address]), [[0x100000n, BigInt(2 * K), b.address]]);
      assert.deepEqual(ctx.mappings(), [m]);
      done();
    });

    test('map without an IOVA: the lowest free one (never 0), below the limit, listed in IOVA order', () => {
      const { k, ctx, buf, done } = setup();
      const high = ctx.map(buf(), { iova: 0x200000n });
      const a = ctx.map(buf(), { limit: 1n << 28n });
      const b = ctx.map(buf(2 * K), { limit: 1n << 28n });
      assert.equal(a.iova, 0x1000n);
      assert.equal(b.iova, 0x2000n);
      assert.deepEqual(ctx.mappings().map((x) => x.iova), [0x1000n, 0x2000n, 0x200000n]);
      // a limit nothing fits below
      const e = catchError(() => ctx.map(buf(), { limit: 0x4000n }), UsageError);
      assert.match(e.message, /no free IOVA range of 4096 bytes below 0x4000/);
      assert.equal(e.hint, RANGES_HINT);
      assert.equal(k.iommuMappings().length, 3);
      assert.ok(high);
      done();
    });

    test('read-only and write-only mappings reach the kernel as such', () => {
      const { ctx, buf, done } = setup();
      const ro = ctx.map(buf(), { writable: false });
      const wo = ctx.map(buf(), { readable: false });
      assert.deepEqual([ro.readable, ro.writable, wo.readable, wo.writable], [true, false, false, true]);
      done();
    });

    test('unmap by mapping or by IOVA; a second unmap is a UsageError', () => {
      const { k, ctx, buf, done } = setup();
      const b = buf();
      const m1 = ctx.map(b, { iova: 0x10000n });
      const m2 = ctx.map(buf(), { iova: 0x20000n });
      ctx.unmap(m1);
      assert.equal(b.mappings, 0);
      ctx.unmap(0x20000n);
      assert.deepEqual(ctx.mappings(), []);
      assert.deepEqual(k.iommuMappings(), []);
      for (const target of [m1, m2, 0x10000n, 0x30000n]) {
        const e = catchError(() => ctx.unmap(target), UsageError);
        assert.match(e.message, /nothing is mapped at IOVA 0x[0-9a-f]+ in this context \(unmapped already\?\)/);
      }
      // a mapping object of another map at the same IOVA is not that mapping
      const m3 = ctx.map(b, { iova: 0x10000n });
      catchError(() => ctx.unmap(m1), UsageError);
      ctx.unmap(m3);
      done();
    });

    test('an IOVA the IOMMU refuses is a UsageError before any map ioctl: unaligned, outside the ranges, overlapping', () => {
      const { k, ctx, buf, done } = setup();
      ctx.map(buf(4 * K), { iova: 0x100000n });
      const before = mapCalls(k);
      const b = buf();
      const unaligned = catchError(() => ctx.map(b, { iova: 0x100800n + 0x10000n }), UsageError);
      assert.match(unaligned.message, /IOVA 0x110800 is not aligned to the IOMMU's 4096-byte pages/);
      for (const iova of [0xfee00000n, 0xfeeff000n, 0x8000000000n]) {
        const e = catchError(() => ctx.map(b, { iova }), UsageError);
        assert.match(e.message, new RegExp(`cannot map 4096 bytes at IOVA 0x${iova.toString(16)}: outside the IOVA ranges the IOMMU accepts`));
        assert.equal(e.hint, RANGES_HINT);
      }
      const straddle = catchError(() => ctx.map(buf(2 * K), { iova: 0xfedff000n }), UsageError);
      assert.match(straddle.message, /outside the IOVA ranges/);
      const overlap = catchError(() => ctx.map(b, { iova: 0x103000n }), UsageError);
      assert.match(overlap.message, /cannot map 4096 bytes at IOVA 0x103000: it overlaps the mapping at 0x100000 \(\+0x4000\)/);
      assert.equal(overlap.hint, RANGES_HINT);
      assert.equal(overlap.exitCode, 2);
      assert.equal(mapCalls(k), before, 'refused before the kernel was asked');
      assert.equal(b.mappings, 0);
      assert.equal(ctx.mappings().length, 1);
      // and the refused IOVAs were not left reserved
      ctx.map(b, { iova: 0x104000n });
      done();
    });

    test('freeing a mapped buffer is a UsageError; once unmapped it frees', () => {
      const { k, ctx, buf, done } = setup();
      const b = buf();
      const m = ctx.map(b);
      const e = catchError(() => b.free(), UsageError);
      assert.match(e.message, /the DMA buffer at 0x[0-9a-f]+ is still mapped for DMA in 1 context\(s\): unmap it first/);
      assert.equal(b.freed, false);
      assert.equal(k.liveMappings(), 1);
      ctx.unmap(m);
      b.free();
      done();
    });

    test('mapping a freed buffer is a ClosedError; a Buffer that is not a DMA buffer is a UsageError', () => {
      const { k, ctx, buf, done } = setup();
      const b = buf();
      b.free();
      catchError(() => ctx.map(b), ClosedError);
      catchError(() => ctx.map(Buffer.alloc(K) as unknown as DmaBuffer), UsageError);
      assert.equal(mapCalls(k), 0);
      done();
    });

    test('ENOMEM (RLIMIT_MEMLOCK): a KernelError naming the limit and how to raise it; the IOVA is free again', () => {
      const { k, ctx, buf, done } = setup();
      k.ipcLock = false;
      k.setMemlock(64 * 1024);
      const small = ctx.map(buf(16 * K), { iova: 0x100000n });
      const big = buf(32 * K);
      const e = catchError(() => ctx.map(big, { iova: 0x200000n }), KernelError);
      assert.equal(e.errno, 'ENOMEM');
      assert.equal(e.step, r.mapStep);
      assert.equal(e.route, r.name);
      assert.equal(e.exitCode, 7);
      assert.match(e.message, /cannot pin 131072 bytes at IOVA 0x200000 for DMA: the locked-memory limit \(RLIMIT_MEMLOCK, now soft 65536, hard 65536 bytes\) is too low/);
      assert.match(e.message, new RegExp(`\\(${r.mapStep} answered ENOMEM\\)`));
      assert.match(e.hint ?? '', /ulimit -l/);
      assert.match(e.hint ?? '', /LimitMEMLOCK=/);
      assert.match(e.hint ?? '', /CAP_IPC_LOCK/);
      assert.equal(big.mappings, 0);
      assert.deepEqual(ctx.mappings(), [small]);
      k.setMemlock('unlimited');
      assert.equal(ctx.map(big, { iova: 0x200000n }).iova, 0x200000n, 'the refused IOVA was released');
      done();
    });

    test('ENOMEM when /proc/self/limits cannot be read: the message still names RLIMIT_MEMLOCK', () => {
      const { k, ctx, buf, done } = setup();
      k.failNext({ request: r.map, errno: 'ENOMEM' }).failNext({ call: 'readText', path: '/proc/self/limits', errno: 'EACCES' });
      const e = catchError(() => ctx.map(buf()), KernelError);
      assert.match(e.message, /the locked-memory limit \(RLIMIT_MEMLOCK\) is too low/);
      done();
    });

    test('any other refusal of the map ioctl is a KernelError naming the step and errno', () => {
      const { k, ctx, buf, done } = setup();
      k.failNext({ request: r.map, errno: 'EFAULT' });
      const e = catchError(() => ctx.map(buf(), { iova: 0x1000n }), KernelError);
      assert.match(e.message, new RegExp(`the kernel refused to map 4096 bytes at IOVA 0x1000: ${r.mapStep} answered EFAULT`));
      assert.deepEqual(e.attempts.map((a) => [a.step, a.errno]), [[r.mapStep, 'EFAULT']]);
      assert.deepEqual(ctx.mappings(), []);
      done();
    });

    test('a refused unmap is a KernelError; the mapping stays (in the kernel and in the books) and can be unmapped again', () => {
      const { k, ctx, buf, done } = setup();
      const m = ctx.map(buf());
      k.failNext({ request: r.name === 'iommufd' ? IOMMU.IOAS_UNMAP : VFIO.IOMMU_UNMAP_DMA, errno: 'EIO' });
      const e = catchError(() => ctx.unmap(m), KernelError);
      assert.match(e.message, new RegExp(`the kernel refused to unmap IOVA 0x1000: ${r.unmapStep} answered EIO`));
      assert.deepEqual(ctx.mappings(), [m]);
      assert.equal(k.iommuMappings().length, 1);
      ctx.unmap(m);
      done();
    });

    test('closing the context releases the buffers: mappings back to 0, nothing left in the kernel', () => {
      const k = r.host();
      const ctx = createContext(r.name, { kernel: k });
      openDevice(EDU, { kernel: k, context: ctx });
      const a = allocDmaBuffer(K, { kernel: k });
      const b = allocDmaBuffer(2 * K, { kernel: k });
      ctx.map(a);
      ctx.map(b);
      ctx.map(a, { iova: 0x800000n });
      assert.equal(a.mappings, 2);
      ctx.close();
      assert.equal(a.mappings, 0);
      assert.equal(b.mappings, 0);
      assert.deepEqual(ctx.mappings(), []);
      catchError(() => ctx.map(a), ClosedError);
      catchError(() => ctx.unmap(0x1000n), ClosedError);
      catchError(() => ctx.iovaRanges(), ClosedError);
      assert.deepEqual(k.iommuMappings(), []);
      a.free();
      b.free();
      assertClean(k);
    });

    test('a device opened on its own owns its context: closing the device releases the mappings', () => {
      const { k, dev, ctx, buf } = setup();
      const b = buf();
      ctx.map(b);
      dev.close();
      assert.equal(ctx.closed, true);
      assert.equal(b.mappings, 0);
      b.free();
      assertClean(k);
    });

    test('closing one device of a shared context keeps the mappings made for the other', () => {
      const k = r.host({ devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 4 }] });
      const ctx = createContext(r.name, { kernel: k });
      const a = openDevice(EDU, { kernel: k, context: ctx });
      const b = openDevice(TESTDEV, { kernel: k, context: ctx });
      const buf = allocDmaBuffer(K, { kernel: k });
      const m = ctx.map(buf, { iova: 0x40000n });
      a.close();
      assert.deepEqual(ctx.mappings(), [m]);
      assert.equal(buf.mappings, 1);
      assert.deepEqual(k.iommuMappings().map((x) => x.iova), [0x40000n], 'the kernel still maps it for the other device');
      ctx.unmap(m);
      b.close();
      ctx.close();
      buf.free();
      assertClean(k);
    });
  });
}
