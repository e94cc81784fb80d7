// The iommufd route: /dev/iommu + the device's VFIO cdev. BIND is the ownership contract (a cdev opens
// "parked" and accepts nothing else), then the device is attached to the context's IOAS.
import type { CdevLocation, DeviceLocation } from '../discovery/locate.js';
import type { Logger } from '../log.js';
import { closeQuietly, FdStack, StepCalls } from '../sys/calls.js';
import { makedev, type Kernel } from '../sys/kernel.js';
import { decode, encode } from '../uapi/struct.js';
import {
  IOMMU,
  IOMMU_IOAS_MAP_FLAG,
  iommu_destroy,
  iommu_ioas_alloc,
  iommu_ioas_iova_ranges,
  iommu_ioas_map,
  iommu_ioas_unmap,
  iommu_iova_range,
} from '../uapi/iommufd.js';
import type { IovaRange } from '../dma/iova.js';
import { VFIO, vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfio_device_detach_iommufd_pt } from '../uapi/vfio.js';
import { IommuContext, type BeforeBindHook, type Binding, type PassedFd } from './route.js';

export const IOMMUFD_NODE = '/dev/iommu';

export class IommufdContext extends IommuContext {
  readonly route = 'iommufd' as const;
  readonly node = IOMMUFD_NODE;
  private ioasId: number | null = null;

  private constructor(kernel: Kernel, log: Logger, readonly fd: number, private readonly ownsFd = true) {
    super(kernel, log);
  }

  /** Opens /dev/iommu (step "open /dev/iommu"). */
  static open(kernel: Kernel, log: Logger): IommufdContext {
    const calls = new StepCalls(kernel, 'iommufd', log);
    return new IommufdContext(kernel, log, calls.open('open /dev/iommu', IOMMUFD_NODE));
  }

  /** Uses an iommufd opened by someone else (checked by the caller to be /dev/iommu). */
  static adopt(kernel: Kernel, log: Logger, passed: PassedFd): IommufdContext {
    return new IommufdContext(kernel, log, passed.fd, false);
  }

  /** The context's IO address space, allocated on first use (step IOMMU_IOAS_ALLOC). */
  ioas(calls: StepCalls): number {
    if (this.ioasId === null) {
      const arg = encode(iommu_ioas_alloc, { size: iommu_ioas_alloc.size });
      calls.ioctl('IOMMU_IOAS_ALLOC', this.fd, IOMMU.IOAS_ALLOC, arg);
      this.ioasId = decode(iommu_ioas_alloc, arg).out_ioas_id;
    }
    return this.ioasId;
  }

  /** The IOAS id once allocated (for iommufd ioctls this library does not wrap), else null. */
  get ioasIdOrNull(): number | null {
    return this.ioasId;
  }

  bind(loc: DeviceLocation, beforeBind?: BeforeBindHook, passed?: PassedFd): Binding {
    const calls = this.steps();
    const cdev = loc.cdev;
    if (!cdev) {
      return calls.fail('find cdev', null, `${loc.name} has no vfio-dev entry in sysfs`, `${loc.sysfsPath}/vfio-dev`);
    }
    if (!cdev.devnum) {
      return calls.fail('find cdev', null, `${loc.sysfsPath}/vfio-dev/${cdev.name} has no dev attribute`, `${loc.sysfsPath}/vfio-dev/${cdev.name}/dev`);
    }
    const fds = new FdStack(this.kernel);
    try {
      const { fd: deviceFd, path } = passed
        ? { fd: passed.fd, path: `fd ${passed.fd}` }
        : openCdev(calls, fds, cdev);
      beforeBind?.({ route: 'iommufd', fd: deviceFd, path });
      const bind = encode(vfio_device_bind_iommufd, { argsz: vfio_device_bind_iommufd.size, iommufd: this.fd });
      calls.ioctl('VFIO_DEVICE_BIND_IOMMUFD', deviceFd, VFIO.DEVICE_BIND_IOMMUFD, bind);
      const devid = decode(vfio_device_bind_iommufd, bind).out_devid;
      // Bound: the device is ours from here on; a failure below is reported, never a reason to fall back.
      const ioas = this.ioas(calls);
      const attach = encode(vfio_device_attach_iommufd_pt, { argsz: vfio_device_attach_iommufd_pt.size, pt_id: ioas });
      calls.ioctl('VFIO_DEVICE_ATTACH_IOMMUFD_PT', deviceFd, VFIO.DEVICE_ATTACH_IOMMUFD_PT, attach);
      const hwpt = decode(vfio_device_attach_iommufd_pt, attach).pt_id;
      fds.release();
      return {
        deviceFd,
        nodes: { iommu: this.node, cdev: path },
        ids: { devid, ioas, hwpt },
        release: () => {
          if (!passed) closeQuietly(this.kernel, deviceFd);
          else detach(this.kernel, deviceFd); // a lent device fd leaves our IOAS, and stays open
        },
      };
    } catch (e) {
      fds.closeAll();
      if (passed) detach(this.kernel, passed.fd); // a no-op unless it got attached
      throw e;
    }
  }

  protected closeResources(): void {
    if (this.ownsFd) {
      closeQuietly(this.kernel, this.fd); // which frees the IOAS and every mapping in it
      return;
    }
    // A lent iommufd stays open: take out what we put in it (our mappings, then our IOAS).
    for (const m of this.mappings()) {
      try {
        this.unmapRaw(m.iova, m.size);
      } catch {
        // gone already: the IOAS goes next anyway
      }
    }
    if (this.ioasId !== null) {
      try {
        this.kernel.ioctl(this.fd, IOMMU.DESTROY, encode(iommu_destroy, { size: iommu_destroy.size, id: this.ioasId }));
      } catch {
        // a device someone else attached to it keeps it alive; it is theirs then
      }
    }
  }

  dmaUnavailable(): string | null {
    return null; // an IOAS exists (or is made) whether or not a device is attached yet
  }

  geometry(): { ranges: IovaRange[]; alignment: bigint } {
    const calls = this.steps();
    const ioas = this.ioas(calls);
    // The ranges come back through a user pointer, so the array lives in addon memory; a page holds 256.
    const scratch = calls.run('allocate the IOVA range list', undefined, () => this.kernel.allocDma(4096, false));
    try {
      const capacity = scratch.byteLength / iommu_iova_range.size;
      const arg = encode(iommu_ioas_iova_ranges, {
        size: iommu_ioas_iova_ranges.size, ioas_id: ioas, num_iovas: capacity, allowed_iovas: this.kernel.addressOf(scratch),
      });
      calls.ioctl('IOMMU_IOAS_IOVA_RANGES', this.fd, IOMMU.IOAS_IOVA_RANGES, arg);
      const out = decode(iommu_ioas_iova_ranges, arg);
      const bytes = Buffer.from(scratch);
      const ranges = Array.from({ length: Math.min(out.num_iovas, capacity) }, (_, i) => {
        const r = decode(iommu_iova_range, bytes, i * iommu_iova_range.size);
        return { start: r.start, last: r.last };
      });
      return { ranges, alignment: out.out_iova_alignment > 0n ? out.out_iova_alignment : 4096n };
    } finally {
      this.kernel.unmap(scratch);
    }
  }

  mapRaw(vaddr: bigint, iova: bigint, size: bigint, readable: boolean, writable: boolean): void {
    const calls = this.steps();
    const flags = IOMMU_IOAS_MAP_FLAG.FIXED_IOVA | (readable ? IOMMU_IOAS_MAP_FLAG.READABLE : 0) | (writable ? IOMMU_IOAS_MAP_FLAG.WRITEABLE : 0);
    const arg = encode(iommu_ioas_map, { size: iommu_ioas_map.size, flags, ioas_id: this.ioas(calls), user_va: vaddr, length: size, iova });
    calls.ioctl('IOMMU_IOAS_MAP', this.fd, IOMMU.IOAS_MAP, arg);
  }

  unmapRaw(iova: bigint, size: bigint): void {
    const calls = this.steps();
    const arg = encode(iommu_ioas_unmap, { size: iommu_ioas_unmap.size, ioas_id: this.ioas(calls), iova, length: size });
    calls.ioctl('IOMMU_IOAS_UNMAP', this.fd, IOMMU.IOAS_UNMAP, arg);
  }
}

/** Detaches a device fd from its IOAS (VFIO_DEVICE_DETACH_IOMMUFD_PT); answers are ignored. */
function detach(kernel: Kernel, deviceFd: number): void {
  try {
    kernel.ioctl(deviceFd, VFIO.DEVICE_DETACH_IOMMUFD_PT, encode(vfio_device_detach_iommufd_pt, { argsz: vfio_device_detach_iommufd_pt.size }));
  } catch {
    // not attached (a failure before ATTACH), or already gone
  }
}

/**
 * Opens the device's cdev: /dev/vfio/devices/vfioN, else udev's /dev/char/MAJ:MIN. A node is used only
 * if it is a character device with the number sysfs gives: a stale or planted node is never trusted.
 */
function openCdev(calls: StepCalls, fds: FdStack, cdev: CdevLocation): { fd: number; path: string } {
  const want = makedev(cdev.devnum!.major, cdev.devnum!.minor);
  const mismatched: string[] = [];
  for (const path of cdev.nodes) {
    let fd: number;
    try {
      fd = fds.push(calls.open('open cdev', path));
    } catch (e) {
      if ((e as { errno?: unknown }).errno === 'ENOENT') continue;
      throw e;
    }
    const st = calls.run('check cdev', path, () => calls.kernel.fstat(fd));
    if (st.isCharacterDevice && st.rdev === want) return { fd, path };
    fds.closeLast();
    mismatched.push(path);
  }
  const devnum = `${cdev.devnum!.major}:${cdev.devnum!.minor}`;
  return calls.fail(
    'open cdev',
    'ENOENT',
    mismatched.length > 0
      ? `no node for the cdev ${cdev.name} (${devnum}): ${mismatched.join(', ')} ${mismatched.length > 1 ? 'are' : 'is'} a different device`
      : `no node for the cdev ${cdev.name} (${devnum}): ${cdev.nodes.join(' and ')} do not exist`,
    cdev.nodes[0],
  );
}
