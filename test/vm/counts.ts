// What a leak would leave behind in this process: fds on VFIO and iommufd nodes, eventfds and VFIO
// device files, mappings of VFIO nodes, and the addon's live mappings and eventfd watches.
import fs from 'node:fs';
import { loadAddon } from '../../src/sys/native-kernel.js';

export interface Counts {
  /** open fds by what they point at */
  fds: Record<string, number>;
  /** lines of /proc/self/maps that map a VFIO node or device file */
  maps: number;
  live: { mappings: number; watches: number };
}

const TRACKED_FD = /^\/dev\/(vfio|iommu)|^anon_inode:\[(eventfd|vfio-device)\]$/;
const TRACKED_MAP = /\/dev\/(vfio|iommu)|vfio-device/;

export function counts(): Counts {
  const fds: Record<string, number> = {};
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // the directory fd readdir used, closed since
    }
    if (TRACKED_FD.test(target)) fds[target] = (fds[target] ?? 0) + 1;
  }
  const maps = fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => TRACKED_MAP.test(l)).length;
  return { fds, maps, live: loadAddon().liveCounts() };
}

