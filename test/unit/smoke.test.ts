// src/host/smoke.ts on the fake: bind, ids, regions, IRQs, one DMA page mapped and unmapped, close; a
// failure is a result with the error's kind, hint and exit code (never a throw), and the exit status of
// a run is its first failure's.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { smokeExitCode, smokeTest, type SmokeResult } from '../../src/host/smoke.js';
import { ExitCode } from '../../src/errors.js';
import { EDU, FakeKernel } from '../fake-kernel.js';
import { assertNoLeaks } from '../helpers.js';

const NIC = '0000:00:12.0';

/** nothing of the smoke test is left: fds, mappings, IOMMU mappings, pinned pages, watches */
function assertClean(k: FakeKernel): void {
  assertNoLeaks(k);
  assert.equal(k.liveMappings(), 0, 'DMA page freed');
  assert.deepEqual(k.iommuMappings(), [], 'IOMMU mapping removed');
  assert.equal(k.activeWatches(), 0);
  assert.equal(k.deviceOpenCount(EDU), 0);
}

describe('smoke: PASS', () => {
  test('iommufd route: ids from config space, regions, IRQs, a DMA page mapped (IOAS_MAP) and unmapped (IOAS_UNMAP)', () => {
    const k = FakeKernel.host();
    const r = smokeTest(k, '00:10.0');
    assert.deepEqual(r, {
      device: EDU, ok: true, route: 'iommufd', ids: '1234:11e8',
      regions: 2, // BAR0 and CONFIG (the others have size 0; VGA is absent)
      irqs: 3, // INTx, MSI, REQ (edu is not PCIe: no ERR)
      dma: r.dma, error: null,
    });
    assert.match(r.dma ?? '', /^0x[0-9a-f]+$/);
    const names = k.ioctlNames();
    assert.equal(names.filter((n) => n === 'IOMMU_IOAS_MAP').length, 1);
    assert.equal(names.filter((n) => n === 'IOMMU_IOAS_UNMAP').length, 1);
    assert.ok(names.indexOf('IOMMU_IOAS_MAP') < names.indexOf('IOMMU_IOAS_UNMAP'));
    assert.equal(BigInt(r.dma!) % 4096n, 0n);
    assertClean(k);
  });

  test('legacy route (stock kernel): VFIO_IOMMU_MAP_DMA then VFIO_IOMMU_UNMAP_DMA', () => {
    const k = FakeKernel.host({ kernel: 'stock' });
    const r = smokeTest(k, EDU);
    assert.equal(r.ok, true, JSON.stringify(r.error));
    assert.equal(r.route, 'legacy');
    assert.match(r.dma ?? '', /^0x[0-9a-f]+$/);
    const names = k.ioctlNames();
    assert.ok(names.includes('VFIO_IOMMU_MAP_DMA') && names.includes('VFIO_IOMMU_UNMAP_DMA'));
    assertClean(k);
  });

  test('route legacy forced on an iommufd kernel', () => {
    const k = FakeKernel.host();
    const r = smokeTest(k, EDU, { route: 'legacy' });
    assert.equal(r.route, 'legacy');
    assert.equal(r.ok, true);
    assertClean(k);
  });

  test('noiommu: PASS with dma "skipped (noiommu)", no DMA ioctl', () => {
    const k = FakeKernel.host({ iommu: 'noiommu' });
    const r = smokeTest(k, EDU);
    assert.equal(r.ok, true, JSON.stringify(r.error));
    assert.equal(r.route, 'legacy');
    assert.equal(r.dma, 'skipped (noiommu)');
    assert.ok(!k.ioctlNames().some((n) => /MAP_DMA|IOAS_MAP/.test(n)));
    assertClean(k);
  });
});

describe('smoke: FAIL', () => {
  test('busy (another process holds the group): ok false, kind busy, exit 4, the device released', () => {
    const k = FakeKernel.host().holdGroupElsewhere(3);
    const r = smokeTest(k, EDU);
    assert.equal(r.ok, false);
    assert.equal(r.route, null);
    assert.equal(r.dma, null);
    assert.equal(r.error?.kind, 'busy');
    assert.equal(r.error?.exit_code, ExitCode.BUSY);
    assert.match(r.error?.message ?? '', /in use by another process/);
    assert.match(r.error?.hint ?? '', /fuser/);
    assert.equal(smokeExitCode([r]), 4);
    assertNoLeaks(k);
  });

  test('a DMA failure after bind: ok false with the route known, and the device closed', () => {
    const k = FakeKernel.host();
    k.ipcLock = false;
    k.setMemlock(0);
    const r = smokeTest(k, EDU);
    assert.equal(r.ok, false);
    assert.equal(r.route, 'iommufd');
    assert.equal(r.ids, '1234:11e8');
    assert.equal(r.dma, null);
    assert.equal(r.error?.exit_code, ExitCode.KERNEL_REFUSED);
    assert.match(r.error?.hint ?? '', /ulimit -l/);
    assertClean(k);
  });

  test('a bad spec: kind usage, exit 2, the spec kept as the device name', () => {
    const r = smokeTest(FakeKernel.host(), '00:10.8');
    assert.equal(r.device, '00:10.8');
    assert.equal(r.error?.kind, 'usage');
    assert.equal(r.error?.exit_code, ExitCode.USAGE);
  });

  test('a device on its host driver: not-vfio, exit 3', () => {
    const k = FakeKernel.host({ devices: [{ address: NIC, id: '8086:10d3', driver: 'e1000e' }] });
    const r = smokeTest(k, NIC);
    assert.equal(r.error?.kind, 'not-vfio');
    assert.equal(r.error?.exit_code, 3);
  });
});

describe('smokeExitCode', () => {
  const pass = (device: string): SmokeResult => ({ device, ok: true, route: 'iommufd', ids: '1234:11e8', regions: 2, irqs: 3, dma: '0x1000', error: null });
  const fail = (device: string, kind: string, exit: 2 | 3 | 4 | 5 | 6 | 7): SmokeResult => ({
    device, ok: false, route: null, ids: null, regions: null, irqs: null, dma: null, error: { kind, message: kind, hint: null, exit_code: exit },
  });

  test('0 when every device passes (and for no device at all)', () => {
    assert.equal(smokeExitCode([pass('a'), pass('b')]), 0);
    assert.equal(smokeExitCode([]), 0);
  });

  test('the first failure\'s exit code, whatever follows', () => {
    assert.equal(smokeExitCode([pass('a'), fail('b', 'busy', 4), fail('c', 'not-found', 3)]), 4);
    assert.equal(smokeExitCode([fail('c', 'group-not-viable', 3), fail('b', 'busy', 4)]), 3);
    assert.equal(smokeExitCode([fail('x', 'no-route', 6), pass('a')]), 6);
  });

  test('real results of several devices: the first failing one decides', () => {
    const k = FakeKernel.host({ devices: [{ address: EDU, group: 3 }, { address: '0000:00:11.0', group: 4 }] }).holdGroupElsewhere(4);
    const results = [smokeTest(k, EDU), smokeTest(k, '0000:00:11.0'), smokeTest(k, '0000:00:1f.7')];
    assert.deepEqual(results.map((r) => r.ok), [true, false, false]);
    assert.equal(smokeExitCode(results), ExitCode.BUSY);
    assertNoLeaks(k);
  });
});
