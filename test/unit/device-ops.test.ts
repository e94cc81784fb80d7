// Device operations on both routes against the fake edu: reset and hot-reset info, config-space helpers;
// and every failure of mapRegion and enableIrqs leaving nothing behind.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openDevice, PCI_COMMAND } from '../../src/index.js';
import { ClosedError, KernelError, UnsupportedError, UsageError, VfioError } from '../../src/errors.js';
import { VFIO, VFIO_DEVICE_FLAGS } from '../../src/uapi/vfio.js';
import { EDU, TESTDEV } from '../fake-kernel.js';
import { catchError } from '../helpers.js';
import { DEVICE_ROUTES, assertClean, eventfds } from '../devices.js';

for (const r of DEVICE_ROUTES) {
  describe(`reset, hot reset and config space (${r.name})`, () => {
    test('reset() without the RESET flag: UnsupportedError (exit 7) with a hint, and no ioctl', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      const e = catchError(() => dev.reset(), UnsupportedError);
      assert.equal(e.exitCode, 7);
      assert.match(e.message, /0000:00:10\.0 cannot be reset: it has no FLR or PM reset, and is not alone on a bus the kernel could reset/);
      assert.match(e.hint ?? '', /bus reset/);
      assert.ok(!k.ioctlNames().includes('VFIO_DEVICE_RESET'));
      dev.close();
      catchError(() => dev.reset(), ClosedError);
      assertClean(k);
    });

    test('reset() with the RESET flag issues VFIO_DEVICE_RESET; a refusal is a KernelError', () => {
      const k = r.host({ devices: [{ address: EDU, flags: VFIO_DEVICE_FLAGS.PCI | VFIO_DEVICE_FLAGS.RESET }] });
      const dev = openDevice(EDU, { kernel: k });
      assert.deepEqual(dev.info().flags, ['RESET', 'PCI']);
      dev.reset();
      dev.reset();
      assert.equal(k.resetCount(EDU), 2);
      assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_RESET').length, 2);
      k.failNext({ request: VFIO.DEVICE_RESET, errno: 'EAGAIN' });
      const e = catchError(() => dev.reset(), KernelError);
      assert.equal(e.step, 'VFIO_DEVICE_RESET');
      assert.equal(e.errno, 'EAGAIN');
      dev.close();
      assertClean(k);
    });

    test('hotResetInfo(): asks with room for the devices after ENOSPC; addresses formatted', () => {
      const k = r.host({
        devices: [
          { address: '0000:01:00.0', group: 7, hotReset: ['0000:01:00.0', '0000:01:00.1', { address: '0001:1a:1f.7', group: 12 }] },
          { address: '0000:01:00.1', group: 8 },
        ],
      });
      const dev = openDevice('0000:01:00.0', { kernel: k });
      const info = dev.hotResetInfo();
      assert.deepEqual(info.map((d) => d.address), ['0000:01:00.0', '0000:01:00.1', '0001:1a:1f.7']);
      assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO').length, 2);
      if (r.name === 'legacy') {
        assert.deepEqual(info.map((d) => [d.groupId, d.devid]), [[7, null], [8, null], [12, null]]);
      } else {
        // the cdev route names devices by devid in our iommufd: ours by its devid, 0xffffffff (NOT_OWNED) for the others
        assert.deepEqual(info.map((d) => d.groupId), [null, null, null]);
        assert.equal(info[0]!.devid, dev.report.ids.devid);
      }
      dev.close();
      assertClean(k);
    });

    if (r.name === 'iommufd') {
      test('hotResetInfo() on the cdev route: a device of the same iommufd by its devid', () => {
        const k = r.host({
          devices: [
            { address: '0000:01:00.0', group: 7, hotReset: ['0000:01:00.0', '0000:01:00.1'] },
            { address: '0000:01:00.1', group: 8 },
          ],
        });
        const a = openDevice('0000:01:00.0', { kernel: k });
        const b = openDevice('0000:01:00.1', { kernel: k, context: a.context });
        assert.deepEqual(a.hotResetInfo().map((d) => d.devid), [a.report.ids.devid, b.report.ids.devid]);
        b.close();
        a.close();
        assertClean(k);
      });

      test('hotResetInfo() on the cdev route: a device not ours is -1 (VFIO_PCI_DEVID_NOT_OWNED), as documented', () => {
        const k = r.host({ devices: [{ address: '0000:01:00.0', hotReset: ['0000:01:00.0', '0000:01:00.1'] }, { address: '0000:01:00.1' }] });
        const dev = openDevice('0000:01:00.0', { kernel: k });
        try {
          assert.equal(dev.hotResetInfo()[1]!.devid, -1);
        } finally {
          dev.close();
        }
      });
    }

    test('hotResetInfo() where no slot or bus reset is possible: KernelError (ENODEV)', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      const e = catchError(() => dev.hotResetInfo(), KernelError);
      assert.equal(e.errno, 'ENODEV');
      assert.equal(e.step, 'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO');
      dev.close();
      catchError(() => dev.hotResetInfo(), ClosedError);
      assertClean(k);
    });

    test('pciIds(): vendor, device, revision, class, subsystem', () => {
      const k = r.host({ devices: [{ address: EDU }, { address: TESTDEV, id: '1b36:0005' }] });
      const dev = openDevice(EDU, { kernel: k });
      assert.deepEqual(dev.pciIds(), { vendor: 0x1234, device: 0x11e8, revision: 0x10, class: 0x00ff00, subsystemVendor: 0x1af4, subsystem: 0x1100 });
      const other = openDevice(TESTDEV, { kernel: k });
      assert.deepEqual([other.pciIds().vendor, other.pciIds().device], [0x1b36, 0x0005]);
      other.close();
      dev.close();
      assertClean(k);
    });

    test('pciCapabilities(): the list in order; none without the status bit; a loop ends', () => {
      const k = r.host({
        devices: [
          { address: EDU },
          { address: TESTDEV, capabilities: [{ id: 0x01, offset: 0x50 }, { id: 0x05, offset: 0x60 }, { id: 0x10, offset: 0x48 }] },
        ],
      });
      const edu = openDevice(EDU, { kernel: k });
      assert.deepEqual(edu.pciCapabilities(), [{ id: 0x05, offset: 0x40 }]);
      const dev = openDevice(TESTDEV, { kernel: k });
      assert.deepEqual(dev.pciCapabilities(), [{ id: 0x01, offset: 0x50 }, { id: 0x05, offset: 0x60 }, { id: 0x10, offset: 0x48 }]);
      dev.writeConfig(0x49, 1, 0x50); // the last one points back at the first
      assert.deepEqual(dev.pciCapabilities().map((c) => c.offset), [0x50, 0x60, 0x48]);
      dev.writeConfig(0x06, 2, 0); // status: no capability list
      assert.deepEqual(dev.pciCapabilities(), []);
      dev.close();
      edu.close();
      assertClean(k);
    });

    test('command() and setCommand(): bits set and cleared, others kept', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      assert.equal(dev.command(), 0);
      dev.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
      assert.equal(dev.command(), 0x6);
      dev.setCommand(PCI_COMMAND.INTX_DISABLE, PCI_COMMAND.MEMORY);
      assert.equal(dev.command(), 0x404);
      assert.equal(dev.readConfig(0x04, 2), 0x404);
      dev.setCommand(0, 0xffff);
      assert.equal(dev.command(), 0);
      dev.close();
      catchError(() => dev.command(), ClosedError);
      assertClean(k);
    });
  });

  describe(`every failure of mapRegion and enableIrqs leaves nothing behind (${r.name})`, () => {
    const ERRNOS = ['EPERM', 'ENOENT', 'EIO', 'ENOMEM', 'EFAULT', 'EBUSY', 'EINVAL', 'ENOSPC', 'ENOTTY', 'EAGAIN', 'EMFILE', 'ENODEV'] as const;

    test('mapRegion: every errno at GET_REGION_INFO and mmap', () => {
      for (const rule of [{ request: VFIO.DEVICE_GET_REGION_INFO }, { call: 'mmap' as const }]) {
        for (const errno of ERRNOS) {
          const k = r.host();
          const dev = openDevice(EDU, { kernel: k });
          const where = `${JSON.stringify(rule)} ${errno}`;
          try {
            k.failNext({ ...rule, errno });
            const e = catchError(() => dev.mapRegion('BAR0'), VfioError);
            assert.equal(k.pendingFailures().length, 0, where);
            assert.equal(k.liveMappings(), 0, where);
            if ('request' in rule && errno === 'EINVAL') {
              // vfio-pci's answer for a region the device lacks: BAR0 is taken as absent
              assert.ok(e instanceof UsageError, where);
              continue;
            }
            assert.equal(e.errno, errno, where);
            assert.equal(dev.mapRegion('BAR0').read32(0), 0x010000ed, where);
          } finally {
            dev.close();
          }
          assertClean(k, where);
        }
      }
    });

    test('enableIrqs: every errno at GET_IRQ_INFO, the third eventfd and SET_IRQS', () => {
      for (const step of ['VFIO_DEVICE_GET_IRQ_INFO', 'eventfd', 'VFIO_DEVICE_SET_IRQS'] as const) {
        for (const errno of ERRNOS) {
          const k = r.host({ devices: [{ address: EDU, irqs: { msix: 3 } }] });
          const dev = openDevice(EDU, { kernel: k });
          const opened = eventfds(k); // the device's own request channel (REQ)
          const where = `${step} ${errno}`;
          if (step === 'eventfd') {
            // the third of three fails: the two made before it must be closed
            let n = 0;
            k.onCall((c) => {
              if (c.call === 'eventfd' && ++n === 3) k.failNext({ call: 'eventfd', errno });
            });
          } else if (step === 'VFIO_DEVICE_GET_IRQ_INFO') {
            // the third query is MSIX's
            let n = 0;
            k.onCall((c) => {
              if (c.requestName === step && ++n === 3) k.failNext({ request: VFIO.DEVICE_GET_IRQ_INFO, errno });
            });
          } else {
            k.failNext({ request: VFIO.DEVICE_SET_IRQS, errno });
          }
          let error: unknown;
          try {
            try {
              dev.enableIrqs('MSIX');
            } catch (e) {
              error = e;
            }
            assert.ok(error !== undefined, `${where}: enabled`);
            if (step === 'VFIO_DEVICE_GET_IRQ_INFO' && errno === 'EINVAL') {
              // vfio-pci's answer for an index the device lacks: MSIX is taken as absent
              assert.ok(error instanceof UsageError, `${where}: ${String(error)}`);
            } else {
              assert.ok(error instanceof VfioError && error.errno === errno, `${where}: ${String(error)}`);
            }
            assert.equal(eventfds(k), opened, `${where}: eventfds left`);
            assert.equal(k.irqState(EDU).type, 'none', where);
            // the device is still usable
            dev.enableIrqs('MSIX').disable();
          } finally {
            dev.close();
          }
          assertClean(k, where);
        }
      }
    });

    test('a failed eventfd() is reported as a VfioError, not a raw system error', () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      try {
        k.failNext({ call: 'eventfd', errno: 'EMFILE' });
        catchError(() => dev.enableIrqs('MSI'), VfioError);
      } finally {
        dev.close();
      }
    });
  });
}
