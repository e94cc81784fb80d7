// The iommufd route: /dev/iommu + the device's VFIO cdev. BIND is the ownership contract (a cdev opens
// "parked" and accepts nothing else), then the device is attached to the context's IOAS.
import type { CdevLocation, DeviceLocation } from '../discovery/locate.js';
import type { IovaRange } from '../dma/iova.js';
import { attachIommufdPt, bindIommufd, destroy, detachIommufdPt, ioasAlloc, ioasIovaRanges, ioasMap, ioasUnmap } from '../ioctl/iommufd.js';
import type { Logger } from '../log.js';
import { closeQuietly, FdStack, quietly, StepCalls } from '../sys/calls.js';
import { makedev, type Kernel } from '../sys/kernel.js';
import { IommuContext, type BeforeBindHook, type Binding, type PassedFd, type RouteDescriptor } from './route.js';

export class IommufdContext extends IommuContext {
  readonly route = 'iommufd' as const;
  readonly node = IOMMUFD_ROUTE.node;
  private ioasId: number | null = null;

  private constructor(kernel: Kernel, log: Logger, readonly fd: number, private readonly ownsFd = true) {
    super(kernel, log);
  }

  /** Opens /dev/iommu (step "open /dev/iommu"). */
  static open(kernel: Kernel, log: Logger): IommufdContext {
    const calls = new StepCalls(kernel, 'iommufd', log);
    return new IommufdContext(kernel, log, calls.open(IOMMUFD_ROUTE.openStep, IOMMUFD_ROUTE.node));
  }

  /** Uses an iommufd opened by someone else (checked by the caller to be /dev/iommu). */
  static adopt(kernel: Kernel, log: Logger, passed: PassedFd): IommufdContext {
    return new IommufdContext(kernel, log, passed.fd, false);
  }

  /** The context's IO address space, allocated on first use (step IOMMU_IOAS_ALLOC). */
  ioas(calls: StepCalls): number {
    return (this.ioasId ??= ioasAlloc(calls, this.fd));
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
      const { devid } = bindIommufd(calls, deviceFd, this.fd);
      // Bound: the device is ours from here on; a failure below is reported, never a reason to fall back.
      const ioas = this.ioas(calls);
      const hwpt = attachIommufdPt(calls, deviceFd, ioas).ptId;
      fds.release();
      return {
        deviceFd,
        nodes: { iommu: this.node, cdev: path },
        ids: { devid, ioas, hwpt },
        release: () => {
          if (!passed) closeQuietly(this.kernel, deviceFd);
          else quietly(() => detachIommufdPt(this.steps(), deviceFd)); // a lent device fd leaves our IOAS, and stays open
        },
      };
    } catch (e) {
      fds.closeAll();
      if (passed) quietly(() => detachIommufdPt(calls, passed.fd)); // a no-op unless it got attached
      throw e;
    }
  }

  protected closeResources(): void {
    if (this.ownsFd) {
      closeQuietly(this.kernel, this.fd); // which frees the IOAS and every mapping in it
      return;
    }
    // A lent iommufd stays open: take out what we put in it (our mappings, then our IOAS).
    for (const m of this.mappings()) quietly(() => this.unmapRaw(m.iova, m.size)); // gone already: the IOAS goes next anyway
    // a device someone else attached to the IOAS keeps it alive; it is theirs then
    if (this.ioasId !== null) quietly(() => destroy(this.steps(), this.fd, this.ioasId!));
  }

  dmaUnavailable(): string | null {
    return null; // an IOAS exists (or is made) whether or not a device is attached yet
  }

  geometry(): { ranges: IovaRange[]; alignment: bigint } {
    const calls = this.steps();
    const { ranges, alignment } = ioasIovaRanges(calls, this.kernel, this.fd, this.ioas(calls));
    return { ranges, alignment: alignment > 0n ? alignment : 4096n };
  }

  mapRaw(vaddr: bigint, iova: bigint, size: bigint, readable: boolean, writable: boolean): void {
    const calls = this.steps();
    ioasMap(calls, this.fd, { ioasId: this.ioas(calls), vaddr, iova, length: size, readable, writable });
  }

  unmapRaw(iova: bigint, size: bigint): void {
    const calls = this.steps();
    const unmapped = ioasUnmap(calls, this.fd, this.ioas(calls), iova, size);
    if (unmapped !== size) calls.fail('IOMMU_IOAS_UNMAP', null, `the kernel unmapped ${unmapped} of ${size} bytes`);
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

/** The iommufd route: /dev/iommu and the device's cdev (/dev/vfio/devices/vfioN). */
export const IOMMUFD_ROUTE: RouteDescriptor = {
  name: 'iommufd',
  node: '/dev/iommu',
  openStep: 'open /dev/iommu',
  nodeDevAttr: '/sys/class/misc/iommu/dev',
  unsafeInterruptsModule: 'iommufd',
  fds: { context: 'iommufd', device: 'device' },
  deviceNode: (loc) => (loc.cdev ? `/dev/vfio/devices/${loc.cdev.name}` : null),
  deviceDevnum: (_kernel, loc) => (loc.cdev?.devnum ? makedev(loc.cdev.devnum.major, loc.cdev.devnum.minor) : null),
  visible: (kernel, loc) => loc.cdev?.devnum != null && kernel.exists('/dev/iommu') && loc.cdev.nodes.some((n) => kernel.exists(n)),
  open: (kernel, log) => IommufdContext.open(kernel, log),
  adopt: (kernel, log, passed) => IommufdContext.adopt(kernel, log, passed),
};
