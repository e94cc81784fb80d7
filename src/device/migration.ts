// VFIO migration v2 on a bound device: what it supports (VFIO_DEVICE_FEATURE_MIGRATION), the state it
// is in and moving it (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: the caller names a target, the kernel
// walks the arcs), the estimate of its state's size (MIG_DATA_SIZE), and the data transfer session an
// arc opens: a data fd that this object owns until the session ends (the device leaves the saving
// states, or RESUMING), the device is closed, or a new session replaces it. The Node streams over a
// session are in migration-streams.ts.
import { KernelError, MigrationRefusedError, onKernel, StepError, UnsupportedError, UsageError } from '../errors.js';
import { deviceFeatureGetMigration, deviceFeatureProbe, deviceReset } from '../ioctl/device.js';
import { migDataSize, migGetState, migPrecopyInfo, migSetState } from '../ioctl/migration.js';
import type { Logger } from '../log.js';
import { closeQuietly, type StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import { VFIO_DEVICE_STATE } from '../uapi/migration.js';
import { VFIO_MIGRATION } from '../uapi/vfio.js';
import { loadState, saveState, type LoadOptions, type MigrationLoadStream, type MigrationSaveStream, type SaveOptions } from './migration-streams.js';

export type MigrationFlag = keyof typeof VFIO_MIGRATION;
export type MigrationState = keyof typeof VFIO_DEVICE_STATE;

export interface MigrationSupport {
  /** STOP_COPY (every migratable device), P2P, PRE_COPY */
  flags: MigrationFlag[];
}

export interface PrecopyInfo {
  /** initial data the device still has to give in PRE_COPY; leave for STOP_COPY once it is 0 */
  initialBytes: bigint;
  /** state the device changed since it was read */
  dirtyBytes: bigint;
}

/** What a DeviceMigration needs of its device (VfioDevice gives it). */
export interface MigrationHost {
  readonly kernel: Kernel;
  readonly name: string;
  readonly log: Logger;
  calls(): StepCalls;
  deviceFd(): number;
  assertOpen(): void;
}

const STATE_NAME = new Map<number, MigrationState>(Object.entries(VFIO_DEVICE_STATE).map(([name, n]) => [n, name as MigrationState]));
/** the support each state needs (vfio_mig_get_next_state's state_flags_table) */
const NEEDS: Record<Exclude<MigrationState, 'ERROR'>, MigrationFlag[]> = {
  STOP: ['STOP_COPY'], RUNNING: ['STOP_COPY'], STOP_COPY: ['STOP_COPY'], RESUMING: ['STOP_COPY'],
  RUNNING_P2P: ['STOP_COPY', 'P2P'], PRE_COPY: ['STOP_COPY', 'PRE_COPY'], PRE_COPY_P2P: ['STOP_COPY', 'P2P', 'PRE_COPY'],
};
/** the states that share one saving session (uAPI: "the saving group") */
const SAVING: readonly MigrationState[] = ['PRE_COPY', 'PRE_COPY_P2P', 'STOP_COPY'];

export function isMigrationState(s: string): s is MigrationState {
  return Object.hasOwn(VFIO_DEVICE_STATE, s);
}

const stateName = (n: number): MigrationState | `unknown state ${number}` => STATE_NAME.get(n) ?? `unknown state ${n}`;

/** The device's migration support, or null when it has no migration (the probe answers ENOTTY). */
export function readMigration(calls: StepCalls, deviceFd: number): MigrationSupport | null {
  if (!deviceFeatureProbe(calls, deviceFd, 'MIGRATION', 'get')) return null;
  const { flags } = deviceFeatureGetMigration(calls, deviceFd);
  return { flags: (Object.entries(VFIO_MIGRATION) as [MigrationFlag, number][]).filter(([, bit]) => (flags & BigInt(bit)) !== 0n).map(([name]) => name) };
}

/** A data transfer session: the data fd an arc returned, read when saving, written when resuming. */
export class MigrationSession implements Disposable {
  private isClosed = false;

  /** @internal DeviceMigration opens it */
  constructor(
    private readonly kernel: Kernel,
    /** the data fd: owned by this session */
    readonly fd: number,
    readonly direction: 'save' | 'load',
    private readonly onClose: (s: MigrationSession) => void,
  ) {}

  get closed(): boolean {
    return this.isClosed;
  }

  /** Closes the data fd (idempotent). The device keeps its state; a session once closed cannot be resumed. */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    closeQuietly(this.kernel, this.fd);
    this.onClose(this);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export class DeviceMigration {
  private current: MigrationSession | null = null;
  private cachedSupport: MigrationSupport | null | undefined;
  /** a stream over the session (migration-streams.ts), ended when the device closes */
  private activeStream: { destroy(error?: Error): void } | null = null;

  /** @internal VfioDevice.migrator */
  constructor(private readonly host: MigrationHost) {}

  /** What the device's migration supports, or null when it has none. */
  support(): MigrationSupport | null {
    this.host.assertOpen();
    if (this.cachedSupport === undefined) this.cachedSupport = this.step(() => readMigration(this.host.calls(), this.host.deviceFd()));
    return this.cachedSupport ? { flags: [...this.cachedSupport.flags] } : null;
  }

  /** The session the device is in (its data fd), or null. */
  get session(): MigrationSession | null {
    return this.current;
  }

  /** The device's migration state (GET). */
  state(): MigrationState {
    this.requireSupport(null);
    const n = this.step(() => migGetState(this.host.calls(), this.host.deviceFd()));
    const name = stateName(n);
    if (!isMigrationState(name)) throw new KernelError(`${this.host.name} reports migration ${name}, which this library does not know`, { step: 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE' });
    return name;
  }

  /**
   * Moves the device to `target`; the kernel walks the arcs between. Returns the session the device is
   * in afterwards: a new one when an arc opened it (RUNNING -> PRE_COPY, STOP -> STOP_COPY, STOP ->
   * RESUMING), the same one while it stays in its group (PRE_COPY -> STOP_COPY), else null (a session
   * left behind is closed). A refusal is a MigrationRefusedError naming the state the device is in now.
   */
  setState(target: MigrationState): MigrationSession | null {
    if (target === 'ERROR') throw new UsageError('ERROR is not a state to ask for: a device enters it only when an arc fails');
    if (!isMigrationState(target)) throw new UsageError(`unknown migration state ${String(target)} (one of ${Object.keys(NEEDS).join(', ')})`);
    this.requireSupport(target);
    const from = this.state();
    const unasked = unaskable(from, target);
    if (unasked) {
      throw new MigrationRefusedError(`${this.host.name} cannot move from ${from} to ${target}: ${unasked}; it is still in ${from}`, from, target, from,
        { step: 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE', hint: from === 'ERROR' ? 'migrator.recover() (VFIO_DEVICE_RESET) brings it back to RUNNING' : undefined });
    }
    let dataFd: number;
    try {
      ({ dataFd } = migSetState(this.host.calls(), this.host.deviceFd(), VFIO_DEVICE_STATE[target]));
    } catch (e) {
      if (!(e instanceof StepError)) throw e;
      const after = this.stateOrNull();
      this.keepSessionFor(after);
      throw new MigrationRefusedError(refusal(this.host.name, from, target, e.errno, after), from, target, after, {
        ...e.details(), hint: after === 'ERROR' ? 'migrator.recover() (VFIO_DEVICE_RESET) brings it back to RUNNING' : undefined,
      });
    }
    this.host.log.debug({ from, target, dataFd }, 'migration state');
    if (dataFd >= 0) {
      // a new session replaces one the device already ended
      this.current?.close();
      this.current = new MigrationSession(this.host.kernel, dataFd, target === 'RESUMING' ? 'load' : 'save', (s) => {
        if (this.current === s) this.current = null;
      });
      return this.current;
    }
    this.keepSessionFor(target);
    return this.current;
  }

  /**
   * The device's state as a Readable: STOP_COPY (after PRE_COPY, with `precopy`) read to the end, then
   * STOP (or `after`). A stream that fails or is destroyed returns the device to where it started.
   */
  save(options: SaveOptions = {}): MigrationSaveStream {
    return saveState(this.host, this, options);
  }

  /**
   * A Writable that loads a saved state: RESUMING, the data, then STOP and RUNNING (or `after`) when
   * it ends. A stream the device refuses fails with MigrationStreamError; load() may be called again.
   */
  load(options: LoadOptions = {}): MigrationLoadStream {
    return loadState(this.host, this, options);
  }

  /** VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: the device's estimate of its STOP_COPY stream, in bytes. */
  dataSize(): bigint {
    this.requireSupport(null);
    return this.step(() => migDataSize(this.host.calls(), this.host.deviceFd()));
  }

  /** VFIO_MIG_GET_PRECOPY_INFO on the saving session, in PRE_COPY or PRE_COPY_P2P. */
  precopyInfo(): PrecopyInfo {
    this.host.assertOpen();
    const s = this.current;
    if (!s || s.direction !== 'save') throw new UsageError(`${this.host.name} has no saving session: precopy info is read in PRE_COPY`);
    return this.step(() => migPrecopyInfo(this.host.calls(), s.fd));
  }

  /**
   * VFIO_DEVICE_RESET, the way out of ERROR (and of a session nobody can finish): the device returns
   * to RUNNING and ends its sessions. Issued whether or not the device sets VFIO_DEVICE_FLAGS_RESET
   * (mtty answers it without). Returns the state read back.
   */
  recover(): MigrationState {
    this.requireSupport(null);
    this.current?.close();
    this.step(() => deviceReset(this.host.calls(), this.host.deviceFd()));
    return this.state();
  }

  /** @internal the streams (migration-streams.ts) register themselves: one at a time */
  claimStream(stream: { destroy(error?: Error): void }): () => void {
    if (this.activeStream) throw new UsageError(`${this.host.name} already has a migration stream open: end it first`);
    this.activeStream = stream;
    return () => {
      if (this.activeStream === stream) this.activeStream = null;
    };
  }

  /** @internal at device close: the stream ends with `why`, the session's fd is closed. */
  shutdown(why: Error): void {
    this.activeStream?.destroy(why);
    this.activeStream = null;
    this.current?.close();
  }

  /** @internal */
  requireSupport(target: MigrationState | null): MigrationSupport {
    const support = this.support();
    if (!support) throw new UnsupportedError(`${this.host.name} has no migration support (VFIO_DEVICE_FEATURE_MIGRATION answers ENOTTY)`, { errno: 'ENOTTY', step: 'VFIO_DEVICE_FEATURE_MIGRATION' });
    if (target && target !== 'ERROR') {
      const missing = NEEDS[target].filter((f) => !support.flags.includes(f));
      if (missing.length > 0) throw new UnsupportedError(`${this.host.name} cannot enter ${target}: its migration lacks ${missing.join(' and ')} (it has ${support.flags.join(', ')})`);
    }
    return support;
  }

  /** The state, or null when even reading it fails (a refused arc may leave the device unable to answer). */
  stateOrNull(): MigrationState | null {
    try {
      return this.state();
    } catch {
      return null;
    }
  }

  private keepSessionFor(state: MigrationState | null): void {
    const s = this.current;
    if (!s) return;
    const continues = s.direction === 'save' ? state !== null && SAVING.includes(state) : state === 'RESUMING';
    if (!continues) s.close();
  }

  private step<T>(fn: () => T): T {
    return onKernel(this.host.name, fn);
  }
}

/**
 * Requests the library answers without the kernel: from ERROR the kernel answers only EINVAL (with a
 * WARN_ON in its log), and STOP_COPY -> PRE_COPY(_P2P), which the uAPI forbids, makes
 * vfio_mig_get_next_state loop forever in kernels before its 2026 fix (6.12 among them).
 */
function unaskable(from: MigrationState, target: MigrationState): string | null {
  if (from === 'ERROR') return 'a device in ERROR leaves it only by a reset';
  if (from === 'STOP_COPY' && (target === 'PRE_COPY' || target === 'PRE_COPY_P2P')) {
    return 'the uAPI has no arc from STOP_COPY back to the precopy states (and kernels without the 2026 fix to vfio_mig_get_next_state never return from the request)';
  }
  return null;
}

function refusal(device: string, from: string, target: string, errno: string | null, after: string | null): string {
  const where = after === null ? 'its state cannot be read back' : after === from ? `it is still in ${after}` : `it is now in ${after}`;
  return `${device} refused to move from ${from} to ${target} (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: ${errno ?? 'refused'}); ${where}`;
}
