// iommufd HW page tables on real kernels: what the IOMMU behind edu reports (VT-d's registers as sysfs
// shows them; virtio-iommu reports nothing), edu's DMA both ways through a HWPT the library allocated
// over the context's IOAS, and dirty tracking refused where the IOMMU has none (QEMU emulates neither
// VT-d's second-level A/D bits nor a virtio-iommu with them); an mdev has no IOMMU of its own.
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { allocDmaBuffer, IommufdContext, openDevice, PCI_COMMAND, UnsupportedError } from '../../src/index.js';
import { CASE, EDU, EDU_BUFFER, eduDma } from './helpers.js';

const CASES = ['iommufd-6.12-intel', 'iommufd-6.12-virtio'];
const skip = !CASES.includes(CASE) && CASES.join(' and ');
const MTTY = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1005';

const sysfsHex = (p: string): bigint => BigInt(`0x${fs.readFileSync(p, 'utf8').trim()}`);

test(`edu through a HWPT of its own: the IOMMU's hardware info; on VT-d, DMA both ways through the IOAS's mappings and back to the IOAS; virtio-iommu refuses a HWPT allocated apart (${CASE})`, { skip }, async () => {
  using dev = openDevice(EDU, { route: 'iommufd' });
  const ctx = dev.context;
  assert.ok(ctx instanceof IommufdContext);
  const info = ctx.hwInfo(dev);
  if (CASE === 'iommufd-6.12-intel') {
    const unit = fs.readdirSync('/sys/class/iommu').find((d) => d.startsWith('dmar'))!;
    assert.equal(info.type, 'INTEL_VTD');
    assert.deepEqual(info.vtd, { capReg: sysfsHex(`/sys/class/iommu/${unit}/intel-iommu/cap`), ecapReg: sysfsHex(`/sys/class/iommu/${unit}/intel-iommu/ecap`) },
      'the registers as the intel-iommu driver shows them in sysfs');
  } else {
    assert.deepEqual([info.type, info.vtd], ['NONE', null], 'virtio-iommu has no hw_info op');
  }
  assert.deepEqual(info.capabilities, [], 'no dirty tracking in QEMU\'s emulated IOMMUs');
  const source = allocDmaBuffer(4096);
  const target = allocDmaBuffer(4096);
  try {
    const pattern = randomBytes(1024);
    pattern.copy(source.bytes);
    const src = ctx.map(source, { limit: 1n << 28n });
    const dst = ctx.map(target, { limit: 1n << 28n });
    if (CASE === 'iommufd-6.12-virtio') {
      // 6.12's virtio-iommu finalises a domain at its first attach: one allocated apart covers nothing yet
      assert.throws(() => ctx.allocHwpt(dev), (e: unknown) => e instanceof UnsupportedError && e.errno === 'EADDRINUSE' && e.step === 'IOMMU_HWPT_ALLOC' && /only when a device attaches/.test(e.message));
      return;
    }
    using hwpt = ctx.allocHwpt(dev);
    assert.notEqual(hwpt.id, dev.report.ids.hwpt, 'not the HWPT the bind got');
    ctx.attach(dev, hwpt);
    dev.setCommand(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
    using bar = dev.mapRegion('BAR0');
    await eduDma(bar, src.iova, EDU_BUFFER, pattern.length, false);
    await eduDma(bar, EDU_BUFFER, dst.iova, pattern.length, true);
    assert.ok(target.bytes.subarray(0, pattern.length).equals(pattern), 'the bytes came back through the HWPT');
    ctx.attach(dev, 'ioas');
    target.bytes.fill(0);
    await eduDma(bar, EDU_BUFFER, dst.iova, pattern.length, true);
    assert.ok(target.bytes.subarray(0, pattern.length).equals(pattern), 'and through the automatic HWPT again');
    dev.setCommand(0, PCI_COMMAND.MASTER);
  } finally {
    for (const m of ctx.mappings()) ctx.unmap(m); // before the buffers go, whatever failed above
    source.free();
    target.free();
  }
});

test(`dirty tracking where the IOMMU has none: no DIRTY_TRACKING HWPT is asked for, and tracking on a plain one answers EOPNOTSUPP (${CASE})`, { skip }, () => {
  using dev = openDevice(EDU, { route: 'iommufd' });
  const ctx = dev.context as IommufdContext;
  assert.throws(() => ctx.allocHwpt(dev, { dirtyTracking: true }), (e: unknown) =>
    e instanceof UnsupportedError && e.errno === null && e.step === 'IOMMU_GET_HW_INFO' && /has no dirty tracking \(IOMMU_GET_HW_INFO capabilities: none\)/.test(e.message));
  using plain = ctx.allocHwpt(dev);
  assert.throws(() => plain.startDirtyTracking(), (e: unknown) => e instanceof UnsupportedError && e.errno === 'EOPNOTSUPP' && e.step === 'IOMMU_HWPT_SET_DIRTY_TRACKING');
  assert.throws(() => plain.dirtyBitmap({ iova: 0n, length: 0x1000n }), (e: unknown) => e instanceof UnsupportedError && e.errno === 'EOPNOTSUPP' && e.step === 'IOMMU_HWPT_GET_DIRTY_BITMAP');
});

test('the real mtty on iommufd has no IOMMU of its own: hardware info and HWPT_ALLOC answer ENOENT', { skip: CASE !== 'iommufd-6.12-mtty' && 'mtty case only' }, () => {
  if (!fs.existsSync(`/sys/bus/mdev/devices/${MTTY}`)) fs.writeFileSync('/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create', MTTY);
  using dev = openDevice(MTTY, { route: 'iommufd' });
  const ctx = dev.context as IommufdContext;
  for (const [fn, step] of [[() => ctx.hwInfo(dev), 'IOMMU_GET_HW_INFO'], [() => ctx.allocHwpt(dev), 'IOMMU_HWPT_ALLOC']] as const) {
    assert.throws(fn, (e: unknown) => e instanceof UnsupportedError && e.errno === 'ENOENT' && e.step === step && /has no IOMMU of its own/.test(e.message));
  }
});
