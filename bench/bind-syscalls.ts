// The system calls of one bind + close (issue 16 goal 5), counted under strace beside the C witness's.
// Ours: a child (bench/bind-child.ts) binds and closes in a loop and marks each round with an
// access(2) of a path that does not exist; the calls of every thread between two marks are one round
// (the first round is skipped: it loads code). C's: the difference between runs of 11 and 1 binds,
// divided by 10, which cancels the process's start and exit.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const BIND_MARK = '/vfio-bind-bench-mark';
const ROUNDS = 6;

/** syscall name -> calls in the trace lines given (a call cut by another thread counts once, at its start) */
function countCalls(lines: string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const line of lines) {
    const m = /^\d+\s+([a-z_0-9]+)\(/.exec(line);
    if (m) counts.set(m[1]!, (counts.get(m[1]!) ?? 0) + 1);
  }
  return counts;
}

function trace(args: string[]): string[] {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-bind-strace-'));
  try {
    const out = path.join(dir, 'trace');
    execFileSync('strace', ['-f', '-qq', '-o', out, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
    return fs.readFileSync(out, 'utf8').split('\n');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Per-round counts of the library's bind + close: the median round's, per call. */
function libraryCalls(route: string, device: string): Map<string, number> {
  const child = path.join(import.meta.dirname, 'bind-child.js');
  const lines = trace([process.execPath, child, route, device, String(ROUNDS)]);
  const marks = lines.flatMap((l, i) => (l.includes(`access("${BIND_MARK}`) ? [i] : []));
  if (marks.length !== ROUNDS + 1) throw new Error(`expected ${ROUNDS + 1} marks in the trace, found ${marks.length}`);
  const rounds = marks.slice(1, -1).map((at, k) => countCalls(lines.slice(at + 1, marks[k + 2])));
  // the median round by total: a stray GC thread's futex in one round does not move it
  rounds.sort((a, b) => total(a) - total(b));
  return rounds[rounds.length >> 1]!;
}

function probeCalls(probe: string, route: string, device: string): Map<string, number> {
  const one = countCalls(trace([probe, '-n', '1', route, device]));
  const eleven = countCalls(trace([probe, '-n', '11', route, device]));
  const per = new Map<string, number>();
  for (const [name, n] of eleven) {
    const d = Math.round((n - (one.get(name) ?? 0)) / 10);
    if (d > 0) per.set(name, d);
  }
  return per;
}

const total = (m: Map<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0);

/** The lines the bench prints: every call name either side makes, ours and C's count per bind + close. */
export function bindSyscalls(probe: string, route: 'iommufd' | 'legacy', device: string): string {
  const ours = libraryCalls(route, device);
  const c = probeCalls(probe, route, device);
  const names = [...new Set([...ours.keys(), ...c.keys()])].sort((a, b) => (ours.get(b) ?? 0) - (ours.get(a) ?? 0) || a.localeCompare(b));
  const rows = names.map((n) => `    ${n.padEnd(16)} ${String(ours.get(n) ?? 0).padStart(3)} ${String(c.get(n) ?? 0).padStart(3)}`);
  return [
    `  system calls of one bind + close (${route}), strace: library ${total(ours)}, C ${total(c)}`,
    `    ${'call'.padEnd(16)} lib   C`,
    ...rows,
  ].join('\n');
}
