// VFIO migration v2 on the real mtty (samples/vfio-mdev in the iommufd-6.12 kernel), on both routes:
// a UART's registers and buffered characters written through one device's region, saved, loaded into
// another device of the same type and read back through its region; PRE_COPY; the streams mtty
// refuses; the same across processes through the CLI. The states are checked apart from the library
// in debugfs (/sys/kernel/debug/vfio/<dev>/migration/state, CONFIG_VFIO_DEBUGFS).
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { openDevice, type VfioDevice } from '../../src/index.js';
import { MigrationStreamError } from '../../src/errors.js';
import { counts } from './counts.js';
import { CASE, json, runCli } from './helpers.js';

const skip = CASE !== 'iommufd-6.12-mtty' && 'mtty case only';
const SRC = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1005';
const DST = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1006';
const ONE_PORT = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1002';
const ROUTES = ['iommufd', 'legacy'] as const;
/** mtty-2's stream: the 24-byte header and two 36-byte struct serial_port */
const MTTY2_BYTES = 24 + 2 * 36;

// 16550 registers, as mtty emulates them in each port's BAR
const REG = { RBR_THR_DLL: 0, IER_DLM: 1, FCR_IIR: 2, LCR: 3, MCR: 4, LSR: 5, SCR: 7 } as const;
const LCR_DLAB = 0x80;

function ensureMdevs(): void {
  for (const [uuid, type] of [[SRC, 'mtty-2'], [DST, 'mtty-2'], [ONE_PORT, 'mtty-1']] as const) {
    if (!fs.existsSync(`/sys/bus/mdev/devices/${uuid}`)) fs.writeFileSync(`/sys/class/mdev_bus/mtty/mdev_supported_types/${type}/create`, uuid);
  }
}

/** The state VFIO's debugfs reports: the kernel's own reading, not the library's. */
const debugfsState = (uuid: string): string => fs.readFileSync(`/sys/kernel/debug/vfio/${uuid}/migration/state`, 'utf8').trim();

/** A test starts from RUNNING, whatever an earlier failure left (mtty keeps its state across opens). */
function ready(...devices: VfioDevice[]): void {
  for (const d of devices) if (d.migrator.state() !== 'RUNNING') d.migrator.recover();
}

const put = (dev: VfioDevice, port: number, reg: number, value: number): void => dev.writeRegion(port, reg, Buffer.from([value]));
const get = (dev: VfioDevice, port: number, reg: number): number => dev.readRegion(port, reg, 1)[0]!;

/**
 * A port's programmed state. The divisor is checked in the stream (struct serial_port's divisor, at
 * offset 30 of each port), not read back: setting DLAB to read it makes mtty clear it.
 */
interface Uart { lcr: number; ier: number; mcr: number; scr: number; divisor: number; chars: string }
const divisorsIn = (stream: Buffer): number[] => WANT.map((_, port) => stream.readUInt16LE(24 + port * 36 + 30));
const WANT: Uart[] = [
  { lcr: 0x03, ier: 0x04, mcr: 0x0b, scr: 0x5a, divisor: 12, chars: 'hi!' },
  { lcr: 0x1b, ier: 0x00, mcr: 0x08, scr: 0xa5, divisor: 0x180, chars: 'mtty' },
];

/** Line settings, a divisor and characters into each port (FIFO on: the characters loop back into it). */
function programUarts(dev: VfioDevice): void {
  WANT.forEach((u, port) => {
    put(dev, port, REG.FCR_IIR, 0x07); // FIFO on, both cleared
    put(dev, port, REG.LCR, LCR_DLAB);
    put(dev, port, REG.RBR_THR_DLL, u.divisor & 0xff);
    put(dev, port, REG.IER_DLM, u.divisor >> 8);
    put(dev, port, REG.LCR, u.lcr);
    put(dev, port, REG.IER_DLM, u.ier);
    put(dev, port, REG.MCR, u.mcr);
    put(dev, port, REG.SCR, u.scr);
    for (const c of Buffer.from(u.chars)) put(dev, port, REG.RBR_THR_DLL, c);
  });
}

/** What each port holds, read back through its region (the characters are popped from the FIFO). */
function readUarts(dev: VfioDevice): Omit<Uart, 'divisor'>[] {
  return WANT.map((w, port) => {
    const lcr = get(dev, port, REG.LCR);
    const ier = get(dev, port, REG.IER_DLM);
    const mcr = get(dev, port, REG.MCR);
    const scr = get(dev, port, REG.SCR);
    let chars = '';
    for (let i = 0; i < w.chars.length + 1 && (get(dev, port, REG.LSR) & 1) !== 0; i++) chars += String.fromCharCode(get(dev, port, REG.RBR_THR_DLL));
    return { lcr, ier, mcr, scr, chars };
  });
}
const READABLE = WANT.map(({ divisor: _, ...rest }) => rest);

/** Empties each port's registers and FIFO, so that a load has something to change. */
function clearUarts(dev: VfioDevice): void {
  WANT.forEach((_, port) => {
    put(dev, port, REG.FCR_IIR, 0x07);
    for (const reg of [REG.LCR, REG.IER_DLM, REG.MCR, REG.SCR]) put(dev, port, reg, 0);
  });
}

async function saveAll(dev: VfioDevice, options: Parameters<VfioDevice['migrator']['save']>[0] = {}): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await pipeline(dev.migrator.save(options), new Writable({ write(c: Buffer, _e, cb) { chunks.push(c); cb(); } }));
  return Buffer.concat(chunks);
}

const loadAll = (dev: VfioDevice, data: Buffer): Promise<void> => pipeline(Readable.from([data]), dev.migrator.load());

test('mtty on both routes: UART state saved from one device and loaded into another, read back equal through its region; debugfs agrees on every state', { skip }, async () => {
  ensureMdevs();
  for (const route of ROUTES) {
    using src = openDevice(SRC, { route });
    using dst = openDevice(DST, { route });
    ready(src, dst);
    programUarts(src);
    clearUarts(dst);
    assert.equal(debugfsState(SRC), 'RUNNING', route);
    assert.equal(src.migrator.dataSize(), BigInt(MTTY2_BYTES), route);
    const phases: string[] = [];
    const save = src.migrator.save();
    save.on('phase', (p: string) => phases.push(`${p}:${debugfsState(SRC)}`));
    const chunks: Buffer[] = [];
    save.once('data', () => phases.push(`streaming:${debugfsState(SRC)}`));
    for await (const c of save) chunks.push(c as Buffer);
    const data = Buffer.concat(chunks);
    assert.deepEqual(phases, ['streaming:STOP_COPY', 'done:STOP'], route);
    assert.equal(data.length, MTTY2_BYTES, route);
    assert.equal(data.readBigUInt64LE(0), 0x7e9d09898c3e2c4en, `${route}: mtty's magic`);
    assert.equal(data.readUInt32LE(16), 2, `${route}: nr_ports`);
    assert.deepEqual(divisorsIn(data), WANT.map((u) => u.divisor), `${route}: the divisors as programmed`);
    assert.equal(src.migrator.state(), 'STOP');
    await loadAll(dst, data);
    assert.equal(debugfsState(DST), 'RUNNING', route);
    assert.deepEqual(readUarts(dst), READABLE, `${route}: the destination's UARTs are the source's`);
    src.migrator.setState('RUNNING');
    assert.equal(debugfsState(SRC), 'RUNNING', route);
  }
});

test('mtty PRE_COPY on both routes: the header while the device runs, precopy info, then STOP_COPY on the same fd; state equal', { skip }, async () => {
  ensureMdevs();
  for (const route of ROUTES) {
    using src = openDevice(SRC, { route });
    using dst = openDevice(DST, { route });
    ready(src, dst);
    // by hand first: PRE_COPY opens the session, the info counts the header, PRE_COPY -> STOP_COPY keeps the fd
    const session = src.migrator.setState('PRE_COPY');
    assert.ok(session, route);
    assert.equal(debugfsState(SRC), 'PRE_COPY', route);
    assert.deepEqual(src.migrator.precopyInfo(), { initialBytes: 24n, dirtyBytes: 0n }, route);
    assert.equal(src.migrator.setState('STOP_COPY'), session, `${route}: the same session`);
    assert.equal(debugfsState(SRC), 'STOP_COPY', route);
    src.migrator.setState('RUNNING');
    assert.equal(session.closed, true, route);
    // then the stream
    programUarts(src);
    clearUarts(dst);
    const infos: unknown[] = [];
    const phases: string[] = [];
    const save = src.migrator.save({ precopy: true });
    save.on('precopy', (i) => infos.push({ ...i, state: debugfsState(SRC) }));
    save.on('phase', (p: string) => phases.push(`${p}:${debugfsState(SRC)}`));
    const chunks: Buffer[] = [];
    for await (const c of save) chunks.push(c as Buffer);
    assert.deepEqual(infos, [{ initialBytes: 0n, dirtyBytes: 0n, state: 'PRE_COPY' }], route);
    assert.deepEqual(phases, ['stop-copy:STOP_COPY', 'done:STOP'], route);
    assert.equal(save.precopyBytes, 24, `${route}: the header came in PRE_COPY`);
    assert.equal(save.bytes, MTTY2_BYTES, route);
    await loadAll(dst, Buffer.concat(chunks));
    assert.deepEqual(readUarts(dst), READABLE, route);
    src.migrator.setState('RUNNING');
  }
});

test('mtty refuses a truncated stream, one from a 1-port mtty and random bytes, each as MigrationStreamError; the destination closes, reopens and resumes from a good stream, with nothing left open', { skip }, async () => {
  ensureMdevs();
  let good: Buffer;
  let onePort: Buffer;
  {
    using src = openDevice(SRC);
    ready(src);
    programUarts(src);
    good = await saveAll(src, { after: 'RUNNING' });
    using one = openDevice(ONE_PORT);
    onePort = await saveAll(one, { after: 'RUNNING' });
  }
  assert.equal(onePort.length, 24 + 36);
  const random = Buffer.from(Array.from({ length: good.length }, (_, i) => (i * 197 + 11) & 0xff));
  const bad = [
    { what: 'truncated', data: good.subarray(0, good.length - 7), phase: 'complete', errno: 'EINVAL' },
    { what: 'from a 1-port mtty', data: onePort, phase: 'write', errno: 'EFAULT' },
    { what: 'random bytes', data: random, phase: 'write', errno: 'EFAULT' },
  ];
  for (const route of ROUTES) {
    const before = counts();
    for (const b of bad) {
      const what = `${route}, ${b.what}`;
      const dst = openDevice(DST, { route });
      const e = await loadAll(dst, b.data).then(() => null, (err: unknown) => err);
      assert.ok(e instanceof MigrationStreamError, `${what}: ${String(e)}`);
      assert.equal(e.phase, b.phase, what);
      assert.equal(e.errno, b.errno, what);
      assert.equal(e.state, 'RESUMING', what);
      assert.equal(debugfsState(DST), 'RESUMING', what);
      dst.close();
      const again = openDevice(DST, { route });
      clearUarts(again); // a resume from RESUMING left by a closed device resets it first (mtty would oops on RESUMING -> STOP)
      await loadAll(again, good);
      assert.equal(debugfsState(DST), 'RUNNING', what);
      assert.deepEqual(readUarts(again), READABLE, what);
      again.close();
      // readUarts popped the characters: the good stream carries them again for the next round
    }
    assert.deepEqual(counts(), before, `${route}: fds, maps and addon objects as before`);
  }
});

test('across processes through the CLI: migrate save to a file in one, migrate load in another; a refused file exits 10 with the typed error', { skip }, () => {
  ensureMdevs();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-bind-mig-'));
  try {
    {
      using src = openDevice(SRC);
      ready(src);
      programUarts(src);
    }
    const file = path.join(dir, 'mtty.state');
    const saved = runCli(['migrate', 'save', SRC, '--to', file, '--json']);
    assert.equal(saved.code, 0, saved.stderr);
    const s = json<{ bytes: number; data_size: string; states: { before: string; after: string }; ms: { total: number } }>(saved);
    assert.equal(s.bytes, MTTY2_BYTES);
    assert.equal(s.data_size, String(MTTY2_BYTES));
    assert.deepEqual(s.states, { before: 'RUNNING', after: 'STOP' });
    assert.equal(fs.statSync(file).size, MTTY2_BYTES);
    assert.deepEqual(fs.readdirSync(dir), ['mtty.state'], 'no partial file left');
    assert.equal(debugfsState(SRC), 'STOP', 'the source stays stopped after the process exits');
    {
      using dst = openDevice(DST);
      clearUarts(dst);
    }
    const loaded = runCli(['migrate', 'load', DST, '--from', file, '--route', 'legacy', '--json']);
    assert.equal(loaded.code, 0, loaded.stderr);
    assert.deepEqual(json<{ bytes: number; states: unknown }>(loaded).bytes, MTTY2_BYTES);
    assert.equal(debugfsState(DST), 'RUNNING');
    {
      using dst = openDevice(DST);
      assert.deepEqual(readUarts(dst), READABLE, 'loaded in another process, read in this one');
    }
    const state = runCli(['migrate', 'state', SRC, '--set', 'RUNNING', '--json']);
    assert.equal(state.code, 0, state.stderr);
    const moved = json<{ state: string; before: string }>(state);
    assert.deepEqual([moved.before, moved.state], ['STOP', 'RUNNING']);
    // a truncated file: exit 10 with the typed error; the destination is left RESUMING, and the next load resets it
    const cut = path.join(dir, 'cut.state');
    fs.writeFileSync(cut, fs.readFileSync(file).subarray(0, 30));
    const refused = runCli(['migrate', 'load', DST, '--from', cut, '--json']);
    assert.equal(refused.code, 10, refused.stderr);
    const err = json<{ error: string; phase: string; errno: string; state: string }>(refused);
    assert.deepEqual([err.error, err.phase, err.errno, err.state], ['stream-refused', 'complete', 'EINVAL', 'RESUMING']);
    const text = runCli(['migrate', 'load', DST, '--from', cut]);
    assert.equal(text.code, 10);
    assert.match(text.stderr, /^vfio-bind: .* refused the migration stream as a whole \(30 bytes\) at RESUMING -> STOP \(EINVAL\)/);
    assert.equal(runCli(['migrate', 'load', DST, '--from', file]).code, 0, 'loads again after the refusals');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
