// Device interrupts on eventfds: VFIO_DEVICE_GET_IRQ_INFO and VFIO_DEVICE_SET_IRQS for INTx, MSI and
// MSI-X. Each vector signals its own eventfd, which the addon watches on the event loop, so waiting
// for an interrupt blocks nothing.
import { ClosedError, UsageError, type VfioError } from '../errors.js';
import type { StepCalls } from '../sys/calls.js';
import { closeQuietly } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import { deviceGetIrqInfo } from '../ioctl/device.js';
import { VFIO_IRQ_INFO_FLAG, VFIO_PCI_IRQ } from '../uapi/vfio.js';

export interface IrqInfo {
  index: number;
  /** INTX, MSI, MSIX, ERR, REQ for a PCI device; IRQ<n> otherwise */
  name: string;
  /** vectors (0: the device has none of this kind) */
  count: number;
  eventfd: boolean;
  maskable: boolean;
  automasked: boolean;
  noresize: boolean;
}

const PCI_IRQ_NAMES = Object.fromEntries(Object.entries(VFIO_PCI_IRQ).map(([name, index]) => [index, name]));

const irqName = (index: number, pci: boolean): string => (pci ? PCI_IRQ_NAMES[index] : undefined) ?? `IRQ${index}`;

/** An IRQ index the device does not implement. */
export function absentIrq(index: number, pci: boolean): IrqInfo {
  return { index, name: irqName(index, pci), count: 0, eventfd: false, maskable: false, automasked: false, noresize: false };
}

export function readIrqInfo(calls: StepCalls, fd: number, index: number, pci: boolean): IrqInfo {
  const info = deviceGetIrqInfo(calls, fd, index);
  return {
    index,
    name: irqName(index, pci),
    count: info.count,
    eventfd: (info.flags & VFIO_IRQ_INFO_FLAG.EVENTFD) !== 0,
    maskable: (info.flags & VFIO_IRQ_INFO_FLAG.MASKABLE) !== 0,
    automasked: (info.flags & VFIO_IRQ_INFO_FLAG.AUTOMASKED) !== 0,
    noresize: (info.flags & VFIO_IRQ_INFO_FLAG.NORESIZE) !== 0,
  };
}

interface Waiter {
  resolve(count: bigint | null): void;
  reject(e: Error): void;
  timer?: NodeJS.Timeout;
}

/**
 * One interrupt vector: its eventfd, owned here. wait() resolves with the number of interrupts since
 * the last wait (the eventfd counter), or null at its timeout; `for await` iterates them.
 */
export class IrqVector implements AsyncIterable<bigint> {
  private handle: object | null = null;
  private readonly waiters: Waiter[] = [];
  private pending = 0n;
  private isClosed = false;
  private closedBy: (() => VfioError) | null = null;
  /** interrupts seen on this vector so far */
  total = 0n;

  /** @internal */
  constructor(
    private readonly kernel: Kernel,
    readonly vector: number,
    /** the eventfd the kernel signals (for irqfd wiring: ownership stays here) */
    readonly eventfd: number,
    private readonly unmaskFn: (() => void) | null,
  ) {}

  /** Resolves with the count of interrupts since the last wait, or null after timeoutMs. */
  wait(options: { timeoutMs?: number } = {}): Promise<bigint | null> {
    if (this.isClosed) return Promise.reject(this.closedBy?.() ?? new ClosedError(`interrupt vector ${this.vector} is disabled`));
    if (this.pending > 0n) {
      const n = this.pending;
      this.pending = 0n;
      return Promise.resolve(n);
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { resolve, reject };
      if (options.timeoutMs !== undefined) {
        waiter.timer = setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          this.updateWatch();
          resolve(null);
        }, options.timeoutMs);
      }
      this.waiters.push(waiter);
      this.updateWatch();
    });
  }

  /** Re-enables a level-triggered INTx after the device's condition was cleared (INTx is automasked). */
  unmask(): void {
    if (!this.unmaskFn) throw new UsageError(`vector ${this.vector} is not an INTx line: only INTx is unmasked`);
    if (this.isClosed) throw new ClosedError(`interrupt vector ${this.vector} is disabled`);
    this.unmaskFn();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<bigint> {
    for (;;) {
      const n = await this.wait();
      if (n === null) return;
      yield n;
    }
  }

  /** The eventfd is watched only while someone waits: an idle vector does not keep the process alive. */
  private updateWatch(): void {
    if (this.waiters.length > 0 && !this.handle) {
      this.handle = this.kernel.watch(this.eventfd, (err, count) => this.fired(err, count));
    } else if (this.waiters.length === 0 && this.handle) {
      this.kernel.unwatch(this.handle);
      this.handle = null;
    }
  }

  private fired(err: Error | null, count?: bigint): void {
    const waiter = this.waiters.shift();
    if (err) {
      waiter?.reject(err);
    } else {
      this.total += count ?? 0n;
      if (waiter) waiter.resolve(count ?? 0n);
      else this.pending += count ?? 0n;
    }
    if (waiter?.timer) clearTimeout(waiter.timer);
    this.updateWatch();
  }

  /** @internal closes the eventfd (after the kernel was told to stop signalling it); `why` says why to whoever waits */
  close(why?: () => VfioError): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closedBy = why ?? null;
    if (this.handle) this.kernel.unwatch(this.handle);
    this.handle = null;
    for (const w of this.waiters.splice(0)) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(why?.() ?? new ClosedError(`interrupt vector ${this.vector} was disabled`));
    }
    closeQuietly(this.kernel, this.eventfd);
  }
}

/** The vectors of one IRQ index wired to eventfds; disable() (or the device's close) unwires them. */
export class IrqSet implements Disposable {
  private isDisabled = false;

  /** @internal use VfioDevice.enableIrqs() */
  constructor(
    readonly info: IrqInfo,
    readonly vectors: IrqVector[],
    private readonly disableFn: () => void,
    private readonly onDisable: (s: IrqSet) => void,
  ) {}

  get disabled(): boolean {
    return this.isDisabled;
  }

  vector(n: number): IrqVector {
    const v = this.vectors[n];
    if (!v) throw new UsageError(`${this.info.name} has ${this.vectors.length} vector(s) enabled; there is no vector ${n}`);
    return v;
  }

  /** Tells the kernel to stop signalling, then closes the eventfds. Idempotent. (`why`, internal: the device's release.) */
  disable(why?: () => VfioError): void {
    if (this.isDisabled) return;
    this.isDisabled = true;
    try {
      this.disableFn();
    } finally {
      for (const v of this.vectors) v.close(why);
      this.onDisable(this);
    }
  }

  [Symbol.dispose](): void {
    this.disable();
  }
}
