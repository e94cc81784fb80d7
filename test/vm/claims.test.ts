// README claims that the unit tests prove against the fake kernel, proven here on real ones: the
// fallbacks under auto that need a node moved or planted, the cdev's st_rdev check and the /dev/char
// lookup, one context per group, exit code 7 (a kernel refusal after bind), `list` with devices, the
// driver command when a probe fails, beforeBind's fd, ownFds, the structured log, and the paths a bind
// opens (traced with strace).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createContext, DeviceBusyError, locate, openDevice } from '../../src/index.js';
import { test } from './case-test.js';
import { CASE, CLI, EDU, hideNode, json, runCli } from './helpers.js';

const BOTH = CASE === 'iommufd-6.12-intel';
const cdevOf = (): { node: string; devnum: { major: number; minor: number } } => {
  const loc = locate(EDU);
  return { node: loc.cdev!.nodes[0]!, devnum: loc.cdev!.devnum! };
};

test('auto: the cdev node missing falls back to legacy; a node at /dev/char/MAJ:MIN is found; a planted node with another number is refused', { skip: !BOTH && 'iommufd-6.12-intel only' }, () => {
  const { node, devnum } = cdevOf();
  const restore = hideNode(node);
  const charLink = `/dev/char/${devnum.major}:${devnum.minor}`;
  try {
    // no node at all: legacy, and why
    {
      using dev = openDevice(EDU);
      assert.equal(dev.route, 'legacy');
      assert.deepEqual([dev.report.fallback?.step, dev.report.fallback?.errno], ['open cdev', 'ENOENT']);
    }
    // udev's /dev/char link: used when the /dev/vfio/devices node is not there
    fs.mkdirSync('/dev/char', { recursive: true });
    fs.symlinkSync(path.relative('/dev/char', `${path.dirname(node)}/.${path.basename(node)}.hidden-by-test`), charLink);
    try {
      using dev = openDevice(EDU);
      assert.equal(dev.route, 'iommufd');
      assert.equal(dev.report.nodes.cdev, charLink);
    } finally {
      fs.unlinkSync(charLink);
    }
    // a planted node with another device's number (/dev/null's) is never trusted
    spawnSync('mknod', [node, 'c', '1', '3']);
    try {
      using dev = openDevice(EDU);
      assert.equal(dev.route, 'legacy');
      assert.equal(dev.report.fallback?.step, 'open cdev');
      assert.match(dev.report.fallback?.reason ?? '', /cdev has no node here/);
    } finally {
      fs.unlinkSync(node);
    }
  } finally {
    restore();
  }
});

test('one context per IOMMU group in a process: a second context is refused as "another context of this process"', { skip: !BOTH && 'iommufd-6.12-intel only' }, () => {
  const a = createContext('legacy');
  const b = createContext('legacy');
  try {
    using first = openDevice(EDU, { context: a });
    assert.equal(first.route, 'legacy');
    assert.throws(() => openDevice(EDU, { context: b }), (e: unknown) => e instanceof DeviceBusyError && /already open in this process/.test(e.message));
    // a second device of the same group in another context: refused before the kernel is asked
    const group = fs.readdirSync(`/sys/bus/pci/devices/${EDU}/iommu_group/devices`);
    assert.deepEqual(group, [EDU], 'edu is alone in its group here');
  } finally {
    a.close();
    b.close();
  }
});

test('exit code 7 on a real kernel: a mapping the kernel refuses after bind (RLIMIT_MEMLOCK) is a KernelError', { skip: !BOTH && 'iommufd-6.12-intel only' }, () => {
  const r = spawnSync('setpriv', ['--bounding-set', '-ipc_lock', '--inh-caps', '-ipc_lock', 'prlimit', '--memlock=65536:65536',
    process.execPath, `${path.dirname(CLI)}/../dist/test/vm/memlock-child.js`, EDU, '--exit-code'], { encoding: 'utf8' });
  assert.match(r.stdout, /RLIMIT_MEMLOCK/);
  assert.equal(r.status, 7, `${r.stdout}${r.stderr}`);
});

test('list: the VFIO devices with their driver, group, cdev and routes, as text and as one JSON document', { skip: !['stock-6.12-intel', 'iommufd-6.12-intel'].includes(CASE) && 'two cases' }, () => {
  const j = runCli(['list', '--json']);
  assert.equal(j.code, 0, j.stderr);
  const doc = json<{ devices: { device: string; bus: string; driver: string; group: number; cdev: string | null; routes: Record<string, boolean>; viable: boolean }[] }>(j);
  const edu = doc.devices.find((d) => d.device === EDU);
  const group = Number(fs.readlinkSync(`/sys/bus/pci/devices/${EDU}/iommu_group`).split('/').pop());
  assert.deepEqual(edu, {
    device: EDU, bus: 'pci', driver: 'vfio-pci', group, noiommu: false,
    cdev: BOTH ? fs.readdirSync(`/sys/bus/pci/devices/${EDU}/vfio-dev`)[0] : null,
    routes: { iommufd: BOTH, legacy: true }, viable: true,
  });
  const bound = fs.readdirSync('/sys/bus/pci/drivers/vfio-pci').filter((d) => /^0000:/.test(d)).sort();
  assert.deepEqual(doc.devices.filter((d) => d.bus === 'pci').map((d) => d.device).sort(), bound, 'every device vfio-pci holds, and only those');
  const text = runCli(['list']);
  assert.match(text.stdout, new RegExp(`^${EDU.replace(/\./g, '\\.')} +vfio-pci +${group} +(vfio\\d+|-) +${BOTH ? 'iommufd,legacy' : 'legacy'}`, 'm'));
});

test('driver --to vfio-pci: a probe that fails although drivers_probe succeeded is reported (no IOMMU, no group)', { skip: CASE !== 'iommufd-6.12-mtty' && 'mtty case only (no IOMMU)' }, () => {
  const r = runCli(['driver', EDU, '--to', 'vfio-pci']);
  assert.equal(r.code, 7, r.stderr);
  assert.match(r.stderr, /vfio-pci did not take 0000:00:10\.0 \(its probe failed\)/);
  assert.equal(fs.existsSync(`/sys/bus/pci/devices/${EDU}/driver`), false, 'edu is left without a driver, as before');
  assert.equal(fs.readFileSync(`/sys/bus/pci/devices/${EDU}/driver_override`, 'utf8').trim(), '(null)', 'the override is cleared again');
});

test('beforeBind receives the node itself (cdev or group) before the bind, on each route; ownFds closes lent fds with the device', { skip: !BOTH && 'iommufd-6.12-intel only' }, () => {
  for (const route of ['iommufd', 'legacy'] as const) {
    let seen: { route: string; target: string } | null = null;
    {
      using dev = openDevice(EDU, { route, beforeBind: (f) => (seen = { route: f.route, target: fs.readlinkSync(`/proc/self/fd/${f.fd}`) }) });
      assert.ok(dev);
    }
    const loc = locate(EDU);
    assert.deepEqual(seen, { route, target: route === 'iommufd' ? loc.cdev!.nodes[0] : loc.group!.node });
  }
  const device = fs.openSync(cdevOf().node, 'r+');
  const iommufd = fs.openSync('/dev/iommu', 'r+');
  const open = (fd: number): boolean => fs.existsSync(`/proc/self/fd/${fd}`);
  {
    using dev = openDevice(EDU, { fds: { device, iommufd }, ownFds: true });
    assert.equal(dev.route, 'iommufd');
    assert.ok(open(device) && open(iommufd));
  }
  assert.deepEqual([open(device), open(iommufd)], [false, false], 'closed with the device');
});

test('-v / --log-level: pino JSON lines on stderr, and stdout stays one JSON document', { skip: !BOTH && 'iommufd-6.12-intel only' }, () => {
  const r = runCli(['bind', EDU, '--json', '--log-level', 'debug']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(json<{ route: string }>(r).route, 'iommufd', 'stdout is the report alone');
  const lines = r.stderr.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { level: number; msg: string; step?: string; device?: string });
  assert.ok(lines.length >= 5, 'a line per step');
  assert.ok(lines.every((l) => typeof l.level === 'number' && typeof l.msg === 'string'), 'every line is pino\'s');
  for (const step of ['open /dev/iommu', 'open cdev', 'VFIO_DEVICE_BIND_IOMMUFD', 'IOMMU_IOAS_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT']) {
    assert.ok(lines.some((l) => l.step === step), `the step ${step} is logged`);
  }
  const v = runCli(['bind', EDU, '-v']);
  assert.equal(v.code, 0);
  assert.ok(v.stderr.split('\n').filter(Boolean).every((l) => JSON.parse(l)), '-v: JSON lines too');
});

test('the paths a bind opens (strace): only /sys, /dev/vfio, /dev/iommu and what node itself loads', { skip: !BOTH && 'iommufd-6.12-intel only' }, () => {
  const trace = '/tmp/vfio-bind-bind.strace';
  const r = spawnSync('strace', ['-f', '-qq', '-e', 'trace=open,openat', '-e', 'signal=none', '-o', trace, process.execPath, CLI, 'bind', EDU, '--json'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const opened = [...fs.readFileSync(trace, 'utf8').matchAll(/openat\([^,]+, "([^"]+)"[^)]*\)\s+=\s+\d+/g)].map((m) => m[1]!);
  const root = path.resolve(path.dirname(CLI), '..');
  // node itself (its binary's libraries, /proc/self for its own bookkeeping, /dev/urandom and the like)
  // and the package's own files are not what the README's claim is about: the device's paths are
  const ofDevices = [...new Set(opened.filter((p) => p.startsWith('/dev/') || p.startsWith('/sys/')))];
  const allowed = /^(\/sys\/|\/dev\/vfio\/|\/dev\/iommu$|\/dev\/char\/|\/dev\/(null|urandom|random|tty|pts\/\d+)$)/;
  assert.deepEqual(ofDevices.filter((p) => !allowed.test(p)), [], 'every device path is under /sys, /dev/vfio, /dev/char or /dev/iommu');
  assert.ok(ofDevices.includes('/dev/iommu') && ofDevices.some((p) => p.startsWith('/dev/vfio/devices/')), 'the iommufd nodes were opened');
  // node's own start-up reads: its libraries, the loader cache, OpenSSL's config
  const node = /^\/(usr\/)?lib|^\/etc\/ld\.so|^\/etc\/ssl\/openssl\.cnf$|^\/usr\/share\/zoneinfo/;
  const others = [...new Set(opened.filter((p) => !p.startsWith('/dev/') && !p.startsWith('/sys/') && !p.startsWith(root) && !p.startsWith('/proc/') &&
    !node.test(p) && !p.startsWith('/root/.cache/vfio-bind/')))];
  assert.deepEqual(others, [], 'nothing else: no /boot, no /etc but node\'s own, no home directory but the code cache');
  // of /proc, only this process's own maps (the addon loader tells glibc from musl by them) and its
  // auxiliary vector (the kernel's page size, read once), and what node reads at start-up for its heap limits
  const proc = [...new Set(opened.filter((p) => p.startsWith('/proc/')).map((p) => p.replace(/^\/proc\/(self|\d+)\//, '/proc/self/')))];
  assert.deepEqual(proc.filter((p) => p !== '/proc/meminfo').sort(), ['/proc/self/auxv', '/proc/self/maps']);
  fs.rmSync(trace, { force: true });
});

test('a group shared by several devices: every device of it must join one context ("another context of this process")', { skip: !BOTH && 'iommufd-6.12-intel only' }, () => {
  // the edu behind the PCIe-to-PCI bridge shares its group with two virtio-rngs: move the whole group
  const devices = fs.readdirSync('/sys/bus/pci/devices');
  const rng = devices.find((d) => fs.readFileSync(`/sys/bus/pci/devices/${d}/device`, 'utf8').trim() === '0x1005');
  assert.ok(rng, 'a virtio-rng behind the bridge');
  const moved = runCli(['driver', rng, '--to', 'vfio-pci', '--group']);
  assert.equal(moved.code, 0, moved.stderr);
  try {
    const members = fs.readdirSync(`/sys/bus/pci/devices/${rng}/iommu_group/devices`);
    const edu = members.find((d) => d !== rng && fs.readFileSync(`/sys/bus/pci/devices/${d}/vendor`, 'utf8').trim() === '0x1234')!;
    const a = createContext('legacy');
    const b = createContext('legacy');
    try {
      using first = openDevice(edu, { context: a });
      assert.equal(first.route, 'legacy');
      assert.throws(() => openDevice(rng, { context: b }), (e: unknown) =>
        e instanceof DeviceBusyError && /is already held by another legacy context of this process/.test(e.message) && e.step === 'claim group');
      using second = openDevice(rng, { context: a }); // the same context: fine, one group fd for both
      assert.equal(second.groupFd, first.groupFd);
    } finally {
      a.close();
      b.close();
    }
  } finally {
    const back = runCli(['driver', rng, '--restore', '--group']);
    assert.equal(back.code, 0, back.stderr);
  }
});

test('the CLI closes the fds it inherited (--device-fd/--iommufd-fd) when it is done with them', { skip: !BOTH && 'iommufd-6.12-intel only' }, () => {
  const trace = '/tmp/vfio-bind-fds.strace';
  // the shell opens the nodes as fds 3 and 4, the CLI binds through them; strace records its closes
  const r = spawnSync('sh', ['-c', `exec 3<>${cdevOf().node} 4<>/dev/iommu; exec strace -f -qq -e trace=close -e signal=none -o ${trace} "$@"`, 'sh',
    process.execPath, CLI, 'bind', EDU, '--device-fd', '3', '--iommufd-fd', '4', '--json'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(json<{ nodes: Record<string, string> }>({ code: r.status, stdout: r.stdout, stderr: r.stderr }).nodes, { iommu: '/dev/iommu', cdev: 'fd 3' });
  const closes = fs.readFileSync(trace, 'utf8');
  for (const fd of [3, 4]) assert.match(closes, new RegExp(`close\\(${fd}\\)\\s+= 0$`, 'm'), `fd ${fd} closed by the CLI`);
  fs.rmSync(trace, { force: true });
});
