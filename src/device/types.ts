// What a bound device is described by: its info and route report, the options openDevice takes, and
// the events it emits when the host wants it back or it reports an error.
import type { Kernel } from '../sys/kernel.js';
import type { Logger } from '../log.js';
import type { RouteName } from '../routes/names.js';
import type { FallbackReport, RoutePolicy } from '../routes/select.js';
import type { PassedFds } from '../routes/passed-fds.js';
import type { BeforeBindHook, IommuContext } from '../routes/route.js';

/** VFIO_DEVICE_GET_INFO, decoded. */
export interface DeviceInfo {
  /** VFIO_DEVICE_FLAGS_* names without the prefix: PCI, RESET, CAPS, ... */
  flags: string[];
  rawFlags: number;
  regions: number;
  irqs: number;
}

/** What `bind --json` prints: the route taken and why. */
export interface RouteReport {
  device: string;
  route: RouteName;
  nodes: Record<string, string>;
  ids: Record<string, number | string>;
  fallback: FallbackReport | null;
  device_info: { flags: string[]; regions: number; irqs: number };
}

export interface OpenDeviceOptions {
  /** auto (default): iommufd, falling back to legacy where that route is unavailable */
  route?: RoutePolicy;
  /** join this IOMMU context (so several devices share one IOAS or container); its route decides */
  context?: IommuContext;
  /** called with the cdev fd (iommufd) or group fd (legacy) before bind: KVM_DEV_VFIO_FILE_ADD goes here */
  beforeBind?: BeforeBindHook;
  logger?: Logger;
  /** the system-call seam; tests inject a fake */
  kernel?: Kernel;
  /**
   * Nodes opened by someone else (an unprivileged VMM's privileged parent): { device, iommufd } or
   * { group, container }. Each is checked with fstat before use; they decide the route.
   */
  fds?: PassedFds;
  /**
   * close the passed fds when the device closes (default false: they stay the caller's). A failed
   * open never closes them, either way.
   */
  ownFds?: boolean;
  /**
   * With no 'request' listener, how long after the host asks for the device back it is released
   * (default 100 ms): never long enough to keep the host's unbind waiting.
   */
  requestGraceMs?: number;
}

/** The host wants the device back (an unbind, a remove, a hot-unplug): release() it, soon. */
export interface DeviceRequest {
  device: string;
  /** how many times the host has asked so far (vfio-pci asks again every 10 s) */
  count: number;
  /** closes the device (as close(), with later calls saying why) */
  release(): void;
}

export interface VfioDeviceEvents {
  /** the host asked for the device back; with no listener it is released after requestGraceMs */
  request: [DeviceRequest];
  /** the device reported an error (AER, through vfio-pci's error handler); not Node's 'error' event */
  'device-error': [{ device: string; count: number }];
  /** the device was released at the host's request, and is closed */
  released: [{ device: string; reason: string }];
}
