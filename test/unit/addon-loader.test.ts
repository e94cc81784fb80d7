// The addon loader (src/sys/addon.ts): which C library a process runs on, which binary it picks (a
// source build over the prebuild), and the typed error when nothing fits.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { BUILD_FROM_SOURCE, PREBUILT_TARGETS, detectLibc, findAddon, targetName } from '../../src/sys/addon.js';
import { packageRoot, packageVersion } from '../../src/package.js';
import { AddonMissingError, ExitCode, VfioError } from '../../src/errors.js';

const ROOT = path.resolve(import.meta.dirname, '../../..');

// /proc/self/maps lines as each C library's node shows them (paths from Debian 12 and Alpine 3.20)
const GLIBC_MAPS = `55d0c0a00000-55d0c0c00000 r--p 00000000 fe:01 1234   /usr/bin/node
7f1e2a000000-7f1e2a028000 r--p 00000000 fe:01 5678   /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2a400000-7f1e2a402000 r--p 00000000 fe:01 5679   /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7ffd5a000000-7ffd5a021000 rw-p 00000000 00:00 0      [stack]`;
const MUSL_MAPS = `5600aa000000-5600ab000000 r--p 00000000 08:01 99     /usr/bin/node
7f00aa000000-7f00aa014000 r--p 00000000 08:01 100    /lib/ld-musl-x86_64.so.1
7f00ab000000-7f00ab100000 r--p 00000000 08:01 101    /usr/lib/libstdc++.so.6.0.33`;
const STATIC_MAPS = `00400000-02000000 r-xp 00000000 08:01 99     /opt/node-static/bin/node
7ffd5a000000-7ffd5a021000 rw-p 00000000 00:00 0      [stack]`;

describe('detectLibc', () => {
  test('glibc, musl, or unknown, from the libraries really mapped', () => {
    assert.equal(detectLibc(GLIBC_MAPS), 'glibc');
    assert.equal(detectLibc(MUSL_MAPS), 'musl');
    assert.equal(detectLibc(STATIC_MAPS), 'unknown');
    // a musl loader shipped somewhere on a glibc system is not what this process runs on
    assert.equal(detectLibc(`${GLIBC_MAPS}\n7f00aa000000-7f00aa014000 r--p 00000000 08:01 1 /opt/musl/README-ld-musl-x86_64.so.1.txt`), 'glibc');
  });

  test('this host (Debian, glibc) is detected as glibc from /proc/self/maps', () => {
    assert.equal(detectLibc(), 'glibc');
    assert.equal(targetName(process.platform, process.arch, detectLibc()), `linux-${process.arch}-glibc`);
  });
});

describe('findAddon', () => {
  const root = '/pkg';
  const source = '/pkg/build/Release/vfio_addon.node';
  const prebuilt = '/pkg/prebuilds/linux-x64-glibc/vfio_addon.node';

  test('a source build wins over the prebuild; else the prebuild for the target', () => {
    assert.equal(findAddon(root, 'linux-x64-glibc', (p) => p === source || p === prebuilt), source);
    assert.equal(findAddon(root, 'linux-x64-glibc', (p) => p === prebuilt), prebuilt);
  });

  test('nothing fits: AddonMissingError (exit 8) naming the target, what ships, and the build command', () => {
    let err: unknown;
    try {
      findAddon(root, 'linux-x64-musl', (p) => p === prebuilt);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof AddonMissingError && err instanceof VfioError);
    assert.equal(err.exitCode, ExitCode.NOT_INSTALLED);
    assert.equal(err.exitCode, 8);
    assert.equal(err.kind, 'addon-missing');
    assert.match(err.message, /no native addon for linux-x64-musl/);
    for (const t of PREBUILT_TARGETS) assert.ok(err.message.includes(t), `names ${t}`);
    assert.equal(err.path, '/pkg/prebuilds/linux-x64-musl/vfio_addon.node');
    assert.ok(err.hint?.includes(BUILD_FROM_SOURCE));
    assert.equal(err.toJSON().exit_code, 8);
  });

  test('the command it gives exists: the package has the build:addon script it runs, and binding.gyp', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string>; files: string[] };
    assert.match(BUILD_FROM_SOURCE, /npm run build:addon$/);
    assert.equal(pkg.scripts['build:addon'], 'node-gyp rebuild');
    for (const f of ['native/', 'binding.gyp']) assert.ok(pkg.files.includes(f), `${f} is shipped`);
  });
});

describe('the package itself', () => {
  test('packageRoot and packageVersion come from vfio-bind\'s package.json above the module', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    assert.equal(packageRoot(), ROOT);
    assert.equal(packageVersion(), pkg.version);
  });
});
