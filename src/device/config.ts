// Typed views of PCI config space, read through the device's VFIO config region (vfio-pci
// virtualizes some of it: BARs, the MSI capability and some command bits).

export const PCI_CONFIG = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION: 0x08,
  CLASS: 0x09, // 3 bytes: prog-if, subclass, class
  HEADER_TYPE: 0x0e,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  CAPABILITY_LIST: 0x34,
} as const;

export const PCI_COMMAND = { IO: 0x1, MEMORY: 0x2, MASTER: 0x4, INTX_DISABLE: 0x400 } as const;
const PCI_STATUS_CAP_LIST = 0x10;

export interface PciIds {
  vendor: number;
  device: number;
  revision: number;
  /** 24 bits: class, subclass, programming interface */
  class: number;
  subsystemVendor: number;
  subsystem: number;
}

export interface PciCapability {
  id: number;
  offset: number;
}

type Read = (offset: number, width: 1 | 2 | 4) => number;

/** An id in zero-padded hex, as lspci prints them (1234:11e8, class 00ff00, 0000:00:10.0). */
export const hexId = (n: number, width: number): string => n.toString(16).padStart(width, '0');

export function readPciIds(read: Read): PciIds {
  return {
    vendor: read(PCI_CONFIG.VENDOR_ID, 2),
    device: read(PCI_CONFIG.DEVICE_ID, 2),
    revision: read(PCI_CONFIG.REVISION, 1),
    class: read(PCI_CONFIG.REVISION, 4) >>> 8,
    subsystemVendor: read(PCI_CONFIG.SUBSYSTEM_VENDOR_ID, 2),
    subsystem: read(PCI_CONFIG.SUBSYSTEM_ID, 2),
  };
}

/** The standard capability list (0x34), in order; a loop or a pointer out of bounds ends it. */
export function readCapabilities(read: Read): PciCapability[] {
  if ((read(PCI_CONFIG.STATUS, 2) & PCI_STATUS_CAP_LIST) === 0) return [];
  const caps: PciCapability[] = [];
  const seen = new Set<number>();
  for (let at = read(PCI_CONFIG.CAPABILITY_LIST, 1) & 0xfc; at >= 0x40 && at < 0x100 && !seen.has(at); ) {
    seen.add(at);
    caps.push({ id: read(at, 1), offset: at });
    at = read(at + 1, 1) & 0xfc;
  }
  return caps;
}
