// Issue 17 on a real arm64 kernel with 64 KiB pages (iommufd-6.12-64k-smmuv3): a DMA buffer asked
// for 4096 bytes is one 64 KiB page, it maps at a 64 KiB-aligned IOVA on each route, edu's DMA goes
// through it, and an IOVA aligned to 4 KiB but not to 64 KiB is refused with a message that says so.
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { allocDmaBuffer, openDevice, PAGE_SIZE, PCI_COMMAND, UsageError } from '../../src/index.js';
import { CASE, EDU, EDU_BUFFER, eduDma } from './helpers.js';

const K64 = 65536;
const skip = CASE !== 'iommufd-6.12-64k-smmuv3' && 'the 64 KiB-page case only';

for (const route of ['iommufd', 'legacy'] as const) {
  test(`64 KiB pages (${route}): allocDmaBuffer(4096) is one 64 KiB page, maps 64 KiB-aligned, edu's DMA works; a 4 KiB-aligned IOVA is refused`, { skip }, async () => {
    assert.equal(Number(execFileSync('getconf', ['PAGESIZE'], { encoding: 'utf8' })), K64, 'the kernel has 64 KiB pages');
    assert.equal(PAGE_SIZE, K64);
    using dev = openDevice(EDU, { route });
    assert.ok(dev.context.iovaRanges().length > 0);
    using source = allocDmaBuffer(4096);
    using target = allocDmaBuffer(4096);
    assert.deepEqual([source.size, source.pageSize, Number(source.address % BigInt(K64))], [K64, K64, 0]);

    const refused = (() => {
      try {
        dev.context.map(target, { iova: 0x11000n });
      } catch (e) {
        return e;
      }
      return null;
    })();
    assert.ok(refused instanceof UsageError, `refused with a UsageError (${String(refused)})`);
    assert.match(refused.message, /IOVA 0x11000 is not aligned to the IOMMU's 65536-byte pages/);
    assert.equal(dev.context.mappings().length, 0);

    const src = dev.context.map(source, { limit: 1n << 28n });
    const dst = dev.context.map(target, { iova: 0x20000n });
    assert.equal(src.iova % BigInt(K64), 0n, `IOVA 0x${src.iova.toString(16)}`);
    assert.equal(src.size, BigInt(K64));
    dev.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
    using bar = dev.mapRegion('BAR0');
    const pattern = randomBytes(2048);
    pattern.copy(source.bytes, K64 - 4096); // in the last 4 KiB of the page: all of it is mapped
    await eduDma(bar, src.iova + BigInt(K64 - 4096), EDU_BUFFER, pattern.length, false);
    await eduDma(bar, EDU_BUFFER, dst.iova + BigInt(K64 - 4096), pattern.length, true);
    assert.ok(target.bytes.subarray(K64 - 4096, K64 - 4096 + pattern.length).equals(pattern), 'edu copied the pattern through both 64 KiB mappings');
    dev.setCommand(0, PCI_COMMAND.MASTER);
    dev.context.unmap(src);
    dev.context.unmap(dst);
  });
}
