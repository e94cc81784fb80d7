// The filesystem: sysfs, /dev, /proc (and /boot, /run) as one in-memory tree of directories, files,
// sysfs/procfs attributes (a read and a write that run the kernel's show/store), symlinks and
// character device nodes, as the real kernels of the test bed lay them out
// (FINDINGS.md sections 4-6, see ../fake-kernel.ts). What is in the tree is built by
// host.ts, drivers.ts and proc.ts; the Kernel's path calls (stat, readlink, readText, writeText...)
// are answered here.
import path from 'node:path';
import type { FileStat } from '../../src/sys/kernel.js';
import { sysError } from './errno.js';
import { S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, type FakeState, type FileNode, type FsNode } from './state.js';

export const fileText = (node: FileNode): string => (node.read ? node.read() : node.data ? node.data.toString('latin1') : node.text);

/** sysfs and procfs: no file can be created, and only attributes with a store can be written */
const isKernfs = (real: string): boolean => /^\/(sys|proc)(\/|$)/.test(real);

// ---------------------------------------------------------------------------------------------------
// the tree

export function resolve(s: FakeState, p: string, followLast: boolean, syscall: string): string {
  if (!p.startsWith('/')) throw sysError('ENOENT', syscall, p);
  let hops = 0;
  let parts = p.split('/').filter((x) => x !== '' && x !== '.');
  let cur = '/';
  while (parts.length > 0) {
    const part = parts.shift()!;
    if (part === '..') {
      cur = path.posix.dirname(cur);
      continue;
    }
    const dir = s.fs.get(cur);
    if (dir?.kind !== 'dir') throw sysError('ENOTDIR', syscall, p);
    const next = cur === '/' ? `/${part}` : `${cur}/${part}`;
    const node = s.fs.get(next);
    if (!node) throw sysError('ENOENT', syscall, p);
    if (node.kind === 'link' && (parts.length > 0 || followLast)) {
      if (++hops > 40) throw sysError('ELOOP', syscall, p);
      const target = node.target.split('/').filter((x) => x !== '' && x !== '.');
      if (node.target.startsWith('/')) cur = '/';
      parts = [...target, ...parts];
      continue;
    }
    cur = next;
  }
  return cur;
}

/** the node at p, following symlinks (it must exist: resolve throws otherwise) */
const nodeAt = (s: FakeState, p: string, followLast: boolean, syscall: string): FsNode => s.fs.get(resolve(s, p, followLast, syscall))!;

export function put(s: FakeState, p: string, node: FsNode): void {
  const parent = path.posix.dirname(p);
  if (parent !== p) mkdir(s, parent);
  const dir = s.fs.get(parent);
  if (dir?.kind !== 'dir') throw new Error(`fake: ${parent} is not a directory`);
  dir.children.add(path.posix.basename(p));
  s.fs.set(p, node);
}

export function mkdir(s: FakeState, p: string): void {
  const node = s.fs.get(p);
  if (node?.kind === 'dir') return;
  if (node) throw new Error(`fake: ${p} exists`);
  put(s, p, { kind: 'dir', children: new Set() });
}

export function writeFile(s: FakeState, p: string, text: string): void {
  put(s, p, { kind: 'file', text });
}

/** A sysfs or procfs attribute: reads run `read`, writes run `write` (none: read-only, EACCES). */
export function attr(s: FakeState, p: string, read: () => string, write?: (text: string, path: string) => void): void {
  put(s, p, { kind: 'file', text: '', read, ...(write ? { write } : {}) });
}

export function symlink(s: FakeState, p: string, target: string): void {
  put(s, p, { kind: 'link', target });
}

/** a symlink at p to `to`, relative as sysfs makes them */
export function link(s: FakeState, p: string, to: string): void {
  symlink(s, p, path.posix.relative(path.posix.dirname(p), to));
}

export function mknod(s: FakeState, p: string, rdev: number, mode: number): void {
  put(s, p, { kind: 'chr', rdev, mode, accessible: true });
}

export function mknodIfAbsent(s: FakeState, p: string, rdev: number, mode: number): void {
  if (!s.fs.has(p)) mknod(s, p, rdev, mode);
}

export function remove(s: FakeState, p: string): void {
  const node = s.fs.get(p);
  if (!node) return;
  if (node.kind === 'dir') for (const child of [...node.children]) remove(s, `${p}/${child}`);
  s.fs.delete(p);
  const parent = s.fs.get(path.posix.dirname(p));
  if (parent?.kind === 'dir') parent.children.delete(path.posix.basename(p));
}

// ---------------------------------------------------------------------------------------------------
// changed by a test

/** Removes a node (and what is under it): a hidden /dev/iommu, a missing attribute... */
export function hide(s: FakeState, p: string): void {
  if (!s.fs.has(p)) throw new Error(`fake: nothing to hide at ${p}`);
  remove(s, p);
}

/** This process may not open the node (access(2) fails, open answers EACCES). */
export function inaccessible(s: FakeState, p: string, inaccessible: boolean): void {
  const node = s.fs.get(resolve(s, p, true, 'access'));
  if (node?.kind !== 'chr') throw new Error(`fake: ${p} is not a device node`);
  node.accessible = !inaccessible;
}

/** A character device node: a stale or planted one when its number belongs to something else. */
export function plantNode(s: FakeState, p: string, rdev: number, mode: number): void {
  remove(s, p);
  mknod(s, p, rdev, mode);
}

// ---------------------------------------------------------------------------------------------------
// the Kernel's path calls (FakeKernel logs them and runs the failure rules)

export function statOf(node: FsNode): FileStat {
  switch (node.kind) {
    case 'dir': return { mode: S_IFDIR | 0o755, rdev: 0, isCharacterDevice: false };
    case 'file': return { mode: S_IFREG | 0o444, rdev: 0, isCharacterDevice: false };
    case 'link': return { mode: S_IFLNK | 0o777, rdev: 0, isCharacterDevice: false };
    case 'chr': return { mode: S_IFCHR | node.mode, rdev: node.rdev, isCharacterDevice: true };
  }
}

export function stat(s: FakeState, p: string): FileStat {
  return statOf(nodeAt(s, p, true, 'stat'));
}

export function readlink(s: FakeState, p: string): string {
  const node = nodeAt(s, p, false, 'readlink');
  if (node.kind !== 'link') throw sysError('EINVAL', 'readlink', p);
  return node.target;
}

export function realpath(s: FakeState, p: string): string {
  return resolve(s, p, true, 'lstat');
}

export function readdir(s: FakeState, p: string): string[] {
  const node = nodeAt(s, p, true, 'scandir');
  if (node.kind !== 'dir') throw sysError('ENOTDIR', 'scandir', p);
  return [...node.children];
}

export function readText(s: FakeState, p: string): string {
  const node = nodeAt(s, p, true, 'open');
  if (node.kind === 'dir') throw sysError('EISDIR', 'read', p);
  if (node.kind !== 'file') throw sysError('EINVAL', 'read', p);
  return fileText(node).replace(/\n$/, '');
}

export function exists(s: FakeState, p: string): boolean {
  try {
    resolve(s, p, true, 'stat');
    return true;
  } catch {
    return false;
  }
}

/** a file's bytes: its data (/proc/config.gz), or its text */
export function readBytes(s: FakeState, p: string): Buffer {
  const node = nodeAt(s, p, true, 'open');
  if (node.kind === 'dir') throw sysError('EISDIR', 'read', p);
  if (node.kind !== 'file') throw sysError('EINVAL', 'read', p);
  return node.data ? Buffer.from(node.data) : Buffer.from(fileText(node));
}

// A plain file is created or replaced; a sysfs or procfs attribute runs its store (driver_override,
// unbind, drivers_probe...). Files cannot be created in sysfs or procfs, and their read-only
// attributes refuse writes (kernfs_fop_open: EACCES). Without root, nothing under /sys, /proc, /run
// or /boot may be written.

export function writeText(s: FakeState, p: string, text: string): void {
  const parent = resolve(s, path.posix.dirname(p), true, 'open');
  if (s.fs.get(parent)?.kind !== 'dir') throw sysError('ENOTDIR', 'open', p);
  const real = parent === '/' ? `/${path.posix.basename(p)}` : `${parent}/${path.posix.basename(p)}`;
  const node = s.fs.get(real);
  if (node?.kind === 'dir') throw sysError('EISDIR', 'open', p);
  checkWritable(s, real, p, 'open');
  if (node?.kind === 'file' && node.write) node.write(text, p);
  else if (isKernfs(real)) throw sysError('EACCES', 'open', p);
  else if (node?.kind === 'file') {
    node.text = text;
    delete node.data;
  } else if (node === undefined) writeFile(s, real, text);
  else throw sysError('EINVAL', 'write', p);
}

export function unlink(s: FakeState, p: string): void {
  const parent = resolve(s, path.posix.dirname(p), true, 'unlink');
  const real = parent === '/' ? `/${path.posix.basename(p)}` : `${parent}/${path.posix.basename(p)}`;
  const node = s.fs.get(real);
  if (!node) throw sysError('ENOENT', 'unlink', p);
  if (node.kind === 'dir') throw sysError('EISDIR', 'unlink', p);
  checkWritable(s, real, p, 'unlink');
  if (isKernfs(real)) throw sysError('EPERM', 'unlink', p);
  remove(s, real);
}

export function mkdirp(s: FakeState, p: string): void {
  let cur = '';
  for (const part of p.split('/').filter(Boolean)) {
    cur = `${cur}/${part}`;
    const node = s.fs.get(cur);
    if (node && node.kind !== 'dir' && node.kind !== 'link') throw sysError('ENOTDIR', 'mkdir', p);
    if (!node) {
      checkWritable(s, cur, p, 'mkdir');
      if (isKernfs(cur)) throw sysError('EACCES', 'mkdir', p);
      mkdir(s, cur);
    }
  }
}

export function accessible(s: FakeState, p: string): boolean {
  try {
    const node = nodeAt(s, p, true, 'access');
    return node.kind !== 'chr' || mayOpen(s, node);
  } catch {
    return false;
  }
}

/** Without root, only world read-write device nodes (/dev/vfio/vfio) can be opened. */
export function mayOpen(s: FakeState, node: Extract<FsNode, { kind: 'chr' }>): boolean {
  return node.accessible && (s.root || (node.mode & 0o006) === 0o006);
}

/** Root owns /sys, /proc, /run and /boot: EACCES for anyone else. */
function checkWritable(s: FakeState, real: string, p: string, syscall: string): void {
  if (!s.root && /^\/(sys|proc|run|boot)(\/|$)/.test(real)) throw sysError('EACCES', syscall, p);
}
