// The iommufd route: /dev/iommu + the device's VFIO cdev. BIND is the ownership contract (a cdev opens
// "parked" and accepts nothing else), then the device is attached to the context's IOAS.
import { posix } from 'node:path';
import type { CdevLocation, DeviceLocation } from '../discovery/locate.js';
import type { IovaRange } from '../dma/iova.js';
import type { RawMap } from '../dma/mappings.js';
import { attachIommufdPt, bindIommufd, destroy, detachIommufdPt, ioasAlloc, ioasIovaRanges, ioasMap, ioasMapEach, ioasUnmap } from '../ioctl/iommufd.js';
import type { Logger } from '../log.js';
import { closeQuietly, FdStack, quietly, StepCalls } from '../sys/calls.js';
import { major, makedev, minor, type Kernel } from '../sys/kernel.js';
import { IommuContext, type BeforeBindHook, type Binding, type PassedFd, type RouteDescriptor } from './route.js';
import { devidOf, explainDeviceStep, HwPagetable, readHwInfo, type HwptDevice, type IommuHwInfo } from './iommufd-hwpt.js';
import { StepError, UnsupportedError, UsageError } from '../errors.js';
import { hwptAlloc } from '../ioctl/hwpt.js';
import { IOMMU_HWPT_ALLOC_FLAG } from '../uapi/iommufd.js';

export class IommufdContext extends IommuContext {
  readonly route = 'iommufd' as const;
  readonly node = IOMMUFD_ROUTE.node;
  private ioasId: number | null = null;
  private readonly hwpts = new Set<HwPagetable>();

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

  /** What the IOMMU behind a device of this context reports of itself (IOMMU_GET_HW_INFO). */
  hwInfo(device: HwptDevice): IommuHwInfo {
    return readHwInfo(this.steps(), this.kernel, this.fd, device);
  }

  /**
   * Allocates a paging HWPT over this context's IOAS for `device`'s IOMMU (IOMMU_HWPT_ALLOC);
   * attach devices to it with attach(). `dirtyTracking` asks for one that can track dirty pages: an
   * IOMMU without IOMMU_HW_CAP_DIRTY_TRACKING refuses it (an UnsupportedError).
   */
  allocHwpt(device: HwptDevice, options: { dirtyTracking?: boolean } = {}): HwPagetable {
    const calls = this.steps();
    const flags = options.dirtyTracking ? IOMMU_HWPT_ALLOC_FLAG.DIRTY_TRACKING : 0;
    // asked only where the hardware says it can, as QEMU's iommufd backend does
    const caps = options.dirtyTracking ? this.hwInfo(device).capabilities : null;
    const capsText = caps?.join(', ') || 'none';
    if (caps && !caps.includes('DIRTY_TRACKING')) {
      throw new UnsupportedError(`the IOMMU behind ${device.name} has no dirty tracking (IOMMU_GET_HW_INFO capabilities: ${capsText})`,
        { step: 'IOMMU_GET_HW_INFO', route: 'iommufd', hint: 'track dirty pages in the device (dmaLogging) if it can, or treat all mapped memory as dirty' });
    }
    let id: number;
    try {
      id = hwptAlloc(calls, this.fd, devidOf(device), this.ioas(calls), flags);
    } catch (e) {
      if (e instanceof StepError && e.errno === 'EOPNOTSUPP' && caps) {
        throw new UnsupportedError(`the IOMMU behind ${device.name} has no dirty tracking (IOMMU_GET_HW_INFO capabilities: ${capsText}): IOMMU_HWPT_ALLOC with DIRTY_TRACKING answers EOPNOTSUPP`, e.details());
      }
      if (e instanceof StepError && e.errno === 'EADDRINUSE') {
        // iopt_table_add_domain: the new domain's geometry does not cover the IOAS's mappings. A driver
        // that finalises a domain only when a device attaches (6.12's virtio-iommu) has none yet.
        throw new UnsupportedError(`the IOMMU behind ${device.name} cannot take a HWPT allocated apart over this IOAS: its new domain does not cover the IOAS's mappings (IOMMU_HWPT_ALLOC answers EADDRINUSE; virtio-iommu sets a domain's aperture only when a device attaches)`,
          { ...e.details(), hint: 'use the HWPT the bind made (the IOAS attachment); with virtio-iommu an explicit HWPT is not available' });
      }
      throw explainDeviceStep(e, device);
    }
    const hwpt = new HwPagetable({ kernel: this.kernel, fd: this.fd, steps: () => this.steps(), assertOpen: () => this.assertOpen(), forget: (h) => this.hwpts.delete(h) }, id, !!options.dirtyTracking);
    this.hwpts.add(hwpt);
    return hwpt;
  }

  /** Attaches a device of this context to one of its HWPTs, or back to the IOAS (VFIO_DEVICE_ATTACH_IOMMUFD_PT replaces the attachment). */
  attach(device: HwptDevice, target: HwPagetable | 'ioas'): void {
    const calls = this.steps();
    if (target !== 'ioas' && (target.destroyed || !this.hwpts.has(target))) throw new UsageError(`HWPT ${target.id} is not a live HWPT of this context`);
    try {
      attachIommufdPt(calls, device.fd, target === 'ioas' ? this.ioas(calls) : target.id);
    } catch (e) {
      throw explainDeviceStep(e, device);
    }
    for (const h of this.hwpts) h.attached.delete(device.name);
    if (target !== 'ioas') target.attached.add(device.name);
  }

  /** The HWPTs this context allocated and has not destroyed. */
  get hwPagetables(): HwPagetable[] {
    return [...this.hwpts];
  }

  /** @internal a device left: its fd's close detached it from any HWPT */
  override untrack(device: { close(): void }): void {
    super.untrack(device);
    const name = (device as { name?: string }).name;
    if (name !== undefined) for (const h of this.hwpts) h.attached.delete(name);
  }

  bind(loc: DeviceLocation, beforeBind?: BeforeBindHook, passed?: PassedFd): Binding {
    const calls = this.steps();
    const cdev = loc.cdev;
    if (!cdev) {
      return calls.fail('find cdev', null, `${loc.name} has no vfio-dev entry in sysfs`, `${loc.sysfsPath}/vfio-dev`);
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
    const hwpts = [...this.hwpts];
    if (!this.ownsFd) for (const h of hwpts) quietly(() => destroy(this.steps(), this.fd, h.id)); // a lent iommufd stays open: ours go
    for (const h of hwpts) h.lost();
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
    ioasMap(calls, this.fd, this.ioas(calls), { vaddr, iova, size, readable, writable });
  }

  mapRawEach(maps: readonly RawMap[]): void {
    const calls = this.steps();
    ioasMapEach(calls, this.fd, this.ioas(calls), maps);
  }

  unmapRaw(iova: bigint, size: bigint): void {
    const calls = this.steps();
    const unmapped = ioasUnmap(calls, this.fd, this.ioas(calls), iova, size);
    if (unmapped !== size) calls.fail('IOMMU_IOAS_UNMAP', null, `the kernel unmapped ${unmapped} of ${size} bytes`);
  }
}

/**
 * Opens the device's cdev: /dev/vfio/devices/vfioN, else udev's /dev/char/MAJ:MIN. A node is used only
 * if it is this device's cdev: a stale or planted node is never trusted. The first node is checked by
 * where the kernel's /sys/dev/char/MAJ:MIN of its st_rdev leads (one readlink); the cdev's number from
 * sysfs (the `dev` attribute; without one the kernel has no cdev for the device) is read only when that
 * node is missing or another device's, for the second.
 */
function openCdev(calls: StepCalls, fds: FdStack, cdev: CdevLocation): { fd: number; path: string } {
  const mismatched: string[] = [];
  const first = cdev.node;
  const fd = openIfPresent(calls, fds, first);
  if (fd !== null) {
    const st = calls.run('check cdev', first, () => calls.kernel.fstat(fd));
    if (st.isCharacterDevice && charDeviceDir(calls.kernel, st.rdev) === cdev.sysfsDir) return { fd, path: first };
    fds.closeLast();
    mismatched.push(first);
  }
  const devnum = cdev.devnum;
  if (!devnum) return calls.fail('find cdev', null, `${cdev.sysfsDir} has no dev attribute`, `${cdev.sysfsDir}/dev`);
  const want = makedev(devnum.major, devnum.minor);
  for (const path of cdev.nodes.slice(1)) {
    const other = openIfPresent(calls, fds, path);
    if (other === null) continue;
    const st = calls.run('check cdev', path, () => calls.kernel.fstat(other));
    if (st.isCharacterDevice && st.rdev === want) return { fd: other, path };
    fds.closeLast();
    mismatched.push(path);
  }
  const number = `${devnum.major}:${devnum.minor}`;
  return calls.fail(
    'open cdev',
    'ENOENT',
    mismatched.length > 0
      ? `no node for the cdev ${cdev.name} (${number}): ${mismatched.join(', ')} ${mismatched.length > 1 ? 'are' : 'is'} a different device`
      : `no node for the cdev ${cdev.name} (${number}): ${cdev.nodes.join(' and ')} do not exist`,
    first,
  );
}

/** A node opened for the 'open cdev' step, or null where it does not exist. */
function openIfPresent(calls: StepCalls, fds: FdStack, path: string): number | null {
  try {
    return fds.push(calls.open('open cdev', path));
  } catch (e) {
    if ((e as { errno?: unknown }).errno === 'ENOENT') return null;
    throw e;
  }
}

/** The sysfs directory of a character device number (/sys/dev/char/MAJ:MIN's target), or null. */
function charDeviceDir(kernel: Kernel, rdev: number): string | null {
  const link = `/sys/dev/char/${major(rdev)}:${minor(rdev)}`;
  try {
    return posix.resolve('/sys/dev/char', kernel.readlink(link));
  } catch {
    return null;
  }
}

/** The iommufd route: /dev/iommu and the device's cdev (/dev/vfio/devices/vfioN). */
export const IOMMUFD_ROUTE: RouteDescriptor = {
  name: 'iommufd',
  node: '/dev/iommu',
  openStep: 'open /dev/iommu',
  nodeDevAttr: '/sys/class/misc/iommu/dev',
  unsafeInterruptsModule: 'iommufd',
  fds: { context: 'iommufd', device: 'device' },
  deviceNode: (loc) => loc.cdev?.node ?? null,
  deviceDevnum: (_kernel, loc) => (loc.cdev?.devnum ? makedev(loc.cdev.devnum.major, loc.cdev.devnum.minor) : null),
  visible: (kernel, loc) => loc.cdev?.devnum != null && kernel.exists('/dev/iommu') && loc.cdev.nodes.some((n) => kernel.exists(n)),
  open: (kernel, log) => IommufdContext.open(kernel, log),
  adopt: (kernel, log, passed) => IommufdContext.adopt(kernel, log, passed),
};
