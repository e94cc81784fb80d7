// The whole edu DMA flow of examples/edu-dma.ts against the fake: edu's DMA engine goes through the
// fake IOMMU (the mappings made with IOMMU_IOAS_MAP / VFIO_IOMMU_MAP_DMA), and its completion interrupt
// arrives on the MSI eventfd. A DMA to an unmapped IOVA is a fault: nothing is copied.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { allocDmaBuffer, createContext, openDevice, PCI_COMMAND, type DmaBuffer, type RegionMapping, type VfioDevice } from '../../src/index.js';
import { EDU, EDU_DMA, EDU_REG, FakeKernel, TESTDEV, type HostOptions } from '../fake-kernel.js';
import { assertNoLeaks, prng } from '../helpers.js';
import { eduDma as dma } from '../dma.js';

const ROUTES = [
  { name: 'iommufd', host: (o: HostOptions = {}) => FakeKernel.host(o) },
  { name: 'legacy', host: (o: HostOptions = {}) => FakeKernel.host({ kernel: 'stock', ...o }) },
] as const;
const EDU_DMA_LIMIT = 1n << 28n;
const TRANSFER = 2048;

function pattern(seed: number, n = TRANSFER): Buffer {
  const rand = prng(seed);
  return Buffer.from(Array.from({ length: n }, () => Math.floor(rand() * 256)));
}


interface Rig {
  k: FakeKernel;
  dev: VfioDevice;
  bar: RegionMapping;
  source: DmaBuffer;
  target: DmaBuffer;
  close(): void;
}

function rig(r: (typeof ROUTES)[number], o: HostOptions = {}): Rig {
  const k = r.host(o);
  const dev = openDevice(EDU, { kernel: k });
  const bar = dev.mapRegion('BAR0');
  dev.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  const source = allocDmaBuffer(4096, { kernel: k });
  const target = allocDmaBuffer(4096, { kernel: k });
  return {
    k, dev, bar, source, target,
    close: () => {
      dev.close();
      source.free();
      target.free();
      assertNoLeaks(k);
      assert.equal(k.liveMappings(), 0);
      assert.deepEqual(k.iommuMappings(), []);
      assert.equal(k.activeWatches(), 0);
    },
  };
}

for (const r of ROUTES) {
  describe(`edu DMA through the fake IOMMU (${r.name})`, () => {
    test('RAM -> edu -> RAM: the bytes come back unchanged; each completion raises MSI 0x100', async () => {
      const { k, dev, bar, source, target, close } = rig(r);
      try {
        const msi = dev.enableIrqs('MSI').vector(0);
        const data = pattern(1);
        data.copy(source.bytes);
        const src = dev.context.map(source, { limit: EDU_DMA_LIMIT });
        const dst = dev.context.map(target, { limit: EDU_DMA_LIMIT });
        assert.ok(src.iova < EDU_DMA_LIMIT && dst.iova < EDU_DMA_LIMIT);

        await dma(bar, src.iova, EDU_DMA.BUFFER, TRANSFER, EDU_DMA.IRQ);
        assert.equal(await msi.wait({ timeoutMs: 1000 }), 1n);
        assert.equal(bar.read32(EDU_REG.IRQ_STATUS), EDU_DMA.DONE_IRQ);
        bar.write32(EDU_REG.IRQ_ACK, EDU_DMA.DONE_IRQ);
        assert.equal(bar.read32(EDU_REG.IRQ_STATUS), 0);
        assert.ok(k.edu(EDU).buffer.subarray(0, TRANSFER).equals(data), 'edu\'s buffer holds the pattern');

        await dma(bar, EDU_DMA.BUFFER, dst.iova, TRANSFER, EDU_DMA.TO_RAM | EDU_DMA.IRQ);
        assert.equal(await msi.wait({ timeoutMs: 1000 }), 1n);
        bar.write32(EDU_REG.IRQ_ACK, EDU_DMA.DONE_IRQ);
        assert.ok(target.bytes.subarray(0, TRANSFER).equals(data), 'the bytes came back through the device');
        assert.ok(target.bytes.subarray(TRANSFER).every((b) => b === 0), 'and nothing more');
        assert.deepEqual(k.dmaTransfers.map((t) => [t.iova, t.length, t.write]), [[src.iova, TRANSFER, false], [dst.iova, TRANSFER, true]]);
        assert.deepEqual(k.dmaFaults, []);

        // without the interrupt bit edu raises nothing
        await dma(bar, src.iova, EDU_DMA.BUFFER, TRANSFER, 0n);
        assert.equal(await msi.wait({ timeoutMs: 15 }), null);
      } finally {
        close();
      }
    });

    test('a DMA to an IOVA that was unmapped: a fault, nothing copied, the device still completes', async () => {
      const { k, dev, bar, source, target, close } = rig(r);
      try {
        const msi = dev.enableIrqs('MSI').vector(0);
        pattern(2).copy(k.edu(EDU).buffer);
        dev.context.map(source, { limit: EDU_DMA_LIMIT });
        const dst = dev.context.map(target, { limit: EDU_DMA_LIMIT });
        dev.context.unmap(dst);
        target.bytes.fill(0);
        await dma(bar, EDU_DMA.BUFFER, dst.iova, TRANSFER, EDU_DMA.TO_RAM | EDU_DMA.IRQ);
        assert.equal(await msi.wait({ timeoutMs: 1000 }), 1n, 'the completion interrupt still arrives');
        assert.deepEqual(k.dmaFaults, [{ device: EDU, iova: dst.iova, length: TRANSFER, write: true, reason: 'unmapped' }]);
        assert.ok(target.bytes.every((b) => b === 0), 'the buffer it used to reach is unchanged');
        assert.deepEqual(k.dmaTransfers, []);
        // reading from an unmapped IOVA leaves edu's buffer as it was
        const before = Buffer.from(k.edu(EDU).buffer);
        await dma(bar, 0x7000000n, EDU_DMA.BUFFER, 64, 0n);
        assert.equal(k.dmaFaults.at(-1)!.reason, 'unmapped');
        assert.ok(k.edu(EDU).buffer.equals(before));
      } finally {
        close();
      }
    });

    test('the IOMMU enforces the mapping\'s direction: edu cannot write a read-only mapping', async () => {
      const { k, dev, bar, source, target, close } = rig(r);
      try {
        const ro = dev.context.map(target, { writable: false });
        const wo = dev.context.map(source, { readable: false });
        await dma(bar, EDU_DMA.BUFFER, ro.iova, 16, EDU_DMA.TO_RAM);
        await dma(bar, wo.iova, EDU_DMA.BUFFER, 16, 0n);
        assert.deepEqual(k.dmaFaults.map((f) => f.reason), ['read-only', 'write-only']);
        await dma(bar, ro.iova, EDU_DMA.BUFFER, 16, 0n);
        await dma(bar, EDU_DMA.BUFFER, wo.iova, 16, EDU_DMA.TO_RAM);
        assert.equal(k.dmaTransfers.length, 2);
      } finally {
        close();
      }
    });

    test('without bus mastering edu\'s DMA does not reach memory', async () => {
      const { k, dev, bar, target, close } = rig(r);
      try {
        const m = dev.context.map(target);
        dev.setCommand(0, PCI_COMMAND.MASTER);
        await dma(bar, EDU_DMA.BUFFER, m.iova, 16, EDU_DMA.TO_RAM);
        assert.equal(k.dmaFaults.at(-1)!.reason, 'bus master disabled');
      } finally {
        close();
      }
    });

    test('edu masks DMA addresses to 28 bits: a mapping above the limit is not what it reaches', async () => {
      const { k, dev, bar, target, close } = rig(r);
      try {
        const high = dev.context.map(target, { iova: 0x10001000n });
        await dma(bar, EDU_DMA.BUFFER, high.iova, 16, EDU_DMA.TO_RAM);
        assert.deepEqual(k.dmaFaults.map((f) => [f.iova, f.reason]), [[0x1000n, 'unmapped']], 'clamped to 0x1000, where nothing is mapped');
      } finally {
        close();
      }
    });

    test('a transfer outside edu\'s buffer is refused by edu (QEMU 7.2 also refuses one ending at its last byte)', async () => {
      const { k, dev, bar, source, close } = rig(r);
      try {
        const m = dev.context.map(source);
        await dma(bar, m.iova, EDU_DMA.BUFFER + 4096n - 16n, 16, 0n);
        await dma(bar, m.iova, EDU_DMA.BUFFER - 16n, 16, 0n);
        assert.deepEqual(k.dmaFaults.map((f) => f.reason), ['edu range', 'edu range']);
        await dma(bar, m.iova, EDU_DMA.BUFFER + 4096n - 17n, 16, 0n);
        assert.equal(k.dmaTransfers.length, 1);
      } finally {
        close();
      }
    });

    test('a transfer spanning two adjacent mappings is translated piecewise', async () => {
      const { k, dev, bar, source, target, close } = rig(r);
      try {
        source.bytes.fill(0x11);
        target.bytes.fill(0x22);
        dev.context.map(source, { iova: 0x100000n });
        dev.context.map(target, { iova: 0x101000n });
        await dma(bar, 0x100800n, EDU_DMA.BUFFER, 4000, 0n);
        const got = k.edu(EDU).buffer.subarray(0, 4000);
        assert.ok(got.subarray(0, 2048).every((b) => b === 0x11));
        assert.ok(got.subarray(2048).every((b) => b === 0x22));
      } finally {
        close();
      }
    });

    test('with DMA as slow as QEMU\'s timer: the command register shows the DMA running, registers are frozen meanwhile', async () => {
      const { k, dev, bar, source, close } = rig(r);
      try {
        k.eduDmaTiming = 'deferred';
        const m = dev.context.map(source);
        bar.write64(EDU_REG.DMA_SRC, m.iova);
        bar.write64(EDU_REG.DMA_DST, EDU_DMA.BUFFER);
        bar.write64(EDU_REG.DMA_COUNT, 8n);
        bar.write64(EDU_REG.DMA_CMD, EDU_DMA.START);
        assert.equal(bar.read64(EDU_REG.DMA_CMD) & EDU_DMA.START, EDU_DMA.START);
        bar.write64(EDU_REG.DMA_COUNT, 16n);
        assert.equal(bar.read64(EDU_REG.DMA_COUNT), 8n, 'edu ignores register writes while a DMA runs');
        await new Promise((resolve) => setImmediate(resolve));
        assert.equal(bar.read64(EDU_REG.DMA_CMD) & EDU_DMA.START, 0n);
        assert.equal(k.dmaTransfers.length, 1);
      } finally {
        close();
      }
    });

    test('INTx instead of MSI: the completion arrives on the INTx eventfd, automasked until unmasked', async () => {
      const { dev, bar, source, close } = rig(r);
      try {
        const intx = dev.enableIrqs('INTX').vector(0);
        const m = dev.context.map(source);
        await dma(bar, m.iova, EDU_DMA.BUFFER, 16, EDU_DMA.IRQ);
        assert.equal(await intx.wait({ timeoutMs: 1000 }), 1n);
        bar.write32(EDU_REG.IRQ_ACK, EDU_DMA.DONE_IRQ);
        intx.unmask();
        await dma(bar, m.iova, EDU_DMA.BUFFER, 16, EDU_DMA.IRQ);
        assert.equal(await intx.wait({ timeoutMs: 1000 }), 1n);
      } finally {
        close();
      }
    });
  });
}

describe('edu DMA: which IOMMU domain the device is in', () => {
  test('two edus in one context share its mappings', async () => {
    for (const r of ROUTES) {
      const k = r.host({ devices: [{ address: EDU }, { address: TESTDEV }] });
      const ctx = createContext(r.name, { kernel: k });
      const a = openDevice(EDU, { kernel: k, context: ctx });
      const b = openDevice(TESTDEV, { kernel: k, context: ctx });
      const buf = allocDmaBuffer(4096, { kernel: k });
      try {
        for (const d of [a, b]) d.setCommand(PCI_COMMAND.MASTER);
        const m = ctx.map(buf);
        pattern(3, 64).copy(k.edu(EDU).buffer);
        await dma(a.mapRegion('BAR0'), EDU_DMA.BUFFER, m.iova, 64, EDU_DMA.TO_RAM);
        await dma(b.mapRegion('BAR0'), m.iova, EDU_DMA.BUFFER, 64, 0n);
        assert.ok(k.edu(TESTDEV).buffer.subarray(0, 64).equals(pattern(3, 64)), `${r.name}: edu B read what edu A wrote`);
      } finally {
        ctx.close();
        buf.free();
      }
      assertNoLeaks(k);
    }
  });

  test('separate contexts are separate address spaces: the same IOVA reaches different memory', async () => {
    const k = FakeKernel.host({ devices: [{ address: EDU }, { address: TESTDEV }] });
    const a = openDevice(EDU, { kernel: k });
    const b = openDevice(TESTDEV, { kernel: k, route: 'legacy' });
    const ba = allocDmaBuffer(4096, { kernel: k });
    const bb = allocDmaBuffer(4096, { kernel: k });
    try {
      for (const d of [a, b]) d.setCommand(PCI_COMMAND.MASTER);
      assert.equal(a.context.map(ba).iova, b.context.map(bb).iova);
      k.edu(EDU).buffer.fill(0xaa, 0, 16);
      k.edu(TESTDEV).buffer.fill(0xbb, 0, 16);
      await dma(a.mapRegion('BAR0'), EDU_DMA.BUFFER, 0x1000n, 16, EDU_DMA.TO_RAM);
      await dma(b.mapRegion('BAR0'), EDU_DMA.BUFFER, 0x1000n, 16, EDU_DMA.TO_RAM);
      assert.equal(ba.bytes[0], 0xaa);
      assert.equal(bb.bytes[0], 0xbb);
    } finally {
      a.close();
      b.close();
      ba.free();
      bb.free();
    }
    assertNoLeaks(k);
  });

  test('a noiommu device\'s DMA is not translated (the fake records it as a fault)', async () => {
    const k = FakeKernel.host({ iommu: 'noiommu' });
    const dev = openDevice(EDU, { kernel: k });
    try {
      dev.setCommand(PCI_COMMAND.MASTER);
      await dma(dev.mapRegion('BAR0'), EDU_DMA.BUFFER, 0x1000n, 16, EDU_DMA.TO_RAM);
      assert.equal(k.dmaFaults.at(-1)!.reason, 'noiommu');
    } finally {
      dev.close();
    }
    assertNoLeaks(k);
  });
});
