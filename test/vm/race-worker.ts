// One of the two racers of race.test.ts (started once, commands over IPC). On "arm" it answers, then
// spins synchronously — checking for the round's go file, sleeping 0.2 ms between checks on a
// SharedArrayBuffer — and calls openDevice the moment the file exists. It reports what it got, with
// CLOCK_MONOTONIC times (comparable across processes), and a winner holds the device until
// "release", or the next "arm" (sent once the test has both results).
import fs from 'node:fs';
import { openDevice, type RoutePolicy, type VfioDevice } from '../../src/index.js';
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
  /** hrtime (ns) when it saw the go file, and when openDevice returned or threw */
  seen: string;
  done: string;
}

const nap = new Int32Array(new SharedArrayBuffer(4));
let held: VfioDevice | null = null;

function bind(device: string, policy: RoutePolicy): BindOutcome {
  if (held) return { won: false, error: errorRecord(new Error('this racer still holds the device from an earlier round')) };
  try {
    held = openDevice(device, { route: policy });
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

function race(round: number, go: string, device: string, policy: RoutePolicy): void {
  const deadline = Date.now() + 60_000;
  while (!fs.existsSync(go)) {
    if (Date.now() > deadline) process.exit(70); // the test is gone
    Atomics.wait(nap, 0, 0, 0.2);
  }
  const seen = process.hrtime.bigint();
  const outcome = bind(device, policy);
  const done = process.hrtime.bigint();
  const result: RaceResult = { type: 'result', round, ...outcome, seen: String(seen), done: String(done) };
  process.send!(result);
}

serveCommands({
  arm: (m) => {
    // The last round is over (the test has both results): a device won then is released first.
    release();
    // "armed" is written out before the spin blocks the event loop (the callback runs after the write)
    process.send!({ id: m.id, type: 'armed' }, () => race(m.round as number, m.go as string, m.device as string, m.policy as RoutePolicy));
    return undefined;
  },
  bind: (m) => bind(m.device as string, m.policy as RoutePolicy),
  release: () => ({ released: release() }),
  exit: () => held?.close(),
});
