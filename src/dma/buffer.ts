// DMA buffers: memory a device may read and write through the IOMMU. Only these can be mapped: an
// ordinary Buffer may share its page with unrelated data, and the garbage collector could free or move
// memory the device still writes to. A mapped buffer stays alive until every context unmaps it.
import { ClosedError, KernelError, UsageError } from '../errors.js';
import { isSysError, type Kernel } from '../sys/kernel.js';
import { HUGE_PAGE_SIZE, PAGE_SIZE } from '../sys/page-size.js';
import { MappableMemory, type DmaMemory, type DmaRevoker } from './memory.js';

export { HUGE_PAGE_SIZE, PAGE_SIZE };

export interface DmaBufferOptions {
  /** back the buffer with huge pages (HUGE_PAGE_SIZE; they must be reserved: /proc/sys/vm/nr_hugepages) */
  hugePages?: boolean;
}

export class DmaBuffer extends MappableMemory implements DmaMemory, Disposable {
  readonly kind = 'ram';
  /** a device may always write its DMA buffers (a mapping may still be read-only: map({ writable: false })) */
  readonly writable = true;
  /** bytes, a multiple of the page size */
  readonly size: number;
  /** the virtual address the IOMMU maps from */
  readonly address: bigint;
  readonly hugePages: boolean;
  private memory: ArrayBuffer | null;
  private mapCount = 0;

  /** @internal use allocDmaBuffer() */
  constructor(private readonly kernel: Kernel, memory: ArrayBuffer, hugePages: boolean) {
    super();
    this.memory = memory;
    this.size = memory.byteLength;
    this.hugePages = hugePages;
    this.address = kernel.addressOf(memory);
  }

  get description(): string {
    return `the DMA buffer at ${hex(this.address)}`;
  }

  get pageSize(): number {
    return this.hugePages ? this.kernel.hugePageSize : this.kernel.pageSize;
  }

  get freed(): boolean {
    return this.memory === null;
  }

  /** The memory, for reading and writing from JavaScript. Views of it go empty when it is freed. */
  get arrayBuffer(): ArrayBuffer {
    if (!this.memory) throw new ClosedError('the DMA buffer was freed');
    return this.memory;
  }

  /** A Buffer view of the whole memory. */
  get bytes(): Buffer {
    return Buffer.from(this.arrayBuffer);
  }

  /** How many IOMMU contexts map this buffer now. */
  get mappings(): number {
    return this.mapCount;
  }

  /** @internal a context maps it (a buffer never goes away under a mapping: free() refuses) */
  retain(_mapping: object, _owner: DmaRevoker): void {
    if (!this.memory) throw new ClosedError('the DMA buffer was freed');
    this.mapCount++;
  }
  /** @internal a context unmapped it */
  release(_mapping: object): void {
    this.mapCount = Math.max(0, this.mapCount - 1);
  }

  /** Unmaps the memory from this process. Refused while a context still maps it for a device. */
  free(): void {
    if (!this.memory) return;
    if (this.mapCount > 0) {
      throw new UsageError(`the DMA buffer at ${hex(this.address)} is still mapped for DMA in ${this.mapCount} context(s): unmap it first`);
    }
    this.kernel.unmap(this.memory);
    this.memory = null;
  }

  [Symbol.dispose](): void {
    this.free();
  }
}

/** An address or size as the error messages print it. */
export const hex = (n: bigint): string => `0x${n.toString(16)}`;

/** Allocates page-aligned, populated anonymous memory for DMA (size rounded up to whole pages). */
export function allocDmaBuffer(kernel: Kernel, size: number, options: DmaBufferOptions = {}): DmaBuffer {
  const hugePages = options.hugePages ?? false;
  if (!Number.isSafeInteger(size) || size <= 0) throw new UsageError(`DMA buffer size ${size} is not a positive integer`);
  const page = hugePages ? kernel.hugePageSize : kernel.pageSize;
  const rounded = Math.ceil(size / page) * page;
  try {
    return new DmaBuffer(kernel, kernel.allocDma(rounded, hugePages), hugePages);
  } catch (e) {
    if (!isSysError(e)) throw e;
    const hint = hugePages && e.code === 'ENOMEM'
      ? 'reserve huge pages first (echo N > /proc/sys/vm/nr_hugepages), or allocate without hugePages'
      : undefined;
    throw new KernelError(`cannot allocate a ${rounded}-byte DMA buffer${hugePages ? ' of huge pages' : ''}: ${e.code}`, {
      errno: e.code, step: 'mmap', ...(hint ? { hint } : {}), cause: e,
    });
  }
}
