// No leaks on real kernels: in one long-lived process, 10,000 binds that fail in every way this test
// bed can make them fail in one boot (EBUSY, EINVAL, ENOENT), then bind/close cycles, and, each in a
// process of their own, binds refused with EACCES (unprivileged) and EPERM (strict virtio-iommu), must
// leave the same fds on VFIO and iommufd nodes, eventfds and VFIO device files, the same mappings of
// VFIO nodes, and the same live mappings and eventfd watches in the addon, as after a warm-up.
//
// Time: under TCG a failed bind costs ~1-3 ms and a bind/close cycle ~2 ms on an mdev, more on edu
// behind an emulated IOMMU, and all.ts gives all of a case's tests 600 s together. The big loops run
// on the mtty mdev (both routes, no IOMMU) and on edu behind intel-iommu (both routes, a real DMA
// domain, BAR0 mmap, the request channel). Edu on virtio-iommu, EACCES and EPERM get shorter loops.
import type { TestContext } from 'node:test';
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { locate, openDevice, type RoutePolicy } from '../../src/index.js';
import { CASE, chownNodes, EDU, errorSignature, hideNode, NOBODY, WorkerProcess } from './helpers.js';
import type { Counts } from './counts.js';

const FAILED_BINDS = 10_000;
const CYCLES = 1_000;
const WARM_UP = 10;
const BIND = 'VFIO_DEVICE_BIND_IOMMUFD';
const MTTY_UUID = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001'; // testbed/matrix.sh's mtty case creates it

const sig = (cls: string, exitCode: number, route: string, step: string, errno: string | null, attempts: [string, string | null][] = [[step, errno]]): string =>
  errorSignature({ class: cls, kind: null, exitCode, route, step, errno, attempts, message: '' });

interface Kind {
  name: string;
  policy: RoutePolicy;
  /** what every attempt must throw, as errorSignature prints it */
  expect: string;
  /** arranges the failure; returns what undoes it */
  setup: () => () => void;
}

/** The device's nodes, from sysfs (nothing opened). */
function nodesOf(device: string): { group: string; cdev: string } {
  const loc = locate(device);
  return { group: loc.group!.node, cdev: loc.cdev!.nodes[0]! };
}

/** Holds the device in this test process: another process than the worker, as a real owner would be. */
const holdIn = (device: string, route: 'iommufd' | 'legacy') => (): (() => void) => {
  const d = openDevice(device, { route });
  return () => d.close();
};
const nothing = () => (): void => {};

async function runKind(w: WorkerProcess, device: string, k: Kind, n: number): Promise<{ tally: Record<string, number>; ms: number }> {
  const undo = k.setup();
  try {
    return await w.request({ cmd: 'fail', device, policy: k.policy, n });
  } finally {
    undo();
  }
}

const countsOf = async (w: WorkerProcess): Promise<Counts> => (await w.request<{ counts: Counts }>({ cmd: 'counts' })).counts;

/** n failures of each kind, the counts compared around each kind and overall. */
async function failureLoops(w: WorkerProcess, device: string, kinds: Kind[], n: number, log: (s: string) => void): Promise<number> {
  const start = await countsOf(w);
  let total = 0;
  for (const k of kinds) {
    const before = await countsOf(w);
    const r = await runKind(w, device, k, n);
    assert.deepEqual(r.tally, { [k.expect]: n }, `${k.name}: every attempt fails the same way`);
    assert.deepEqual(await countsOf(w), before, `${k.name}: ${n} failed binds leave nothing behind`);
    total += n;
    log(`${k.name}: ${n} failed binds, ${(r.ms / n).toFixed(1)} ms each`);
  }
  assert.deepEqual(await countsOf(w), start, 'the counts after every loop are those before');
  return total;
}

interface CycleResult {
  ms: number;
  full: number;
  during: Counts | null;
  routes: Record<string, number>;
}

/** The kinds of failure one boot can produce for a device with both routes, without privilege games. */
function rootKinds(device: string): Kind[] {
  const { group, cdev } = nodesOf(device);
  return [
    { name: 'EBUSY: group held, iommufd bind', policy: 'iommufd', setup: holdIn(device, 'legacy'),
      expect: sig('DeviceBusyError', 4, 'iommufd', BIND, 'EBUSY') },
    { name: 'EBUSY: group held, group open', policy: 'legacy', setup: holdIn(device, 'legacy'),
      expect: sig('DeviceBusyError', 4, 'legacy', 'open group', 'EBUSY') },
    { name: 'EINVAL: cdev bound elsewhere, iommufd bind', policy: 'iommufd', setup: holdIn(device, 'iommufd'),
      expect: sig('DeviceBusyError', 4, 'iommufd', BIND, 'EINVAL') },
    { name: 'EINVAL then EBUSY: cdev bound elsewhere, auto', policy: 'auto', setup: holdIn(device, 'iommufd'),
      expect: sig('DeviceBusyError', 4, 'legacy', 'open group', 'EBUSY', [[BIND, 'EINVAL'], ['open group', 'EBUSY']]) },
    { name: 'ENOENT: /dev/iommu hidden', policy: 'iommufd', setup: () => hideNode('/dev/iommu'),
      expect: sig('NoRouteError', 6, 'iommufd', 'open /dev/iommu', 'ENOENT') },
    { name: 'ENOENT: cdev node hidden (after /dev/iommu opened)', policy: 'iommufd', setup: () => hideNode(cdev),
      expect: sig('NoRouteError', 6, 'iommufd', 'open cdev', 'ENOENT') },
    { name: 'ENOENT: group node hidden (after the container opened)', policy: 'legacy', setup: () => hideNode(group),
      expect: sig('DeviceNotFoundError', 3, 'legacy', 'open group', 'ENOENT') },
  ];
}

/**
 * The long loops on one device: FAILED_BINDS binds failing in every way rootKinds makes them fail, then
 * CYCLES bind/close cycles alternating the routes, every tenth with MSI on an eventfd and a DMA page
 * mapped (and BAR0 mmapped where it can be). `during` is what a full cycle adds to the counts.
 */
async function longLoops(t: TestContext, device: string, during: { mappings: number; watches: number; eventfds: number; why: string }): Promise<void> {
  const kinds = rootKinds(device);
  const w = await WorkerProcess.start('leak-worker.js', { name: `leak loops (${device})` });
  try {
    // Warm-up: a few of everything, so that the baseline holds whatever the first calls create for good.
    for (const k of kinds) await runKind(w, device, k, WARM_UP);
    await w.request({ cmd: 'cycle', device, policies: ['iommufd', 'legacy'], n: 4, fullEvery: 2 });
    const baseline = await countsOf(w);

    const total = await failureLoops(w, device, kinds, Math.ceil(FAILED_BINDS / kinds.length), (s) => t.diagnostic(s));
    assert.ok(total >= FAILED_BINDS);

    const r = await w.request<CycleResult>({ cmd: 'cycle', device, policies: ['iommufd', 'legacy'], n: CYCLES, fullEvery: 10 });
    assert.deepEqual(r.routes, { iommufd: CYCLES / 2, legacy: CYCLES / 2 });
    // what is counted is real: inside a full cycle the DMA buffer, the watches and the eventfds show
    const eventfds = (c: Counts): number => c.fds['anon_inode:[eventfd]'] ?? 0;
    assert.equal(r.during!.live.mappings, baseline.live.mappings + during.mappings, `live mappings in a full cycle: ${during.why}`);
    assert.equal(r.during!.live.watches, baseline.live.watches + during.watches, `watches in a full cycle: ${during.why}`);
    assert.equal(eventfds(r.during!), eventfds(baseline) + during.eventfds, `eventfds in /proc/self/fd in a full cycle: ${during.why}`);
    assert.deepEqual(await countsOf(w), baseline, `${total} failed binds and ${CYCLES} cycles leave the counts of the warm-up`);
    assert.deepEqual(baseline.live.finalized, { mappings: 0, watches: 0 }, 'nothing was left to the garbage collector');
    t.diagnostic(`${CYCLES} cycles (${r.full} full), ${(r.ms / CYCLES).toFixed(1)} ms each; counts: ${JSON.stringify(baseline)}`);
  } finally {
    await w.stop();
  }
}

test(`${FAILED_BINDS} failed binds (EBUSY, EINVAL, ENOENT) and ${CYCLES} bind/close cycles on the mtty mdev leave no fd, mapping or watch behind`, { skip: CASE !== 'iommufd-6.12-mtty' && 'mtty case only' }, async (t) => {
  if (!fs.existsSync(`/sys/bus/mdev/devices/${MTTY_UUID}`)) fs.writeFileSync('/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create', MTTY_UUID);
  await longLoops(t, MTTY_UUID, { mappings: 1, watches: 1, eventfds: 1, why: 'the DMA buffer, and the MSI vector (mtty has no request channel, no mmap-able BAR)' });
});

test(`${FAILED_BINDS} failed binds and ${CYCLES} bind/close cycles on edu behind intel-iommu, both routes, leave no fd, mapping or watch behind`, { skip: CASE !== 'iommufd-6.12-intel' && 'iommufd-6.12-intel only' }, async (t) => {
  await longLoops(t, EDU, { mappings: 2, watches: 2, eventfds: 2, why: 'the DMA buffer and BAR0; the MSI vector and the request channel' });
});

test('bind/close cycles with BAR0 mmapped and MSI on, on a PCI device behind an IOMMU, leave nothing behind', { skip: CASE !== 'iommufd-6.12-virtio' && 'virtio-iommu case only' }, async (t) => {
  const w = await WorkerProcess.start('leak-worker.js', { name: 'edu cycles' });
  try {
    await w.request({ cmd: 'cycle', device: EDU, policies: ['iommufd', 'legacy'], n: 4, fullEvery: 1 });
    const baseline = await countsOf(w);
    const r = await w.request<CycleResult>({ cmd: 'cycle', device: EDU, policies: ['iommufd', 'legacy'], n: 30, fullEvery: 3 });
    assert.deepEqual(r.routes, { iommufd: 15, legacy: 15 });
    // the BAR mapping (and the DMA page) are live mappings, and BAR0 shows in /proc/self/maps
    assert.equal(r.during!.live.mappings, baseline.live.mappings + 2);
    assert.equal(r.during!.live.watches, baseline.live.watches + 2, 'the MSI vector\'s watch, and the request channel\'s (REQ) of the open edu');
    assert.ok(r.during!.maps > baseline.maps, 'BAR0 shows in /proc/self/maps');
    assert.deepEqual(await countsOf(w), baseline);
    t.diagnostic(`30 cycles (${r.full} with BAR0, MSI and a DMA page), ${(r.ms / 30).toFixed(1)} ms each`);
  } finally {
    await w.stop();
  }
});

test('EACCES: an unprivileged process failing 300 binds leaves nothing behind', { skip: CASE !== 'iommufd-6.12-virtio' && 'virtio-iommu case only' }, async (t) => {
  const { group, cdev } = nodesOf(EDU);
  const w = await WorkerProcess.start('leak-worker.js', { name: 'unprivileged leak loops', unprivileged: true });
  try {
    const { opens } = await w.request<{ opens: Record<string, string> }>({ cmd: 'open', paths: ['/dev/iommu', cdev, group] });
    assert.deepEqual(opens, { '/dev/iommu': 'EACCES', [cdev]: 'EACCES', [group]: 'EACCES' }, 'the worker runs unprivileged');
    const kinds: Kind[] = [
      { name: 'EACCES: cdev (after /dev/iommu opened)', policy: 'iommufd', setup: () => chownNodes(['/dev/iommu'], NOBODY),
        expect: sig('PermissionDeniedError', 5, 'iommufd', 'open cdev', 'EACCES') },
      { name: 'EACCES: group node (after the container opened)', policy: 'legacy', setup: nothing,
        expect: sig('PermissionDeniedError', 5, 'legacy', 'open group', 'EACCES') },
      { name: 'EACCES: no node of either route, auto', policy: 'auto', setup: nothing,
        expect: sig('PermissionDeniedError', 5, 'iommufd', 'open /dev/iommu', 'EACCES') },
    ];
    for (const k of kinds) await runKind(w, EDU, k, WARM_UP);
    assert.equal(await failureLoops(w, EDU, kinds, 100, (s) => t.diagnostic(s)), 300);
  } finally {
    await w.stop();
  }
});

test('EPERM: 400 binds refused for want of interrupt isolation leave nothing behind', { skip: CASE !== 'iommufd-6.12-virtio-strict' && 'strict virtio-iommu only' }, async (t) => {
  const w = await WorkerProcess.start('leak-worker.js', { name: 'EPERM loops' });
  try {
    const kinds: Kind[] = [
      { name: 'EPERM: VFIO_DEVICE_BIND_IOMMUFD', policy: 'iommufd', setup: nothing, expect: sig('NoRouteError', 6, 'iommufd', BIND, 'EPERM') },
      { name: 'EPERM: VFIO_SET_IOMMU (the group already in the container)', policy: 'legacy', setup: nothing, expect: sig('NoRouteError', 6, 'legacy', 'VFIO_SET_IOMMU', 'EPERM') },
    ];
    for (const k of kinds) await runKind(w, EDU, k, WARM_UP);
    assert.equal(await failureLoops(w, EDU, kinds, 200, (s) => t.diagnostic(s)), 400);
  } finally {
    await w.stop();
  }
});
