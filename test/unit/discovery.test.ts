// Discovery against the fake's sysfs and /dev: what locateDevice, listDevices and visibleRoutes read,
// without opening anything.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { listDevices, locateDevice, vfioSafeDriver, whyNoVfio } from '../../src/discovery/locate.js';
import { visibleRoutes } from '../../src/routes/index.js';
import { DeviceNotFoundError, UsageError } from '../../src/errors.js';
import { EDU, FakeKernel, RDEV, TESTDEV } from '../fake-kernel.js';
import { catchError } from '../helpers.js';

const MDEV = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';

describe('locateDevice', () => {
  test('a vfio-pci device on an iommufd kernel: group node, cdev with its device number', () => {
    const k = FakeKernel.host({ kernel: 'iommufd', iommu: 'intel', devices: [{ address: EDU, group: 3, cdev: 0 }] });
    const loc = locateDevice(k, '00:10.0');
    assert.deepEqual(loc, {
      spec: '00:10.0',
      name: EDU,
      bus: 'pci',
      sysfsPath: `/sys/devices/pci0000:00/${EDU}`,
      driver: 'vfio-pci',
      group: { id: 3, node: '/dev/vfio/3', noiommu: false, members: [{ name: EDU, driver: 'vfio-pci', vfioSafe: true }], blockers: [] },
      cdev: {
        name: 'vfio0',
        node: '/dev/vfio/devices/vfio0',
        devnum: { major: RDEV.cdevMajor, minor: 0 },
        nodes: ['/dev/vfio/devices/vfio0', `/dev/char/${RDEV.cdevMajor}:0`],
        sysfsDir: `/sys/devices/pci0000:00/${EDU}/vfio-dev/vfio0`,
      },
    });
    assert.equal(k.openedPaths().length, 0, 'discovery opens nothing');
  });

  test('what only a report or an error needs is read when first asked for, once (goal: no sysfs read a bind does not use)', () => {
    const k = FakeKernel.host({ kernel: 'iommufd', iommu: 'intel', devices: [{ address: EDU, group: 3, cdev: 0 }, { address: TESTDEV, group: 3 }] });
    const seen: string[] = [];
    k.onCall((c) => seen.push(`${c.call} ${c.path}`));
    const loc = locateDevice(k, EDU);
    assert.deepEqual(seen, [
      `readlink /sys/bus/pci/devices/${EDU}`, // the bus link: the bus, without the subsystem link
      `readlink /sys/devices/pci0000:00/${EDU}/driver`,
      `readlink /sys/devices/pci0000:00/${EDU}/iommu_group`,
    ]);
    seen.length = 0;
    assert.deepEqual(loc.group?.members.map((m) => m.name), [EDU, TESTDEV]);
    assert.equal(loc.group?.blockers.length, 0);
    assert.deepEqual(loc.cdev?.devnum, { major: RDEV.cdevMajor, minor: 0 });
    assert.ok(seen.includes('readdir /sys/kernel/iommu_groups/3/devices'), 'the members are read when asked for');
    assert.ok(seen.includes(`readdir /sys/devices/pci0000:00/${EDU}/vfio-dev`), 'the cdev is found when asked for');
    assert.ok(seen.includes(`readText /sys/devices/pci0000:00/${EDU}/vfio-dev/vfio0/dev`), 'its number is read when asked for');
    const asked = seen.length;
    JSON.stringify(loc); // a report reads every field again
    assert.equal(seen.length, asked, 'from what was kept: each is read once');
  });

  test('every spelling of the same device finds the same location', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, cdev: 0 }] });
    const specs = [EDU, '00:10.0', '0000:00:10.0', `/sys/bus/pci/devices/${EDU}`, `/sys/devices/pci0000:00/${EDU}`, `/sys/bus/pci/devices/${EDU}/`, '/dev/vfio/devices/vfio0'];
    const paths = new Set(specs.map((s) => locateDevice(k, s).sysfsPath));
    assert.deepEqual([...paths], [`/sys/devices/pci0000:00/${EDU}`]);
  });

  test('a stock kernel: vfio-dev/vfioN exists but has no dev attribute (no cdev)', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    const loc = locateDevice(k, EDU);
    assert.deepEqual(loc.cdev, { name: 'vfio0', node: '/dev/vfio/devices/vfio0', devnum: null, nodes: ['/dev/vfio/devices/vfio0'], sysfsDir: `/sys/devices/pci0000:00/${EDU}/vfio-dev/vfio0` });
    assert.equal(loc.group?.node, '/dev/vfio/3');
    assert.deepEqual(visibleRoutes(k, loc), { iommufd: false, legacy: true });
  });

  test('noiommu: the group node is /dev/vfio/noiommu-N, and there is no cdev', () => {
    const k = FakeKernel.host({ kernel: 'iommufd', iommu: 'noiommu' });
    const loc = locateDevice(k, EDU);
    assert.equal(loc.group?.id, 0);
    assert.equal(loc.group?.node, '/dev/vfio/noiommu-0');
    assert.equal(loc.group?.noiommu, true);
    assert.equal(loc.cdev?.devnum, null);
    assert.ok(k.exists('/dev/iommu'), '/dev/iommu is present in noiommu mode (FINDINGS.md 4)');
    assert.deepEqual(visibleRoutes(k, loc), { iommufd: false, legacy: true });
  });

  test('an mdev: bus mdev, its emulated group has a plain /dev/vfio/N node', () => {
    const k = FakeKernel.host({ iommu: 'none', devices: [], mdevs: [{ uuid: MDEV }] });
    const loc = locateDevice(k, MDEV.toUpperCase());
    assert.equal(loc.bus, 'mdev');
    assert.equal(loc.name, MDEV);
    assert.equal(loc.driver, 'mtty');
    assert.equal(loc.group?.node, '/dev/vfio/0');
    assert.equal(loc.group?.noiommu, false);
    assert.ok(loc.cdev?.devnum);
  });

  test('a device without an IOMMU group and without vfio-dev', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: null, cdev: null }] });
    const loc = locateDevice(k, EDU);
    assert.equal(loc.group, null);
    assert.equal(loc.cdev, null);
    assert.deepEqual(visibleRoutes(k, loc), { iommufd: false, legacy: false });
  });

  test('blockers: a group member bound to e1000e; pci-stub, pcieport and unbound members are fine', () => {
    const k = FakeKernel.host({
      devices: [
        { address: EDU, group: 5 },
        { address: '0000:00:12.0', id: '8086:10d3', driver: 'e1000e', group: 5 },
        { address: '0000:00:13.0', driver: 'pci-stub', group: 5 },
        { address: '0000:00:14.0', driver: 'pcieport', group: 5 },
        { address: '0000:00:15.0', driver: null, group: 5 },
      ],
    });
    const g = locateDevice(k, EDU).group!;
    assert.deepEqual(g.members.map((m) => [m.name, m.driver, m.vfioSafe]), [
      [EDU, 'vfio-pci', true],
      ['0000:00:12.0', 'e1000e', false],
      ['0000:00:13.0', 'pci-stub', true],
      ['0000:00:14.0', 'pcieport', true],
      ['0000:00:15.0', null, true],
    ]);
    assert.deepEqual(g.blockers, [{ name: '0000:00:12.0', driver: 'e1000e', vfioSafe: false }]);
  });

  test('cdev present / absent: a hidden node, a hidden dev attribute', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, cdev: 0 }] });
    k.hide('/dev/vfio/devices/vfio0');
    let loc = locateDevice(k, EDU);
    assert.ok(loc.cdev?.devnum, 'sysfs still gives the number');
    // udev's /dev/char link points at the hidden node: no node is visible
    assert.deepEqual(visibleRoutes(k, loc), { iommufd: false, legacy: true });
    k.plantNode(`/dev/char/${RDEV.cdevMajor}:0`, k.stat('/dev/vfio/3').rdev); // a node, but of another device
    loc = locateDevice(k, EDU);
    assert.equal(visibleRoutes(k, loc).iommufd, true, 'visibleRoutes only checks that a node exists; the route checks its number');
    k.hide(`/sys/devices/pci0000:00/${EDU}/vfio-dev/vfio0/dev`);
    assert.equal(locateDevice(k, EDU).cdev?.devnum, null);
  });

  test('a missing device is DeviceNotFoundError (exit 3) naming the path', () => {
    const k = FakeKernel.host();
    for (const spec of ['0000:00:1f.0', '/sys/bus/pci/devices/0000:00:1f.0', '/dev/vfio/devices/vfio7', 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee']) {
      const e = catchError(() => locateDevice(k, spec), DeviceNotFoundError);
      assert.equal(e.exitCode, 3);
      assert.equal(e.errno, 'ENOENT');
      assert.ok(e.path && e.message.includes(e.path));
    }
  });

  test('a sysfs path whose realpath leaves /sys/devices is a UsageError', () => {
    const k = FakeKernel.host();
    k.symlink('/sys/bus/pci/devices/0000:00:1e.0', '../../../../etc');
    k.mkdir('/etc');
    k.symlink('/sys/class/net/eth0', '../../devices/virtual/net/eth0');
    k.mkdir('/sys/devices/virtual/net/eth0');
    let e = catchError(() => locateDevice(k, '0000:00:1e.0'), UsageError);
    assert.match(e.message, /resolves to \/etc, outside \/sys\/devices\//);
    e = catchError(() => locateDevice(k, '/sys/kernel/iommu_groups/3'), UsageError);
    assert.match(e.message, /outside \/sys\/devices/);
    assert.equal(e.exitCode, 2);
    // inside /sys/devices, but not a PCI or mdev device
    e = catchError(() => locateDevice(k, '/sys/class/net/eth0'), UsageError);
    assert.match(e.message, /is not a PCI or mdev device/);
  });

  test('a sysfs path through symlinks to a real device dir is accepted', () => {
    const k = FakeKernel.host();
    assert.equal(locateDevice(k, `/sys/kernel/iommu_groups/3/devices/${EDU}`).name, EDU);
  });
});

describe('listDevices', () => {
  test('lists VFIO devices and mdevs; not a device bound to a host driver', () => {
    const k = FakeKernel.host({
      devices: [
        { address: TESTDEV, id: '1b36:0005' },
        { address: EDU },
        { address: '0000:00:12.0', id: '8086:10d3', driver: 'e1000e' },
      ],
      mdevs: [{ uuid: MDEV }],
    });
    const names = listDevices(k).map((d) => `${d.bus} ${d.name} ${d.driver} group=${d.group?.id} cdev=${d.cdev?.name ?? '-'}`);
    assert.deepEqual(names, [
      `pci ${EDU} vfio-pci group=4 cdev=vfio1`,
      `pci ${TESTDEV} vfio-pci group=3 cdev=vfio0`,
      `mdev ${MDEV} mtty group=6 cdev=vfio2`,
    ]);
  });

  test('no VFIO device: listDevices is empty and whyNoVfio says why', () => {
    const none = FakeKernel.host({ kernel: 'stock', iommu: 'none' });
    assert.deepEqual(listDevices(none), []);
    assert.match(whyNoVfio(none), /no IOMMU is enabled/);
    const notLoaded = FakeKernel.host({ devices: [{ address: EDU, driver: 'edu' }], vfio: false });
    assert.deepEqual(listDevices(notLoaded), []);
    assert.match(whyNoVfio(notLoaded), /modprobe vfio-pci/);
    const unbound = FakeKernel.host({ devices: [{ address: EDU, driver: null }] });
    assert.deepEqual(listDevices(unbound), []);
    assert.match(whyNoVfio(unbound), /no device is bound to a VFIO driver/);
  });
});

describe('visibleRoutes', () => {
  test('both routes on an iommufd kernel; none of the nodes are opened', () => {
    const k = FakeKernel.host();
    assert.deepEqual(visibleRoutes(k, locateDevice(k, EDU)), { iommufd: true, legacy: true });
    assert.equal(k.openedPaths().length, 0);
  });
  test('a hidden /dev/iommu hides the iommufd route; a hidden /dev/vfio/vfio the legacy one', () => {
    const k = FakeKernel.host();
    const loc = locateDevice(k, EDU);
    k.hide('/dev/iommu');
    assert.deepEqual(visibleRoutes(k, loc), { iommufd: false, legacy: true });
    k.hide('/dev/vfio/vfio');
    assert.deepEqual(visibleRoutes(k, loc), { iommufd: false, legacy: false });
  });
});

test('vfioSafeDriver', () => {
  for (const d of [null, 'vfio-pci', 'vfio-pci-core', 'pci-stub', 'pcieport']) assert.equal(vfioSafeDriver(d), true, String(d));
  for (const d of ['e1000e', 'nvme', 'xhci_hcd']) assert.equal(vfioSafeDriver(d), false, d);
});
