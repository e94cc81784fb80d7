// `vfio-bind migrate`: a device's migration state to a file (or stdout) and back into another device
// of the same type, and the state machine by hand. A save to a file goes to FILE.partial-<pid> and is
// renamed into place only once the stream ended and the device reached its final state, so a failed
// save never leaves a truncated file where a good one is expected.
import fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Argv } from 'yargs';
import { UsageError } from '../errors.js';
import { isMigrationState, type MigrationState } from '../device/migration.js';
import { openDevice, type VfioDevice } from '../index.js';
import type { RoutePolicy } from '../routes/select.js';
import { fdOptions, logger, out, passedFds, routeOption, run, type Common, type FdArgs } from './common.js';

type DeviceArgs = Common & FdArgs & { device: string; route: RoutePolicy };
/** the states `migrate state --set` moves to: those without a data session, which would end with this process */
const SETTABLE: readonly MigrationState[] = ['RUNNING', 'STOP', 'RUNNING_P2P'];

async function open(argv: DeviceArgs): Promise<VfioDevice> {
  return openDevice(argv.device, { route: argv.route, logger: await logger(argv), ...passedFds(argv) });
}

const ms = (t0: number): number => Math.round((performance.now() - t0) * 10) / 10;

async function saveCommand(argv: DeviceArgs & { to?: string; precopy: boolean; after: 'STOP' | 'RUNNING' }): Promise<void> {
  const toStdout = argv.to === undefined || argv.to === '-';
  if (toStdout && process.stdout.isTTY) throw new UsageError('the state is binary: give --to FILE, or redirect stdout', { hint: 'vfio-bind migrate save <device> --to state.bin' });
  if (toStdout && argv.json) throw new UsageError('--json prints its summary on stdout, where the state would go: give --to FILE');
  const device = await open(argv);
  const partial = toStdout ? null : `${argv.to}.partial-${process.pid}`;
  try {
    const before = device.migrator.state();
    const dataSize = device.migrator.dataSize();
    const t0 = performance.now();
    let precopyMs: number | null = null;
    const save = device.migrator.save({ precopy: argv.precopy, after: argv.after });
    save.on('phase', (phase: string) => {
      if (phase === 'stop-copy' && argv.precopy) precopyMs = ms(t0);
    });
    const sink: Writable = partial ? fs.createWriteStream(partial, { flags: 'wx', mode: 0o600 }) : process.stdout;
    await pipeline(save as Readable, sink, { end: partial !== null });
    if (partial) fs.renameSync(partial, argv.to!);
    const summary = {
      device: device.name, route: device.route, file: toStdout ? '-' : argv.to, bytes: save.bytes, precopy_bytes: save.precopyBytes,
      data_size: dataSize.toString(), states: { before, after: device.migrator.state() }, ms: { total: ms(t0), precopy: precopyMs },
    };
    if (argv.json) out(JSON.stringify(summary, null, 2));
    else {
      const line = `${device.name}: saved ${save.bytes} bytes${argv.precopy ? ` (${save.precopyBytes} in PRE_COPY)` : ''} to ${toStdout ? 'stdout' : argv.to} in ${summary.ms.total} ms; ${before} -> ${summary.states.after}`;
      if (toStdout) process.stderr.write(`${line}\n`);
      else out(line);
    }
  } finally {
    if (partial && fs.existsSync(partial)) fs.rmSync(partial, { force: true });
    device.close();
  }
}

async function loadCommand(argv: DeviceArgs & { from?: string; after: 'RUNNING' | 'STOP' }): Promise<void> {
  const fromStdin = argv.from === undefined || argv.from === '-';
  if (fromStdin && process.stdin.isTTY) throw new UsageError('the state is binary: give --from FILE, or redirect stdin', { hint: 'vfio-bind migrate load <device> --from state.bin' });
  // the file first: a missing file is the caller's error, before the device is touched
  const source: Readable = fromStdin ? process.stdin : fs.createReadStream(argv.from!, { fd: openForReading(argv.from!) });
  const device = await open(argv);
  try {
    const before = device.migrator.state();
    const t0 = performance.now();
    const load = device.migrator.load({ after: argv.after });
    await pipeline(source, load);
    const summary = { device: device.name, route: device.route, file: fromStdin ? '-' : argv.from, bytes: load.bytes,
      states: { before, after: device.migrator.state() }, ms: { total: ms(t0) } };
    if (argv.json) out(JSON.stringify(summary, null, 2));
    else out(`${device.name}: loaded ${load.bytes} bytes from ${fromStdin ? 'stdin' : argv.from} in ${summary.ms.total} ms; ${before} -> ${summary.states.after}`);
  } finally {
    source.destroy();
    device.close();
  }
}

function openForReading(file: string): number {
  try {
    return fs.openSync(file, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    throw new UsageError(`cannot read ${file}: ${code}`, { errno: code, path: file });
  }
}

async function stateCommand(argv: DeviceArgs & { set?: string; recover: boolean }): Promise<void> {
  if (argv.set !== undefined && argv.recover) throw new UsageError('--set and --recover exclude each other');
  const target = argv.set?.toUpperCase();
  if (target !== undefined && !(isMigrationState(target) && SETTABLE.includes(target))) {
    throw new UsageError(`--set ${argv.set}: one of ${SETTABLE.join(', ')}`, { hint: 'the states with a data stream are reached by migrate save and migrate load' });
  }
  const device = await open(argv);
  try {
    const support = device.migrator.support();
    const before = support ? device.migrator.state() : null;
    if (target) device.migrator.setState(target as MigrationState);
    if (argv.recover) device.migrator.recover();
    const after = support ? device.migrator.state() : null;
    if (argv.json) out(JSON.stringify({ device: device.name, route: device.route, migration: support, state: after, ...(target || argv.recover ? { before } : {}) }, null, 2));
    else if (!support) out(`${device.name}: no migration support`);
    else out(before === after || (!target && !argv.recover) ? `${device.name}: ${after} (${support.flags.join(', ')})` : `${device.name}: ${before} -> ${after}`);
  } finally {
    device.close();
  }
}

/** The `migrate` command and its subcommands. */
export function migrateCommand<T>(y: Argv<T>): Argv<T> {
  const device = <U>(a: Argv<U>) => fdOptions(routeOption(a)).positional('device', { type: 'string', demandOption: true, describe: 'the device (PCI address, mdev UUID, ...)' });
  return y
    .command('save <device>', 'save the device\'s migration state (RUNNING -> [PRE_COPY ->] STOP_COPY -> STOP) to a file or stdout',
      (a) => device(a)
        .option('to', { type: 'string', requiresArg: true, describe: 'the file to write (default: stdout); written whole or not at all' })
        .option('precopy', { type: 'boolean', default: false, describe: 'start in PRE_COPY while the device runs (needs PRE_COPY support)' })
        .option('after', { choices: ['STOP', 'RUNNING'], default: 'STOP', describe: 'the state the device is left in' }),
      (a) => run(a as unknown as Common, () => saveCommand(a as never)))
    .command('load <device>', 'load a saved state into a device of the same type (RESUMING -> STOP -> RUNNING)',
      (a) => device(a)
        .option('from', { type: 'string', requiresArg: true, describe: 'the file to read (default: stdin)' })
        .option('after', { choices: ['RUNNING', 'STOP'], default: 'RUNNING', describe: 'the state the device is left in' }),
      (a) => run(a as unknown as Common, () => loadCommand(a as never)))
    .command('state <device>', 'show the device\'s migration state, or move it',
      (a) => device(a)
        .option('set', { type: 'string', requiresArg: true, describe: `move to ${SETTABLE.join(', ')}` })
        .option('recover', { type: 'boolean', default: false, describe: 'reset the device (VFIO_DEVICE_RESET): out of ERROR, back to RUNNING' }),
      (a) => run(a as unknown as Common, () => stateCommand(a as never)))
    .demandCommand(1, 'name a migrate command: save, load or state') as unknown as Argv<T>;
}
