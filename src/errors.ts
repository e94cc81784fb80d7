// Typed errors. Every failure a user can meet is a VfioError: what went wrong (its class and `kind`),
// the errno the kernel answered, the route and step, the path or ioctl, and a hint saying what to do.
// The CLI maps `exitCode` to its exit status and never prints a stack trace.
import type { RouteName } from './routes/names.js';
import type { Step } from './sys/steps.js';


/** CLI exit statuses (documented in the README). */
export const ExitCode = {
  OK: 0,
  INTERNAL: 1,
  USAGE: 2,
  NOT_FOUND: 3,
  BUSY: 4,
  PERMISSION: 5,
  NO_ROUTE: 6,
  KERNEL_REFUSED: 7,
  NOT_INSTALLED: 8,
  RELEASED: 9,
  STREAM_REFUSED: 10,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** One kernel answer on the way: which route, which step, which errno. */
export interface Attempt {
  route: RouteName;
  step: string;
  errno: string | null;
  path?: string;
  message?: string;
}

export interface VfioErrorDetails {
  errno?: string | null;
  step?: string;
  route?: RouteName;
  path?: string;
  hint?: string;
  /** the kernel answers that led here, first to last (a fallback's original error comes first) */
  attempts?: Attempt[];
  cause?: unknown;
}

export abstract class VfioError extends Error {
  abstract readonly kind: string;
  abstract readonly exitCode: ExitCodeValue;
  readonly errno: string | null;
  readonly step: string | undefined;
  readonly route: RouteName | undefined;
  readonly path: string | undefined;
  readonly hint: string | undefined;
  readonly attempts: Attempt[];

  constructor(message: string, details: VfioErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.errno = details.errno ?? null;
    this.step = details.step;
    this.route = details.route;
    this.path = details.path;
    this.hint = details.hint;
    this.attempts = details.attempts ?? [];
  }

  toJSON(): Record<string, unknown> {
    return {
      error: this.kind,
      message: this.message,
      errno: this.errno,
      route: this.route ?? null,
      step: this.step ?? null,
      path: this.path ?? null,
      hint: this.hint ?? null,
      attempts: this.attempts,
      exit_code: this.exitCode,
    };
  }
}

/** The device spec or an option is malformed. */
export class UsageError extends VfioError {
  readonly kind = 'usage';
  readonly exitCode = ExitCode.USAGE;
}

/** A file descriptor handed to us is not open, or not the node it was given as. */
export class BadFdError extends VfioError {
  readonly kind = 'bad-fd';
  readonly exitCode = ExitCode.USAGE;
}

/** No such device, or it is not bound to a VFIO driver, or its IOMMU group is not fully VFIO's. */
export class DeviceNotFoundError extends VfioError {
  readonly kind = 'not-found';
  readonly exitCode = ExitCode.NOT_FOUND;
}
export class NotVfioDeviceError extends VfioError {
  readonly kind = 'not-vfio';
  readonly exitCode = ExitCode.NOT_FOUND;
}
export class GroupNotViableError extends VfioError {
  readonly kind = 'group-not-viable';
  readonly exitCode = ExitCode.NOT_FOUND;
}

/** Someone else (another process, or another context of this one) owns the device or its group. */
export class DeviceBusyError extends VfioError {
  readonly kind = 'busy';
  readonly exitCode = ExitCode.BUSY;
}

export class PermissionDeniedError extends VfioError {
  readonly kind = 'permission';
  readonly exitCode = ExitCode.PERMISSION;
}

/** The kernel or the IOMMU lacks what every allowed route needs (no iommufd, no IOMMU, no MSI isolation). */
export class NoRouteError extends VfioError {
  readonly kind = 'no-route';
  readonly exitCode = ExitCode.NO_ROUTE;
}

/** The kernel refused an operation on a device we own (after bind), or answered what we cannot explain. */
export class KernelError extends VfioError {
  readonly kind = 'kernel-refused';
  readonly exitCode = ExitCode.KERNEL_REFUSED;
}

/** The device or kernel cannot do what was asked (a reset the device does not support, say). */
export class UnsupportedError extends VfioError {
  readonly kind = 'unsupported';
  readonly exitCode = ExitCode.KERNEL_REFUSED;
}

/** No native addon fits this platform (or the one found does not load): an installation problem. */
export class AddonMissingError extends VfioError {
  readonly kind = 'addon-missing';
  readonly exitCode = ExitCode.NOT_INSTALLED;
}

/**
 * The device was given back: the host asked for it (a VFIO device request, as an unbind or a hot-unplug
 * sends) and it was released. Every later call on it, its mappings and vectors, and a context it owned.
 */
export class DeviceReleasedError extends VfioError {
  readonly kind = 'released';
  readonly exitCode = ExitCode.RELEASED;
}

/**
 * The device refused a migration state change (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE). The kernel may
 * have walked part of the way: `state` is where the device is now, read back, or null when even that
 * failed. From ERROR only a reset (migrator.recover()) brings it back, to RUNNING.
 */
export class MigrationRefusedError extends VfioError {
  readonly kind = 'migration-refused';
  readonly exitCode = ExitCode.KERNEL_REFUSED;
  constructor(message: string, readonly from: string, readonly target: string, readonly state: string | null, details: VfioErrorDetails = {}) {
    super(message, details);
  }
  override toJSON(): Record<string, unknown> {
    return { ...super.toJSON(), from: this.from, target: this.target, state: this.state };
  }
}

/**
 * The device refused its migration data: on resume, a corrupt, truncated or foreign stream (a write
 * the driver rejects, or RESUMING -> STOP refusing what it was given); on save, a read of the data fd
 * that failed. `bytes` is how far the stream got; `state` is where the device is now.
 */
export class MigrationStreamError extends VfioError {
  readonly kind = 'stream-refused';
  readonly exitCode = ExitCode.STREAM_REFUSED;
  constructor(message: string, readonly phase: 'read' | 'write' | 'complete', readonly bytes: number, public state: string | null, details: VfioErrorDetails = {}) {
    super(message, details);
  }
  override toJSON(): Record<string, unknown> {
    return { ...super.toJSON(), phase: this.phase, bytes: this.bytes, state: this.state };
  }
}

/**
 * A dirty-tracking request the kernel refused by its input checks (device DMA logging, type1's dirty
 * pages, an iommufd HWPT's dirty bitmap): `reason` names what was wrong with the request.
 */
export class DirtyTrackingError extends VfioError {
  readonly kind = 'dirty-tracking-refused';
  readonly exitCode = ExitCode.KERNEL_REFUSED;
  constructor(message: string, readonly reason: 'no-ranges' | 'too-many-ranges' | 'unaligned' | 'overlapping' | 'overflow' | 'page-size' | 'partial-mapping' | 'not-started' | 'refused', details: VfioErrorDetails = {}) {
    super(message, details);
  }
  override toJSON(): Record<string, unknown> {
    return { ...super.toJSON(), reason: this.reason };
  }
}

/** An operation on a closed device or context: a programming error in the caller. */
export class ClosedError extends VfioError {
  readonly kind = 'closed';
  readonly exitCode = ExitCode.INTERNAL;
}

/**
 * What a route step throws before the policy (routes/select.ts) decides what it means: fall back, or
 * become one of the public errors above.
 */
export class StepError extends Error {
  constructor(
    readonly route: RouteName,
    readonly step: Step,
    readonly errno: string | null,
    message: string,
    readonly path?: string,
    options?: { cause?: unknown },
  ) {
    // No stack: a StepError is a route's internal answer to select.ts, which always turns it into a
    // VfioError that has one. Capturing it cost ~0.5 ms per failed bind under the test bed's TCG.
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      super(message, options);
    } finally {
      Error.stackTraceLimit = limit;
    }
    this.name = 'StepError';
  }

  /** in a batch (StepCalls.ioctlEach), the record that failed; those before it succeeded */
  index?: number;

  get attempt(): Attempt {
    return { route: this.route, step: this.step, errno: this.errno, ...(this.path ? { path: this.path } : {}), message: this.message };
  }

  /** What a public error made from this answer carries: errno, route, step, path, the attempts (this one by default) and the cause. */
  details(attempts: Attempt[] = [this.attempt]): VfioErrorDetails {
    return { errno: this.errno, route: this.route, step: this.step, ...(this.path ? { path: this.path } : {}), attempts, cause: this };
  }
}

/** The kernel refused a step on something we hold: the public KernelError naming the step and its errno. */
export function kernelRefused(e: StepError, subject: string): KernelError {
  return new KernelError(`the kernel refused ${e.step} on ${subject}: ${e.errno ?? e.message}`, e.details());
}

/** Runs kernel steps on `subject`: a refusal (StepError) leaves as the public KernelError; anything else as it is. */
export function onKernel<T>(subject: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw e instanceof StepError ? kernelRefused(e, subject) : e;
  }
}
