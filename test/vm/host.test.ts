// Issue 6 on real kernels: moving drivers (and back), doctor's diagnosis on each kind of host, and
// smoke's verdict for CI.
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { CASE, CLI, EDU, holdDevice, json, ROOT, runCli, unprivilegedRoot } from './helpers.js';
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

const read = (p: string): string | null => {
  try {
    return fs.readFileSync(p, 'utf8').trim();
  } catch {
    return null;
  }
};
const list = (p: string): string[] => {
  try {
    return fs.readdirSync(p).sort();
  } catch {
    return [];
  }
};

/** What doctor should say of edu in this guest, worked out here from the kernel's own files. */
function expectedDoctor(): { statuses: Record<string, string>; exitCode: number; route: string | null } {
  const iommus = list('/sys/class/iommu');
  const noiommu = read('/sys/module/vfio/parameters/enable_unsafe_noiommu_mode') === 'Y';
  // MSIs isolated: x86 interrupt remapping, or an arm64 GICv3 ITS (in the device tree)
  const dt = '/sys/firmware/devicetree/base';
  const its = list(dt).filter((n) => n.startsWith('intc')).some((i) => list(`${dt}/${i}`).some((n) => (read(`${dt}/${i}/${n}/compatible`) ?? '').includes('arm,gic-v3-its')));
  const remapped = its || /\bIR-(PCI-MSI|IO-APIC|PCI-MSIX)/.test(read('/proc/interrupts') ?? '');
  const unsafe = ['vfio_iommu_type1', 'iommufd'].some((m) => read(`/sys/module/${m}/parameters/allow_unsafe_interrupts`) === 'Y');
  const vfioPci = fs.existsSync('/sys/bus/pci/drivers/vfio-pci');
  const driver = driverOf(EDU);
  const group = fs.existsSync(`/sys/bus/pci/devices/${EDU}/iommu_group`);
  const statuses: Record<string, string> = {};
  const fails: [string, number][] = [];
  const set = (id: string, status: string, exit?: number): void => {
    statuses[id] = status;
    if (status === 'fail') fails.push([id, exit!]);
  };
  set('iommu', iommus.length ? 'ok' : noiommu ? 'warn' : 'fail', 6);
  if (iommus.length) set('interrupt-remapping', remapped ? 'ok' : unsafe ? 'warn' : 'fail', 6);
  set('kernel', 'info');
  set('modules', vfioPci ? 'ok' : 'fail', 6);
  set('permissions', 'ok'); // root
  set('memlock', 'ok'); // root has CAP_IPC_LOCK
  set('driver', driver === 'vfio-pci' ? 'ok' : 'fail', 3);
  set('group', group ? 'ok' : 'fail', 6);
  // the route: iommufd where the cdev and /dev/iommu are there, else legacy where the group node is
  const cdev = list(`/sys/bus/pci/devices/${EDU}/vfio-dev`).find((n) => fs.existsSync(`/sys/bus/pci/devices/${EDU}/vfio-dev/${n}/dev`));
  const route = driver !== 'vfio-pci' || !group ? null : cdev && fs.existsSync('/dev/iommu') ? 'iommufd' : 'legacy';
  const epermThere = iommus.length > 0 && !remapped && !unsafe && !noiommu;
  set('route', route && !epermThere ? 'ok' : 'fail', route ? 6 : 3);
  if (driver === 'vfio-pci') set('release', 'ok');
  set('migration', 'info');
  return { statuses, exitCode: fails[0]?.[1] ?? 0, route };
}

test('arm64: the GICv3 ITS isolates MSIs, so both routes bind with every allow_unsafe_interrupts at N, and doctor says why', { skip: !CASE.endsWith('-smmuv3') && 'arm64 cases only' }, () => {
  assert.doesNotMatch(read('/proc/cmdline') ?? '', /allow_unsafe_interrupts/, 'nothing on the kernel command line');
  for (const m of ['vfio_iommu_type1', 'iommufd']) {
    const param = read(`/sys/module/${m}/parameters/allow_unsafe_interrupts`);
    if (param !== null) assert.equal(param, 'N', `${m}.allow_unsafe_interrupts`);
  }
  const routes = fs.existsSync('/dev/iommu') ? ['iommufd', 'legacy'] : ['legacy'];
  for (const route of routes) {
    const bind = runCli(['bind', EDU, '--route', route, '--json']);
    assert.equal(bind.code, 0, `${route}: ${bind.stderr}`);
    assert.equal(json(bind).route, route);
  }
  const doctor = json<DoctorReport>(runCli(['doctor', EDU, '--json']));
  const isolation = check(doctor, 'interrupt-remapping');
  assert.equal(isolation.status, 'ok');
  assert.match(isolation.summary, /MSIs are isolated by the GICv3 ITS/);
  assert.match(isolation.evidence[0]!, /^\/sys\/firmware\/devicetree\/base\/intc@[0-9a-f]+\/its@[0-9a-f]+: a GICv3 ITS$/);
});

test('doctor: each check\'s status and evidence as this guest\'s kernel really has them, and the exit code', () => {
  const r = runCli(['doctor', EDU, '--json']);
  const report = json<DoctorReport>(r);
  const want = expectedDoctor();
  assert.deepEqual(Object.fromEntries(report.checks.map((c) => [c.id, c.status])), want.statuses, 'the checks, in order, with their statuses');
  assert.equal(r.code, want.exitCode, `the exit code is the first failing check's (${CASE})`);
  assert.equal(report.exit_code, want.exitCode);
  assert.equal(report.device?.prediction.route ?? null, want.route);
  // evidence, against the files it came from
  const modules = check(report, 'modules').evidence[0]!;
  for (const m of ['vfio', 'vfio_pci', 'vfio_iommu_type1', 'iommufd']) {
    assert.ok(modules.includes(`${m}: ${fs.existsSync(`/sys/module/${m}`) ? 'loaded' : 'absent'}`), `${m} in "${modules}"`);
  }
  const limits = /Max locked memory\s+(\S+)\s+(\S+)/.exec(read('/proc/self/limits') ?? '')!;
  assert.deepEqual(check(report, 'memlock').evidence, [`Max locked memory: soft ${limits[1]}, hard ${limits[2]}`, 'CAP_IPC_LOCK: yes']);
  assert.deepEqual(check(report, 'driver').evidence, [`${fs.realpathSync(`/sys/bus/pci/devices/${EDU}`)}/driver -> ${driverOf(EDU) ?? '(none)'}`]);
  if (want.statuses.group === 'ok') {
    const g = fs.readlinkSync(`/sys/bus/pci/devices/${EDU}/iommu_group`).split('/').pop()!;
    assert.match(check(report, 'group').summary, new RegExp(`^IOMMU group ${g}( \\(noiommu\\))? is viable$`));
    assert.deepEqual(check(report, 'group').evidence, list(`/sys/kernel/iommu_groups/${g}/devices`).map((d) => `${d}: ${driverOf(d) ?? 'no driver'}`));
  }
  const ir = report.checks.find((c) => c.id === 'interrupt-remapping');
  if (ir) {
    for (const m of ['vfio_iommu_type1', 'iommufd']) {
      const v = read(`/sys/module/${m}/parameters/allow_unsafe_interrupts`);
      if (v !== null) assert.ok(ir.evidence.includes(`${m}.allow_unsafe_interrupts=${v}`), `${m}'s parameter in the evidence`);
    }
    if (ir.status === 'warn') assert.match(ir.summary, /no interrupt remapping; accepted unsafely on the legacy route and iommufd route/);
  }
  // what edu offers a migration: no migration driver (VFIO's debugfs, where the kernel has it), and its IOMMU's dirty bits
  const mig = check(report, 'migration');
  if (driverOf(EDU) === 'vfio-pci' && fs.existsSync(`/sys/kernel/debug/vfio/${EDU}`)) assert.match(mig.summary, /: no VFIO migration/);
  const unit = fs.existsSync(`/sys/bus/pci/devices/${EDU}/iommu`) ? fs.readlinkSync(`/sys/bus/pci/devices/${EDU}/iommu`).split('/').pop()! : null;
  if (unit && fs.existsSync(`/sys/class/iommu/${unit}/intel-iommu/ecap`)) {
    assert.ok(mig.evidence.some((l) => l.startsWith(`VT-d ${unit}: ecap 0x${read(`/sys/class/iommu/${unit}/intel-iommu/ecap`)}: no `)), mig.evidence.join('; '));
    assert.match(mig.summary, /, no IOMMU dirty tracking$/, 'QEMU\'s VT-d has no second-level A/D bits');
  }
  if (CASE.startsWith('iommufd-6.12-virtio')) assert.ok(mig.evidence.includes(`${unit} is a virtio-iommu: no IOMMU dirty tracking`), mig.evidence.join('; '));
  if (want.route === 'legacy') assert.ok(mig.evidence.some((l) => /type1 reports every mapped page dirty/.test(l)));
  const kernel = check(report, 'kernel').summary;
  assert.match(kernel, fs.existsSync('/sys/class/misc/iommu') ? /has iommufd: the iommufd route is available/ : /has no iommufd \(CONFIG_IOMMUFD not set\)/);
  if (CASE === 'iommufd-6.12-hidden-iommu') {
    // iommufd is in the kernel but /dev/iommu is not visible here: bind falls back, and doctor says why
    assert.deepEqual(check(report, 'route').evidence, ['iommufd: open /dev/iommu would answer ENOENT']);
    assert.match(check(report, 'route').summary, /legacy route: the \/dev\/iommu node is not visible here, although the kernel has iommufd/);
  }
  if (CASE === 'iommufd-6.12-noiommu') {
    assert.match(check(report, 'iommu').summary, /no IOMMU: VFIO runs in its unsafe noiommu mode/);
    assert.match(check(report, 'group').summary, /\(noiommu\) is viable/);
    assert.match(check(report, 'route').summary, /legacy route: the device has no VFIO cdev/);
  }
  if (CASE === 'iommufd-6.12-virtio-strict') {
    assert.match(check(report, 'route').summary, /answer EPERM there: no interrupt remapping, and iommufd\.allow_unsafe_interrupts=1 is not set/);
  }
  if (CASE === 'iommufd-6.12-mtty') {
    const human = runCli(['doctor']);
    assert.equal(human.code, 6);
    assert.match(human.stdout, /\[FAIL\] iommu: there is no IOMMU/);
    assert.match(human.stdout, /fix: .*intel_iommu=on/);
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

/** What smoke should report for a PCI device, from its sysfs files (config space, resources). */
function sysfsFacts(bdf: string): { ids: string; regions: number; irqs: number } {
  const dir = `/sys/bus/pci/devices/${bdf}`;
  const config = fs.readFileSync(`${dir}/config`);
  const caps = new Set<number>();
  if (config.readUInt16LE(0x06) & 0x10) {
    for (let at = config[0x34]! & 0xfc, n = 0; at >= 0x40 && n < 48; at = config[at + 1]! & 0xfc, n++) caps.add(config[at]!);
  }
  // BARs and the ROM with a size (resource lines 0-6), and config space
  const sized = fs.readFileSync(`${dir}/resource`, 'utf8').split('\n').slice(0, 7).filter((l) => {
    const [start, end] = l.split(/\s+/).map((x) => BigInt(x));
    return end! > start!;
  }).length;
  // INTx if it has a pin, MSI, MSI-X, ERR on PCIe, and REQ, which vfio-pci always has
  const irqs = (config[0x3d]! !== 0 ? 1 : 0) + (caps.has(0x05) ? 1 : 0) + (caps.has(0x11) ? 1 : 0) + (caps.has(0x10) ? 1 : 0) + 1;
  return { ids: `${config.readUInt16LE(0).toString(16).padStart(4, '0')}:${config.readUInt16LE(2).toString(16).padStart(4, '0')}`, regions: sized + 1, irqs };
}

const SMOKE_ROUTE: Record<string, string> = {
  'stock-6.1-intel': 'legacy', 'stock-6.12-intel': 'legacy', 'iommufd-6.12-intel': 'iommufd', 'iommufd-6.12-virtio': 'iommufd',
  'iommufd-6.12-hidden-iommu': 'legacy', 'iommufd-6.12-noiommu': 'legacy',
  'stock-6.1-smmuv3': 'legacy', 'stock-6.12-smmuv3': 'legacy', 'iommufd-6.12-smmuv3': 'iommufd', 'iommufd-6.12-64k-smmuv3': 'iommufd',
};

test('smoke: the route, the ids, regions and IRQs as sysfs has them, and a DMA page mapped and unmapped; the failures with their reason', async () => {
  if (CASE === 'iommufd-6.12-mtty') {
    const noDriver = runCli(['smoke', EDU, '--json']);
    assert.equal(noDriver.code, 3, 'with no IOMMU, edu has no VFIO driver');
    assert.equal(json<{ results: SmokeResult[] }>(noDriver).results[0]!.error?.kind, 'not-vfio');
    return;
  }
  if (CASE === 'iommufd-6.12-virtio-strict') {
    const strict = runCli(['smoke', EDU, '--json']);
    assert.equal(strict.code, 6);
    assert.match(json<{ results: SmokeResult[] }>(strict).results[0]!.error?.message ?? '', /no interrupt isolation/);
    return;
  }
  const ok = runCli(['smoke', EDU, '--json']);
  assert.equal(ok.code, 0, ok.stdout);
  const r = json<{ results: SmokeResult[] }>(ok).results[0]!;
  const facts = sysfsFacts(EDU);
  assert.deepEqual({ ok: r.ok, route: r.route, ids: r.ids, regions: r.regions, irqs: r.irqs }, { ok: true, route: SMOKE_ROUTE[CASE], ...facts });
  if (CASE === 'iommufd-6.12-noiommu') {
    assert.equal(r.dma, 'skipped (noiommu)');
  } else {
    // mapped for edu's DMA, unmapped again with the kernel's unmapped length checked (smoke fails otherwise);
    // the IOVA lies in a range the kernel gives for it
    assert.match(r.dma ?? '', /^0x[0-9a-f]+$/);
    const iova = BigInt(r.dma!);
    assert.equal(iova % 4096n, 0n);
    // and the kernel's own word for it: smoke's map and unmap ioctls, traced, answered 0
    const { spawnSync } = await import('node:child_process');
    const traced = spawnSync('strace', ['-f', '-qq', '-e', 'trace=ioctl', '-e', 'signal=none', '-X', 'raw', process.execPath, CLI, 'smoke', EDU], { encoding: 'utf8' });
    assert.equal(traced.status, 0, traced.stderr.slice(-2000));
    // IOMMU_IOAS_MAP/UNMAP are 0x3b85/0x3b86, VFIO_IOMMU_MAP_DMA/UNMAP_DMA 0x3b71/0x3b72
    const [map, unmap] = SMOKE_ROUTE[CASE] === 'iommufd' ? ['0x3b85', '0x3b86'] : ['0x3b71', '0x3b72'];
    for (const req of [map, unmap]) assert.match(traced.stderr, new RegExp(`ioctl\\(\\d+, ${req}, 0x[0-9a-f]+\\)\\s+= 0$`, 'm'), `smoke's ${req} succeeded in the kernel`);
    {
      using dev = (await import('../../src/index.js')).openDevice(EDU);
      assert.ok(dev.context.iovaRanges().some((x) => iova >= x.start && iova + 4095n <= x.last), `${r.dma} is in the IOMMU's ranges`);
    }
  }
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
