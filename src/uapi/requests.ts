// Every ioctl request under its C name (VFIO_DEVICE_GET_INFO, IOMMU_IOAS_MAP, ...), built from the
// tables in vfio.ts and iommufd.ts. The call layer (src/ioctl) issues a request by this name, which is
// also the step a failure names: the number and the name can never disagree, and the compiler knows
// every name a fallback rule or an error check may match on.
import { IOMMU } from './iommufd.js';
import { VFIO } from './vfio.js';

type Prefixed<T extends Record<string, number>, P extends string> = { readonly [K in keyof T & string as `${P}${K}`]: number };

function prefixed<T extends Record<string, number>, P extends string>(table: T, prefix: P): Prefixed<T, P> {
  return Object.fromEntries(Object.entries(table).map(([name, request]) => [`${prefix}${name}`, request])) as Prefixed<T, P>;
}

export const REQUESTS = { ...prefixed(VFIO, 'VFIO_'), ...prefixed(IOMMU, 'IOMMU_') };
export type RequestName = keyof typeof REQUESTS;
