// One list of scenarios, run against both kernels: the fake one in test/unit/scenarios.test.ts and the
// real one in test/vm/scenarios.test.ts. Each binds edu on a route (or fails to), step by step, and
// both runs must take exactly the steps written here, with the same errno at each: so the fake cannot
// drift from the kernel it stands for. The steps are the library's own (StepCalls logs each system
// call with its step name and errno): what the kernel answered, in order.
import type { Logger } from '../src/log.js';
import type { HostOptions } from './fake-kernel.js';

export type Step = [step: string, errno: string | null];

export interface Scenario {
  name: string;
  /** the test-bed case it runs in (test/vm), and the fake host that models that case (test/unit) */
  vmCase: string;
  fake: HostOptions;
  /** done to the host before the bind: a node hidden, or the device held by another process */
  arrange: { hide?: 'iommu'; holdElsewhere?: 'iommufd' | 'legacy' };
  policy: 'auto' | 'iommufd' | 'legacy';
  /** after a successful bind: map and unmap one DMA page, enable MSI (each adds its steps) */
  then: ('dma' | 'msi')[];
  steps: Step[];
  /** the route taken, or the error's kind */
  outcome: { route: 'iommufd' | 'legacy' } | { error: string };
}

/** A logger that records the steps StepCalls logs (each ok or failed system call, and each syscall-free failure). */
export function stepRecorder(): { logger: Logger; steps: Step[] } {
  const steps: Step[] = [];
  const logger: Logger = {
    isLevelEnabled: () => true,
    debug: (obj: object) => {
      const o = obj as { step?: string; errno?: string | null };
      if (typeof o.step === 'string') steps.push([o.step, o.errno ?? null]);
    },
    info: () => {},
    warn: () => {},
    child: () => logger,
  };
  return { logger, steps };
}

// The device side of a bound edu: its info, then the host's channels (REQ is armed; edu is not PCIe,
// so ERR's info answers EINVAL).
const DEVICE: Step[] = [
  ['VFIO_DEVICE_GET_INFO', null],
  ['VFIO_DEVICE_GET_IRQ_INFO', null], ['eventfd', null], ['VFIO_DEVICE_SET_IRQS', null], // REQ
  ['VFIO_DEVICE_GET_IRQ_INFO', 'EINVAL'], // ERR: not PCIe
];
const IOMMUFD_BIND: Step[] = [
  ['open /dev/iommu', null], ['open cdev', null], ['check cdev', null],
  ['VFIO_DEVICE_BIND_IOMMUFD', null], ['IOMMU_IOAS_ALLOC', null], ['VFIO_DEVICE_ATTACH_IOMMUFD_PT', null],
];
const LEGACY_BIND: Step[] = [
  ['open /dev/vfio/vfio', null], ['VFIO_GET_API_VERSION', null], ['open group', null], ['VFIO_GROUP_GET_STATUS', null],
  ['VFIO_GROUP_SET_CONTAINER', null], ['VFIO_CHECK_EXTENSION', null], ['VFIO_SET_IOMMU', null], ['VFIO_GROUP_GET_DEVICE_FD', null],
];
const IOMMUFD_DMA: Step[] = [
  ['allocate the IOVA range list', null], ['IOMMU_IOAS_IOVA_RANGES', null], ['IOMMU_IOAS_MAP', null], ['IOMMU_IOAS_UNMAP', null],
];
const LEGACY_DMA: Step[] = [['VFIO_IOMMU_GET_INFO', null], ['VFIO_IOMMU_GET_INFO', null], ['VFIO_IOMMU_MAP_DMA', null], ['VFIO_IOMMU_UNMAP_DMA', null]];
const MSI: Step[] = [['VFIO_DEVICE_GET_IRQ_INFO', null], ['VFIO_DEVICE_GET_IRQ_INFO', null], ['VFIO_DEVICE_GET_IRQ_INFO', null],
  ['VFIO_DEVICE_GET_IRQ_INFO', 'EINVAL'], ['VFIO_DEVICE_GET_IRQ_INFO', null], ['eventfd', null], ['VFIO_DEVICE_SET_IRQS', null]];

const INTEL: HostOptions = { kernel: 'iommufd', iommu: 'intel' };

export const SCENARIOS: Scenario[] = [
  {
    name: 'iommufd route: bind, DMA page, MSI', vmCase: 'iommufd-6.12-intel', fake: INTEL, arrange: {}, policy: 'auto', then: ['dma', 'msi'],
    steps: [...IOMMUFD_BIND, ...DEVICE, ...IOMMUFD_DMA, ...MSI], outcome: { route: 'iommufd' },
  },
  {
    name: 'legacy route on the iommufd kernel: bind, DMA page, MSI', vmCase: 'iommufd-6.12-intel', fake: INTEL, arrange: {}, policy: 'legacy', then: ['dma', 'msi'],
    steps: [...LEGACY_BIND, ...DEVICE, ...LEGACY_DMA, ...MSI], outcome: { route: 'legacy' },
  },
  {
    name: 'a stock kernel: /dev/iommu ENOENT, the fallback to legacy', vmCase: 'stock-6.12-intel', fake: { kernel: 'stock', iommu: 'intel' }, arrange: {}, policy: 'auto', then: ['dma'],
    steps: [['open /dev/iommu', 'ENOENT'], ...LEGACY_BIND, ...DEVICE, ...LEGACY_DMA], outcome: { route: 'legacy' },
  },
  {
    name: 'held through legacy by another process: the bind answers EBUSY, reported, no fallback', vmCase: 'iommufd-6.12-intel', fake: INTEL, arrange: { holdElsewhere: 'legacy' }, policy: 'auto', then: [],
    steps: [['open /dev/iommu', null], ['open cdev', null], ['check cdev', null], ['VFIO_DEVICE_BIND_IOMMUFD', 'EBUSY']], outcome: { error: 'busy' },
  },
  {
    name: 'held through iommufd by another process: EINVAL, then the group open answers EBUSY', vmCase: 'iommufd-6.12-intel', fake: INTEL, arrange: { holdElsewhere: 'iommufd' }, policy: 'auto', then: [],
    steps: [['open /dev/iommu', null], ['open cdev', null], ['check cdev', null], ['VFIO_DEVICE_BIND_IOMMUFD', 'EINVAL'],
      ['open /dev/vfio/vfio', null], ['VFIO_GET_API_VERSION', null], ['open group', 'EBUSY']],
    outcome: { error: 'busy' },
  },
  {
    name: '/dev/iommu hidden, the kernel has iommufd: the fallback to legacy', vmCase: 'iommufd-6.12-hidden-iommu', fake: INTEL, arrange: { hide: 'iommu' }, policy: 'auto', then: [],
    steps: [['open /dev/iommu', 'ENOENT'], ...LEGACY_BIND, ...DEVICE], outcome: { route: 'legacy' },
  },
  {
    name: 'noiommu: no cdev, the noiommu group, no DMA', vmCase: 'iommufd-6.12-noiommu', fake: { kernel: 'iommufd', iommu: 'noiommu' }, arrange: {}, policy: 'auto', then: [],
    // the cdev's node is tried first; its absence sends discovery to the dev attribute, which noiommu lacks
    steps: [['open /dev/iommu', null], ['open cdev', 'ENOENT'], ['find cdev', null], ...LEGACY_BIND, ...DEVICE], outcome: { route: 'legacy' },
  },
  {
    name: 'virtio-iommu without MSI isolation: BIND answers EPERM, no route', vmCase: 'iommufd-6.12-virtio-strict', fake: { kernel: 'iommufd', iommu: 'virtio' }, arrange: {}, policy: 'auto', then: [],
    steps: [['open /dev/iommu', null], ['open cdev', null], ['check cdev', null], ['VFIO_DEVICE_BIND_IOMMUFD', 'EPERM']], outcome: { error: 'no-route' },
  },
];

/** Binds edu as the scenario says (the host already arranged), does what follows, and reports the steps taken and the outcome. */
export async function runScenario(s: Scenario, kernel?: import('../src/sys/kernel.js').Kernel): Promise<{ steps: Step[]; outcome: Scenario['outcome'] }> {
  const { openDevice, allocDmaBuffer, VfioError } = await import('../src/index.js');
  const rec = stepRecorder();
  const k = kernel ? { kernel } : {};
  let device;
  try {
    device = openDevice('0000:00:10.0', { route: s.policy, logger: rec.logger, ...k });
  } catch (e) {
    if (!(e instanceof VfioError)) throw e;
    return { steps: rec.steps, outcome: { error: e.kind } };
  }
  try {
    if (s.then.includes('dma')) {
      const buf = allocDmaBuffer(4096, k);
      try {
        device.context.unmap(device.context.map(buf, { limit: 1n << 28n }));
      } finally {
        buf.free();
      }
    }
    if (s.then.includes('msi')) device.enableIrqs('MSI');
    return { steps: [...rec.steps], outcome: { route: device.route } };
  } finally {
    device.close();
  }
}
