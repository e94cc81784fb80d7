// The shipped package, not this checkout's build: a consumer project made on the host by
// test/package/check.sh (npm install of the packed tarball, no compiler, no install script) binds edu
// in a guest, through the library (its esm.mjs) and through its installed CLI. The guest has no
// registry, so the project comes prepared; scripts/test.sh passes it in as VFIO_BIND_CONSUMER.
import { test } from './case-test.js';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CASE, EDU, ROOT } from './helpers.js';

const CONSUMER = process.env.VFIO_BIND_CONSUMER ?? '';
/** the route each case's kernel gives edu under auto */
const EXPECTED: Record<string, string> = { 'stock-6.12-intel': 'legacy', 'iommufd-6.12-intel': 'iommufd' };
const route = EXPECTED[CASE];
const skip = !route ? 'stock-6.12-intel and iommufd-6.12-intel only'
  : !CONSUMER ? 'no consumer project: run through npm test (test/package/check.sh makes it)' : false;

test(`a consumer project installed from the packed tarball binds edu (${route ?? '-'})`, { skip }, () => {
  const installed = path.join(CONSUMER, 'node_modules/vfio-bind');
  assert.ok(fs.existsSync(path.join(installed, 'prebuilds/linux-x64-glibc/vfio_addon.node')), 'the package\'s prebuild is installed');
  assert.ok(!fs.existsSync(path.join(installed, 'build')), 'nothing was built from source at install');
  const version = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

  // the library, from the consumer's own ES module
  const lib = spawnSync(process.execPath, ['esm.mjs', EDU], { cwd: CONSUMER, encoding: 'utf8', timeout: 120_000 });
  assert.equal(lib.status, 0, lib.stderr);
  const out = JSON.parse(lib.stdout) as { route: string; report: { device: string; route: string }; addon: string };
  assert.equal(out.route, route);
  assert.equal(out.report.device, EDU);
  assert.equal(out.addon, path.join(installed, 'prebuilds/linux-x64-glibc/vfio_addon.node'), 'the shipped binary is the one loaded');

  // the installed CLI
  const bin = path.join(CONSUMER, 'node_modules/.bin/vfio-bind');
  const bind = spawnSync(bin, ['bind', '00:10.0', '--json'], { cwd: CONSUMER, encoding: 'utf8', timeout: 120_000 });
  assert.equal(bind.status, 0, bind.stderr);
  const report = JSON.parse(bind.stdout) as { device: string; route: string; fallback: { from: string } | null };
  assert.deepEqual([report.device, report.route], [EDU, route]);
  assert.equal(report.fallback === null, route === 'iommufd', 'a fallback is reported exactly where the kernel has no iommufd');
  const v = spawnSync(bin, ['--version'], { cwd: CONSUMER, encoding: 'utf8' });
  assert.equal(v.stdout.trim(), version);
});
