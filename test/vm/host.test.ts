// Issue 6 on real kernels: moving drivers (and back), doctor's diagnosis on each kind of host, and
// smoke's verdict for CI.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { CASE, EDU, holdDevice, json, ROOT, runCli, unprivilegedRoot } from './helpers.js';
import type { DoctorReport, SmokeResult } from '../../src/index.js';

const pciDevices = (): string[] => fs.readdirSync('/sys/bus/pci/devices');
const idOf = (d: string): string =>
  `${fs.readFileSync(`/sys/bus/pci/devices/${d}/vendor`, 'utf8').trim().slice(2)}:${fs.readFileSync(`/sys/bus/pci/devices/${d}/device`, 'utf8').trim().slice(2)}`;
const driverOf = (d: string): string | null => {
  try {
    return fs.readlinkSync(`/sys/bus/pci/devices/${d}/driver`).split('/').pop()!;
  } catch {
    return null;
  }
};
const check = (r: DoctorReport, id: string) => {
  const c = r.checks.find((x) => x.id === id);
  assert.ok(c, `doctor has a ${id} check`);
  return c;
};

test('e1000e: driver --to vfio-pci, bind, smoke, then --restore brings e1000e back', { skip: CASE !== 'iommufd-6.12-intel' && 'iommufd-6.12-intel only' }, () => {
  const nic = pciDevices().find((d) => idOf(d) === '8086:10d3');
  assert.ok(nic);
  assert.equal(driverOf(nic), 'e1000e', 'the guest booted it on its own driver');
  const moved = runCli(['driver', nic, '--to', 'vfio-pci']);
  assert.equal(moved.code, 0, moved.stderr);
  assert.match(moved.stdout, new RegExp(`${nic.replace(/\./g, '\\.')}: e1000e -> vfio-pci`));
  assert.equal(driverOf(nic), 'vfio-pci');
  assert.ok(fs.existsSync(`/run/vfio-bind/drivers/${nic}.json`), 'the original driver is remembered under /run');
  const bound = json<{ route: string }>(runCli(['bind', nic, '--json']));
  assert.equal(bound.route, 'iommufd');
  const smoke = runCli(['smoke', nic]);
  assert.equal(smoke.code, 0, smoke.stdout + smoke.stderr);
  assert.match(smoke.stdout, new RegExp(`^PASS ${nic.replace(/\./g, '\\.')} route=iommufd ids=8086:10d3`, 'm'));
  const restored = runCli(['driver', nic, '--restore', '--json']);
  assert.equal(restored.code, 0, restored.stderr);
  assert.deepEqual(json<{ changes: unknown[] }>(restored).changes, [{ device: nic, from: 'vfio-pci', to: 'e1000e', changed: true }]);
  assert.equal(driverOf(nic), 'e1000e', 'the driver link says e1000e again');
  assert.match(fs.readFileSync(`/sys/bus/pci/devices/${nic}/driver_override`, 'utf8').trim(), /^(\(null\))?$/, 'driver_override is empty');
  assert.ok(!fs.existsSync(`/run/vfio-bind/drivers/${nic}.json`));
});

test('driver moves a shared group only whole, and leaves a device in use alone', { skip: CASE !== 'iommufd-6.12-intel' && 'iommufd-6.12-intel only' }, async () => {
  const [rng, rng2] = pciDevices().filter((d) => idOf(d) === '1af4:1005');
  assert.ok(rng && rng2, 'two virtio-rngs behind the PCIe-to-PCI bridge');
  const r = runCli(['driver', rng, '--to', 'vfio-pci']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, new RegExp(`also holds ${rng2.replace(/\./g, '\\.')} \\(virtio-pci\\)`));
  assert.match(r.stderr, /--group/);
  assert.equal(driverOf(rng), 'virtio-pci', 'untouched');
  const whole = runCli(['driver', rng, '--to', 'vfio-pci', '--group']);
  assert.equal(whole.code, 0, whole.stderr);
  assert.deepEqual([driverOf(rng), driverOf(rng2)], ['vfio-pci', 'vfio-pci']);
  const back = runCli(['driver', rng, '--restore', '--group']);
  assert.equal(back.code, 0, back.stderr);
  assert.deepEqual([driverOf(rng), driverOf(rng2)], ['virtio-pci', 'virtio-pci']);
  const holder = await holdDevice(EDU, 'auto');
  try {
    const busy = runCli(['driver', EDU, '--restore']);
    assert.equal(busy.code, 4);
    assert.match(busy.stderr, /in use through VFIO by process \d+/);
    assert.equal(driverOf(EDU), 'vfio-pci');
  } finally {
    await holder.stop();
  }
});

test('doctor: which route bind would take, or why none, with exit codes', () => {
  const r = runCli(['doctor', EDU, '--json']);
  const report = json<DoctorReport>(r);
  assert.equal(r.code, report.exit_code);
  if (CASE.startsWith('stock-')) {
    assert.equal(r.code, 0);
    assert.match(check(report, 'kernel').summary, /has no iommufd \(CONFIG_IOMMUFD not set\): the legacy route will be used/);
    assert.match(check(report, 'route').summary, /bind would take the legacy route: this kernel has no iommufd/);
  } else if (CASE === 'iommufd-6.12-intel' || CASE === 'iommufd-6.12-virtio') {
    assert.equal(r.code, 0);
    assert.match(check(report, 'kernel').summary, /has iommufd/);
    assert.match(check(report, 'route').summary, /bind would take the iommufd route/);
    assert.equal(report.assignable, true);
  } else if (CASE === 'iommufd-6.12-mtty') {
    // no emulated IOMMU at all
    assert.equal(r.code, 6);
    const iommu = check(report, 'iommu');
    assert.equal(iommu.status, 'fail');
    assert.match(iommu.summary, /there is no IOMMU/);
    assert.match(iommu.fix ?? '', /intel_iommu=on/);
    const human = runCli(['doctor']);
    assert.equal(human.code, 6);
    assert.match(human.stdout, /\[FAIL\] iommu: there is no IOMMU/);
    assert.match(human.stdout, /fix: .*intel_iommu=on/);
  } else if (CASE === 'iommufd-6.12-virtio-strict') {
    assert.equal(r.code, 6);
    const ir = check(report, 'interrupt-remapping');
    assert.equal(ir.status, 'fail');
    assert.match(ir.summary, /interrupt remapping is missing/);
    assert.match(ir.fix ?? '', /vfio_iommu_type1\.allow_unsafe_interrupts=1/);
    assert.match(ir.fix ?? '', /iommufd\.allow_unsafe_interrupts=1/);
  } else if (CASE === 'iommufd-6.12-noiommu') {
    assert.equal(check(report, 'iommu').status, 'warn');
    assert.match(check(report, 'route').summary, /legacy route/);
  }
});

test('doctor run unprivileged names the nodes it cannot open', { skip: CASE !== 'iommufd-6.12-intel' && 'iommufd-6.12-intel only' }, async () => {
  const { spawnSync } = await import('node:child_process');
  const r = spawnSync('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', '--inh-caps=-all',
    process.execPath, `${unprivilegedRoot()}/bin/vfio-bind.js`, 'doctor', EDU, '--json'], { encoding: 'utf8' });
  const report = json<DoctorReport>({ code: r.status, stdout: r.stdout, stderr: r.stderr });
  const perms = check(report, 'permissions');
  assert.equal(perms.status, 'warn');
  for (const node of ['/dev/iommu', '/dev/vfio/devices/vfio0']) assert.match(perms.summary, new RegExp(node));
  assert.match(perms.fix ?? '', /udev rule/);
  assert.equal(r.status, 5, 'no route this user may open: permission denied');
  assert.match(check(report, 'route').summary, /may open neither/);
});

test('smoke: 0 on a bindable device; non-zero with the reason on a held device or a non-viable group', async () => {
  const ok = runCli(['smoke', EDU, '--json']);
  const results = json<{ results: SmokeResult[] }>(ok).results;
  if (CASE === 'iommufd-6.12-mtty') {
    assert.equal(ok.code, 3, 'with no IOMMU, edu has no VFIO driver');
    return;
  }
  if (CASE === 'iommufd-6.12-virtio-strict') {
    assert.equal(ok.code, 6);
    return;
  }
  assert.equal(ok.code, 0, ok.stdout);
  assert.equal(results[0]!.ok, true);
  assert.match(results[0]!.dma ?? '', CASE.endsWith('noiommu') ? /skipped \(noiommu\)/ : /^0x[0-9a-f]+$/);
  if (CASE !== 'iommufd-6.12-intel') return;
  const holder = await holdDevice(EDU, 'auto');
  try {
    const busy = runCli(['smoke', EDU]);
    assert.equal(busy.code, 4);
    assert.match(busy.stdout, /^FAIL 0000:00:10\.0 busy: .*in use by another process/m);
  } finally {
    await holder.stop();
  }
  const shared = pciDevices().find((d) => idOf(d) === '1234:11e8' && fs.readdirSync(`/sys/bus/pci/devices/${d}/iommu_group/devices`).length > 1);
  assert.ok(shared, 'the edu sharing its group with the virtio-rng');
  const nv = runCli(['smoke', shared]);
  assert.equal(nv.code, 3);
  assert.match(nv.stdout, /group-not-viable: IOMMU group \d+ of .* is not viable: .*virtio-pci/);
});
