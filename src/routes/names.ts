// The routes' names: iommufd (/dev/iommu + the device's cdev) and legacy (container + group). Each
// route's descriptor (routes/index.ts) says everything else about it.
export const ROUTE_NAMES = ['iommufd', 'legacy'] as const;
export type RouteName = (typeof ROUTE_NAMES)[number];
