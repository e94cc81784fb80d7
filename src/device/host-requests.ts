// The host's two side channels of a bound PCI device. vfio-pci signals the request interrupt
// (VFIO_PCI_REQ_IRQ_INDEX) when the host wants the device back (an admin's unbind or remove, a
// hot-unplug), and again every 10 s until every fd of the device is closed: with no eventfd there it
// logs "No device request channel registered, blocked until released by user" and the host's unbind
// hangs. It signals the error interrupt (VFIO_PCI_ERR_IRQ_INDEX, PCIe devices only) from its AER
// error_detected handler. Both are eventfds watched on the event loop without keeping it alive: they
// are armed for as long as the device is open. The watch starts when the event loop next turns (a
// signal before it waits in the eventfd's counter), so a bind and close in one synchronous stretch,
// as the CLI's are, never starts one: libuv's start and stop are six system calls (FIONBIO, five
// epoll_ctl) beyond what the kernel needs.
import { deviceGetIrqInfoIfAny, setIrqEventfds, setIrqNone } from '../ioctl/device.js';
import { closeQuietly, quietly, type StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import { VFIO_IRQ_INFO_FLAG, VFIO_PCI_IRQ } from '../uapi/vfio.js';

export type HostSignal = 'request' | 'error';
const INDEX: Record<HostSignal, number> = { request: VFIO_PCI_IRQ.REQ, error: VFIO_PCI_IRQ.ERR };

interface Armed {
  index: number;
  eventfd: number;
  /** the watch, once started */
  watch: object | null;
  /** the start, until the loop turns */
  starting: NodeJS.Immediate | null;
}

export class HostChannels {
  private readonly armed = new Map<HostSignal, Armed>();

  private constructor(
    private readonly kernel: Kernel,
    private readonly onSignal: (signal: HostSignal, count: bigint) => void,
    private readonly onWatchFailed: (signal: HostSignal, e: unknown) => void,
  ) {}

  /**
   * Arms every channel the device offers (an index it has, with one vector that can signal an eventfd).
   * A failure closes what was armed before it and is thrown.
   */
  static arm(
    kernel: Kernel,
    calls: StepCalls,
    deviceFd: number,
    numIrqs: number,
    onSignal: (signal: HostSignal, count: bigint) => void,
    onWatchFailed: (signal: HostSignal, e: unknown) => void,
  ): HostChannels {
    const channels = new HostChannels(kernel, onSignal, onWatchFailed);
    try {
      for (const signal of ['request', 'error'] as const) {
        const index = INDEX[signal];
        if (index >= numIrqs || !offers(calls, deviceFd, index)) continue;
        const eventfd = calls.run('eventfd', undefined, () => kernel.eventfd());
        try {
          setIrqEventfds(calls, deviceFd, index, 0, [eventfd]);
        } catch (e) {
          closeQuietly(kernel, eventfd);
          throw e;
        }
        const armed: Armed = { index, eventfd, watch: null, starting: null };
        // ref'd, so that the start happens on the loop's next turn: it holds the loop for that turn only
        armed.starting = setImmediate(() => channels.startWatch(signal, armed));
        channels.armed.set(signal, armed);
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
      if (a.starting) clearImmediate(a.starting);
      if (a.watch) this.kernel.unwatch(a.watch);
      closeQuietly(this.kernel, a.eventfd);
    }
    this.armed.clear();
  }

  /** Whether every channel's watch has started (they start when the event loop turns after the bind). */
  get watching(): boolean {
    return [...this.armed.values()].every((a) => a.watch !== null);
  }

  private startWatch(signal: HostSignal, a: Armed): void {
    a.starting = null;
    try {
      a.watch = this.kernel.watch(a.eventfd, (err, count) => {
        if (!err) this.onSignal(signal, count ?? 1n);
      }, { keepAlive: false });
    } catch (e) {
      this.onWatchFailed(signal, e); // the channel stays wired in the kernel; nothing here hears it
    }
  }
}

/** Whether an IRQ index has a vector that can signal an eventfd (vfio-pci answers EINVAL for ERR on a non-PCIe device). */
function offers(calls: StepCalls, deviceFd: number, index: number): boolean {
  const info = deviceGetIrqInfoIfAny(calls, deviceFd, index);
  return info !== null && info.count > 0 && (info.flags & VFIO_IRQ_INFO_FLAG.EVENTFD) !== 0;
}
