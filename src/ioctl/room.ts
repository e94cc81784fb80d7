// The "ask, and ask again with room" dance of VFIO's variable-size answers: an info struct starts
// small, and the kernel says how much it needs (argsz grown past what was sent, for a capability
// chain; or ENOSPC with a count filled in, for the hot-reset device list). One place for it.
import { StepError } from '../errors.js';
import type { StepCalls } from '../sys/calls.js';
import type { RequestName } from '../uapi/requests.js';

export interface RoomOptions {
  /** the kernel answers ENOSPC (with the needed size readable in the buffer) when there is no room */
  enospc?: boolean;
}

/**
 * Issues `name` with a buffer from build(size); if needed(answer) asks for more than was sent,
 * issues it once more with that much. Returns the last answer.
 */
export function ioctlWithRoom(
  calls: StepCalls,
  name: RequestName,
  fd: number,
  build: (size: number) => Buffer,
  size: number,
  needed: (answer: Buffer) => number,
  options: RoomOptions = {},
): Buffer {
  let buf = build(size);
  try {
    calls.ioctl(name, fd, buf);
  } catch (e) {
    if (!options.enospc || !(e instanceof StepError) || e.errno !== 'ENOSPC') throw e;
  }
  const want = needed(buf);
  if (want <= buf.length) return buf;
  buf = build(want);
  calls.ioctl(name, fd, buf);
  return buf;
}
