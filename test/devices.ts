// The fake-kernel fixtures the device unit tests share (device-mmio, device-irqs, device-ops).
import assert from 'node:assert/strict';
import { FakeKernel, type HostOptions } from './fake-kernel.js';
import { assertNoLeaks } from './helpers.js';

export const DEVICE_ROUTES = [
  { name: 'iommufd', host: (o: HostOptions = {}) => FakeKernel.host(o) },
  { name: 'legacy', host: (o: HostOptions = {}) => FakeKernel.host({ kernel: 'stock', ...o }) },
] as const;

/** No fd, no mapping and no eventfd watch left. */
export function assertClean(k: FakeKernel, what = ''): void {
  assertNoLeaks(k, what);
  assert.equal(k.liveMappings(), 0, `mappings left ${what}`);
  assert.equal(k.activeWatches(), 0, `eventfd watches left ${what}`);
}

export const eventfds = (k: FakeKernel): number => k.openPaths().filter((p) => p === 'anon_inode:[eventfd]').length;
export const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
