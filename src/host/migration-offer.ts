// What doctor can say, without opening anything, about a device's migration and the dirty tracking
// around it: VFIO's debugfs lists a migration directory for each registered device whose driver has
// migration ops (drivers/vfio/debugfs.c); the device's IOMMU unit says whether it has dirty bits
// (VT-d: second-level A/D, ecap SLADS, used in scalable mode, SMTS; virtio-iommu: none); the legacy
// route's type1 reports every mapped page dirty unless the device's driver pins pages.
import { readOrNull, tryReadlinkTail, type DeviceLocation } from '../discovery/locate.js';
import type { RouteName } from '../routes/names.js';
import type { Kernel } from '../sys/kernel.js';

export interface MigrationOffer {
  /** true or false from debugfs; null where debugfs is not mounted or not readable */
  migration: boolean | null;
  /** the IOMMU's dirty tracking: true, false, or null where this cannot tell */
  iommuDirty: boolean | null;
  lines: string[];
}

const ECAP_SMTS = 1n << 43n;
const ECAP_SLADS = 1n << 45n;

export function migrationOffer(kernel: Kernel, loc: DeviceLocation, route: RouteName | null): MigrationOffer {
  const lines: string[] = [];
  const debugfs = `/sys/kernel/debug/vfio/${loc.name}`;
  let migration: boolean | null = null;
  if (kernel.exists(`${debugfs}/migration`)) {
    migration = true;
    lines.push(`${debugfs}/migration exists: its driver has VFIO migration (\`vfio-bind info\` shows which states)`);
  } else if (kernel.exists(debugfs)) {
    migration = false;
    lines.push(`${debugfs} has no migration directory: its driver has no VFIO migration`);
  } else {
    lines.push(`${debugfs} is not there (debugfs not mounted, not readable, or the device not VFIO's): \`vfio-bind info\` probes migration`);
  }
  let iommuDirty: boolean | null = null;
  if (loc.bus === 'mdev') {
    lines.push('an mdev has no IOMMU of its own: dirty pages come from its driver (device DMA logging, or type1 page pinning)');
  } else {
    const unit = tryReadlinkTail(kernel, `${loc.sysfsPath}/iommu`);
    if (!unit) lines.push(`${loc.sysfsPath}/iommu is absent: no IOMMU translates this device`);
    const ecap = unit ? readOrNull(kernel, `/sys/class/iommu/${unit}/intel-iommu/ecap`) : null;
    if (unit && ecap !== null && /^[0-9a-f]+$/i.test(ecap)) {
      const e = BigInt(`0x${ecap}`);
      iommuDirty = (e & ECAP_SLADS) !== 0n && (e & ECAP_SMTS) !== 0n;
      lines.push(`VT-d ${unit}: ecap 0x${ecap}: ${iommuDirty ? 'second-level A/D bits in scalable mode: IOMMU dirty tracking on the iommufd route (a DIRTY_TRACKING HWPT)' : `no ${(e & ECAP_SLADS) === 0n ? 'second-level A/D bits (SLADS)' : 'scalable mode (SMTS)'}: no IOMMU dirty tracking`}`);
    } else if (unit && /virtio/.test(readOrNull(kernel, `/sys/class/iommu/${unit}/device/modalias`) ?? unit)) {
      iommuDirty = false;
      lines.push(`${unit} is a virtio-iommu: no IOMMU dirty tracking`);
    } else if (unit) {
      lines.push(`${unit}: this cannot tell its dirty tracking without a bind (IOMMU_GET_HW_INFO on the iommufd route)`);
    }
  }
  if (route === 'legacy') lines.push('the legacy route\'s type1 reports every mapped page dirty unless the device\'s driver pins pages');
  return { migration, iommuDirty, lines };
}
