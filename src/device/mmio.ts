// A device region mapped into the process (a BAR's MMIO). Each register accessor makes exactly one
// load or store of its width: devices answer only some widths (edu: 4 and 8 bytes), and a JavaScript
// DataView may split an access into bytes.
//
// Where the kernel seam says so (Kernel.mmioDirect: on a V8 the VM suite proved), the accessors use
// typed-array views on the mapping instead of an addon call per access, so JIT-compiled code does the
// access itself, as one load or store instruction of that width: 3-4 ns on this host, against ~120 ns
// for a Node-API call. They are plain element loads and stores, because:
//   - Atomics.store would be one store too, but x86 V8 makes it an xchg, a locked read-modify-write:
//     the device would see a read of its register before each write;
//   - Atomics.load is a builtin call in TurboFan (~12 ns), not an instruction.
// The language lets an engine merge, drop or hoist plain accesses. Whether one does is a fact about
// that engine's optimiser, so it is proven, not assumed (Kernel.mmioDirect keeps other engines to
// the addon):
// test/vm/mmio-direct.test.ts counts what the device sees, access by access, in the interpreter and
// in TurboFan code, including back-to-back stores to one register and a polling loop.
// Ordering against DMA memory is the caller's to ask for: dmaWriteBarrier() between filling a buffer
// and the doorbell, dmaReadBarrier() between the status read and reading what the device wrote.
//
// A mapping is also memory another device's DMA can target (peer-to-peer): a context maps it like a
// DMA buffer. It holds the contexts that do, so that it never goes away under their mappings.
import { hex } from '../dma/buffer.js';
import { MappableMemory, type DmaMemory, type DmaRevoker } from '../dma/memory.js';
import { ClosedError, UsageError, type VfioError } from '../errors.js';
import type { Kernel } from '../sys/kernel.js';
import type { RegionInfo } from './regions.js';

export class RegionMapping extends MappableMemory implements DmaMemory, Disposable {
  readonly kind = 'mmio';
  readonly pageSize: number;
  /** the virtual address of the mapping: what a peer-to-peer DMA map takes */
  readonly address: bigint;
  private memory: ArrayBuffer | null;
  /** the typed-array views registers are accessed through, or null: every access is an addon call */
  private views: RegisterViews | null;
  private closedBy: (() => VfioError) | null = null;
  /** the DMA mappings of this memory, each with the context that can take it out */
  private readonly dmaHolders = new Map<object, DmaRevoker>();

  /** @internal use VfioDevice.mapRegion() */
  constructor(
    private readonly kernel: Kernel,
    readonly region: RegionInfo,
    /** offset of the mapping inside the region */
    readonly offset: bigint,
    memory: ArrayBuffer,
    readonly writable: boolean,
    private readonly onClose: (m: RegionMapping) => void,
    /** the device's name, for messages */
    private readonly deviceName = '',
    /** 'call' keeps every access an addon call even where views are proven */
    access: MmioAccessMode = 'auto',
  ) {
    super();
    this.memory = memory;
    this.pageSize = kernel.pageSize;
    this.address = kernel.addressOf(memory);
    this.views = access === 'auto' && kernel.mmioDirect(memory) ? new RegisterViews(memory) : null;
  }

  /** How register accessors reach the device: 'direct' (typed-array views) or 'call' (the addon). */
  get access(): 'direct' | 'call' {
    return this.views ? 'direct' : 'call';
  }

  get description(): string {
    return `the mapping of ${this.region.name}${this.deviceName ? ` of ${this.deviceName}` : ''} at ${hex(this.address)}`;
  }

  get freed(): boolean {
    return this.closed;
  }

  /** How many DMA mappings (peer-to-peer) target this mapping now. */
  get mappings(): number {
    return this.dmaHolders.size;
  }

  /** @internal a context maps it for DMA */
  retain(mapping: object, owner: DmaRevoker): void {
    this.live();
    this.dmaHolders.set(mapping, owner);
  }
  /** @internal that context unmapped it */
  release(mapping: object): void {
    this.dmaHolders.delete(mapping);
  }

  get size(): number {
    return this.memory?.byteLength ?? 0;
  }

  get closed(): boolean {
    return this.memory === null;
  }

  /**
   * The raw mapping, for bulk copies (a framebuffer, say). Views of it go empty when the mapping is
   * closed. Registers should go through read32()/write32() and friends, which keep their width.
   */
  get arrayBuffer(): ArrayBuffer {
    return this.live();
  }

  read8(offset: number): number {
    const v = this.views;
    return v ? v.u8[registerIndex(v, offset, 1)]! : this.kernel.mmioRead(this.live(), offset, 1);
  }
  read16(offset: number): number {
    const v = this.views;
    return v ? v.u16[registerIndex(v, offset, 2)]! : this.kernel.mmioRead(this.live(), offset, 2);
  }
  read32(offset: number): number {
    const v = this.views;
    return v ? v.u32[registerIndex(v, offset, 4)]! : this.kernel.mmioRead(this.live(), offset, 4);
  }
  read64(offset: number): bigint {
    const v = this.views;
    return v ? v.u64[registerIndex(v, offset, 8)]! : this.kernel.mmioRead(this.live(), offset, 8);
  }
  // A typed array's store converts the value as the masks below do (ToUint8, ToUint32, ToBigUint64).
  write8(offset: number, value: number): void {
    const v = this.writableViews();
    if (v) v.u8[registerIndex(v, offset, 1)] = value;
    else this.kernel.mmioWrite(this.live(), offset, 1, value & 0xff);
  }
  write16(offset: number, value: number): void {
    const v = this.writableViews();
    if (v) v.u16[registerIndex(v, offset, 2)] = value;
    else this.kernel.mmioWrite(this.live(), offset, 2, value & 0xffff);
  }
  write32(offset: number, value: number): void {
    const v = this.writableViews();
    if (v) v.u32[registerIndex(v, offset, 4)] = value;
    else this.kernel.mmioWrite(this.live(), offset, 4, value >>> 0);
  }
  write64(offset: number, value: bigint): void {
    const v = this.writableViews();
    if (v) v.u64[registerIndex(v, offset, 8)] = value;
    else this.kernel.mmioWrite(this.live(), offset, 8, BigInt.asUintN(64, value));
  }

  /**
   * Stores made before this (to DMA buffers) reach memory before the device sees any register store
   * made after it: call it between filling a buffer and writing the doorbell. x86 keeps stores in
   * order anyway (it is sfence there); arm64 does not (dmb oshst). As the kernel's dma_wmb().
   */
  dmaWriteBarrier(): void {
    this.kernel.dmaWriteBarrier();
  }

  /**
   * Loads made after this (from DMA buffers) see what the device wrote before the register load made
   * before it (a status saying the DMA is done). As the kernel's dma_rmb(): lfence, or dmb oshld.
   */
  dmaReadBarrier(): void {
    this.kernel.dmaReadBarrier();
  }

  /** Refuses a store to a read-only mapping; the views, or null where stores are addon calls (then live() checks closed). */
  private writableViews(): RegisterViews | null {
    if (!this.writable) throw new UsageError(`the mapping of ${this.region.name} is read-only`);
    return this.views;
  }

  private live(): ArrayBuffer {
    if (!this.memory) throw this.closedBy?.() ?? new ClosedError(`the mapping of ${this.region.name} is closed`);
    return this.memory;
  }

  /**
   * munmap; views of arrayBuffer go empty. Idempotent. Refused while a context maps it for DMA: unmap
   * that first. `why` (internal: the device is closing) says why later calls fail, and takes out the
   * DMA mappings of it, so that no device keeps access to a BAR its owner let go.
   */
  close(why?: () => VfioError): void {
    if (!this.memory) return;
    if (this.dmaHolders.size > 0) {
      if (!why) throw new UsageError(`${this.description} is still mapped for DMA (${this.dmaHolders.size} mapping(s)): unmap it first`);
      for (const [mapping, owner] of [...this.dmaHolders]) {
        try {
          owner.revoke(mapping);
        } catch {
          // the device is closing either way; a mapping the kernel would not take out stays until its context closes
        }
      }
      this.dmaHolders.clear();
    }
    this.closedBy = why ?? null;
    const memory = this.memory;
    this.memory = null;
    this.views = null;
    this.kernel.unmap(memory);
    this.onClose(this);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** 'auto': typed-array views where the kernel seam proves them; 'call': an addon call per access */
export type MmioAccessMode = 'auto' | 'call';

/** The element index of a register, as the addon's register_at checks it: in range and aligned. */
function registerIndex(v: RegisterViews, offset: number, width: number): number {
  if (!(typeof offset === 'number' && offset >= 0 && offset <= v.size - width && offset % width === 0)) {
    const e = new RangeError('register offset out of range or not aligned to its width') as RangeError & { code: string };
    e.code = 'ERR_OUT_OF_RANGE';
    throw e;
  }
  return offset / width;
}

/** One view per width over the whole mapping; unmap() detaches the buffer, and they go empty. */
class RegisterViews {
  readonly u8: Uint8Array;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  readonly u64: BigUint64Array;
  readonly size: number;
  constructor(memory: ArrayBuffer) {
    this.size = memory.byteLength;
    this.u8 = new Uint8Array(memory);
    this.u16 = new Uint16Array(memory, 0, memory.byteLength >>> 1);
    this.u32 = new Uint32Array(memory, 0, memory.byteLength >>> 2);
    this.u64 = new BigUint64Array(memory, 0, Math.floor(memory.byteLength / 8));
  }
}
