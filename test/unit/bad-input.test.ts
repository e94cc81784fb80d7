// Bad input, one table: every row goes through openDevice on the fake (and, for the rows about an open
// device, one bad call on it), and must end as the right public error class with the README's exit
// code, a message or hint that says what to do, and nothing left open: no fd, no mapping, no binding.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { allocDmaBuffer, createContext, openDevice } from '../../src/index.js';
import type { OpenDeviceOptions, VfioDevice } from '../../src/device/device.js';
import type { DmaBuffer } from '../../src/dma/buffer.js';
import {
  BadFdError,
  ClosedError,
  DeviceBusyError,
  DeviceNotFoundError,
  ExitCode,
  GroupNotViableError,
  KernelError,
  NoRouteError,
  NotVfioDeviceError,
  PermissionDeniedError,
  UnsupportedError,
  UsageError,
  VfioError,
} from '../../src/errors.js';
import type { RoutePolicy } from '../../src/routes/select.js';
import { EDU, FakeKernel } from '../fake-kernel.js';
import { assertNoLeaks } from '../helpers.js';

const NIC = '0000:00:12.0';
const MDEV = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';
const SPEC_HINT = /name a device as a PCI address/;

type ErrorClass = abstract new (...args: never[]) => VfioError;

interface Row {
  name: string;
  /** default: edu at 0000:00:10.0 in group 3 with cdev vfio0, an e1000e NIC in group 7, an mdev */
  host?: () => FakeKernel;
  /** default EDU */
  spec?: string;
  /** options, and fds the caller (the test) opened and closes afterwards */
  options?: (k: FakeKernel) => { opts: OpenDeviceOptions; callerFds?: number[] };
  /** the bad call on the device the open gave */
  then?: (dev: VfioDevice, k: FakeKernel, buffers: DmaBuffer[]) => void;
  error: ErrorClass;
  exit: number;
  /** what the message or hint must say: what to do, or what would be accepted */
  says: RegExp;
  todo?: string;
}

const defaultHost = (): FakeKernel => FakeKernel.host({
  devices: [{ address: EDU, group: 3, cdev: 0 }, { address: NIC, id: '8086:10d3', driver: 'e1000e', group: 7 }],
  mdevs: [{ uuid: MDEV, group: 9 }],
});

const spec = (name: string, s: string, says: RegExp = SPEC_HINT, error: ErrorClass = UsageError, exit: number = ExitCode.USAGE): Row => ({ name, spec: s, error, exit, says });

const ROWS: Row[] = [
  // malformed and out-of-range PCI addresses
  spec('device number out of range (0x20)', '00:20.0', /device number 0x20 is out of range \(at most 0x1f\)/),
  spec('device number out of range (0xff)', '0000:00:ff.0', /at most 0x1f/),
  spec('function out of range (8)', '00:10.8'),
  spec('bus of three digits (out of range)', '0000:100:10.0'),
  spec('domain of nine digits', '000000000:00:10.0'),
  spec('too many fields', '0000:00:00:10.0'),
  spec('too many fields after the function', '0000:00:10.0.1'),
  spec('colon instead of the dot', '0000:00:10:0'),
  spec('dots instead of colons', '0000.00.10.0'),
  spec('dashes as separators', '0000-00-10.0'),
  spec('non-hex digit', '0000:00:1g.0'),
  spec('0x prefix', '0x00:10.0'),
  spec('negative function', '00:10.-1'),
  spec('leading space', ' 0000:00:10.0'),
  spec('trailing space', '0000:00:10.0 '),
  spec('empty', ''),
  spec('a network interface name', 'eth0'),
  // paths
  spec('a sysfs path with ..', `/sys/bus/pci/devices/../devices/${EDU}`, /"\." or "\.\." components/),
  spec('a sysfs path with .', `/sys/bus/pci/devices/./${EDU}`, /"\." or "\.\." components/),
  spec('escaping /sys with ..', '/sys/../etc/passwd', /"\." or "\.\." components/),
  spec('a relative path', `sys/bus/pci/devices/${EDU}`),
  spec('a group node instead of a cdev', '/dev/vfio/3', /the only device nodes accepted are \/dev\/vfio\/devices\/vfioN/),
  spec('a path outside /sys and /dev', '/etc/passwd'),
  {
    name: 'a symlink under /sys/bus that leads outside /sys/devices (named by address)',
    host: () => defaultHost().symlink('/sys/bus/pci/devices/0000:00:1f.0', '../../../kernel/iommu_groups/3'),
    spec: '00:1f.0', error: UsageError, exit: ExitCode.USAGE, says: /resolves to \/sys\/kernel\/iommu_groups\/3, outside \/sys\/devices\//,
  },
  {
    name: 'a symlink under /sys/bus that leads outside /sys/devices (named by path)',
    host: () => defaultHost().symlink('/sys/bus/pci/devices/evil', '/dev'),
    spec: '/sys/bus/pci/devices/evil', error: UsageError, exit: ExitCode.USAGE, says: /outside \/sys\/devices\//,
  },
  {
    name: 'a symlink loop under /sys/bus',
    host: () => defaultHost().symlink('/sys/bus/pci/devices/0000:00:1e.0', '0000:00:1e.0'),
    spec: '00:1e.0', error: DeviceNotFoundError, exit: ExitCode.NOT_FOUND, says: /lspci -D|vfio-bind list/,
  },
  { name: 'a sysfs directory that is not a device', spec: '/sys/devices/pci0000:00', error: UsageError, exit: ExitCode.USAGE, says: /is not a PCI or mdev device/ },
  { name: 'a sysfs attribute, not a device', spec: `/sys/devices/pci0000:00/${EDU}/vendor`, error: UsageError, exit: ExitCode.USAGE, says: /is not a PCI or mdev device/ },
  // very long strings and control characters
  spec('a very long string', 'a'.repeat(10_000), /longer than 256 characters/),
  spec('an address with 300 trailing zeros', `${EDU}${'0'.repeat(300)}`, /longer than 256 characters/),
  spec('a sysfs path of 257 characters', `/sys/${'a/'.repeat(126)}`, /longer than 256 characters/),
  spec('NUL', `${EDU}\0`, /control characters/),
  spec('newline', `${EDU}\n`, /control characters/),
  spec('ESC (a terminal escape)', `\x1b[31m${EDU}`, /control characters/),
  spec('TAB in a path', `/sys/bus/pci/devices/${EDU}\t`, /control characters/),
  spec('a C1 control character', `${EDU}\u009b`, /control characters/),
  spec('DEL', `00:10.0\x7f`, /control characters/),
  // devices that do not exist
  spec('no device at that address', '0000:00:1f.7', /lspci -D/, DeviceNotFoundError, ExitCode.NOT_FOUND),
  spec('no such domain', 'ffff:ff:1f.7', /lspci -D/, DeviceNotFoundError, ExitCode.NOT_FOUND),
  spec('no such cdev', '/dev/vfio/devices/vfio7', /vfio-bind list/, DeviceNotFoundError, ExitCode.NOT_FOUND),
  spec('no such mdev', '83b8f4f2-509f-382f-3c1e-e6bfe0fa1099', /vfio-bind list/, DeviceNotFoundError, ExitCode.NOT_FOUND),
  spec('no such sysfs device', '/sys/devices/pci0000:00/0000:00:1e.0', /lspci -D/, DeviceNotFoundError, ExitCode.NOT_FOUND),
  // devices that exist but cannot be assigned
  { name: 'a device bound to another driver (e1000e)', spec: NIC, error: NotVfioDeviceError, exit: ExitCode.NOT_FOUND, says: /echo vfio-pci > \/sys\/bus\/pci\/devices\/0000:00:12\.0\/driver_override/ },
  {
    name: 'a device bound to no driver',
    host: () => FakeKernel.host({ devices: [{ address: EDU, driver: null }] }),
    error: NotVfioDeviceError, exit: ExitCode.NOT_FOUND, says: /driver_override/,
  },
  {
    name: 'a device with no IOMMU group',
    host: () => FakeKernel.host({ devices: [{ address: EDU, group: null, cdev: null }] }),
    error: NoRouteError, exit: ExitCode.NO_ROUTE, says: /intel_iommu=on or amd_iommu=on/,
  },
  {
    name: 'a non-viable group (a member on e1000e)',
    host: () => FakeKernel.host({ devices: [{ address: EDU, group: 5 }, { address: NIC, id: '8086:10d3', driver: 'e1000e', group: 5 }] }),
    error: GroupNotViableError, exit: ExitCode.NOT_FOUND, says: /bind every device of the group to vfio-pci/,
  },
  {
    name: 'a noiommu group opened without CAP_SYS_RAWIO',
    host: () => FakeKernel.host({ iommu: 'noiommu', rawio: false }),
    error: PermissionDeniedError, exit: ExitCode.PERMISSION, says: /needs CAP_SYS_RAWIO[\s\S]*run as root/,
  },
  {
    name: 'every node inaccessible (not root)',
    host: () => FakeKernel.host({ root: false }),
    error: PermissionDeniedError, exit: ExitCode.PERMISSION, says: /run as root, or give this user read-write access to \/dev\/iommu/,
  },
  {
    name: 'an unsupported IOMMU type: the container offers neither type1v2 nor type1',
    host: () => FakeKernel.host({ kernel: 'stock', type1: false }),
    error: NoRouteError, exit: ExitCode.NO_ROUTE, says: /modprobe vfio_iommu_type1|vfio_iommu_type1/,
  },
  {
    name: 'in use by another process',
    host: () => defaultHost().holdGroupElsewhere(3),
    error: DeviceBusyError, exit: ExitCode.BUSY, says: /fuser -v/,
  },
  // wrong option values
  {
    name: "route 'foo' (not a RoutePolicy)",
    options: () => ({ opts: { route: 'foo' as RoutePolicy } }),
    error: UsageError, exit: ExitCode.USAGE, says: /auto.*iommufd.*legacy/,
  },
  {
    name: "route 'IOMMUFD' (wrong case)",
    options: () => ({ opts: { route: 'IOMMUFD' as RoutePolicy } }),
    error: UsageError, exit: ExitCode.USAGE, says: /auto.*iommufd.*legacy/,
  },
  {
    name: 'a spec that is not a string',
    spec: 123 as unknown as string,
    error: UsageError, exit: ExitCode.USAGE, says: /not a string|must be a string/,
  },
  {
    name: 'a closed context',
    options: (k) => {
      const ctx = createContext('iommufd', { kernel: k });
      ctx.close();
      return { opts: { context: ctx } };
    },
    error: ClosedError, exit: ExitCode.INTERNAL, says: /closed iommufd context/,
  },
  {
    name: 'a noiommu device into an iommufd context (the route has no cdev for it)',
    host: () => FakeKernel.host({ iommu: 'noiommu' }),
    options: (k) => ({ opts: { context: createContext('iommufd', { kernel: k }) } }),
    error: NoRouteError, exit: ExitCode.NO_ROUTE, says: /--route auto or --route legacy/,
  },
  // passed fds that do not match
  {
    name: 'passed fds: a device fd that is not open',
    options: (k) => {
      const iommufd = k.open('/dev/iommu');
      return { opts: { fds: { device: 4242, iommufd } }, callerFds: [iommufd] };
    },
    error: BadFdError, exit: ExitCode.USAGE, says: /given as the device fd, is not open/,
  },
  {
    name: 'passed fds: device and iommufd swapped',
    options: (k) => {
      const iommufd = k.open('/dev/iommu');
      const device = k.open('/dev/vfio/devices/vfio0');
      return { opts: { fds: { device: iommufd, iommufd: device } }, callerFds: [iommufd, device] };
    },
    error: BadFdError, exit: ExitCode.USAGE, says: /not 0000:00:10\.0's cdev/,
  },
  {
    name: 'passed fds: an eventfd as the group fd',
    options: (k) => {
      const efd = k.eventfd();
      const container = k.open('/dev/vfio/vfio');
      return { opts: { fds: { group: efd, container } }, callerFds: [efd, container] };
    },
    error: BadFdError, exit: ExitCode.USAGE, says: /is not a character device/,
  },
  {
    name: 'passed fds: the fds of both routes',
    options: (k) => {
      const iommufd = k.open('/dev/iommu');
      const container = k.open('/dev/vfio/vfio');
      return { opts: { fds: { iommufd, container } }, callerFds: [iommufd, container] };
    },
    error: BadFdError, exit: ExitCode.USAGE, says: /pass either the device \(cdev\) fd with an iommufd, or the group fd with a container fd/,
  },
  // bad calls on an open device
  {
    name: 'the same device opened twice in this process',
    then: (_d, k) => openDevice(EDU, { kernel: k }),
    error: DeviceBusyError, exit: ExitCode.BUSY, says: /close the other device object first/,
  },
  { name: 'mmap of a non-mmap region (CONFIG)', then: (d) => d.mapRegion('CONFIG'), error: UsageError, exit: ExitCode.USAGE, says: /use readRegion\(\)\/writeRegion\(\)/ },
  { name: 'mmap of an empty region (BAR2)', then: (d) => d.mapRegion('BAR2'), error: UsageError, exit: ExitCode.USAGE, says: /use readRegion/ },
  { name: 'mmap of a region index out of range', then: (d) => d.mapRegion(42), error: UsageError, exit: ExitCode.USAGE, says: /has no region 42 \(it has BAR0, .*CONFIG/ },
  { name: 'an mmap area a whole-mapped region does not have', then: (d) => d.mapRegion('BAR0', { area: 1 }), error: UsageError, exit: ExitCode.USAGE, says: /maps whole: it has no area 1/ },
  { name: 'a region read past its end', then: (d) => d.readRegion('BAR0', 0x100000 - 2, 4), error: UsageError, exit: ExitCode.USAGE, says: /outside BAR0 \(size 1048576\)/ },
  { name: 'an IRQ index out of range', then: (d) => d.enableIrqs(7), error: UsageError, exit: ExitCode.USAGE, says: /has no IRQ index 7 \(it has INTX, MSI, MSIX, ERR, REQ\)/ },
  { name: 'a negative IRQ index', then: (d) => d.enableIrqs(-1), error: UsageError, exit: ExitCode.USAGE, says: /has no IRQ index -1 \(it has/ },
  { name: 'an IRQ index with no vectors (MSI-X on edu)', then: (d) => d.enableIrqs('MSIX'), error: UsageError, exit: ExitCode.USAGE, says: /has no MSIX interrupts/ },
  { name: 'more vectors than the index has', then: (d) => d.enableIrqs('INTX', { count: 2 }), error: UsageError, exit: ExitCode.USAGE, says: /has 1 vector\(s\); cannot enable 2/ },
  {
    name: 'a second interrupt mode while one is enabled',
    then: (d) => {
      d.enableIrqs('INTX');
      d.enableIrqs('MSI');
    },
    error: UsageError, exit: ExitCode.USAGE, says: /disable it before enabling MSI/,
  },
  { name: 'DMA map of a plain Buffer', then: (d) => d.context.map(Buffer.alloc(4096) as unknown as DmaBuffer), error: UsageError, exit: ExitCode.USAGE, says: /only buffers from allocDmaBuffer\(\) can be mapped/ },
  { name: 'DMA map of a plain object', then: (d) => d.context.map({ size: 4096, address: 0x7f0000000000n } as unknown as DmaBuffer), error: UsageError, exit: ExitCode.USAGE, says: /allocDmaBuffer\(\)/ },
  {
    name: 'DMA map at an unaligned IOVA',
    then: (d, k, bufs) => d.context.map(push(bufs, allocDmaBuffer(4096, { kernel: k })), { iova: 0x1001n }),
    error: UsageError, exit: ExitCode.USAGE, says: /not aligned to the IOMMU's 4096-byte pages/,
  },
  {
    name: 'DMA map over the MSI window (a reserved IOVA)',
    then: (d, k, bufs) => d.context.map(push(bufs, allocDmaBuffer(4096, { kernel: k })), { iova: 0xfee00000n }),
    error: UsageError, exit: ExitCode.USAGE, says: /valid IOVA ranges: 0x0-0xfedfffff, 0xfef00000-/,
  },
  {
    name: 'DMA map of a freed buffer',
    then: (d, k) => {
      const b = allocDmaBuffer(4096, { kernel: k });
      b.free();
      d.context.map(b);
    },
    error: ClosedError, exit: ExitCode.INTERNAL, says: /freed DMA buffer/,
  },
  { name: 'unmap of an IOVA nothing is mapped at', then: (d) => d.context.unmap(0x5000n), error: UsageError, exit: ExitCode.USAGE, says: /unmapped already\?/ },
  {
    name: 'a locked-memory limit too low for a map',
    host: () => {
      const k = defaultHost().setMemlock(4096);
      k.ipcLock = false;
      return k;
    },
    then: (d, k, bufs) => d.context.map(push(bufs, allocDmaBuffer(8192, { kernel: k }))),
    error: KernelError, exit: ExitCode.KERNEL_REFUSED, says: /ulimit -l.*CAP_IPC_LOCK/,
  },
  { name: 'a reset the device cannot do (edu has no FLR)', then: (d) => d.reset(), error: UnsupportedError, exit: ExitCode.KERNEL_REFUSED, says: /bus reset/ },
  {
    name: 'a call on a closed device',
    then: (d) => {
      d.close();
      d.readConfig(0, 2);
    },
    error: ClosedError, exit: ExitCode.INTERNAL, says: /is closed/,
  },
];

function push(bufs: DmaBuffer[], b: DmaBuffer): DmaBuffer {
  bufs.push(b);
  return b;
}

describe('bad input: the table', () => {
  test('has at least 40 rows, every name once', () => {
    assert.ok(ROWS.length >= 40, `${ROWS.length} rows`);
    assert.equal(new Set(ROWS.map((r) => r.name)).size, ROWS.length);
  });

  for (const row of ROWS) {
    test(row.name, row.todo ? { todo: row.todo } : {}, () => {
      const k = (row.host ?? defaultHost)();
      const { opts, callerFds = [] } = row.options?.(k) ?? { opts: {} };
      const buffers: DmaBuffer[] = [];
      let thrown: unknown;
      let dev: VfioDevice | undefined;
      try {
        dev = openDevice(row.spec ?? EDU, { ...opts, kernel: k });
        if (row.then) row.then(dev, k, buffers);
      } catch (e) {
        thrown = e;
      } finally {
        dev?.close();
        opts.context?.close();
        for (const b of buffers) b.free();
      }
      // nothing left open by the library: only the caller's own fds, which it closes now
      for (const fd of callerFds) {
        assert.ok(k.describeFd(fd), `the caller's fd ${fd} was closed by the library`);
        k.close(fd);
      }
      assertNoLeaks(k, row.name);
      assert.equal(k.liveMappings(), 0, 'mappings left');
      assert.deepEqual(k.iommuMappings(), [], 'IOMMU mappings left');
      assert.equal(k.activeWatches(), 0, 'eventfd watches left');
      assert.equal(k.deviceOpenCount(EDU), 0, 'the device is left bound');
      assert.equal(k.groupHolder(3), row.name === 'in use by another process' ? 'elsewhere' : null);

      if (thrown === undefined) assert.fail(`expected ${row.error.name}, nothing was thrown${row.then ? '' : ` (the device bound through ${dev?.route})`}`);
      assert.ok(thrown instanceof VfioError, `not a VfioError: ${thrown instanceof Error ? `${thrown.name}: ${thrown.message}` : String(thrown)}`);
      assert.ok(thrown instanceof row.error, `expected ${row.error.name}, got ${thrown.name}: ${thrown.message}`);
      assert.equal(thrown.exitCode, row.exit, `exit code of ${thrown.name}`);
      assert.match(`${thrown.message}\n${thrown.hint ?? ''}`, row.says);
      // what the CLI prints: one line of message, no raw control characters, a JSON document
      assert.doesNotMatch(thrown.message, /[\u0000-\u001f\u007f-\u009f]/, 'control characters are shown escaped');
      const json = JSON.parse(JSON.stringify(thrown.toJSON())) as { exit_code: number; error: string };
      assert.equal(json.exit_code, row.exit);
      assert.equal(json.error, thrown.kind);
    });
  }
});
