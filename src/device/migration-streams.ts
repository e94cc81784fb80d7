// The device's migration data as Node streams. saveState() is a Readable over a saving session (PRE_COPY
// while the device runs, if asked, then STOP_COPY to the stream's end, then STOP); loadState() is a
// Writable over a resuming session (RESUMING, the data, then STOP and RUNNING). Reads and writes of the
// data fd run off the event loop (a driver may sleep until the device has data), one chunk at a time,
// so backpressure holds and the state is never buffered whole. A stream that fails or is destroyed
// closes its session; the error says which state the device is in.
import { Readable, Writable, addAbortSignal } from 'node:stream';
import { KernelError, MigrationRefusedError, MigrationStreamError, UsageError, type VfioErrorDetails } from '../errors.js';
import type { SysErrorLike } from '../sys/kernel.js';
import type { DeviceMigration, MigrationHost, MigrationSession, MigrationState, PrecopyInfo } from './migration.js';

const DEFAULT_CHUNK = 1 << 20;
/** a PRE_COPY stream drained for now is looked at again after this long, doubling up to the cap */
const PRECOPY_POLL_MS = { first: 2, max: 50 };

export interface SaveOptions {
  /**
   * Start in PRE_COPY while the device runs, and move to STOP_COPY once the precopy info says the
   * initial data is read and the dirty bytes are at most `dirtyBytes` (default 0), after `maxMs`
   * (default 10 000), or when stopCopy() is called. Needs PRE_COPY support.
   */
  precopy?: boolean | { dirtyBytes?: bigint; maxMs?: number };
  /** where the device goes once the stream is read to its end: STOP (default) or RUNNING */
  after?: 'STOP' | 'RUNNING';
  /** bytes per read(2) of the data fd (default 1 MiB) */
  chunkBytes?: number;
  signal?: AbortSignal;
}

export interface LoadOptions {
  /** where the device goes once the stream is loaded: RUNNING (default) or STOP */
  after?: 'RUNNING' | 'STOP';
  signal?: AbortSignal;
}

/** where a saving state goes when its session is gone: the arcs that end a save */
const ABANDONED_SAVE: Partial<Record<MigrationState, MigrationState>> = { PRE_COPY: 'RUNNING', PRE_COPY_P2P: 'RUNNING_P2P', STOP_COPY: 'STOP' };

const isRunning = (s: MigrationState): boolean => s === 'RUNNING' || s === 'RUNNING_P2P';

/** The device's state, read from its saving session. Emits 'precopy' (PrecopyInfo) and 'phase'. */
export class MigrationSaveStream extends Readable {
  /** bytes read so far, and of them in PRE_COPY */
  bytes = 0;
  precopyBytes = 0;
  phase: 'precopy' | 'stop-copy' | 'done';
  private reading = false;
  private stopCopyAsked = false;
  private pollMs = PRECOPY_POLL_MS.first;
  private timer: NodeJS.Timeout | null = null;
  private readonly startedAt = Date.now();
  private readonly release: () => void;
  private readonly chunk: Buffer;

  /** @internal use device.migrator.save() (saveState) */
  constructor(
    private readonly host: MigrationHost,
    private readonly migration: DeviceMigration,
    private readonly session: MigrationSession,
    private readonly start: MigrationState,
    private readonly options: SaveOptions,
  ) {
    super({ highWaterMark: options.chunkBytes ?? DEFAULT_CHUNK });
    this.phase = options.precopy ? 'precopy' : 'stop-copy';
    this.chunk = Buffer.allocUnsafe(options.chunkBytes ?? DEFAULT_CHUNK);
    this.release = migration.claimStream(this);
    if (options.signal) addAbortSignal(options.signal, this);
  }

  /** Leave PRE_COPY for STOP_COPY at the next drained read, whatever the precopy info says. */
  stopCopy(): void {
    this.stopCopyAsked = true;
  }

  override _read(): void {
    if (this.reading || this.phase === 'done') return;
    this.reading = true;
    const buf = this.chunk;
    this.host.kernel.read(this.session.fd, buf, (err, n) => {
      this.reading = false;
      if (this.destroyed) return;
      if (err && !(err.code === 'ENOMSG' && this.phase === 'precopy')) {
        this.destroy(streamError(this.host, this.migration, 'read', this.bytes, err));
        return;
      }
      if (n > 0) {
        this.bytes += n;
        if (this.phase === 'precopy') this.precopyBytes += n;
        this.pollMs = PRECOPY_POLL_MS.first;
        if (this.push(Buffer.from(buf.subarray(0, n)))) this._read();
        return;
      }
      // 0 (or ENOMSG): the end in STOP_COPY; in PRE_COPY only "nothing for now"
      this.guard(() => (this.phase === 'precopy' ? this.drained() : this.finish()));
    });
  }

  private drained(): void {
    const info: PrecopyInfo = this.migration.precopyInfo();
    this.emit('precopy', info);
    const p = typeof this.options.precopy === 'object' ? this.options.precopy : {};
    const settled = info.initialBytes === 0n && info.dirtyBytes <= (p.dirtyBytes ?? 0n);
    if (settled || this.stopCopyAsked || Date.now() - this.startedAt >= (p.maxMs ?? 10_000)) {
      this.migration.setState('STOP_COPY');
      this.phase = 'stop-copy';
      this.emit('phase', this.phase);
      this._read();
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = null;
      this._read();
    }, this.pollMs);
    this.pollMs = Math.min(this.pollMs * 2, PRECOPY_POLL_MS.max);
  }

  private finish(): void {
    this.migration.setState(this.options.after ?? 'STOP');
    this.phase = 'done';
    this.emit('phase', this.phase);
    this.release();
    this.push(null);
  }

  private guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.destroy(e as Error);
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.timer) clearTimeout(this.timer);
    this.release();
    if (this.phase !== 'done') {
      // a save that did not finish: the session ends, and the device goes back to where it started
      this.session.close();
      try {
        this.migration.setState(this.start);
      } catch {
        // the error (or the caller's destroy) says what happened; the state is in MigrationRefusedError's reading
      }
      if (error instanceof MigrationStreamError) error.state = this.migration.stateOrNull();
    }
    callback(error);
  }
}

/** The device's state, written into its resuming session. */
export class MigrationLoadStream extends Writable {
  bytes = 0;
  private completed = false;
  private readonly release: () => void;

  /** @internal use device.migrator.load() (loadState) */
  constructor(
    private readonly host: MigrationHost,
    private readonly migration: DeviceMigration,
    private readonly session: MigrationSession,
    private readonly options: LoadOptions,
  ) {
    super({ highWaterMark: DEFAULT_CHUNK });
    this.release = migration.claimStream(this);
    if (options.signal) addAbortSignal(options.signal, this);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    const writeFrom = (at: number): void => {
      if (at >= chunk.length) {
        callback();
        return;
      }
      this.host.kernel.write(this.session.fd, at === 0 ? chunk : chunk.subarray(at), (err, n) => {
        if (err) {
          callback(streamError(this.host, this.migration, 'write', this.bytes, err));
          return;
        }
        this.bytes += n;
        writeFrom(at + n);
      });
    };
    writeFrom(0);
  }

  override _final(callback: (error?: Error | null) => void): void {
    try {
      try {
        this.migration.setState('STOP');
      } catch (e) {
        if (!(e instanceof MigrationRefusedError)) throw e;
        // RESUMING -> STOP is where a driver judges the stream whole: a refusal here is the stream's
        throw new MigrationStreamError(`${this.host.name} refused the migration stream as a whole (${this.bytes} bytes) at RESUMING -> STOP (${e.errno ?? 'refused'}): a truncated stream, or one from another kind of device; it is ${e.state ?? 'in an unknown state'}`,
          'complete', this.bytes, e.state, { errno: e.errno, step: 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE', cause: e, hint: STREAM_HINT });
      }
      if ((this.options.after ?? 'RUNNING') === 'RUNNING') this.migration.setState('RUNNING');
      this.completed = true;
      this.release();
      callback();
    } catch (e) {
      callback(e as Error);
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.release();
    if (!this.completed) {
      // a stream refused, or ended early: the session ends; the device stays where the kernel left it
      this.session.close();
      if (error instanceof MigrationStreamError) error.state = this.migration.stateOrNull();
    }
    callback(error);
  }
}

const STREAM_HINT = 'load a stream saved from a device of the same type; the device can be loaded again (load() starts a new session) or reset';

function streamError(host: MigrationHost, migration: DeviceMigration, phase: 'read' | 'write', bytes: number, err: SysErrorLike): MigrationStreamError {
  const details: VfioErrorDetails = { errno: err.code, step: `migration ${phase}`, cause: err, hint: phase === 'write' ? STREAM_HINT : undefined };
  const what = phase === 'write'
    ? `${host.name} refused the migration stream at byte ${bytes} (write: ${err.code}): it is not a stream this device can load (corrupt, too long, or from another kind of device)`
    : `reading ${host.name}'s migration stream failed at byte ${bytes} (read: ${err.code})`;
  return new MigrationStreamError(what, phase, bytes, migration.stateOrNull(), details);
}

/**
 * Starts a save: PRE_COPY or STOP_COPY from where the device is (RUNNING, or STOP without precopy). A
 * device found in a saving state with no session of ours (a save another holder left unfinished) has
 * that save ended first.
 */
export function saveState(host: MigrationHost, migration: DeviceMigration, options: SaveOptions = {}): MigrationSaveStream {
  migration.requireSupport(options.precopy ? 'PRE_COPY' : 'STOP_COPY');
  let start = migration.state();
  // a save another holder left unfinished (the device in a saving state, with no session of ours) is ended first
  const end = ABANDONED_SAVE[start];
  if (end && !migration.session) {
    migration.setState(end);
    start = migration.state();
  }
  if (options.precopy ? !isRunning(start) : !(isRunning(start) || start === 'STOP')) {
    throw new UsageError(`${host.name} is in ${start}: a save starts from ${options.precopy ? 'RUNNING (PRE_COPY runs beside the device)' : 'RUNNING or STOP'}`);
  }
  const session = migration.setState(options.precopy ? 'PRE_COPY' : 'STOP_COPY');
  if (!session) throw new KernelError(`${host.name} entered ${options.precopy ? 'PRE_COPY' : 'STOP_COPY'} without giving a data fd`, { step: 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE' });
  return new MigrationSaveStream(host, migration, session, start, options);
}

/**
 * Starts a resume: RESUMING from where the device is (RUNNING or STOP). A device found in RESUMING
 * with no session of ours (a resume another holder left unfinished) cannot be fed: it is reset first.
 */
export function loadState(host: MigrationHost, migration: DeviceMigration, options: LoadOptions = {}): MigrationLoadStream {
  migration.requireSupport('RESUMING');
  let start = migration.state();
  if (start === 'RESUMING' && !migration.session) start = migration.recover();
  if (!(isRunning(start) || start === 'STOP')) throw new UsageError(`${host.name} is in ${start}: a resume starts from RUNNING or STOP`);
  const session = migration.setState('RESUMING');
  if (!session) throw new KernelError(`${host.name} entered RESUMING without giving a data fd`, { step: 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE' });
  return new MigrationLoadStream(host, migration, session, options);
}
