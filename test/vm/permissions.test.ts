// Permissions on real kernels, as an unprivileged user with no capabilities: which route the node
// permissions leave open, and errors that name the nodes and what is needed (noiommu: CAP_SYS_RAWIO).
// Then nodes opened by a privileged parent and handed down as fds 3 and 4: an unprivileged child that
// could not open them binds through them (CLI and library); wrong fds are usage errors.
import type { TestContext } from 'node:test';
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { locate } from '../../src/index.js';
import { CASE, chmodNode, chownNodes, EDU, json, NOBODY, runCliUnprivileged, STACK_TRACE, UNPRIVILEGED, unprivilegedRoot } from './helpers.js';

const CONTAINER = '/dev/vfio/vfio';
const IOMMU = '/dev/iommu';
/** the device's group node and cdev, from sysfs */
function nodes(): { group: string; cdev: string } {
  const loc = locate(EDU);
  return { group: loc.group!.node, cdev: loc.cdev?.nodes[0] ?? '' };
}
const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
function noStackTrace(r: { stdout: string; stderr: string }): void {
  assert.doesNotMatch(r.stdout, STACK_TRACE, 'no stack trace on stdout');
  assert.doesNotMatch(r.stderr, STACK_TRACE, 'no stack trace on stderr');
}

interface Report {
  route: string;
  nodes: Record<string, string>;
  fallback: { from: string; step: string; errno: string | null; path?: string; reason: string } | null;
}
interface ErrorJson {
  error: string;
  message: string;
  errno: string | null;
  route: string | null;
  step: string | null;
  hint: string | null;
  exit_code: number;
}

// The node permissions (both routes needed): iommufd-6.12-intel.
const PERMS = CASE !== 'iommufd-6.12-intel' && 'iommufd-6.12-intel only';

test('unprivileged, only the group node accessible: auto falls back to legacy, saying the iommufd nodes were not accessible', { skip: PERMS }, () => {
  const { group } = nodes();
  const restore = chownNodes([group], NOBODY); // /dev/vfio/vfio is world read-write already
  let r;
  try {
    r = runCliUnprivileged(['bind', EDU, '--json']);
  } finally {
    restore();
  }
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const report = json<Report>(r);
  assert.equal(report.route, 'legacy');
  assert.deepEqual(report.nodes, { container: CONTAINER, group });
  assert.deepEqual(report.fallback, { from: 'iommufd', step: 'open /dev/iommu', errno: 'EACCES', path: IOMMU, reason: 'this user may not open /dev/iommu' });
});

test('unprivileged, only the cdev and /dev/iommu accessible: the iommufd route works', { skip: PERMS }, () => {
  const { cdev } = nodes();
  const restore = chownNodes([cdev, IOMMU], NOBODY);
  let r;
  try {
    r = runCliUnprivileged(['bind', EDU, '--json']);
  } finally {
    restore();
  }
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const report = json<Report>(r);
  assert.equal(report.route, 'iommufd');
  assert.equal(report.fallback, null);
  assert.deepEqual(report.nodes, { iommu: IOMMU, cdev });
});

test('unprivileged, no node accessible: exit 5, naming the nodes and the access needed, without a stack trace', { skip: PERMS }, () => {
  const { group, cdev } = nodes();
  // the precondition: every node is root's and closed to others (no earlier test left one to nobody)
  for (const n of [group, cdev, IOMMU]) {
    const st = fs.statSync(n);
    assert.equal(st.uid, 0, `${n} is root's`);
    assert.equal(st.mode & 0o006, 0, `${n} is closed to others`);
  }
  const r = runCliUnprivileged(['bind', EDU]);
  assert.equal(r.code, 5, r.stdout + r.stderr);
  noStackTrace(r);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, new RegExp(`^vfio-bind: this user may open neither the iommufd nodes nor the group node of ${escape(EDU)} \\(/dev/iommu: EACCES; ${escape(group)}: not accessible\\)$`, 'm'));
  assert.match(r.stderr, new RegExp(`^  hint: run as root, or give this user read-write access to /dev/iommu, ${escape(cdev)}, /dev/vfio/vfio, ${escape(group)} \\(a udev rule or chown\\)$`, 'm'));
});

test('noiommu: opening the noiommu group without CAP_SYS_RAWIO answers EPERM, and the error says CAP_SYS_RAWIO', { skip: CASE !== 'iommufd-6.12-noiommu' && 'noiommu only' }, () => {
  const { group } = nodes();
  assert.match(group, /^\/dev\/vfio\/noiommu-\d+$/);
  const restore = chownNodes([group], NOBODY);
  let r;
  try {
    r = runCliUnprivileged(['bind', EDU, '--json']);
  } finally {
    restore();
  }
  assert.equal(r.code, 5, r.stdout + r.stderr);
  noStackTrace(r);
  const e = json<ErrorJson>(r);
  assert.deepEqual([e.error, e.errno, e.route, e.step, e.exit_code], ['permission', 'EPERM', 'legacy', 'open group', 5]);
  assert.match(e.message, new RegExp(`opening the noiommu group ${escape(group)} needs CAP_SYS_RAWIO`));
  assert.match(e.hint ?? '', /run as root/);
});

// Pre-opened fds: the cdev and /dev/iommu on iommufd-6.12-virtio; the group node and the container
// where a container given only the group node runs (iommufd-6.12-hidden-iommu).
const CDEV_FDS = CASE === 'iommufd-6.12-virtio';
const GROUP_FDS = CASE === 'iommufd-6.12-hidden-iommu';

/** Opens nodes as root (this process), runs fn with their fds, closes them. */
function withOpen<T>(paths: string[], fn: (fds: number[]) => T): T {
  const fds: number[] = [];
  try {
    for (const p of paths) fds.push(fs.openSync(p, fs.constants.O_RDWR));
    return fn(fds);
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
}

/** The library in an unprivileged child given the fds as 3 and 4 (dist/test/vm/fds-child.js). */
function libraryChild(mode: 'iommufd' | 'legacy', fds: number[], tryNodes: string[]) {
  const r = spawnSync('setpriv', [...UNPRIVILEGED, process.execPath, path.join(unprivilegedRoot(), 'dist/test/vm/fds-child.js'), mode, EDU, ...tryNodes],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe', ...fds], timeout: 120_000 });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  return json<{
    uid: number;
    opens: Record<string, string>;
    before: { fd: number; target?: string; error?: string }[];
    binds: { route?: string; nodes?: Record<string, string>; error?: { class: string; step: string; errno: string; message: string } }[];
    after: { fd: number; target?: string; error?: string }[];
  }>({ code: r.status, stdout: r.stdout, stderr: r.stderr });
}

/**
 * Nodes opened here as root, handed as fds 3 and 4 to an unprivileged CLI (which binds through them
 * and reports `nodes`), then to an unprivileged library child that shows it could not have opened
 * them itself and leaves them open; `checkBinds` judges the child's binds.
 */
function passedFdsCase(t: TestContext, route: 'iommufd' | 'legacy', paths: [string, string], flags: [string, string],
  reportNodes: Record<string, string>, checkBinds: (binds: unknown[]) => void): void {
  withOpen(paths, (fds) => {
    const r = runCliUnprivileged(['bind', EDU, flags[0], '3', flags[1], '4', '--json'], fds);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const report = json<Report>(r);
    assert.equal(report.route, route);
    assert.equal(report.fallback, null);
    assert.deepEqual(report.nodes, reportNodes);
  });
  withOpen(paths, (fds) => {
    const child = libraryChild(route, fds, paths);
    t.diagnostic(JSON.stringify(child));
    assert.equal(child.uid, NOBODY);
    assert.deepEqual(child.opens, { [paths[0]]: 'EACCES', [paths[1]]: 'EACCES' }, 'the child could not have opened the nodes itself');
    checkBinds(child.binds);
    assert.deepEqual(child.before.map((f) => f.target), paths);
    assert.deepEqual(child.after, child.before, 'the passed fds are still open after close()');
  });
}

test('fds of the cdev and /dev/iommu from a root parent: an unprivileged child that cannot open them binds through iommufd', { skip: !CDEV_FDS && 'iommufd-6.12-virtio only' }, (t) => {
  const { cdev } = nodes();
  const reportNodes = { iommu: IOMMU, cdev: 'fd 3' };
  passedFdsCase(t, 'iommufd', [cdev, IOMMU], ['--device-fd', '--iommufd-fd'], reportNodes, (binds) => {
    assert.deepEqual(binds[0], { route: 'iommufd', nodes: reportNodes });
    // (binds[1], a second bind through the same cdev fd, is not asserted: the kernel has no unbind,
    // so a cdev stays bound to its iommufd while any fd of that open file lives)
  });
});

test('fds of the group node and /dev/vfio/vfio from a root parent: an unprivileged child that cannot open them binds through legacy', { skip: !GROUP_FDS && 'iommufd-6.12-hidden-iommu only' }, (t) => {
  const { group } = nodes();
  // /dev/vfio/vfio is world read-write: closed to others here, so that the child cannot open it either
  const restore = chmodNode(CONTAINER, 0o600);
  try {
    const reportNodes = { container: CONTAINER, group: 'fd 3' };
    passedFdsCase(t, 'legacy', [group, CONTAINER], ['--group-fd', '--container-fd'], reportNodes, (binds) => {
      const bound = { route: 'legacy', nodes: reportNodes };
      assert.deepEqual(binds, [bound, bound], 'bound, closed, and bound again through the same fds');
    });
  } finally {
    restore();
  }
});

test('wrong fds (swapped, or not a VFIO node) are usage errors (exit 2) saying which fd is what', { skip: !CDEV_FDS && !GROUP_FDS && 'where fds are passed' }, () => {
  const { group, cdev } = nodes();
  const devString = (p: string): string => {
    const rdev = fs.statSync(p).rdev;
    return `${(rdev >> 8) & 0xfff}:${(rdev & 0xff) | ((rdev >> 12) & 0xfff00)}`;
  };
  const cases: { open: string[]; args: string[]; message: RegExp }[] = CDEV_FDS
    ? [
      { open: [cdev, IOMMU], args: ['--device-fd', '4', '--iommufd-fd', '3'],
        message: new RegExp(`^vfio-bind: fd 4, given as the device fd, is device ${devString(IOMMU)}, not ${escape(EDU)}'s cdev \\(${devString(cdev)}\\)$`, 'm') },
      { open: ['/dev/null', IOMMU], args: ['--device-fd', '3', '--iommufd-fd', '4'],
        message: new RegExp(`^vfio-bind: fd 3, given as the device fd, is device 1:3, not ${escape(EDU)}'s cdev \\(${devString(cdev)}\\)$`, 'm') },
    ]
    : [
      { open: [group, CONTAINER], args: ['--group-fd', '4', '--container-fd', '3'],
        message: new RegExp(`^vfio-bind: fd 4, given as the group fd, is device ${devString(CONTAINER)}, not ${escape(group)} \\(${devString(group)}\\)$`, 'm') },
      { open: [group, '/dev/null'], args: ['--group-fd', '3', '--container-fd', '4'],
        message: new RegExp(`^vfio-bind: fd 4, given as the container fd, is device 1:3, not /dev/vfio/vfio \\(${devString(CONTAINER)}\\)$`, 'm') },
    ];
  for (const c of cases) {
    withOpen(c.open, (fds) => {
      const r = runCliUnprivileged(['bind', EDU, ...c.args], fds);
      assert.equal(r.code, 2, `${c.args.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, c.message);
      noStackTrace(r);
    });
  }
});
