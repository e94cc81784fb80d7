// ioctl(2): which handler answers a request, by the kind of fd it is sent to. VFIO numbers are not
// unique across fd kinds (VFIO_IOMMU_GET_INFO to a container is VFIO_DEVICE_GET_PCI_HOT_RESET_INFO
// to a device), so each kind has its own table.
//
// A kind's ioctl entry point may check something before it looks at most requests (the `gate`):
// `first` lists the requests answered before the gate, `requests` those answered after it. A
// request the kind does not list passes the gate too, then is ENOTTY; an fd of another kind (an
// eventfd, a sysfs file) answers ENOTTY to everything.
import { IOMMU } from '../../src/uapi/iommufd.js';
import { VFIO } from '../../src/uapi/vfio.js';
import * as cdev from './cdev.js';
import * as container from './container.js';
import * as device from './device.js';
import { ioctlError, sysError } from './errno.js';
import * as group from './group.js';
import * as hwpt from './hwpt.js';
import * as iommufd from './iommufd.js';
import * as irqs from './irqs.js';
import { migFileIoctl } from './migration.js';
import * as regions from './regions.js';
import type { ContainerState, DeviceFile, FakeState, FdEntry, GroupFile, IommufdCtx, OpenFile } from './state.js';

type Arg = number | Buffer | undefined;
type Handler<F> = (s: FakeState, file: F, arg: Arg) => number;

interface IoctlTable<F> {
  /** answered whatever the file's state */
  first: Map<number, Handler<F>>;
  /** what the entry point checks before the other requests (throws its errno) */
  gate: ((s: FakeState, file: F) => void) | null;
  requests: Map<number, Handler<F>>;
}

/** /dev/iommu: iommufd_fops_ioctl (IOAS_COPY, OPTION, nested HWPTs... are not modelled) */
const IOMMUFD: IoctlTable<IommufdCtx> = {
  first: new Map(),
  gate: null,
  requests: new Map([
    [IOMMU.IOAS_ALLOC, iommufd.ioasAlloc],
    [IOMMU.DESTROY, iommufd.destroy],
    [IOMMU.IOAS_IOVA_RANGES, iommufd.ioasIovaRanges],
    [IOMMU.IOAS_MAP, iommufd.ioasMap],
    [IOMMU.IOAS_UNMAP, iommufd.ioasUnmap],
    [IOMMU.GET_HW_INFO, hwpt.getHwInfo],
    [IOMMU.HWPT_ALLOC, hwpt.hwptAlloc],
    [IOMMU.HWPT_SET_DIRTY_TRACKING, hwpt.hwptSetDirtyTracking],
    [IOMMU.HWPT_GET_DIRTY_BITMAP, hwpt.hwptGetDirtyBitmap],
  ]),
};

/** /dev/vfio/vfio: vfio_fops_unl_ioctl, then the IOMMU driver set on the container */
const CONTAINER: IoctlTable<ContainerState> = {
  first: new Map([
    [VFIO.GET_API_VERSION, container.apiVersion],
    [VFIO.CHECK_EXTENSION, container.checkExtension],
    [VFIO.SET_IOMMU, container.setIommu],
  ]),
  gate: container.iommuDriverGate,
  requests: new Map([
    [VFIO.IOMMU_GET_INFO, container.type1Info],
    [VFIO.IOMMU_MAP_DMA, container.type1Map],
    [VFIO.IOMMU_UNMAP_DMA, container.type1Unmap],
    [VFIO.IOMMU_DIRTY_PAGES, container.type1DirtyPages],
  ]),
};

/** /dev/vfio/N: vfio_group_fops_unl_ioctl */
const GROUP: IoctlTable<GroupFile> = {
  first: new Map(),
  gate: null,
  requests: new Map([
    [VFIO.GROUP_GET_STATUS, group.getStatus],
    [VFIO.GROUP_SET_CONTAINER, group.setContainer],
    [VFIO.GROUP_UNSET_CONTAINER, group.unsetContainer],
    [VFIO.GROUP_GET_DEVICE_FD, group.getDeviceFd],
  ]),
};

/** a device fd (cdev or group): vfio_device_fops_unl_ioctl, then vfio_pci_core_ioctl */
const DEVICE: IoctlTable<DeviceFile> = {
  first: new Map([
    [VFIO.DEVICE_BIND_IOMMUFD, cdev.bindIommufd],
  ]),
  gate: device.accessGranted,
  requests: new Map([
    [VFIO.DEVICE_ATTACH_IOMMUFD_PT, cdev.attachPt],
    [VFIO.DEVICE_DETACH_IOMMUFD_PT, cdev.detachPt],
    [VFIO.DEVICE_GET_INFO, device.getInfo],
    [VFIO.DEVICE_GET_REGION_INFO, regions.regionInfo],
    [VFIO.DEVICE_GET_IRQ_INFO, irqs.irqInfo],
    [VFIO.DEVICE_SET_IRQS, irqs.setIrqs],
    [VFIO.DEVICE_RESET, device.reset],
    [VFIO.DEVICE_GET_PCI_HOT_RESET_INFO, device.hotResetInfo],
    [VFIO.DEVICE_FEATURE, device.feature],
  ]),
};

function dispatch<F>(table: IoctlTable<F>, s: FakeState, file: F, request: number, arg: Arg): number {
  const first = table.first.get(request);
  if (first) return first(s, file, arg);
  table.gate?.(s, file);
  const handler = table.requests.get(request);
  if (!handler) throw ioctlError('ENOTTY');
  return handler(s, file, arg);
}

export function ioctl(s: FakeState, e: FdEntry | undefined, request: number, arg: Arg): number {
  if (!e) throw sysError('EBADF', 'ioctl');
  const f = e.file;
  switch (f.kind) {
    case 'iommufd': return dispatch(IOMMUFD, s, f.ctx, request, arg);
    case 'container': return dispatch(CONTAINER, s, f.container, request, arg);
    case 'group': return dispatch(GROUP, s, f, request, arg);
    case 'device': return dispatch(DEVICE, s, f, request, arg);
    case 'migration': return migFileIoctl(f, request, arg, VFIO.MIG_GET_PRECOPY_INFO);
    default: throw ioctlError('ENOTTY');
  }
}

const VFIO_NAMES = new Map<number, string>();
for (const [name, value] of Object.entries(VFIO)) if (!VFIO_NAMES.has(value)) VFIO_NAMES.set(value, `VFIO_${name}`);
const IOMMU_NAMES = new Map(Object.entries(IOMMU).map(([name, value]) => [value, `IOMMU_${name}`]));

/** The request's name as the fd it is sent to decodes it (some VFIO numbers mean one thing to a container, another to a device). */
export function requestName(request: number, kind?: OpenFile['kind']): string {
  if (kind === 'container') {
    if (request === VFIO.IOMMU_GET_INFO) return 'VFIO_IOMMU_GET_INFO';
    if (request === VFIO.IOMMU_MAP_DMA) return 'VFIO_IOMMU_MAP_DMA';
    if (request === VFIO.IOMMU_DIRTY_PAGES) return 'VFIO_IOMMU_DIRTY_PAGES';
  }
  return VFIO_NAMES.get(request) ?? IOMMU_NAMES.get(request) ?? `0x${request.toString(16)}`;
}
