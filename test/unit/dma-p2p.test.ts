// Peer-to-peer DMA through the fake kernel: a context maps another device's BAR mapping (a region
// mapping) like a DMA buffer, and edu A's DMA engine reaches edu B's registers through it. type1
// (the legacy route) maps the PFNMAP range; iommufd refuses it with EFAULT, which the library turns
// into an UnsupportedError naming the legacy route. The BAR mapping never goes away under a mapping.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { allocDmaBuffer, createContext, openDevice, PCI_COMMAND, type RouteName } from '../../src/index.js';
import { ClosedError, KernelError, UnsupportedError, UsageError } from '../../src/errors.js';
import { EDU, EDU_DMA, EDU_REG, FakeKernel, TESTDEV } from '../fake-kernel.js';
import { catchError } from '../helpers.js';
import { assertClean, eduDma } from '../dma.js';

const LIMIT = 1n << 28n; // edu's DMA mask
const X = 0x12345678;

function twoEdus(route: RouteName, kernel: 'stock' | 'iommufd' = route === 'legacy' ? 'stock' : 'iommufd') {
  const k = FakeKernel.host({ kernel, devices: [{ address: EDU }, { address: TESTDEV }] });
  const ctx = createContext(route, { kernel: k });
  const a = openDevice(EDU, { kernel: k, context: ctx });
  const b = openDevice(TESTDEV, { kernel: k, route });
  /** closes both devices and the context, frees `buffers`, and checks that nothing is left */
  const finish = (...buffers: { free(): void }[]): void => {
    a.close();
    b.close();
    ctx.close();
    for (const buffer of buffers) buffer.free();
    assertClean(k);
  };
  return { k, ctx, a, b, finish };
}

describe('peer-to-peer DMA (legacy route: type1 maps a BAR)', () => {
  test('edu A writes X into edu B\'s register 0x04 through B\'s BAR mapping; B reads back ~X', async () => {
    const { k, ctx, a, b, finish } = twoEdus('legacy');
    const ram = allocDmaBuffer(4096, { kernel: k });
    a.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
    b.setCommand(PCI_COMMAND.MEMORY);
    const barA = a.mapRegion('BAR0');
    const barB = b.mapRegion('BAR0');
    const ramMap = ctx.map(ram, { limit: LIMIT });
    const peer = ctx.map(barB, { limit: LIMIT });
    assert.equal(peer.buffer, barB);
    assert.equal(peer.size, BigInt(barB.size));
    assert.equal(peer.writable, true);
    assert.equal(barB.mappings, 1);
    ram.bytes.writeUInt32LE(X, 0);
    await eduDma(barA, ramMap.iova, EDU_DMA.BUFFER, 4, 0n);
    await eduDma(barA, EDU_DMA.BUFFER, peer.iova + BigInt(EDU_REG.LIVENESS), 4, EDU_DMA.TO_RAM);
    assert.equal(barB.read32(EDU_REG.LIVENESS), ~X >>> 0, 'B stores the complement of what A wrote');
    assert.deepEqual(k.dmaFaults, []);
    ctx.unmap(peer);
    assert.equal(barB.mappings, 0);
    finish(ram);
  });

  test('a read-only BAR mapping maps read-only by default; asking for writable is a usage error', () => {
    const { k, ctx, a, b, finish } = twoEdus('legacy');
    b.setCommand(PCI_COMMAND.MEMORY);
    const ro = b.mapRegion('BAR0', { writable: false });
    const e = catchError(() => ctx.map(ro, { writable: true }), UsageError);
    assert.ok(e.message.includes(`the mapping of BAR0 of ${TESTDEV} at 0x`), e.message);
    assert.match(e.message, /is mapped read-only into this process, so a device may only read it/);
    assert.deepEqual(k.iommuMappings(), [], 'refused before the kernel was asked');
    const m = ctx.map(ro);
    assert.equal(m.writable, false);
    ctx.unmap(m);
    finish();
  });

  test('with B\'s memory decoding off the kernel cannot fault the BAR in: a KernelError (EFAULT), nothing mapped', () => {
    const { k, ctx, a, b, finish } = twoEdus('legacy');
    b.setCommand(PCI_COMMAND.MEMORY);
    const bar = b.mapRegion('BAR0');
    b.setCommand(0, PCI_COMMAND.MEMORY);
    const e = catchError(() => ctx.map(bar), KernelError);
    assert.equal(e.errno, 'EFAULT');
    assert.deepEqual(ctx.mappings(), []);
    assert.equal(bar.mappings, 0);
    finish();
  });

  test('the BAR mapping cannot be closed under a DMA mapping; closing its device takes the mapping out first', () => {
    const { k, ctx, a, b, finish } = twoEdus('legacy');
    b.setCommand(PCI_COMMAND.MEMORY);
    const bar = b.mapRegion('BAR0');
    const peer = ctx.map(bar);
    const e = catchError(() => bar.close(), UsageError);
    assert.match(e.message, /still mapped for DMA \(1 mapping\(s\)\): unmap it first/);
    assert.equal(bar.closed, false);
    assert.equal(k.iommuMappings().length, 1);
    b.close();
    assert.equal(bar.closed, true);
    assert.deepEqual(ctx.mappings(), [], 'the context no longer lists it');
    assert.deepEqual(k.iommuMappings(), [], 'and the kernel no longer maps it: A cannot reach B\'s BAR after B is gone');
    assert.throws(() => ctx.unmap(peer), UsageError);
    catchError(() => ctx.map(bar), ClosedError);
    finish();
  });

  test('mapBatch takes RAM and a BAR together; closing the context releases the BAR mapping', () => {
    const { k, ctx, a, b, finish } = twoEdus('legacy');
    b.setCommand(PCI_COMMAND.MEMORY);
    const bar = b.mapRegion('BAR0');
    const ram = allocDmaBuffer(4096, { kernel: k });
    const batch = ctx.mapBatch([ram, bar], { limit: LIMIT });
    assert.equal(batch.length, 2);
    assert.equal(bar.mappings, 1);
    a.close();
    ctx.close();
    assert.equal(bar.mappings, 0, 'the closed context dropped its hold');
    bar.close();
    finish(ram);
  });
});

describe('peer-to-peer DMA on the iommufd route', () => {
  test('IOAS_MAP of a BAR answers EFAULT: an UnsupportedError that names the limitation and the legacy route', () => {
    const { k, ctx, a, b, finish } = twoEdus('iommufd');
    b.setCommand(PCI_COMMAND.MEMORY);
    const bar = b.mapRegion('BAR0');
    const e = catchError(() => ctx.map(bar), UnsupportedError);
    assert.match(e.message, /\) for peer-to-peer DMA on the iommufd route: iommufd in this kernel cannot map a device's MMIO \(IOMMU_IOAS_MAP of a PFNMAP range answers EFAULT\)/);
    assert.equal(e.errno, 'EFAULT');
    assert.match(e.hint ?? '', /route 'legacy'/);
    assert.deepEqual(ctx.mappings(), []);
    assert.equal(bar.mappings, 0);
    // in a batch too: entry 1 is the BAR, and entry 0 is rolled back
    const ram = allocDmaBuffer(4096, { kernel: k });
    const eb = catchError(() => ctx.mapBatch([ram, bar]), UnsupportedError);
    assert.ok(eb.message.includes(`entry 1 of the batch of 2`) && eb.message.includes(`the mapping of BAR0 of ${TESTDEV}`), eb.message);
    assert.deepEqual(k.iommuMappings(), []);
    finish(ram);
  });

  test('an EFAULT for RAM stays a KernelError (only MMIO is the limitation)', () => {
    const { k, ctx, a, b, finish } = twoEdus('iommufd');
    const ram = allocDmaBuffer(4096, { kernel: k });
    k.unmap(ram.arrayBuffer); // behind the library's back: the kernel cannot pin it
    const e = catchError(() => ctx.map(ram), KernelError);
    assert.equal(e.errno, 'EFAULT');
    finish();
  });
});
