// A device's migration driver, as samples/vfio-mdev/mtty.c (6.12) is one, behind the VFIO core's
// feature handlers (vfio_main.c): VFIO_DEVICE_FEATURE_MIGRATION, _MIG_DEVICE_STATE (with
// vfio_mig_get_next_state's arc table), _MIG_DATA_SIZE and _DMA_LOGGING_*, and the data files the
// arcs return: read()/write() at the file position, VFIO_MIG_GET_PRECOPY_INFO, release.
//
// The stream is mtty's: a 24-byte header (magic, major 1, minor 0, nr_ports, flags 0) then one
// PORT_BYTES block per port, the device's state (`payload`, which tests set and read). mtty's
// answers are kept: a bad header fails the write that completes it with EFAULT (the bytes still
// count), a stream longer than the device's fails with ENOMEM, a short one fails only at RESUMING ->
// STOP with EINVAL; in PRE_COPY a drained stream reads 0 (or ENOMSG, as the uAPI says, with
// `enomsg`); closing the device disables the files but keeps the state; reset returns it to RUNNING.
// What mtty cannot do (reach ERROR, fail an arc) is injected with failArc.
import { VFIO_DEVICE_STATE, vfio_device_feature_dma_logging_control, vfio_device_feature_dma_logging_range,
  vfio_device_feature_dma_logging_report, vfio_device_feature_mig_data_size, vfio_device_feature_mig_state,
  vfio_precopy_info } from '../../src/uapi/migration.js';
import { decode, writeField } from '../../src/uapi/struct.js';
import { VFIO_DEVICE_FEATURE_FLAG, VFIO_DEVICE_FEATURE_INDEX, VFIO_MIGRATION, vfio_device_feature, vfio_device_feature_migration } from '../../src/uapi/vfio.js';
import { ioctlError, sysError, userStruct, type Errno } from './errno.js';
import { install } from './files.js';
import { userMemory } from './memory.js';
import { S_IFREG, type DeviceState, type FakeState, type FdEntry } from './state.js';

type Arg = number | Buffer | undefined;
const S = VFIO_DEVICE_STATE;
const F = VFIO_DEVICE_FEATURE_FLAG;

export const MTTY_MAGIC = 0x7e9d09898c3e2c4en;
export const HEADER_BYTES = 24;
/** sizeof(struct serial_port) in mtty.c */
export const PORT_BYTES = 36;
const LOG_MAX_RANGES = 4096 / vfio_device_feature_dma_logging_range.size;
const U64 = (1n << 64n) - 1n;

/** A migration data file (struct mtty_migration_file). */
export interface MigFile {
  kind: 'migration';
  direction: 'save' | 'load';
  device: DeviceState;
  data: Buffer;
  filled: number;
  /** f_pos: the stream is stream_open'd, so only read()/write() move it (pread/pwrite: ESPIPE) */
  pos: number;
  disabled: boolean;
  /** the device's reference (saving_migf/resuming_migf) and the fd's */
  heldByDevice: boolean;
  fdOpen: boolean;
}

export interface MigrationDriver {
  device: DeviceState;
  state: number;
  nrPorts: number;
  /** the device's own state: what a save streams after the header and a resume loads */
  payload: Buffer;
  saving: MigFile | null;
  resuming: MigFile | null;
  /** has log_ops (mtty's accept everything) */
  logging: boolean;
  loggingStarted: boolean;
  /** the ranges START was given (while started) */
  logRanges: { start: bigint; last: bigint }[];
  /** the 4 KiB pages the device wrote while logging, not yet reported (mtty writes none; tests do) */
  loggedPages: Set<bigint>;
  /** the page size log_start answers (mtty leaves the one asked: null) */
  logPageSize: bigint | null;
  /** a drained PRE_COPY stream answers ENOMSG (the uAPI) instead of 0 (mtty) */
  enomsg: boolean;
  /** an arc that fails next: its errno, and whether the device is left in ERROR */
  failArc: { from: number; to: number; errno: Errno; toError: boolean } | null;
  /** data files not yet freed (both references gone) */
  liveFiles: Set<MigFile>;
}

export function newMigrationDriver(device: DeviceState, nrPorts: number, logging = true): MigrationDriver {
  return { device, state: S.RUNNING, nrPorts, payload: Buffer.alloc(nrPorts * PORT_BYTES), saving: null, resuming: null, logging,
    loggingStarted: false, logRanges: [], loggedPages: new Set(), logPageSize: null, enomsg: false, failArc: null, liveFiles: new Set() };
}

const dataSize = (m: MigrationDriver): number => HEADER_BYTES + m.nrPorts * PORT_BYTES;

// vfio_mig_get_next_state: the next arc from cur towards target, skipping states the device lacks.
const FROM: Record<number, Record<number, number>> = {
  [S.STOP]: { [S.STOP]: S.STOP, [S.RUNNING]: S.RUNNING_P2P, [S.PRE_COPY]: S.RUNNING_P2P, [S.PRE_COPY_P2P]: S.RUNNING_P2P, [S.STOP_COPY]: S.STOP_COPY, [S.RESUMING]: S.RESUMING, [S.RUNNING_P2P]: S.RUNNING_P2P, [S.ERROR]: S.ERROR },
  [S.RUNNING]: { [S.STOP]: S.RUNNING_P2P, [S.RUNNING]: S.RUNNING, [S.PRE_COPY]: S.PRE_COPY, [S.PRE_COPY_P2P]: S.RUNNING_P2P, [S.STOP_COPY]: S.RUNNING_P2P, [S.RESUMING]: S.RUNNING_P2P, [S.RUNNING_P2P]: S.RUNNING_P2P, [S.ERROR]: S.ERROR },
  [S.PRE_COPY]: { [S.STOP]: S.RUNNING, [S.RUNNING]: S.RUNNING, [S.PRE_COPY]: S.PRE_COPY, [S.PRE_COPY_P2P]: S.PRE_COPY_P2P, [S.STOP_COPY]: S.PRE_COPY_P2P, [S.RESUMING]: S.RUNNING, [S.RUNNING_P2P]: S.RUNNING, [S.ERROR]: S.ERROR },
  [S.PRE_COPY_P2P]: { [S.STOP]: S.RUNNING_P2P, [S.RUNNING]: S.RUNNING_P2P, [S.PRE_COPY]: S.PRE_COPY, [S.PRE_COPY_P2P]: S.PRE_COPY_P2P, [S.STOP_COPY]: S.STOP_COPY, [S.RESUMING]: S.RUNNING_P2P, [S.RUNNING_P2P]: S.RUNNING_P2P, [S.ERROR]: S.ERROR },
  [S.STOP_COPY]: { [S.STOP]: S.STOP, [S.RUNNING]: S.STOP, [S.PRE_COPY]: S.ERROR, [S.PRE_COPY_P2P]: S.ERROR, [S.STOP_COPY]: S.STOP_COPY, [S.RESUMING]: S.STOP, [S.RUNNING_P2P]: S.STOP, [S.ERROR]: S.ERROR },
  [S.RESUMING]: { [S.STOP]: S.STOP, [S.RUNNING]: S.STOP, [S.PRE_COPY]: S.STOP, [S.PRE_COPY_P2P]: S.STOP, [S.STOP_COPY]: S.STOP, [S.RESUMING]: S.RESUMING, [S.RUNNING_P2P]: S.STOP, [S.ERROR]: S.ERROR },
  [S.RUNNING_P2P]: { [S.STOP]: S.STOP, [S.RUNNING]: S.RUNNING, [S.PRE_COPY]: S.RUNNING, [S.PRE_COPY_P2P]: S.PRE_COPY_P2P, [S.STOP_COPY]: S.STOP, [S.RESUMING]: S.STOP, [S.RUNNING_P2P]: S.RUNNING_P2P, [S.ERROR]: S.ERROR },
};
const M = VFIO_MIGRATION;
const NEEDS: Record<number, number> = {
  [S.STOP]: M.STOP_COPY, [S.RUNNING]: M.STOP_COPY, [S.PRE_COPY]: M.STOP_COPY | M.PRE_COPY, [S.PRE_COPY_P2P]: M.STOP_COPY | M.P2P | M.PRE_COPY,
  [S.STOP_COPY]: M.STOP_COPY, [S.RESUMING]: M.STOP_COPY, [S.RUNNING_P2P]: M.STOP_COPY | M.P2P, [S.ERROR]: 0xffffffff,
};
const has = (flags: number, state: number): boolean => ((NEEDS[state] ?? 0xffffffff) & flags) >>> 0 === (NEEDS[state] ?? 0xffffffff) >>> 0;

function nextState(flags: number, cur: number, target: number): number {
  if (!has(flags, cur) || !has(flags, target)) throw ioctlError('EINVAL'); // from ERROR: with a WARN_ON splat
  let next = FROM[cur]![target]!;
  while (!has(flags, next)) {
    // 6.12's loop never ends on ERROR, whose flags no device has (fixed upstream in 2026): the real
    // kernel hangs in the ioctl here, so a library that asks fails its test loudly
    if (next === S.ERROR) throw new Error('fake: vfio_mig_get_next_state would loop forever (STOP_COPY -> PRE_COPY on a 6.12 kernel)');
    next = FROM[next]![target]!;
  }
  return next;
}

/** vfio_check_feature: 1 to go on, 0 for a PROBE that succeeded; throws its EINVAL */
function checkFeature(flags: number, argsz: number, ops: number, minsz: number): 0 | 1 {
  if (((flags & (F.GET | F.SET)) & ~ops) !== 0) throw ioctlError('EINVAL');
  if ((flags & F.PROBE) !== 0) return 0;
  if ((flags & (F.GET | F.SET)) === 0) throw ioctlError('EINVAL');
  if (argsz < minsz) throw ioctlError('EINVAL');
  return 1;
}

/** vfio_ioctl_device_feature's switch, for the features the core handles; others are ENOTTY (no device_feature op). */
export function deviceFeature(s: FakeState, dev: DeviceState, arg: Arg): number {
  const head = decode(vfio_device_feature, userStruct(arg, vfio_device_feature.size));
  const { flags } = head;
  const argsz = head.argsz - vfio_device_feature.size;
  const data = (size: number): Buffer => userStruct(arg, vfio_device_feature.size + size).subarray(vfio_device_feature.size);
  const m = dev.mig;
  const I = VFIO_DEVICE_FEATURE_INDEX;
  switch (flags & F.MASK) {
    case I.MIGRATION: {
      if (!m) throw ioctlError('ENOTTY');
      if (checkFeature(flags, argsz, F.GET, vfio_device_feature_migration.size) === 0) return 0;
      writeField(data(8), vfio_device_feature_migration.fields.flags, BigInt(dev.migration ?? 0));
      return 0;
    }
    case I.MIG_DEVICE_STATE: {
      if (!m) throw ioctlError('ENOTTY');
      if (checkFeature(flags, argsz, F.GET | F.SET, vfio_device_feature_mig_state.size) === 0) return 0;
      const buf = data(vfio_device_feature_mig_state.size);
      const fields = vfio_device_feature_mig_state.fields;
      if ((flags & F.GET) !== 0) {
        writeField(buf, fields.device_state, m.state);
        writeField(buf, fields.data_fd, -1);
        return 0;
      }
      let file: MigFile | null = null;
      try {
        file = setState(dev, m, decode(vfio_device_feature_mig_state, buf).device_state);
      } finally {
        writeField(buf, fields.data_fd, -1); // out_copy: also on failure
      }
      if (file) writeField(buf, fields.data_fd, install(s, 'anon_inode:mtty_mig', { mode: S_IFREG | 0o600, rdev: 0, isCharacterDevice: false }, file));
      return 0;
    }
    case I.MIG_DATA_SIZE: {
      if (!m) throw ioctlError('ENOTTY');
      if (checkFeature(flags, argsz, F.GET, vfio_device_feature_mig_data_size.size) === 0) return 0;
      writeField(data(8), vfio_device_feature_mig_data_size.fields.stop_copy_length, BigInt(dataSize(m)));
      return 0;
    }
    case I.DMA_LOGGING_START: return loggingStart(s, m, flags, argsz, arg);
    case I.DMA_LOGGING_STOP:
      if (!m?.logging) throw ioctlError('ENOTTY');
      if (checkFeature(flags, argsz, F.SET, 0) === 0) return 0;
      m.loggingStarted = false;
      m.logRanges = [];
      m.loggedPages.clear();
      return 0;
    case I.DMA_LOGGING_REPORT: {
      if (!m?.logging) throw ioctlError('ENOTTY');
      if (checkFeature(flags, argsz, F.GET, vfio_device_feature_dma_logging_report.size) === 0) return 0;
      const r = decode(vfio_device_feature_dma_logging_report, data(vfio_device_feature_dma_logging_report.size));
      if (r.page_size < 4096n || (r.page_size & (r.page_size - 1n)) !== 0n) throw ioctlError('EINVAL');
      if (r.iova + r.length > U64) throw ioctlError('EOVERFLOW');
      // iova_bitmap: one bit per page_size from r.iova; the driver ORs bits in and clears what it reported
      const pages = Number((r.length + r.page_size - 1n) / r.page_size);
      const bitmap = userMemory(s, r.bitmap, Math.ceil(pages / 64) * 8);
      for (const page of [...m.loggedPages]) {
        if (page + 4096n <= r.iova || page >= r.iova + r.length) continue;
        const first = page < r.iova ? 0n : (page - r.iova) / r.page_size;
        const last = (page + 4095n - r.iova) / r.page_size;
        for (let bit = first; bit <= last && bit < BigInt(pages); bit++) bitmap[Number(bit >> 3n)]! |= 1 << Number(bit & 7n);
        m.loggedPages.delete(page);
      }
      return 0;
    }
    default:
      throw ioctlError('ENOTTY');
  }
}

function loggingStart(s: FakeState, m: MigrationDriver | null, flags: number, argsz: number, arg: Arg): number {
  if (!m?.logging) throw ioctlError('ENOTTY');
  const C = vfio_device_feature_dma_logging_control;
  if (checkFeature(flags, argsz, F.SET, C.size) === 0) return 0;
  const control = decode(C, userStruct(arg, vfio_device_feature.size + C.size), vfio_device_feature.size);
  const n = control.num_ranges;
  if (n === 0) throw ioctlError('EINVAL');
  if (n > LOG_MAX_RANGES) throw ioctlError('E2BIG');
  const R = vfio_device_feature_dma_logging_range;
  const list = userMemory(s, control.ranges, n * R.size);
  const taken: { start: bigint; last: bigint }[] = [];
  const mask = (control.page_size - 1n) & U64;
  for (let i = 0; i < n; i++) {
    const r = decode(R, list, i * R.size);
    if ((r.iova & mask) !== 0n || (r.length & mask) !== 0n) throw ioctlError('EINVAL');
    if (r.iova + r.length > U64) throw ioctlError('EOVERFLOW');
    const start = r.iova;
    const last = (r.iova + r.length - 1n) & U64;
    if (taken.some((t) => start <= t.last && last >= t.start)) throw ioctlError('EINVAL'); // overlapping
    taken.push({ start, last });
  }
  m.loggingStarted = true; // mtty_log_start accepts, and leaves page_size as asked
  m.logRanges = taken;
  if (m.logPageSize !== null) writeField(userStruct(arg, vfio_device_feature.size + C.size), C.fields.page_size, m.logPageSize, vfio_device_feature.size);
  return 0;
}

/** A device write of [iova, iova+length) while it logs: the pages inside its ranges are logged. */
export function logDeviceWrite(m: MigrationDriver, iova: bigint, length: bigint): void {
  if (!m.loggingStarted) return;
  for (let page = iova & ~4095n; page < iova + length; page += 4096n) {
    if (m.logRanges.some((r) => page + 4095n >= r.start && page <= r.last)) m.loggedPages.add(page);
  }
}

/** mtty_set_state: arc by arc; a failed arc stops the walk where it is. */
function setState(dev: DeviceState, m: MigrationDriver, target: number): MigFile | null {
  let out: MigFile | null = null;
  while (m.state !== target) {
    const next = nextState(dev.migration ?? 0, m.state, target);
    const inject = m.failArc;
    if (inject && inject.from === m.state && inject.to === next) {
      m.failArc = null;
      if (inject.toError) {
        m.state = S.ERROR;
        disableFiles(m);
      }
      throw ioctlError(inject.errno);
    }
    out = stepState(m, next);
    m.state = next;
  }
  return out;
}

function newFile(m: MigrationDriver, direction: MigFile['direction']): MigFile {
  const f: MigFile = { kind: 'migration', direction, device: m.device, data: Buffer.alloc(dataSize(m)), filled: 0, pos: 0, disabled: false, heldByDevice: true, fdOpen: true };
  m.liveFiles.add(f);
  return f;
}

/** mtty_step_state: one arc, returning the new data file when the arc starts a session. */
function stepState(m: MigrationDriver, next: number): MigFile | null {
  const cur = m.state;
  const arc = (a: number, b: number): boolean => cur === a && next === b;
  if (arc(S.RUNNING, S.RUNNING_P2P) || arc(S.RUNNING_P2P, S.RUNNING) || arc(S.RUNNING_P2P, S.STOP)
    || arc(S.PRE_COPY, S.PRE_COPY_P2P) || arc(S.PRE_COPY_P2P, S.PRE_COPY) || arc(S.STOP, S.RUNNING_P2P)) return null;
  if (arc(S.RESUMING, S.STOP)) {
    const f = m.resuming;
    if (!f) throw new Error('fake: mtty would dereference a NULL resuming_migf here (RESUMING -> STOP after the device was closed)');
    if (f.filled < dataSize(m)) throw ioctlError('EINVAL');
    f.data.copy(m.payload, 0, HEADER_BYTES, dataSize(m));
    disableFiles(m);
    return null;
  }
  if (arc(S.PRE_COPY, S.RUNNING) || arc(S.PRE_COPY_P2P, S.RUNNING_P2P) || arc(S.STOP_COPY, S.STOP)) {
    disableFiles(m);
    return null;
  }
  if (arc(S.RUNNING, S.PRE_COPY) || arc(S.RUNNING_P2P, S.PRE_COPY_P2P) || arc(S.STOP, S.STOP_COPY) || arc(S.PRE_COPY_P2P, S.STOP_COPY)) {
    let f = m.saving;
    let fresh = false;
    if (!f) {
      f = m.saving = newFile(m, 'save');
      f.data.writeBigUInt64LE(MTTY_MAGIC, 0);
      f.data.writeUInt32LE(1, 8);
      f.data.writeUInt32LE(0, 12);
      f.data.writeUInt32LE(m.nrPorts, 16);
      f.filled = HEADER_BYTES;
      fresh = true;
    }
    if (next === S.STOP_COPY) {
      m.payload.copy(f.data, f.filled);
      f.filled += m.payload.length;
    }
    return fresh ? f : null;
  }
  if (arc(S.STOP, S.RESUMING)) return (m.resuming = newFile(m, 'load'));
  throw ioctlError('EINVAL'); // WARN_ON: an arc vfio_mig_get_next_state never gives
}

function disableFile(m: MigrationDriver, f: MigFile): void {
  f.disabled = true;
  f.filled = 0;
  f.pos = 0;
  f.heldByDevice = false;
  if (!f.fdOpen) m.liveFiles.delete(f);
}

/** mtty_disable_files: the device lets go of its sessions (an fd still open reads ENODEV). */
export function disableFiles(m: MigrationDriver): void {
  if (m.saving) disableFile(m, m.saving);
  if (m.resuming) disableFile(m, m.resuming);
  m.saving = m.resuming = null;
}

/** mtty_reset (VFIO_DEVICE_RESET): back to RUNNING, sessions ended; the payload stays (mtty does not reset its UARTs). */
export function resetMigration(m: MigrationDriver): void {
  m.state = S.RUNNING;
  disableFiles(m);
}

/** close(2) of the data fd: mtty_release_migf once the device's reference is gone too. */
export function releaseMigFile(f: MigFile): void {
  f.fdOpen = false;
  const m = f.device.mig!;
  if (!f.heldByDevice) {
    f.disabled = true;
    m.liveFiles.delete(f);
  }
}

/** read(2) of a saving file (mtty_save_read) or write(2) of a resuming one (mtty_resume_write). */
export function streamIo(op: 'read' | 'write', e: FdEntry | undefined, buf: Buffer): number {
  if (!e) throw sysError('EBADF', op);
  const f = e.file;
  if (f.kind !== 'migration') throw sysError('EINVAL', op);
  if ((op === 'read') !== (f.direction === 'save')) throw sysError('EBADF', op); // O_RDONLY / O_WRONLY
  const m = f.device.mig!;
  if (op === 'read') {
    if (f.disabled) throw sysError('ENODEV', op);
    if (f.pos > f.filled) throw sysError('EINVAL', op);
    const n = Math.min(f.filled - f.pos, buf.length);
    if (n === 0 && m.enomsg && (m.state === S.PRE_COPY || m.state === S.PRE_COPY_P2P)) throw sysError('ENOMSG', op);
    f.data.copy(buf, 0, f.pos, f.pos + n);
    f.pos += n;
    return n;
  }
  if (f.pos + buf.length > dataSize(m)) throw sysError('ENOMEM', op);
  if (f.disabled) throw sysError('ENODEV', op);
  buf.copy(f.data, f.pos);
  f.pos += buf.length;
  let bad = false;
  if (f.filled < HEADER_BYTES && f.filled + buf.length >= HEADER_BYTES) {
    const d = f.data;
    bad = d.readBigUInt64LE(0) !== MTTY_MAGIC || d.readUInt32LE(20) !== 0 || d.readUInt32LE(8) !== 1 || d.readUInt32LE(12) !== 0 || d.readUInt32LE(16) !== m.nrPorts;
  }
  f.filled += buf.length;
  if (bad) throw sysError('EFAULT', op);
  return buf.length;
}

/** A data fd's ioctl: mtty_precopy_ioctl on a saving file; nothing on a resuming one. */
export function migFileIoctl(f: MigFile, request: number, arg: Arg, precopyInfoRequest: number): number {
  if (f.direction !== 'save' || request !== precopyInfoRequest) throw ioctlError('ENOTTY');
  const buf = userStruct(arg, vfio_precopy_info.size);
  if (decode(vfio_precopy_info, buf).argsz < vfio_precopy_info.size) throw ioctlError('EINVAL');
  const m = f.device.mig!;
  if (m.state !== S.PRE_COPY && m.state !== S.PRE_COPY_P2P) throw ioctlError('EINVAL');
  if (f.disabled) throw ioctlError('ENODEV');
  if (f.pos > f.filled) throw ioctlError('EINVAL');
  writeField(buf, vfio_precopy_info.fields.initial_bytes, BigInt(f.filled - f.pos));
  writeField(buf, vfio_precopy_info.fields.dirty_bytes, 0n);
  return 0;
}
