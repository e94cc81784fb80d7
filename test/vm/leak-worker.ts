// A long-lived process for leaks.test.ts (commands over IPC): loops of binds that fail, loops of
// bind/close cycles, and a count of everything a leak would leave behind in this process: fds on VFIO
// and iommufd nodes, eventfds and VFIO device files, mappings of VFIO nodes, and the addon's live
// mappings and eventfd watches.
import { allocDmaBuffer, openDevice, type DmaBuffer, type RoutePolicy } from '../../src/index.js';
import fs from 'node:fs';
import { counts, type Counts } from './counts.js';
import { errorRecord, errorSignature, serveCommands } from './helpers.js';

/** Binds that are meant to fail: the tally of what each attempt got. */
function fail(device: string, policy: RoutePolicy, n: number): { tally: Record<string, number>; ms: number } {
  const tally: Record<string, number> = {};
  const t0 = Date.now();
  for (let i = 0; i < n; i++) {
    let line: string;
    try {
      const d = openDevice(device, { route: policy });
      line = `bound through ${d.route}`;
      d.close();
    } catch (e) {
      line = errorSignature(errorRecord(e));
    }
    tally[line] = (tally[line] ?? 0) + 1;
  }
  return { tally, ms: Date.now() - t0 };
}

/**
 * n bind/close cycles, alternating the given policies. Every `fullEvery`-th cycle also enables MSI on
 * an eventfd (and waits on it), maps a DMA page into the device's context and, where BAR0 can be mmapped (edu), maps it
 * and reads edu's id register: all of it left to close() to undo, but the page, which is ours to free.
 * `during` is the count taken inside the first such cycle: what a leak would look like. A full cycle
 * lets the event loop turn once before it closes, so that the request channel's watch, which starts
 * then, is there to be undone; the other cycles bind and close in one synchronous stretch.
 */
async function cycle(device: string, policies: RoutePolicy[], n: number, fullEvery: number): Promise<{ ms: number; full: number; during: Counts | null; routes: Record<string, number> }> {
  const t0 = Date.now();
  let during: Counts | null = null;
  let full = 0;
  const routes: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const d = openDevice(device, { route: policies[i % policies.length]! });
    routes[d.route] = (routes[d.route] ?? 0) + 1;
    let page: DmaBuffer | null = null;
    if (i % fullEvery === 0) {
      // a vector is watched on the event loop while someone waits for it; close() rejects the wait
      d.enableIrqs('MSI').vector(0).wait().catch(() => {});
      page = allocDmaBuffer(4096);
      d.context.map(page);
      if (d.region('BAR0').mmappable) {
        const id = d.mapRegion('BAR0').read32(0);
        if (id !== 0x010000ed) throw new Error(`edu's id register read ${id.toString(16)}`);
      }
      await new Promise((resolve) => setImmediate(resolve));
      during ??= counts();
      full++;
    }
    d.close();
    page?.free(); // the context let go of it when it closed
  }
  return { ms: Date.now() - t0, full, during, routes };
}

/** errno of this process's own open(O_RDWR) of each path, or "ok" */
function tryOpen(paths: string[]): Record<string, string> {
  return Object.fromEntries(paths.map((p) => {
    try {
      fs.closeSync(fs.openSync(p, fs.constants.O_RDWR));
      return [p, 'ok'];
    } catch (e) {
      return [p, (e as NodeJS.ErrnoException).code ?? String(e)];
    }
  }));
}

serveCommands({
  counts: () => ({ counts: counts() }),
  fail: (m) => fail(m.device as string, m.policy as RoutePolicy, m.n as number),
  cycle: (m) => cycle(m.device as string, m.policies as RoutePolicy[], m.n as number, m.fullEvery as number),
  open: (m) => ({ opens: tryOpen(m.paths as string[]) }),
});
