// Run under strace by bench/bind-syscalls.ts: ROUNDS binds + closes of DEVICE by ROUTE, each round
// preceded by an access(2) of a path that does not exist (the mark), and one mark after the last.
//   node dist/bench/bind-child.js ROUTE DEVICE ROUNDS
import fs from 'node:fs';
import { openDevice } from '../src/index.js';
import { BIND_MARK } from './bind-syscalls.js';

const [route, device, rounds] = process.argv.slice(2);
if ((route !== 'iommufd' && route !== 'legacy') || !device || !Number(rounds)) {
  throw new Error('usage: bind-child.js iommufd|legacy DEVICE ROUNDS');
}
const mark = (): void => {
  try {
    fs.accessSync(BIND_MARK);
  } catch {
    // the mark is a path that does not exist: only its system call matters
  }
};
for (let i = 0; i < Number(rounds); i++) {
  mark();
  openDevice(device, { route }).close();
}
mark();
