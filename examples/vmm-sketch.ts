// vmm-sketch: the smallest honest picture of a Node VMM on vfio-bind. It opens two devices into one
// IOMMU context, maps one "guest RAM" buffer once at guest-physical address 0 (so device DMA to a
// guest address lands in guest RAM, for both devices), and shows what the VMM would wire next: each
// device's BARs (to map into the guest) and interrupt vectors (to connect to KVM irqfds).
//   node dist/examples/vmm-sketch.js [DEVICE DEVICE] [--route auto|iommufd|legacy]
import { allocDmaBuffer, createContext, openDevice, type RouteName } from '../src/index.js';

const args = process.argv.slice(2);
const routeAt = args.indexOf('--route');
const wanted = routeAt >= 0 ? args.splice(routeAt, 2)[1] : 'auto';
const specs = args.length >= 2 ? args.slice(0, 2) : ['0000:00:10.0', '0000:00:12.0'];

// A VMM owns one IOMMU context per guest. With "auto", take the route the first device can use.
let route: RouteName;
if (wanted === 'iommufd' || wanted === 'legacy') {
  route = wanted;
} else {
  using probe = openDevice(specs[0]!);
  route = probe.route;
}
using ctx = createContext(route);
const devices = specs.map((spec) =>
  openDevice(spec, {
    context: ctx,
    // a real VMM registers the file with KVM here: KVM_DEV_VFIO_FILE_ADD must precede the cdev bind
    beforeBind: ({ route: r, fd, path }) => console.log(`  (would KVM_DEV_VFIO_FILE_ADD ${r === 'iommufd' ? 'cdev' : 'group'} fd ${fd}, ${path})`),
  }),
);

// Guest RAM: 16 MiB at guest-physical 0, mapped once for every device of the context.
const GUEST_RAM = 16 << 20;
const ram = allocDmaBuffer(GUEST_RAM);
const mapping = ctx.map(ram, { iova: 0x10_0000n }); // IOVA 0 is avoided; guest RAM "starts" at 1 MiB here
console.log(`${route} context: guest RAM ${GUEST_RAM >> 20} MiB at IOVA 0x${mapping.iova.toString(16)}, valid IOVA ranges ` +
  ctx.iovaRanges().map((r) => `0x${r.start.toString(16)}-0x${r.last.toString(16)}`).join(', '));

for (const device of devices) {
  const ids = device.pciIds();
  console.log(`${device.name} ${ids.vendor.toString(16)}:${ids.device.toString(16)} (${device.route}, device fd ${device.fd}, ${device.groupFd !== null ? `group fd ${device.groupFd}` : 'cdev'})`);
  for (const r of device.regions().filter((r) => r.size > 0n && r.name.startsWith('BAR'))) {
    console.log(`  ${r.name}: ${r.size} bytes${r.mmappable ? ', mmap-able: map it into the guest' : ', trapped: emulate accesses with readRegion/writeRegion'}`);
  }
  for (const irq of device.irqs().filter((i) => i.count > 0)) {
    console.log(`  ${irq.name}: ${irq.count} vector(s): wire each eventfd to a KVM irqfd`);
  }
}

ctx.unmap(mapping);
ram.free();
// ctx closes (with `using`), and with it both devices
