// Opening a device: bind it by the route policy (routes/select.ts), then wrap the binding in a
// VfioDevice; if the wrapping fails (its first VFIO_DEVICE_GET_INFO), the binding is released.
import type { DeviceLocation } from '../discovery/locate.js';
import { kernelRefused, StepError } from '../errors.js';
import { silentLogger } from '../log.js';
import { bindDevice } from '../routes/select.js';
import { closeQuietly } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import { VfioDevice } from './device.js';
import type { OpenDeviceOptions } from './types.js';

/** @internal binds by the policy and wraps the result; closes everything if the device info fails. */
export function bindAndWrap(loc: DeviceLocation, kernel: Kernel, options: OpenDeviceOptions): VfioDevice {
  const log = (options.logger ?? silentLogger).child({ device: loc.name });
  const bound = bindDevice(loc, {
    kernel,
    log,
    policy: options.route ?? 'auto',
    ...(options.context ? { context: options.context } : {}),
    ...(options.beforeBind ? { beforeBind: options.beforeBind } : {}),
    ...(options.fds ? { passed: { fds: options.fds } } : {}),
  });
  const passed = options.fds && options.ownFds ? Object.values(options.fds).filter((fd): fd is number => fd !== undefined) : [];
  const afterClose = passed.length > 0 ? () => passed.forEach((fd) => closeQuietly(kernel, fd)) : undefined;
  try {
    const device = new VfioDevice(loc, kernel, log, bound, afterClose, options.requestGraceMs);
    log.info({ report: device.report }, 'bound');
    return device;
  } catch (e) {
    bound.hold.release();
    throw e instanceof StepError ? kernelRefused(e, `${loc.name}, which is bound`) : e;
  }
}
