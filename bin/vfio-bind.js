#!/usr/bin/env node
// The installed `vfio-bind` command. It runs the CLI bundle (dist/cli/main.cjs, built by
// scripts/bundle.mjs) through a V8 code cache, because compiling the bundle is most of a command's
// start-up. The cache is never shipped: V8 accepted one made by another build of the same Node
// version and crashed (Node 20.19.6 given 20.20.2's). It is written on first use into the user's
// cache directory, keyed on the identity of this very node binary (device, inode, size, mtime) and
// of the bundle, so a cache is only ever read by the binary that wrote it. It is read only when it
// belongs to this user and nobody else may write it (bytecode is code). VFIO_BIND_CODE_CACHE=0
// turns it off.
// This file is CommonJS (bin/package.json): an ES module entry point makes node load its ES module
// loader and every stream class before the first line runs, seconds under emulation.
'use strict';
const fs = require('node:fs');
const { createRequire } = require('node:module');
const path = require('node:path');
const vm = require('node:vm');

const file = path.join(__dirname, '../dist/cli/main.cjs');
const KEEP = 8; // caches kept per user: one per node binary and vfio-bind version in use

/** FNV-1a, 32 bits, as hex: a short file name for the key (not a security boundary). */
function fnv1a(text) {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(16).padStart(8, '0');
}

function cacheFile(bundle) {
  if (process.env.VFIO_BIND_CODE_CACHE === '0') return null;
  const base = process.env.XDG_CACHE_HOME || (process.env.HOME ? path.join(process.env.HOME, '.cache') : '');
  if (!path.isAbsolute(base)) return null;
  let exe;
  try {
    exe = fs.statSync(process.execPath);
  } catch {
    return null;
  }
  const key = [process.version, process.arch, process.versions.v8, exe.dev, exe.ino, exe.size, exe.mtimeMs,
    bundle.dev, bundle.ino, bundle.size, bundle.mtimeMs].join(':');
  return path.join(base, 'vfio-bind', 'cli-code-cache', `${fnv1a(key)}.v8cache`);
}

/** The cache's bytes, if it exists and is this user's alone. */
function readCache(cache) {
  let fd;
  try {
    fd = fs.openSync(cache, 'r');
    const st = fs.fstatSync(fd);
    if (st.uid !== process.geteuid() || (st.mode & 0o022) !== 0) return undefined;
    return fs.readFileSync(fd);
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** Writes the cache atomically; a cache directory we cannot write only costs the compile next time. */
function writeCache(cache, data) {
  try {
    const dir = path.dirname(cache);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const tmp = `${cache}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, data, { mode: 0o600 });
    fs.renameSync(tmp, cache);
    const old = fs.readdirSync(dir).filter((f) => f.endsWith('.v8cache'))
      .map((f) => ({ f, t: fs.statSync(path.join(dir, f)).mtimeMs })).sort((a, b) => b.t - a.t).slice(KEEP);
    for (const { f } of old) fs.rmSync(path.join(dir, f), { force: true });
  } catch {
    // read-only or foreign home (nobody's /nonexistent, a container): run without a cache
  }
}

function load() {
  const source = fs.readFileSync(file, 'utf8');
  const cache = cacheFile(fs.statSync(file));
  const cachedData = cache ? readCache(cache) : undefined;
  const wrapped = `(function (exports, require, module, __filename, __dirname) {${source}\n})`;
  // no importModuleDynamically: the bundle makes no dynamic import() (src/log.ts requires pino)
  const script = new vm.Script(wrapped, { filename: file, cachedData });
  const module = { exports: {} };
  script.runInThisContext()(module.exports, createRequire(file), module, file, path.dirname(file));
  // after the command: the cache then holds the functions this run compiled, not only the top level
  const save = cache && (cachedData === undefined || script.cachedDataRejected) ? () => writeCache(cache, script.createCachedData()) : () => {};
  return { cli: module.exports, save };
}

function cannotStart(e) {
  // main() reports its own errors; only a broken installation gets here. No stack trace for users.
  process.stderr.write(`vfio-bind: cannot start: ${e && e.message ? e.message : e}\n` +
    '  hint: reinstall the package (npm install vfio-bind); in a checkout, `npm run build` builds the CLI\n');
  process.exitCode = 1;
}

try {
  const { cli, save } = load();
  cli.main(process.argv.slice(2)).then(save, cannotStart);
} catch (e) {
  cannotStart(e);
}
