// A device holder for requests.test.ts (commands over IPC): opens devices through the library with or
// without a 'request' listener, arms MSI and runs a DMA loop on them, and reports what the host's
// requests did: the events seen, the errors later calls got, and the fds and mappings left.
import { allocDmaBuffer, createContext, openDevice, type DmaBuffer, type IommuContext, type RoutePolicy, type VfioDevice } from '../../src/index.js';
import { loadAddon } from '../../src/sys/native-kernel.js';
import { encode } from '../../src/uapi/struct.js';
import { VFIO, VFIO_IRQ_SET, VFIO_PCI_IRQ, vfio_irq_set } from '../../src/uapi/vfio.js';
import { counts } from './counts.js';
import { errorRecord, serveCommands, type ErrorRecord } from './helpers.js';

const devices = new Map<string, VfioDevice>();
const events: { device: string; event: string; count?: number; at: number }[] = [];
let context: IommuContext | null = null;
let baseline = counts();

/** What a DMA loop on a device met once the device was gone: every error, by signature. */
const loops = new Map<string, { maps: number; errors: Record<string, number>; stop: boolean }>();

function record(device: VfioDevice, listen: string): void {
  device.on('released', () => events.push({ device: device.name, event: 'released', at: Date.now() }));
  device.on('device-error', (e) => events.push({ device: device.name, event: 'device-error', count: e.count, at: Date.now() }));
  if (listen === 'release') {
    device.on('request', (r) => {
      events.push({ device: device.name, event: 'request', count: r.count, at: Date.now() });
      r.release();
    });
  } else if (listen === 'ignore') {
    device.on('request', (r) => events.push({ device: device.name, event: 'request', count: r.count, at: Date.now() }));
  }
}

const signature = (e: ErrorRecord): string => `${e.class}(${e.exitCode})`;

serveCommands({
  baseline: () => {
    baseline = counts();
    return { counts: baseline };
  },
  /** a context shared by the devices opened with `shared: true` */
  context: (m) => {
    context = createContext(m.route as 'iommufd' | 'legacy');
    return { route: context.route };
  },
  open: (m) => {
    const spec = String(m.spec);
    const device = openDevice(spec, { route: (m.route as RoutePolicy) ?? 'auto', ...(m.shared && context ? { context } : {}) });
    record(device, String(m.listen ?? 'none'));
    devices.set(spec, device);
    return { route: device.route, channels: device.hostChannels, name: device.name };
  },
  /** MSI on an eventfd, and one waiter on it (what a VMM has armed) */
  msi: (m) => {
    const device = devices.get(String(m.spec))!;
    device.setCommand(0x6);
    const vector = device.enableIrqs('MSI').vector(0);
    vector.wait().then(() => {}, (e: unknown) => events.push({ device: device.name, event: `msi wait: ${signature(errorRecord(e))}`, at: Date.now() }));
    return {};
  },
  /** maps and unmaps a page in a loop on the event loop until stopped, counting the errors once the device is gone */
  dmaLoop: (m) => {
    const device = devices.get(String(m.spec))!;
    const buf: DmaBuffer = allocDmaBuffer(4096);
    const state = { maps: 0, errors: {} as Record<string, number>, stop: false };
    loops.set(device.name, state);
    const step = (): void => {
      if (state.stop) {
        buf.free();
        return;
      }
      try {
        const mapping = device.context.map(buf, { limit: 1n << 28n });
        device.context.unmap(mapping);
        state.maps++;
      } catch (e) {
        const s = signature(errorRecord(e));
        state.errors[s] = (state.errors[s] ?? 0) + 1;
        if (state.errors[s]! >= 3) state.stop = true; // seen enough: the device is gone
      }
      setImmediate(step);
    };
    setImmediate(step);
    return {};
  },
  /** vfio-pci's loopback of the ERR trigger (DATA_NONE, count 1): signals the armed eventfd as an AER error would */
  loopbackErr: (m) => {
    const device = devices.get(String(m.spec))!;
    const flags = VFIO_IRQ_SET.DATA_NONE | VFIO_IRQ_SET.ACTION_TRIGGER;
    loadAddon().ioctl(device.fd, VFIO.DEVICE_SET_IRQS, encode(vfio_irq_set, { argsz: vfio_irq_set.size, flags, index: VFIO_PCI_IRQ.ERR, start: 0, count: 1 }));
    return {};
  },
  /** what a later call on a device (and its context) answers */
  probe: (m) => {
    const device = devices.get(String(m.spec))!;
    const answer = (fn: () => unknown): string => {
      try {
        fn();
        return 'ok';
      } catch (e) {
        const r = errorRecord(e);
        return `${signature(r)}: ${r.message}`;
      }
    };
    return {
      closed: device.closed,
      config: answer(() => device.readConfig(0, 2)),
      map: answer(() => device.context.iovaRanges()),
      contextClosed: device.context.closed,
    };
  },
  status: () => ({
    events,
    loops: Object.fromEntries(loops),
    counts: counts(),
    baseline,
  }),
  close: (m) => {
    devices.get(String(m.spec))?.close();
    devices.delete(String(m.spec));
    return {};
  },
  exit: () => {
    for (const d of devices.values()) d.close();
    context?.close();
  },
});
