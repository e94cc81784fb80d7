// Open files and the fd table: open(2) of a node runs what the driver behind its device number does
// on open, close(2) what it does on release; every fd shows in /proc/<pid>/fd. The drivers are
// iommufd.ts (/dev/iommu), container.ts (/dev/vfio/vfio), group.ts (/dev/vfio/N) and cdev.ts
// (/dev/vfio/devices/vfioN).
import { makedev, type FileStat } from '../../src/sys/kernel.js';
import { openCdev } from './cdev.js';
import { openContainer, releaseContainer } from './container.js';
import { releaseDeviceFile } from './device.js';
import { sysError } from './errno.js';
import { openGroup, releaseGroupFile } from './group.js';
import { openIommufd, releaseIommufd } from './iommufd.js';
import { releaseMigFile } from './migration.js';
import { RDEV, S_IFCHR, S_IFREG, type FakeState, type OpenFile } from './state.js';
import { mayOpen, remove, resolve, symlink } from './sysfs.js';
import type { FdInfo } from './types.js';

/** A new fd, shown in /proc/<pid>/fd as the path it was opened by (resolved, as d_path shows it). */
export function install(s: FakeState, p: string, stat: FileStat, file: OpenFile, shownAs = p): number {
  const fd = s.nextFd++;
  s.fdTable.set(fd, { fd, path: p, stat, file });
  symlink(s, `/proc/${s.pid}/fd/${fd}`, shownAs);
  return fd;
}

export function open(s: FakeState, p: string): number {
  const real = resolve(s, p, true, 'open');
  const node = s.fs.get(real)!;
  if (node.kind === 'dir') throw sysError('EISDIR', 'open', p);
  if (node.kind === 'file') return install(s, p, { mode: S_IFREG | 0o644, rdev: 0, isCharacterDevice: false }, { kind: 'file', node }, real);
  if (node.kind !== 'chr') throw sysError('ENOENT', 'open', p);
  if (!mayOpen(s, node)) throw sysError('EACCES', 'open', p);
  const stat: FileStat = { mode: S_IFCHR | node.mode, rdev: node.rdev, isCharacterDevice: true };
  return install(s, p, stat, openChr(s, node.rdev, p), real);
}

/** What the driver behind a device number does on open. */
function openChr(s: FakeState, rdev: number, p: string): OpenFile {
  if (rdev === RDEV.iommu) return openIommufd(s);
  if (rdev === RDEV.vfioContainer) return openContainer(s);
  const group = [...s.groups.values()].find((g) => makedev(RDEV.groupMajor, g.minor) === rdev);
  if (group) return openGroup(s, group, p);
  const device = [...s.devices.values()].find((d) => d.cdevIndex !== null && d.cdevIndex >= 0 && makedev(RDEV.cdevMajor, d.cdevIndex) === rdev);
  if (device && s.hasIommufd && !device.group?.noiommu) return openCdev(device, p);
  if (rdev === makedev(1, 3) || rdev === makedev(1, 5)) return { kind: 'chr', rdev }; // /dev/null, /dev/zero
  throw sysError('ENXIO', 'open', p);
}

export function close(s: FakeState, fd: number): void {
  const e = s.fdTable.get(fd);
  if (!e) {
    s.badCloses.push(fd);
    throw sysError('EBADF', 'close');
  }
  s.fdTable.delete(fd);
  remove(s, `/proc/${s.pid}/fd/${fd}`);
  release(s, e.file);
}

function release(s: FakeState, file: OpenFile): void {
  switch (file.kind) {
    case 'iommufd':
      releaseIommufd(s, file.ctx);
      break;
    case 'container':
      releaseContainer(s, file.container);
      break;
    case 'group':
      file.fdOpen = false;
      releaseGroupFile(s, file);
      break;
    case 'device':
      // an mmap of one of its regions holds the file (vma->vm_file): released at the last munmap
      if ((file.mmaps ?? 0) > 0) file.fdClosed = true;
      else releaseDeviceFile(s, file);
      break;
    case 'migration':
      releaseMigFile(file);
      break;
    case 'eventfd':
      file.efd.fdOpen = false; // the kernel may still hold its eventfd_ctx (SET_IRQS) and signal it
      break;
    default:
      break;
  }
}

export function fstat(s: FakeState, fd: number): FileStat {
  const e = s.fdTable.get(fd);
  if (!e) throw sysError('EBADF', 'fstat');
  return { ...e.stat };
}

export function describeFd(s: FakeState, fd: number): FdInfo | undefined {
  const e = s.fdTable.get(fd);
  if (!e) return undefined;
  const f = e.file;
  const info: FdInfo = { fd, path: e.path, kind: f.kind };
  if (f.kind === 'device') {
    info.via = f.via;
    info.bound = f.bound;
    info.device = f.device.name;
  }
  if (f.kind === 'group') {
    info.groupId = f.group.id;
    info.inContainer = f.container !== null;
  }
  return info;
}
