// What every CLI command shares: output, the logger, the error report with its exit code, and the
// route and passed-fd options.
import type { Argv } from 'yargs';
import { ExitCode, UsageError, VfioError } from '../errors.js';
import { createStderrLogger, type LogLevel, type Logger } from '../log.js';
import { ROUTE_POLICIES, type RoutePolicy } from '../routes/select.js';
import type { PassedFds } from '../routes/passed-fds.js';
import { formatError } from './format.js';

export const LOG_LEVELS: readonly LogLevel[] = ['silent', 'error', 'warn', 'info', 'debug', 'trace'];

export interface Common {
  json: boolean;
  'log-level'?: LogLevel;
  verbose: number;
}

export function out(text: string): void {
  process.stdout.write(`${text}\n`);
}

export async function logger(argv: Common): Promise<Logger> {
  const level: LogLevel = argv['log-level'] ?? (argv.verbose >= 2 ? 'debug' : argv.verbose === 1 ? 'info' : 'silent');
  return createStderrLogger(level);
}

/** Runs a command; maps every error to a message and an exit code. */
export async function run(argv: Common, body: () => Promise<void> | void): Promise<void> {
  try {
    await body();
  } catch (e) {
    process.exitCode = report(e, argv);
  }
}

export function report(e: unknown, argv: Common): number {
  if (e instanceof VfioError) {
    if (argv.json) out(JSON.stringify(e.toJSON(), null, 2));
    else process.stderr.write(`${formatError(e)}\n`);
    return e.exitCode;
  }
  const message = e instanceof Error ? e.message : String(e);
  if (argv.json) out(JSON.stringify({ error: 'internal', message, exit_code: ExitCode.INTERNAL }, null, 2));
  else process.stderr.write(`vfio-bind: internal error: ${message}\n  hint: run again with --log-level debug, and report it with that output\n`);
  if (argv['log-level'] === 'debug' || argv['log-level'] === 'trace') process.stderr.write(`${(e as Error)?.stack ?? ''}\n`);
  return ExitCode.INTERNAL;
}

/** --device-fd/--iommufd-fd or --group-fd/--container-fd: nodes a privileged parent opened for us. */
export function fdOptions<T>(y: Argv<T>) {
  return y
    .option('device-fd', { type: 'number', requiresArg: true, describe: 'an inherited fd of the device\'s VFIO cdev (with --iommufd-fd)' })
    .option('iommufd-fd', { type: 'number', requiresArg: true, describe: 'an inherited fd of /dev/iommu' })
    .option('group-fd', { type: 'number', requiresArg: true, describe: 'an inherited fd of the device\'s group node (with --container-fd)' })
    .option('container-fd', { type: 'number', requiresArg: true, describe: 'an inherited fd of /dev/vfio/vfio' });
}

export interface FdArgs {
  'device-fd'?: number;
  'iommufd-fd'?: number;
  'group-fd'?: number;
  'container-fd'?: number;
}

/** The passed fds, for openDevice; inherited fds are this process's own, so it closes them. */
export function passedFds(argv: FdArgs): { fds: PassedFds; ownFds: boolean } | Record<string, never> {
  for (const name of ['device-fd', 'iommufd-fd', 'group-fd', 'container-fd'] as const) {
    const value = argv[name];
    if (value !== undefined && (!Number.isInteger(value) || value < 0)) {
      throw new UsageError(`--${name} needs a file descriptor number, not ${String(value)}`, { hint: 'e.g. --device-fd 3 --iommufd-fd 4 for fds inherited from a parent' });
    }
  }
  const fds: PassedFds = {};
  if (argv['device-fd'] !== undefined) fds.device = argv['device-fd'];
  if (argv['iommufd-fd'] !== undefined) fds.iommufd = argv['iommufd-fd'];
  if (argv['group-fd'] !== undefined) fds.group = argv['group-fd'];
  if (argv['container-fd'] !== undefined) fds.container = argv['container-fd'];
  return Object.keys(fds).length > 0 ? { fds, ownFds: true } : {};
}

export function routeOption<T>(y: Argv<T>) {
  return y.option('route', {
    choices: ROUTE_POLICIES as RoutePolicy[],
    default: 'auto' as RoutePolicy,
    requiresArg: true, // a bare --route would otherwise quietly mean the default
    describe: 'auto: iommufd, falling back to legacy where iommufd is unavailable; iommufd or legacy: that route only',
  });
}

