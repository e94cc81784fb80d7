// npm run bench: ratios of vfio-bind against C and plain Node, measured side by side in one run.
//  1. per-ioctl cost through the addon vs a C loop (FIONREAD on a file, here on the host)
//  2. `vfio-bind --version` start-up vs `node -e 0`
//  3. in a test-bed guest (iommufd-6.12 + intel-iommu): library bind vs the C witness, both routes,
//     VFIO_DEVICE_GET_INFO through the addon vs C, DMA map + unmap (1 GiB in 2 MiB chunks, 64 MiB in
//     4 KiB pages) vs C on both routes, and BAR0 register reads vs C (bench/guest.ts)
// Each comparison alternates the two sides and reports medians. Pass --host to skip the guest, or
// names of bench/guest.ts's sections (bind get_info dma-2m dma-4k dma-batch mmio p2p dma-scale) to run only those there.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadAddon } from '../src/sys/native-kernel.js';
import { dmaLibraryCost } from './host-dma.js';
import { median, ratioLine } from './stats.js';

const root = path.resolve(import.meta.dirname, '../..');
const FIONREAD = 0x541b;

function ioctlCost(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-bind-bench-'));
  try {
    const loop = path.join(dir, 'ioctl-loop');
    execFileSync('gcc', ['-O2', '-o', loop, path.join(root, 'bench/c/ioctl-loop.c')]);
    const file = path.join(dir, 'data');
    fs.writeFileSync(file, 'x'.repeat(100));
    const addon = loadAddon();
    const fd = fs.openSync(file, 'r');
    const out = Buffer.alloc(4);
    const n = 1_000_000;
    const js: number[] = [];
    const c: number[] = [];
    const floor: number[] = [];
    for (let round = 0; round < 7; round++) {
      let t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) addon.ioctl(fd, FIONREAD, out);
      js.push(Number(process.hrtime.bigint() - t0) / n);
      c.push(Number(execFileSync(loop, [String(n), file], { encoding: 'utf8' })));
      t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) addon.noop();
      floor.push(Number(process.hrtime.bigint() - t0) / n);
    }
    fs.closeSync(fd);
    if (out.readInt32LE(0) !== 100) throw new Error('FIONREAD did not report the file size');
    const [ours, theirs, call] = [median(js), median(c), median(floor)];
    // the floor: a Node-API call that does nothing; what is left over is the addon's own work
    return `${ratioLine('ioctl(FIONREAD) through the addon vs C', ours, theirs, 'ns', 1.1)}\n` +
      `  the floor, an empty Node-API call: ${call.toFixed(1)} ns. The addon's ioctl is C's ${theirs.toFixed(1)} ns + that call + ` +
      `${(ours - theirs - call).toFixed(1)} ns of its own (reading the arguments, the buffer's address, errno); C + the floor would be ${((theirs + call) / theirs).toFixed(2)}x`;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function startup(): string {
  const cli = path.join(root, 'bin/vfio-bind.js');
  const time = (args: string[]): number => {
    const t0 = process.hrtime.bigint();
    const r = spawnSync(process.execPath, args, { stdio: 'ignore' });
    if (r.status !== 0) throw new Error(`${args.join(' ')} exited ${r.status}`);
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  time(['-e', '0']);
  time([cli, '--version']); // warm the page cache
  const ours: number[] = [];
  const base: number[] = [];
  for (let i = 0; i < 15; i++) {
    base.push(time(['-e', '0']));
    ours.push(time([cli, '--version']));
  }
  return ratioLine('`vfio-bind --version` vs `node -e 0`', median(ours), median(base), 'ms', 1.3);
}

console.log(`vfio-bind benchmarks, ${new Date().toISOString()}, node ${process.version}, ${os.cpus().length} cpus`);
console.log(ioctlCost());
console.log(startup());
console.log(dmaLibraryCost());
if (!process.argv.includes('--host')) {
  console.log('in a test-bed guest (iommufd-6.12-intel, multi-threaded TCG; every syscall is emulated):');
  const testbed = path.join(root, 'testbed');
  execFileSync(path.join(testbed, 'setup-host.sh'), { stdio: ['ignore', 'ignore', 'inherit'] });
  const asked = process.argv.slice(2).filter((a) => /^[a-z0-9_-]+$/.test(a));
  const probe = execFileSync(path.join(testbed, 'build-probe.sh'), { encoding: 'utf8' }).trim();
  // The guest of matrix.sh's iommufd-6.12-intel case, booted here because the DMA benchmarks need more
  // than its defaults: room for 1 GiB of DMA buffers besides node (VM_MEM) and more than 300 s. With
  // --mttcg each vCPU has its own host thread, as each CPU is its own core on hardware: on
  // single-threaded TCG, node's JIT and GC threads on the other vCPU were charged to the thread being
  // timed (C has none), and every side of a comparison slowed together in some rounds.
  const guest = (sections: string[], append: string[] = []): void => {
    const r = spawnSync(
      path.join(testbed, 'run-vm.sh'),
      ['--kernel', 'iommufd-6.12', '--iommu', 'intel', '--mttcg', '--timeout', '1800', '--device', 'edu,addr=12.0', ...append, '--env', `VFIO_PROBE=${probe}`,
        '--env', 'VM_CASE=iommufd-6.12-intel', '--', ['node dist/bench/guest.js', ...sections].join(' ')],
      { cwd: root, env: { ...process.env, VM_MEM: '4G' }, stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' },
    );
    if (r.status !== 0) {
      process.stderr.write(r.stderr);
      process.exitCode = 1;
    }
  };
  // dma-thp needs a guest with THP in madvise mode (Ubuntu's default), booted apart
  const rest = asked.filter((s) => s !== 'dma-thp');
  if (asked.length === 0 || rest.length > 0) guest(rest);
  if (asked.length === 0 || asked.includes('dma-thp')) {
    console.log('in a guest booted with transparent_hugepage=madvise:');
    guest(['dma-thp'], ['--append', 'transparent_hugepage=madvise']);
  }
}
