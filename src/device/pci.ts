// The PCI facet of a bound device: config space through its VFIO config region (vfio-pci virtualizes
// some of it: BARs, the MSI capability, some command bits), the ids and capabilities in it, and the
// command register. Generic device operations stay in device.ts, as libvfn keeps vfio/pci.c apart
// from vfio/device.c, so that other buses get a facet of their own.
import { VFIO_PCI_REGION } from '../uapi/vfio.js';
import { PCI_CONFIG, readCapabilities, readPciIds, type PciCapability, type PciIds } from './config.js';

/** How the facet reaches the device: pread/pwrite of one of its regions. */
export interface RegionAccess {
  readRegion(which: number, offset: number, length: number): Buffer;
  writeRegion(which: number, offset: number, data: Buffer): void;
}

export class PciFunction {
  /** @internal VfioDevice.pci */
  constructor(private readonly device: RegionAccess) {}

  /** Config space, little-endian, by access width in bytes. */
  readConfig(offset: number, width: 1 | 2 | 4): number {
    const buf = this.device.readRegion(VFIO_PCI_REGION.CONFIG, offset, width);
    return width === 1 ? buf.readUInt8(0) : width === 2 ? buf.readUInt16LE(0) : buf.readUInt32LE(0);
  }

  writeConfig(offset: number, width: 1 | 2 | 4, value: number): void {
    const buf = Buffer.alloc(width);
    if (width === 1) buf.writeUInt8(value);
    else if (width === 2) buf.writeUInt16LE(value);
    else buf.writeUInt32LE(value >>> 0);
    this.device.writeRegion(VFIO_PCI_REGION.CONFIG, offset, buf);
  }

  /** Vendor, device, revision, class and subsystem ids. */
  ids(): PciIds {
    return readPciIds((offset, width) => this.readConfig(offset, width));
  }

  /** The standard capability list. */
  capabilities(): PciCapability[] {
    return readCapabilities((offset, width) => this.readConfig(offset, width));
  }

  /** The command register. */
  command(): number {
    return this.readConfig(PCI_CONFIG.COMMAND, 2);
  }

  /** Sets bits of the command register (MEMORY, MASTER for DMA, ...) and clears others as given. */
  setCommand(set: number, clear = 0): void {
    this.writeConfig(PCI_CONFIG.COMMAND, 2, (this.command() | set) & ~clear & 0xffff);
  }
}
