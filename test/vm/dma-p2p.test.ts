// Peer-to-peer DMA on real kernels: edu A's DMA engine writes into edu B's BAR through A's IOMMU
// context, which maps B's BAR mapping. type1 (the legacy route, on stock kernels and on iommufd-6.12)
// maps it; edu B stores the complement of what lands in its register 0x04, so B reading back ~X
// proves the write went device to device. iommufd 6.12 refuses MMIO (IOAS_MAP answers EFAULT): a
// typed UnsupportedError naming the legacy route.
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { allocDmaBuffer, createContext, KernelError, openDevice, PCI_COMMAND, UnsupportedError } from '../../src/index.js';
import { CASE, EDU, EDU2, eduDmaToPeer, isStock } from './helpers.js';

const CASES = ['stock-6.1-intel', 'stock-6.12-intel', 'iommufd-6.12-intel'];
const LIMIT = 1n << 28n; // edu's DMA mask
const LIVENESS = 0x04; // edu: a write stores its complement

test(`edu A writes X into edu B's register 0x04 by DMA through B's BAR mapping; B reads back ~X (legacy, ${CASE})`, { skip: !CASES.includes(CASE) && CASES.join(', ') }, async () => {
  const ctx = createContext('legacy');
  const a = openDevice(EDU, { context: ctx });
  const b = openDevice(EDU2, { route: 'legacy' });
  const ram = allocDmaBuffer(4096);
  try {
    a.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
    using barA = a.mapRegion('BAR0');
    const barB = b.mapRegion('BAR0');

    // with B's memory decoding off, vfio-pci will not fault the BAR in: type1 cannot follow the pfns
    b.setCommand(0, PCI_COMMAND.MEMORY);
    assert.throws(() => ctx.map(barB, { limit: LIMIT }), (e: unknown) => e instanceof KernelError && e.errno === 'EFAULT' && /VFIO_IOMMU_MAP_DMA answered EFAULT/.test(e.message));
    assert.equal(ctx.mappings().length, 0);

    b.setCommand(PCI_COMMAND.MEMORY);
    const peer = ctx.map(barB, { limit: LIMIT });
    assert.equal(peer.size, BigInt(barB.size));
    const ramMap = ctx.map(ram, { limit: LIMIT });
    const x = randomInt(0x10000000, 0x7fffffff);
    barB.write32(LIVENESS, 0);
    assert.equal(barB.read32(LIVENESS), 0xffffffff, 'edu B answers its register');
    await eduDmaToPeer(barA, ram, ramMap.iova, peer.iova + BigInt(LIVENESS), x);
    assert.equal(barB.read32(LIVENESS), ~x >>> 0, `B holds ~X: A's DMA wrote 0x${x.toString(16)} into B's register`);

    // closing B takes the mapping of its BAR out of A's context first: the same IOVA maps RAM again
    b.close();
    assert.equal(barB.closed, true);
    assert.deepEqual(ctx.mappings().map((m) => m.iova), [ramMap.iova]);
    const reuse = allocDmaBuffer(4096);
    try {
      ctx.unmap(ctx.map(reuse, { iova: peer.iova }));
    } finally {
      reuse.free();
    }
    a.setCommand(0, PCI_COMMAND.MASTER);
  } finally {
    b.close();
    a.close();
    ctx.close();
    ram.free();
  }
});

test(`iommufd cannot map a BAR for peer-to-peer DMA: IOAS_MAP answers EFAULT, an UnsupportedError naming the legacy route (${CASE})`, { skip: (isStock || !CASES.includes(CASE)) && 'iommufd-6.12-intel only' }, () => {
  using a = openDevice(EDU, { route: 'iommufd' });
  using b = openDevice(EDU2, { route: 'iommufd' });
  b.setCommand(PCI_COMMAND.MEMORY);
  using bar = b.mapRegion('BAR0');
  assert.throws(() => a.context.map(bar, { limit: LIMIT }), (e: unknown) => {
    assert.ok(e instanceof UnsupportedError, String(e));
    assert.equal(e.errno, 'EFAULT');
    assert.match(e.message, /iommufd in this kernel cannot map a device's MMIO \(IOMMU_IOAS_MAP of a PFNMAP range answers EFAULT\)/);
    assert.match(e.hint ?? '', /route 'legacy'/);
    return true;
  });
  assert.equal(a.context.mappings().length, 0);
  assert.equal(bar.mappings, 0);
});
