// src/host/driver.ts against the fake's sysfs: moving a device from its host driver to vfio-pci and
// back (driver_override, unbind, drivers_probe, the driver link), the state file under /run, whole
// groups, and the refusals: a device in use through VFIO is never unbound (that write would block).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { moveToVfio, restoreDriver, STATE_DIR, vfioUsers } from '../../src/host/driver.js';
import { locateDevice } from '../../src/discovery/locate.js';
import { openDevice } from '../../src/index.js';
import { DeviceBusyError, ExitCode, KernelError, NoRouteError, PermissionDeniedError, UsageError } from '../../src/errors.js';
import { EDU, FakeKernel, type HostOptions } from '../fake-kernel.js';
import { assertNoLeaks, catchError } from '../helpers.js';

const NIC = '0000:00:12.0';
const NIC2 = '0000:00:13.0';
const MDEV = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
const dirOf = (name: string): string => `/sys/devices/pci0000:00/${name}`;
const statePath = (name: string): string => `${STATE_DIR}/${name}.json`;

const e1000e = (address: string, group: number | null = 7) => ({ address, id: '8086:10d3', driver: 'e1000e', group });
const nicHost = (extra: HostOptions = {}): FakeKernel => FakeKernel.host({ devices: [e1000e(NIC)], ...extra });

/** the sysfs and /run writes made, in order (paths as the library wrote them) */
const writes = (k: FakeKernel): string[] => k.calls.filter((c) => c.call === 'writeText').map((c) => c.path!);
const override = (k: FakeKernel, name: string): string => k.readText(`/sys/bus/pci/devices/${name}/driver_override`);

describe('moveToVfio', () => {
  test('from e1000e: records the state file, sets driver_override, unbinds, probes, verifies the driver link', () => {
    const k = nicHost();
    const changes = moveToVfio(k, NIC);
    assert.deepEqual(changes, [{ device: NIC, from: 'e1000e', to: 'vfio-pci', changed: true }]);
    assert.deepEqual(writes(k), [
      statePath(NIC),
      `${dirOf(NIC)}/driver_override`,
      `${dirOf(NIC)}/driver/unbind`,
      '/sys/bus/pci/drivers_probe',
    ], 'the state first (a failure half-way can still be restored), then override, unbind, probe');
    const state = JSON.parse(k.readText(statePath(NIC))) as { driver: string; since: string };
    assert.equal(state.driver, 'e1000e');
    assert.ok(!Number.isNaN(Date.parse(state.since)));
    assert.equal(k.driverOf(NIC), 'vfio-pci');
    assert.equal(override(k, NIC), 'vfio-pci');
    // and the device is now VFIO's: it binds
    const dev = openDevice(NIC, { kernel: k });
    assert.equal(dev.route, 'iommufd');
    dev.close();
    assertNoLeaks(k);
  });

  test('a device already on vfio-pci: unchanged, nothing written', () => {
    const k = FakeKernel.host();
    assert.deepEqual(moveToVfio(k, EDU), [{ device: EDU, from: 'vfio-pci', to: 'vfio-pci', changed: false }]);
    assert.deepEqual(writes(k), []);
  });

  test('a driverless device: no unbind, probed straight to vfio-pci; the state remembers "no driver"', () => {
    const k = FakeKernel.host({ devices: [{ ...e1000e(NIC), driver: null, hostDriver: 'e1000e' }] });
    assert.deepEqual(moveToVfio(k, NIC), [{ device: NIC, from: null, to: 'vfio-pci', changed: true }]);
    assert.ok(!writes(k).some((p) => p.endsWith('/unbind')));
    assert.equal(JSON.parse(k.readText(statePath(NIC))).driver, null);
  });

  test('a device that had no driver goes back to no driver: after a failed move, and on restore', {
  }, () => {
    const failed = FakeKernel.host({ devices: [{ ...e1000e(NIC, null), driver: null, hostDriver: 'e1000e' }] });
    catchError(() => moveToVfio(failed, NIC), KernelError);
    const restored = FakeKernel.host({ devices: [{ ...e1000e(NIC), driver: null, hostDriver: 'e1000e' }] });
    moveToVfio(restored, NIC);
    restoreDriver(restored, NIC);
    assert.deepEqual([failed.driverOf(NIC), restored.driverOf(NIC)], [null, null]);
  });

  test('vfio-pci fails to probe (no IOMMU group): rolled back to e1000e, state file removed, and the error says why', () => {
    const k = FakeKernel.host({ devices: [e1000e(NIC, null)] });
    const e = catchError(() => moveToVfio(k, NIC), KernelError);
    assert.equal(e.exitCode, ExitCode.KERNEL_REFUSED);
    assert.match(e.message, /vfio-pci did not take 0000:00:12\.0 \(its probe failed\)/);
    assert.match(e.hint ?? '', /without an IOMMU group.*intel_iommu=on or amd_iommu=on/);
    assert.equal(k.driverOf(NIC), 'e1000e', 'back on its driver');
    assert.equal(override(k, NIC), '(null)', 'driver_override cleared');
    assert.ok(!k.exists(statePath(NIC)), 'no state left behind');
    assert.ok(k.kernelLog.some((l) => /vfio-pci 0000:00:12\.0: probe failed/.test(l)));
    assert.deepEqual(writes(k).slice(4), [`${dirOf(NIC)}/driver_override`, '/sys/bus/pci/drivers_probe'], 'rollback: clear the override, probe again');
  });

  test('a group with another member on a host driver: refused without `group` (nothing written), moved whole with it', () => {
    const k = FakeKernel.host({ devices: [e1000e(NIC), e1000e(NIC2)] });
    const e = catchError(() => moveToVfio(k, NIC), UsageError);
    assert.equal(e.exitCode, ExitCode.USAGE);
    assert.match(e.message, /IOMMU group 7 of 0000:00:12\.0 also holds 0000:00:13\.0 \(e1000e\)/);
    assert.match(e.hint ?? '', /--group/);
    assert.deepEqual(writes(k), []);
    assert.ok(!k.calls.some((c) => c.call === 'mkdirp'));
    assert.deepEqual([k.driverOf(NIC), k.driverOf(NIC2)], ['e1000e', 'e1000e']);

    const changes = moveToVfio(k, NIC, { group: true });
    assert.deepEqual(changes.map((c) => [c.device, c.from, c.to, c.changed]), [[NIC, 'e1000e', 'vfio-pci', true], [NIC2, 'e1000e', 'vfio-pci', true]]);
    assert.deepEqual([k.driverOf(NIC), k.driverOf(NIC2)], ['vfio-pci', 'vfio-pci']);
    assert.ok(k.exists(statePath(NIC)) && k.exists(statePath(NIC2)));
    const dev = openDevice(NIC, { kernel: k }); // the group is viable now
    dev.close();

    const back = restoreDriver(k, NIC, { group: true });
    assert.deepEqual(back.map((c) => [c.device, c.to]), [[NIC, 'e1000e'], [NIC2, 'e1000e']]);
    assert.deepEqual([override(k, NIC), override(k, NIC2)], ['(null)', '(null)']);
    assert.ok(!k.exists(statePath(NIC)) && !k.exists(statePath(NIC2)));
  });

  test('group members that are VFIO-safe (pci-stub, pcieport, no driver) do not need `group`', () => {
    const k = FakeKernel.host({
      devices: [e1000e(NIC), { address: NIC2, driver: 'pcieport', group: 7 }, { address: '0000:00:14.0', driver: null, group: 7 }],
    });
    assert.deepEqual(moveToVfio(k, NIC).map((c) => c.device), [NIC]);
    assert.equal(k.driverOf(NIC2), 'pcieport');
  });

  test('not root (writes under /run and /sys answer EACCES): PermissionDeniedError "needs root", nothing changed', () => {
    const k = nicHost({ root: false });
    const e = catchError(() => moveToVfio(k, NIC), PermissionDeniedError);
    assert.equal(e.exitCode, ExitCode.PERMISSION);
    assert.match(e.message, /needs root/);
    assert.match(e.hint ?? '', /run as root/);
    assert.equal(k.driverOf(NIC), 'e1000e');
    assert.equal(k.driverOverride(NIC), null);

    // the state directory made earlier by root: the state file write is the one refused
    const k2 = nicHost();
    k2.mkdirp(STATE_DIR);
    k2.root = false;
    const e2 = catchError(() => moveToVfio(k2, NIC), PermissionDeniedError);
    assert.match(e2.message, /needs root: writing \/run\/vfio-bind\/drivers\/0000:00:12\.0\.json answered EACCES/);
    assert.equal(e2.errno, 'EACCES');
    assert.equal(k2.driverOf(NIC), 'e1000e');
  });

  test('an mdev: UsageError (its driver is its parent\'s)', () => {
    const k = FakeKernel.host({ devices: [], mdevs: [{ uuid: MDEV }] });
    const e = catchError(() => moveToVfio(k, MDEV), UsageError);
    assert.match(e.message, /is an mdev/);
    catchError(() => restoreDriver(k, MDEV), UsageError);
    assert.deepEqual(writes(k), []);
  });

  test('vfio-pci not loaded: NoRouteError naming modprobe vfio-pci, nothing written', () => {
    const k = FakeKernel.host({ vfio: false, devices: [e1000e(NIC)] });
    const e = catchError(() => moveToVfio(k, NIC), NoRouteError);
    assert.equal(e.exitCode, ExitCode.NO_ROUTE);
    assert.match(e.hint ?? '', /modprobe vfio-pci/);
    assert.deepEqual(writes(k), []);
    assert.equal(k.driverOf(NIC), 'e1000e');
  });

  test('a bad spec: UsageError before anything is read or written', () => {
    const k = nicHost();
    catchError(() => moveToVfio(k, '00:12.9'), UsageError);
    assert.deepEqual(writes(k), []);
  });
});

describe('restoreDriver', () => {
  test('clears driver_override, gives the device back to e1000e, removes the state file', () => {
    const k = nicHost();
    moveToVfio(k, NIC);
    const before = writes(k).length;
    assert.deepEqual(restoreDriver(k, NIC), [{ device: NIC, from: 'vfio-pci', to: 'e1000e', changed: true }]);
    assert.deepEqual(writes(k).slice(before), [`${dirOf(NIC)}/driver_override`, `${dirOf(NIC)}/driver/unbind`, '/sys/bus/pci/drivers_probe']);
    assert.equal(k.driverOf(NIC), 'e1000e');
    assert.equal(override(k, NIC), '(null)');
    assert.ok(!k.exists(statePath(NIC)));
    assert.ok(!k.exists('/dev/vfio/7'), 'the group node went with its last VFIO member');
    assert.deepEqual(k.blockedUnbinds, []);
  });

  test('a device never moved (no state, no override, on its own driver): unchanged, nothing written', () => {
    const k = nicHost();
    assert.deepEqual(restoreDriver(k, NIC), [{ device: NIC, from: 'e1000e', to: 'e1000e', changed: false }]);
    assert.deepEqual(writes(k), []);
  });

  test('a device moved by hand (override set, no state file): the override is cleared and the natural driver takes it', () => {
    const k = nicHost();
    k.writeText(`/sys/bus/pci/devices/${NIC}/driver_override`, 'vfio-pci');
    k.writeText(`/sys/bus/pci/devices/${NIC}/driver/unbind`, NIC);
    k.writeText('/sys/bus/pci/drivers_probe', NIC);
    assert.deepEqual(restoreDriver(k, NIC), [{ device: NIC, from: 'vfio-pci', to: 'e1000e', changed: true }]);
    assert.equal(override(k, NIC), '(null)');
  });

  test('in use through VFIO by another process (it holds the group node): DeviceBusyError, nothing written', () => {
    const k = nicHost();
    moveToVfio(k, NIC);
    k.holdGroupElsewhere(7);
    const before = writes(k).length;
    const e = catchError(() => restoreDriver(k, NIC), DeviceBusyError);
    assert.equal(e.exitCode, ExitCode.BUSY);
    assert.match(e.message, new RegExp(`in use through VFIO by process ${k.otherPid}`));
    assert.match(e.hint ?? '', /close the device in that process first/);
    assert.equal(e.path, '/dev/vfio/7');
    assert.equal(writes(k).length, before, 'nothing written');
    assert.deepEqual(k.blockedUnbinds, []);
    assert.equal(k.driverOf(NIC), 'vfio-pci');
    assert.ok(k.exists(statePath(NIC)), 'the state stays for a later restore');
    k.releaseElsewhere();
    restoreDriver(k, NIC);
    assert.equal(k.driverOf(NIC), 'e1000e');
  });

  test('in use through its cdev by another process: DeviceBusyError', () => {
    const k = nicHost();
    moveToVfio(k, NIC);
    k.bindElsewhere(NIC);
    catchError(() => restoreDriver(k, NIC), DeviceBusyError);
    assert.deepEqual(k.blockedUnbinds, []);
  });

  test('open in this process: DeviceBusyError naming this process', () => {
    const k = nicHost();
    moveToVfio(k, NIC);
    const dev = openDevice(NIC, { kernel: k });
    try {
      const e = catchError(() => restoreDriver(k, NIC), DeviceBusyError);
      assert.match(e.message, new RegExp(`by process ${k.pid}`));
      assert.deepEqual(k.blockedUnbinds, []);
    } finally {
      dev.close();
    }
    assertNoLeaks(k);
  });

  test('vfioUsers: the processes holding the group node or the cdev (either spelling of the cdev)', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 3, cdev: 0 }] });
    const loc = locateDevice(k, EDU);
    assert.deepEqual(vfioUsers(k, loc), []);
    k.openElsewhere('/dev/vfio/devices/vfio0', 4001).openElsewhere('/dev/vfio/3', 4002).openElsewhere('/dev/vfio/vfio', 4003);
    assert.deepEqual(vfioUsers(k, loc).sort(), [4001, 4002]);
  });

  test('the original driver is gone (module unloaded): KernelError naming modprobe e1000e, the state file stays', () => {
    const k = nicHost();
    moveToVfio(k, NIC);
    k.unloadDriver('e1000e');
    const e = catchError(() => restoreDriver(k, NIC), KernelError);
    assert.match(e.message, /went to no driver, not back to e1000e/);
    assert.match(e.hint ?? '', /modprobe e1000e/);
    assert.ok(k.exists(statePath(NIC)));
    k.loadDriver('e1000e');
    assert.deepEqual(restoreDriver(k, NIC).map((c) => c.to), ['e1000e'], 'a later restore finishes the job');
  });

  test('not root: PermissionDeniedError, the device stays on vfio-pci', () => {
    const k = nicHost();
    moveToVfio(k, NIC);
    k.root = false;
    const e = catchError(() => restoreDriver(k, NIC), PermissionDeniedError);
    assert.match(e.message, /needs root/);
    assert.equal(k.driverOf(NIC), 'vfio-pci');
  });

  test('restore with `group` while a group-mate\'s cdev is open: refused before any write (its unbind would block)', {
  }, () => {
    const k = FakeKernel.host({ devices: [e1000e(NIC), e1000e(NIC2)] });
    moveToVfio(k, NIC, { group: true });
    const fd = k.open(locateDevice(k, NIC2).cdev!.nodes[0]!); // a VMM (here: this process) has the other device's cdev open
    const before = writes(k).length;
    let thrown: unknown;
    try {
      restoreDriver(k, NIC, { group: true });
    } catch (e) {
      thrown = e;
    } finally {
      k.close(fd);
    }
    assert.deepEqual(k.blockedUnbinds, [], 'an unbind that would block in the real kernel was written');
    assert.equal(writes(k).length, before, 'nothing written');
    assert.ok(thrown instanceof DeviceBusyError, `expected DeviceBusyError, got ${String(thrown)}`);
  });

  test('restore without `group` while another process has a group-mate bound: refused, not left driverless', {
  }, () => {
    const k = FakeKernel.host({ devices: [e1000e(NIC), e1000e(NIC2)] });
    moveToVfio(k, NIC, { group: true });
    k.bindElsewhere(NIC2);
    let thrown: unknown;
    try {
      restoreDriver(k, NIC);
    } catch (e) {
      thrown = e;
    }
    assert.notEqual(k.driverOf(NIC), null, `left without a driver (${thrown instanceof Error ? thrown.message : 'no error'})`);
    assert.ok(thrown instanceof DeviceBusyError, `expected DeviceBusyError, got ${String(thrown)}`);
  });
});
