// bin/vfio-bind.js's code cache: written on first use into the user's cache directory (never shipped),
// one file per node binary and bundle, private to the user; read only when it is this user's alone,
// since V8 bytecode is code. (test/package/check.sh runs it across Node builds.)
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const BIN = path.join(ROOT, 'bin/vfio-bind.js');
const skip = fs.existsSync(path.join(ROOT, 'dist/cli/main.cjs')) ? false : 'the CLI bundle is missing: run `npm run build` first';
const isRoot = process.geteuid?.() === 0;

function run(xdg: string, extraEnv: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, [BIN, '--version'], { encoding: 'utf8', env: { ...process.env, XDG_CACHE_HOME: xdg, ...extraEnv } });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, '');
  return r.stdout.trim();
}

const cacheDir = (xdg: string): string => path.join(xdg, 'vfio-bind', 'cli-code-cache');
const caches = (xdg: string): string[] => (fs.existsSync(cacheDir(xdg)) ? fs.readdirSync(cacheDir(xdg)) : []);

describe('the CLI\'s code cache', { skip, concurrency: false }, () => {
  let xdg: string;
  test.beforeEach(() => {
    xdg = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-bind-xdg-'));
  });
  test.afterEach(() => fs.rmSync(xdg, { recursive: true, force: true }));

  test('the first run writes one private cache file; the next runs read it and leave it alone', () => {
    run(xdg);
    const files = caches(xdg);
    assert.equal(files.length, 1);
    assert.match(files[0]!, /^[0-9a-f]{8}\.v8cache$/);
    const file = path.join(cacheDir(xdg), files[0]!);
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.equal(fs.statSync(cacheDir(xdg)).mode & 0o777, 0o700);
    assert.ok(fs.statSync(file).size > 10_000, 'it holds compiled code');
    const before = fs.statSync(file);
    run(xdg);
    run(xdg);
    const after = fs.statSync(file);
    assert.equal(after.ino, before.ino, 'not rewritten');
    assert.equal(after.mtimeMs, before.mtimeMs);
    assert.deepEqual(caches(xdg), files);
  });

  test('a corrupt cache is rejected by V8 and replaced, and the command still works', () => {
    const version = run(xdg);
    const file = path.join(cacheDir(xdg), caches(xdg)[0]!);
    fs.writeFileSync(file, Buffer.alloc(4096, 0x5a), { mode: 0o600 });
    assert.equal(run(xdg), version);
    assert.notDeepEqual(fs.readFileSync(file).subarray(0, 64), Buffer.alloc(64, 0x5a), 'rewritten with a real cache');
  });

  test('a cache that others may write is never read: it is replaced by one of our own', () => {
    run(xdg);
    const file = path.join(cacheDir(xdg), caches(xdg)[0]!);
    fs.chmodSync(file, 0o620); // group-writable: someone else could have put code there
    const ino = fs.statSync(file).ino;
    run(xdg);
    const st = fs.statSync(file);
    assert.notEqual(st.ino, ino, 'replaced, not read (an accepted cache is left as it is)');
    assert.equal(st.mode & 0o777, 0o600);
  });

  test('a cache owned by another user is never read (root given a user\'s HOME, as sudo may)', { skip: isRoot ? false : 'needs root to chown' }, () => {
    run(xdg);
    const file = path.join(cacheDir(xdg), caches(xdg)[0]!);
    fs.chownSync(file, 65534, 65534);
    const ino = fs.statSync(file).ino;
    run(xdg);
    const st = fs.statSync(file);
    assert.notEqual(st.ino, ino, 'replaced, not read');
    assert.equal(st.uid, process.geteuid!());
  });

  test('--log-level debug loads pino from a cold and from a warm code cache (no dynamic import in the bundle)', () => {
    for (const run of ['cold', 'warm']) {
      const r = spawnSync(process.execPath, [BIN, 'bind', '0000:00:1f.6', '--log-level', 'debug'], { encoding: 'utf8', env: { ...process.env, XDG_CACHE_HOME: xdg } });
      assert.equal(r.status, 3, `${run}: ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /internal error|ExperimentalWarning|dynamic import/, `${run}: ${r.stderr}`);
      assert.match(r.stderr, /^vfio-bind: no device 0000:00:1f\.6/m);
    }
    assert.equal(caches(xdg).length, 1);
  });

  test('no usable cache directory, or VFIO_BIND_CODE_CACHE=0: the CLI runs without one', () => {
    const file = path.join(xdg, 'not-a-dir');
    fs.writeFileSync(file, '');
    run(file); // XDG_CACHE_HOME is a file: nothing can be written under it
    run(xdg, { VFIO_BIND_CODE_CACHE: '0' });
    assert.deepEqual(caches(xdg), []);
    run('relative/path');
    assert.equal(fs.existsSync(path.join(ROOT, 'relative')), false, 'a relative XDG_CACHE_HOME is ignored, as the spec says');
  });
});
