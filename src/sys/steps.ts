// The names of the steps a route or a device operation takes. A failure (StepError) names its step,
// and the route policy (the fallback table) and the error explanations match on these names: the
// compiler checks every one. An ioctl's step is its request's C name; the rest are the few steps
// that are not one ioctl.
import type { RequestName } from '../uapi/requests.js';
import type { VFIO_DEVICE_FEATURE_INDEX } from '../uapi/vfio.js';

export type Step =
  | RequestName
  /** a VFIO_DEVICE_FEATURE request, by its feature's C name */
  | `VFIO_DEVICE_FEATURE_${keyof typeof VFIO_DEVICE_FEATURE_INDEX}`
  /** the context node of each route */
  | 'open /dev/iommu'
  | 'open /dev/vfio/vfio'
  /** the iommufd route's device side: sysfs vfio-dev/vfioN/dev, then its node and st_rdev */
  | 'find cdev'
  | 'open cdev'
  | 'check cdev'
  /** the legacy route's device side */
  | 'find group'
  | 'open group'
  /** this process's own record of what it holds (routes/route.ts) */
  | 'claim device'
  | 'claim group'
  /** fds handed to us, checked before use (routes/passed-fds.ts) */
  | `check ${'device' | 'iommufd' | 'group' | 'container'} fd`
  /** device operations that are not ioctls: region access by name, eventfds, scratch memory */
  | `${'read' | 'write' | 'mmap'} ${string}`
  | 'eventfd'
  /** addon memory a request points into (a list of ranges, a bitmap) */
  | `allocate ${string}`
  /** the other steps of a migration (the data fd's stream, reading the state back) */
  | `migration ${string}`;
