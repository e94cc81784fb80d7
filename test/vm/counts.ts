// What a leak would leave behind in this process, counted without trusting the garbage collector:
// every open fd by what it points at (VFIO and iommufd nodes, eventfds and VFIO device files, but also
// sysfs and /proc files, sockets and pipes), the mappings of VFIO nodes in /proc/self/maps, and the
// addon's live mappings and watches together with those its finalizers had to undo (a buffer or watch
// dropped without unmap/unwatch is a leak even once collected).
import fs from 'node:fs';
import { loadAddon } from '../../src/sys/native-kernel.js';

export interface Counts {
  /** open fds by what they point at (socket and pipe inode numbers dropped) */
  fds: Record<string, number>;
  /** lines of /proc/self/maps that map a VFIO node or device file */
  maps: number;
  live: { mappings: number; watches: number; finalized: { mappings: number; watches: number } };
}

const VFIO_MAP = /\/dev\/(vfio|iommu)|vfio-device/;

export function counts(): Counts {
  const fds: Record<string, number> = {};
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // the directory fd readdir used, closed since
    }
    const kind = target.replace(/^(socket|pipe):\[\d+\]$/, '$1');
    fds[kind] = (fds[kind] ?? 0) + 1;
  }
  const maps = fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => VFIO_MAP.test(l)).length;
  return { fds, maps, live: loadAddon().liveCounts() };
}
