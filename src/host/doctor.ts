// `vfio-bind doctor`: is this host ready to assign devices, and this device? One check per line, each
// with its evidence and, when something is off, the fix. Nothing is opened or bound.
import { createRequire } from 'node:module';
import { ExitCode, VfioError, type ExitCodeValue } from '../errors.js';
import { locateDevice, type DeviceLocation } from '../discovery/locate.js';
import { predictRoute, UNSAFE_INTERRUPTS_PARAM, type RoutePrediction } from '../routes/select.js';
import type { Kernel } from '../sys/kernel.js';

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

const UNSAFE_PARAMS = [
  ['vfio_iommu_type1', 'legacy route'],
  ['iommufd', 'iommufd route'],
] as const;

function read(kernel: Kernel, path: string): string | null {
  try {
    return kernel.readText(path);
  } catch {
    return null;
  }
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

export function doctor(kernel: Kernel, spec?: string): DoctorReport {
  const checks: Check[] = [];
  const release = read(kernel, '/proc/sys/kernel/osrelease') ?? 'unknown';
  const cmdline = read(kernel, '/proc/cmdline') ?? '';
  const noiommuMode = read(kernel, '/sys/module/vfio/parameters/enable_unsafe_noiommu_mode') === 'Y';

  // 1. the IOMMU
  const iommus = list(kernel, '/sys/class/iommu');
  if (iommus.length > 0) {
    checks.push({ id: 'iommu', status: 'ok', summary: `IOMMU enabled (${iommus.join(', ')})`, evidence: [`/sys/class/iommu: ${iommus.join(' ')}`] });
  } else {
    checks.push({
      id: 'iommu', status: noiommuMode ? 'warn' : 'fail',
      summary: noiommuMode ? 'no IOMMU: VFIO runs in its unsafe noiommu mode (devices can DMA anywhere)' : 'there is no IOMMU: no device can be assigned safely',
      evidence: ['/sys/class/iommu is empty', `kernel command line: ${cmdline || '(unreadable)'}`],
      fix: 'enable VT-d (Intel) or AMD-Vi in the firmware and add intel_iommu=on (Intel) or amd_iommu=on (AMD) to the kernel command line',
      ...(noiommuMode ? {} : { exitCode: ExitCode.NO_ROUTE }),
    });
  }

  // 2. interrupt remapping: without it VFIO refuses devices (EPERM) unless told to accept the risk,
  // which each route is told separately
  const interruptsAllowed = { iommufd: true, legacy: true };
  if (iommus.length > 0) {
    const interrupts = read(kernel, '/proc/interrupts') ?? '';
    const remapped = /\bIR-(PCI-MSI|IO-APIC|PCI-MSIX)/.test(interrupts);
    const unsafe = UNSAFE_PARAMS.map(([mod, route]) => ({ mod, route, value: read(kernel, `/sys/module/${mod}/parameters/allow_unsafe_interrupts`) }));
    interruptsAllowed.legacy = remapped || unsafe[0]!.value === 'Y';
    interruptsAllowed.iommufd = remapped || unsafe[1]!.value === 'Y';
    const evidence = [
      remapped ? '/proc/interrupts lists IR- (remapped) interrupt domains' : '/proc/interrupts lists no IR- (remapped) interrupt domain',
      ...unsafe.filter((u) => u.value !== null).map((u) => `${u.mod}.allow_unsafe_interrupts=${u.value}`),
    ];
    if (remapped) {
      checks.push({ id: 'interrupt-remapping', status: 'ok', summary: 'interrupt remapping is enabled', evidence });
    } else if (unsafe.some((u) => u.value === 'Y')) {
      checks.push({
        id: 'interrupt-remapping', status: 'warn',
        summary: `no interrupt remapping; accepted unsafely on the ${unsafe.filter((u) => u.value === 'Y').map((u) => u.route).join(' and ')}`,
        evidence,
      });
    } else {
      checks.push({
        id: 'interrupt-remapping', status: 'fail',
        summary: 'interrupt remapping is missing: VFIO refuses to attach devices (EPERM)',
        evidence,
        fix: 'enable interrupt remapping (x2APIC/IR in the firmware), or accept the risk with vfio_iommu_type1.allow_unsafe_interrupts=1 (legacy route) and iommufd.allow_unsafe_interrupts=1 (iommufd route) on the kernel command line',
        exitCode: ExitCode.NO_ROUTE,
      });
    }
  }

  // 3. what the kernel supports
  const config = kernelConfig(kernel, release);
  const hasIommufd = kernel.exists('/sys/class/misc/iommu');
  const cfgEvidence = config
    ? [`${config.source}: ${['CONFIG_VFIO', 'CONFIG_VFIO_PCI', 'CONFIG_VFIO_CONTAINER', 'CONFIG_IOMMUFD', 'CONFIG_VFIO_DEVICE_CDEV', 'CONFIG_VFIO_NOIOMMU']
        .map((o) => `${o.replace('CONFIG_', '')}=${config.options.get(o) ?? 'absent'}`).join(' ')}`]
    : ['no kernel config readable (/boot/config-*, /proc/config.gz); judged from sysfs'];
  cfgEvidence.push(hasIommufd ? '/sys/class/misc/iommu exists: iommufd is in the kernel' : '/sys/class/misc/iommu is absent');
  checks.push({
    id: 'kernel', status: 'info',
    summary: hasIommufd
      ? `kernel ${release} has iommufd: the iommufd route is available`
      : `kernel ${release} has no iommufd (CONFIG_IOMMUFD not set): the legacy route will be used`,
    evidence: cfgEvidence,
  });

  // 4. modules
  const modules = ['vfio', 'vfio_pci', 'vfio_iommu_type1', 'iommufd'].map((m) => ({ m, loaded: kernel.exists(`/sys/module/${m}`) }));
  const vfioPciLoaded = kernel.exists('/sys/bus/pci/drivers/vfio-pci');
  checks.push({
    id: 'modules', status: vfioPciLoaded ? 'ok' : 'fail',
    summary: vfioPciLoaded ? 'vfio-pci is loaded' : 'vfio-pci is not loaded',
    evidence: [modules.map((x) => `${x.m}: ${x.loaded ? 'loaded' : 'absent'}`).join(', ')],
    ...(vfioPciLoaded ? {} : { fix: 'modprobe vfio-pci', exitCode: ExitCode.NO_ROUTE }),
  });

  // 5. the device, if one was named
  let loc: DeviceLocation | null = null;
  let prediction: RoutePrediction | null = null;
  if (spec !== undefined) {
    try {
      loc = locateDevice(kernel, spec);
    } catch (e) {
      if (!(e instanceof VfioError)) throw e;
      checks.push({ id: 'device', status: 'fail', summary: e.message, evidence: [], ...(e.hint ? { fix: e.hint } : {}), exitCode: e.exitCode });
    }
  }

  // 6. node permissions for this user
  const nodes = ['/dev/vfio/vfio', '/dev/iommu'];
  if (loc?.group) nodes.push(loc.group.node);
  if (loc?.cdev?.devnum) nodes.push(loc.cdev.nodes[0]!);
  const present = nodes.filter((n) => kernel.exists(n));
  const denied = present.filter((n) => !kernel.accessible(n));
  const uid = process.getuid?.() ?? -1;
  checks.push({
    id: 'permissions', status: denied.length === 0 ? 'ok' : 'warn',
    summary: denied.length === 0 ? `this user (uid ${uid}) may open ${present.join(', ') || 'no VFIO node (none exist)'}` : `this user (uid ${uid}) cannot open ${denied.join(', ')}`,
    evidence: present.map((n) => `${n}: ${denied.includes(n) ? 'no read-write access' : 'read-write'}`),
    ...(denied.length ? { fix: 'run as root, or give this user access with a udev rule, e.g. SUBSYSTEM=="vfio", GROUP="kvm", MODE="0660" (and /dev/iommu likewise)' } : {}),
  });

  // 7. locked memory
  const limits = read(kernel, '/proc/self/limits') ?? '';
  const m = /Max locked memory\s+(\S+)\s+(\S+)/.exec(limits);
  const capEff = /CapEff:\s+([0-9a-f]+)/.exec(read(kernel, '/proc/self/status') ?? '');
  const ipcLock = capEff ? (BigInt(`0x${capEff[1]}`) & (1n << 14n)) !== 0n : false;
  const soft = m ? (m[1] === 'unlimited' ? Infinity : Number(m[1])) : NaN;
  const enough = ipcLock || soft >= 64 * 1024 * 1024;
  checks.push({
    id: 'memlock', status: enough ? 'ok' : 'warn',
    summary: ipcLock ? 'CAP_IPC_LOCK: DMA mappings are not limited by RLIMIT_MEMLOCK'
      : `RLIMIT_MEMLOCK is ${m ? `${m[1]} bytes` : 'unknown'}: DMA mappings beyond it fail${enough ? '' : ' (guest RAM must fit in it)'}`,
    evidence: [m ? `Max locked memory: soft ${m[1]}, hard ${m[2]}` : '/proc/self/limits unreadable', `CAP_IPC_LOCK: ${ipcLock ? 'yes' : 'no'}`],
    ...(enough ? {} : { fix: 'raise it: ulimit -l, LimitMEMLOCK= in a systemd unit, or /etc/security/limits.conf' }),
  });

  if (loc) {
    const g = loc.group;
    const isVfio = loc.bus === 'mdev' || (loc.driver?.startsWith('vfio') ?? false);
    checks.push({
      id: 'driver', status: isVfio ? 'ok' : 'fail',
      summary: isVfio ? `${loc.name} is bound to ${loc.driver}` : `${loc.name} is bound to ${loc.driver ?? 'no driver'}, not to vfio-pci`,
      evidence: [`${loc.sysfsPath}/driver -> ${loc.driver ?? '(none)'}`],
      ...(isVfio ? {} : { fix: `vfio-bind driver ${loc.name} --to vfio-pci`, exitCode: ExitCode.NOT_FOUND }),
    });
    checks.push(g
      ? {
        id: 'group', status: g.blockers.length === 0 ? 'ok' : 'fail',
        summary: g.blockers.length === 0 ? `IOMMU group ${g.id}${g.noiommu ? ' (noiommu)' : ''} is viable` : `IOMMU group ${g.id} is not viable: ${g.blockers.map((b) => `${b.name} (${b.driver})`).join(', ')} on host drivers`,
        evidence: g.members.map((x) => `${x.name}: ${x.driver ?? 'no driver'}`),
        ...(g.blockers.length ? { fix: `vfio-bind driver ${loc.name} --to vfio-pci --group`, exitCode: ExitCode.NOT_FOUND } : {}),
      }
      : {
        id: 'group', status: 'fail', summary: `${loc.name} has no IOMMU group`, evidence: [`${loc.sysfsPath}/iommu_group is absent`],
        fix: 'enable the IOMMU (intel_iommu=on or amd_iommu=on)', exitCode: ExitCode.NO_ROUTE,
      });
    prediction = predictRoute(kernel, loc);
    const evidence = prediction.fallback ? [`iommufd: ${prediction.fallback.step}${prediction.fallback.errno ? ` would answer ${prediction.fallback.errno}` : ' fails'}`] : [];
    if (prediction.route && !interruptsAllowed[prediction.route] && !loc.group?.noiommu) {
      // the route is there, but its attach will answer EPERM: its own parameter was not set
      const param = UNSAFE_INTERRUPTS_PARAM[prediction.route];
      checks.push({
        id: 'route', status: 'fail',
        summary: `bind would take the ${prediction.route} route, and answer EPERM there: no interrupt remapping, and ${param} is not set`,
        evidence, fix: `set ${param} (or enable interrupt remapping)`, exitCode: ExitCode.NO_ROUTE,
      });
    } else {
      checks.push({
        id: 'route', status: prediction.route ? 'ok' : 'fail',
        summary: prediction.route ? `bind would take the ${prediction.route} route: ${prediction.reason}` : `no route: ${prediction.reason}`,
        evidence,
        ...(prediction.route ? {} : { exitCode: /may open neither/.test(prediction.reason) ? ExitCode.PERMISSION : ExitCode.NO_ROUTE }),
      });
    }
  }

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
