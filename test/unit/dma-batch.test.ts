// Batch maps (IommuContext.mapBatch / unmapBatch) on both routes, through the fake kernel's IOMMU: one
// addon call for the whole batch, all or nothing when the kernel refuses an entry, one ranged unmap per
// run of touching mappings, and the usage errors that name the entry.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { allocDmaBuffer, openDevice, type DmaBuffer } from '../../src/index.js';
import { ClosedError, KernelError, UsageError } from '../../src/errors.js';
import { EDU } from '../fake-kernel.js';
import { catchError } from '../helpers.js';
import { K, DMA_ROUTES, assertClean, mapCalls } from '../dma.js';

const unmapCalls = (names: string[]): number => names.filter((n) => n === 'IOMMU_IOAS_UNMAP' || n === 'VFIO_IOMMU_UNMAP_DMA').length;

for (const route of DMA_ROUTES) {
  describe(`mapBatch (${route.name})`, () => {
    test('maps every entry at its own IOVA through one batch call; unmapBatch takes the run out in one unmap', () => {
      const k = route.host();
      const dev = openDevice(EDU, { kernel: k });
      const buffers = Array.from({ length: 8 }, () => allocDmaBuffer(K, { kernel: k }));
      const batchCalls = k.calls.length;
      const mappings = dev.context.mapBatch(buffers);
      assert.equal(mappings.length, 8);
      assert.equal(mapCalls(k), 8, 'one ioctl per entry');
      const kernelSide = k.iommuMappings();
      for (const [i, m] of mappings.entries()) {
        assert.equal(m.buffer, buffers[i]);
        assert.equal(m.size, BigInt(K));
        assert.equal(buffers[i]!.mappings, 1, 'the context keeps each buffer alive');
        assert.ok(kernelSide.some((x) => x.iova === m.iova && x.address === buffers[i]!.address), `entry ${i} is mapped in the kernel`);
      }
      assert.deepEqual(dev.context.mappings(), mappings);
      assert.equal(new Set(mappings.map((m) => m.iova)).size, 8, 'distinct IOVAs');
      assert.ok(k.calls.length - batchCalls >= 8);
      const before = k.ioctlNames().length;
      dev.context.unmapBatch(mappings);
      const names = k.ioctlNames().slice(before);
      assert.equal(unmapCalls(names), 1, `touching mappings go in one ranged unmap: ${names.join(' ')}`);
      assert.deepEqual(k.iommuMappings(), []);
      assert.deepEqual(dev.context.mappings(), []);
      for (const b of buffers) assert.equal(b.mappings, 0);
      dev.close();
      for (const b of buffers) b.free();
      assertClean(k);
    });

    test('entries with their own options and IOVAs; defaults apply to the rest; mappings apart unmap one run each', () => {
      const k = route.host();
      using dev = openDevice(EDU, { kernel: k });
      const [a, b, c] = [allocDmaBuffer(K, { kernel: k }), allocDmaBuffer(2 * K, { kernel: k }), allocDmaBuffer(K, { kernel: k })];
      const mappings = dev.context.mapBatch([a, { buffer: b, iova: 0x100000n, writable: false }, c], { limit: 1n << 28n });
      assert.equal(mappings[1]!.iova, 0x100000n);
      assert.equal(mappings[1]!.writable, false);
      assert.equal(mappings[0]!.writable, true);
      for (const m of mappings) assert.ok(m.iova + m.size <= 1n << 28n, 'the default limit applies');
      const before = k.ioctlNames().length;
      dev.context.unmapBatch(mappings);
      assert.equal(unmapCalls(k.ioctlNames().slice(before)), 2, 'a and c touch, b lies apart');
      for (const buf of [a, b, c]) buf.free();
    });

    test('the kernel refusing entry 5 of 8: the first 5 are unmapped again, nothing stays mapped, the error names the entry', () => {
      const k = route.host();
      const dev = openDevice(EDU, { kernel: k });
      const buffers: DmaBuffer[] = Array.from({ length: 8 }, () => allocDmaBuffer(K, { kernel: k }));
      k.failNext({ request: route.map, errno: 'EFAULT', after: 5 });
      const e = catchError(() => dev.context.mapBatch(buffers), KernelError);
      assert.equal(e.errno, 'EFAULT');
      assert.equal(e.step, route.mapStep);
      assert.match(e.message, /entry 5 of the batch of 8/);
      assert.equal(mapCalls(k), 6, 'nothing issued after the refused entry');
      assert.deepEqual(k.iommuMappings(), [], 'nothing stays mapped in the kernel');
      assert.deepEqual(dev.context.mappings(), []);
      for (const b of buffers) assert.equal(b.mappings, 0, 'no buffer is held');
      // the IOVAs are free again: the same batch maps at the same place once the kernel agrees
      const again = dev.context.mapBatch(buffers);
      assert.equal(again.length, 8);
      dev.context.unmapBatch(again);
      dev.close();
      for (const b of buffers) b.free();
      assertClean(k);
    });

    test('a rollback the kernel refuses too: those mappings stay recorded (closing the context drops them) and the error says so', () => {
      const k = route.host();
      const dev = openDevice(EDU, { kernel: k });
      const buffers = Array.from({ length: 4 }, () => allocDmaBuffer(K, { kernel: k }));
      k.failNext({ request: route.map, errno: 'EFAULT', after: 2 });
      k.failNext({ request: route.unmap, errno: 'EIO' });
      const e = catchError(() => dev.context.mapBatch(buffers), KernelError);
      assert.match(e.message, /2 of the batch's mappings could not be taken out again/);
      assert.equal(dev.context.mappings().length, 2, 'what the kernel still maps is recorded');
      assert.equal(k.iommuMappings().length, 2);
      dev.close();
      for (const b of buffers) b.free();
      assertClean(k);
    });

    test('a bad entry is a UsageError naming it, before any system call; IOVAs reserved for earlier entries are free again', () => {
      const k = route.host();
      using dev = openDevice(EDU, { kernel: k });
      const good = allocDmaBuffer(K, { kernel: k });
      const freed = allocDmaBuffer(K, { kernel: k });
      freed.free();
      const cases: [unknown[], RegExp][] = [
        [[good, Buffer.alloc(K)], /batch entry 1: only buffers from allocDmaBuffer/],
        [[good, { buffer: good, readable: false, writable: false }], /batch entry 1: a DMA mapping the device may neither read nor write/],
        [[good, { buffer: good, iova: 0x1001n }], /batch entry 1: IOVA 0x1001 is not aligned/],
        [[{ buffer: good, iova: 0x200000n }, { buffer: good, iova: 0x200000n }], /batch entry 1: cannot map 4096 bytes at IOVA 0x200000: it overlaps/],
      ];
      const before = mapCalls(k);
      for (const [entries, message] of cases) {
        const e = catchError(() => dev.context.mapBatch(entries as DmaBuffer[]), UsageError);
        assert.match(e.message, message);
      }
      assert.match(catchError(() => dev.context.mapBatch([good, freed]), ClosedError).message, /batch entry 1: cannot map a freed DMA buffer/);
      assert.equal(mapCalls(k), before, 'nothing reached the kernel');
      assert.equal(good.mappings, 0);
      const m = dev.context.map(good, { iova: 0x200000n });
      assert.equal(m.iova, 0x200000n, 'the IOVA a refused batch reserved is free again');
      dev.context.unmap(m);
      assert.deepEqual(dev.context.mapBatch([]), [], 'an empty batch maps nothing');
      good.free();
    });

    test('unmapBatch refuses a mapping that is not this context\'s before unmapping any', () => {
      const k = route.host();
      using dev = openDevice(EDU, { kernel: k });
      const buffers = Array.from({ length: 3 }, () => allocDmaBuffer(K, { kernel: k }));
      const mappings = dev.context.mapBatch(buffers);
      dev.context.unmap(mappings[2]!);
      const e = catchError(() => dev.context.unmapBatch(mappings), UsageError);
      assert.match(e.message, /nothing of this context is mapped at IOVA/);
      assert.equal(dev.context.mappings().length, 2, 'the other two are still mapped');
      dev.context.unmapBatch(mappings.slice(0, 2));
      for (const b of buffers) b.free();
    });

    test('unmapBatch refuses a mapping listed twice before unmapping any', () => {
      const k = route.host();
      using dev = openDevice(EDU, { kernel: k });
      const buffers = Array.from({ length: 2 }, () => allocDmaBuffer(K, { kernel: k }));
      const mappings = dev.context.mapBatch(buffers);
      const before = k.ioctlNames().length;
      const e = catchError(() => dev.context.unmapBatch([mappings[1]!, mappings[0]!, mappings[1]!]), UsageError);
      assert.match(e.message, /listed twice/);
      assert.equal(unmapCalls(k.ioctlNames().slice(before)), 0);
      assert.equal(dev.context.mappings().length, 2);
      dev.context.unmapBatch(mappings);
      for (const b of buffers) b.free();
    });

    test('what unmapBatch took out is free again: the same IOVAs map, and the allocator hands out the lowest again', () => {
      const k = route.host();
      using dev = openDevice(EDU, { kernel: k });
      const buffers = Array.from({ length: 6 }, () => allocDmaBuffer(K, { kernel: k }));
      const first = dev.context.mapBatch(buffers);
      // take out the middle of the run (entries 1-3), then the rest, out of order
      dev.context.unmapBatch([first[3]!, first[1]!, first[2]!]);
      const again = dev.context.mapBatch(buffers.slice(1, 4).map((buffer, i) => ({ buffer, iova: first[i + 1]!.iova })));
      assert.deepEqual(again.map((m) => m.iova), first.slice(1, 4).map((m) => m.iova));
      dev.context.unmapBatch([...first.slice(4), first[0]!, ...again]);
      assert.deepEqual(dev.context.mappings(), []);
      const lowest = dev.context.mapBatch(buffers);
      assert.deepEqual(lowest.map((m) => m.iova), first.map((m) => m.iova), 'the allocator starts from the bottom again');
      dev.context.unmapBatch(lowest);
      for (const b of buffers) b.free();
    });
  });
}
