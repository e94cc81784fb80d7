// README claims about DMA, interrupts and regions, proven on real kernels: edu's DMA on every route and
// IOMMU the test bed has (the legacy route on the iommufd kernel, virtio-iommu on both routes), through
// 2 MiB huge-page buffers, type1's dma_entry_limit hint, `for await` over an MSI vector and disable()
// taking the kernel's handler away, and what a BAR holding the MSI-X table looks like (it maps whole).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { allocDmaBuffer, createContext, KernelError, moveToVfio, nativeKernel, openDevice, PCI_COMMAND, restoreDriver, type DmaBuffer } from '../../src/index.js';
import { test } from './case-test.js';
import { CASE, EDU, ROOT } from './helpers.js';

const example = (...args: string[]): { status: number | null; stdout: string; stderr: string } =>
  spawnSync(process.execPath, [`${ROOT}/dist/examples/edu-dma.js`, EDU, ...args], { encoding: 'utf8' });

function assertExample(r: { status: number | null; stdout: string; stderr: string }, route: string): void {
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, new RegExp(`^0000:00:10\\.0: ${route} route`, 'm'));
  assert.match(r.stdout, /^edu-dma: every check held$/m);
  assert.match(r.stdout, /^ok {3}the \d+ random bytes came back through the device unchanged$/m);
  assert.match(r.stdout, /^ok {3}the kernel logged the IOMMU fault at IOVA 0x[0-9a-f]+: .+/m);
}

const PLAN: Record<string, { route: string; args: string[] }[]> = {
  // the legacy route on the iommufd kernel (device.test.ts runs its auto route, iommufd)
  'iommufd-6.12-intel': [{ route: 'legacy', args: ['--route', 'legacy'] }],
  // virtio-iommu, on both routes
  'iommufd-6.12-virtio': [{ route: 'iommufd', args: [] }, { route: 'legacy', args: ['--route', 'legacy'] }],
};
for (const { route, args } of PLAN[CASE] ?? [{ route: '-', args: [] }]) {
  test(`edu DMA through the IOMMU on the ${route} route (${CASE})`, { skip: !PLAN[CASE] && 'iommufd-6.12-intel and -virtio' }, () => {
    assertExample(example(...args), route);
  });
}

test('edu DMA through 2 MiB huge-page buffers (hugePages), on both routes', { skip: CASE !== 'iommufd-6.12-intel' && 'iommufd-6.12-intel only' }, () => {
  const nr = '/proc/sys/vm/nr_hugepages';
  const before = fs.readFileSync(nr, 'utf8').trim();
  fs.writeFileSync(nr, '4');
  try {
    assert.ok(Number(fs.readFileSync(nr, 'utf8')) >= 2, 'the guest reserved huge pages');
    for (const route of ['iommufd', 'legacy']) {
      const r = example('--route', route, '--huge-pages');
      assertExample(r, route);
      assert.match(r.stdout, /mapped two 2 MiB huge pages at IOVA/);
    }
  } finally {
    fs.writeFileSync(nr, before);
  }
});

test('type1\'s dma_entry_limit: the map past it names the module parameter (KernelError, exit 7)', { skip: CASE !== 'stock-6.12-intel' && 'stock-6.12-intel only' }, () => {
  const param = '/sys/module/vfio_iommu_type1/parameters/dma_entry_limit';
  const before = fs.readFileSync(param, 'utf8').trim();
  fs.writeFileSync(param, '4'); // applies to containers opened from now on
  const ctx = createContext('legacy');
  const buffers: DmaBuffer[] = [];
  try {
    using dev = openDevice(EDU, { context: ctx });
    for (let i = 0; i < 4; i++) ctx.map((buffers[i] = allocDmaBuffer(4096)), { limit: 1n << 28n });
    buffers.push(allocDmaBuffer(4096));
    assert.throws(() => ctx.map(buffers[4]!, { limit: 1n << 28n }), (e: unknown) =>
      e instanceof KernelError && e.exitCode === 7 && e.errno === 'ENOSPC' && /vfio_iommu_type1\.dma_entry_limit/.test(e.message) && /dma_entry_limit/.test(e.hint ?? ''));
    assert.equal(ctx.mappings().length, 4, 'the four that fit stay mapped');
    for (const m of ctx.mappings()) ctx.unmap(m);
    assert.ok(dev);
  } finally {
    ctx.close();
    for (const b of buffers) b.free();
    fs.writeFileSync(param, before);
  }
});

test('`for await` over an MSI vector gets each interrupt; disable() takes the kernel\'s handler away', { skip: !['stock-6.1-intel', 'iommufd-6.12-intel'].includes(CASE) && 'two cases' }, async () => {
  using dev = openDevice(EDU);
  dev.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  const bar = dev.mapRegion('BAR0');
  const set = dev.enableIrqs('MSI');
  const name = `vfio-msi[0](${EDU})`;
  const handlers = (): number => fs.readFileSync('/proc/interrupts', 'utf8').split('\n').filter((l) => l.includes(name)).length;
  assert.equal(handlers(), 1, `${name} is in /proc/interrupts while MSI is on`);
  const raise = (): void => {
    bar.write32(0x64, 0xffffffff); // ack whatever is pending
    bar.write32(0x60, 0x1); // edu's interrupt raise register
  };
  let seen = 0;
  raise();
  for await (const n of set.vector(0)) {
    assert.ok(n >= 1n);
    if (++seen === 3) break;
    raise();
  }
  assert.equal(seen, 3);
  bar.write32(0x64, 0xffffffff);
  set.disable();
  assert.equal(handlers(), 0, 'disable() freed the kernel\'s MSI handler: nothing can be delivered');
  raise(); // and edu raising now is harmless
  bar.write32(0x64, 0xffffffff);
});

// No device of the test bed has a sparse-mmap region: since 4.16 vfio-pci lets a BAR holding the MSI-X
// table map whole (VFIO_REGION_INFO_CAP_MSIX_MAPPABLE) instead of sparse areas around it, and only
// drivers such as nvgrace-gpu report sparse areas. So the `area` option is proven against the fake
// kernel only; here, what the library reports of such a BAR on a real kernel: it maps whole.
test('the BAR with the MSI-X table (e1000e): vfio-pci 6.x reports no sparse areas, and the whole BAR maps', { skip: CASE !== 'iommufd-6.12-intel' && 'iommufd-6.12-intel only' }, () => {
  const nic = '0000:00:14.0'; // QEMU's e1000e: its MSI-X table and PBA live in BAR3
  moveToVfio(nativeKernel(), nic);
  try {
    using dev = openDevice(nic);
    const cap = dev.pciCapabilities().find((c) => c.id === 0x11);
    assert.ok(cap, 'e1000e has MSI-X');
    const bar = `BAR${dev.readConfig(cap.offset + 4, 4) & 7}`;
    const region = dev.region(bar);
    assert.deepEqual([region.mmappable, region.sparseMmap], [true, null], `${bar} maps whole`);
    const m = dev.mapRegion(bar);
    assert.equal(BigInt(m.size), region.size);
    m.read32(0);
    m.close();
  } finally {
    restoreDriver(nativeKernel(), nic);
  }
});
