// The IOVA allocator on its own: first fit inside the ranges the IOMMU accepts, aligned, below a limit,
// never IOVA 0, with caller-chosen reservations; and a seeded property test against a brute-force model.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { IovaAllocator, type IovaRange } from '../../src/dma/iova.js';
import { prng } from '../helpers.js';

const K = 4096n;
const M = 1024n * 1024n;
/** intel-iommu's ranges as the test bed reports them (the MSI window 0xfee00000-0xfeefffff is reserved) */
const INTEL: IovaRange[] = [{ start: 0n, last: 0xfedfffffn }, { start: 0xfef00000n, last: 0x7fffffffffn }];

describe('IovaAllocator: allocate', () => {
  test('first fit from the bottom, but never IOVA 0', () => {
    const a = new IovaAllocator(INTEL);
    assert.equal(a.allocate(K, K), K);
    assert.equal(a.allocate(K, K), 2n * K);
    assert.equal(a.allocate(3n * K, K), 3n * K);
    assert.equal(a.allocate(K, K), 6n * K);
  });

  test('a range that does not start at 0 is used from its start', () => {
    const a = new IovaAllocator([{ start: 0x10000n, last: 0x1ffffn }]);
    assert.equal(a.allocate(K, K), 0x10000n);
    assert.equal(a.allocate(K, K), 0x11000n);
  });

  test('alignment: the IOVA is a multiple of it, and the gap below stays usable', () => {
    const a = new IovaAllocator(INTEL);
    assert.equal(a.allocate(K, K), K);
    assert.equal(a.allocate(2n * M, 2n * M), 2n * M, 'a huge-page buffer goes to the next 2 MiB boundary');
    assert.equal(a.allocate(K, K), 2n * K, 'the hole below it is still first fit');
    assert.equal(a.allocate(2n * M, 2n * M), 4n * M);
  });

  test('an unaligned range start is rounded up to the alignment', () => {
    const a = new IovaAllocator([{ start: 0x1234n, last: 0xffffffn }]);
    assert.equal(a.allocate(K, K), 0x2000n);
    assert.equal(a.allocate(K, 0x10000n), 0x10000n);
  });

  test('limit: the whole allocation stays below it (exclusive); null when nothing fits', () => {
    const a = new IovaAllocator(INTEL);
    const limit = 4n * K;
    assert.equal(a.allocate(K, K, limit), K);
    assert.equal(a.allocate(2n * K, K, limit), 2n * K, 'ends exactly at the limit');
    assert.equal(a.allocate(K, K, limit), null);
    assert.equal(a.allocate(K, K), 4n * K, 'without the limit it fits above');
    // edu's 28-bit DMA mask
    const b = new IovaAllocator(INTEL);
    assert.equal(b.allocate(1n << 28n, K, 1n << 28n), null, 'IOVA 0 is never used, so 256 MiB cannot fit below 2^28');
    assert.equal(b.allocate((1n << 28n) - K, K, 1n << 28n), K);
  });

  test('a request skips a range too small for it and uses the next one', () => {
    const a = new IovaAllocator([{ start: 0n, last: 0x2fffn }, { start: 0x100000n, last: 0x1fffffn }]);
    assert.equal(a.allocate(4n * K, K), 0x100000n);
    assert.equal(a.allocate(K, K), K, 'the first range still serves small requests');
    assert.equal(a.allocate(2n * K, K), 0x104000n, 'only one page is left in the first range');
  });

  test('the MSI window is never handed out', () => {
    const a = new IovaAllocator(INTEL);
    assert.ok(a.reserve(K, 0xfedfffffn - K + 1n) === null, 'fill the low range');
    assert.equal(a.allocate(K, K), 0xfef00000n);
  });

  test('no ranges: nothing can be allocated', () => {
    assert.equal(new IovaAllocator([]).allocate(K, K), null);
  });

  test('the end of the 64-bit space', () => {
    const top = (1n << 64n) - 1n;
    const a = new IovaAllocator([{ start: top - 4n * K + 1n, last: top }]);
    assert.equal(a.allocate(4n * K, K), top - 4n * K + 1n);
    assert.equal(a.allocate(K, K), null);
  });
});

describe('IovaAllocator: reserve', () => {
  test('inside the ranges: reserved, and allocations go around it', () => {
    const a = new IovaAllocator(INTEL);
    assert.equal(a.reserve(K, K), null);
    assert.equal(a.reserve(3n * K, K), null);
    assert.equal(a.allocate(K, K), 2n * K);
    assert.equal(a.allocate(K, K), 4n * K);
  });

  test('IOVA 0 may be chosen explicitly (only allocate avoids it)', () => {
    const a = new IovaAllocator(INTEL);
    assert.equal(a.reserve(0n, K), null);
    assert.equal(a.allocate(K, K), K);
  });

  test('outside the ranges, or across a hole between them: refused with the reason', () => {
    const a = new IovaAllocator(INTEL);
    const why = 'outside the IOVA ranges the IOMMU accepts';
    assert.equal(a.reserve(0xfee00000n, K), why, 'in the MSI window');
    assert.equal(a.reserve(0xfedff000n, 2n * K), why, 'straddles the end of the first range');
    assert.equal(a.reserve(0x8000000000n, K), why, 'past the aperture');
    assert.equal(a.reserve(0x7ffffff000n, 2n * K), why, 'runs past the aperture');
    assert.equal(a.reserve(0xfedff000n, K), null, 'the last page of the first range');
    assert.equal(a.reserve(0xfef00000n, K), null, 'the first page of the second');
    assert.equal(a.reserve(0x7ffffff000n, K), null, 'the last page of the aperture');
  });

  test('overlapping an existing reservation or allocation: refused, naming it', () => {
    const a = new IovaAllocator(INTEL);
    assert.equal(a.reserve(0x100000n, 0x4000n), null);
    assert.equal(a.reserve(0x100000n, K), 'it overlaps the mapping at 0x100000 (+0x4000)');
    assert.equal(a.reserve(0x103000n, 2n * K), 'it overlaps the mapping at 0x100000 (+0x4000)');
    assert.equal(a.reserve(0xff000n, 2n * K), 'it overlaps the mapping at 0x100000 (+0x4000)');
    assert.equal(a.reserve(0xf0000n, 0x20000n), 'it overlaps the mapping at 0x100000 (+0x4000)', 'covers it');
    assert.equal(a.reserve(0xff000n, K), null, 'adjacent below');
    assert.equal(a.reserve(0x104000n, K), null, 'adjacent above');
    const iova = a.allocate(K, K)!;
    assert.match(a.reserve(iova, K) ?? '', new RegExp(`overlaps the mapping at 0x${iova.toString(16)} \\(\\+0x1000\\)`));
  });

  test('a refused reservation reserves nothing', () => {
    const a = new IovaAllocator(INTEL);
    assert.equal(a.reserve(0x100000n, K), null);
    assert.notEqual(a.reserve(0xfff00n + 0x100n, 2n * K), null);
    assert.equal(a.reserve(0x101000n, K), null, 'the part that did not overlap is still free');
  });
});

describe('IovaAllocator: free and reuse', () => {
  test('a freed IOVA is reused first fit; freeing an unknown IOVA does nothing', () => {
    const a = new IovaAllocator(INTEL);
    const x = a.allocate(K, K)!;
    const y = a.allocate(K, K)!;
    const z = a.allocate(K, K)!;
    a.free(y);
    a.free(0xdead000n);
    assert.equal(a.allocate(K, K), y);
    a.free(x);
    assert.equal(a.reserve(x, K), null, 'a freed reservation can be reserved again');
    assert.equal(a.allocate(2n * K, K), z + K, 'a hole too small for the request is skipped');
  });

  test('clear() forgets everything (the kernel dropped every mapping)', () => {
    const a = new IovaAllocator(INTEL);
    a.allocate(K, K);
    a.reserve(0x200000n, K);
    a.clear();
    assert.equal(a.allocate(K, K), K);
    assert.equal(a.reserve(0x200000n, K), null);
  });

  test('the ranges may change under the reservations (a device with reserved regions joins)', () => {
    const a = new IovaAllocator([{ start: 0n, last: (1n << 64n) - 1n }]);
    assert.equal(a.allocate(K, K), K);
    a.ranges = INTEL;
    assert.equal(a.allocate(K, K), 2n * K);
    assert.equal(a.inRanges(0xfee00000n, K), false);
    assert.equal(a.inRanges(0xfef00000n, K), true);
  });
});

/** A brute-force model of first fit: every aligned candidate from the bottom, in range order. */
class Model {
  readonly used: { iova: bigint; size: bigint }[] = [];
  constructor(readonly ranges: IovaRange[]) {}
  free(iova: bigint): boolean {
    const i = this.used.findIndex((u) => u.iova === iova);
    if (i >= 0) this.used.splice(i, 1);
    return i >= 0;
  }
  clashes(iova: bigint, size: bigint): boolean {
    return this.used.some((u) => iova < u.iova + u.size && u.iova < iova + size);
  }
  allocate(size: bigint, align: bigint, limit?: bigint): bigint | null {
    for (const r of this.ranges) {
      for (let c = ((r.start === 0n ? align : r.start) + align - 1n) / align * align; c + size - 1n <= r.last; c += align) {
        if (limit !== undefined && c + size > limit) break;
        if (!this.clashes(c, size)) {
          this.used.push({ iova: c, size });
          return c;
        }
      }
    }
    return null;
  }
}

describe('IovaAllocator: property test (seeded)', () => {
  for (const seed of [1, 2, 3, 42, 1234]) {
    test(`seed ${seed}: allocations never overlap, stay in range, aligned, below the limit, never 0, and equal brute-force first fit`, () => {
      const rand = prng(seed);
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
      // small ranges with holes, in pages, so the brute force stays cheap and the space fills up
      const ranges: IovaRange[] = [{ start: 0n, last: 63n * K - 1n }, { start: 80n * K, last: 200n * K - 1n }, { start: 230n * K + 0x800n, last: 300n * K - 1n }];
      const a = new IovaAllocator(ranges);
      const model = new Model(ranges);
      const live: { iova: bigint; size: bigint }[] = [];
      for (let step = 0; step < 600; step++) {
        const r = rand();
        if (r < 0.55) {
          const size = BigInt(1 + Math.floor(rand() * 8)) * K;
          const align = pick([K, 2n * K, 4n * K, 16n * K]);
          const limit = rand() < 0.3 ? BigInt(Math.floor(rand() * 320)) * K : undefined;
          const got = a.allocate(size, align, limit);
          const want = model.allocate(size, align, limit);
          assert.equal(got, want, `step ${step}: allocate(${size}, ${align}, ${limit})`);
          if (got === null) continue;
          assert.notEqual(got, 0n);
          assert.equal(got % align, 0n);
          if (limit !== undefined) assert.ok(got + size <= limit);
          assert.ok(a.inRanges(got, size));
          assert.ok(!live.some((u) => got < u.iova + u.size && u.iova < got + size), `step ${step}: ${got} overlaps`);
          live.push({ iova: got, size });
        } else if (r < 0.75) {
          const iova = BigInt(Math.floor(rand() * 310)) * K;
          const size = BigInt(1 + Math.floor(rand() * 4)) * K;
          const why = a.reserve(iova, size);
          const ok = ranges.some((x) => iova >= x.start && iova + size - 1n <= x.last) && !model.clashes(iova, size);
          assert.equal(why === null, ok, `step ${step}: reserve(${iova}, ${size}): ${why}`);
          const named = why && /overlaps the mapping at 0x([0-9a-f]+) \(\+0x([0-9a-f]+)\)/.exec(why);
          if (named) {
            // the mapping the message names is a real one, and it does overlap
            const [at, len] = [BigInt(`0x${named[1]}`), BigInt(`0x${named[2]}`)];
            assert.ok(model.used.some((u) => u.iova === at && u.size === len), `step ${step}: ${why} names no mapping`);
            assert.ok(iova < at + len && at < iova + size, `step ${step}: ${why} does not overlap`);
          }
          if (ok) {
            model.used.push({ iova, size });
            live.push({ iova, size });
          }
        } else if (live.length > 0) {
          const i = Math.floor(rand() * live.length);
          const victim = live.splice(i, 1)[0]!;
          a.free(victim.iova);
          assert.ok(model.free(victim.iova));
        }
      }
    });
  }
});
