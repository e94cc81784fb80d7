// Issue 14 on real kernels: when the host wants a held device back. An admin's unbind while the CLI
// or the library holds edu (the write must return, the holder must let go), a QMP device_del of an edu
// behind a root port while a process maps DMA in a loop with MSI armed, and the error interrupt on a
// PCIe e1000e. Without a request channel the kernel waits for the holder forever.
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { CASE, CLI, EDU, EDU2, hostCommand, json, qmpEvents, runCli, until, WorkerProcess } from './helpers.js';
import type { Counts } from './counts.js';

const UNBIND_CASES = ['stock-6.1-intel', 'stock-6.12-intel', 'iommufd-6.12-intel'];
const routesHere = CASE === 'iommufd-6.12-intel' ? ['iommufd', 'legacy'] : ['legacy'];
const GOAL_MS = 1000;

const driverOf = (bdf: string): string | null => {
  try {
    return fs.readlinkSync(`/sys/bus/pci/devices/${bdf}/driver`).split('/').pop()!;
  } catch {
    return null;
  }
};

/** Gives the device back to vfio-pci (its driver_override still says vfio-pci) and waits for its group node. */
async function rebind(bdf: string): Promise<void> {
  fs.writeFileSync(`/sys/bus/pci/devices/${bdf}/driver_override`, 'vfio-pci');
  // a device just hot-added may not probe at once (pciehp still enabling its slot): a few tries
  for (let i = 0; i < 20 && driverOf(bdf) !== 'vfio-pci'; i++) {
    fs.writeFileSync('/sys/bus/pci/drivers_probe', bdf);
    if (driverOf(bdf) !== 'vfio-pci') await new Promise((r) => setTimeout(r, 250));
  }
  assert.equal(driverOf(bdf), 'vfio-pci', `${bdf} is back on vfio-pci`);
  const group = fs.readlinkSync(`/sys/bus/pci/devices/${bdf}/iommu_group`).split('/').pop()!;
  await until(`/dev/vfio/${group}`, () => fs.existsSync(`/dev/vfio/${group}`), 10_000);
}

/**
 * An admin's unbind of `bdf`, written by a shell (the write blocks its writer until the device is
 * released: only a watchdog on the holder can end it). Resolves with the write's duration in ms.
 */
function adminUnbind(bdf: string, onWatchdog: () => void): Promise<number> {
  return new Promise((resolve, reject) => {
    const sh = spawn('sh', ['-c', `s=$(date +%s%N); echo ${bdf} > /sys/bus/pci/drivers/vfio-pci/unbind; e=$(date +%s%N); echo $(( (e - s) / 1000000 ))`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    sh.stdout.on('data', (d: Buffer) => (out += d.toString()));
    sh.stderr.on('data', (d: Buffer) => (err += d.toString()));
    // the kernel waits uninterruptibly once it has signalled: end the holder, never the writer
    const watchdog = setTimeout(onWatchdog, 20_000);
    sh.on('exit', (code) => {
      clearTimeout(watchdog);
      if (code === 0 && /^\d+\s*$/.test(out)) resolve(Number(out));
      else reject(new Error(`the unbind write failed (exit ${code}): ${err}`));
    });
  });
}

for (const route of routesHere) {
  test(`admin unbind of edu held by \`vfio-bind bind --hold\` (${route}): the write returns, the holder exits 9`, { skip: !UNBIND_CASES.includes(CASE) && 'the unbind cases only' }, async (t) => {
    const holder = spawn(process.execPath, [CLI, 'bind', EDU, '--route', route, '--hold'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    holder.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => holder.on('exit', (code) => resolve(code)));
    let killed = false;
    try {
      await until('the holder binds', () => stderr.includes('holding'), 60_000);
      const ms = await adminUnbind(EDU, () => {
        killed = true;
        holder.kill('SIGKILL');
      });
      t.diagnostic(`unbind of a held edu (${route}) returned in ${ms} ms (goal < ${GOAL_MS} ms: ${ms < GOAL_MS ? 'met' : 'missed'})`);
      assert.equal(killed, false, 'the write returned without the watchdog killing the holder');
      assert.equal(await exited, 9, `the holder's exit code; its stderr:\n${stderr}`);
      assert.match(stderr, /vfio-bind: the host asked for 0000:00:10\.0 back \(a VFIO device request/);
      assert.equal(driverOf(EDU), null, 'the device is unbound');
    } finally {
      if (holder.exitCode === null) holder.kill('SIGKILL');
      await exited;
      if (driverOf(EDU) === null) await rebind(EDU);
    }
  });
}

/** Every tracked fd and mapping of the worker is as it was before it opened the device. */
function assertBaseline(status: { counts: Counts; baseline: Counts }, what: string): void {
  assert.deepEqual(status.counts, status.baseline, `${what}: fds, mappings and watches back to where they were`);
}

for (const route of routesHere) {
  for (const listen of ['release', 'none'] as const) {
    test(`admin unbind of edu held through the library (${route}), ${listen === 'release' ? 'by a listener that releases it' : 'with no listener (the default release)'}`, { skip: !UNBIND_CASES.includes(CASE) && 'the unbind cases only' }, async (t) => {
      const w = await WorkerProcess.start('request-worker.js', { name: `holder (${route}, ${listen})` });
      try {
        await w.request({ cmd: 'baseline' });
        await w.request({ cmd: 'open', spec: EDU, route, listen });
        const ms = await adminUnbind(EDU, () => w.child.kill('SIGKILL'));
        t.diagnostic(`unbind of edu held by the library (${route}, ${listen}) returned in ${ms} ms`);
        const status = await w.request<{ events: { event: string; count?: number }[]; counts: Counts; baseline: Counts }>({ cmd: 'status' });
        assert.deepEqual(status.events.map((e) => e.event), listen === 'release' ? ['request', 'released'] : ['released']);
        const probe = await w.request<{ closed: boolean; config: string; map: string; contextClosed: boolean }>({ cmd: 'probe', spec: EDU });
        assert.equal(probe.closed, true);
        assert.match(probe.config, /^DeviceReleasedError\(9\): the host asked for 0000:00:10\.0 back/);
        assert.match(probe.map, /^DeviceReleasedError\(9\)/, 'its own context went with it');
        assertBaseline(status, 'after the release');
        assert.equal(driverOf(EDU), null);
      } finally {
        await w.stop();
        if (driverOf(EDU) === null) await rebind(EDU);
      }
    });
  }
}

test('a context shared by two edus survives the release of one of them, for the other', { skip: CASE !== 'iommufd-6.12-intel' && 'iommufd-6.12-intel only' }, async () => {
  const w = await WorkerProcess.start('request-worker.js', { name: 'shared-context holder' });
  try {
    await w.request({ cmd: 'context', route: 'iommufd' });
    await w.request({ cmd: 'open', spec: EDU, shared: true });
    await w.request({ cmd: 'open', spec: EDU2, shared: true });
    await w.request({ cmd: 'dmaLoop', spec: EDU2 });
    await adminUnbind(EDU, () => w.child.kill('SIGKILL'));
    const released = await w.request<{ closed: boolean; config: string; map: string; contextClosed: boolean }>({ cmd: 'probe', spec: EDU });
    assert.equal(released.closed, true);
    const other = await w.request<{ closed: boolean; config: string; map: string; contextClosed: boolean }>({ cmd: 'probe', spec: EDU2 });
    const { closed, config, map, contextClosed } = other;
    assert.deepEqual({ closed, config, map, contextClosed }, { closed: false, config: 'ok', map: 'ok', contextClosed: false }, 'the other edu and the shared context work on');
    const status = await w.request<{ loops: Record<string, { maps: number; errors: Record<string, number> }> }>({ cmd: 'status' });
    assert.deepEqual(status.loops[EDU2]!.errors, {}, 'the other edu\'s DMA loop never failed');
    assert.ok(status.loops[EDU2]!.maps > 0);
  } finally {
    await w.stop();
    if (driverOf(EDU) === null) await rebind(EDU);
  }
});

/** The device behind the root port at 00:16.0, hot-pluggable (matrix.sh's iommufd-6.12-intel case). */
const HOT_PORT = '0000:00:16.0';
const hotDevice = (): string | null => fs.readdirSync(`/sys/bus/pci/devices/${HOT_PORT}`).find((e) => /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(e)) ?? null;

for (const route of ['iommufd', 'legacy'] as const) {
  test(`hot-unplug (QMP device_del) of an edu held through ${route}, mapping DMA in a loop with MSI armed`, { skip: CASE !== 'iommufd-6.12-intel' && 'iommufd-6.12-intel only' }, async (t) => {
    const bdf = hotDevice();
    assert.ok(bdf, `an edu behind ${HOT_PORT}`);
    if (driverOf(bdf) !== 'vfio-pci') await rebind(bdf);
    const w = await WorkerProcess.start('request-worker.js', { name: `hot-unplug holder (${route})` });
    try {
      await w.request({ cmd: 'baseline' });
      await w.request({ cmd: 'open', spec: bdf, route, listen: 'none' });
      await w.request({ cmd: 'msi', spec: bdf });
      await w.request({ cmd: 'dmaLoop', spec: bdf });
      const deletedBefore = qmpEvents().filter((e) => e.event === 'DEVICE_DELETED').length;
      const del = await hostCommand({ execute: 'device_del', arguments: { id: 'hotedu' } });
      assert.deepEqual(del, { return: {} }, 'QEMU accepted device_del');
      const ms = await until(`${bdf} leaves /sys/bus/pci/devices`, () => !fs.existsSync(`/sys/bus/pci/devices/${bdf}`), 60_000);
      t.diagnostic(`hot-unplug of a held edu (${route}) completed ${ms} ms after device_del (pciehp waits 5 s for the button)`);
      await until('QEMU reports DEVICE_DELETED', () => qmpEvents().filter((e) => e.event === 'DEVICE_DELETED').length > deletedBefore, 10_000);
      const status = await (async () => {
        for (;;) {
          const s = await w.request<{ events: { event: string }[]; loops: Record<string, { maps: number; errors: Record<string, number>; stop: boolean }>; counts: Counts; baseline: Counts }>({ cmd: 'status' });
          if (Object.values(s.loops).every((l) => l.stop)) return s;
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      const loop = Object.values(status.loops)[0]!;
      assert.ok(loop.maps > 0, 'the loop mapped while the device was there');
      assert.deepEqual(Object.keys(loop.errors), ['DeviceReleasedError(9)'], 'after the release, every map is a typed error');
      const events = status.events.map((e) => e.event);
      assert.ok(events.includes('released'), `released: ${events.join(', ')}`);
      assert.ok(events.includes('msi wait: DeviceReleasedError(9)'), `the MSI waiter was told why: ${events.join(', ')}`);
      assertBaseline(status, 'after the unplug');
    } finally {
      await w.stop();
      // put it back for the next route (and the rest of the suite)
      if (!hotDevice()) {
        const add = await hostCommand({ execute: 'device_add', arguments: { driver: 'edu', bus: 'rp2', id: 'hotedu' } });
        assert.deepEqual(add, { return: {} }, 'QEMU accepted device_add');
        await until('the edu comes back', () => hotDevice() !== null, 60_000);
        await rebind(hotDevice()!);
      }
    }
  });
}

/** The PCIe e1000e behind the root port at 00:17.0, which the guest boots on its own driver. */
const AER_PORT = '0000:00:17.0';

test('the error interrupt (ERR) on a PCIe e1000e: armed (a loopback trigger reaches device-error), listed by info; edu has none', { skip: CASE !== 'iommufd-6.12-intel' && 'iommufd-6.12-intel only' }, async (t) => {
  const nic = fs.readdirSync(`/sys/bus/pci/devices/${AER_PORT}`).find((e) => /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(e));
  assert.ok(nic, `an e1000e behind ${AER_PORT}`);
  const moved = runCli(['driver', nic, '--to', 'vfio-pci']);
  assert.equal(moved.code, 0, moved.stderr);
  try {
    const info = json<{ irqs: { name: string; count: number }[] }>(runCli(['info', nic, '--json']));
    assert.equal(info.irqs.find((i) => i.name === 'ERR')?.count, 1, 'a PCIe device has one ERR vector');
    const edu = json<{ irqs: { name: string; count: number }[] }>(runCli(['info', EDU, '--json']));
    assert.equal(edu.irqs.find((i) => i.name === 'ERR')?.count, 0, 'edu (not PCIe) has none');
    const w = await WorkerProcess.start('request-worker.js', { name: 'AER holder' });
    try {
      const opened = await w.request<{ channels: { request: boolean; error: boolean } }>({ cmd: 'open', spec: nic });
      assert.deepEqual(opened.channels, { request: true, error: true });
      // vfio-pci's loopback (DATA_NONE with count 1 signals the ERR eventfd): proves the eventfd is armed
      await w.request({ cmd: 'loopbackErr', spec: nic });
      /** whether n device-error events arrived within ms */
      const seen = async (n: number, ms: number): Promise<boolean> => {
        for (const deadline = Date.now() + ms; Date.now() < deadline; await new Promise((r) => setTimeout(r, 100))) {
          const s = await w.request<{ events: { event: string; count?: number }[] }>({ cmd: 'status' });
          if (s.events.filter((e) => e.event === 'device-error').length >= n) return true;
        }
        return false;
      };
      assert.equal(await seen(1, 10_000), true, 'the loopback ERR trigger reached the device-error event');
      // a real one: QEMU's HMP injects an uncorrectable, non-fatal error into the e1000e
      const inject = await hostCommand({ execute: 'human-monitor-command', arguments: { 'command-line': 'pcie_aer_inject_error nic-aer POISON_TLP' } });
      const delivered = await seen(2, 10_000);
      const dmesg = spawnSync('dmesg', { encoding: 'utf8' }).stdout.split('\n').filter((l) => /AER|aer|vfio-pci.*error/i.test(l)).slice(-6);
      t.diagnostic(`pcie_aer_inject_error: QEMU answered ${JSON.stringify(inject)}; the guest's vfio-pci ${delivered ? 'signalled ERR: the device-error event arrived' : 'did not signal ERR within 10 s'}; dmesg: ${dmesg.join(' | ') || '(nothing about AER)'}`);
    } finally {
      await w.stop();
    }
  } finally {
    const back = runCli(['driver', nic, '--restore']);
    assert.equal(back.code, 0, back.stderr);
  }
});

test('mtty (an mdev) has no request or error channel: the library says so', { skip: CASE !== 'iommufd-6.12-mtty' && 'mtty case only' }, async () => {
  const uuid = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1004';
  const create = '/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create';
  if (!fs.existsSync(`/sys/bus/mdev/devices/${uuid}`)) fs.writeFileSync(create, uuid);
  const w = await WorkerProcess.start('request-worker.js', { name: 'mtty holder' });
  try {
    const opened = await w.request<{ channels: { request: boolean; error: boolean } }>({ cmd: 'open', spec: uuid });
    assert.deepEqual(opened.channels, { request: false, error: false });
  } finally {
    await w.stop();
  }
  const info = json<{ irqs: { name: string; count: number }[] }>(runCli(['info', uuid, '--json']));
  assert.deepEqual(info.irqs.filter((i) => i.count > 0).map((i) => i.name), ['INTX', 'MSI'], 'no REQ, no ERR');
  const doctor = json<{ checks: { id: string; status: string; summary: string }[] }>(runCli(['doctor', uuid, '--json']));
  const release = doctor.checks.find((c) => c.id === 'release');
  assert.equal(release?.status, 'warn');
  assert.match(release?.summary ?? '', /no request channel: removing it while a process holds it blocks until that process exits/);
});
