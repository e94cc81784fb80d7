#!/usr/bin/env node
// The installed `vfio-bind` command. It runs the CLI bundle (dist/cli/main.cjs, built by
// scripts/bundle.mjs) through V8's code cache (dist/cli/main.cache): compiling the bundle would be
// most of the start-up. A cache V8 rejects (another Node version) only costs that compile. This file
// is CommonJS (bin/package.json): an ES module entry point makes node load its ES module loader and
// every stream class before the first line runs, seconds under emulation.
'use strict';
const fs = require('node:fs');
const { createRequire } = require('node:module');
const path = require('node:path');
const vm = require('node:vm');

const dir = path.join(__dirname, '../dist/cli');
const file = path.join(dir, 'main.cjs');

function load() {
  const source = fs.readFileSync(file, 'utf8');
  let cachedData;
  try {
    cachedData = fs.readFileSync(path.join(dir, 'main.cache'));
  } catch {
    // no cache: compile
  }
  const wrapped = `(function (exports, require, module, __filename, __dirname) {${source}\n})`;
  const script = new vm.Script(wrapped, { filename: file, cachedData, importModuleDynamically: vm.constants?.USE_MAIN_CONTEXT_DEFAULT_LOADER });
  const module = { exports: {} };
  script.runInThisContext()(module.exports, createRequire(file), module, file, dir);
  return { cli: module.exports, script };
}

function cannotStart(e) {
  // main() reports its own errors; only a broken installation gets here. No stack trace for users.
  process.stderr.write(`vfio-bind: cannot start: ${e && e.message ? e.message : e}\n` +
    '  hint: run `npm install` (it builds the addon and the CLI) in the package directory\n');
  process.exitCode = 1;
}

try {
  const { cli, script } = load();
  cli.main(process.argv.slice(2)).then(() => {
    if (process.env.VFIO_BIND_WRITE_CODE_CACHE) fs.writeFileSync(process.env.VFIO_BIND_WRITE_CODE_CACHE, script.createCachedData());
  }, cannotStart);
} catch (e) {
  cannotStart(e);
}
