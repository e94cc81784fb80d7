// The addon and the native Kernel on this host, with real system calls: failures must carry the
// right errno name and number, and buffer arguments must be passed by address and written back.
import { spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadAddon, NativeKernel } from '../../src/sys/native-kernel.js';
import { detectLibc, findAddon, targetName } from '../../src/sys/addon.js';
import { packageRoot } from '../../src/package.js';
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

/** Runs fn with a read-only fd of a 10-byte file (FIONREAD answers 10). */
function withTenByteFile(fn: (fd: number) => void): void {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-bind-addon-'));
  const file = path.join(dir, 'ten');
  fs.writeFileSync(file, '0123456789');
  const fd = fs.openSync(file, 'r');
  try {
    fn(fd);
  } finally {
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('a buffer argument is passed by address and written back', () => {
  withTenByteFile((fd) => {
    const out = Buffer.alloc(4, 0xff);
    assert.equal(addon.ioctl(fd, FIONREAD, out), 0);
    assert.equal(out.readInt32LE(0), 10);
    // a TypedArray view at an offset into a larger buffer gets the same treatment
    const big = new Uint8Array(16).fill(0xff);
    assert.equal(addon.ioctl(fd, FIONREAD, new Int32Array(big.buffer, 8, 1)), 0);
    assert.equal(new DataView(big.buffer).getInt32(8, true), 10);
    assert.equal(new DataView(big.buffer).getInt32(4, true), -1, 'bytes outside the view are untouched');
    assert.equal(addon.ioctl(fd, FIOCLEX, 0), 0, 'an integer argument is passed by value');
  });
});

test('ioctlErrno: the same call as ioctl(), but a refusal comes back as -errno instead of a thrown error', () => {
  withTenByteFile((fd) => {
    const out = Buffer.alloc(4, 0xff);
    assert.equal(addon.ioctlErrno(fd, FIONREAD, out), 0);
    assert.equal(out.readInt32LE(0), 10, 'written back in place');
    assert.equal(addon.ioctlErrno(fd, VFIO.GET_API_VERSION), -os.constants.errno.ENOTTY);
    assert.equal(new NativeKernel(addon).ioctlErrno(fd, VFIO.DEVICE_GET_INFO, Buffer.alloc(24)), -os.constants.errno.ENOTTY);
    const closed = fs.openSync('/dev/null', 'r');
    fs.closeSync(closed);
    assert.equal(addon.ioctlErrno(closed, FIOCLEX), -os.constants.errno.EBADF);
    assert.throws(() => addon.ioctlErrno('3' as unknown as number, FIOCLEX), TypeError, 'bad arguments still throw');
  });
});

test('ioctlEach: one ioctl per record, written back in place; it stops at the first refusal and names its index', async () => {
  // SIOCGIFINDEX reads an interface name from each record and writes its index back, so a record's own
  // content decides whether its ioctl fails: a real mid-batch refusal without VFIO hardware
  const SIOCGIFINDEX = 0x8933;
  const IFREQ = 40; // struct ifreq: char ifr_name[16], then a union (int ifr_ifindex) padded to 24
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  try {
    const fd = (socket as unknown as { _handle: { fd: number } })._handle.fd;
    const names = ['lo', 'lo', 'no-such-if0', 'lo'];
    const records = Buffer.alloc(IFREQ * names.length);
    names.forEach((name, i) => {
      records.write(name, i * IFREQ);
      records.writeInt32LE(-1, i * IFREQ + 16);
    });
    assert.equal(addon.ioctlEach(fd, SIOCGIFINDEX, records.subarray(0, 2 * IFREQ), IFREQ), 2);
    assert.ok(records.readInt32LE(16) > 0 && records.readInt32LE(IFREQ + 16) === records.readInt32LE(16), 'each record got lo\'s index');
    records.writeInt32LE(-1, 16);
    assert.throws(() => addon.ioctlEach(fd, SIOCGIFINDEX, records, IFREQ), (e: unknown) => {
      sysError('ENODEV', -19)(e);
      assert.equal((e as { index?: number }).index, 2);
      return true;
    });
    assert.ok(records.readInt32LE(16) > 0, 'record 0 was issued');
    assert.equal(records.readInt32LE(3 * IFREQ + 16), -1, 'nothing after the refused record was issued');
    assert.equal(addon.ioctlEach(fd, SIOCGIFINDEX, Buffer.alloc(0), IFREQ), 0, 'no records, no calls');
    assert.throws(() => addon.ioctlEach(fd, SIOCGIFINDEX, Buffer.alloc(IFREQ + 1), IFREQ), RangeError);
    assert.throws(() => addon.ioctlEach(fd, SIOCGIFINDEX, records, 0), RangeError);
    assert.throws(() => (addon.ioctlEach as (...a: unknown[]) => number)(fd, SIOCGIFINDEX, 'lo', IFREQ), TypeError);
  } finally {
    socket.close();
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

// ---- memory, MMIO accessors, eventfds and the live counters, with real system calls -------------

test('allocDma: page-aligned memory, counted live until unmap, which detaches every view (and is idempotent)', () => {
  const before = addon.liveCounts();
  const mem = addon.allocDma(3 * 4096, false);
  assert.equal(mem.byteLength, 3 * 4096);
  assert.equal(addon.addressOf(mem) % 4096n, 0n, 'page-aligned');
  const bytes = new Uint8Array(mem);
  const words = new Uint32Array(mem, 4096, 4);
  bytes.fill(0x5a);
  assert.equal(words[0], 0x5a5a5a5a, 'real memory, seen through every view');
  assert.equal(addon.liveCounts().mappings, before.mappings + 1);
  addon.unmap(mem);
  assert.equal(addon.liveCounts().mappings, before.mappings);
  assert.deepEqual([mem.byteLength, bytes.length, words.length], [0, 0, 0], 'every view is detached: empty, never stale memory');
  assert.throws(() => addon.addressOf(mem), (e: unknown) => (e as { code?: string }).code === 'EFAULT');
  addon.unmap(mem); // again: nothing
  assert.deepEqual(addon.liveCounts(), before);
});

test('DMA memory does not count toward V8\'s external memory: allocating 512 MiB of it starts no major GC', () => {
  // A child with nothing else to do allocates and frees 256 buffers of 2 MiB and counts V8's major GCs.
  // Counted as external memory, the same allocation started 7 (incremental marking, on V8's helper
  // threads, beside whatever the process did next).
  const child = `
    const { PerformanceObserver, constants } = require('node:perf_hooks');
    const addon = require(${JSON.stringify(findAddon(packageRoot(), targetName(process.platform, process.arch, detectLibc())))});
    let major = 0;
    new PerformanceObserver((list) => { for (const e of list.getEntries()) if (e.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR) major++; }).observe({ entryTypes: ['gc'] });
    const buffers = Array.from({ length: 256 }, () => addon.allocDma(2 << 20, false));
    for (const b of buffers) addon.unmap(b);
    setTimeout(() => { console.log(JSON.stringify({ major, live: addon.liveCounts().mappings })); }, 100);`;
  const r = spawnSync(process.execPath, ['-e', child], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { major: 0, live: 0 });
});

test('allocDma of 2 MiB or more (no hugePages): 2 MiB-aligned, advised for THP before it is populated', () => {
  const mem = addon.allocDma(4 * 1024 * 1024 + 4096, false);
  try {
    const at = addon.addressOf(mem);
    assert.equal(at % (2n * 1024n * 1024n), 0n, '2 MiB-aligned, so that THP (and IOMMU superpages) can back it');
    const vma = fs.readFileSync('/proc/self/smaps', 'utf8').split(/\n(?=[0-9a-f]+-)/).find((m) => m.startsWith(at.toString(16)))!;
    assert.ok(vma, 'its VMA is in smaps');
    assert.match(vma, /^VmFlags:.* hg( |$)/m, 'MADV_HUGEPAGE applied (VmFlags hg)');
    assert.match(vma, /^Rss:\s+4100 kB$/m, 'populated: every page resident');
    // where THP may be used, the kernel backs it with huge pages (if it finds free 2 MiB blocks)
    const thp = fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
    const huge = Number(/^AnonHugePages:\s+(\d+) kB$/m.exec(vma)?.[1] ?? 0);
    if (!/\[never\]/.test(thp) && huge === 0) process.stderr.write(`note: THP ${thp.trim()}, but no huge page backed it (fragmented memory?)\n`);
  } finally {
    addon.unmap(mem);
  }
});

test('allocDma with hugePages: ENOMEM without reserved huge pages; a 2 MiB page once one is reserved', (t) => {
  const nr = '/proc/sys/vm/nr_hugepages';
  const reserved = Number(fs.readFileSync(nr, 'utf8'));
  if (reserved === 0) {
    assert.throws(() => addon.allocDma(2 * 1024 * 1024, true), (e: unknown) => (e as { code?: string; syscall?: string }).code === 'ENOMEM' && (e as { syscall?: string }).syscall === 'mmap');
  }
  let restore: (() => void) | null = null;
  try {
    if (reserved === 0) {
      fs.writeFileSync(nr, '1');
      restore = () => fs.writeFileSync(nr, '0');
    }
  } catch (e) {
    t.skip(`cannot reserve a huge page here (${(e as Error).message})`);
    return;
  }
  try {
    if (Number(fs.readFileSync(nr, 'utf8')) === 0) {
      t.skip('the kernel reserved no huge page (no free 2 MiB of contiguous memory)');
      return;
    }
    const mem = addon.allocDma(2 * 1024 * 1024, true);
    try {
      assert.equal(addon.addressOf(mem) % (2n * 1024n * 1024n), 0n, 'a huge page is 2 MiB-aligned');
      const line = fs.readFileSync('/proc/self/smaps', 'utf8').split(/\n(?=[0-9a-f]+-)/).find((m) => m.startsWith(addon.addressOf(mem).toString(16)));
      assert.match(line ?? '', /KernelPageSize:\s+2048 kB/, 'backed by a 2 MiB page');
    } finally {
      addon.unmap(mem);
    }
  } finally {
    restore?.();
  }
});

test('MMIO accessors on a real mapping: exactly the width asked, little-endian, aligned, in range, never after unmap', () => {
  const mem = addon.allocDma(4096, false);
  try {
    addon.mmioWrite(mem, 8, 8, 0x0807060504030201n);
    assert.equal(addon.mmioRead(mem, 8, 1), 0x01);
    assert.equal(addon.mmioRead(mem, 10, 2), 0x0403);
    assert.equal(addon.mmioRead(mem, 12, 4), 0x08070605);
    assert.equal(addon.mmioRead(mem, 8, 8), 0x0807060504030201n);
    addon.mmioWrite(mem, 12, 2, 0xbeef);
    assert.deepEqual([...new Uint8Array(mem, 8, 8)], [1, 2, 3, 4, 0xef, 0xbe, 7, 8], 'a 2-byte store changes exactly 2 bytes');
    addon.mmioWrite(mem, 4092, 4, 0xffffffff);
    assert.equal(addon.mmioRead(mem, 4092, 4), 0xffffffff, 'the last register');
    const outOfRange = (e: unknown): boolean => e instanceof RangeError;
    assert.throws(() => addon.mmioRead(mem, 2, 4), outOfRange, 'misaligned');
    assert.throws(() => addon.mmioRead(mem, 4096, 4), outOfRange, 'past the end');
    assert.throws(() => addon.mmioWrite(mem, -8, 8, 0n), outOfRange, 'negative');
    assert.throws(() => addon.mmioRead(mem, 0, 3), TypeError, 'not a width');
  } finally {
    addon.unmap(mem);
  }
  assert.throws(() => addon.mmioRead(mem, 0, 4), (e: unknown) => (e as { code?: string }).code === 'EFAULT', 'an unmapped register');
});

test('DMA barriers are calls that return nothing; registers go through views only on the V8 the VM suite proved (11, Node 20)', () => {
  assert.equal(addon.dmaWriteBarrier(), undefined);
  assert.equal(addon.dmaReadBarrier(), undefined);
  const mem = addon.allocDma(4096, false);
  try {
    assert.equal(new NativeKernel(addon).mmioDirect(mem), process.versions.v8.startsWith('11.'));
  } finally {
    addon.unmap(mem);
  }
});

test('eventfd: a watch gets the counter on the event loop, unwatch stops it, and the live counts follow', async () => {
  const before = addon.liveCounts();
  const fd = addon.eventfd();
  try {
    const counts: bigint[] = [];
    let wake: () => void = () => {};
    const handle = addon.watch(fd, (err, count) => {
      assert.equal(err, null);
      counts.push(count!);
      wake();
    });
    assert.equal(addon.liveCounts().watches, before.watches + 1);
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(3n);
    fs.writeSync(fd, one); // eventfd_signal, thrice over
    await new Promise<void>((r) => (wake = r));
    assert.deepEqual(counts, [3n], 'the count, read (and reset) in one callback');
    addon.unwatch(handle);
    addon.unwatch(handle); // again: nothing
    assert.equal(addon.liveCounts().watches, before.watches);
    fs.writeSync(fd, one);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(counts, [3n], 'no callback after unwatch');
  } finally {
    fs.closeSync(fd);
  }
  assert.deepEqual(addon.liveCounts(), before);
});
