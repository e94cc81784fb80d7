// An in-memory Linux for unit tests: sysfs and /dev as the real kernels of the test bed lay them out
// (../shared/reference/vm-prototype/FINDINGS.md sections 4-6), and the VFIO/iommufd semantics of the
// fds opened on them, close to drivers/vfio/{group,container,device_cdev,vfio_main}.c and
// drivers/iommu/iommufd. Every answer the library can meet can be produced, either as the kernel would
// (a host without MSI isolation answers EPERM at bind, another process holding the group answers
// EBUSY...) or injected (failNext, failOpen).
//
//   const k = FakeKernel.host({ kernel: 'iommufd', iommu: 'intel', devices: [{ address: '0000:00:10.0', group: 3 }] });
//   k.hide('/dev/iommu').inaccessible('/dev/vfio/3').failNext({ request: VFIO.DEVICE_BIND_IOMMUFD, errno: 'EPERM' });
//   ... openDevice('0000:00:10.0', { kernel: k }) ...
//   assert.equal(k.openFds(), 0);
//
// Memory, interrupts and DMA are modelled too:
// - allocDma/mmap hand out ArrayBuffers with fake page-aligned addresses; unmap detaches them as the
//   addon does (liveMappings() counts what is left). mmap of a device fd maps an mmap-able BAR; behind
//   BAR0 of a 1234:11e8 device sits QEMU's edu (hw/misc/edu.c: id, liveness, factorial, interrupt
//   raise/ack, DMA engine), other BARs are plain memory. mmioRead/mmioWrite reach the device model with
//   exactly one access (mmioLog records them); pread/pwrite split accesses as vfio_pci_core_do_io_rw.
// - eventfd/watch: the counter is delivered to a watcher on a later turn of the loop (setImmediate).
//   VFIO_DEVICE_GET_IRQ_INFO/SET_IRQS follow vfio_pci_intrs.c (INTx automask/unmask, MSI/MSI-X, ERR and
//   REQ triggers, loopback); raiseIrq() fires a device's interrupt as its hardware would.
// - The IOMMU: IOAS_IOVA_RANGES/MAP/UNMAP (iommufd/ioas.c, io_pagetable.c) and type1 GET_INFO/MAP_DMA/
//   UNMAP_DMA (vfio_iommu_type1.c), RLIMIT_MEMLOCK (setMemlock, ipcLock, /proc/self/limits) and
//   dma_entry_limit; mappings die with their IOAS or container as in the kernel (iommuMappings()).
//   edu's DMA engine translates its IOVAs through the domain its device is attached to: a transfer to
//   an unmapped IOVA is recorded in dmaFaults and copies nothing; dmaTransfers records the others.
//
// And the host around VFIO, as src/host (driver, doctor) and the passed-fd checks read it:
// - Driver binding through sysfs (drivers/base/bus.c, dd.c, drivers/pci/pci-sysfs.c): driver_override
//   ("(null)" once cleared with "\n"), drivers/<drv>/unbind and bind, drivers_probe (which binds the
//   override if set, else the device's natural driver, and succeeds whether or not a probe did).
//   vfio-pci's probe fails without an IOMMU group; a host driver's fails while the group is claimed for
//   user DMA. Unbinding a device open through VFIO blocks in the real kernel: the fake refuses it, and
//   records the attempt in blockedUnbinds. kernelLog keeps what dmesg would say.
// - /proc/<pid>/fd of this process (every fd the fake hands out) and of "another process"
//   (holdGroupElsewhere, bindElsewhere, openElsewhere), /proc/self -> /proc/<pid>.
// - What doctor reads: /proc/interrupts (IR- domains or not), /proc/cmdline, /proc/sys/kernel/osrelease,
//   /proc/self/status (CapEff), /boot/config-<release> or /proc/config.gz, /sys/module/*/parameters,
//   /sys/class/iommu, /sys/class/misc/{iommu,vfio}/dev, /sys/class/vfio/<N>/dev. `root: false` makes
//   writes under /sys, /proc, /run and /boot answer EACCES and the 0600/0660 VFIO nodes inaccessible.
//
// The fake lives in test/fake/, split as the library's own layers are; this file is its entry point:
//   kernel.ts     FakeKernel, a facade over the shared state (state.ts: the kernel's objects, FakeState)
//   types.ts      the public option and record types; errno.ts the errors
//   calls.ts      the call log, listeners and injected failures
//   sysfs.ts      the filesystem tree and the path calls; host.ts builds the host in it,
//                 drivers.ts binds drivers through sysfs, proc.ts is /proc and the other process
//   files.ts      open/close and the fd table; ioctl.ts the ioctl tables, by fd kind
//   iommufd.ts    /dev/iommu; cdev.ts the device cdev (bind, attach)        (src/routes/iommufd.ts)
//   container.ts  /dev/vfio/vfio and type1; group.ts /dev/vfio/N           (src/routes/legacy.ts)
//   device.ts     device fds: info, reset, hot reset, release; regions.ts regions, pread/pwrite,
//                 mmap; irqs.ts eventfds and interrupts; edu.ts QEMU's edu   (src/device)
//   memory.ts     the addon's mappings, IOMMU mappings and DMA translation   (src/dma)
//   migration.ts  a migration driver (mtty's): states and arcs, data files, DMA logging stubs
export { FakeKernel, type MigrationView } from './fake/kernel.js';
export { HEADER_BYTES, MTTY_MAGIC, PORT_BYTES } from './fake/migration.js';
export { EDU_DMA, EDU_REG, type EduState } from './fake/edu.js';
export { ERRNO_NAMES, sysError, type Errno, type FakeSysError } from './fake/errno.js';
export { requestName } from './fake/ioctl.js';
export { EDU, RDEV, TESTDEV, type IrqState } from './fake/state.js';
export type {
  CallInfo,
  DmaFault,
  DmaTransfer,
  FailRule,
  FakeRegion,
  FdInfo,
  HostOptions,
  IommuGeometry,
  MdevOptions,
  MmioAccess,
  PciDeviceOptions,
} from './fake/types.js';
