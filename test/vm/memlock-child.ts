// Run by device.test.ts without CAP_IPC_LOCK and with a small RLIMIT_MEMLOCK: maps 1 MiB, prints the error.
import { allocDmaBuffer, KernelError, openDevice } from '../../src/index.js';

using dev = openDevice(process.argv[2]!);
using buf = allocDmaBuffer(1 << 20);
try {
  dev.context.map(buf);
  console.log('mapped: the limit did not apply');
  process.exitCode = 1;
} catch (e) {
  if (!(e instanceof KernelError)) throw e;
  console.log(`${e.message}\nhint: ${e.hint}`);
  // with --exit-code: exit as the CLI would for this error (the README's 7: the kernel refused)
  if (process.argv.includes('--exit-code')) process.exitCode = e.exitCode;
}
