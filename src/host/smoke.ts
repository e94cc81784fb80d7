// `vfio-bind smoke`: the CI runner's question, "can this device be assigned, by which route?",
// answered by doing it: bind, read the ids from config space, list regions and IRQs, map and unmap one
// DMA page (not on noiommu), close.
import { hexId } from '../device/config.js';
import { bindAndWrap } from '../device/open.js';
import { locateDevice } from '../discovery/locate.js';
import { allocDmaBuffer } from '../dma/buffer.js';
import { ExitCode, VfioError, type ExitCodeValue } from '../errors.js';
import type { RouteName } from '../routes/names.js';
import type { Logger } from '../log.js';
import type { RoutePolicy } from '../routes/select.js';
import type { Kernel } from '../sys/kernel.js';

export interface SmokeResult {
  device: string;
  ok: boolean;
  route: RouteName | null;
  /** vendor:device from config space */
  ids: string | null;
  regions: number | null;
  irqs: number | null;
  /** the IOVA the test page was mapped at, 'skipped (noiommu)', or null when not reached */
  dma: string | null;
  error: { kind: string; message: string; hint: string | null; exit_code: ExitCodeValue } | null;
}

export function smokeTest(kernel: Kernel, spec: string, options: { route?: RoutePolicy; logger?: Logger } = {}): SmokeResult {
  const result: SmokeResult = { device: spec, ok: false, route: null, ids: null, regions: null, irqs: null, dma: null, error: null };
  try {
    const loc = locateDevice(kernel, spec);
    result.device = loc.name;
    const device = bindAndWrap(loc, kernel, { route: options.route ?? 'auto', ...(options.logger ? { logger: options.logger } : {}) });
    try {
      result.route = device.route;
      if (device.info().flags.includes('PCI')) {
        const ids = device.pciIds();
        result.ids = `${hexId(ids.vendor, 4)}:${hexId(ids.device, 4)}`;
      }
      result.regions = device.regions().filter((r) => r.size > 0n).length;
      result.irqs = device.irqs().filter((i) => i.count > 0).length;
      if (device.context.dmaUnavailable()?.includes('noiommu')) {
        result.dma = 'skipped (noiommu)';
      } else {
        const page = allocDmaBuffer(kernel, 4096);
        try {
          const m = device.context.map(page);
          result.dma = `0x${m.iova.toString(16)}`;
          device.context.unmap(m);
        } finally {
          page.free();
        }
      }
      result.ok = true;
    } finally {
      device.close();
    }
  } catch (e) {
    if (!(e instanceof VfioError)) throw e;
    result.error = { kind: e.kind, message: e.message, hint: e.hint ?? null, exit_code: e.exitCode };
  }
  return result;
}

/** The exit status for a set of results: 0, or the first failure's. */
export function smokeExitCode(results: SmokeResult[]): ExitCodeValue {
  return results.find((r) => !r.ok)?.error?.exit_code ?? ExitCode.OK;
}
