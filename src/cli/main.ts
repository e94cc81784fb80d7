// The `vfio-bind` command line: a thin shell over the library. Every failure ends as one message (or,
// with --json, one JSON document on stdout) and a documented exit code; never a stack trace.
import yargs from 'yargs';
import { ExitCode, UsageError, VfioError } from '../errors.js';
import type { LogLevel } from '../log.js';
import { listDevices, whyNoVfio } from '../discovery/locate.js';
import { visibleRoutes } from '../routes/index.js';
import { nativeKernel, openDevice, type VfioDevice } from '../index.js';
import type { RoutePolicy } from '../routes/select.js';
import { hexId } from '../device/config.js';
import { packageVersion } from '../package.js';
import { LOG_LEVELS, fdOptions, logger, out, passedFds, report, routeOption, run, type Common, type FdArgs } from './common.js';
import { migrateCommand } from './migrate.js';
import { formatDoctor, formatIrqs, formatList, formatRegions, formatReport, formatSmoke, type ListedDevice } from './format.js';

function listCommand(argv: Common): void {
  const kernel = nativeKernel();
  const devices: ListedDevice[] = listDevices(kernel).map((loc) => ({
    device: loc.name,
    bus: loc.bus,
    driver: loc.driver,
    group: loc.group?.id ?? null,
    noiommu: loc.group?.noiommu ?? false,
    cdev: loc.cdev?.devnum ? loc.cdev.name : null,
    routes: visibleRoutes(kernel, loc),
    viable: (loc.group?.blockers.length ?? 0) === 0,
  }));
  const why = devices.length === 0 ? whyNoVfio(kernel) : null;
  if (argv.json) {
    out(JSON.stringify({ devices, ...(why ? { none_because: why } : {}) }, null, 2));
  } else if (why) {
    out(`No VFIO devices: ${why}.`);
  } else {
    out(formatList(devices));
  }
}

async function bindCommand(argv: Common & FdArgs & { device: string; route: RoutePolicy; hold: boolean }): Promise<void> {
  const device = openDevice(argv.device, { route: argv.route, logger: await logger(argv), ...passedFds(argv) });
  try {
    out(argv.json ? JSON.stringify(device.report, null, 2) : formatReport(device.report));
    if (argv.hold && (await hold(device)) === 'released') process.exitCode = ExitCode.RELEASED;
  } finally {
    device.close();
  }
}

/**
 * Holds the device until SIGINT or SIGTERM, or until the host asks for it back (an unbind, a remove,
 * a hot-unplug), which releases it at once: a holder must never keep the host's unbind waiting.
 */
function hold(device: VfioDevice): Promise<'signal' | 'released'> {
  return new Promise((resolve) => {
    // Signal handlers do not keep Node's event loop alive; this timer does, until a signal comes.
    const keepAlive = setInterval(() => {}, 1 << 30);
    const done = (how: 'signal' | 'released'): void => {
      clearInterval(keepAlive);
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve(how);
    };
    const onSignal = (): void => done('signal');
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    device.on('request', (request) => {
      process.stderr.write(`vfio-bind: the host asked for ${device.name} back (a VFIO device request: an unbind, a remove or a hot-unplug); releasing it\n`);
      request.release();
      done('released');
    });
    device.on('device-error', (e) => process.stderr.write(`vfio-bind: ${device.name} reported a device error (AER, #${e.count}); still holding it\n`));
    // Only now: whoever waits for this line may signal at once, and must find the handlers in place
    // (a SIGTERM before them kills the process by default action: no release, no exit status 0).
    process.stderr.write(`holding ${device.name}; press Ctrl-C (or send SIGTERM) to release it\n`);
  });
}

async function infoCommand(argv: Common & FdArgs & { device: string; route: RoutePolicy }): Promise<void> {
  const device = openDevice(argv.device, { route: argv.route, logger: await logger(argv), ...passedFds(argv) });
  try {
    const info = device.info();
    const regions = device.regions();
    const irqs = device.irqs();
    const pci = info.flags.includes('PCI') ? device.pciIds() : null;
    const migration = device.migration();
    const dmaLogging = device.dmaLogging.supported();
    if (argv.json) {
      out(JSON.stringify({
        report: device.report,
        migration,
        dmaLogging,
        ...(pci ? { pci: { vendor: hexId(pci.vendor, 4), device: hexId(pci.device, 4), class: hexId(pci.class, 6) } } : {}),
        regions: regions.map((r) => ({ ...r, size: r.size.toString(), offset: r.offset.toString(),
          sparseMmap: r.sparseMmap?.map((a) => ({ offset: a.offset.toString(), size: a.size.toString() })) ?? null })),
        irqs,
      }, null, 2));
    } else {
      out(formatReport(device.report));
      if (pci) out(`  pci:    ${hexId(pci.vendor, 4)}:${hexId(pci.device, 4)} class ${hexId(pci.class, 6)}`);
      out(`  migration: ${migration ? migration.flags.join(', ') : 'none'}`);
      out(`  dma logging: ${dmaLogging ? 'yes (the device logs the pages it writes)' : 'no'}`);
      out('');
      out(formatRegions(regions.filter((r) => r.size > 0n)));
      out('');
      out(formatIrqs(irqs.filter((i) => i.count > 0)));
    }
  } finally {
    device.close();
  }
}

async function driverCommand(argv: Common & { device: string; to?: string; restore: boolean; group: boolean }): Promise<void> {
  const hint = 'vfio-bind driver <device> --to vfio-pci, or vfio-bind driver <device> --restore';
  if (argv.to === undefined && !argv.restore) throw new UsageError('say where the device goes: --to vfio-pci, or --restore', { hint });
  if (argv.to !== undefined && argv.restore) throw new UsageError('--to and --restore exclude each other', { hint });
  if (argv.to !== undefined && argv.to !== 'vfio-pci') throw new UsageError(`--to ${argv.to}: only vfio-pci (use --restore to give a device back)`, { hint });
  const { moveToVfio, restoreDriver } = await import('../host/driver.js');
  const options = { group: argv.group, logger: await logger(argv) };
  const changes = argv.restore ? restoreDriver(nativeKernel(), argv.device, options) : moveToVfio(nativeKernel(), argv.device, options);
  if (argv.json) out(JSON.stringify({ changes }, null, 2));
  else for (const c of changes) out(c.changed ? `${c.device}: ${c.from ?? 'no driver'} -> ${c.to ?? 'no driver'}` : `${c.device}: already on ${c.to ?? 'no driver'}, unchanged`);
}

async function doctorCommand(argv: Common & { device?: string }): Promise<void> {
  const { doctor } = await import('../host/doctor.js');
  const report = doctor(nativeKernel(), argv.device);
  if (argv.json) out(JSON.stringify(report, null, 2));
  else out(formatDoctor(report));
  process.exitCode = report.exit_code;
}

async function smokeCommand(argv: Common & { devices: string[]; route: RoutePolicy }): Promise<void> {
  const { smokeTest, smokeExitCode } = await import('../host/smoke.js');
  const log = await logger(argv);
  const results = argv.devices.map((d) => smokeTest(nativeKernel(), d, { route: argv.route, logger: log }));
  if (argv.json) out(JSON.stringify({ results }, null, 2));
  else for (const r of results) out(formatSmoke(r));
  process.exitCode = smokeExitCode(results);
}

export async function main(args: string[]): Promise<void> {
  // A reader that went away (`vfio-bind list | head -1`) is not an error worth a stack trace.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EPIPE') throw e;
      process.exitCode ??= ExitCode.OK;
    });
  }
  const parser = yargs(args)
    .scriptName('vfio-bind')
    .usage('$0 <command> [options]\n\nBinds PCI and mdev devices through VFIO: iommufd first, the legacy container where iommufd is unavailable.')
    .option('json', { type: 'boolean', default: false, describe: 'print one JSON document on stdout' })
    .option('log-level', { choices: LOG_LEVELS as LogLevel[], requiresArg: true, describe: 'pino log level of the structured log on stderr' })
    .option('verbose', { alias: 'v', type: 'count', describe: 'log steps on stderr (-v info, -vv debug: every ioctl)' })
    .command('list', 'list devices bound to VFIO or VFIO-capable, with the routes that look available', {}, (a) =>
      run(a as unknown as Common, () => listCommand(a as unknown as Common)))
    .command('bind <device>', 'bind a device and report the route taken and why',
      (y) => fdOptions(routeOption(y))
        .positional('device', { type: 'string', demandOption: true, describe: 'PCI address, sysfs path, /dev/vfio/devices/vfioN or mdev UUID' })
        .option('hold', { type: 'boolean', default: false, describe: 'keep the device bound until Ctrl-C, or until the host asks for it back (then exit 9)' }),
      (a) => run(a as unknown as Common, () => bindCommand(a as never)))
    .command('info <device>', 'bind a device and show its flags, regions and PCI ids',
      (y) => fdOptions(routeOption(y)).positional('device', { type: 'string', demandOption: true }),
      (a) => run(a as unknown as Common, () => infoCommand(a as never)))
    .command('driver <device>', 'move a PCI device to vfio-pci, or back to its own driver (needs root)',
      (y) => y.positional('device', { type: 'string', demandOption: true })
        .option('to', { choices: ['vfio-pci'], requiresArg: true, describe: 'bind the device to vfio-pci (its driver is remembered under /run)' })
        .option('restore', { type: 'boolean', default: false, describe: 'give it back to the driver it had' })
        .option('group', { type: 'boolean', default: false, describe: 'move the other devices of its IOMMU group too' }),
      (a) => run(a as unknown as Common, () => driverCommand(a as never)))
    .command('doctor [device]', 'check that this host (and a device) can assign devices, with the fix for what is not',
      (y) => y.positional('device', { type: 'string' }),
      (a) => run(a as unknown as Common, () => doctorCommand(a as never)))
    .command('migrate', 'save a device\'s migration state, load it into another, or move its state (VFIO migration v2)',
      (y) => migrateCommand(y), () => undefined)
    .command('smoke <devices..>', 'bind, read ids, list regions and IRQs, map one DMA page, close: one line per device (for CI)',
      (y) => routeOption(y).positional('devices', { type: 'string', array: true, demandOption: true }),
      (a) => run(a as unknown as Common, () => smokeCommand(a as never)))
    .completion('completion', 'print a bash/zsh completion script (vfio-bind completion >> ~/.bashrc)')
    .demandCommand(1, 'name a command: list, bind, info, driver, doctor, migrate, smoke or completion')
    .strict()
    .version(packageVersion())
    .help()
    .alias('help', 'h')
    .epilogue('Exit codes: 0 ok, 1 internal error, 2 usage, 3 device not found or not VFIO\'s, 4 busy, 5 permission denied, 6 no usable route, 7 kernel refused, 8 no native addon for this platform, 9 released at the host\'s request, 10 the device refused a migration stream')
    .exitProcess(false)
    .fail((msg, err) => {
      // Thrown, so that yargs stops here: a command whose options were refused must not run.
      throw err instanceof VfioError ? err : new UsageError(msg ?? err?.message ?? 'invalid command line', { hint: 'vfio-bind --help shows the commands and options' });
    });
  try {
    await parser.parseAsync();
  } catch (e) {
    process.exitCode = report(e, { json: args.includes('--json'), verbose: 0 });
  }
}
