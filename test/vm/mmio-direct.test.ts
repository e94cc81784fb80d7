// Issue 16, goal 4 on a real kernel: register accesses through typed-array views on a BAR mapping
// reach the device as exactly the accesses the program made, of their width, none merged, dropped,
// split or hoisted, in V8's interpreter and in TurboFan's code. The witness is QEMU itself: the host
// turns on its memory_region_ops_read/write trace (through the test bed's QMP relay) while a child
// process works edu's registers, and the test compares what edu saw with what the child did.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { openDevice } from '../../src/index.js';
import { test } from './case-test.js';
import { CASE, EDU, hostCommand } from './helpers.js';
import { runs, type Access } from './mmio-runs.js';

const dmaCase = ['iommufd-6.12-intel', 'stock-6.1-intel', 'stock-6.12-intel', 'stock-6.1-smmuv3', 'stock-6.12-smmuv3', 'iommufd-6.12-smmuv3', 'iommufd-6.12-64k-smmuv3'].includes(CASE);
const CHILD = path.join(import.meta.dirname, 'mmio-child.js');
const MODES = { interpreter: ['--jitless'], optimised: ['--allow-natives-syntax'] } as const;

interface Traced { op: string; offset: number; size: number; value: bigint }

async function hmp(line: string): Promise<void> {
  const reply = await hostCommand({ execute: 'human-monitor-command', arguments: { 'command-line': line } });
  assert.equal(reply.error, undefined, `HMP ${line}: ${JSON.stringify(reply.error)}`);
  assert.equal(reply.return, '', `HMP ${line} answered ${JSON.stringify(reply.return)}`);
}

/**
 * edu's accesses in a QEMU trace log, in order (edu's BAR0 region is 'edu-mmio'). The trace gives the
 * guest-physical address; a BAR is aligned to its size, so the offset in it is the address modulo that.
 */
function eduAccesses(log: string, barSize: number): Traced[] {
  const out: Traced[] = [];
  for (const line of log.split('\n')) {
    const m = /^memory_region_ops_(read|write) .* addr (0x[0-9a-f]+) value (0x[0-9a-f]+) size (\d+) name 'edu-mmio'$/.exec(line);
    if (m) out.push({ op: m[1]!, offset: Number(BigInt(m[2]!) % BigInt(barSize)), size: Number(m[4]), value: BigInt(m[3]!) });
  }
  return out;
}

async function traced(mode: keyof typeof MODES): Promise<{ child: Record<string, unknown>; seen: Traced[] }> {
  const name = `mmio-trace-${mode}-${process.pid}.log`;
  await hmp(`logfile {RUN}/${name}`);
  await hmp('log trace:memory_region_ops_read,trace:memory_region_ops_write');
  // (every MMIO access in the guest is traced meanwhile: ~2 MB a second, mostly MSI writes)
  let r;
  try {
    r = spawnSync(process.execPath, [...MODES[mode], CHILD, EDU, mode], { encoding: 'utf8', timeout: 120_000 });
  } finally {
    // `log none` alone leaves the events on: they go on being written
    await hmp('trace-event memory_region_ops_read off');
    await hmp('trace-event memory_region_ops_write off');
    await hmp('log none');
  }
  assert.equal(r.status, 0, `the ${mode} child: ${r.stderr}`);
  const child = JSON.parse(r.stdout) as Record<string, unknown>;
  const file = `/vmrun/${name}`;
  const seen = eduAccesses(fs.readFileSync(file, 'utf8'), child.barSize as number);
  fs.rmSync(file);
  return { child, seen };
}

for (const mode of Object.keys(MODES) as (keyof typeof MODES)[]) {
  test(`MMIO through views, ${mode}: edu sees each access the program made, of its width, in order, none merged, dropped or hoisted (QEMU's trace)`, { skip: !dmaCase && 'DMA cases only' }, async (t) => {
    const { child, seen } = await traced(mode);
    assert.equal(child.access, 'direct', `this Node (V8 ${String(child.v8)}) accesses registers through views`);
    const status = child.status as number[];
    if (mode === 'optimised') {
      // V8's OptimizationStatus bits: 0x10 optimised, 0x40 by TurboFan, 0x100 marked for optimisation.
      // The workload ran as TurboFan code; each accessor either did too (called from it), or is still
      // only marked: a marked function compiles at its next call, so it was never called, and ran
      // inlined into the workload's code.
      const [workloadStatus, ...accessorStatus] = status;
      assert.equal(workloadStatus! & 0x50, 0x50, `the workload ran as TurboFan code (status ${workloadStatus!.toString(2)})`);
      for (const s of accessorStatus) assert.ok((s & 0x50) === 0x50 || (s & 0x100) !== 0, `an accessor ran as TurboFan code or inlined (status ${s.toString(2)})`);
    }
    // the child's bind and mmap make no access to BAR0 of their own: the first one is round 0's marker
    assert.ok(seen.length > 0, 'the trace shows edu\'s accesses');
    const seenRuns = runs(seen.map((a): Access => [a.op, a.offset, a.size, a.value.toString(16)]));
    assert.deepEqual(seenRuns, (child.expected as unknown[][]).flat(), 'what edu saw, access by access (repeats counted), is what the child did');
    assert.ok((child.spins as number[]).every((n) => n > 0), `every round polled edu while it was computing (polls per round: ${String(child.spins)})`);
    assert.ok(!(child.results as number[]).some((r) => r < 0), `each round read its 64-bit value and its factorial back (${String(child.results)})`);
    t.diagnostic(`polls of the status register that saw edu computing, per round: ${String(child.spins)}`);
  });
}

// (on arm64 an access edu refuses is a SIGBUS: device.test.ts checks the widths there in child processes)
test('MMIO through views: 1- and 2-byte accesses are neither widened nor split (edu answers only 4 and 8 bytes)', { skip: (!dmaCase || process.arch === 'arm64') && 'x86 DMA cases only' }, () => {
  using dev = openDevice(EDU);
  const bar = dev.mapRegion('BAR0');
  assert.equal(bar.access, 'direct');
  bar.write32(0x04, 0x0f0f0f0f);
  bar.write8(0x04, 0xff);
  bar.write16(0x04, 0xffff);
  assert.equal(bar.read32(0x04), 0xf0f0f0f0, 'the 1- and 2-byte stores did not reach the 4-byte register');
  assert.equal(bar.read8(0), 0, 'a 1-byte read of 0x010000ed stays one byte (0xed if widened)');
  assert.equal(bar.read16(2), 0, 'a 2-byte read stays two bytes (0x0100 if widened)');
  assert.equal(bar.read64(0), 0xffff_ffff_ffff_ffffn, 'an 8-byte read below 0x80 stays one (split, it would show 0x010000ed)');
});
