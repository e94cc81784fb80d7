// A device region mapped into the process (a BAR's MMIO). Registers are read and written by addon
// accessors that make exactly one load or store of the asked width: devices answer only some widths
// (edu: 4 and 8 bytes), and a JavaScript DataView may split an access into bytes.
//
// A mapping is also memory another device's DMA can target (peer-to-peer): a context maps it like a
// DMA buffer. It holds the contexts that do, so that it never goes away under their mappings.
import { hex, PAGE_SIZE } from '../dma/buffer.js';
import { MappableMemory, type DmaMemory, type DmaRevoker } from '../dma/memory.js';
import { ClosedError, UsageError, type VfioError } from '../errors.js';
import type { Kernel } from '../sys/kernel.js';
import type { RegionInfo } from './regions.js';

export class RegionMapping extends MappableMemory implements DmaMemory, Disposable {
  readonly kind = 'mmio';
  readonly pageSize = PAGE_SIZE;
  /** the virtual address of the mapping: what a peer-to-peer DMA map takes */
  readonly address: bigint;
  private memory: ArrayBuffer | null;
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
  ) {
    super();
    this.memory = memory;
    this.address = kernel.addressOf(memory);
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
    return this.kernel.mmioRead(this.live(), offset, 1);
  }
  read16(offset: number): number {
    return this.kernel.mmioRead(this.live(), offset, 2);
  }
  read32(offset: number): number {
    return this.kernel.mmioRead(this.live(), offset, 4);
  }
  read64(offset: number): bigint {
    return this.kernel.mmioRead(this.live(), offset, 8);
  }
  write8(offset: number, value: number): void {
    this.kernel.mmioWrite(this.writableMemory(), offset, 1, value & 0xff);
  }
  write16(offset: number, value: number): void {
    this.kernel.mmioWrite(this.writableMemory(), offset, 2, value & 0xffff);
  }
  write32(offset: number, value: number): void {
    this.kernel.mmioWrite(this.writableMemory(), offset, 4, value >>> 0);
  }
  write64(offset: number, value: bigint): void {
    this.kernel.mmioWrite(this.writableMemory(), offset, 8, BigInt.asUintN(64, value));
  }

  private live(): ArrayBuffer {
    if (!this.memory) throw this.closedBy?.() ?? new ClosedError(`the mapping of ${this.region.name} is closed`);
    return this.memory;
  }

  private writableMemory(): ArrayBuffer {
    if (!this.writable) throw new UsageError(`the mapping of ${this.region.name} is read-only`);
    return this.live();
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
    this.kernel.unmap(memory);
    this.onClose(this);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
