// Route steps as system calls: each call is logged, and a failure becomes a StepError naming the
// route, the step, the errno and the path, which the route policy then interprets. ioctls are issued
// only by the call layer (src/ioctl), through ioctl() here, by their request's name.
import { constants as osConstants } from 'node:os';
import { StepError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RouteName } from '../routes/names.js';
import { REQUESTS, type RequestName } from '../uapi/requests.js';
import { isSysError, type BatchSysError, type Kernel } from './kernel.js';
import type { Step } from './steps.js';

export class StepCalls {
  private readonly debug: boolean;

  constructor(
    readonly kernel: Kernel,
    readonly route: RouteName,
    private readonly log: Logger,
  ) {
    this.debug = log.isLevelEnabled?.('debug') ?? true;
  }

  /** Runs one step; a system error becomes a StepError for `step`. */
  run<T>(step: Step, path: string | undefined, fn: () => T): T {
    let result: T;
    try {
      result = fn();
    } catch (e) {
      throw this.failed(step, path, e);
    }
    if (this.debug) this.log.debug({ route: this.route, step, path, result: typeof result === 'number' ? result : undefined }, 'ok');
    return result;
  }

  /** What a step's failure throws: a system error becomes its StepError; anything else as it was. */
  private failed(step: Step, path: string | undefined, e: unknown): unknown {
    if (!isSysError(e)) return e;
    if (this.debug) this.log.debug({ route: this.route, step, path, errno: e.code }, 'failed');
    return new StepError(this.route, step, e.code, `${step}${path ? ` (${path})` : ''}: ${e.code}`, path, { cause: e });
  }

  open(step: Step, path: string): number {
    return this.run(step, path, () => this.kernel.open(path));
  }

  /**
   * One ioctl, named as in the kernel headers; the name is the step, unless a finer one is given (a
   * VFIO_DEVICE_FEATURE request is named by its feature, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE).
   */
  ioctl(name: RequestName, fd: number, arg?: number | Buffer, step: Step = name): number {
    // run()'s work without its closure: this is the path of every ioctl
    let result: number;
    try {
      result = this.kernel.ioctl(fd, REQUESTS[name], arg);
    } catch (e) {
      throw this.failed(step, undefined, e);
    }
    if (this.debug) this.log.debug({ route: this.route, step, result }, 'ok');
    return result;
  }

  /**
   * A query ioctl (one that changes nothing) the kernel may refuse with `refusal` as an answer (EINVAL
   * for an interrupt the device does not have): false then, true when it answers; any other errno is
   * the step's StepError. The refusal throws nothing, so it costs what the call costs.
   */
  query(name: RequestName, fd: number, arg: Buffer, refusal: 'EINVAL'): boolean {
    const result = this.kernel.ioctlErrno(fd, REQUESTS[name], arg);
    if (result >= 0) {
      if (this.debug) this.log.debug({ route: this.route, step: name, result }, 'ok');
      return true;
    }
    if (result === -osConstants.errno[refusal]) {
      if (this.debug) this.log.debug({ route: this.route, step: name, errno: refusal }, 'refused');
      return false;
    }
    // Any other failure: asked again through ioctl(), whose error names the errno as every step's does
    // (a query changes nothing, so asking twice is harmless; this is the rare path).
    this.ioctl(name, fd, arg);
    return true;
  }

  /**
   * One ioctl per `stride`-byte record of `records` (a batch). A failure is the StepError of the failed
   * record, with `index`: every record before it succeeded, none after it was issued.
   */
  ioctlEach(name: RequestName, fd: number, records: Buffer, stride: number): number {
    try {
      return this.run(name, undefined, () => this.kernel.ioctlEach(fd, REQUESTS[name], records, stride));
    } catch (e) {
      if (e instanceof StepError && typeof (e.cause as Partial<BatchSysError>).index === 'number') e.index = (e.cause as BatchSysError).index;
      throw e;
    }
  }

  /** A step that fails without a system call (a missing sysfs entry, a mismatched node). */
  fail(step: Step, errno: string | null, message: string, path?: string): never {
    this.log.debug({ route: this.route, step, path, errno }, message);
    throw new StepError(this.route, step, errno, message, path);
  }
}

/**
 * Owns the fds a constructor opens until it hands them to the object it builds: on failure,
 * `closeAll` closes them in reverse order, so no path leaks one.
 */
export class FdStack {
  private readonly fds: number[] = [];
  constructor(private readonly kernel: Kernel) {}

  push(fd: number): number {
    this.fds.push(fd);
    return fd;
  }

  /** Closes the fd pushed last (one that turned out not to be wanted). */
  closeLast(): void {
    const fd = this.fds.pop();
    if (fd !== undefined) closeQuietly(this.kernel, fd);
  }

  /** Gives up ownership (the fds now belong to whoever received them). */
  release(): void {
    this.fds.length = 0;
  }

  closeAll(): void {
    while (this.fds.length > 0) closeQuietly(this.kernel, this.fds.pop()!);
  }
}

/** close(2) on a cleanup path, where a second error must not hide the first. */
export function closeQuietly(kernel: Kernel, fd: number): void {
  try {
    kernel.close(fd);
  } catch {
    // Nothing useful to do: the fd is gone either way (close never leaves it open on Linux).
  }
}

/** Runs a cleanup step whose failure changes nothing (the thing is gone, or was never there). */
export function quietly(fn: () => void): void {
  try {
    fn();
  } catch {
    // a cleanup answer: nothing of ours is left either way
  }
}
