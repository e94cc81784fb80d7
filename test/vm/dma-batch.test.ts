// Batch maps on real kernels, on each route the case has: one mapBatch() call maps many buffers
// (one ioctl per buffer from one addon call), edu's DMA engine reads and writes through them, and
// a real refusal in the middle of a batch (memory the kernel cannot pin: EFAULT) leaves nothing
// mapped. unmapBatch() takes a batch out again.
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { allocDmaBuffer, KernelError, openDevice, PCI_COMMAND, type DmaBuffer } from '../../src/index.js';
import { loadAddon } from '../../src/sys/native-kernel.js';
import { CASE, EDU, EDU_BUFFER, eduDma, isStock } from './helpers.js';

const CASES = ['iommufd-6.12-intel', 'stock-6.12-intel'];
const routes = isStock ? ['legacy'] : ['iommufd', 'legacy'];
const LIMIT = 1n << 28n; // edu's DMA mask

for (const route of routes) {
  test(`a batch of 32 buffers maps in one call; edu DMA through two of them; a refusal at entry 5 leaves nothing mapped (${route}, ${CASE})`, { skip: !CASES.includes(CASE) && CASES.join(' and ') }, async () => {
    using dev = openDevice(EDU, { route: route as 'iommufd' | 'legacy' });
    const ctx = dev.context;
    const buffers: DmaBuffer[] = [];
    try {
      for (let i = 0; i < 32; i++) buffers.push(allocDmaBuffer(4096));
      const batch = ctx.mapBatch(buffers, { limit: LIMIT });
      assert.equal(batch.length, 32);
      assert.equal(ctx.mappings().length, 32);
      assert.equal(new Set(batch.map((m) => m.iova)).size, 32, 'every buffer has an IOVA of its own');
      assert.ok(batch.every((m, i) => m.buffer === buffers[i] && m.iova + m.size <= LIMIT));

      dev.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
      using bar = dev.mapRegion('BAR0');
      const pattern = randomBytes(2048);
      pattern.copy(buffers[7]!.bytes);
      await eduDma(bar, batch[7]!.iova, EDU_BUFFER, pattern.length, false);
      await eduDma(bar, EDU_BUFFER, batch[29]!.iova, pattern.length, true);
      assert.ok(buffers[29]!.bytes.subarray(0, pattern.length).equals(pattern), 'edu read buffer 7 and wrote buffer 29 through the batch\'s mappings');
      dev.setCommand(0, PCI_COMMAND.MASTER);

      ctx.unmapBatch(batch);
      assert.equal(ctx.mappings().length, 0);
      assert.ok(buffers.every((b) => b.mappings === 0), 'the buffers are released');

      // entry 5's memory is gone from the process, behind the library's back: the kernel cannot pin it
      loadAddon().unmap(buffers[5]!.arrayBuffer);
      assert.throws(() => ctx.mapBatch(buffers.slice(0, 8), { limit: LIMIT }), (e: unknown) => {
        assert.ok(e instanceof KernelError, String(e));
        assert.equal(e.errno, 'EFAULT');
        assert.match(e.message, /entry 5 of the batch of 8/);
        return true;
      });
      assert.equal(ctx.mappings().length, 0, 'entries 0-4, which the kernel had mapped, were taken out again');
      assert.ok(buffers.every((b) => b.mappings === 0));
      // and the IOVAs went back: the same batch without the bad entry maps
      const again = ctx.mapBatch([...buffers.slice(0, 5), ...buffers.slice(6, 8)], { limit: LIMIT });
      assert.equal(ctx.mappings().length, 7);
      // the kernel took the same IOVAs again: the rollback had really unmapped them (a mapping left
      // behind in the kernel would have made it answer EEXIST)
      assert.deepEqual(again.slice(0, 5).map((m) => m.iova), batch.slice(0, 5).map((m) => m.iova));
      ctx.unmapBatch(again);
    } finally {
      for (const m of ctx.mappings()) ctx.unmap(m);
      for (const b of buffers) b.free();
    }
  });
}
