// The addon and the native Kernel on this host, with real system calls: failures must carry the
// right errno name and number, and buffer arguments must be passed by address and written back.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadAddon, NativeKernel } from '../../src/sys/native-kernel.js';
import { VFIO } from '../../src/uapi/vfio.js';
import { major, makedev, minor } from '../../src/sys/kernel.js';

const addon = loadAddon();
const FIONREAD = 0x541b; // int *: bytes readable
const FIOCLEX = 0x5451; // no argument: set close-on-exec

function sysError(code: string, errno: number) {
  return (e: unknown): boolean => {
    const err = e as { code?: string; errno?: number; syscall?: string };
    assert.equal(err.code, code);
    assert.equal(err.errno, errno);
    assert.equal(err.syscall, 'ioctl');
    return true;
  };
}

test('a VFIO ioctl on a non-VFIO fd throws ENOTTY', () => {
  const fd = fs.openSync('/dev/null', 'r');
  try {
    assert.throws(() => addon.ioctl(fd, VFIO.GET_API_VERSION), sysError('ENOTTY', -25));
    assert.throws(() => addon.ioctl(fd, VFIO.DEVICE_GET_INFO, Buffer.alloc(24)), sysError('ENOTTY', -25));
  } finally {
    fs.closeSync(fd);
  }
});

test('an ioctl on a closed fd throws EBADF', () => {
  const fd = fs.openSync('/dev/null', 'r');
  fs.closeSync(fd);
  assert.throws(() => addon.ioctl(fd, FIOCLEX), sysError('EBADF', -9));
});

test('a buffer argument is passed by address and written back', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-bind-addon-'));
  const file = path.join(dir, 'ten');
  fs.writeFileSync(file, '0123456789');
  const fd = fs.openSync(file, 'r');
  try {
    const out = Buffer.alloc(4, 0xff);
    assert.equal(addon.ioctl(fd, FIONREAD, out), 0);
    assert.equal(out.readInt32LE(0), 10);
    // a TypedArray view at an offset into a larger buffer gets the same treatment
    const big = new Uint8Array(16).fill(0xff);
    assert.equal(addon.ioctl(fd, FIONREAD, new Int32Array(big.buffer, 8, 1)), 0);
    assert.equal(new DataView(big.buffer).getInt32(8, true), 10);
    assert.equal(new DataView(big.buffer).getInt32(4, true), -1, 'bytes outside the view are untouched');
    assert.equal(addon.ioctl(fd, FIOCLEX, 0), 0, 'an integer argument is passed by value');
  } finally {
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('bad arguments are TypeErrors, not crashes', () => {
  assert.throws(() => (addon.ioctl as (...a: unknown[]) => number)(), TypeError);
  assert.throws(() => (addon.ioctl as (...a: unknown[]) => number)('3', 1), TypeError);
  assert.throws(() => (addon.ioctl as (...a: unknown[]) => number)(0, 1, 'x'), TypeError);
  assert.throws(() => (addon.ioctl as (...a: unknown[]) => number)(0, 1, {}), TypeError);
});

test('NativeKernel reports missing nodes as ENOENT with the path', () => {
  const kernel = new NativeKernel();
  assert.throws(() => kernel.open('/dev/vfio/no-such-group'), (e: unknown) => {
    const err = e as { code?: string; path?: string };
    assert.equal(err.code, 'ENOENT');
    assert.equal(err.path, '/dev/vfio/no-such-group');
    return true;
  });
  assert.equal(kernel.exists('/dev/null'), true);
  const st = kernel.stat('/dev/null');
  assert.equal(st.isCharacterDevice, true);
  assert.equal(major(st.rdev), 1, '/dev/null is 1:3');
  assert.equal(minor(st.rdev), 3);
  assert.equal(makedev(1, 3), st.rdev);
  const fd = kernel.open('/dev/null');
  try {
    assert.equal(kernel.fstat(fd).rdev, st.rdev);
  } finally {
    kernel.close(fd);
  }
});

test('errno names: the addon\'s own table (no strerrorname_np) agrees with Node\'s os.constants.errno', () => {
  // aliases of one number, which the kernel and strerrorname_np name by the first
  const ALIASES: Record<string, string> = { EWOULDBLOCK: 'EAGAIN', ENOTSUP: 'EOPNOTSUPP', EDEADLOCK: 'EDEADLK' };
  const known = Object.entries(os.constants.errno);
  assert.ok(known.length > 70, 'Node knows the usual errnos');
  for (const [name, number] of known) assert.equal(addon.errnoName(number), ALIASES[name] ?? name, `errno ${number}`);
  // every number Linux defines has a name (41 and 58 are unused), nothing else does
  for (let n = 1; n <= 133; n++) if (n !== 41 && n !== 58) assert.match(addon.errnoName(n) ?? '', /^E[A-Z0-9]+$/, `errno ${n}`);
  for (const n of [0, 41, 58, 134, 524, -1]) assert.equal(addon.errnoName(n), null, `errno ${n}`);
});

test('watch(fd, cb, keepAlive = false) does not keep the process alive; a default watch does', async () => {
  const { spawn } = await import('node:child_process');
  const loader = path.resolve(import.meta.dirname, '../../src/sys/addon.js');
  const run = (keepAlive: boolean): Promise<'exited' | 'alive'> => new Promise((resolve) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e',
      `import { loadAddon } from ${JSON.stringify(loader)}; const a = loadAddon(); a.watch(a.eventfd(), () => {}, ${keepAlive});`]);
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolve('alive'); }, 1500);
    child.on('exit', (code) => { clearTimeout(timer); resolve(code === 0 ? 'exited' : 'alive'); });
  });
  assert.deepEqual(await Promise.all([run(false), run(true)]), ['exited', 'alive']);
});
