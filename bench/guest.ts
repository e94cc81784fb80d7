// Runs inside a test-bed guest (bench/run.ts starts it): library bind and VFIO_DEVICE_GET_INFO vs the
// C witness testbed/guest/vfio-probe.c doing the same ioctl sequence, both routes.
import { execFileSync } from 'node:child_process';
import { openDevice } from '../src/index.js';
import { loadAddon } from '../src/sys/native-kernel.js';
import { encode } from '../src/uapi/struct.js';
import { VFIO, vfio_device_info } from '../src/uapi/vfio.js';
import { median, ratioLine } from './stats.js';

const EDU = '0000:00:10.0';
const probe = process.env.VFIO_PROBE;
if (!probe) throw new Error('VFIO_PROBE is not set: run this through bench/run.ts');

const cBench = (args: string[], key: string): number => {
  const out = execFileSync(probe, args, { encoding: 'utf8' });
  const m = new RegExp(`${key}=([0-9.]+)`).exec(out);
  if (!m) throw new Error(`no ${key} in: ${out}`);
  return Number(m[1]);
};

for (const route of ['iommufd', 'legacy'] as const) {
  const n = 200;
  openDevice(EDU, { route }).close(); // warm-up
  const js: number[] = [];
  const c: number[] = [];
  for (let round = 0; round < 5; round++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) openDevice(EDU, { route }).close();
    js.push(Number(process.hrtime.bigint() - t0) / n / 1000);
    c.push(cBench(['-n', String(n), route, EDU], 'ns_per_bind') / 1000);
  }
  console.log(ratioLine(`bind+close (${route}), library vs C`, median(js), median(c), 'us', 1.2));
}

{
  // the device is bound by one side at a time: ours in-process, then the C witness
  const n = 20_000;
  const addon = loadAddon();
  const buf = encode(vfio_device_info, { argsz: vfio_device_info.size });
  const js: number[] = [];
  const c: number[] = [];
  for (let round = 0; round < 5; round++) {
    const device = openDevice(EDU, { route: 'iommufd' });
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) addon.ioctl(device.fd, VFIO.DEVICE_GET_INFO, buf);
    js.push(Number(process.hrtime.bigint() - t0) / n);
    device.close();
    c.push(cBench(['-i', String(n), 'iommufd', EDU], 'ns_per_ioctl'));
  }
  console.log(ratioLine('VFIO_DEVICE_GET_INFO through the addon vs C', median(js), median(c), 'ns', 1.1));
}
