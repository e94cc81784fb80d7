// Builds the native addon into prebuilds/<platform>-<arch>-<libc>/vfio_addon.node, where the loader
// (src/sys/addon.ts) finds it in an installed package.
//   node scripts/build-addon.mjs         this machine's target only (npm run build; seconds)
//   node scripts/build-addon.mjs --all   every target the package ships (npm pack's prepack), cross-
//                                        compiled with Debian's gcc-<triple> (testbed/setup-host.sh
//                                        installs gcc-aarch64-linux-gnu)
// Each target is built by node-gyp from binding.gyp (one place for the flags), in a scratch copy of
// native/ so that the package's own build/ (a from-source build, which the loader prefers) is left alone.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PREBUILT_TARGETS, detectLibc, targetName } from '../dist/src/sys/addon.js';

const root = path.resolve(import.meta.dirname, '..');
const TRIPLES = { x64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu' };
const host = targetName(process.platform, process.arch, detectLibc());
const targets = process.argv.includes('--all') ? [...PREBUILT_TARGETS] : [host];

function die(message) {
  process.stderr.write(`build-addon: ${message}\n`);
  process.exit(1);
}

// npm gives scripts its own node-gyp (npm_config_node_gyp); run by hand, look beside npm, then PATH.
function nodeGyp() {
  const candidates = [process.env.npm_config_node_gyp,
    path.join(path.dirname(process.execPath), '../lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js')];
  const found = candidates.find((c) => c && fs.existsSync(c));
  return found ? [process.execPath, found] : ['node-gyp'];
}

function onPath(command) {
  return (process.env.PATH ?? '').split(':').some((d) => d && fs.existsSync(path.join(d, command)));
}

// Node's headers: npm's nodedir setting, else the ones installed beside this node (Debian's /usr, an
// official tarball's prefix), else node-gyp downloads them.
function nodedir() {
  if (process.env.npm_config_nodedir) return [];
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  return fs.existsSync(path.join(prefix, 'include/node/node_api.h')) ? [`--nodedir=${prefix}`] : [];
}

const [gyp, ...gypArgs] = [...nodeGyp(), ...nodedir()];
for (const target of targets) {
  const [platform, arch, libc] = target.split('-');
  if (platform !== 'linux' || libc !== 'glibc' || !TRIPLES[arch]) die(`no recipe for ${target}`);
  const env = { ...process.env };
  if (target !== host) {
    const cc = `${TRIPLES[arch]}-gcc`;
    if (!onPath(cc)) die(`${target} needs the cross compiler ${cc} (Debian: apt-get install gcc-${TRIPLES[arch]}; testbed/setup-host.sh installs it)`);
    Object.assign(env, { CC: cc, CXX: `${TRIPLES[arch]}-g++`, LINK: cc, AR: `${TRIPLES[arch]}-ar` });
  }
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-bind-addon-'));
  try {
    fs.cpSync(path.join(root, 'binding.gyp'), path.join(scratch, 'binding.gyp'));
    fs.cpSync(path.join(root, 'native'), path.join(scratch, 'native'), { recursive: true });
    try {
      execFileSync(gyp, [...gypArgs, 'rebuild', `--arch=${arch}`, '--loglevel=warn'], { cwd: scratch, env, stdio: ['ignore', 'ignore', 'inherit'] });
    } catch {
      die(`node-gyp failed for ${target}`);
    }
    const dest = path.join(root, 'prebuilds', target);
    fs.mkdirSync(dest, { recursive: true });
    fs.copyFileSync(path.join(scratch, 'build/Release/vfio_addon.node'), path.join(dest, 'vfio_addon.node'));
    process.stderr.write(`build-addon: prebuilds/${target}/vfio_addon.node\n`);
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}
