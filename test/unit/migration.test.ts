// VFIO migration v2 against the fake kernel's mtty-like migration driver (test/fake/migration.ts), on
// both routes: the state machine and its sessions, the save and load streams, PRE_COPY, the streams a
// device refuses, the ERROR state no test-bed device reaches, and what is left once it is all closed.
// The VM suite (test/vm/migration.test.ts) proves the same on the real mtty.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { openDevice, type VfioDevice } from '../../src/index.js';
import { ClosedError, ExitCode, MigrationRefusedError, MigrationStreamError, UnsupportedError, UsageError } from '../../src/errors.js';
import { EDU, FakeKernel, HEADER_BYTES, MTTY_MAGIC, PORT_BYTES } from '../fake-kernel.js';
import { catchError } from '../helpers.js';
import { DEVICE_ROUTES, assertClean } from '../devices.js';

const SRC = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
const DST = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1002';
const ONE_PORT = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1003';

async function saveAll(dev: VfioDevice, options: Parameters<VfioDevice['migrator']['save']>[0] = {}): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await pipeline(dev.migrator.save(options), new Writable({ write(c: Buffer, _e, cb) { chunks.push(c); cb(); } }));
  return Buffer.concat(chunks);
}

const loadAll = (dev: VfioDevice, data: Buffer | Buffer[], options = {}): Promise<void> =>
  pipeline(Readable.from(Array.isArray(data) ? data : [data]), dev.migrator.load(options));

const migrationFds = (k: FakeKernel): number => k.openPaths().filter((p) => p === 'anon_inode:mtty_mig').length;

for (const r of DEVICE_ROUTES) {
  describe(`migration v2 (${r.name})`, () => {
    const host = (): FakeKernel => r.host({ iommu: 'none', devices: [{ address: EDU }], mdevs: [{ uuid: SRC }, { uuid: DST }, { uuid: ONE_PORT, ports: 1 }] });

    test('save from one device and load into another: the state moves, the states are STOP and RUNNING, nothing is left open', async () => {
      const k = host();
      k.migration(SRC).payload.fill(0).write('serial state', 3);
      const src = openDevice(SRC, { kernel: k });
      const dst = openDevice(DST, { kernel: k });
      assert.equal(src.migrator.dataSize(), BigInt(HEADER_BYTES + 2 * PORT_BYTES));
      const data = await saveAll(src);
      assert.equal(data.length, HEADER_BYTES + 2 * PORT_BYTES);
      assert.equal(data.readBigUInt64LE(0), MTTY_MAGIC);
      assert.equal(src.migrator.state(), 'STOP');
      assert.equal(k.migration(SRC).state, 'STOP');
      assert.equal(src.migrator.session, null);
      assert.equal(migrationFds(k), 0);
      await loadAll(dst, [data.subarray(0, 5), data.subarray(5, 40), data.subarray(40)]); // segmentation need not be kept
      assert.equal(k.migration(DST).state, 'RUNNING');
      assert.deepEqual(k.migration(DST).payload, k.migration(SRC).payload);
      src.close();
      dst.close();
      assert.equal(k.migration(SRC).liveFiles + k.migration(DST).liveFiles, 0);
      assertClean(k);
    });

    test('PRE_COPY: the header while the device runs, precopy info, then STOP_COPY on the same session', async () => {
      for (const enomsg of [false, true]) {
        const k = host();
        k.migration(SRC).enomsg = enomsg;
        k.migration(SRC).payload.fill(7);
        const src = openDevice(SRC, { kernel: k });
        const save = src.migrator.save({ precopy: true });
        const infos: unknown[] = [];
        save.on('precopy', (i) => infos.push(i));
        const chunks: Buffer[] = [];
        for await (const c of save) chunks.push(c as Buffer);
        assert.deepEqual(infos, [{ initialBytes: 0n, dirtyBytes: 0n }], `enomsg ${enomsg}`);
        assert.equal(save.precopyBytes, HEADER_BYTES);
        assert.equal(save.bytes, HEADER_BYTES + 2 * PORT_BYTES);
        assert.equal(src.migrator.state(), 'STOP');
        const dst = openDevice(DST, { kernel: k });
        await loadAll(dst, Buffer.concat(chunks));
        assert.deepEqual(k.migration(DST).payload, k.migration(SRC).payload);
        src.close();
        dst.close();
        assertClean(k);
      }
    });

    test('setState: sessions open with the arc that starts them, continue in their group, and close when it ends', () => {
      const k = host();
      using dev = openDevice(SRC, { kernel: k });
      const pre = dev.migrator.setState('PRE_COPY');
      assert.ok(pre && pre.direction === 'save');
      assert.deepEqual(dev.migrator.precopyInfo(), { initialBytes: BigInt(HEADER_BYTES), dirtyBytes: 0n });
      assert.equal(dev.migrator.setState('STOP_COPY'), pre, 'PRE_COPY -> STOP_COPY keeps the session');
      // STOP_COPY -> PRE_COPY is not an arc, and 6.12 would never return from it (the fake throws if asked)
      const e = catchError(() => dev.migrator.setState('PRE_COPY'), MigrationRefusedError);
      assert.equal(e.errno, null);
      assert.equal(e.state, 'STOP_COPY');
      assert.equal(e.step, 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE');
      assert.match(e.message, /cannot move from STOP_COPY to PRE_COPY: the uAPI has no arc.*still in STOP_COPY/);
      // and STOP_COPY -> PRE_COPY_P2P likewise
      const p2p = catchError(() => dev.migrator.setState('PRE_COPY_P2P'), MigrationRefusedError);
      assert.equal(p2p.state, 'STOP_COPY');
      assert.equal(dev.migrator.session, pre, 'still in the saving group: the session goes on');
      assert.equal(dev.migrator.setState('STOP'), null);
      assert.equal(pre.closed, true);
      assert.equal(migrationFds(k), 0);
      assert.equal(dev.migrator.setState('RUNNING'), null);
      assert.throws(() => dev.migrator.setState('ERROR'), UsageError);
      assert.throws(() => dev.migrator.precopyInfo(), UsageError);
    });

    test('ERROR, which mtty never enters: the refusal names it, and recover() resets the device to RUNNING', () => {
      const k = host();
      using dev = openDevice(SRC, { kernel: k });
      k.migration(SRC).failArc('RUNNING_P2P', 'STOP', 'EIO', true);
      const e = catchError(() => dev.migrator.setState('STOP_COPY'), MigrationRefusedError);
      assert.deepEqual([e.from, e.target, e.state, e.errno], ['RUNNING', 'STOP_COPY', 'ERROR', 'EIO']);
      assert.match(e.hint ?? '', /recover\(\)/);
      assert.equal(e.exitCode, ExitCode.KERNEL_REFUSED);
      // from ERROR every arc is refused (without asking the kernel, which would WARN), until the reset
      const stuck = catchError(() => dev.migrator.setState('RUNNING'), MigrationRefusedError);
      assert.match(stuck.message, /leaves it only by a reset/);
      assert.throws(() => dev.migrator.save(), UsageError);
      assert.equal(dev.migrator.recover(), 'RUNNING');
      assert.equal(k.resetCount(SRC), 1);
      assert.equal(migrationFds(k), 0);
    });

    test('streams the device refuses: truncated, another port count, random bytes, too long; each typed, and a good stream loads after', async () => {
      const k = host();
      k.migration(SRC).payload.fill(0x5a);
      k.migration(ONE_PORT).payload.fill(0x11);
      let good: Buffer;
      let onePort: Buffer;
      {
        using src = openDevice(SRC, { kernel: k });
        good = await saveAll(src, { after: 'RUNNING' });
        using one = openDevice(ONE_PORT, { kernel: k });
        onePort = await saveAll(one);
      }
      const random = Buffer.from(Array.from({ length: good.length }, (_, i) => (i * 131 + 7) & 0xff));
      const bad: [string, Buffer, 'write' | 'complete', string][] = [
        ['truncated', good.subarray(0, good.length - 1), 'complete', 'EINVAL'],
        ['another port count', onePort, 'write', 'EFAULT'],
        ['random bytes', random, 'write', 'EFAULT'],
        ['too long', Buffer.concat([good, Buffer.alloc(1)]), 'write', 'ENOMEM'],
      ];
      for (const [what, data, phase, errno] of bad) {
        const dst = openDevice(DST, { kernel: k });
        const e = await loadAll(dst, data).then(() => null, (err: unknown) => err);
        assert.ok(e instanceof MigrationStreamError, `${what}: ${String(e)}`);
        assert.equal(e.phase, phase, what);
        assert.equal(e.errno, errno, what);
        assert.equal(e.state, 'RESUMING', what);
        assert.equal(e.exitCode, ExitCode.STREAM_REFUSED);
        assert.equal(migrationFds(k), 0, `${what}: the session's fd is closed`);
        dst.close();
        assertClean(k, what);
        // closed in RESUMING, opened again: load() resets the abandoned resume first (mtty would
        // dereference a NULL file at RESUMING -> STOP, which the fake turns into an exception)
        const again = openDevice(DST, { kernel: k });
        await loadAll(again, good);
        assert.equal(k.migration(DST).state, 'RUNNING', what);
        assert.deepEqual(k.migration(DST).payload, k.migration(SRC).payload, what);
        k.migration(DST).payload.fill(0);
        again.close();
      }
      assert.equal(k.migration(DST).liveFiles, 0);
      assertClean(k);
    });

    test('a save or a resume another holder left unfinished (the device closed in PRE_COPY, STOP_COPY or RESUMING) is ended before a new one', async () => {
      const k = host();
      for (const state of ['PRE_COPY', 'STOP_COPY', 'RESUMING'] as const) {
        {
          using dev = openDevice(SRC, { kernel: k });
          if (state === 'RESUMING') dev.migrator.setState('STOP');
          dev.migrator.setState(state);
        }
        assert.equal(k.migration(SRC).state, state, 'closing the device keeps its migration state, as mtty does');
        using dev = openDevice(SRC, { kernel: k });
        if (state === 'RESUMING') {
          using other = openDevice(DST, { kernel: k });
          await loadAll(dev, await saveAll(other));
          assert.equal(k.migration(SRC).state, 'RUNNING', state);
        } else {
          assert.equal((await saveAll(dev)).length, HEADER_BYTES + 2 * PORT_BYTES, state);
          assert.equal(k.migration(SRC).state, 'STOP', state);
          dev.migrator.setState('RUNNING');
        }
      }
    });

    test('a save destroyed half way, or aborted, returns the device to where it started and closes the session', async () => {
      const k = host();
      using dev = openDevice(SRC, { kernel: k });
      const ac = new AbortController();
      const save = dev.migrator.save({ precopy: { maxMs: 60_000, dirtyBytes: -1n }, signal: ac.signal });
      save.once('precopy', () => ac.abort());
      const e = await (async () => {
        for await (const _ of save) { /* drain */ }
      })().then(() => null, (err: unknown) => err);
      assert.equal((e as Error | null)?.name, 'AbortError');
      assert.equal(dev.migrator.state(), 'RUNNING');
      assert.equal(migrationFds(k), 0);
      // and a second save may start once the first is gone
      assert.equal((await saveAll(dev)).length, HEADER_BYTES + 2 * PORT_BYTES);
    });

    test('closing the device ends its stream with ClosedError and closes the session', async () => {
      const k = host();
      const dev = openDevice(DST, { kernel: k });
      const load = dev.migrator.load();
      const failed = new Promise<unknown>((resolve) => load.on('error', resolve));
      assert.throws(() => dev.migrator.load(), UsageError, 'one stream at a time');
      dev.close();
      assert.ok((await failed) instanceof ClosedError);
      assertClean(k);
    });

    test('what cannot migrate says so: edu has no migration, a STOP_COPY-only device has no PRE_COPY', () => {
      const k = r.host({ devices: [{ address: EDU }], mdevs: [{ uuid: SRC, migration: 1 }] });
      using edu = openDevice(EDU, { kernel: k });
      assert.equal(edu.migration(), null);
      const e = catchError(() => edu.migrator.state(), UnsupportedError);
      assert.match(e.message, /no migration support/);
      using stopCopyOnly = openDevice(SRC, { kernel: k });
      assert.throws(() => stopCopyOnly.migrator.save({ precopy: true }), /cannot enter PRE_COPY: its migration lacks PRE_COPY/);
      assert.throws(() => stopCopyOnly.migrator.setState('RUNNING_P2P'), /lacks P2P/);
    });
  });
}
