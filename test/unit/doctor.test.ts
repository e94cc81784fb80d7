// src/host/doctor.ts on fake hosts: one check per line with its evidence and fix, the exit code of the
// first failing check, and the JSON document `doctor --json` prints. Nothing is opened or bound.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { doctor, type Check, type DoctorReport } from '../../src/host/doctor.js';
import { openDevice } from '../../src/index.js';
import { ExitCode, VfioError } from '../../src/errors.js';
import { EDU, FakeKernel, type HostOptions } from '../fake-kernel.js';

const NIC = '0000:00:12.0';

function check(r: DoctorReport, id: string): Check {
  const c = r.checks.find((x) => x.id === id);
  assert.ok(c, `doctor has a ${id} check (has ${r.checks.map((x) => x.id).join(', ')})`);
  return c;
}

/** doctor opens nothing and writes nothing */
function run(k: FakeKernel, spec?: string): DoctorReport {
  const r = doctor(k, spec);
  assert.deepEqual(k.openedPaths(), [], 'doctor opened nothing');
  assert.ok(!k.calls.some((c) => c.call === 'writeText' || c.call === 'ioctl'), 'doctor wrote nothing');
  return r;
}

describe('doctor: the kernel', () => {
  test('a stock kernel (no /sys/class/misc/iommu): iommufd absent, the legacy route will be used', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    const r = run(k, EDU);
    const kernel = check(r, 'kernel');
    assert.equal(kernel.status, 'info');
    assert.match(kernel.summary, /^kernel 6\.1\.0-28-amd64 has no iommufd \(CONFIG_IOMMUFD not set\): the legacy route will be used$/);
    assert.ok(kernel.evidence.includes('/sys/class/misc/iommu is absent'));
    assert.match(kernel.evidence[0]!, /^\/boot\/config-6\.1\.0-28-amd64: .*IOMMUFD=n .*VFIO_DEVICE_CDEV=n/);
    assert.match(check(r, 'route').summary, /^bind would take the legacy route: this kernel has no iommufd/);
    assert.equal(r.exit_code, ExitCode.OK);
    assert.equal(r.assignable, true);
    assert.equal(r.verdict, `${EDU} can be assigned through the legacy route`);
  });

  test('an iommufd kernel: iommufd available, the iommufd route', () => {
    const r = run(FakeKernel.host({ kernel: 'iommufd' }), EDU);
    assert.match(check(r, 'kernel').summary, /has iommufd: the iommufd route is available/);
    assert.ok(check(r, 'kernel').evidence.includes('/sys/class/misc/iommu exists: iommufd is in the kernel'));
    assert.match(check(r, 'route').summary, /^bind would take the iommufd route/);
    assert.equal(r.device?.prediction.route, 'iommufd');
    assert.equal(r.exit_code, 0);
  });

  test('the config from /proc/config.gz when /boot has none; judged from sysfs when neither is readable', () => {
    const gz = run(FakeKernel.host({ kernelConfig: 'proc' }));
    assert.match(check(gz, 'kernel').evidence[0]!, /^\/proc\/config\.gz: VFIO=m VFIO_PCI=m VFIO_CONTAINER=y IOMMUFD=m VFIO_DEVICE_CDEV=y VFIO_NOIOMMU=y$/);
    const none = run(FakeKernel.host({ kernelConfig: 'none' }));
    assert.match(check(none, 'kernel').evidence[0]!, /no kernel config readable/);
  });

  test('without a device: "this host is ready", assignable null, no device', () => {
    const r = run(FakeKernel.host());
    assert.equal(r.verdict, 'this host is ready for VFIO');
    assert.equal(r.assignable, null);
    assert.equal(r.device, null);
    assert.ok(!r.checks.some((c) => ['driver', 'group', 'route'].includes(c.id)));
  });
});

describe('doctor: the IOMMU and interrupt remapping', () => {
  test('no IOMMU at all: fail, exit 6, the fix names intel_iommu=on (and amd_iommu=on)', () => {
    const r = run(FakeKernel.host({ iommu: 'none', devices: [] }));
    const iommu = check(r, 'iommu');
    assert.equal(iommu.status, 'fail');
    assert.match(iommu.summary, /there is no IOMMU/);
    assert.match(iommu.fix ?? '', /intel_iommu=on/);
    assert.match(iommu.fix ?? '', /amd_iommu=on/);
    assert.ok(iommu.evidence.some((e) => e.startsWith('kernel command line: BOOT_IMAGE=')));
    assert.equal(r.exit_code, ExitCode.NO_ROUTE);
    assert.match(r.verdict, /^this host is not ready: there is no IOMMU/);
    assert.ok(!r.checks.some((c) => c.id === 'interrupt-remapping'), 'no IOMMU, no remapping to judge');
  });

  test('noiommu mode: a warning (unsafe), not a failure', () => {
    const r = run(FakeKernel.host({ iommu: 'noiommu' }), EDU);
    assert.equal(check(r, 'iommu').status, 'warn');
    assert.match(check(r, 'iommu').summary, /noiommu mode/);
    assert.match(check(r, 'group').summary, /\(noiommu\) is viable/);
    assert.equal(r.device?.prediction.route, 'legacy');
  });

  test('interrupt remapping (IR- domains in /proc/interrupts): ok', () => {
    const r = run(FakeKernel.host({ iommu: 'intel' }));
    const ir = check(r, 'interrupt-remapping');
    assert.equal(ir.status, 'ok');
    assert.equal(ir.evidence[0], '/proc/interrupts lists IR- (remapped) interrupt domains');
  });

  test('no IR- domains and neither unsafe parameter: fail naming both allow_unsafe_interrupts parameters, exit 6', () => {
    const r = run(FakeKernel.host({ iommu: 'virtio' }), EDU);
    const ir = check(r, 'interrupt-remapping');
    assert.equal(ir.status, 'fail');
    assert.match(ir.summary, /interrupt remapping is missing/);
    assert.match(ir.fix ?? '', /vfio_iommu_type1\.allow_unsafe_interrupts=1/);
    assert.match(ir.fix ?? '', /iommufd\.allow_unsafe_interrupts=1/);
    assert.ok(ir.evidence.includes('iommufd.allow_unsafe_interrupts=N'));
    assert.equal(ir.exitCode, ExitCode.NO_ROUTE);
    assert.equal(r.exit_code, ExitCode.NO_ROUTE);
    assert.equal(r.assignable, false);
    // and bind agrees: the kernel refuses it
    const e = (() => { try { openDevice(EDU, { kernel: FakeKernel.host({ iommu: 'virtio' }) }); } catch (x) { return x; } return null; })();
    assert.ok(e instanceof VfioError && e.exitCode === ExitCode.NO_ROUTE);
  });

  test('arm64 SMMUv3 with a GICv3 ITS in the device tree: MSIs isolated, ok without any unsafe parameter, and bind agrees', () => {
    const r = run(FakeKernel.host({ iommu: 'smmuv3' }), EDU);
    const ir = check(r, 'interrupt-remapping');
    assert.equal(ir.status, 'ok');
    assert.match(ir.summary, /isolated by the GICv3 ITS/);
    assert.equal(ir.evidence[0], '/sys/firmware/devicetree/base/intc@8000000/its@8080000: a GICv3 ITS');
    assert.ok(ir.evidence.includes('iommufd.allow_unsafe_interrupts=N'));
    assert.equal(check(r, 'route').status, 'ok');
    assert.equal(r.exit_code, 0);
    using dev = openDevice(EDU, { kernel: FakeKernel.host({ iommu: 'smmuv3' }) });
    assert.equal(dev.route, 'iommufd');
  });

  test('arm64 without an ITS (its device-tree node gone, no ITS-MSI interrupt): fail, exit 6', () => {
    const k = FakeKernel.host({ iommu: 'smmuv3' }).hide('/sys/firmware/devicetree/base/intc@8000000/its@8080000');
    const ir = check(run(k, EDU), 'interrupt-remapping');
    assert.equal(ir.status, 'fail');
    assert.match(ir.evidence[0]!, /no GICv3 ITS/);
  });

  test('arm64 described by ACPI (no device tree): a GIC ITS subtable in the MADT counts; a MADT of GICC entries alone does not', () => {
    /** a MADT: the 36-byte header, 8 bytes of its own, then subtables of (type, length, ...) */
    const madt = (...subtables: [type: number, length: number][]): Buffer => {
      const body = Buffer.concat(subtables.map(([type, length]) => Buffer.concat([Buffer.from([type, length]), Buffer.alloc(length - 2)])));
      const t = Buffer.concat([Buffer.alloc(44), body]);
      t.write('APIC', 0, 'latin1');
      t.writeUInt32LE(t.length, 4);
      return t;
    };
    const host = (table: Buffer): FakeKernel => FakeKernel.host({ iommu: 'smmuv3' })
      .hide('/sys/firmware/devicetree/base/intc@8000000/its@8080000').writeBytes('/sys/firmware/acpi/tables/APIC', table);
    const withIts = check(run(host(madt([0x0b, 80], [0x0c, 24], [0x0f, 20])), EDU), 'interrupt-remapping');
    assert.equal(withIts.status, 'ok');
    assert.equal(withIts.evidence[0], "/sys/firmware/acpi/tables/APIC (ACPI's MADT) lists a GIC ITS");
    assert.equal(check(run(host(madt([0x0b, 80], [0x0b, 80], [0x0c, 24])), EDU), 'interrupt-remapping').status, 'fail');
  });

  test('arm64 whose device tree is not readable, once a device has an MSI: the ITS-MSI interrupt shows the ITS', () => {
    const k = FakeKernel.host({ iommu: 'smmuv3' }).hide('/sys/firmware/devicetree/base/intc@8000000/its@8080000');
    k.attr('/proc/interrupts', () => '           CPU0       CPU1\n 14:          0          0  ITS-MSI 524288 Edge      vfio-msi[0](0000:00:10.0)');
    const ir = check(run(k, EDU), 'interrupt-remapping');
    assert.equal(ir.status, 'ok');
    assert.equal(ir.evidence[0], '/proc/interrupts lists ITS-MSI interrupts');
  });

  test('an intel IOMMU whose interrupts are not remapped (IR off): the same failure', () => {
    const r = run(FakeKernel.host({ iommu: 'intel', interruptRemapping: false }));
    assert.equal(check(r, 'interrupt-remapping').status, 'fail');
  });

  test('with both unsafe parameters set: warn, naming both routes', () => {
    const r = run(FakeKernel.host({ iommu: 'virtio', allowUnsafeInterrupts: true }), EDU);
    const ir = check(r, 'interrupt-remapping');
    assert.equal(ir.status, 'warn');
    assert.match(ir.summary, /no interrupt remapping; accepted unsafely on the legacy route and iommufd route/);
    assert.ok(ir.evidence.includes('vfio_iommu_type1.allow_unsafe_interrupts=Y'));
    assert.equal(ir.fix, undefined);
    assert.equal(r.exit_code, 0);
  });

  test('with only the parameter of the route bind takes: warn, and bind succeeds', () => {
    const stock = (): FakeKernel => FakeKernel.host({ kernel: 'stock', iommu: 'virtio', allowUnsafeInterrupts: { type1: true } });
    const r = run(stock(), EDU);
    assert.equal(check(r, 'interrupt-remapping').status, 'warn');
    assert.match(check(r, 'interrupt-remapping').summary, /on the legacy route$/);
    assert.equal(r.exit_code, 0);
    openDevice(EDU, { kernel: stock() }).close();
  });

  test('with only the legacy parameter on an iommufd kernel: doctor must not call the device assignable when bind fails', {
  }, () => {
    const host = (): FakeKernel => FakeKernel.host({ kernel: 'iommufd', iommu: 'virtio', allowUnsafeInterrupts: { type1: true } });
    let bindError: unknown = null;
    try {
      openDevice(EDU, { kernel: host() }).close();
    } catch (e) {
      bindError = e;
    }
    assert.ok(bindError instanceof VfioError, 'bind fails (iommufd bind answers EPERM, which is not a fallback)');
    const r = run(host(), EDU);
    assert.equal(r.assignable, false, `doctor says: ${r.verdict}`);
    assert.equal(r.exit_code, (bindError as VfioError).exitCode);
  });
});

describe('doctor: this user and the device', () => {
  test('unprivileged (nodes inaccessible): the permissions check names the nodes, route "may open neither", exit 5', () => {
    const k = FakeKernel.host({ root: false });
    const r = run(k, EDU);
    const perms = check(r, 'permissions');
    assert.equal(perms.status, 'warn');
    for (const node of ['/dev/iommu', '/dev/vfio/3', '/dev/vfio/devices/vfio0']) assert.match(perms.summary, new RegExp(node));
    assert.doesNotMatch(perms.summary, /\/dev\/vfio\/vfio/, 'the container node is world read-write');
    assert.ok(perms.evidence.includes('/dev/iommu: no read-write access'));
    assert.ok(perms.evidence.includes('/dev/vfio/vfio: read-write'));
    assert.match(perms.fix ?? '', /udev rule/);
    assert.match(check(r, 'route').summary, /may open neither/);
    assert.equal(r.exit_code, ExitCode.PERMISSION);
    // no CAP_IPC_LOCK and an 8 MiB RLIMIT_MEMLOCK: a warning with the fix
    const mem = check(r, 'memlock');
    assert.equal(mem.status, 'warn');
    assert.ok(mem.evidence.includes('CAP_IPC_LOCK: no'));
    assert.match(mem.fix ?? '', /ulimit -l/);
  });

  test('root without CAP_IPC_LOCK but an unlimited RLIMIT_MEMLOCK: memlock ok', () => {
    const k = FakeKernel.host().setMemlock('unlimited');
    k.ipcLock = false;
    const mem = check(run(k), 'memlock');
    assert.equal(mem.status, 'ok');
    assert.match(mem.summary, /RLIMIT_MEMLOCK is unlimited bytes/);
  });

  test('a device not on vfio-pci: exit 3, the fix is `vfio-bind driver <dev> --to vfio-pci`', () => {
    const k = FakeKernel.host({ devices: [{ address: NIC, id: '8086:10d3', driver: 'e1000e', group: 7 }] });
    const r = run(k, NIC);
    const driver = check(r, 'driver');
    assert.equal(driver.status, 'fail');
    assert.equal(driver.summary, `${NIC} is bound to e1000e, not to vfio-pci`);
    assert.equal(driver.fix, `vfio-bind driver ${NIC} --to vfio-pci`);
    assert.equal(r.exit_code, ExitCode.NOT_FOUND);
    assert.equal(r.assignable, false);
    assert.match(r.verdict, new RegExp(`^${NIC} cannot be assigned: ${NIC} is bound to e1000e`));
    assert.equal(check(r, 'route').status, 'fail');
  });

  test('a non-viable group (a member on a host driver): exit 3, the fix moves the whole group', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 5 }, { address: NIC, id: '8086:10d3', driver: 'e1000e', group: 5 }] });
    const r = run(k, EDU);
    assert.equal(check(r, 'driver').status, 'ok');
    const g = check(r, 'group');
    assert.equal(g.status, 'fail');
    assert.match(g.summary, /IOMMU group 5 is not viable: 0000:00:12\.0 \(e1000e\) on host drivers/);
    assert.equal(g.fix, `vfio-bind driver ${EDU} --to vfio-pci --group`);
    assert.deepEqual(g.evidence, [`${EDU}: vfio-pci`, `${NIC}: e1000e`]);
    assert.equal(r.exit_code, ExitCode.NOT_FOUND);
  });

  test('a device without an IOMMU group: fail, exit 6', () => {
    const r = run(FakeKernel.host({ devices: [{ address: EDU, group: null, cdev: null }] }), EDU);
    assert.equal(check(r, 'group').status, 'fail');
    assert.match(check(r, 'group').fix ?? '', /intel_iommu=on/);
    assert.equal(r.exit_code, ExitCode.NO_ROUTE);
  });

  test('vfio-pci not loaded: the modules check fails with "modprobe vfio-pci", exit 6', () => {
    const r = run(FakeKernel.host({ vfio: false, devices: [] }));
    const m = check(r, 'modules');
    assert.equal(m.status, 'fail');
    assert.equal(m.fix, 'modprobe vfio-pci');
    assert.equal(r.exit_code, ExitCode.NO_ROUTE);
  });

  test('a bad or unknown device: a failing device check with the spec\'s exit code and hint', () => {
    const bad = run(FakeKernel.host(), '00:10.9');
    assert.equal(check(bad, 'device').status, 'fail');
    assert.equal(check(bad, 'device').exitCode, ExitCode.USAGE);
    assert.match(check(bad, 'device').fix ?? '', /PCI address/);
    assert.equal(bad.exit_code, ExitCode.USAGE);
    assert.equal(bad.device, null);
    const missing = run(FakeKernel.host(), '0000:00:1f.7');
    assert.equal(missing.exit_code, ExitCode.NOT_FOUND);
    assert.match(missing.verdict, /^0000:00:1f\.7 cannot be assigned: no device/);
  });
});

describe('doctor: the JSON document', () => {
  const cases: [string, HostOptions, string | undefined][] = [
    ['ready host and device', {}, EDU],
    ['stock kernel', { kernel: 'stock' }, EDU],
    ['host only', {}, undefined],
    ['no IOMMU', { iommu: 'none', devices: [] }, undefined],
    ['unprivileged', { root: false }, EDU],
  ];
  for (const [name, host, spec] of cases) {
    test(`shape: checks, device, assignable, verdict, exit_code (${name})`, () => {
      const r = JSON.parse(JSON.stringify(run(FakeKernel.host(host), spec))) as Record<string, unknown>;
      assert.deepEqual(Object.keys(r), ['checks', 'device', 'assignable', 'verdict', 'exit_code']);
      assert.ok(Array.isArray(r.checks) && r.checks.length >= 5);
      for (const c of r.checks as Record<string, unknown>[]) {
        assert.equal(typeof c.id, 'string');
        assert.ok(['ok', 'info', 'warn', 'fail'].includes(c.status as string), String(c.status));
        assert.equal(typeof c.summary, 'string');
        assert.ok(Array.isArray(c.evidence) && (c.evidence as unknown[]).every((e) => typeof e === 'string'));
        for (const k of Object.keys(c)) assert.ok(['id', 'status', 'summary', 'evidence', 'fix', 'exitCode'].includes(k), k);
        if (c.status === 'fail') assert.equal(typeof c.exitCode, 'number', `${String(c.id)} fails with an exit code`);
      }
      assert.equal(typeof r.verdict, 'string');
      assert.ok(Number.isInteger(r.exit_code) && (r.exit_code as number) >= 0 && (r.exit_code as number) <= 7);
      const firstFail = (r.checks as Check[]).find((c) => c.status === 'fail');
      assert.equal(r.exit_code, firstFail?.exitCode ?? 0, 'the first failing check\'s exit code');
      if (spec === undefined) {
        assert.equal(r.assignable, null);
        assert.equal(r.device, null);
      } else {
        assert.equal(r.assignable, r.exit_code === 0);
        const d = r.device as Record<string, unknown> | null;
        if (d) {
          assert.deepEqual(Object.keys(d), ['name', 'driver', 'group', 'prediction']);
          assert.deepEqual(Object.keys(d.prediction as object), ['route', 'reason', 'fallback', 'exitCode']);
          const p = d.prediction as { route: string | null; exitCode: number };
          // the prediction carries its exit code: 0 with a route, the route check's code without one
          if (p.route) assert.equal(p.exitCode, 0);
          else assert.equal(p.exitCode, (r.checks as Check[]).find((c) => c.id === 'route')!.exitCode);
        }
      }
    });
  }
});

describe('doctor: what a device offers a migration (host/migration-offer.ts)', () => {
  const MTTY = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
  test('edu behind VT-d: no VFIO migration (debugfs), the ecap bits say no dirty tracking, or yes where SLADS and SMTS are set', () => {
    for (const [options, dirty] of [[{}, ', no IOMMU dirty tracking'], [{ iommuDirtyTracking: true }, ', IOMMU dirty tracking']] as const) {
      const r = run(FakeKernel.host(options), EDU);
      const c = check(r, 'migration');
      assert.equal(c.status, 'info');
      assert.equal(c.summary, `${EDU}: no VFIO migration${dirty}`);
      assert.match(c.evidence.join('\n'), /\/sys\/kernel\/debug\/vfio\/0000:00:10\.0 has no migration directory/);
      assert.match(c.evidence.join('\n'), /^VT-d dmar0: ecap 0x[0-9a-f]+: /m);
    }
  });

  test('virtio-iommu: no dirty tracking; the legacy route adds type1\'s all-dirty line; an mdev with migration', () => {
    const virtio = check(run(FakeKernel.host({ iommu: 'virtio', allowUnsafeInterrupts: true }), EDU), 'migration');
    assert.ok(virtio.evidence.includes('0000:00:01.0 is a virtio-iommu: no IOMMU dirty tracking'), virtio.evidence.join('; '));
    const stock = check(run(FakeKernel.host({ kernel: 'stock' }), EDU), 'migration');
    assert.ok(stock.evidence.some((l) => /type1 reports every mapped page dirty/.test(l)));
    const mdev = check(run(FakeKernel.host({ iommu: 'none', devices: [], mdevs: [{ uuid: MTTY }] }), MTTY), 'migration');
    assert.equal(mdev.summary, `${MTTY}: VFIO migration`);
    assert.match(mdev.evidence.join('\n'), /an mdev has no IOMMU of its own/);
  });
});
