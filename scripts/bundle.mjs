// Bundles the CLI into dist/cli/main.cjs. Start-up is what a CLI is measured by: loading yargs from
// node_modules file by file costs more than the rest of a command (in a TCG guest, seconds). No code
// cache is shipped with it: V8 accepted one made by another build of the same Node and crashed, so
// bin/vfio-bind.js writes its own per node binary, on first use, in the user's cache directory.
import fs from 'node:fs';
import path from 'node:path';
import * as esbuild from 'esbuild-wasm';

fs.rmSync('dist/cli', { recursive: true, force: true }); // no stale files

// Modules the bundle needs only now and then go through shims that load them on first real use (each
// shim says why): yargs' and cliui's string-width, and yargs' assert (node:assert, with its stream-backed
// error formatting, is ~6% of a command's start-up under TCG).
const LAZY = { 'string-width': path.resolve('scripts/lazy-string-width.cjs'), assert: path.resolve('scripts/lazy-assert.cjs') };
const lazyModules = {
  name: 'lazy-modules',
  setup(build) {
    build.onResolve({ filter: /^(string-width|assert)$/ }, (args) => (args.importer === LAZY[args.path] ? undefined : { path: LAZY[args.path] }));
  },
};

await esbuild.build({
  entryPoints: ['src/cli/main.ts'],
  outfile: 'dist/cli/main.cjs',
  bundle: true,
  platform: 'node',
  // CommonJS, because only a classic script can be compiled with a code cache on Node 20.
  format: 'cjs',
  target: 'node20',
  // Node 20 has RegExp's v flag, which esbuild's table misses: lowered to new RegExp(..., 'v'),
  // string-width's \p{RGI_Emoji} pattern costs ~40 ms at start-up; the literal compiles on first use.
  supported: { 'regexp-set-notation': true },
  // pino is loaded only for -v/--log-level, from node_modules.
  external: ['pino'],
  minify: !process.env.NO_MINIFY, // less to parse when the cache is rejected (another node)
  sourcemap: true,
  logLevel: 'warning',
  // yargs (an ES module) locates itself by import.meta.url: give the CommonJS bundle one.
  define: { 'import.meta.url': '__bundleUrl' },
  banner: { js: "var __bundleUrl = require('node:url').pathToFileURL(__filename).href;" },
  plugins: [lazyModules],
});
