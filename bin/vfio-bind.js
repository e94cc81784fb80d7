#!/usr/bin/env node
// The installed `vfio-bind` command. It runs the CLI bundle (dist/cli/main.cjs, built by
// scripts/bundle.mjs) through V8's code cache (dist/cli/main.cache): compiling the bundle would be
// most of the start-up. A cache V8 rejects (another Node version) only costs that compile.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '../dist/cli');
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

try {
  const { cli, script } = load();
  await cli.main(process.argv.slice(2));
  if (process.env.VFIO_BIND_WRITE_CODE_CACHE) fs.writeFileSync(process.env.VFIO_BIND_WRITE_CODE_CACHE, script.createCachedData());
} catch (e) {
  // main() reports its own errors; only a broken installation gets here. No stack trace for users.
  process.stderr.write(`vfio-bind: cannot start: ${e && e.message ? e.message : e}\n` +
    '  hint: run `npm install` (it builds the addon and the CLI) in the package directory\n');
  process.exitCode = 1;
}
