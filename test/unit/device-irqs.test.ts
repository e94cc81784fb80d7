// Device interrupts on both routes against the fake edu: MSI, INTx with unmask, eventfds on the loop.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openDevice, PCI_COMMAND, type VfioDevice } from '../../src/index.js';
import { ClosedError, KernelError, UsageError } from '../../src/errors.js';
import { VFIO } from '../../src/uapi/vfio.js';
import { EDU, EDU_REG, FakeKernel, type HostOptions } from '../fake-kernel.js';
import { catchError } from '../helpers.js';
import { DEVICE_ROUTES, assertClean, eventfds, tick } from '../devices.js';

const setIrqs = (k: FakeKernel): number => k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_SET_IRQS').length;

for (const r of DEVICE_ROUTES) {
  describe(`interrupts (${r.name})`, () => {
    function open(o: HostOptions = {}): { k: FakeKernel; dev: VfioDevice } {
      const k = r.host(o);
      return { k, dev: openDevice(EDU, { kernel: k }) };
    }

    test('irqs(): INTX, MSI, MSIX, ERR, REQ; ERR absent on a device that is not PCIe', () => {
      const { k, dev } = open();
      assert.deepEqual(dev.irqs(), [
        { index: 0, name: 'INTX', count: 1, eventfd: true, maskable: true, automasked: true, noresize: false },
        { index: 1, name: 'MSI', count: 1, eventfd: true, maskable: false, automasked: false, noresize: true },
        { index: 2, name: 'MSIX', count: 0, eventfd: true, maskable: false, automasked: false, noresize: true },
        { index: 3, name: 'ERR', count: 0, eventfd: false, maskable: false, automasked: false, noresize: false },
        { index: 4, name: 'REQ', count: 1, eventfd: true, maskable: false, automasked: false, noresize: true },
      ]);
      assert.equal(dev.irq('msi').index, 1);
      assert.equal(dev.irq(4).name, 'REQ');
      dev.close();
      assertClean(k);
    });

    test('irqs() on a PCIe device with MSI-X: ERR has one vector', () => {
      const { k, dev } = open({ devices: [{ address: EDU, irqs: { pcie: true, msix: 5, msi: 4 } }] });
      assert.deepEqual(dev.irqs().map((i) => [i.name, i.count]), [['INTX', 1], ['MSI', 4], ['MSIX', 5], ['ERR', 1], ['REQ', 1]]);
      dev.close();
      assertClean(k);
    });

    test('enableIrqs(MSI): vector.wait() resolves with the count when the device fires', async () => {
      const { k, dev } = open();
      const set = dev.enableIrqs('MSI');
      assert.equal(set.info.name, 'MSI');
      assert.equal(set.vectors.length, 1);
      // req: the device's request channel, armed by the library at bind
      assert.deepEqual(k.irqState(EDU), { type: 'msi', wired: 1, masked: false, err: false, req: true });
      assert.equal(eventfds(k), 2, 'the vector\'s eventfd, and the request channel\'s');
      const v = set.vector(0);
      const waiting = v.wait();
      assert.equal(k.keepAliveWatches(), 1, 'watched while someone waits');
      assert.equal(k.raiseIrq(EDU, 'MSI'), true);
      assert.equal(await waiting, 1n);
      assert.equal(k.keepAliveWatches(), 0, 'an idle vector is not watched');
      // interrupts while nobody waits are counted, and the next wait gets them at once
      k.raiseIrq(EDU, 'MSI');
      k.raiseIrq(EDU, 'MSI');
      k.raiseIrq(EDU, 'MSI');
      assert.equal(await v.wait(), 3n);
      assert.equal(v.total, 4n);
      dev.close();
      assertClean(k);
    });

    test('wait({ timeoutMs }) resolves null when nothing fires, and stops watching', async () => {
      const { k, dev } = open();
      const v = dev.enableIrqs('MSI').vector(0);
      assert.equal(await v.wait({ timeoutMs: 15 }), null);
      assert.equal(k.keepAliveWatches(), 0);
      const late = v.wait({ timeoutMs: 1000 });
      k.raiseIrq(EDU, 'MSI');
      assert.equal(await late, 1n, 'an interrupt before the timeout resolves it');
      dev.close();
      assertClean(k);
    });

    test('edu raises its MSI when bus mastering is on (an MSI is a DMA write); without it nothing arrives', async () => {
      const { k, dev } = open();
      const bar = dev.mapRegion('BAR0');
      const v = dev.enableIrqs('MSI').vector(0);
      bar.write32(EDU_REG.IRQ_RAISE, 0x1);
      assert.equal(await v.wait({ timeoutMs: 15 }), null);
      assert.equal(bar.read32(EDU_REG.IRQ_STATUS), 0x1, 'edu raised it');
      bar.write32(EDU_REG.IRQ_ACK, 0x1);
      dev.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
      bar.write32(EDU_REG.IRQ_RAISE, 0x40);
      assert.equal(await v.wait({ timeoutMs: 1000 }), 1n);
      assert.equal(bar.read32(EDU_REG.IRQ_STATUS), 0x40);
      bar.write32(EDU_REG.IRQ_ACK, 0x40);
      assert.equal(bar.read32(EDU_REG.IRQ_STATUS), 0);
      dev.close();
      assertClean(k);
    });

    test('INTx: automasked after it fires; unmask() re-arms it (and fires again while edu still asserts it)', async () => {
      const { k, dev } = open();
      const armed = setIrqs(k); // the request channel's, at bind
      const bar = dev.mapRegion('BAR0');
      const set = dev.enableIrqs('INTX');
      const v = set.vector(0);
      bar.write32(EDU_REG.IRQ_RAISE, 0x1);
      assert.equal(await v.wait({ timeoutMs: 1000 }), 1n);
      assert.equal(k.irqState(EDU).masked, true);
      // still asserted: unmasking fires again at once
      v.unmask();
      assert.equal(await v.wait({ timeoutMs: 1000 }), 1n);
      // acknowledged: unmasking re-arms it quietly
      bar.write32(EDU_REG.IRQ_ACK, 0x1);
      v.unmask();
      assert.equal(k.irqState(EDU).masked, false);
      assert.equal(await v.wait({ timeoutMs: 15 }), null);
      bar.write32(EDU_REG.IRQ_RAISE, 0x2);
      assert.equal(await v.wait({ timeoutMs: 1000 }), 1n);
      assert.equal(setIrqs(k) - armed, 3, 'enable, unmask, unmask');
      set.disable();
      catchError(() => v.unmask(), ClosedError);
      dev.close();
      assertClean(k);
    });

    test('one index at a time: a second one while one is enabled is a UsageError, and nothing is opened', () => {
      const { k, dev } = open();
      const set = dev.enableIrqs('MSI');
      const setIrqs = k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_SET_IRQS').length;
      const e = catchError(() => dev.enableIrqs('INTX'), UsageError);
      assert.match(e.message, /MSI is enabled on 0000:00:10\.0: disable it before enabling INTX/);
      catchError(() => dev.enableIrqs('MSI'), UsageError);
      assert.equal(eventfds(k), 2, 'MSI\'s, and the request channel\'s');
      assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_SET_IRQS').length, setIrqs);
      set.disable();
      dev.enableIrqs('INTX');
      assert.equal(k.irqState(EDU).type, 'intx');
      dev.close();
      assertClean(k);
    });

    test('REQ (device request) is armed at bind and stays alongside MSI (vfio-pci keeps its trigger apart); it is the library\'s', () => {
      const { k, dev } = open();
      try {
        assert.equal(k.irqState(EDU).req, true, 'armed at bind');
        assert.deepEqual(dev.hostChannels, { request: true, error: false }, 'edu is not PCIe: no ERR');
        dev.enableIrqs('MSI');
        assert.equal(k.irqState(EDU).req, true);
        assert.match(catchError(() => dev.enableIrqs('REQ'), UsageError).message, /REQ of 0000:00:10\.0 is the library's request channel: listen for the device's 'request' event/);
      } finally {
        dev.close();
      }
      assert.equal(k.irqState(EDU).req, false, 'unwired at close');
      assertClean(k);
    });

    test('what cannot be enabled is a UsageError: an index out of range, an index without vectors, too many vectors', () => {
      const { k, dev } = open();
      const [eventfdCalls, armed] = [k.calls.filter((c) => c.call === 'eventfd').length, setIrqs(k)];
      assert.match(catchError(() => dev.enableIrqs(7), UsageError).message, /0000:00:10\.0 has no IRQ index 7 \(it has INTX, MSI, MSIX, ERR, REQ\)/);
      catchError(() => dev.enableIrqs('FOO'), UsageError);
      assert.match(catchError(() => dev.enableIrqs('MSIX'), UsageError).message, /0000:00:10\.0 has no MSIX interrupts/);
      catchError(() => dev.enableIrqs('ERR'), UsageError);
      assert.match(catchError(() => dev.enableIrqs('MSI', { count: 2 }), UsageError).message, /MSI of 0000:00:10\.0 has 1 vector\(s\); cannot enable 2/);
      catchError(() => dev.enableIrqs('MSI', { count: 0 }), UsageError);
      assert.equal(k.calls.filter((c) => c.call === 'eventfd').length, eventfdCalls, 'no eventfd made');
      assert.equal(setIrqs(k), armed, 'no VFIO_DEVICE_SET_IRQS issued');
      dev.close();
      assertClean(k);
    });

    test('several MSI-X vectors: each has its own eventfd; vector() out of range is a UsageError', async () => {
      const { k, dev } = open({ devices: [{ address: EDU, irqs: { msix: 4 } }] });
      const set = dev.enableIrqs('MSIX', { count: 3 });
      assert.equal(eventfds(k), 4, 'three vectors\', and the request channel\'s');
      assert.deepEqual(k.irqState(EDU), { type: 'msix', wired: 3, masked: false, err: false, req: true });
      const w = set.vector(2).wait();
      k.raiseIrq(EDU, 'MSIX', 2);
      assert.equal(await w, 1n);
      assert.equal(set.vector(0).total, 0n);
      assert.match(catchError(() => set.vector(3), UsageError).message, /MSIX has 3 vector\(s\) enabled; there is no vector 3/);
      dev.close();
      assertClean(k);
    });

    test('unmask() on MSI is a UsageError (only INTx is unmasked)', () => {
      const { k, dev } = open();
      const v = dev.enableIrqs('MSI').vector(0);
      assert.match(catchError(() => v.unmask(), UsageError).message, /vector 0 is not an INTx line: only INTx is unmasked/);
      dev.close();
      assertClean(k);
    });

    test('disable(): the kernel stops signalling, the eventfds close, waiters are rejected; idempotent', async () => {
      const { k, dev } = open();
      const armed = setIrqs(k);
      const set = dev.enableIrqs('MSI');
      const v = set.vector(0);
      const waiting = v.wait();
      set.disable();
      await assert.rejects(waiting, ClosedError);
      await assert.rejects(v.wait(), ClosedError);
      assert.equal(set.disabled, true);
      assert.equal(eventfds(k), 1, 'only the request channel\'s is left');
      assert.equal(k.keepAliveWatches(), 0);
      await tick(); // the request channel's watch starts when the loop turns after the bind
      assert.equal(k.activeWatches(), 1, 'the request channel\'s watch, which does not keep the loop alive');
      assert.equal(k.irqState(EDU).type, 'none');
      assert.equal(k.raiseIrq(EDU, 'MSI'), false, 'nothing is wired any more');
      set.disable();
      set[Symbol.dispose]();
      assert.equal(setIrqs(k) - armed, 2, 'enable and one disable');
      dev.close();
      assertClean(k);
    });

    test('a refused disable is a KernelError, but the eventfds are closed and the index may be enabled again', () => {
      const { k, dev } = open();
      const set = dev.enableIrqs('MSI');
      k.failNext({ request: VFIO.DEVICE_SET_IRQS, errno: 'EIO' });
      const e = catchError(() => set.disable(), KernelError);
      assert.equal(e.step, 'VFIO_DEVICE_SET_IRQS');
      assert.equal(eventfds(k), 1, 'only the request channel\'s is left');
      dev.enableIrqs('MSI');
      dev.close();
      assertClean(k);
    });

    test('device.close() disables and closes everything: eventfds, watches, waiters, mappings', async () => {
      const { k, dev } = open();
      const bar = dev.mapRegion('BAR0');
      const v = dev.enableIrqs('MSI').vector(0);
      const waiting = v.wait();
      dev.close();
      await assert.rejects(waiting, ClosedError);
      assert.equal(bar.closed, true);
      assert.equal(k.irqState(EDU).type, 'none');
      assertClean(k);
    });

    test('device.close() still closes everything when the kernel refuses the disable', async () => {
      const { k, dev } = open();
      dev.enableIrqs('INTX');
      k.failNext({ request: VFIO.DEVICE_SET_IRQS, errno: 'ENODEV' });
      dev.close();
      await tick();
      assertClean(k);
    });
  });

}
