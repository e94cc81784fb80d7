// Memory a request points into: the kernel reads or writes it through a user pointer (a range list, a
// dirty bitmap), so it must be addon memory with a fixed address, not a movable Buffer. Whole pages,
// unmapped when the request is done.
import type { StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import type { Step } from '../sys/steps.js';

const PAGE = 4096;

/** Runs fn with `bytes` (rounded up to pages) of zeroed addon memory and its address. */
export function withScratch<T>(calls: StepCalls, kernel: Kernel, step: Step & `allocate ${string}`, bytes: number,
  fn: (memory: Buffer, address: bigint) => T): T {
  const length = Math.max(PAGE, Math.ceil(bytes / PAGE) * PAGE);
  const scratch = calls.run(step, undefined, () => kernel.allocDma(length, false));
  try {
    return fn(Buffer.from(scratch), kernel.addressOf(scratch));
  } finally {
    kernel.unmap(scratch);
  }
}
