// The fake's model of the host around VFIO (test/fake-kernel.ts): driver binding through sysfs,
// /proc/<pid>/fd, and the files doctor and the passed-fd checks read. Each answer is the kernel's
// (drivers/base/bus.c, dd.c, drivers/pci/pci-sysfs.c, drivers/vfio/group.c), so that the tests of
// src/host can trust it.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { gunzipSync } from 'node:zlib';
import { isSysError } from '../../src/sys/kernel.js';
import { VFIO } from '../../src/uapi/vfio.js';
import { EDU, FakeKernel, RDEV, TESTDEV, type Errno } from '../fake-kernel.js';

const NIC = '0000:00:12.0';
const NIC_DIR = `/sys/devices/pci0000:00/${NIC}`;

function throwsErrno(fn: () => unknown, code: Errno): void {
  assert.throws(fn, (e: unknown) => isSysError(e) && e.code === code, `expected ${code}`);
}

const nicHost = (extra: Parameters<typeof FakeKernel.host>[0] = {}): FakeKernel =>
  FakeKernel.host({ devices: [{ address: NIC, id: '8086:10d3', driver: 'e1000e', group: 7 }], ...extra });

describe('fake host: driver binding through sysfs', () => {
  test('driver_override reads "(null)" until set; "\\n" clears it; a page or more is EINVAL', () => {
    const k = nicHost();
    const attr = `/sys/bus/pci/devices/${NIC}/driver_override`;
    assert.equal(k.readText(attr), '(null)');
    k.writeText(attr, 'vfio-pci');
    assert.equal(k.readText(attr), 'vfio-pci');
    k.writeText(attr, 'vfio-pci\n');
    assert.equal(k.readText(attr), 'vfio-pci', 'one trailing newline is stripped');
    assert.equal(k.driverOf(NIC), 'e1000e', 'setting the override alone changes no binding');
    k.writeText(attr, '\n');
    assert.equal(k.readText(attr), '(null)');
    assert.equal(k.driverOverride(NIC), null);
    throwsErrno(() => k.writeText(attr, 'x'.repeat(4096)), 'EINVAL');
  });

  test('unbind through the driver link removes the link; a device not bound to that driver is ENODEV', () => {
    const k = nicHost();
    throwsErrno(() => k.writeText('/sys/bus/pci/drivers/vfio-pci/unbind', NIC), 'ENODEV');
    k.writeText(`/sys/bus/pci/devices/${NIC}/driver/unbind`, NIC);
    assert.equal(k.driverOf(NIC), null);
    assert.ok(!k.exists(`${NIC_DIR}/driver`));
    assert.ok(!k.exists(`/sys/bus/pci/drivers/e1000e/${NIC}`));
    throwsErrno(() => k.writeText(`/sys/bus/pci/devices/${NIC}/driver/unbind`, NIC), 'ENOENT'); // no driver link to go through
    throwsErrno(() => k.writeText('/sys/bus/pci/drivers/e1000e/unbind', '0000:00:1f.7'), 'ENODEV');
  });

  test('drivers_probe: the override if set (vfio-pci then makes the group node, cdev and /sys/class/vfio/N), else the natural driver', () => {
    const k = nicHost();
    k.writeText(`/sys/bus/pci/devices/${NIC}/driver_override`, 'vfio-pci');
    k.writeText(`/sys/bus/pci/drivers/e1000e/unbind`, NIC);
    assert.ok(!k.exists('/dev/vfio/7'));
    k.writeText('/sys/bus/pci/drivers_probe', `${NIC}\n`);
    assert.equal(k.driverOf(NIC), 'vfio-pci');
    assert.ok(k.exists('/dev/vfio/7'));
    assert.equal(k.readText('/sys/class/vfio/7/dev'), `${RDEV.groupMajor}:${k.stat('/dev/vfio/7').rdev & 0xff}`);
    assert.ok(k.exists(`${NIC_DIR}/vfio-dev`));
    // back: clear the override, unbind, probe -> e1000e; the group's VFIO nodes go with its last VFIO member
    k.writeText(`/sys/bus/pci/devices/${NIC}/driver_override`, '\n');
    k.writeText(`/sys/bus/pci/devices/${NIC}/driver/unbind`, NIC);
    k.writeText('/sys/bus/pci/drivers_probe', NIC);
    assert.equal(k.driverOf(NIC), 'e1000e');
    for (const p of ['/dev/vfio/7', '/sys/class/vfio/7', `${NIC_DIR}/vfio-dev`]) assert.ok(!k.exists(p), p);
    assert.deepEqual(k.kernelLog, [
      `e1000e ${NIC}: unbound`, `vfio-pci ${NIC}: bound`, `vfio-pci ${NIC}: unbound`, `e1000e ${NIC}: bound`,
    ]);
  });

  test('vfio-pci fails to probe a device without an IOMMU group: the write still succeeds, the device stays driverless', () => {
    const k = FakeKernel.host({ devices: [{ address: NIC, id: '8086:10d3', driver: 'e1000e', group: null }] });
    k.writeText(`/sys/bus/pci/devices/${NIC}/driver_override`, 'vfio-pci');
    k.writeText(`/sys/bus/pci/devices/${NIC}/driver/unbind`, NIC);
    k.writeText('/sys/bus/pci/drivers_probe', NIC);
    assert.equal(k.driverOf(NIC), null);
    assert.match(k.kernelLog.at(-1)!, /vfio-pci 0000:00:12\.0: probe failed with error -22/);
    throwsErrno(() => k.writeText('/sys/bus/pci/drivers/vfio-pci/bind', NIC), 'EINVAL'); // bind reports the probe's error
  });

  test('a driver that is not loaded takes nothing; unloadDriver unbinds its devices', () => {
    const k = nicHost();
    k.unloadDriver('e1000e');
    assert.equal(k.driverOf(NIC), null);
    assert.ok(!k.exists('/sys/bus/pci/drivers/e1000e'));
    k.writeText('/sys/bus/pci/drivers_probe', NIC);
    assert.equal(k.driverOf(NIC), null);
    k.loadDriver('e1000e').writeText('/sys/bus/pci/drivers_probe', NIC);
    assert.equal(k.driverOf(NIC), 'e1000e');
  });

  test('unbinding a vfio-pci device open through VFIO would block: refused and recorded', () => {
    const k = FakeKernel.host();
    const fd = k.open('/dev/vfio/devices/vfio0'); // even parked, a cdev holds the device's registration
    assert.throws(() => k.writeText(`/sys/bus/pci/devices/${EDU}/driver/unbind`, EDU), /would block/);
    assert.deepEqual(k.blockedUnbinds.map((b) => b.device), [EDU]);
    assert.equal(k.driverOf(EDU), 'vfio-pci');
    k.close(fd);
    k.holdGroupElsewhere(3);
    assert.throws(() => k.writeText('/sys/bus/pci/drivers/vfio-pci/unbind', EDU), /would block/);
    k.releaseElsewhere();
    k.writeText('/sys/bus/pci/drivers/vfio-pci/unbind', EDU);
    assert.equal(k.driverOf(EDU), null);
  });

  test('a host driver cannot probe a device whose group is claimed for user DMA (iommu_device_use_default_domain)', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 7 }, { address: NIC, id: '8086:10d3', driver: null, hostDriver: 'e1000e', group: 7 }] });
    k.bindElsewhere(EDU);
    k.writeText('/sys/bus/pci/drivers_probe', NIC);
    assert.equal(k.driverOf(NIC), null);
    assert.match(k.kernelLog.at(-1)!, /e1000e 0000:00:12\.0: probe failed with error -16/);
    k.releaseElsewhere();
    k.writeText('/sys/bus/pci/drivers_probe', NIC);
    assert.equal(k.driverOf(NIC), 'e1000e');
  });

  test('sysfs: no file can be created, read-only attributes refuse writes, the write-only ones cannot be read', () => {
    const k = FakeKernel.host();
    throwsErrno(() => k.writeText(`/sys/bus/pci/devices/${EDU}/new_file`, 'x'), 'EACCES');
    throwsErrno(() => k.writeText(`/sys/bus/pci/devices/${EDU}/vendor`, '0x8086'), 'EACCES');
    throwsErrno(() => k.readText('/sys/bus/pci/drivers_probe'), 'EACCES');
    throwsErrno(() => k.unlink(`/sys/bus/pci/devices/${EDU}/vendor`), 'EPERM');
  });

  test('without root: writes under /sys and /run answer EACCES, and only /dev/vfio/vfio can be opened', () => {
    const k = FakeKernel.host({ root: false });
    throwsErrno(() => k.writeText(`/sys/bus/pci/devices/${EDU}/driver_override`, 'vfio-pci'), 'EACCES');
    throwsErrno(() => k.mkdirp('/run/vfio-bind/drivers'), 'EACCES');
    assert.equal(k.accessible('/dev/vfio/vfio'), true);
    for (const p of ['/dev/iommu', '/dev/vfio/3', '/dev/vfio/devices/vfio0']) {
      assert.equal(k.accessible(p), false, p);
      throwsErrno(() => k.open(p), 'EACCES');
    }
    assert.match(k.readText('/proc/self/status'), /^CapEff:\t0000000000000000$/m);
    assert.equal(k.rawio, false);
    assert.equal(k.ipcLock, false);
  });
});

describe('fake host: /proc', () => {
  test('/proc/self/fd shows every fd this process has, by the path it was opened as (resolved)', () => {
    const k = FakeKernel.host();
    assert.equal(k.realpath('/proc/self'), `/proc/${k.pid}`);
    const cdev = k.open(`/dev/char/${RDEV.cdevMajor}:0`);
    const efd = k.eventfd();
    assert.deepEqual(k.readdir('/proc/self/fd').sort(), [String(cdev), String(efd)].sort());
    assert.equal(k.readlink(`/proc/self/fd/${cdev}`), '/dev/vfio/devices/vfio0');
    assert.equal(k.readlink(`/proc/${k.pid}/fd/${efd}`), 'anon_inode:[eventfd]');
    k.close(cdev);
    k.close(efd);
    assert.deepEqual(k.readdir('/proc/self/fd'), []);
  });

  test('another process: its fds as holdGroupElsewhere, bindElsewhere and openElsewhere leave them; gone when it exits', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, cdev: 0 }, { address: TESTDEV, cdev: 1 }] });
    k.holdGroupElsewhere(3).bindElsewhere(TESTDEV).openElsewhere('/dev/vfio/vfio', 777);
    const links = (pid: number): string[] => k.readdir(`/proc/${pid}/fd`).map((fd) => k.readlink(`/proc/${pid}/fd/${fd}`)).sort();
    assert.deepEqual(links(k.otherPid), ['/dev/vfio/3', '/dev/vfio/devices/vfio1']);
    assert.deepEqual(links(777), ['/dev/vfio/vfio']);
    k.releaseElsewhere();
    assert.deepEqual(k.readdir('/proc').filter((n) => /^[0-9]+$/.test(n)), [String(k.pid)]);
    assert.equal(k.groupHolder(3), null);
  });

  test('doctor\'s files: osrelease, cmdline, interrupts with and without IR-, CapEff, module parameters', () => {
    const intel = FakeKernel.host();
    assert.equal(intel.readText('/proc/sys/kernel/osrelease'), '6.12.9-vfio');
    assert.match(intel.readText('/proc/cmdline'), /intel_iommu=on/);
    assert.match(intel.readText('/proc/interrupts'), /IR-PCI-MSI/);
    assert.match(intel.readText('/proc/self/status'), /^CapEff:\t000001ffffffffff$/m);
    assert.equal(intel.readText('/sys/module/iommufd/parameters/allow_unsafe_interrupts'), 'N');
    intel.ipcLock = false;
    assert.match(intel.readText('/proc/self/status'), /^CapEff:\t000001ffffffbfff$/m, 'CAP_IPC_LOCK (bit 14) dropped');
    const virtio = FakeKernel.host({ iommu: 'virtio', kernel: 'stock', allowUnsafeInterrupts: { type1: true } });
    assert.doesNotMatch(virtio.readText('/proc/interrupts'), /IR-/);
    assert.match(virtio.readText('/proc/interrupts'), /PCI-MSI/);
    assert.equal(virtio.readText('/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts'), 'Y');
    assert.ok(!virtio.exists('/sys/module/iommufd'));
    assert.ok(!virtio.exists('/sys/class/misc/iommu'));
    virtio.writeText('/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts', 'N');
    assert.equal(virtio.allowUnsafe.type1, false);
  });

  test('the kernel config: /boot/config-<release>, or /proc/config.gz (gzip, through readBytes), or none', () => {
    const boot = FakeKernel.host({ kernel: 'stock' });
    assert.match(boot.readText('/boot/config-6.1.0-28-amd64'), /^# CONFIG_IOMMUFD is not set$/m);
    const proc = FakeKernel.host({ kernelConfig: 'proc', release: '6.12.0-test' });
    assert.ok(!proc.exists('/boot/config-6.12.0-test'));
    assert.match(gunzipSync(proc.readBytes('/proc/config.gz')).toString(), /^CONFIG_IOMMUFD=m$/m);
    const none = FakeKernel.host({ kernelConfig: 'none' });
    assert.ok(!none.exists('/proc/config.gz') && !none.exists('/boot/config-6.12.9-vfio'));
  });

  test('the nodes\' device numbers in sysfs: misc iommu and vfio, and the group\'s vfio-class device', () => {
    const k = FakeKernel.host({ iommu: 'noiommu' });
    assert.equal(k.readText('/sys/class/misc/iommu/dev'), '10:258');
    assert.equal(k.readText('/sys/class/misc/vfio/dev'), '10:196');
    assert.equal(k.readText('/sys/class/vfio/noiommu-0/dev'), `${RDEV.groupMajor}:0`);
    assert.ok(!k.exists('/sys/class/vfio/0'));
  });

  test('without vfio_iommu_type1 the container offers neither type1 nor type1v2', () => {
    const k = FakeKernel.host({ type1: false });
    const c = k.open('/dev/vfio/vfio');
    assert.equal(k.ioctl(c, VFIO.CHECK_EXTENSION, 3), 0);
    assert.equal(k.ioctl(c, VFIO.CHECK_EXTENSION, 1), 0);
    assert.ok(!k.exists('/sys/module/vfio_iommu_type1'));
    k.close(c);
  });
});
