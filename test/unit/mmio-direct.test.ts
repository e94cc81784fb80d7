// Register access through typed-array views (RegionMapping with Kernel.mmioDirect): the same checks
// and the same values as the addon call per access, and no addon call. That each access stays one
// load or store of its width in V8 is proven on a real kernel (test/vm/mmio-direct.test.ts); here the
// fake lets plain-memory BARs be accessed directly, as a real kernel's mappings are.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openDevice, type RegionMapping, type VfioDevice } from '../../src/index.js';
import { ClosedError, UsageError } from '../../src/errors.js';
import { VFIO_REGION_INFO_FLAG as F } from '../../src/uapi/vfio.js';
import { EDU, EDU_REG, FakeKernel } from '../fake-kernel.js';
import { catchError } from '../helpers.js';
import { assertClean } from '../devices.js';

const BAR2 = { 2: { size: 0x4000, flags: F.READ | F.WRITE | F.MMAP } };

function open(direct: boolean): { k: FakeKernel; dev: VfioDevice } {
  const k = FakeKernel.host({ devices: [{ address: EDU, id: '1b36:0005', regions: BAR2 }] });
  k.directMmio = direct;
  return { k, dev: openDevice(EDU, { kernel: k }) };
}

const isOutOfRange = (e: unknown): boolean => e instanceof RangeError && (e as { code?: string }).code === 'ERR_OUT_OF_RANGE';

/** every bad offset the addon's register_at refuses, at each width */
const BAD: [string, (bar: RegionMapping) => unknown][] = [
  ['read8(0x4000)', (b) => b.read8(0x4000)],
  ['read16(1)', (b) => b.read16(1)],
  ['read32(0x3ffe)', (b) => b.read32(0x3ffe)],
  ['read32(2)', (b) => b.read32(2)],
  ['read32(-4)', (b) => b.read32(-4)],
  ['read32(1.5)', (b) => b.read32(1.5)],
  ['read32(NaN)', (b) => b.read32(NaN)],
  ['read32("4")', (b) => b.read32('4' as unknown as number)],
  ['read64(0x3ffc)', (b) => b.read64(0x3ffc)],
  ['read64(4)', (b) => b.read64(4)],
  ['write8(0x4000)', (b) => b.write8(0x4000, 0)],
  ['write16(0x3fff)', (b) => b.write16(0x3fff, 0)],
  ['write32(0x4000)', (b) => b.write32(0x4000, 0)],
  ['write64(0x3ff8 + 4)', (b) => b.write64(0x3ffc, 0n)],
];

describe('MMIO through typed-array views', () => {
  test('a mapping the kernel seam allows is accessed directly: every width, little-endian, no addon call', () => {
    const { k, dev } = open(true);
    const bar = dev.mapRegion('BAR2');
    assert.equal(bar.access, 'direct');
    bar.write64(8, 0x0102030405060708n);
    assert.equal(bar.read8(8), 0x08);
    assert.equal(bar.read16(8), 0x0708);
    assert.equal(bar.read32(12), 0x01020304);
    assert.equal(bar.read64(8), 0x0102030405060708n);
    bar.write8(0, 0x1ff);
    bar.write16(2, -1);
    bar.write32(4, -2);
    assert.deepEqual([...new Uint8Array(bar.arrayBuffer, 0, 8)], [0xff, 0, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff], 'stores convert as the masks of the call path do');
    bar.write64(16, -1n);
    assert.equal(bar.read64(16), 0xffff_ffff_ffff_ffffn);
    assert.equal(bar.read32(0x3ffc), 0, 'the last register');
    assert.throws(() => bar.write64(16, 1 as unknown as bigint), TypeError, 'a 64-bit store takes a bigint, as the call path does');
    assert.equal(k.mmioLog.length, 0, 'no access went through the addon');
    dev.close();
    assertClean(k);
  });

  test('bad offsets: the same RangeError (ERR_OUT_OF_RANGE) as the addon call, and no access', () => {
    for (const direct of [true, false]) {
      const { k, dev } = open(direct);
      const bar = dev.mapRegion('BAR2');
      assert.equal(bar.access, direct ? 'direct' : 'call');
      bar.write32(0x3ffc, 0x11223344);
      const before = new Uint8Array(bar.arrayBuffer).slice();
      const log = k.mmioLog.length;
      for (const [name, fn] of BAD) assert.throws(() => fn(bar), isOutOfRange, `${name} (${bar.access})`);
      assert.deepEqual(new Uint8Array(bar.arrayBuffer), before, 'nothing was stored');
      assert.equal(k.mmioLog.length, log);
      dev.close();
      assertClean(k);
    }
  });

  test('a read-only mapping: reads direct, writes a UsageError before any store', () => {
    const { k, dev } = open(true);
    const bar = dev.mapRegion('BAR2', { writable: false });
    assert.equal(bar.access, 'direct');
    for (const write of [() => bar.write8(0, 1), () => bar.write16(0, 1), () => bar.write32(0, 1), () => bar.write64(0, 1n)]) {
      assert.match(catchError(write, UsageError).message, /the mapping of BAR2 is read-only/);
    }
    assert.equal(bar.read32(0), 0);
    dev.close();
    assertClean(k);
  });

  test('after close: ClosedError at every width, the views are dropped, and the raw views are empty', () => {
    const { k, dev } = open(true);
    const bar = dev.mapRegion('BAR2');
    const raw = new Uint32Array(bar.arrayBuffer);
    bar.close();
    assert.equal(raw.length, 0);
    assert.equal(bar.access, 'call');
    for (const access of [() => bar.read8(0), () => bar.read16(0), () => bar.read32(0), () => bar.read64(0),
      () => bar.write8(0, 0), () => bar.write16(0, 0), () => bar.write32(0, 0), () => bar.write64(0, 0n)]) {
      catchError(access, ClosedError);
    }
    const second = dev.mapRegion('BAR2');
    dev.close();
    catchError(() => second.read32(0), ClosedError);
    assertClean(k);
  });

  test("access: 'call' keeps every access an addon call; edu's register model always does; a bad mode is a UsageError", () => {
    const { k, dev } = open(true);
    const bar = dev.mapRegion('BAR2', { access: 'call' });
    assert.equal(bar.access, 'call');
    bar.write32(4, 7);
    assert.equal(bar.read32(4), 7);
    assert.deepEqual(k.mmioLog.map((a) => [a.op, a.offset, a.width]), [['write', 4, 4], ['read', 4, 4]]);
    assert.match(catchError(() => dev.mapRegion('BAR2', { access: 'views' as 'call' }), UsageError).message, /access must be 'auto' or 'call', not "views"/);
    dev.close();
    assertClean(k);

    const edu = FakeKernel.host();
    edu.directMmio = true;
    const eduDev = openDevice(EDU, { kernel: edu });
    const eduBar = eduDev.mapRegion('BAR0');
    assert.equal(eduBar.access, 'call');
    assert.equal(eduBar.read32(EDU_REG.ID), 0x010000ed);
    eduDev.close();
  });

  test('barriers reach the kernel seam in program order with the register accesses', () => {
    const { k, dev } = open(false);
    const bar = dev.mapRegion('BAR2');
    bar.write32(0, 1);
    bar.dmaWriteBarrier();
    bar.write32(4, 2);
    bar.read32(4);
    bar.dmaReadBarrier();
    assert.deepEqual(k.barriers, [{ kind: 'write', at: 1 }, { kind: 'read', at: 3 }]);
    dev.close();
    assertClean(k);
  });
});
