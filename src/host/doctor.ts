// `vfio-bind doctor`: is this host ready to assign devices, and this device? One check per line, each
// with its evidence and, when something is off, the fix. Nothing is opened or bound. The checks are a
// list of small functions over the facts they share (HOST_CHECKS, DEVICE_CHECKS); the report's exit
// code is the first failing check's.
import { createRequire } from 'node:module';
import { ExitCode, VfioError, type ExitCodeValue } from '../errors.js';
import { locateDevice, readOrNull as read, type DeviceLocation } from '../discovery/locate.js';
import { ROUTES } from '../routes/index.js';
import type { RouteName } from '../routes/names.js';
import { unsafeInterruptsParam } from '../routes/route.js';
import { predictRoute, type RoutePrediction } from '../routes/select.js';
import type { Kernel } from '../sys/kernel.js';
import { migrationOffer } from './migration-offer.js';

/** node:zlib, loaded only when a kernel's config must be read from /proc/config.gz (every CLI command
 *  loads this module, and zlib is a noticeable part of start-up under emulation). */
const gunzip = (data: Buffer): Buffer => (createRequire(import.meta.url)('node:zlib') as typeof import('node:zlib')).gunzipSync(data);

export type CheckStatus = 'ok' | 'info' | 'warn' | 'fail';

export interface Check {
  id: string;
  status: CheckStatus;
  summary: string;
  evidence: string[];
  fix?: string;
  /** the exit code a failing check stands for */
  exitCode?: ExitCodeValue;
}

export interface DoctorReport {
  checks: Check[];
  device: {
    name: string;
    driver: string | null;
    group: number | null;
    prediction: RoutePrediction;
  } | null;
  /** with a device: whether bind should succeed */
  assignable: boolean | null;
  verdict: string;
  exit_code: ExitCodeValue;
}

/** the order doctor names the routes in, where it names both */
const ROUTE_ORDER: readonly RouteName[] = ['legacy', 'iommufd'];


const DEVICE_TREE = '/sys/firmware/devicetree/base';

/** The device-tree node of a GICv3 ITS (a child of the interrupt controller), or null. */
function gicItsNode(kernel: Kernel): string | null {
  for (const top of list(kernel, DEVICE_TREE).filter((n) => n.startsWith('intc'))) {
    for (const child of list(kernel, `${DEVICE_TREE}/${top}`).filter((n) => n.startsWith('its'))) {
      const node = `${DEVICE_TREE}/${top}/${child}`;
      if ((read(kernel, `${node}/compatible`) ?? '').split('\0').includes('arm,gic-v3-its')) return node;
    }
  }
  return null;
}

const MADT = '/sys/firmware/acpi/tables/APIC';

/** Whether ACPI's MADT (root may read it) lists a GIC ITS, subtable type 0x0F: arm64 servers describe
 *  their interrupt controller there, not in a device tree. After the 36-byte header come 8 bytes of
 *  the MADT's own, then subtables of (type, length, ...). */
function madtHasGicIts(kernel: Kernel): boolean {
  let table: Buffer;
  try {
    table = kernel.readBytes(MADT);
  } catch {
    return false;
  }
  if (table.length < 44 || table.toString('latin1', 0, 4) !== 'APIC') return false;
  const end = Math.min(table.length, table.readUInt32LE(4));
  for (let at = 44; at + 2 <= end && table[at + 1]! >= 2; at += table[at + 1]!) {
    if (table[at] === 0x0f) return true;
  }
  return false;
}

function list(kernel: Kernel, path: string): string[] {
  try {
    return kernel.readdir(path).sort();
  } catch {
    return [];
  }
}

/** The running kernel's config, from /boot or /proc/config.gz, when readable. */
function kernelConfig(kernel: Kernel, release: string): { source: string; options: Map<string, string> } | null {
  let text = read(kernel, `/boot/config-${release}`);
  let source = `/boot/config-${release}`;
  if (text === null) {
    try {
      text = gunzip(kernel.readBytes('/proc/config.gz')).toString('utf8');
      source = '/proc/config.gz';
    } catch {
      text = null;
    }
  }
  if (text === null) return null;
  const options = new Map<string, string>();
  for (const line of text.split('\n')) {
    const set = /^(CONFIG_[A-Z0-9_]+)=(.*)$/.exec(line);
    const unset = /^# (CONFIG_[A-Z0-9_]+) is not set$/.exec(line);
    if (set) options.set(set[1]!, set[2]!);
    else if (unset) options.set(unset[1]!, 'n');
  }
  return { source, options };
}

/** What the checks read, each fact read once and only when a check asks for it. */
class Facts {
  private memo = new Map<string, unknown>();
  constructor(readonly kernel: Kernel, readonly spec: string | undefined) {}

  private once<T>(key: string, read: () => T): T {
    if (!this.memo.has(key)) this.memo.set(key, read());
    return this.memo.get(key) as T;
  }

  get release(): string {
    return this.once('release', () => read(this.kernel, '/proc/sys/kernel/osrelease') ?? 'unknown');
  }
  get iommus(): string[] {
    return this.once('iommus', () => list(this.kernel, '/sys/class/iommu'));
  }
  get noiommuMode(): boolean {
    return this.once('noiommu', () => read(this.kernel, '/sys/module/vfio/parameters/enable_unsafe_noiommu_mode') === 'Y');
  }
  /**
   * How MSIs are isolated, which VFIO requires (iommu_group_has_isolated_msi): x86 interrupt
   * remapping, seen in the interrupt domains the kernel lists; or on arm64 a GICv3 ITS, whose MSI
   * domain the kernel marks isolated, seen in the device tree or ACPI's MADT (an ITS lists no
   * interrupt in /proc/interrupts until a device allocates one). null: none of these.
   */
  get msiIsolation(): { by: 'remapping' | 'its'; evidence: string } | null {
    return this.once('msiIsolation', () => {
      const interrupts = read(this.kernel, '/proc/interrupts') ?? '';
      if (/\bIR-(PCI-MSI|IO-APIC|PCI-MSIX)/.test(interrupts)) return { by: 'remapping' as const, evidence: '/proc/interrupts lists IR- (remapped) interrupt domains' };
      const its = gicItsNode(this.kernel);
      if (its) return { by: 'its' as const, evidence: `${its}: a GICv3 ITS` };
      if (madtHasGicIts(this.kernel)) return { by: 'its' as const, evidence: `${MADT} (ACPI's MADT) lists a GIC ITS` };
      if (/\bITS-(PCI-)?MSI\b/.test(interrupts)) return { by: 'its' as const, evidence: '/proc/interrupts lists ITS-MSI interrupts' };
      return null;
    });
  }
  /** each route's allow_unsafe_interrupts parameter (null: its module is not loaded) */
  unsafeParam(route: RouteName): string | null {
    return this.once(`unsafe:${route}`, () => read(this.kernel, `/sys/module/${ROUTES[route].unsafeInterruptsModule}/parameters/allow_unsafe_interrupts`));
  }
  /** whether VFIO would accept this IOMMU's interrupts on a route: isolated, or accepted unsafely */
  interruptsAllowed(route: RouteName): boolean {
    return this.iommus.length === 0 || this.msiIsolation !== null || this.unsafeParam(route) === 'Y';
  }
  /** the named device, or the error that says why it is not one (null without a spec) */
  get device(): { loc: DeviceLocation } | { error: VfioError } | null {
    return this.once('device', () => {
      if (this.spec === undefined) return null;
      try {
        return { loc: locateDevice(this.kernel, this.spec) };
      } catch (e) {
        if (!(e instanceof VfioError)) throw e;
        return { error: e };
      }
    });
  }
  get loc(): DeviceLocation | null {
    const d = this.device;
    return d && 'loc' in d ? d.loc : null;
  }
  get prediction(): RoutePrediction | null {
    return this.once('prediction', () => (this.loc ? predictRoute(this.kernel, this.loc) : null));
  }
}

type CheckFn = (f: Facts) => Check | null;

function iommuCheck(f: Facts): Check {
  if (f.iommus.length > 0) {
    return { id: 'iommu', status: 'ok', summary: `IOMMU enabled (${f.iommus.join(', ')})`, evidence: [`/sys/class/iommu: ${f.iommus.join(' ')}`] };
  }
  return {
    id: 'iommu', status: f.noiommuMode ? 'warn' : 'fail',
    summary: f.noiommuMode ? 'no IOMMU: VFIO runs in its unsafe noiommu mode (devices can DMA anywhere)' : 'there is no IOMMU: no device can be assigned safely',
    evidence: ['/sys/class/iommu is empty', `kernel command line: ${read(f.kernel, '/proc/cmdline') || '(unreadable)'}`],
    fix: 'enable VT-d (Intel) or AMD-Vi in the firmware and add intel_iommu=on (Intel) or amd_iommu=on (AMD) to the kernel command line',
    ...(f.noiommuMode ? {} : { exitCode: ExitCode.NO_ROUTE }),
  };
}

/**
 * Without isolated MSIs (x86 interrupt remapping, an arm64 GICv3 ITS) VFIO refuses devices (EPERM)
 * unless told to accept the risk, which each route is told separately. The check keeps the id it had
 * when only x86 was known.
 */
function interruptRemappingCheck(f: Facts): Check | null {
  if (f.iommus.length === 0) return null;
  const set = ROUTE_ORDER.filter((r) => f.unsafeParam(r) !== null);
  const isolation = f.msiIsolation;
  const evidence = [
    isolation?.evidence ?? '/proc/interrupts lists no IR- (remapped) interrupt domain, and the device tree and ACPI\'s MADT show no GICv3 ITS',
    ...set.map((r) => `${ROUTES[r].unsafeInterruptsModule}.allow_unsafe_interrupts=${f.unsafeParam(r)}`),
  ];
  if (isolation?.by === 'remapping') return { id: 'interrupt-remapping', status: 'ok', summary: 'interrupt remapping is enabled', evidence };
  if (isolation?.by === 'its') return { id: 'interrupt-remapping', status: 'ok', summary: 'MSIs are isolated by the GICv3 ITS (no interrupt remapping needed)', evidence };
  const accepted = ROUTE_ORDER.filter((r) => f.unsafeParam(r) === 'Y');
  if (accepted.length > 0) {
    return { id: 'interrupt-remapping', status: 'warn', summary: `no interrupt remapping; accepted unsafely on the ${accepted.map((r) => `${r} route`).join(' and ')}`, evidence };
  }
  return {
    id: 'interrupt-remapping', status: 'fail',
    summary: 'interrupt remapping is missing: VFIO refuses to attach devices (EPERM)',
    evidence,
    fix: `enable interrupt remapping (x2APIC/IR in the firmware), or accept the risk with ${ROUTE_ORDER.map((r) => `${unsafeInterruptsParam(ROUTES[r])} (${r} route)`).join(' and ')} on the kernel command line`,
    exitCode: ExitCode.NO_ROUTE,
  };
}

function kernelCheck(f: Facts): Check {
  const config = kernelConfig(f.kernel, f.release);
  const hasIommufd = f.kernel.exists('/sys/class/misc/iommu');
  const evidence = config
    ? [`${config.source}: ${['CONFIG_VFIO', 'CONFIG_VFIO_PCI', 'CONFIG_VFIO_CONTAINER', 'CONFIG_IOMMUFD', 'CONFIG_VFIO_DEVICE_CDEV', 'CONFIG_VFIO_NOIOMMU']
        .map((o) => `${o.replace('CONFIG_', '')}=${config.options.get(o) ?? 'absent'}`).join(' ')}`]
    : ['no kernel config readable (/boot/config-*, /proc/config.gz); judged from sysfs'];
  evidence.push(hasIommufd ? '/sys/class/misc/iommu exists: iommufd is in the kernel' : '/sys/class/misc/iommu is absent');
  return {
    id: 'kernel', status: 'info',
    summary: hasIommufd
      ? `kernel ${f.release} has iommufd: the iommufd route is available`
      : `kernel ${f.release} has no iommufd (CONFIG_IOMMUFD not set): the legacy route will be used`,
    evidence,
  };
}

function modulesCheck(f: Facts): Check {
  const modules = ['vfio', 'vfio_pci', 'vfio_iommu_type1', 'iommufd'].map((m) => ({ m, loaded: f.kernel.exists(`/sys/module/${m}`) }));
  const vfioPciLoaded = f.kernel.exists('/sys/bus/pci/drivers/vfio-pci');
  return {
    id: 'modules', status: vfioPciLoaded ? 'ok' : 'fail',
    summary: vfioPciLoaded ? 'vfio-pci is loaded' : 'vfio-pci is not loaded',
    evidence: [modules.map((x) => `${x.m}: ${x.loaded ? 'loaded' : 'absent'}`).join(', ')],
    ...(vfioPciLoaded ? {} : { fix: 'modprobe vfio-pci', exitCode: ExitCode.NO_ROUTE }),
  };
}

/** A device spec that names nothing usable. */
function deviceCheck(f: Facts): Check | null {
  const d = f.device;
  if (!d || !('error' in d)) return null;
  const e = d.error;
  return { id: 'device', status: 'fail', summary: e.message, evidence: [], ...(e.hint ? { fix: e.hint } : {}), exitCode: e.exitCode };
}

/** Which VFIO nodes this user may open: both routes' context nodes, and the device's own. */
function permissionsCheck(f: Facts): Check {
  const nodes: string[] = [ROUTES.legacy.node, ROUTES.iommufd.node];
  const loc = f.loc;
  if (loc?.group) nodes.push(loc.group.node);
  if (loc?.cdev?.devnum) nodes.push(loc.cdev.nodes[0]!);
  const present = nodes.filter((n) => f.kernel.exists(n));
  const denied = present.filter((n) => !f.kernel.accessible(n));
  const uid = process.getuid?.() ?? -1;
  return {
    id: 'permissions', status: denied.length === 0 ? 'ok' : 'warn',
    summary: denied.length === 0 ? `this user (uid ${uid}) may open ${present.join(', ') || 'no VFIO node (none exist)'}` : `this user (uid ${uid}) cannot open ${denied.join(', ')}`,
    evidence: present.map((n) => `${n}: ${denied.includes(n) ? 'no read-write access' : 'read-write'}`),
    ...(denied.length ? { fix: 'run as root, or give this user access with a udev rule, e.g. SUBSYSTEM=="vfio", GROUP="kvm", MODE="0660" (and /dev/iommu likewise)' } : {}),
  };
}

function memlockCheck(f: Facts): Check {
  const m = /Max locked memory\s+(\S+)\s+(\S+)/.exec(read(f.kernel, '/proc/self/limits') ?? '');
  const capEff = /CapEff:\s+([0-9a-f]+)/.exec(read(f.kernel, '/proc/self/status') ?? '');
  const ipcLock = capEff ? (BigInt(`0x${capEff[1]}`) & (1n << 14n)) !== 0n : false;
  const soft = m ? (m[1] === 'unlimited' ? Infinity : Number(m[1])) : NaN;
  const enough = ipcLock || soft >= 64 * 1024 * 1024;
  return {
    id: 'memlock', status: enough ? 'ok' : 'warn',
    summary: ipcLock ? 'CAP_IPC_LOCK: DMA mappings are not limited by RLIMIT_MEMLOCK'
      : `RLIMIT_MEMLOCK is ${m ? `${m[1]} bytes` : 'unknown'}: DMA mappings beyond it fail${enough ? '' : ' (guest RAM must fit in it)'}`,
    evidence: [m ? `Max locked memory: soft ${m[1]}, hard ${m[2]}` : '/proc/self/limits unreadable', `CAP_IPC_LOCK: ${ipcLock ? 'yes' : 'no'}`],
    ...(enough ? {} : { fix: 'raise it: ulimit -l, LimitMEMLOCK= in a systemd unit, or /etc/security/limits.conf' }),
  };
}

function driverCheck(f: Facts): Check | null {
  const loc = f.loc;
  if (!loc) return null;
  const isVfio = loc.bus === 'mdev' || (loc.driver?.startsWith('vfio') ?? false);
  return {
    id: 'driver', status: isVfio ? 'ok' : 'fail',
    summary: isVfio ? `${loc.name} is bound to ${loc.driver}` : `${loc.name} is bound to ${loc.driver ?? 'no driver'}, not to vfio-pci`,
    evidence: [`${loc.sysfsPath}/driver -> ${loc.driver ?? '(none)'}`],
    ...(isVfio ? {} : { fix: `vfio-bind driver ${loc.name} --to vfio-pci`, exitCode: ExitCode.NOT_FOUND }),
  };
}

function groupCheck(f: Facts): Check | null {
  const loc = f.loc;
  if (!loc) return null;
  const g = loc.group;
  if (!g) {
    return {
      id: 'group', status: 'fail', summary: `${loc.name} has no IOMMU group`, evidence: [`${loc.sysfsPath}/iommu_group is absent`],
      fix: 'enable the IOMMU (intel_iommu=on or amd_iommu=on)', exitCode: ExitCode.NO_ROUTE,
    };
  }
  return {
    id: 'group', status: g.blockers.length === 0 ? 'ok' : 'fail',
    summary: g.blockers.length === 0 ? `IOMMU group ${g.id}${g.noiommu ? ' (noiommu)' : ''} is viable` : `IOMMU group ${g.id} is not viable: ${g.blockers.map((b) => `${b.name} (${b.driver})`).join(', ')} on host drivers`,
    evidence: g.members.map((x) => `${x.name}: ${x.driver ?? 'no driver'}`),
    ...(g.blockers.length ? { fix: `vfio-bind driver ${loc.name} --to vfio-pci --group`, exitCode: ExitCode.NOT_FOUND } : {}),
  };
}

/** Whether the host can ask a holder for the device back: vfio-pci relays it (REQ); an mdev has no request op. */
function releaseCheck(f: Facts): Check | null {
  const loc = f.loc;
  if (!loc) return null;
  if (loc.bus === 'mdev') {
    return {
      id: 'release', status: 'warn',
      summary: `${loc.name} is an mdev: it has no request channel: removing it while a process holds it blocks until that process exits`,
      evidence: [`${loc.sysfsPath}: an mediated device (its vendor driver, ${loc.driver ?? 'none'}, has no request op)`],
    };
  }
  if (!loc.driver?.startsWith('vfio')) return null; // the driver check says what is wrong first
  return {
    id: 'release', status: 'ok',
    summary: `the host can ask for ${loc.name} back: vfio-pci signals its request interrupt (REQ), and a holder using vfio-bind releases it`,
    evidence: [],
  };
}

/** The route bind would take, from the nodes; and whether that route would refuse the IOMMU's interrupts. */
function routeCheck(f: Facts): Check | null {
  const p = f.prediction;
  if (!p) return null;
  const evidence = p.fallback ? [`iommufd: ${p.fallback.step}${p.fallback.errno ? ` would answer ${p.fallback.errno}` : ' fails'}`] : [];
  if (p.route && !f.interruptsAllowed(p.route) && !f.loc?.group?.noiommu) {
    // the route is there, but its attach will answer EPERM: its own parameter was not set
    const param = unsafeInterruptsParam(ROUTES[p.route]);
    return {
      id: 'route', status: 'fail',
      summary: `bind would take the ${p.route} route, and answer EPERM there: no interrupt remapping, and ${param} is not set`,
      evidence, fix: `set ${param} (or enable interrupt remapping)`, exitCode: ExitCode.NO_ROUTE,
    };
  }
  return {
    id: 'route', status: p.route ? 'ok' : 'fail',
    summary: p.route ? `bind would take the ${p.route} route: ${p.reason}` : `no route: ${p.reason}`,
    evidence,
    ...(p.route ? {} : { exitCode: p.exitCode }),
  };
}

/** What the device offers a migration: its own migration, and dirty tracking (host/migration-offer.ts). */
function migrationCheck(f: Facts): Check | null {
  const loc = f.loc;
  if (!loc || !f.prediction) return null;
  const o = migrationOffer(f.kernel, loc, f.prediction.route);
  const what = o.migration === null ? 'migration unknown without a bind' : o.migration ? 'VFIO migration' : 'no VFIO migration';
  const dirty = o.iommuDirty === null ? '' : o.iommuDirty ? ', IOMMU dirty tracking' : ', no IOMMU dirty tracking';
  return { id: 'migration', status: 'info', summary: `${loc.name}: ${what}${dirty}`, evidence: o.lines };
}

/** Every check, in the order the report lists them. */
export const CHECKS: readonly CheckFn[] = [
  iommuCheck, interruptRemappingCheck, kernelCheck, modulesCheck, deviceCheck, permissionsCheck, memlockCheck,
  driverCheck, groupCheck, routeCheck, releaseCheck, migrationCheck,
];

export function doctor(kernel: Kernel, spec?: string): DoctorReport {
  const f = new Facts(kernel, spec);
  const checks = CHECKS.map((check) => check(f)).filter((c): c is Check => c !== null);
  const loc = f.loc;
  const prediction = f.prediction;
  // A device spec that is not one is a usage error whatever else is wrong; otherwise the first failure decides.
  const badSpec = checks.find((c) => c.id === 'device' && c.exitCode === ExitCode.USAGE);
  const failed = badSpec ?? checks.find((c) => c.status === 'fail');
  const exit_code = failed?.exitCode ?? (failed ? ExitCode.NO_ROUTE : ExitCode.OK);
  const assignable = spec === undefined ? null : exit_code === ExitCode.OK;
  const verdict = spec === undefined
    ? (failed ? `this host is not ready: ${failed.summary}` : 'this host is ready for VFIO')
    : assignable
      ? `${loc!.name} can be assigned through the ${prediction!.route} route`
      : `${loc?.name ?? spec} cannot be assigned: ${failed!.summary}`;
  return {
    checks,
    device: loc && prediction ? { name: loc.name, driver: loc.driver, group: loc.group?.id ?? null, prediction } : null,
    assignable,
    verdict,
    exit_code,
  };
}
