// The fake-kernel fixtures the DMA unit tests share (dma, dma-contexts, edu-dma, hwpt).
import assert from 'node:assert/strict';
import type { RegionMapping } from '../src/index.js';
import { IOMMU } from '../src/uapi/iommufd.js';
import { VFIO } from '../src/uapi/vfio.js';
import { EDU_DMA, EDU_REG, FakeKernel } from './fake-kernel.js';
import { assertNoLeaks } from './helpers.js';

export const K = 4096;
export const DMA_ROUTES = [
  { name: 'iommufd', host: (o = {}) => FakeKernel.host(o), mapStep: 'IOMMU_IOAS_MAP', unmapStep: 'IOMMU_IOAS_UNMAP', map: IOMMU.IOAS_MAP, unmap: IOMMU.IOAS_UNMAP },
  { name: 'legacy', host: (o = {}) => FakeKernel.host({ kernel: 'stock', ...o }), mapStep: 'VFIO_IOMMU_MAP_DMA', unmapStep: 'VFIO_IOMMU_UNMAP_DMA', map: VFIO.IOMMU_MAP_DMA, unmap: VFIO.IOMMU_UNMAP_DMA },
] as const;
export const INTEL_RANGES = [{ start: 0n, last: 0xfedfffffn }, { start: 0xfef00000n, last: 0x7fffffffffn }];
export const RANGES_HINT = 'valid IOVA ranges: 0x0-0xfedfffff, 0xfef00000-0x7fffffffff';

/** No fd, no mapping of this process, no IOMMU mapping and no pinned page is left. */
export function assertClean(k: FakeKernel, what = ''): void {
  assertNoLeaks(k, what);
  assert.equal(k.liveMappings(), 0, `mappings left${what ? ` (${what})` : ''}`);
  assert.deepEqual(k.iommuMappings(), [], `IOMMU mappings left${what ? ` (${what})` : ''}`);
  assert.equal(k.pinnedBytes(), 0n);
}

export function mapCalls(k: FakeKernel): number {
  return k.ioctlNames().filter((n) => n === 'IOMMU_IOAS_MAP' || n === 'VFIO_IOMMU_MAP_DMA').length;
}


/** Starts one edu DMA and waits until edu's command register says it is done (as the example does). */
export async function eduDma(bar: RegionMapping, src: bigint, dst: bigint, count: number, cmd: bigint): Promise<void> {
  bar.write64(EDU_REG.DMA_SRC, src);
  bar.write64(EDU_REG.DMA_DST, dst);
  bar.write64(EDU_REG.DMA_COUNT, BigInt(count));
  bar.write64(EDU_REG.DMA_CMD, cmd | EDU_DMA.START);
  for (let waited = 0; (bar.read64(EDU_REG.DMA_CMD) & EDU_DMA.START) !== 0n; waited++) {
    if (waited > 1000) throw new Error('edu did not finish the DMA');
    await new Promise((resolve) => setImmediate(resolve));
  }
}
