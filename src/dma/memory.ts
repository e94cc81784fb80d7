// What an IOMMU context can map for a device's DMA: a DMA buffer (RAM from allocDmaBuffer) or a
// region mapping of another device (its BAR's MMIO, for peer-to-peer DMA). Both extend MappableMemory,
// so that the mapping code accepts them without importing the device layer, and refuses anything else.
export interface DmaMemory {
  /** 'ram': a DMA buffer; 'mmio': a device's BAR mapped into the process */
  readonly kind: 'ram' | 'mmio';
  /** the virtual address the IOMMU maps from */
  readonly address: bigint;
  /** bytes, a multiple of pageSize */
  readonly size: number;
  readonly pageSize: number;
  /** freed (a buffer) or closed (a region mapping): it can no longer be mapped */
  readonly freed: boolean;
  /** the process may write it, so a device may too (a read-only BAR mapping: only read) */
  readonly writable: boolean;
  /** what it is, for error messages */
  readonly description: string;
  /**
   * A context maps it (`mapping`). Memory that goes away under a mapping (a BAR mapping closed with its
   * device) calls `owner.revoke(mapping)` first, so no device keeps DMA access to it.
   */
  retain(mapping: object, owner: DmaRevoker): void;
  /** That context unmapped it. */
  release(mapping: object): void;
}

/** What holds a mapping and can take it out again (a context's DmaMappings). */
export interface DmaRevoker {
  revoke(mapping: object): void;
}

/**
 * The base of every DmaMemory (DmaBuffer, RegionMapping): the mapping code accepts instances of it
 * only. A class check is one prototype walk; a WeakSet brand cost ~10 us per buffer in a TCG guest.
 */
export abstract class MappableMemory {}

export function isDmaMemory(x: unknown): x is DmaMemory {
  return x instanceof MappableMemory;
}
