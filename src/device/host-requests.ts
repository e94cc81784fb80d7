// The host's two side channels of a bound PCI device. vfio-pci signals the request interrupt
// (VFIO_PCI_REQ_IRQ_INDEX) when the host wants the device back (an admin's unbind or remove, a
// hot-unplug), and again every 10 s until every fd of the device is closed: with no eventfd there it
// logs "No device request channel registered, blocked until released by user" and the host's unbind
// hangs. It signals the error interrupt (VFIO_PCI_ERR_IRQ_INDEX, PCIe devices only) from its AER
// error_detected handler. Both are eventfds watched on the event loop without keeping it alive: they
// are armed for as long as the device is open.
import { StepError } from '../errors.js';
import { deviceGetIrqInfo, setIrqEventfds, setIrqNone } from '../ioctl/device.js';
import { closeQuietly, quietly, type StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import { VFIO_IRQ_INFO_FLAG, VFIO_PCI_IRQ } from '../uapi/vfio.js';

export type HostSignal = 'request' | 'error';
const INDEX: Record<HostSignal, number> = { request: VFIO_PCI_IRQ.REQ, error: VFIO_PCI_IRQ.ERR };

interface Armed {
  index: number;
  eventfd: number;
  watch: object;
}

export class HostChannels {
  private readonly armed = new Map<HostSignal, Armed>();

  private constructor(private readonly kernel: Kernel) {}

  /**
   * Arms every channel the device offers (an index it has, with one vector that can signal an eventfd).
   * A failure closes what was armed before it and is thrown.
   */
  static arm(kernel: Kernel, calls: StepCalls, deviceFd: number, numIrqs: number, onSignal: (signal: HostSignal, count: bigint) => void): HostChannels {
    const channels = new HostChannels(kernel);
    try {
      for (const signal of ['request', 'error'] as const) {
        const index = INDEX[signal];
        if (index >= numIrqs || !offers(calls, deviceFd, index)) continue;
        const eventfd = calls.run('eventfd', undefined, () => kernel.eventfd());
        let watch: object | null = null;
        try {
          setIrqEventfds(calls, deviceFd, index, 0, [eventfd]);
          watch = kernel.watch(eventfd, (err, count) => {
            if (!err) onSignal(signal, count ?? 1n);
          }, { keepAlive: false });
        } catch (e) {
          if (watch) kernel.unwatch(watch);
          closeQuietly(kernel, eventfd);
          throw e;
        }
        channels.armed.set(signal, { index, eventfd, watch });
      }
    } catch (e) {
      channels.close(calls, deviceFd);
      throw e;
    }
    return channels;
  }

  /** Whether the device has this channel (edu has no ERR: it is not PCIe; an mdev has neither). */
  has(signal: HostSignal): boolean {
    return this.armed.has(signal);
  }

  /** The eventfd of a channel, for a VMM that wires it elsewhere (owned here). */
  eventfd(signal: HostSignal): number | null {
    return this.armed.get(signal)?.eventfd ?? null;
  }

  /** Unwires the channels in the kernel (a lent device fd stays open), stops the watches, closes the eventfds. */
  close(calls: StepCalls, deviceFd: number): void {
    for (const a of this.armed.values()) {
      quietly(() => setIrqNone(calls, deviceFd, a.index, 'disable'));
      this.kernel.unwatch(a.watch);
      closeQuietly(this.kernel, a.eventfd);
    }
    this.armed.clear();
  }
}

/** Whether an IRQ index has a vector that can signal an eventfd (vfio-pci answers EINVAL for ERR on a non-PCIe device). */
function offers(calls: StepCalls, deviceFd: number, index: number): boolean {
  try {
    const info = deviceGetIrqInfo(calls, deviceFd, index);
    return info.count > 0 && (info.flags & VFIO_IRQ_INFO_FLAG.EVENTFD) !== 0;
  } catch (e) {
    if (e instanceof StepError && e.errno === 'EINVAL') return false;
    throw e;
  }
}
