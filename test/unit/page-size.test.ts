// The page size is the kernel's, not 4096: arm64 kernels with 64 KiB pages (RHEL 8's, RHEL 9's
// kernel-64k) round DMA buffers, align IOVAs and size huge pages from it. And SMMUv3 reserves its MSI
// window inside a 28-bit DMA range, which the allocator steps around. On the fake kernel's arm64 host
// (iommu: 'smmuv3'), both routes.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { allocDmaBuffer, createContext, openDevice, PAGE_SIZE } from '../../src/index.js';
import { UsageError } from '../../src/errors.js';
import { hugePageSizeFor, systemPageSize } from '../../src/sys/page-size.js';
import { EDU, FakeKernel, type HostOptions } from '../fake-kernel.js';
import { catchError } from '../helpers.js';

const K64 = 65536;
const ROUTES = [
  { name: 'iommufd', host: (o: HostOptions) => FakeKernel.host({ iommu: 'smmuv3', ...o }) },
  { name: 'legacy', host: (o: HostOptions) => FakeKernel.host({ kernel: 'stock', iommu: 'smmuv3', ...o }) },
] as const;
/** arm-smmu-v3's software MSI window (MSI_IOVA_BASE, MSI_IOVA_LENGTH) */
const MSI_WINDOW = { start: 0x8000000n, end: 0x8100000n };

describe('the page size', () => {
  test('this host\'s, from the auxiliary vector, is what getconf says; PAGE_SIZE is it', () => {
    const getconf = Number(execFileSync('getconf', ['PAGESIZE'], { encoding: 'utf8' }).trim());
    assert.equal(systemPageSize(), getconf);
    assert.equal(PAGE_SIZE, getconf);
  });

  test('the huge page that goes with it is the PMD block: 2 MiB, 32 MiB, 512 MiB', () => {
    assert.equal(hugePageSizeFor(4096), 2 * 1024 * 1024);
    assert.equal(hugePageSizeFor(16384), 32 * 1024 * 1024);
    assert.equal(hugePageSizeFor(65536), 512 * 1024 * 1024);
    assert.equal(new FakeKernel({ iommu: 'smmuv3', pageSize: K64 }).hugePageSize, 512 * 1024 * 1024);
  });
});

for (const r of ROUTES) {
  describe(`64 KiB pages, SMMUv3, ${r.name} route`, () => {
    test('allocDmaBuffer(4096) is one 64 KiB page, and it maps at a 64 KiB-aligned IOVA', () => {
      const k = r.host({ pageSize: K64 });
      using dev = openDevice(EDU, { kernel: k });
      assert.equal(dev.route, r.name);
      const b = allocDmaBuffer(4096, { kernel: k });
      assert.equal(b.size, K64);
      assert.equal(b.pageSize, K64);
      assert.equal(b.address % BigInt(K64), 0n);
      const m = dev.context.map(b);
      assert.equal(m.iova % BigInt(K64), 0n, `IOVA 0x${m.iova.toString(16)}`);
      assert.equal(m.size, BigInt(K64));
      assert.deepEqual(k.iommuMappings().map((x) => x.length), [BigInt(K64)], 'the kernel mapped the whole page');
      dev.context.unmap(m);
      b.free();
    });

    test('an IOVA 4 KiB- but not 64 KiB-aligned is refused, naming the IOMMU\'s page size; nothing reaches the kernel', () => {
      const k = r.host({ pageSize: K64 });
      using dev = openDevice(EDU, { kernel: k });
      using b = allocDmaBuffer(4096, { kernel: k });
      const e = catchError(() => dev.context.map(b, { iova: 0x11000n }), UsageError);
      assert.match(e.message, /IOVA 0x11000 is not aligned to the IOMMU's 65536-byte pages/);
      assert.deepEqual(k.iommuMappings(), []);
      const m = dev.context.map(b, { iova: 0x10000n });
      assert.equal(m.iova, 0x10000n, 'a 64 KiB-aligned one maps');
      dev.context.unmap(m);
    });
  });

  if (r.name === 'iommufd') {
    test('64 KiB pages, an IOAS with no device yet (which answers byte alignment): an IOVA still needs a whole page', () => {
      const k = r.host({ pageSize: K64 });
      using ctx = createContext('iommufd', { kernel: k });
      using b = allocDmaBuffer(4096, { kernel: k });
      const e = catchError(() => ctx.map(b, { iova: 0x11000n }), UsageError);
      assert.match(e.message, /IOVA 0x11000 is not aligned to the IOMMU's 65536-byte pages/);
    });
  }

  describe(`SMMUv3's MSI window, ${r.name} route`, () => {
    test('an IOVA inside it is refused; filling edu\'s 28-bit range steps around it', () => {
      const k = r.host({});
      using dev = openDevice(EDU, { kernel: k });
      using one = allocDmaBuffer(4096, { kernel: k });
      const e = catchError(() => dev.context.map(one, { iova: MSI_WINDOW.start }), UsageError);
      assert.match(e.message, /cannot map 4096 bytes at IOVA 0x8000000/);
      // 17 buffers of 8 MiB below 2^28: 136 MiB, more than lies below the window
      const buffers = Array.from({ length: 17 }, () => allocDmaBuffer(8 << 20, { kernel: k }));
      try {
        const maps = buffers.map((b) => dev.context.map(b, { limit: 1n << 28n }));
        for (const m of maps) {
          assert.ok(m.iova + m.size <= MSI_WINDOW.start || m.iova >= MSI_WINDOW.end, `0x${m.iova.toString(16)}+0x${m.size.toString(16)} misses the MSI window`);
          assert.ok(m.iova + m.size <= 1n << 28n);
        }
        assert.ok(maps.some((m) => m.iova >= MSI_WINDOW.end), 'some mapping lies above the window');
        for (const m of maps) dev.context.unmap(m);
      } finally {
        for (const b of buffers) b.free();
      }
    });
  });
}
