// The library's own cost per DMA map+unmap, natively on the host: the fake kernel binds the device, and
// its IOAS_MAP/IOAS_UNMAP are answered by a no-op, so what is timed is ctx.map()/ctx.unmap() against
// the same two ioctls encoded and issued raw. In a TCG guest the same JavaScript runs many times
// slower; this is what it costs on real hardware, beside the kernel's own time per map.
import { allocDmaBuffer, openDevice } from '../src/index.js';
import type { IommufdContext } from '../src/routes/iommufd.js';
import { IOMMU, IOMMU_IOAS_MAP_FLAG as F, iommu_ioas_map, iommu_ioas_unmap } from '../src/uapi/iommufd.js';
import { encode } from '../src/uapi/struct.js';
import { EDU, FakeKernel } from '../test/fake-kernel.js';
import { median } from './stats.js';

export function dmaLibraryCost(): string {
  const k = FakeKernel.host();
  const device = openDevice(EDU, { kernel: k });
  const ctx = device.context as IommufdContext;
  const n = 512;
  const size = 4096; // the library's work per call does not depend on the size; the fake's memory does
  const base = 1n << 30n;
  const buffers = Array.from({ length: n }, () => allocDmaBuffer(size, { kernel: k }));
  const ioctl = k.ioctl.bind(k);
  // the written-back fields (IOAS_UNMAP's length) already hold what the kernel would write
  k.ioctl = (fd, request, arg) => (request === IOMMU.IOAS_MAP || request === IOMMU.IOAS_UNMAP ? 0 : ioctl(fd, request, arg));
  const perPair = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / n / 1000;
  const library = (): number => {
    const t0 = process.hrtime.bigint();
    const mappings = buffers.map((b, i) => ctx.map(b, { iova: base + BigInt(i * size) }));
    for (const m of mappings) ctx.unmap(m);
    return perPair(t0);
  };
  // raw: the least JavaScript that issues the two ioctls (one buffer each, fields stored in place)
  const mapArg = encode(iommu_ioas_map, { size: iommu_ioas_map.size, flags: F.FIXED_IOVA | F.READABLE | F.WRITEABLE, ioas_id: ctx.ioasIdOrNull!, length: BigInt(size) });
  const unmapArg = encode(iommu_ioas_unmap, { size: iommu_ioas_unmap.size, ioas_id: ctx.ioasIdOrNull!, length: BigInt(size) });
  const mapView = new DataView(mapArg.buffer, mapArg.byteOffset, mapArg.byteLength);
  const unmapView = new DataView(unmapArg.buffer, unmapArg.byteOffset, unmapArg.byteLength);
  const raw = (): number => {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      mapView.setBigUint64(iommu_ioas_map.fields.user_va[1], buffers[i]!.address, true);
      mapView.setBigUint64(iommu_ioas_map.fields.iova[1], base + BigInt(i * size), true);
      k.ioctl(ctx.fd, IOMMU.IOAS_MAP, mapArg);
    }
    for (let i = 0; i < n; i++) {
      unmapView.setBigUint64(iommu_ioas_unmap.fields.iova[1], base + BigInt(i * size), true);
      k.ioctl(ctx.fd, IOMMU.IOAS_UNMAP, unmapArg);
    }
    return perPair(t0);
  };
  try {
    for (let i = 0; i < 20; i++) { library(); raw(); } // warm-up: both paths optimised
    const ours: number[] = [];
    const theirs: number[] = [];
    for (let round = 0; round < 15; round++) {
      ours.push(library());
      theirs.push(raw());
    }
    const [l, r] = [median(ours), median(theirs)];
    return `DMA map+unmap through the library vs the same ioctls raw (host, the kernel's answer a no-op): ${l.toFixed(2)} us vs ${r.toFixed(2)} us per pair, ` +
      `the library's own ${(l - r).toFixed(2)} us`;
  } finally {
    k.ioctl = ioctl;
    device.close();
    for (const b of buffers) b.free();
  }
}
