// Every real-kernel test, in this one node process (testbed/matrix.sh runs it directly, not under
// `node --test`, which would start a second node: 1-2.5 s in a TCG guest).
import { after } from 'node:test';
import { CASE_TESTS, testsRun } from './case-test.js';
import { CASE } from './helpers.js';

// A case this suite does not know (a renamed case, no VM_CASE) would skip nearly everything and pass.
if (!(CASE in CASE_TESTS)) {
  process.stderr.write(`VM_CASE="${CASE}" is not a case of this suite (${Object.keys(CASE_TESTS).join(', ')})\n`);
  process.exit(2);
}
after(() => {
  const want = CASE_TESTS[CASE]!;
  if (testsRun() < want) throw new Error(`${CASE} ran ${testsRun()} tests; it must run at least ${want} (test/vm/case-test.ts)`);
  process.stdout.write(`${CASE}: ${testsRun()} tests ran (at least ${want} must)\n`);
});
import './bind.test.js';
import './mdev.test.js';
import './migration.test.js';
import './dma-logging.test.js';
import './dma-batch.test.js';
import './dma-p2p.test.js';
import './type1-dirty.test.js';
import './hwpt.test.js';
import './device.test.js';
import './mmio-direct.test.js';
import './host.test.js';
import './race.test.js';
import './leaks.test.js';
import './permissions.test.js';
import './consumer.test.js';
import './requests.test.js';
import './claims.test.js';
import './claims-dma.test.js';
import './scenarios.test.js';
import './pages.test.js';

// What `node --test --test-timeout` would do: a case whose tests hang fails with a message, well
// before the guest's own timeout (VM_CASE_TIMEOUT) kills it.
const LIMIT_S = 600;
setTimeout(() => {
  process.stderr.write(`the VM tests did not finish within ${LIMIT_S} s\n`);
  process.exit(124);
}, LIMIT_S * 1000).unref();
