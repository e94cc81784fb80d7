// Every real-kernel test, in this one node process (testbed/matrix.sh runs it directly, not under
// `node --test`, which would start a second node: 1-2.5 s in a TCG guest).
import './bind.test.js';
import './mdev.test.js';
import './device.test.js';
import './host.test.js';
import './race.test.js';
import './leaks.test.js';
import './permissions.test.js';
import './consumer.test.js';
import './requests.test.js';

// What `node --test --test-timeout` would do: a case whose tests hang fails with a message, well
// before the guest's own timeout (VM_CASE_TIMEOUT) kills it.
const LIMIT_S = 600;
setTimeout(() => {
  process.stderr.write(`the VM tests did not finish within ${LIMIT_S} s\n`);
  process.exit(124);
}, LIMIT_S * 1000).unref();
