// Shared by the tests that run inside a test-bed guest (testbed/matrix.sh runs dist/test/vm/all.js).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { RegionMapping } from '../../src/index.js';

export const ROOT = path.resolve(import.meta.dirname, '../../..');
export const CLI = path.join(ROOT, 'bin/vfio-bind.js');
/** the case this guest was booted for (testbed/matrix.sh sets it) */
export const CASE = process.env.VM_CASE ?? '';
export const EDU = '0000:00:10.0';
export const TESTDEV = '0000:00:11.0';
/** the second edu of the DMA cases (testbed/matrix.sh's EDU2; the bench's guest has it too) */
export const EDU2 = '0000:00:12.0';

export const isStock = CASE.startsWith('stock-');
export const inGuest = CASE !== '' && fs.existsSync('/vmrun');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function json<T = Record<string, unknown>>(r: CliResult): T {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`not one JSON document on stdout (exit ${r.code}):\n${r.stdout}\nstderr:\n${r.stderr}`);
  }
}

/** A second process that binds a device and holds it until stopped. */
export interface Holder {
  report: Record<string, unknown>;
  stop(): Promise<number | null>;
}

export function holdDevice(device: string, route: string): Promise<Holder> {
  const child = spawn(process.execPath, [CLI, 'bind', device, '--route', route, '--json', '--hold'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    // Bound when both have arrived, in either order: the report (one JSON object) on stdout and
    // --hold's notice on stderr.
    const check = (): void => {
      if (stdout.trimEnd().endsWith('}') && stderr.includes('holding')) {
        resolve({
          report: JSON.parse(stdout) as Record<string, unknown>,
          stop: () => {
            child.kill('SIGTERM');
            return exited;
          },
        });
      }
    };
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      check();
    });
    child.stderr.on('data', check);
    void exited.then((code) => reject(new Error(`holder exited (${code}) before binding:\n${stdout}\n${stderr}`)));
  });
}

/** setpriv's arguments for an unprivileged user (nobody) with no capabilities and no groups. */
export const UNPRIVILEGED = ['--reuid', '65534', '--regid', '65534', '--clear-groups', '--inh-caps=-all'];
export const NOBODY = 65534;

let staged: string | undefined;

/**
 * A copy, readable by everyone, of what unprivileged processes run: bin/, package.json, the built
 * CLI, library and VM tests, the addon, and the production node_modules (from the lockfile). The
 * checkout itself may sit in a directory nobody cannot enter (mktemp -d, or /root), and tests that
 * drop privileges must not need it readable. In a guest the copy lands in the discarded overlay.
 */
export function unprivilegedRoot(): string {
  if (staged) return staged;
  const dest = fs.mkdtempSync('/tmp/vfio-bind-unprivileged-');
  fs.chmodSync(dest, 0o755);
  const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
  const production = Object.entries(lock.packages).filter(([p, meta]) => p.startsWith('node_modules/') && !meta.dev).map(([p]) => p);
  for (const p of ['package.json', 'bin', 'dist/cli', 'dist/src', 'dist/test/vm', 'prebuilds', 'build/Release', ...production]) {
    if (fs.existsSync(path.join(ROOT, p))) fs.cpSync(path.join(ROOT, p), path.join(dest, p), { recursive: true });
  }
  // every directory enterable and every file readable by others, whatever the checkout's modes
  const open = (dir: string): void => {
    fs.chmodSync(dir, 0o755);
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) open(p);
      else if (e.isFile()) fs.chmodSync(p, fs.statSync(p).mode | 0o444);
    }
  };
  open(dest);
  return (staged = dest);
}

/** Runs the CLI as nobody, with no capabilities; `fds` arrive as fds 3, 4, ... in the CLI. */
export function runCliUnprivileged(args: string[], fds: number[] = []): CliResult {
  const r = spawnSync('setpriv', [...UNPRIVILEGED, process.execPath, path.join(unprivilegedRoot(), 'bin/vfio-bind.js'), ...args], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe', ...fds], timeout: 120_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** What a failed openDevice threw, as plain data (for IPC between test processes). */
export interface ErrorRecord {
  class: string;
  kind: string | null;
  exitCode: number | null;
  route: string | null;
  step: string | null;
  errno: string | null;
  attempts: [string, string | null][];
  message: string;
}

export function errorRecord(e: unknown): ErrorRecord {
  const v = e as { kind?: string; exitCode?: number; route?: string; step?: string; errno?: string | null; attempts?: { step: string; errno: string | null }[]; message?: string; stack?: string };
  return {
    class: (e as object)?.constructor?.name ?? typeof e,
    kind: v?.kind ?? null,
    exitCode: v?.exitCode ?? null,
    route: v?.route ?? null,
    step: v?.step ?? null,
    errno: v?.errno ?? null,
    attempts: (v?.attempts ?? []).map((a) => [a.step, a.errno]),
    // a non-VFIO error is a bug: keep its stack for the report
    message: v?.kind ? String(v.message) : String(v?.stack ?? e),
  };
}

/** One line per error shape: class, route, step, errno and the attempts that led there. */
export const errorSignature = (r: ErrorRecord): string =>
  `${r.class}(${r.exitCode}) ${r.route}: ${r.step} ${r.errno} [${r.attempts.map(([s, e]) => `${s} ${e}`).join(', ')}]`;

type Message = Record<string, unknown> & { id?: number; type?: string };

/**
 * A long-lived helper process with an IPC channel (a worker script under dist/test/vm): node takes
 * 1-2.5 s to start in a TCG guest, so loops and races run in processes started once.
 */
export class WorkerProcess {
  private readonly queue: Message[] = [];
  private readonly waiters: { match: (m: Message) => boolean; resolve: (m: Message) => void; reject: (e: Error) => void }[] = [];
  private nextId = 1;
  private errText = '';
  private exitInfo: string | null = null;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(readonly child: ChildProcess, readonly name: string) {
    child.stderr!.on('data', (d: Buffer) => (this.errText = (this.errText + d.toString()).slice(-8000)));
    child.stdout!.on('data', (d: Buffer) => (this.errText = (this.errText + d.toString()).slice(-8000)));
    child.on('message', (m: Message) => {
      const i = this.waiters.findIndex((w) => w.match(m));
      if (i >= 0) this.waiters.splice(i, 1)[0]!.resolve(m);
      else this.queue.push(m);
    });
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => {
      this.exitInfo = signal ? `killed by ${signal}` : `exited with ${code}`;
      for (const w of this.waiters.splice(0)) w.reject(this.died());
      resolve({ code, signal });
    }));
  }

  /** Starts dist/test/vm/<script> (as nobody, with no capabilities, if `unprivileged`) and waits for its "ready". */
  static async start(script: string, options: { name?: string; unprivileged?: boolean } = {}): Promise<WorkerProcess> {
    const dir = options.unprivileged ? path.join(unprivilegedRoot(), 'dist/test/vm') : import.meta.dirname;
    const argv = [process.execPath, path.join(dir, script)];
    const [cmd, ...args] = options.unprivileged ? ['setpriv', ...UNPRIVILEGED, ...argv] : argv;
    // what fork() does, through setpriv when asked: node finds the IPC channel from its environment
    const child = spawn(cmd!, args, { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    const w = new WorkerProcess(child, options.name ?? script);
    await w.next((m) => m.type === 'ready', 60_000);
    return w;
  }

  private died(): Error {
    return new Error(`worker ${this.name} (pid ${this.child.pid}) ${this.exitInfo}; its output:\n${this.errText}`);
  }

  send(message: Message): void {
    this.child.send(message);
  }

  /** The next message that matches (queued ones first). */
  next<T = Message>(match: (m: Message) => boolean, timeoutMs = 170_000): Promise<T> {
    const i = this.queue.findIndex(match);
    if (i >= 0) return Promise.resolve(this.queue.splice(i, 1)[0] as T);
    if (this.exitInfo) return Promise.reject(this.died());
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        const j = this.waiters.indexOf(waiter);
        if (j >= 0) this.waiters.splice(j, 1);
        reject(new Error(`worker ${this.name} did not answer within ${timeoutMs} ms; its output:\n${this.errText}`));
      }, timeoutMs);
      const waiter = {
        match,
        resolve: (m: Message) => { clearTimeout(timer); resolve(m as T); },
        reject: (e: Error) => { clearTimeout(timer); reject(e); },
      };
      this.waiters.push(waiter);
    });
  }

  /** Sends a command and waits for the answer with its id; a command that threw rejects. */
  async request<T = Message>(message: Message, timeoutMs?: number): Promise<T> {
    const id = this.nextId++;
    this.send({ ...message, id });
    const reply = await this.next<Message>((m) => m.id === id, timeoutMs);
    if (reply.type === 'error') {
      const e = reply.error as ErrorRecord;
      throw new Error(`worker ${this.name}: ${String(message.cmd)} threw ${e.class}${e.step ? ` (${e.route}: ${e.step} ${e.errno})` : ''}: ${e.message}`);
    }
    return reply as T;
  }

  /** Asks it to exit (closing what it holds), else kills it. */
  async stop(): Promise<void> {
    if (this.exitInfo) return;
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    try {
      this.child.send({ cmd: 'exit' });
    } catch {
      this.child.kill('SIGKILL');
    }
    await this.exited;
    clearTimeout(timer);
  }
}

/** Answers commands on the IPC channel, in a worker script; a handler's result (or error) is the reply. */
export function serveCommands(handlers: Record<string, (m: Message) => unknown>): void {
  process.on('message', (m: Message) => {
    const cmd = String(m.cmd);
    if (cmd === 'exit') {
      handlers.exit?.(m);
      process.disconnect();
      return;
    }
    const handler = handlers[cmd];
    let reply: Record<string, unknown>;
    try {
      if (!handler) throw new Error(`unknown command ${cmd}`);
      const result = handler(m);
      if (result === undefined) return; // the handler replies itself
      if (result instanceof Promise) {
        result.then((r: object) => process.send!({ id: m.id, ...r }), (e: unknown) => process.send!({ id: m.id, type: 'error', error: errorRecord(e) }));
        return;
      }
      reply = { id: m.id, ...(result as object) };
    } catch (e) {
      reply = { id: m.id, type: 'error', error: errorRecord(e) };
    }
    process.send!(reply);
  });
  // the test process went away (or told us to go): exit, which releases whatever we hold
  process.on('disconnect', () => process.exit(0));
  process.send!({ type: 'ready', pid: process.pid, uid: process.getuid!() });
}

/** Gives nodes to `uid` (and its group) until the returned function puts their old owners back. */
export function chownNodes(paths: string[], uid: number): () => void {
  const saved = paths.map((p) => ({ p, st: fs.statSync(p) }));
  try {
    for (const p of paths) fs.chownSync(p, uid, uid);
  } catch (e) {
    for (const { p, st } of saved) fs.chownSync(p, st.uid, st.gid);
    throw e;
  }
  return () => {
    for (const { p, st } of saved) fs.chownSync(p, st.uid, st.gid);
  };
}

/** Hides a /dev node under another name in its directory until the returned function restores it. */
export function hideNode(node: string): () => void {
  const hidden = path.join(path.dirname(node), `.${path.basename(node)}.hidden-by-test`);
  fs.renameSync(node, hidden);
  return () => fs.renameSync(hidden, node);
}

/** Sets a node's mode until the returned function puts the old one back. */
export function chmodNode(node: string, mode: number): () => void {
  const old = fs.statSync(node).mode & 0o7777;
  fs.chmodSync(node, mode);
  return () => fs.chmodSync(node, old);
}

/** No stack trace in a CLI's output (what a user sees is one message, and a hint). */
export const STACK_TRACE = /^\s+at .+[(:]\d+/m;

let hostRequests = 0;

/**
 * Asks the host to run a QMP command on this guest's QEMU (testbed/qmp-relay.mjs): device_del,
 * device_add, or HMP through human-monitor-command. Resolves with QEMU's answer.
 */
export async function hostCommand(command: Record<string, unknown>, timeoutMs = 30_000): Promise<{ return?: unknown; error?: { class: string; desc: string } }> {
  const dir = '/vmrun/host-requests';
  fs.mkdirSync(dir, { recursive: true });
  const id = `${process.pid}-${++hostRequests}`;
  fs.writeFileSync(`${dir}/${id}.tmp`, JSON.stringify(command));
  fs.renameSync(`${dir}/${id}.tmp`, `${dir}/${id}.json`);
  const reply = `${dir}/${id}.reply.json`;
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await new Promise((r) => setTimeout(r, 50))) {
    if (fs.existsSync(reply)) return JSON.parse(fs.readFileSync(reply, 'utf8')) as { return?: unknown; error?: { class: string; desc: string } };
  }
  throw new Error(`the host did not answer ${JSON.stringify(command)} within ${timeoutMs} ms (is testbed/qmp-relay.mjs running?)`);
}

/** The QMP events the host saw so far (DEVICE_DELETED, ...). */
export function qmpEvents(): { event: string; data?: Record<string, unknown> }[] {
  try {
    return fs.readFileSync('/vmrun/qmp-events.jsonl', 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { event: string });
  } catch {
    return [];
  }
}

/** Polls until `check` is true (or throws with `what` after timeoutMs). */
export async function until(what: string, check: () => boolean, timeoutMs = 30_000): Promise<number> {
  const t0 = Date.now();
  while (!check()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return Date.now() - t0;
}

/** edu's DMA buffer inside the device (QEMU hw/misc/edu.c), the other end of every edu DMA */
export const EDU_BUFFER = 0x40000n;

/**
 * Peer-to-peer through edu A's DMA engine: x from RAM (ram, mapped at ramIova) into A's buffer, then
 * from there to peerIova, where A's context maps edu B's BAR. A's bus mastering and B's memory decoding
 * are the caller's to turn on.
 */
export async function eduDmaToPeer(barA: RegionMapping, ram: { bytes: Buffer }, ramIova: bigint, peerIova: bigint, x: number): Promise<void> {
  ram.bytes.writeUInt32LE(x, 0);
  await eduDma(barA, ramIova, EDU_BUFFER, 4, false);
  await eduDma(barA, EDU_BUFFER, peerIova, 4, true);
}

/** One edu DMA (RAM -> edu, or edu -> RAM with toRam), waited for on edu's command register (up to 10 s). */
export async function eduDma(bar: RegionMapping, src: bigint, dst: bigint, count: number, toRam: boolean): Promise<void> {
  bar.write64(0x80, src);
  bar.write64(0x88, dst);
  bar.write64(0x90, BigInt(count));
  bar.dmaWriteBarrier();
  bar.write64(0x98, 1n | (toRam ? 2n : 0n));
  for (let i = 0; (bar.read64(0x98) & 1n) !== 0n; i++) {
    if (i > 1000) throw new Error('edu DMA did not finish');
    await new Promise((r) => setTimeout(r, 10));
  }
  bar.dmaReadBarrier();
}
