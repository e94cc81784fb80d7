// QEMU's edu (hw/misc/edu.c), the device model behind BAR0 of a 1234:11e8 device: id, liveness,
// factorial, interrupt raise/ack (MSI when vfio-pci enabled it, else the INTx line), and the DMA
// engine, whose IOVAs go through the fake IOMMU (memory.ts) of the domain the device is attached to.
import { signal } from './irqs.js';
import { busMaster, deviceDma } from './memory.js';
import { refreshMirrors } from './regions.js';
import { U64_MAX, type DeviceState, type FakeState } from './state.js';

/** QEMU's edu (hw/misc/edu.c) */
export interface EduState {
  addr4: number;
  fact: number;
  status: number;
  irqStatus: number;
  dma: { src: bigint; dst: bigint; cnt: bigint; cmd: bigint };
  /** its 4 KiB DMA buffer, at 0x40000 in its own address space */
  buffer: Buffer;
}

export const EDU_REG = {
  ID: 0x00, LIVENESS: 0x04, FACTORIAL: 0x08, STATUS: 0x20, IRQ_STATUS: 0x24, IRQ_RAISE: 0x60, IRQ_ACK: 0x64,
  DMA_SRC: 0x80, DMA_DST: 0x88, DMA_COUNT: 0x90, DMA_CMD: 0x98,
} as const;
export const EDU_DMA = { START: 0x1n, TO_RAM: 0x2n, IRQ: 0x4n, BUFFER: 0x40000n, BUFFER_SIZE: 4096, DONE_IRQ: 0x100, FACT_IRQ: 0x1 } as const;
const EDU_STATUS_COMPUTING = 0x01;
const EDU_STATUS_IRQFACT = 0x80;
const EDU_DMA_MASK = (1n << 28n) - 1n;

export const newEdu = (): EduState => ({
  addr4: 0, fact: 0, status: 0, irqStatus: 0, dma: { src: 0n, dst: 0n, cnt: 0n, cmd: 0n }, buffer: Buffer.alloc(EDU_DMA.BUFFER_SIZE),
});

/** edu_mmio_read: only 4-byte accesses below 0x80, 4 or 8 bytes from 0x80; anything else reads as all ones */
export function eduRead(e: EduState, at: number, width: number): bigint {
  const ones = (1n << BigInt(8 * width)) - 1n;
  if ((at < 0x80 && width !== 4) || (at >= 0x80 && width !== 4 && width !== 8)) return ones;
  let v: bigint;
  switch (at) {
    case EDU_REG.ID: v = 0x010000edn; break;
    case EDU_REG.LIVENESS: v = BigInt(e.addr4); break;
    case EDU_REG.FACTORIAL: v = BigInt(e.fact); break;
    case EDU_REG.STATUS: v = BigInt(e.status); break;
    case EDU_REG.IRQ_STATUS: v = BigInt(e.irqStatus); break;
    case EDU_REG.DMA_SRC: v = e.dma.src; break;
    case EDU_REG.DMA_DST: v = e.dma.dst; break;
    case EDU_REG.DMA_COUNT: v = e.dma.cnt; break;
    case EDU_REG.DMA_CMD: v = e.dma.cmd; break;
    default: v = U64_MAX;
  }
  return v & ones;
}

/** edu_mmio_write */
export function eduWrite(s: FakeState, dev: DeviceState, e: EduState, at: number, width: number, value: bigint): void {
  if ((at < 0x80 && width !== 4) || (at >= 0x80 && width !== 4 && width !== 8)) return;
  const u32 = Number(value & 0xffffffffn);
  const running = (e.dma.cmd & EDU_DMA.START) !== 0n; // dma_rw: no register changes while a DMA runs
  switch (at) {
    case EDU_REG.LIVENESS:
      e.addr4 = ~u32 >>> 0;
      break;
    case EDU_REG.FACTORIAL: {
      if (e.status & EDU_STATUS_COMPUTING) break;
      let fact = 1;
      for (let n = u32; n > 0; n--) fact = Math.imul(fact, n) >>> 0;
      e.fact = fact;
      if (e.status & EDU_STATUS_IRQFACT) eduRaise(dev, e, EDU_DMA.FACT_IRQ);
      break;
    }
    case EDU_REG.STATUS:
      e.status = (u32 & EDU_STATUS_IRQFACT) !== 0 ? e.status | EDU_STATUS_IRQFACT : e.status & ~EDU_STATUS_IRQFACT;
      break;
    case EDU_REG.IRQ_RAISE:
      eduRaise(dev, e, u32);
      break;
    case EDU_REG.IRQ_ACK:
      e.irqStatus = (e.irqStatus & ~u32) >>> 0;
      if (e.irqStatus === 0 && dev.irq.type !== 'msi') dev.irq.intxLine = false;
      break;
    case EDU_REG.DMA_SRC:
      if (!running) e.dma.src = value;
      break;
    case EDU_REG.DMA_DST:
      if (!running) e.dma.dst = value;
      break;
    case EDU_REG.DMA_COUNT:
      if (!running) e.dma.cnt = value;
      break;
    case EDU_REG.DMA_CMD:
      if ((value & EDU_DMA.START) === 0n || running) break;
      e.dma.cmd = value;
      if (s.eduDmaTiming === 'sync') eduDma(s, dev, e);
      else setImmediate(() => eduDma(s, dev, e));
      break;
    default:
      break;
  }
}

/** edu_raise_irq: MSI when vfio-pci enabled it (and the device may master the bus), else the INTx line */
function eduRaise(dev: DeviceState, e: EduState, bits: number): void {
  e.irqStatus = (e.irqStatus | bits) >>> 0;
  if (e.irqStatus === 0) return;
  const q = dev.irq;
  if (q.type === 'msi') {
    if (busMaster(dev)) signal(q.triggers[0] ?? null); // an MSI is a DMA write: dropped without bus mastering
    return;
  }
  if (q.intxLine) return; // the line is already high: no new edge
  q.intxLine = true;
  // vfio_intx_handler: signal and mask until the user unmasks
  if (q.type === 'intx' && !q.intxMasked) {
    q.intxMasked = true;
    signal(q.triggers[0] ?? null);
  }
}

/** edu_dma_timer: one transfer between edu's buffer and memory, through the IOMMU */
function eduDma(s: FakeState, dev: DeviceState, e: EduState): void {
  const cmd = e.dma.cmd;
  if ((cmd & EDU_DMA.START) === 0n) return;
  const toRam = (cmd & EDU_DMA.TO_RAM) !== 0n;
  const count = e.dma.cnt;
  const eduAddr = toRam ? e.dma.src : e.dma.dst;
  const iova = (toRam ? e.dma.dst : e.dma.src) & EDU_DMA_MASK; // edu_clamp_addr: a 28-bit DMA mask
  // edu_check_range as in QEMU 7.2 (the test bed's): a transfer ending at the buffer's last byte is refused too
  const end = eduAddr + count;
  const inside = eduAddr >= EDU_DMA.BUFFER && eduAddr < EDU_DMA.BUFFER + BigInt(EDU_DMA.BUFFER_SIZE) && end > eduAddr && end < EDU_DMA.BUFFER + BigInt(EDU_DMA.BUFFER_SIZE);
  if (!inside) {
    // QEMU stops the VM with a hardware error; the fake records it and completes without a copy
    s.dmaFaults.push({ device: dev.name, iova, length: Number(count), write: toRam, reason: 'edu range' });
  } else {
    const at = Number(eduAddr - EDU_DMA.BUFFER);
    const n = Number(count);
    deviceDma(s, dev, iova, e.buffer.subarray(at, at + n), toRam);
  }
  e.dma.cmd &= ~EDU_DMA.START;
  if ((cmd & EDU_DMA.IRQ) !== 0n) eduRaise(dev, e, EDU_DMA.DONE_IRQ);
  refreshMirrors(dev);
}
