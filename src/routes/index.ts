// The routes, by name: each backend's descriptor (filled in at the bottom of routes/iommufd.ts and
// routes/legacy.ts). The policy, doctor, fd passing and `list` look a route up here instead of
// branching on its name or writing its nodes out again.
import type { DeviceLocation } from '../discovery/locate.js';
import type { Kernel } from '../sys/kernel.js';
import { IOMMUFD_ROUTE } from './iommufd.js';
import { LEGACY_ROUTE } from './legacy.js';
import { ROUTE_NAMES, type RouteName } from './names.js';
import type { RouteDescriptor } from './route.js';

export const ROUTES: Readonly<Record<RouteName, RouteDescriptor>> = { iommufd: IOMMUFD_ROUTE, legacy: LEGACY_ROUTE };

/** Which routes' nodes exist for a located device (nothing is opened: a bind may still be refused). */
export function visibleRoutes(kernel: Kernel, loc: DeviceLocation): Record<RouteName, boolean> {
  return Object.fromEntries(ROUTE_NAMES.map((name) => [name, ROUTES[name].visible(kernel, loc)])) as Record<RouteName, boolean>;
}
