// A TypeScript consumer (module: nodenext), type-checked against the installed package's .d.ts.
import { allocDmaBuffer, openDevice, VfioError, type DmaBuffer, type VfioDevice } from 'vfio-bind';

const buf: DmaBuffer = allocDmaBuffer(4096, { hugePages: false });
const bytes: Buffer = buf.bytes;
const address: bigint = buf.address;
buf.free();

export function bind(spec: string): string {
  try {
    using device: VfioDevice = openDevice(spec, { route: 'auto' });
    return `${device.route} ${bytes.length} ${address}`;
  } catch (e) {
    if (e instanceof VfioError) return `${e.kind} ${e.exitCode} ${e.errno ?? ''}`;
    throw e;
  }
}
