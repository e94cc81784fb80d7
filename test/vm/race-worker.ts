// One of the two racers of race.test.ts (started once, commands over IPC). On "arm" it answers and
// starts binding at once; its kernel seam stops at the claim itself, the one system call that takes
// ownership (VFIO_DEVICE_BIND_IOMMUFD on a cdev, or the open of the group node): a two-party barrier on
// a page both racers map (a /dev/shm file, through the addon). Each writes its arrival time and then the
// round's number into its own slot, and spins until the other's slot holds the round too; then both
// wait for one instant, START_MARGIN after the later arrival, and claim. The first to arrive may see
// the other late (its vCPU was elsewhere for a moment: in some boots a median of 0.2 ms, longer than a
// group open), and the common start keeps that from ordering the claims. No third process has to run in
// between (the guest has two vCPUs, which multi-threaded TCG really runs at once). So both have done
// their sysfs discovery and opens before either claims, and the two claims meet inside the kernel. It reports what it got with
// CLOCK_MONOTONIC times of the claim (comparable across processes), and a winner holds the device
// until "release", or the next "arm" (sent once the test has both results).
import { openDevice, type RoutePolicy, type VfioDevice } from '../../src/index.js';
import { loadAddon, NativeKernel } from '../../src/sys/native-kernel.js';
import { VFIO } from '../../src/uapi/vfio.js';
import { errorRecord, serveCommands, type ErrorRecord } from './helpers.js';

export interface BindOutcome {
  won: boolean;
  route?: string;
  fallback?: unknown;
  error?: ErrorRecord;
}
export interface RaceResult extends BindOutcome {
  type: 'result';
  round: number;
  /** hrtime (ns) just before the first claim's system call, and when it returned */
  claimStart: string;
  claimEnd: string;
  /** which claim it was: VFIO_DEVICE_BIND_IOMMUFD, or the group node opened */
  claim: string;
}

/** where on the page the racers' arrival times are (after the two 16-bit round slots), and the margin */
const ARRIVAL = 8;
const START_MARGIN = 2_000_000n; // ns

/** the group node (legacy's claim) */
const GROUP_NODE = /^\/dev\/vfio\/(noiommu-)?\d+$/;

/** The real kernel, with a barrier at the first claim of an armed bind. */
class ClaimBarrier extends NativeKernel {
  armed: { page: ArrayBuffer; round: number; slot: number } | null = null;
  stamp: { start: bigint; end: bigint; claim: string } | null = null;

  private claim<T>(what: string, call: () => T): T {
    const armed = this.armed;
    if (!armed) return call();
    this.armed = null;
    const { page, round, slot } = armed;
    const addon = loadAddon();
    addon.mmioWrite(page, ARRIVAL + slot * 8, 8, process.hrtime.bigint());
    addon.dmaWriteBarrier(); // the arrival time is visible before the round that says it is this round's
    addon.mmioWrite(page, slot * 2, 2, round); // here
    const deadline = Date.now() + 60_000;
    // one volatile load per turn: the other racer's slot
    while (addon.mmioRead(page, (1 - slot) * 2, 2) !== round) {
      if (Date.now() > deadline) process.exit(70); // the other racer (or the test) is gone
    }
    addon.dmaReadBarrier();
    const [a, b] = [addon.mmioRead(page, ARRIVAL, 8) as bigint, addon.mmioRead(page, ARRIVAL + 8, 8) as bigint];
    const go = (a > b ? a : b) + START_MARGIN; // the same instant for both: CLOCK_MONOTONIC is the guest's
    while (process.hrtime.bigint() < go); // spin: a sleep would hand the vCPU away
    const start = process.hrtime.bigint();
    try {
      return call();
    } finally {
      this.stamp = { start, end: process.hrtime.bigint(), claim: what };
    }
  }

  override open(path: string): number {
    return GROUP_NODE.test(path) ? this.claim(path, () => super.open(path)) : super.open(path);
  }

  override ioctl(fd: number, request: number, arg?: number | Buffer): number {
    return request === VFIO.DEVICE_BIND_IOMMUFD ? this.claim('VFIO_DEVICE_BIND_IOMMUFD', () => super.ioctl(fd, request, arg)) : super.ioctl(fd, request, arg);
  }
}

const kernel = new ClaimBarrier();
let held: VfioDevice | null = null;
/** the pages shared with the test, mapped once each */
const pages = new Map<string, ArrayBuffer>();

function bind(device: string, policy: RoutePolicy): BindOutcome {
  if (held) return { won: false, error: errorRecord(new Error('this racer still holds the device from an earlier round')) };
  try {
    held = openDevice(device, { route: policy, kernel });
    return { won: true, route: held.route, fallback: held.report.fallback };
  } catch (e) {
    return { won: false, error: errorRecord(e) };
  }
}

function release(): boolean {
  const had = held !== null;
  held?.close();
  held = null;
  return had;
}

function race(round: number, go: string, slot: number, device: string, policy: RoutePolicy): void {
  let page = pages.get(go);
  if (!page) {
    const fd = kernel.open(go);
    try {
      pages.set(go, (page = kernel.mmap(fd, 0n, 4096, true)));
    } finally {
      kernel.close(fd);
    }
  }
  kernel.armed = { page, round, slot };
  kernel.stamp = null;
  const outcome = bind(device, policy);
  const stamp = kernel.stamp as { start: bigint; end: bigint; claim: string } | null;
  kernel.armed = null; // a bind that ended before any claim (the result says claim: none)
  const result: RaceResult = {
    type: 'result', round, ...outcome,
    claimStart: String(stamp?.start ?? -1n), claimEnd: String(stamp?.end ?? -1n), claim: stamp?.claim ?? 'none',
  };
  process.send!(result);
}

serveCommands({
  arm: (m) => {
    // The last round is over (the test has both results): a device won then is released first.
    release();
    // "armed" is written out before the bind blocks the event loop at its claim
    process.send!({ id: m.id, type: 'armed' }, () => race(m.round as number, m.go as string, m.slot as number, m.device as string, m.policy as RoutePolicy));
    return undefined;
  },
  bind: (m) => bind(m.device as string, m.policy as RoutePolicy),
  release: () => ({ released: release() }),
  exit: () => {
    held?.close();
    for (const page of pages.values()) kernel.unmap(page);
  },
});
