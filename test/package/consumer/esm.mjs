// A consumer's ES module: the installed package's library, its addon and its typed errors.
// Prints one JSON line; test/package/check.sh (and the VM suite, with a device) check it.
import fs from 'node:fs';
import { allocDmaBuffer, openDevice, VfioError } from 'vfio-bind';

const buf = allocDmaBuffer(4096);
buf.bytes.fill(0xa5); // real memory: written here, read back below
const result = { module: 'esm', arch: process.arch, bufferBytes: buf.bytes.length, readBack: buf.bytes[4095], address: buf.address > 0n };
buf.free();
const spec = process.argv[2];
if (spec) {
  // a real device (in a test-bed guest): bind it, say how, release it
  const device = openDevice(spec);
  try {
    result.route = device.route;
    result.report = device.report;
  } finally {
    device.close();
  }
} else {
  try {
    openDevice('ffff:ff:1f.7'); // no such device anywhere
  } catch (e) {
    result.error = { isVfioError: e instanceof VfioError, kind: e.kind, exitCode: e.exitCode };
  }
}
// which binary this process loaded: the one inside the consumer's node_modules
result.addon = fs.readFileSync('/proc/self/maps', 'utf8').split('\n').map((l) => l.split(/\s+/)[5]).find((p) => p?.endsWith('vfio_addon.node')) ?? null;
console.log(JSON.stringify(result));
