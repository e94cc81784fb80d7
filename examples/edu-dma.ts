// edu-dma: DMA through the IOMMU with QEMU's edu device, on whichever route the kernel offers.
//   node dist/examples/edu-dma.js [DEVICE] [--route auto|iommufd|legacy] [--huge-pages]
// It binds edu, checks its registers over the mmapped BAR0, copies a random page RAM -> edu -> RAM
// with edu's DMA engine, waits for edu's completion interrupt on the MSI eventfd, and then shows the
// IOMMU at work: a DMA to an IOVA that was just unmapped completes on the device's side, leaves the
// buffer untouched, and the guest kernel logs the IOMMU fault. Exits 0 when every check held. With
// --huge-pages its buffers are huge pages (2 MiB; 512 MiB with 64 KiB pages) (MAP_HUGETLB: reserve some in vm.nr_hugepages first).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { allocDmaBuffer, HUGE_PAGE_SIZE, openDevice, PCI_COMMAND, type RegionMapping, type RoutePolicy } from '../src/index.js';

const EDU_ID = 0x00;
const EDU_LIVENESS = 0x04;
const EDU_IRQ_STATUS = 0x24;
const EDU_IRQ_ACK = 0x64;
const EDU_DMA_SRC = 0x80;
const EDU_DMA_DST = 0x88;
const EDU_DMA_COUNT = 0x90;
const EDU_DMA_CMD = 0x98;
const DMA_START = 0x1n;
const DMA_TO_RAM = 0x2n; // direction: edu -> RAM (else RAM -> edu)
const DMA_IRQ = 0x4n; // raise interrupt 0x100 when done
const DMA_DONE_IRQ = 0x100;
const EDU_BUFFER = 0x40000n; // edu's internal 4 KiB buffer, in its own address space
const EDU_DMA_LIMIT = 1n << 28n; // edu's DMA mask is 28 bits
// edu's buffer is 4 KiB, but QEMU 7.2's range check rejects a transfer that ends at its last byte (and
// then aborts the whole VM with a "hardware error"), so transfers stay well inside it.
const TRANSFER = 2048;

const args = process.argv.slice(2);
const routeAt = args.indexOf('--route');
const route = (routeAt >= 0 ? args.splice(routeAt, 2)[1] : 'auto') as RoutePolicy;
const hugeAt = args.indexOf('--huge-pages');
const hugePages = hugeAt >= 0 && args.splice(hugeAt, 1).length === 1;
const spec = args[0] ?? '0000:00:10.0';

let failures = 0;
/**
 * The kernel's report of a DMA fault at `iova`: intel-iommu's DMAR record or virtio-iommu's page fault,
 * one line each; or arm-smmu-v3's event, which prints its four raw 64-bit words on lines of their own,
 * the third being the input address (F_TRANSLATION 0x10, F_ADDR_SIZE 0x11, F_ACCESS 0x12, F_PERMISSION 0x13).
 */
function faultLine(log: string, iova: bigint): string | undefined {
  const lines = log.split('\n').map((l) => l.replace(/^\[[^\]]*\]\s*/, '').trim());
  const x86 = lines.find((l) => (/DMAR: \[DMA Write/.test(l) || /DMAR:.*fault addr/.test(l) || /page fault from EP/.test(l)) && l.includes(iova.toString(16)));
  if (x86) return x86;
  for (let i = 0; i < lines.length; i++) {
    if (!/arm-smmu-v3 .*: event 0x1[0-3] received:$/.test(lines[i]!)) continue;
    const address = /:\s+0x([0-9a-f]{16})$/.exec(lines[i + 3] ?? '');
    if (address && BigInt(`0x${address[1]}`) === iova) return `${lines[i]} ... ${lines[i + 3]!.replace(/^\S+ \S+ /, '')}`;
  }
  return undefined;
}

function check(ok: boolean, what: string): void {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures++;
}
const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

/** Starts one edu DMA and waits until edu's command register says it is done. */
async function dma(bar: RegionMapping, src: bigint, dst: bigint, count: number, cmd: bigint): Promise<void> {
  bar.write64(EDU_DMA_SRC, src);
  bar.write64(EDU_DMA_DST, dst);
  bar.write64(EDU_DMA_COUNT, BigInt(count));
  // what was written into the source buffer reaches memory before edu sees the doorbell (arm64 needs it)
  bar.dmaWriteBarrier();
  bar.write64(EDU_DMA_CMD, cmd | DMA_START);
  for (let waited = 0; (bar.read64(EDU_DMA_CMD) & DMA_START) !== 0n; waited += 10) {
    if (waited > 10_000) throw new Error('edu did not finish the DMA within 10 s');
    await new Promise((r) => setTimeout(r, 10));
  }
  // reads of the target buffer come after the status said done
  bar.dmaReadBarrier();
}

const device = openDevice(spec, { route });
try {
  console.log(`${device.name}: ${device.route} route${device.report.fallback ? ` (${device.report.fallback.reason})` : ''}`);
  const ctx = device.context;
  const bar = device.mapRegion('BAR0');
  check(bar.read32(EDU_ID) === 0x010000ed, `identification register reads ${hex(bar.read32(EDU_ID))} (0x10000ed)`);
  const probe = 0x12345678;
  bar.write32(EDU_LIVENESS, probe);
  check(bar.read32(EDU_LIVENESS) === (~probe >>> 0), `liveness register returns the inverse of ${hex(probe)}: ${hex(bar.read32(EDU_LIVENESS))}`);

  device.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  const msi = device.enableIrqs('MSI').vector(0);

  const size = hugePages ? HUGE_PAGE_SIZE : 4096; // one page: 4 KiB, or a 64 KiB page on such an arm64 kernel
  const source = allocDmaBuffer(size, { hugePages });
  const target = allocDmaBuffer(size, { hugePages });
  const pattern = randomBytes(TRANSFER);
  pattern.copy(source.bytes);
  const src = ctx.map(source, { limit: EDU_DMA_LIMIT });
  const dst = ctx.map(target, { limit: EDU_DMA_LIMIT });
  const pageText = source.size >= 1 << 20 ? `${source.size >> 20} MiB` : `${source.size >> 10} KiB`;
  console.log(`     mapped two ${pageText} ${hugePages ? 'huge ' : ''}pages at IOVA ${hex(src.iova)} and ${hex(dst.iova)}`);

  // RAM -> edu, with its completion interrupt
  await dma(bar, src.iova, EDU_BUFFER, TRANSFER, DMA_IRQ);
  const fired = await msi.wait({ timeoutMs: 5000 });
  check(fired !== null && fired >= 1n, `completion interrupt of RAM -> edu arrived on the MSI eventfd (${fired ?? 'none'})`);
  check(bar.read32(EDU_IRQ_STATUS) === DMA_DONE_IRQ, `edu's interrupt status reads ${hex(bar.read32(EDU_IRQ_STATUS))} (0x100)`);
  bar.write32(EDU_IRQ_ACK, DMA_DONE_IRQ);
  check(bar.read32(EDU_IRQ_STATUS) === 0, 'the interrupt is acknowledged');

  // edu -> RAM
  await dma(bar, EDU_BUFFER, dst.iova, TRANSFER, DMA_TO_RAM | DMA_IRQ);
  const fired2 = await msi.wait({ timeoutMs: 5000 });
  bar.write32(EDU_IRQ_ACK, DMA_DONE_IRQ);
  check(fired2 !== null, 'completion interrupt of edu -> RAM arrived');
  check(target.bytes.subarray(0, TRANSFER).equals(pattern), `the ${TRANSFER} random bytes came back through the device unchanged`);

  // without bit 0x4 edu raises nothing
  await dma(bar, src.iova, EDU_BUFFER, TRANSFER, 0n);
  check((await msi.wait({ timeoutMs: 700 })) === null, 'a DMA without the interrupt bit raised no interrupt');

  // the IOMMU at work: DMA to an IOVA that is no longer mapped
  ctx.unmap(dst);
  target.bytes.fill(0);
  await dma(bar, EDU_BUFFER, dst.iova, TRANSFER, DMA_TO_RAM | DMA_IRQ);
  const fired3 = await msi.wait({ timeoutMs: 5000 });
  bar.write32(EDU_IRQ_ACK, DMA_DONE_IRQ);
  check(fired3 !== null, 'the DMA to the unmapped IOVA completed on the device side');
  check(target.bytes.every((b) => b === 0), 'the buffer it used to reach is unchanged');
  const log = (() => {
    try {
      return execFileSync('dmesg', { encoding: 'utf8' });
    } catch {
      return '';
    }
  })();
  const fault = faultLine(log, dst.iova);
  check(fault !== undefined, `the kernel logged the IOMMU fault at IOVA ${hex(dst.iova)}${fault ? `: ${fault}` : ''}`);

  ctx.unmap(src);
  source.free();
  target.free();
} finally {
  device.close();
}
console.log(failures === 0 ? 'edu-dma: every check held' : `edu-dma: ${failures} check(s) failed`);
process.exitCode = failures === 0 ? 0 : 1;
