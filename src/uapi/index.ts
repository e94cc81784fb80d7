// The kernel ABI, in one place.
export * from './ioctl.js';
export * from './struct.js';
export * from './vfio.js';
export * from './iommufd.js';
export * from './migration.js';
export * from './requests.js';
