// Interrupts: eventfds whose counter the fake increments, delivered to watchers on a later turn of
// the event loop (setImmediate), as the addon's uv_poll does; and vfio-pci's interrupt ioctls,
// VFIO_DEVICE_GET_IRQ_INFO/SET_IRQS as vfio_pci_intrs.c (INTx automask/unmask, MSI/MSI-X, ERR and
// REQ triggers, loopback). raiseIrq() fires a device's interrupt as its hardware would.
import { decode, writeField } from '../../src/uapi/struct.js';
import { VFIO_IRQ_INFO_FLAG, VFIO_IRQ_SET, VFIO_PCI_IRQ, vfio_irq_info, vfio_irq_set } from '../../src/uapi/vfio.js';
import { ioctlError, sysError, userStruct } from './errno.js';
import { install } from './files.js';
import { noIrqs, type DeviceFile, type DeviceState, type EventfdState, type FakeState, type WatchState } from './state.js';

type Arg = number | Buffer | undefined;

// ---------------------------------------------------------------------------------------------------
// eventfds

export function eventfd(s: FakeState): number {
  const efd: EventfdState = { counter: 0n, watches: [], scheduled: false, fdOpen: true };
  return install(s, 'anon_inode:[eventfd]', { mode: 0o600, rdev: 0, isCharacterDevice: false }, { kind: 'eventfd', efd });
}

export function watch(s: FakeState, fd: number, callback: (err: Error | null, count?: bigint) => void, keepAlive = true): object {
  const e = s.fdTable.get(fd);
  if (!e) throw sysError('EBADF', 'uv_poll_init');
  if (e.file.kind !== 'eventfd') throw sysError('EPERM', 'uv_poll_init'); // epoll: the fake polls only eventfds
  const efd = e.file.efd;
  const w: WatchState = { efd, callback, active: true, keepAlive };
  efd.watches.push(w);
  s.watchList.add(w);
  s.watchesStarted++;
  const handle = {};
  s.watchHandles.set(handle, w);
  if (efd.counter > 0n) schedule(efd); // level-triggered: an eventfd already readable fires at once
  return handle;
}

export function unwatch(s: FakeState, handle: object): void {
  const w = s.watchHandles.get(handle);
  if (!w) return; // already unwatched
  s.watchHandles.delete(handle);
  w.active = false;
  s.watchList.delete(w);
  w.efd.watches.splice(w.efd.watches.indexOf(w), 1);
}

/** eventfd_signal: the counter goes up and a watcher reads it on a later turn of the loop. false: no eventfd */
export function signal(efd: EventfdState | null): boolean {
  if (!efd) return false;
  efd.counter += 1n;
  schedule(efd);
  return true;
}

function schedule(efd: EventfdState): void {
  if (efd.scheduled || !efd.fdOpen || efd.watches.length === 0) return;
  efd.scheduled = true;
  setImmediate(() => {
    efd.scheduled = false;
    const w = efd.watches[0];
    if (!w || !efd.fdOpen || efd.counter === 0n) return;
    const count = efd.counter; // read(2) of an eventfd: the count, and the counter back to 0
    efd.counter = 0n;
    w.callback(null, count);
  });
}

/** Signals an eventfd of this process by its fd (what a write(2) of 1 to it does). */
export function signalEventfd(s: FakeState, fd: number): void {
  const e = s.fdTable.get(fd);
  if (e?.file.kind !== 'eventfd') throw new Error(`fake: fd ${fd} is not an eventfd`);
  signal(e.file.efd);
}

/** eventfd_ctx_fdget: EBADF for no fd, EINVAL for an fd that is not an eventfd */
function eventfdCtx(s: FakeState, fd: number): EventfdState {
  const e = s.fdTable.get(fd);
  if (!e) throw ioctlError('EBADF');
  if (e.file.kind !== 'eventfd') throw ioctlError('EINVAL');
  return e.file.efd;
}

// ---------------------------------------------------------------------------------------------------
// the device's interrupts

/**
 * The device raises an interrupt, as its hardware would: vfio-pci's handler signals the eventfd wired
 * to it (INTx: unless masked, and then masks it). Returns whether an eventfd was signalled.
 */
export function raiseIrq(dev: DeviceState, which: keyof typeof VFIO_PCI_IRQ | number, vector: number): boolean {
  const index = typeof which === 'number' ? which : VFIO_PCI_IRQ[which];
  const q = dev.irq;
  switch (index) {
    case VFIO_PCI_IRQ.INTX:
      if (q.type !== 'intx' || q.intxMasked) return false;
      q.intxMasked = true;
      return signal(q.triggers[0] ?? null);
    case VFIO_PCI_IRQ.MSI:
    case VFIO_PCI_IRQ.MSIX:
      if (q.type !== (index === VFIO_PCI_IRQ.MSI ? 'msi' : 'msix')) return false;
      return signal(q.triggers[vector] ?? null);
    case VFIO_PCI_IRQ.ERR:
      return signal(q.err);
    case VFIO_PCI_IRQ.REQ:
      return signal(q.req);
    default:
      throw new Error(`fake: no IRQ index ${String(which)}`);
  }
}

/** vfio_pci_get_irq_count */
function irqCount(dev: DeviceState, index: number): number {
  const c = dev.irqCounts;
  return [c.intx, c.msi, c.msix, c.pcie ? 1 : 0, 1][index] ?? 0;
}

/** vfio_pci_ioctl_get_irq_info */
export function irqInfo(_s: FakeState, file: DeviceFile, arg: Arg): number {
  const dev = file.device;
  const buf = userStruct(arg, vfio_irq_info.size);
  const q = decode(vfio_irq_info, buf);
  if (q.argsz < vfio_irq_info.size || q.index >= 5) throw ioctlError('EINVAL');
  if (q.index === VFIO_PCI_IRQ.ERR && !dev.irqCounts.pcie) throw ioctlError('EINVAL'); // ERR only on PCIe
  // mtty_get_irq_info (samples/vfio-mdev/mtty.c) answers only INTx and MSI
  if (dev.bus === 'mdev' && q.index !== VFIO_PCI_IRQ.INTX && q.index !== VFIO_PCI_IRQ.MSI) throw ioctlError('EINVAL');
  const F = VFIO_IRQ_INFO_FLAG;
  const flags = F.EVENTFD | (q.index === VFIO_PCI_IRQ.INTX ? F.MASKABLE | F.AUTOMASKED : F.NORESIZE);
  writeField(buf, vfio_irq_info.fields.flags, flags);
  writeField(buf, vfio_irq_info.fields.count, irqCount(dev, q.index));
  return 0;
}

/** vfio_pci_ioctl_set_irqs: vfio_set_irqs_validate_and_prepare, then the index's action */
export function setIrqs(s: FakeState, file: DeviceFile, arg: Arg): number {
  const dev = file.device;
  const buf = userStruct(arg, vfio_irq_set.size);
  const h = decode(vfio_irq_set, buf);
  const S = VFIO_IRQ_SET;
  const DATA = S.DATA_NONE | S.DATA_BOOL | S.DATA_EVENTFD;
  const ACTION = S.ACTION_MASK | S.ACTION_UNMASK | S.ACTION_TRIGGER;
  const max = irqCount(dev, h.index);
  if (h.argsz < vfio_irq_set.size || h.index >= 5 || h.count >= 0xffffffff - h.start || (h.flags & ~(DATA | ACTION)) !== 0) throw ioctlError('EINVAL');
  if (h.start >= max || h.start + h.count > max) throw ioctlError('EINVAL');
  const dataType = h.flags & DATA;
  const size = dataType === S.DATA_NONE ? 0 : dataType === S.DATA_BOOL ? 1 : dataType === S.DATA_EVENTFD ? 4 : -1;
  if (size < 0) throw ioctlError('EINVAL');
  if (size > 0 && h.argsz - vfio_irq_set.size < h.count * size) throw ioctlError('EINVAL');
  if (buf.length < vfio_irq_set.size + h.count * size) throw ioctlError('EFAULT'); // memdup_user
  const data = buf.subarray(vfio_irq_set.size, vfio_irq_set.size + h.count * size);
  const fds = dataType === S.DATA_EVENTFD ? Array.from({ length: h.count }, (_, i) => data.readInt32LE(4 * i)) : [];
  const bools = dataType === S.DATA_BOOL ? [...data] : [];
  const action = h.flags & ACTION;
  const q = dev.irq;
  const none = dataType === S.DATA_NONE;

  if (h.index === VFIO_PCI_IRQ.INTX) {
    if (action === S.ACTION_MASK || action === S.ACTION_UNMASK) {
      if (q.type !== 'intx' || h.start !== 0 || h.count !== 1) throw ioctlError('EINVAL');
      if (dataType === S.DATA_EVENTFD) throw ioctlError('EINVAL'); // irqfd (un)masking is not modelled
      if (!none && !bools[0]) return 0;
      if (action === S.ACTION_MASK) q.intxMasked = true;
      else if (q.intxMasked) {
        // vfio_pci_intx_unmask: a line still asserted fires again at once (and stays masked)
        if (q.intxLine) signal(q.triggers[0] ?? null);
        else q.intxMasked = false;
      }
      return 0;
    }
    if (action !== S.ACTION_TRIGGER) throw ioctlError('ENOTTY');
    // vfio_pci_set_intx_trigger
    if (q.type === 'intx' && h.count === 0 && none) {
      dev.irq = { ...noIrqs(), err: q.err, req: q.req, intxLine: q.intxLine };
      return 0;
    }
    if ((q.type !== 'intx' && q.type !== 'none') || h.start !== 0 || h.count !== 1) throw ioctlError('EINVAL');
    if (dataType === S.DATA_EVENTFD) {
      const trigger = fds[0]! >= 0 ? eventfdCtx(s, fds[0]!) : null;
      if (q.type === 'none') {
        q.type = 'intx';
        q.intxMasked = false;
      }
      q.triggers = [trigger];
      if (q.intxLine && !q.intxMasked) {
        q.intxMasked = true;
        signal(trigger);
      }
      return 0;
    }
    if (q.type !== 'intx') throw ioctlError('EINVAL');
    if (none || bools[0]) signal(q.triggers[0] ?? null); // loopback
    return 0;
  }

  if (h.index === VFIO_PCI_IRQ.MSI || h.index === VFIO_PCI_IRQ.MSIX) {
    if (action !== S.ACTION_TRIGGER) throw ioctlError('ENOTTY'); // no MSI masking
    const type = h.index === VFIO_PCI_IRQ.MSI ? 'msi' : 'msix';
    // vfio_pci_set_msi_trigger
    if (q.type === type && h.count === 0 && none) {
      dev.irq = { ...noIrqs(), err: q.err, req: q.req, intxLine: q.intxLine };
      return 0;
    }
    if (q.type !== type && q.type !== 'none') throw ioctlError('EINVAL'); // INTx (or the other MSI kind) is enabled
    if (dataType === S.DATA_EVENTFD) {
      const enabling = q.type === 'none';
      const n = enabling ? h.start + h.count : q.triggers.length;
      if (h.start + h.count > n) throw ioctlError('EINVAL'); // vfio_msi_set_block beyond the vectors enabled
      const triggers = enabling ? Array.from({ length: n }, () => null as EventfdState | null) : [...q.triggers];
      for (let i = 0; i < h.count; i++) triggers[h.start + i] = fds[i]! >= 0 ? eventfdCtx(s, fds[i]!) : null;
      q.type = type;
      q.triggers = triggers;
      q.intxLine = false; // MSI enabled: the device stops driving INTx
      return 0;
    }
    if (q.type !== type) throw ioctlError('EINVAL');
    for (let i = h.start; i < h.start + h.count; i++) if (none || bools[i - h.start]) signal(q.triggers[i] ?? null);
    return 0;
  }

  // ERR (PCIe only) and REQ: one trigger each, independent of the index enabled (vfio_pci_set_ctx_trigger_single)
  if (action !== S.ACTION_TRIGGER || (h.index === VFIO_PCI_IRQ.ERR && !dev.irqCounts.pcie)) throw ioctlError('ENOTTY');
  if (h.start !== 0 || h.count > 1) throw ioctlError('EINVAL');
  const key = h.index === VFIO_PCI_IRQ.ERR ? 'err' : 'req';
  if (none) {
    if (!q[key]) throw ioctlError('EINVAL');
    if (h.count) signal(q[key]);
    else q[key] = null;
    return 0;
  }
  if (dataType === S.DATA_BOOL) {
    if (h.count === 0) throw ioctlError('EINVAL');
    if (bools[0]) signal(q[key]);
    return 0;
  }
  if (h.count === 0) throw ioctlError('EINVAL');
  q[key] = fds[0]! >= 0 ? eventfdCtx(s, fds[0]!) : fds[0] === -1 ? null : q[key];
  return 0;
}

