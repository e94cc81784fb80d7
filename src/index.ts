// vfio-bind's public API.
import { locateDevice, type DeviceLocation } from './discovery/locate.js';
import type { OpenDeviceOptions, VfioDevice } from './device/device.js';
import { bindAndWrap } from './device/open.js';
import { NativeKernel } from './sys/native-kernel.js';
import type { Kernel } from './sys/kernel.js';
import { ROUTES } from './routes/index.js';
import { ROUTE_NAMES, type RouteName } from './routes/names.js';
import type { IommuContext } from './routes/route.js';
import { checkRoutePolicy } from './routes/select.js';
import { silentLogger, type Logger } from './log.js';
import { UsageError } from './errors.js';
import { allocDmaBuffer as allocBuffer, type DmaBuffer, type DmaBufferOptions } from './dma/buffer.js';

let defaultKernel: Kernel | undefined;
/** The real kernel, through the addon (loaded on first use). */
export function nativeKernel(): Kernel {
  return (defaultKernel ??= new NativeKernel());
}

/**
 * Opens and binds a device: a PCI address, a sysfs path, /dev/vfio/devices/vfioN or an mdev UUID.
 * The route follows options.route (auto: iommufd, else legacy where iommufd is unavailable) or the
 * given context. The result reports the route taken and why; close() it (or `using` it) when done.
 */
export function openDevice(spec: string, options: OpenDeviceOptions = {}): VfioDevice {
  if (options.route !== undefined) checkRoutePolicy(options.route); // before looking for the device
  const kernel = options.kernel ?? nativeKernel();
  return bindAndWrap(locateDevice(kernel, spec), kernel, options);
}

/**
 * Creates an empty IOMMU context of one route, for several devices to share (options.context).
 * Devices bound into it close when it closes.
 */
export function createContext(route: RouteName, options: { logger?: Logger; kernel?: Kernel } = {}): IommuContext {
  if (!ROUTE_NAMES.includes(route)) throw new UsageError(`unknown route "${String(route)}"`, { hint: `a context's route is one of ${ROUTE_NAMES.join(', ')}` });
  return ROUTES[route].open(options.kernel ?? nativeKernel(), options.logger ?? silentLogger);
}

/**
 * Allocates memory a device may DMA to: page-aligned, populated, never moved or freed by the garbage
 * collector while a context maps it. Map it with context.map() (device.context for a device's own).
 */
export function allocDmaBuffer(size: number, options: DmaBufferOptions & { kernel?: Kernel } = {}): DmaBuffer {
  return allocBuffer(options.kernel ?? nativeKernel(), size, options);
}

/** Where a device is and what the kernel exposes for it, without opening anything. */
export function locate(spec: string, options: { kernel?: Kernel } = {}): DeviceLocation {
  return locateDevice(options.kernel ?? nativeKernel(), spec);
}

export { listDevices } from './discovery/locate.js';
export { moveToVfio, restoreDriver, vfioUsers, type DriverChange, type DriverOptions } from './host/driver.js';
export { doctor, type DoctorReport, type Check, type CheckStatus } from './host/doctor.js';
export { smokeTest, type SmokeResult } from './host/smoke.js';
export { predictRoute, type RoutePrediction } from './routes/select.js';
export type { PassedFds } from './routes/passed-fds.js';
export type { DeviceLocation, GroupLocation, CdevLocation, GroupMember } from './discovery/locate.js';
export { parseDeviceSpec, type DeviceSpec } from './discovery/spec.js';
export { VfioDevice, type DeviceInfo, type RouteReport, type OpenDeviceOptions, type HotResetDevice, type DeviceRequest, type VfioDeviceEvents } from './device/device.js';
export { PciFunction } from './device/pci.js';
export type { MigrationSupport, MigrationFlag } from './device/migration.js';
export { DeviceDmaLogging, DmaLog, DMA_LOG_MAX_RANGES, type LogRange } from './device/dma-logging.js';
export { DirtyBitmap } from './dma/dirty.js';
export type { RouteName } from './routes/names.js';
export { ROUTES, visibleRoutes } from './routes/index.js';
export type { RouteDescriptor } from './routes/route.js';
export type { RegionInfo } from './device/regions.js';
export { RegionMapping, type MmioAccessMode } from './device/mmio.js';
export { IrqSet, IrqVector, type IrqInfo } from './device/irqs.js';
export { PCI_COMMAND, PCI_CONFIG, type PciIds, type PciCapability } from './device/config.js';
export { DmaBuffer, PAGE_SIZE, HUGE_PAGE_SIZE, type DmaBufferOptions } from './dma/buffer.js';
export type { DmaBatchEntry, DmaMapping, DmaMapOptions } from './dma/mappings.js';
export type { DmaMemory } from './dma/memory.js';
export type { IovaRange } from './dma/iova.js';
export { IommuContext, type BeforeBindHook } from './routes/route.js';
export { IommufdContext } from './routes/iommufd.js';
export { HwPagetable, type IommuHwInfo, type HwCapability } from './routes/iommufd-hwpt.js';
export { ContainerContext } from './routes/legacy.js';
export { Type1DirtyTracker } from './routes/type1-dirty.js';
export { FALLBACK_TABLE, ROUTE_POLICIES, type RoutePolicy, type FallbackReport, type FallbackRule } from './routes/select.js';
export * from './errors.js';
export type { Kernel, FileStat } from './sys/kernel.js';
export type { Logger, LogLevel } from './log.js';
