// Run unprivileged by permissions.test.ts, with nodes a privileged parent opened at fds 3 and 4
// (the cdev and /dev/iommu, or the group node and /dev/vfio/vfio). It shows that it could not open
// the nodes itself, binds through the fds with the library (ownFds false), and looks at the fds again
// after close(). One JSON object on stdout.
import fs from 'node:fs';
import { openDevice, type PassedFds } from '../../src/index.js';
import { errorRecord } from './helpers.js';

const [mode, device, ...nodes] = process.argv.slice(2) as [string, string, ...string[]];
const fds: PassedFds = mode === 'iommufd' ? { device: 3, iommufd: 4 } : { group: 3, container: 4 };

const opens = Object.fromEntries(nodes.map((p) => {
  try {
    fs.closeSync(fs.openSync(p, fs.constants.O_RDWR));
    return [p, 'ok'];
  } catch (e) {
    return [p, (e as NodeJS.ErrnoException).code];
  }
}));
const look = () => [3, 4].map((fd) => {
  try {
    return { fd, target: fs.readlinkSync(`/proc/self/fd/${fd}`), rdev: fs.fstatSync(fd).rdev };
  } catch (e) {
    return { fd, error: (e as NodeJS.ErrnoException).code };
  }
});
const before = look();
const binds = [];
// Twice: the fds are still the caller's after close(), so they can be used again.
for (let i = 0; i < 2; i++) {
  try {
    const d = openDevice(device, { fds, ownFds: false });
    binds.push({ route: d.route, nodes: d.report.nodes });
    d.close();
  } catch (e) {
    binds.push({ error: errorRecord(e) });
  }
}
console.log(JSON.stringify({ uid: process.getuid!(), opens, before, binds, after: look() }));
