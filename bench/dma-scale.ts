// Goal 7 of issue 16, cost that does not grow with the work, measured in a test-bed guest (bench/guest.ts
// runs it as the dma-scale section):
//   - map and unmap cost per mapping while 1k, 4k, 16k and 60k mappings are live (type1's default
//     dma_entry_limit is 65535), and 250k on iommufd, which has no such limit;
//   - closing a context that holds 64k mappings;
//   - binding the n-th device into one context.
// Every mapping maps the same 4 KiB buffer at its own IOVA (both kernels allow one page under many
// IOVAs), so 250k mappings need no 1 GiB of guest memory. A level is reached with mapBatch() in
// slices of 4096, untimed; at each level 1000 more single ctx.map() calls are timed, then their
// ctx.unmap() calls, three times, and the median is printed.
import { allocDmaBuffer, createContext, openDevice, type DmaBuffer, type DmaMapping, type IommuContext } from '../src/index.js';
import { median } from './stats.js';

const PAGE = 4096;
const BASE_IOVA = 1n << 32n; // above the MSI window and edu's 28-bit DMA mask: nothing here does DMA
const PROBE = 1000;
const SLICE = 4096;

type Route = 'iommufd' | 'legacy';

/** The per-mapping cost of PROBE single maps, then of their unmaps, at the context's current level. */
function probeAt(ctx: IommuContext, buffer: DmaBuffer, firstIova: bigint): { map: number; unmap: number } {
  const mappings: DmaMapping[] = [];
  let t0 = process.hrtime.bigint();
  for (let i = 0; i < PROBE; i++) mappings.push(ctx.map(buffer, { iova: firstIova + BigInt(i * PAGE) }));
  const map = Number(process.hrtime.bigint() - t0) / PROBE / 1000;
  t0 = process.hrtime.bigint();
  for (const m of mappings) ctx.unmap(m);
  const unmap = Number(process.hrtime.bigint() - t0) / PROBE / 1000;
  return { map, unmap };
}

/** Grows the context to `level` live mappings of the buffer, from `live` (untimed). */
function grow(ctx: IommuContext, buffer: DmaBuffer, live: DmaMapping[], level: number): void {
  while (live.length < level) {
    const n = Math.min(SLICE, level - live.length);
    const first = live.length;
    live.push(...ctx.mapBatch(Array.from({ length: n }, (_, i) => ({ buffer, iova: BASE_IOVA + BigInt((first + i) * PAGE) }))));
  }
}

const fmt = (us: number): string => `${us.toFixed(1)} us`;

/** Map/unmap cost per mapping at each level, and the cost of closing with `closeWith` mappings. */
export function dmaScale(edu: string, route: Route): string[] {
  const lines: string[] = [];
  const levels = route === 'iommufd' ? [1000, 4000, 16000, 60000, 250000] : [1000, 4000, 16000, 60000];
  const device = openDevice(edu, { route });
  const buffer = allocDmaBuffer(PAGE);
  const live: DmaMapping[] = [];
  try {
    const ctx = device.context;
    const above = BASE_IOVA + BigInt(levels.at(-1)! * PAGE); // the probes' IOVAs, above every level's
    for (let i = 0; i < 3; i++) probeAt(ctx, buffer, above); // warm-up: V8's compiles and TCG's translations of them
    const curve: { level: number; map: number; unmap: number }[] = [];
    for (const level of levels) {
      grow(ctx, buffer, live, level);
      const rounds = [0, 1, 2].map(() => probeAt(ctx, buffer, above));
      curve.push({ level, map: median(rounds.map((r) => r.map)), unmap: median(rounds.map((r) => r.unmap)) });
    }
    const at = (level: number) => curve.find((c) => c.level === level)!;
    lines.push(`DMA cost per mapping with N live (${route}): ${curve.map((c) => `${c.level / 1000}k map ${fmt(c.map)} unmap ${fmt(c.unmap)}`).join('; ')}`);
    for (const op of ['map', 'unmap'] as const) {
      const ratio = at(60000)[op] / at(1000)[op];
      lines.push(`  ${op} at 60k live vs at 1k (${route})`.padEnd(46) + ` ${fmt(at(60000)[op]).padStart(12)} vs ${fmt(at(1000)[op]).padStart(12)}  ratio ${ratio.toFixed(2)}x (${ratio <= 1.2 ? 'meets' : 'misses'} goal <= 1.20x)`);
      if (route === 'iommufd') lines.push(`  ${op} at 250k live vs at 1k (${route})`.padEnd(46) + ` ${fmt(at(250000)[op]).padStart(12)} vs ${fmt(at(1000)[op]).padStart(12)}  ratio ${(at(250000)[op] / at(1000)[op]).toFixed(2)}x (no goal set)`);
    }
  } finally {
    device.close();
    buffer.free();
  }
  return lines;
}

/** Closing a context (its device) that holds n mappings, for each n: the time of close(). */
export function closeCurve(edu: string, route: Route, counts: number[]): string {
  const points: string[] = [];
  for (const n of counts) {
    const device = openDevice(edu, { route });
    const buffer = allocDmaBuffer(PAGE);
    try {
      grow(device.context, buffer, [], n);
      const t0 = process.hrtime.bigint();
      device.close();
      points.push(`${n / 1000}k: ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)} ms`);
    } finally {
      device.close();
      buffer.free();
    }
  }
  return `closing a context with N mappings (${route}): ${points.join('; ')}`;
}

/** Binding the 1st, 2nd, ... device into one context: the time of each openDevice(). */
export function bindCurve(devices: string[], route: Route): string {
  const ctx = createContext(route);
  const points: string[] = [];
  try {
    devices.forEach((spec, i) => {
      const t0 = process.hrtime.bigint();
      openDevice(spec, { context: ctx });
      points.push(`device ${i + 1} (${spec}): ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)} ms`);
    });
  } finally {
    ctx.close(); // closes the devices bound into it
  }
  return `binding the n-th device into one context (${route}): ${points.join('; ')}`;
}
