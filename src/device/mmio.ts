// A device region mapped into the process (a BAR's MMIO). Registers are read and written by addon
// accessors that make exactly one load or store of the asked width: devices answer only some widths
// (edu: 4 and 8 bytes), and a JavaScript DataView may split an access into bytes.
import { ClosedError, UsageError, type VfioError } from '../errors.js';
import type { Kernel } from '../sys/kernel.js';
import type { RegionInfo } from './regions.js';

export class RegionMapping implements Disposable {
  private memory: ArrayBuffer | null;
  private closedBy: (() => VfioError) | null = null;

  /** @internal use VfioDevice.mapRegion() */
  constructor(
    private readonly kernel: Kernel,
    readonly region: RegionInfo,
    /** offset of the mapping inside the region */
    readonly offset: bigint,
    memory: ArrayBuffer,
    readonly writable: boolean,
    private readonly onClose: (m: RegionMapping) => void,
  ) {
    this.memory = memory;
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

  /** munmap; views of arrayBuffer go empty. Idempotent. `why` (internal) says why later calls fail. */
  close(why?: () => VfioError): void {
    if (!this.memory) return;
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
