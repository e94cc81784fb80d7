// mmio-child.js DEVICE interpreter|optimised: the register accesses test/vm/mmio-direct.test.ts
// counts in QEMU's trace of edu's MMIO, run in a process of their own so that the engine's mode is
// the one asked for: `node --jitless` (the interpreter alone), or `node --allow-natives-syntax` with
// the workload and every accessor forced through TurboFan before the round that is counted.
// Prints one JSON line: the accesses each round made, in order, and the engine's status.
import { openDevice, RegionMapping } from '../../src/index.js';
import { runs, type Access } from './mmio-runs.js';

const [device, mode] = process.argv.slice(2);
if (!device || (mode !== 'interpreter' && mode !== 'optimised')) {
  process.stderr.write('usage: mmio-child.js DEVICE interpreter|optimised\n');
  process.exit(2);
}

const LIVENESS = 0x04; // edu answers a read with the complement of the last 4-byte write
const DMA_SRC = 0x80; // a 64-bit register that reads back what was written
const FACTORIAL = 0x08; // a write starts computing its factorial in a QEMU thread of its own
/** about 20 ms of that thread's multiplying, so that every round polls many times even when this
 * vCPU is descheduled meanwhile (4 ms was not enough once, with two guests on two cores: a round
 * saw edu done at its first poll); the 32-bit factorial of anything from 34 on is 0 (it has 32
 * factors of two) */
const factorialOf = (round: number): number => 20_000_000 + round;
const STATUS = 0x20; // bit 0: computing
const COMPUTING = 1;
const PAIRS = 8;
const READS = 8;
/** the first store of each round, so that the host's trace splits into rounds */
const marker = (round: number): number => (0xa5a50000 | round) >>> 0;
const wide = (round: number): bigint => 0x1122_3344_5566_7700n | BigInt(round);

/** how often each round's polling loop read the status register and saw edu still computing */
const spins: number[] = [];

/**
 * Back-to-back stores to one register (what an optimiser's store elimination would merge), loads of
 * an unchanged register in a loop (what load elimination would hoist), 64-bit accesses, and a polling
 * loop on a status register that a thread of the device clears.
 */
function workload(bar: RegionMapping, round: number): number {
  bar.write32(LIVENESS, marker(round));
  for (let i = 0; i < PAIRS; i++) {
    bar.write32(LIVENESS, i);
    bar.write32(LIVENESS, i + 0x100);
  }
  let seen = 0;
  for (let i = 0; i < READS; i++) seen = (seen + bar.read32(LIVENESS)) % 2 ** 32;
  bar.write64(DMA_SRC, wide(round));
  if (bar.read64(DMA_SRC) !== wide(round)) seen = -1;
  bar.write32(FACTORIAL, factorialOf(round));
  let polls = 0;
  while ((bar.read32(STATUS) & COMPUTING) !== 0) polls++;
  spins.push(polls);
  if (bar.read32(FACTORIAL) !== 0) seen = -2;
  return seen;
}

/** What one round must show the device, as [op, offset, size, value], repeats run-length encoded. */
function expected(round: number): Access[] {
  const a: Access[] = [['write', LIVENESS, 4, marker(round).toString(16)]];
  for (let i = 0; i < PAIRS; i++) a.push(['write', LIVENESS, 4, i.toString(16)], ['write', LIVENESS, 4, (i + 0x100).toString(16)]);
  const last = (~(PAIRS - 1 + 0x100) >>> 0).toString(16);
  for (let i = 0; i < READS; i++) a.push(['read', LIVENESS, 4, last]);
  a.push(['write', DMA_SRC, 8, wide(round).toString(16)], ['read', DMA_SRC, 8, wide(round).toString(16)]);
  a.push(['write', FACTORIAL, 4, factorialOf(round).toString(16)]);
  for (let i = 0; i < spins[round]!; i++) a.push(['read', STATUS, 4, COMPUTING.toString(16)]);
  a.push(['read', STATUS, 4, '0'], ['read', FACTORIAL, 4, '0']);
  return a;
}

// natives syntax only parses with --allow-natives-syntax; the Function constructor keeps it out of tsc
const natives = (body: string) => new Function('f', body) as (f: unknown) => number;
const accessors = [workload, ...['read32', 'write32', 'read64', 'write64'].map((m) => (RegionMapping.prototype as unknown as Record<string, unknown>)[m])];

using dev = openDevice(device);
const bar = dev.mapRegion('BAR0');
const rounds: number[] = [];
const results: number[] = [];
if (mode === 'optimised') {
  const prepare = natives('%PrepareFunctionForOptimization(f)');
  const optimiseNext = natives('%OptimizeFunctionOnNextCall(f)');
  for (const f of accessors) prepare(f);
  for (const round of [0, 1]) results.push(workload(bar, round)), rounds.push(round);
  for (const f of accessors) optimiseNext(f);
  results.push(workload(bar, 2));
  rounds.push(2);
} else {
  for (const round of [0, 1, 2]) results.push(workload(bar, round)), rounds.push(round);
}
const status = mode === 'optimised' ? natives('return %GetOptimizationStatus(f)') : () => 0;
process.stdout.write(`${JSON.stringify({
  access: bar.access,
  barSize: bar.size,
  v8: process.versions.v8,
  results,
  spins,
  expected: rounds.map((r) => runs(expected(r))),
  status: accessors.map((f) => status(f)),
})}\n`);
