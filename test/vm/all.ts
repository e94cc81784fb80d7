// Every real-kernel test, in one node process: node takes 1-2.5 s to start in a TCG guest.
import './bind.test.js';
import './mdev.test.js';
import './device.test.js';
import './host.test.js';
import './race.test.js';
import './leaks.test.js';
import './permissions.test.js';
