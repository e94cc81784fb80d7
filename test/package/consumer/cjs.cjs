// A consumer's CommonJS module: require() of the package (an ES module; Node >= 20.19 loads it).
const { allocDmaBuffer, openDevice, VfioError } = require('vfio-bind');

const buf = allocDmaBuffer(4096);
buf.bytes.fill(0xa5); // real memory: written here, read back below
const result = { module: 'cjs', arch: process.arch, bufferBytes: buf.bytes.length, readBack: buf.bytes[4095], address: buf.address > 0n };
buf.free();
try {
  openDevice('ffff:ff:1f.7');
} catch (e) {
  result.error = { isVfioError: e instanceof VfioError, kind: e.kind, exitCode: e.exitCode };
}
console.log(JSON.stringify(result));
