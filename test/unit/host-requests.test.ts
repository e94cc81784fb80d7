// The host's side channels against the fake kernel: the request interrupt (REQ) armed at bind, the
// default release when nothing listens, a listener's own release, the error interrupt (ERR) on a PCIe
// device, what a released device (and the context it owned) answers afterwards, and the migration
// probe (VFIO_DEVICE_FEATURE) on an mdev and on edu.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { allocDmaBuffer, createContext, openDevice, type VfioDevice } from '../../src/index.js';
import { DeviceReleasedError, ExitCode, KernelError } from '../../src/errors.js';
import { VFIO } from '../../src/uapi/vfio.js';
import { EDU, FakeKernel, TESTDEV } from '../fake-kernel.js';
import { catchError } from '../helpers.js';
import { DEVICE_ROUTES, assertClean, eventfds, tick } from '../devices.js';

const MDEV = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
const released = (dev: VfioDevice): Promise<{ device: string; reason: string }> => new Promise((resolve) => dev.once('released', resolve));

for (const r of DEVICE_ROUTES) {
  describe(`the host's requests (${r.name})`, () => {
    test('REQ is armed at bind, on an eventfd whose watch (from the next turn of the loop) does not keep the process alive', async () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      assert.equal(k.irqState(EDU).req, true);
      assert.deepEqual(dev.hostChannels, { request: true, error: false });
      assert.equal(eventfds(k), 1);
      assert.equal(k.activeWatches(), 0, 'the watch starts when the loop turns');
      await tick();
      assert.equal(k.activeWatches(), 1);
      assert.equal(k.keepAliveWatches(), 0);
      dev.close();
      assert.equal(k.irqState(EDU).req, false);
      assertClean(k);
    });

    test('a bind closed before the loop turns never starts a watch; a request made before the watch starts is heard', async () => {
      const k = r.host();
      const warnings: Error[] = [];
      const onWarning = (w: Error): number => warnings.push(w);
      process.on('warning', onWarning);
      const fdsBefore = k.openFds();
      openDevice(EDU, { kernel: k }).close();
      await tick();
      await tick();
      process.off('warning', onWarning);
      assert.equal(k.startedWatches(), 0);
      assert.deepEqual(warnings.map((w) => w.message), [], 'no start ran after close (it would watch a closed, or reused, fd number)');
      assert.equal(k.openFds(), fdsBefore);
      assertClean(k);
      const dev = openDevice(EDU, { kernel: k });
      const heard: number[] = [];
      dev.on('request', (req) => heard.push(req.count));
      assert.equal(k.raiseIrq(EDU, 'REQ'), true, 'the host asks at once, before any watch');
      await tick();
      await tick();
      assert.deepEqual(heard, [1], 'the eventfd held the signal until the watch read it');
      dev.close();
      assertClean(k);
    });

    test('a watch that cannot start is a process warning naming the device and what goes unheard', async () => {
      const k = r.host();
      k.failNext({ call: 'watch', errno: 'ENOMEM' });
      const warned = new Promise<Error>((resolve) => process.once('warning', resolve));
      const dev = openDevice(EDU, { kernel: k });
      const w = await warned;
      assert.equal((w as Error & { code?: string }).code, 'VFIO_BIND_WATCH_FAILED');
      assert.match(w.message, /0000:00:10\.0: the request channel's eventfd cannot be watched \(.*ENOMEM.*\): the host's requests for the device go unanswered until it is closed/);
      assert.equal(k.activeWatches(), 0);
      assert.equal(k.irqState(EDU).req, true, "the channel stays wired: the host's unbind does not log 'blocked'");
      dev.close();
      assertClean(k);
    });

    test('nothing listens: the device is released after requestGraceMs, with everything it holds', async () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k, requestGraceMs: 5 });
      const bar = dev.mapRegion('BAR0');
      const vector = dev.enableIrqs('MSI').vector(0);
      const waiting = vector.wait();
      const ctx = dev.context;
      const buf = allocDmaBuffer(4096, { kernel: k });
      ctx.map(buf);
      const gone = released(dev);
      assert.equal(k.raiseIrq(EDU, 'REQ'), true, 'the host asks');
      await tick();
      assert.equal(dev.closed, false, 'not before the grace period');
      const event = await gone;
      assert.equal(event.device, EDU);
      assert.match(event.reason, /the host asked for 0000:00:10\.0 back/);
      assert.equal(dev.closed, true);
      assert.equal(ctx.closed, true, 'the context made for it went with it');
      // every later call says why, as a typed error with its exit code
      for (const call of [() => dev.readConfig(0, 2), () => dev.regions(), () => bar.read32(0), () => ctx.map(buf)]) {
        const e = catchError(call, DeviceReleasedError);
        assert.equal(e.exitCode, ExitCode.RELEASED);
        assert.match(e.message, /the host asked for 0000:00:10\.0 back/);
      }
      await assert.rejects(waiting, DeviceReleasedError);
      buf.free();
      assertClean(k);
      assert.deepEqual(k.iommuMappings(), []);
    });

    test('a listener decides: release() releases at once; asked again, the count grows', async () => {
      const k = r.host();
      const dev = openDevice(EDU, { kernel: k });
      const requests: number[] = [];
      dev.on('request', (req) => {
        requests.push(req.count);
        if (req.count === 2) req.release();
      });
      k.raiseIrq(EDU, 'REQ');
      await tick();
      await tick();
      assert.deepEqual(requests, [1]);
      assert.equal(dev.closed, false, 'the listener did not release it yet');
      const gone = released(dev);
      k.raiseIrq(EDU, 'REQ'); // vfio-pci asks again every 10 s
      await gone;
      assert.deepEqual(requests, [1, 2]);
      assert.equal(dev.closed, true);
      catchError(() => dev.info(), DeviceReleasedError);
      assertClean(k);
    });

    test('a shared context survives the release of one of its devices, for the others', async () => {
      const k = r.host({ devices: [{ address: EDU, group: 3 }, { address: TESTDEV, group: 4 }] });
      const ctx = createContext(r.name, { kernel: k });
      const a = openDevice(EDU, { kernel: k, context: ctx, requestGraceMs: 0 });
      const b = openDevice(TESTDEV, { kernel: k, context: ctx });
      const buf = allocDmaBuffer(4096, { kernel: k });
      const m = ctx.map(buf);
      const vendor = b.readConfig(0, 2);
      const gone = released(a);
      k.raiseIrq(EDU, 'REQ');
      await gone;
      assert.equal(a.closed, true);
      assert.equal(ctx.closed, false);
      assert.equal(b.readConfig(0, 2), vendor, 'the other device works');
      assert.deepEqual(ctx.mappings().map((x) => x.iova), [m.iova], 'the mapping stays');
      ctx.unmap(m);
      buf.free();
      ctx.close();
      assertClean(k);
    });

    test('ERR on a PCIe device: a device-error event (not Node\'s \'error\'), and the device stays', async () => {
      const k = r.host({ devices: [{ address: EDU, irqs: { pcie: true } }] });
      const dev = openDevice(EDU, { kernel: k });
      assert.deepEqual(dev.hostChannels, { request: true, error: true });
      assert.equal(k.irqState(EDU).err, true);
      k.raiseIrq(EDU, 'ERR');
      await tick();
      await tick(); // nobody listens: nothing thrown, nothing closed
      assert.equal(dev.closed, false);
      const seen = new Promise<number>((resolve) => dev.once('device-error', (e) => resolve(e.count)));
      k.raiseIrq(EDU, 'ERR');
      assert.equal(await seen, 2);
      assert.equal(eventfds(k), 2);
      dev.close();
      assertClean(k);
    });

    test('a kernel that refuses to arm REQ fails the bind, leaving nothing open', () => {
      const k = r.host();
      k.failNext({ request: VFIO.DEVICE_SET_IRQS, errno: 'EIO' });
      const e = catchError(() => openDevice(EDU, { kernel: k }), KernelError);
      assert.equal(e.step, 'VFIO_DEVICE_SET_IRQS');
      assert.equal(e.errno, 'EIO');
      assertClean(k);
      openDevice(EDU, { kernel: k }).close(); // nothing left claimed either
      assertClean(k);
    });
  });
}

describe('the host\'s channels and migration on an mdev', () => {
  test('mtty has no REQ or ERR (its GET_IRQ_INFO answers EINVAL): no channel, no eventfd', () => {
    const k = FakeKernel.host({ iommu: 'none', devices: [], mdevs: [{ uuid: MDEV }] });
    const dev = openDevice(MDEV, { kernel: k });
    assert.deepEqual(dev.hostChannels, { request: false, error: false });
    assert.equal(eventfds(k), 0);
    dev.close();
    assertClean(k);
  });

  test('VFIO_DEVICE_FEATURE: mtty reports STOP_COPY, P2P, PRE_COPY; a device without a migration driver none', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU }], mdevs: [{ uuid: MDEV }, { uuid: MDEV.replace(/1$/, '2'), migration: null }] });
    for (const [spec, want] of [[MDEV, { flags: ['STOP_COPY', 'P2P', 'PRE_COPY'] }], [MDEV.replace(/1$/, '2'), null], [EDU, null]] as const) {
      const dev = openDevice(spec, { kernel: k });
      assert.deepEqual(dev.migration(), want, spec);
      dev.close();
    }
    // the probe first (PROBE|GET), then the GET for the flags, only where the probe said yes
    assert.equal(k.ioctlNames().filter((n) => n === 'VFIO_DEVICE_FEATURE').length, 4);
    assertClean(k);
  });
});
