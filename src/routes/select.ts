// The route policy, in one place: which route to try, when the iommufd route's failure means "use the
// legacy route instead", and what every other answer means for the user. README.md shows the same
// table (test/unit/readme.test.ts keeps the two equal).
import type { DeviceLocation } from '../discovery/locate.js';
import {
  ClosedError,
  DeviceBusyError,
  DeviceNotFoundError,
  ExitCode,
  GroupNotViableError,
  KernelError,
  NoRouteError,
  NotVfioDeviceError,
  PermissionDeniedError,
  StepError,
  type Attempt,
  type ExitCodeValue,
  type VfioError,
  UsageError,
} from '../errors.js';
import type { Logger } from '../log.js';
import type { Kernel } from '../sys/kernel.js';
import type { Step } from '../sys/steps.js';
import { ROUTES } from './index.js';
import type { RouteName } from './names.js';
import { checkPassedFds, type PassedFds } from './passed-fds.js';
import { DeviceHold, unsafeInterruptsParam, type BeforeBindHook, type Binding, type IommuContext } from './route.js';

export type RoutePolicy = 'auto' | 'iommufd' | 'legacy';
export const ROUTE_POLICIES: readonly RoutePolicy[] = ['auto', 'iommufd', 'legacy'];

/** Facts about this host that turn an errno into a sentence. */
interface Facts {
  /** the kernel has iommufd (its misc device is registered), whether or not /dev/iommu is visible */
  readonly kernelHasIommufd: boolean;
  /** this process could open the device's group node read-write */
  readonly groupUsable: boolean;
}

export type FallbackAction =
  /** the iommufd route is unavailable: use the legacy route */
  | 'fall back'
  /** unavailable to this user: use the legacy route if its group node is usable, else report both */
  | 'fall back if the group node is usable'
  /** ambiguous: try the legacy route, and keep this answer in the report (EBUSY there means "in use") */
  | 'try legacy, keep the error';

export interface FallbackRule {
  step: Step;
  /** the errno name, or null for a step that fails without a system call */
  errno: string | null;
  action: FallbackAction;
  reason: (facts: Facts) => string;
}

/**
 * When `auto` leaves the iommufd route. Every answer not listed here — EBUSY (someone else owns the
 * device), EPERM, EFAULT, EBADF, ENODEV, and anything after a successful bind — is reported, not hidden
 * by a fallback.
 */
export const FALLBACK_TABLE: readonly FallbackRule[] = [
  {
    step: 'open /dev/iommu', errno: 'ENOENT', action: 'fall back',
    reason: (f) => f.kernelHasIommufd
      ? 'the /dev/iommu node is not visible here, although the kernel has iommufd (/sys/class/misc/iommu exists)'
      : 'this kernel has no iommufd (CONFIG_IOMMUFD not set)',
  },
  {
    step: 'open /dev/iommu', errno: 'EACCES', action: 'fall back if the group node is usable',
    reason: () => 'this user may not open /dev/iommu',
  },
  {
    step: 'find cdev', errno: null, action: 'fall back',
    reason: () => 'the device has no VFIO cdev (a kernel without CONFIG_VFIO_DEVICE_CDEV, or a noiommu device)',
  },
  {
    step: 'open cdev', errno: 'ENOENT', action: 'fall back',
    reason: () => "the device's cdev has no node here (/dev/vfio/devices/vfioN or /dev/char/MAJ:MIN)",
  },
  {
    step: 'open cdev', errno: 'EACCES', action: 'fall back if the group node is usable',
    reason: () => "this user may not open the device's cdev",
  },
  {
    step: 'VFIO_DEVICE_BIND_IOMMUFD', errno: 'ENOTTY', action: 'fall back',
    reason: () => 'the kernel does not know VFIO_DEVICE_BIND_IOMMUFD (older than 6.6)',
  },
  {
    step: 'VFIO_DEVICE_BIND_IOMMUFD', errno: 'EINVAL', action: 'try legacy, keep the error',
    reason: () => 'the bind answered EINVAL: another opener may have bound the device through its cdev',
  },
];

/** The rule for an iommufd step's answer (a StepError, or one predicted from the nodes), if any. */
export function findFallbackRule(answer: { step: Step; errno: string | null }): FallbackRule | undefined {
  return FALLBACK_TABLE.find((r) => r.step === answer.step && r.errno === answer.errno);
}

/**
 * The facts the reasons are written from: read from sysfs and access(2), nothing opened, and each only
 * when a reason or rule asks for it (most failed binds, EBUSY say, need neither).
 */
function hostFacts(kernel: Kernel, loc: DeviceLocation): Facts {
  let kernelHasIommufd: boolean | undefined;
  let groupUsable: boolean | undefined;
  return {
    get kernelHasIommufd() {
      return (kernelHasIommufd ??= kernel.exists('/sys/class/misc/iommu'));
    },
    get groupUsable() {
      return (groupUsable ??= loc.group !== null && kernel.accessible(loc.group.node));
    },
  };
}

/** What the route report says of a fallback. */
export interface FallbackReport {
  from: 'iommufd';
  step: Step;
  errno: string | null;
  path?: string;
  reason: string;
}

export interface BindRequest {
  kernel: Kernel;
  log: Logger;
  policy: RoutePolicy;
  context?: IommuContext;
  beforeBind?: BeforeBindHook;
  /** nodes opened by someone else; they decide the route (no fallback) */
  passed?: { fds: PassedFds };
}

export interface BoundRoute {
  route: RouteName;
  /** what the bind holds: its context (and whether it was made for this device), the claims, the binding */
  hold: DeviceHold;
  binding: Binding;
  fallback: FallbackReport | null;
}

/** Refuses a route policy that is not one (the library takes strings from anywhere). */
export function checkRoutePolicy(policy: unknown): asserts policy is RoutePolicy {
  if (!ROUTE_POLICIES.includes(policy as RoutePolicy)) {
    throw new UsageError(`unknown route "${String(policy)}"`, { hint: `the route is one of ${ROUTE_POLICIES.join(', ')}` });
  }
}

/** Binds a located device by the policy (or into the given context, whose route then decides). */
export function bindDevice(loc: DeviceLocation, req: BindRequest): BoundRoute {
  checkRoutePolicy(req.policy);
  checkBindable(loc);
  const facts = hostFacts(req.kernel, loc); // read lazily, only if a reason needs them
  if (req.passed) {
    const route = checkPassedFds(req.kernel, loc, req.passed.fds, req.context?.route ?? null);
    if (req.context && req.context.route !== route) {
      throw new UsageError(`the fds passed are for the ${route} route, but the context is a ${req.context.route} one`);
    }
    try {
      return attempt(route, loc, req, null);
    } catch (e) {
      if (e instanceof StepError && e.step === 'VFIO_DEVICE_BIND_IOMMUFD' && e.errno === 'EINVAL') {
        // A cdev binds once per open file and the kernel has no unbind: a lent fd that was bound
        // before (by us or its owner) answers EINVAL like a device someone else holds.
        throw new DeviceBusyError(`the device fd passed for ${loc.name} is bound already, or another opener holds the device (VFIO_DEVICE_BIND_IOMMUFD answered EINVAL)`, {
          ...e.details(),
          hint: 'a VFIO cdev binds once per open: pass a newly opened fd of /dev/vfio/devices/vfioN',
        });
      }
      if (e instanceof StepError) throw explain(e, loc, facts, route, [e.attempt]);
      throw e;
    }
  }
  const policy: RoutePolicy = req.context ? req.context.route : req.policy;
  if (policy === 'legacy') {
    try {
      return attempt('legacy', loc, req, null);
    } catch (e) {
      if (e instanceof StepError) throw explain(e, loc, facts, policy, [e.attempt]);
      throw e;
    }
  }
  try {
    return attempt('iommufd', loc, req, null);
  } catch (e) {
    if (!(e instanceof StepError)) throw e;
    const rule = findFallbackRule(e);
    if (policy === 'iommufd' || !rule) throw explain(e, loc, facts, policy, [e.attempt]);
    if (rule.action === 'fall back if the group node is usable' && !facts.groupUsable) {
      throw new PermissionDeniedError(
        `this user may open neither the iommufd nodes nor the group node of ${loc.name}` +
          ` (${e.path ?? e.step}: ${e.errno}; ${loc.group?.node ?? 'no group'}: not accessible)`,
        { ...e.details(), hint: permissionHint(loc) },
      );
    }
    const fallback: FallbackReport = { from: 'iommufd', step: e.step, errno: e.errno, ...(e.path ? { path: e.path } : {}), reason: rule.reason(facts) };
    req.log.info({ fallback }, 'iommufd route unavailable, trying the legacy route');
    try {
      return attempt('legacy', loc, req, fallback);
    } catch (l) {
      if (!(l instanceof StepError)) throw l;
      const attempts = [e.attempt, l.attempt];
      if (rule.action === 'try legacy, keep the error' && l.errno === 'EBUSY') {
        throw new DeviceBusyError(
          `${loc.name} is in use by another process: its iommufd bind answered EINVAL and its group open answered EBUSY`,
          { errno: 'EBUSY', route: 'legacy', step: l.step, path: l.path, attempts, hint: busyHint() },
        );
      }
      throw explain(l, loc, facts, policy, attempts);
    }
  }
}

/** One route, in the given context or a new one that is closed again if the bind fails. */
function attempt(route: RouteName, loc: DeviceLocation, req: BindRequest, fallback: FallbackReport | null): BoundRoute {
  if (req.context?.closed) throw new ClosedError(`cannot bind ${loc.name} into a closed ${req.context.route} context`);
  const r = ROUTES[route];
  const fds = req.passed?.fds;
  const contextFd = fds?.[r.fds.context];
  const deviceFd = fds?.[r.fds.device];
  const context = req.context ?? (contextFd !== undefined ? r.adopt(req.kernel, req.log, { fd: contextFd }) : r.open(req.kernel, req.log));
  const hold = DeviceHold.take(context, !req.context, loc);
  try {
    const binding = hold.bound(context.bind(loc, req.beforeBind, deviceFd === undefined ? undefined : { fd: deviceFd }));
    return { route, hold, binding, fallback };
  } catch (e) {
    hold.release();
    throw e;
  }
}

/** Refuses, before anything is opened, a device no route can take: one bound to a host driver. */
function checkBindable(loc: DeviceLocation): void {
  if (loc.bus === 'pci' && !loc.driver?.startsWith('vfio')) {
    throw new NotVfioDeviceError(
      loc.driver
        ? `${loc.name} is bound to ${loc.driver}, not to a VFIO driver`
        : `${loc.name} is not bound to any driver`,
      { path: `${loc.sysfsPath}/driver`, hint: moveToVfioHint(loc.name) },
    );
  }
  // A group that is not viable is the kernel's to refuse (BIND_IOMMUFD and SET_CONTAINER answer EPERM,
  // GET_STATUS says so): explain() names the blockers then, and a bind that succeeds never lists them.
}

function notViable(loc: DeviceLocation, details: { route?: RouteName; step?: string; errno?: string | null; attempts?: Attempt[] } = {}): GroupNotViableError {
  const g = loc.group!;
  const list = g.blockers.map((m) => `${m.name} (${m.driver})`).join(', ');
  return new GroupNotViableError(
    `IOMMU group ${g.id} of ${loc.name} is not viable: ${list || 'a member'} ${g.blockers.length > 1 ? 'are' : 'is'} bound to a host driver`,
    { ...details, path: `/sys/kernel/iommu_groups/${g.id}/devices`, hint: 'bind every device of the group to vfio-pci, or unbind them from their drivers' },
  );
}

/** How to hand a PCI device to vfio-pci by hand (as root). */
function moveToVfioHint(name: string): string {
  const dev = `/sys/bus/pci/devices/${name}`;
  return `as root: echo vfio-pci > ${dev}/driver_override; echo ${name} > ${dev}/driver/unbind; echo ${name} > /sys/bus/pci/drivers_probe`;
}

const busyHint = (): string => 'find the owner with `fuser -v /dev/vfio/* /dev/vfio/devices/*`; it releases the device when it exits';

function permissionHint(loc: DeviceLocation): string {
  const nodes = Object.values(ROUTES).flatMap((r) => [r.node, r.deviceNode(loc)]).filter(Boolean);
  return `run as root, or give this user read-write access to ${nodes.join(', ')} (a udev rule or chown)`;
}

/** Turns a step's errno into the public error a user can act on. */
export function explain(e: StepError, loc: DeviceLocation, facts: Facts, policy: RoutePolicy, attempts: Attempt[]): VfioError {
  const base = e.details(attempts);
  const where = `${e.route} route, ${e.step}${e.path && !e.step.includes(e.path) ? ` (${e.path})` : ''}`;
  const rule = findFallbackRule(e);
  if (e.errno === 'EBUSY') {
    return new DeviceBusyError(`${loc.name} is in use by another process (${where} answered EBUSY)`, { ...base, hint: busyHint() });
  }
  if (e.step === 'VFIO_DEVICE_BIND_IOMMUFD' && e.errno === 'EINVAL' && policy === 'iommufd') {
    // Our bind struct is checked against the kernel headers: EINVAL here means the device is bound already.
    return new DeviceBusyError(`${loc.name} is already bound through iommufd by another opener (${where} answered EINVAL)`, { ...base, hint: busyHint() });
  }
  if (e.errno === 'EACCES') {
    return new PermissionDeniedError(`permission denied: ${where}`, { ...base, hint: permissionHint(loc) });
  }
  if (e.errno === 'EPERM') {
    if (e.step === 'open group' && loc.group?.noiommu) {
      return new PermissionDeniedError(`opening the noiommu group ${e.path} needs CAP_SYS_RAWIO (${where} answered EPERM)`, { ...base, hint: 'run as root (noiommu mode gives the device unchecked DMA)' });
    }
    if (loc.group && loc.group.blockers.length > 0) return notViable(loc, base);
    if (e.step === 'VFIO_DEVICE_BIND_IOMMUFD' || e.step === 'VFIO_SET_IOMMU' || e.step === 'VFIO_DEVICE_ATTACH_IOMMUFD_PT') {
      const shared = (loc.group?.members.length ?? 0) > 1 ? ', or another process holds a device of the same IOMMU group' : '';
      return new NoRouteError(
        `the IOMMU gives ${loc.name} no interrupt isolation (MSI remapping)${shared} (${where} answered EPERM)`,
        { ...base, hint: `enable interrupt remapping, or accept the risk with the module parameter ${unsafeInterruptsParam(ROUTES[e.route])}` },
      );
    }
    return new PermissionDeniedError(`operation not permitted: ${where}`, { ...base, hint: permissionHint(loc) });
  }
  if (e.errno === 'ENODEV') {
    return new DeviceNotFoundError(`${loc.name} went away (${where} answered ENODEV)`, base);
  }
  if (e.step === 'VFIO_GROUP_GET_STATUS' && e.errno === null) return notViable(loc, base);
  if (rule && rule.action !== 'try legacy, keep the error') {
    // The iommufd route is unavailable and the policy forbids the fallback (--route iommufd).
    return new NoRouteError(`the iommufd route is unavailable: ${rule.reason(facts)} (${where}${e.errno ? ` answered ${e.errno}` : ''})`, {
      ...base, hint: 'use --route auto or --route legacy, or a kernel with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV',
    });
  }
  if (e.step === 'find group') {
    return new NoRouteError(`${loc.name} has no IOMMU group: no IOMMU translates its DMA`, {
      ...base, hint: 'enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel command line), or, unsafely, vfio.enable_unsafe_noiommu_mode=1',
    });
  }
  if (e.step === 'VFIO_CHECK_EXTENSION' && e.errno === null) {
    return new NoRouteError(`the legacy route is unavailable: ${e.message}`, {
      ...base, hint: loc.group?.noiommu ? 'this kernel runs VFIO without noiommu support for this group' : 'load the type1 IOMMU driver: modprobe vfio_iommu_type1',
    });
  }
  if (e.step === ROUTES.legacy.openStep && e.errno === 'ENOENT') {
    return new NoRouteError(`the legacy route is unavailable: ${e.path} does not exist (the vfio module is not loaded, or the kernel has no CONFIG_VFIO_CONTAINER)`, {
      ...base, hint: 'load vfio-pci (modprobe vfio-pci)',
    });
  }
  if (e.step === 'open group' && e.errno === 'ENOENT') {
    return new DeviceNotFoundError(`the group node ${e.path} of ${loc.name} does not exist`, { ...base, hint: 'check that the device is bound to vfio-pci and that /dev/vfio is visible here' });
  }
  return new KernelError(`the kernel refused: ${where}${e.errno ? ` answered ${e.errno}` : `: ${e.message}`}`, base);
}

/** What `bind` would do, judged from the nodes alone (doctor: nothing is opened). */
export interface RoutePrediction {
  route: RouteName | null;
  /** why this route, or why none */
  reason: string;
  /** the iommufd step that would send `auto` to the legacy route */
  fallback: FallbackReport | null;
  /** what a bind would exit with when no route is left: 0 with a route, else the README's code */
  exitCode: ExitCodeValue;
}

/**
 * Predicts the route `auto` would take for a located device from what exists and is accessible. It
 * cannot see answers that need an open (EBUSY, EPERM, EINVAL): binding may still meet those.
 */
export function predictRoute(kernel: Kernel, loc: DeviceLocation): RoutePrediction {
  try {
    checkBindable(loc);
  } catch (e) {
    return { route: null, reason: (e as VfioError).message, fallback: null, exitCode: (e as VfioError).exitCode };
  }
  const f = hostFacts(kernel, loc);
  const unavailable = (step: Step, errno: string | null, path?: string): FallbackReport => {
    const rule = findFallbackRule({ step, errno })!;
    return { from: 'iommufd', step, errno, ...(path ? { path } : {}), reason: rule.reason(f) };
  };
  const iommu = ROUTES.iommufd.node;
  let fallback: FallbackReport | null = null;
  if (!kernel.exists(iommu)) fallback = unavailable(ROUTES.iommufd.openStep, 'ENOENT', iommu);
  else if (!kernel.accessible(iommu)) fallback = unavailable(ROUTES.iommufd.openStep, 'EACCES', iommu);
  else if (!loc.cdev?.devnum) fallback = unavailable('find cdev', null);
  else {
    const node = loc.cdev.nodes.find((n) => kernel.exists(n));
    if (!node) fallback = unavailable('open cdev', 'ENOENT', loc.cdev.nodes[0]);
    else if (!kernel.accessible(node)) fallback = unavailable('open cdev', 'EACCES', node);
  }
  if (!fallback) return { route: 'iommufd', reason: `the kernel has iommufd and ${loc.name} has a cdev`, fallback: null, exitCode: ExitCode.OK };
  const none = (reason: string, exitCode: ExitCodeValue = ExitCode.NO_ROUTE): RoutePrediction => ({ route: null, reason, fallback, exitCode });
  const container = ROUTES.legacy.node;
  if (!loc.group) return none(`${loc.name} has no IOMMU group, and ${fallback.reason}`);
  if (!kernel.exists(container)) return none(`${fallback.reason}, and ${container} does not exist`);
  if (!kernel.exists(loc.group.node)) return none(`${fallback.reason}, and ${loc.group.node} does not exist`);
  if (!f.groupUsable || !kernel.accessible(container)) {
    return none(`this user may open neither the iommufd nodes nor ${loc.group.node}`, ExitCode.PERMISSION);
  }
  return { route: 'legacy', reason: fallback.reason, fallback, exitCode: ExitCode.OK };
}
