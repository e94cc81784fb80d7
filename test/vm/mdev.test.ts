// An mdev (QEMU-less, IOMMU-less VFIO device from the mtty sample) binds by UUID on both routes.
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { openDevice, NotVfioDeviceError } from '../../src/index.js';
import { CASE, EDU, json, runCli } from './helpers.js';

const UUID = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1002';
const skip = CASE !== 'iommufd-6.12-mtty' && 'mtty case only';

test('with no IOMMU, edu has no VFIO driver and says so', { skip }, () => {
  assert.throws(() => openDevice(EDU), NotVfioDeviceError);
});

test('an mtty mdev binds by UUID through iommufd, and through legacy', { skip }, () => {
  const create = '/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create';
  if (!fs.existsSync(`/sys/bus/mdev/devices/${UUID}`)) fs.writeFileSync(create, UUID);
  const r = runCli(['bind', UUID, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const report = json<{ route: string; device: string; ids: Record<string, number> }>(r);
  assert.equal(report.route, 'iommufd');
  assert.equal(report.device, UUID);
  using legacy = openDevice(UUID, { route: 'legacy' });
  assert.equal(legacy.route, 'legacy');
  assert.ok(legacy.info().regions > 0);
});

test('mtty reports its migration support (VFIO_DEVICE_FEATURE_MIGRATION) on both routes, as the 6.12 sample sets it', { skip }, () => {
  const create = '/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create';
  if (!fs.existsSync(`/sys/bus/mdev/devices/${UUID}`)) fs.writeFileSync(create, UUID);
  for (const route of ['iommufd', 'legacy'] as const) {
    using dev = openDevice(UUID, { route });
    // samples/vfio-mdev/mtty.c: migration_flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY
    assert.deepEqual(dev.migration(), { flags: ['STOP_COPY', 'P2P', 'PRE_COPY'] }, route);
  }
  const r = runCli(['info', UUID, '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(json<{ migration: unknown }>(r).migration, { flags: ['STOP_COPY', 'P2P', 'PRE_COPY'] });
  assert.equal(json<{ dmaLogging: unknown }>(r).dmaLogging, true, 'mtty has log_ops');
});
