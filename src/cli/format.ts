// Human-readable output of the CLI (`--json` prints the objects themselves).
import type { DeviceLocation } from '../discovery/locate.js';
import type { RouteReport } from '../device/device.js';
import type { RegionInfo } from '../device/regions.js';
import type { IrqInfo } from '../device/irqs.js';
import type { DoctorReport } from '../host/doctor.js';
import type { SmokeResult } from '../host/smoke.js';
import type { VfioError } from '../errors.js';

export function formatReport(r: RouteReport): string {
  const lines = [`${r.device}: bound through ${r.route}${r.fallback ? ` (fell back from ${r.fallback.from})` : ''}`];
  if (r.fallback) {
    lines.push(`  why:    ${r.fallback.step}${r.fallback.errno ? ` answered ${r.fallback.errno}` : ' failed'}: ${r.fallback.reason}`);
  }
  lines.push(`  nodes:  ${Object.entries(r.nodes).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  lines.push(`  ids:    ${Object.entries(r.ids).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  lines.push(`  device: ${r.device_info.flags.join(' ') || 'no flags'}, ${r.device_info.regions} regions, ${r.device_info.irqs} irqs`);
  return lines.join('\n');
}

export function formatError(e: VfioError): string {
  const lines = [`vfio-bind: ${e.message}`];
  if (e.attempts.length > 1) {
    for (const a of e.attempts) lines.push(`  ${a.route}: ${a.step}${a.path ? ` (${a.path})` : ''} answered ${a.errno ?? 'no errno'}`);
  }
  if (e.hint) lines.push(`  hint: ${e.hint}`);
  return lines.join('\n');
}

export function formatRegions(regions: RegionInfo[]): string {
  const rows = regions.map((r) => [
    r.name,
    r.size === 0n ? '-' : `0x${r.size.toString(16)}`,
    `${r.readable ? 'r' : '-'}${r.writable ? 'w' : '-'}${r.mmappable ? 'm' : '-'}`,
    `0x${r.offset.toString(16)}`,
    [r.sparseMmap ? `sparse mmap: ${r.sparseMmap.map((a) => `0x${a.offset.toString(16)}+0x${a.size.toString(16)}`).join(' ')}` : '',
      r.type ? `type ${r.type.type}/${r.type.subtype}` : ''].filter(Boolean).join('; '),
  ]);
  return table(['region', 'size', 'access', 'fd offset', 'notes'], rows);
}

export function formatIrqs(irqs: IrqInfo[]): string {
  const rows = irqs.map((i) => [
    i.name, String(i.count),
    [i.eventfd ? 'eventfd' : '', i.maskable ? 'maskable' : '', i.automasked ? 'automasked' : '', i.noresize ? 'noresize' : ''].filter(Boolean).join(' '),
  ]);
  return table(['irq', 'vectors', 'flags'], rows);
}

/** What `list` shows per device; the same fields go to --json. */
export interface ListedDevice {
  device: string;
  bus: string;
  driver: string | null;
  group: number | null;
  noiommu: boolean;
  cdev: string | null;
  routes: { iommufd: boolean; legacy: boolean };
  viable: boolean;
}

export function formatList(devices: ListedDevice[]): string {
  const rows = devices.map((d) => [
    d.device, d.driver ?? '-', d.group === null ? '-' : `${d.noiommu ? 'noiommu-' : ''}${d.group}`, d.cdev ?? '-',
    [d.routes.iommufd ? 'iommufd' : '', d.routes.legacy ? 'legacy' : ''].filter(Boolean).join(',') || 'none',
    d.viable ? '' : 'group not viable',
  ]);
  return table(['device', 'driver', 'group', 'cdev', 'routes', 'notes'], rows);
}

export function formatDoctor(r: DoctorReport): string {
  const mark: Record<string, string> = { ok: 'ok  ', info: 'info', warn: 'warn', fail: 'FAIL' };
  const lines: string[] = [];
  for (const c of r.checks) {
    lines.push(`[${mark[c.status]}] ${c.id}: ${c.summary}`);
    for (const e of c.evidence) lines.push(`         ${e}`);
    if (c.fix) lines.push(`         fix: ${c.fix}`);
  }
  lines.push('', r.verdict);
  return lines.join('\n');
}

export function formatSmoke(r: SmokeResult): string {
  if (r.ok) {
    return `PASS ${r.device} route=${r.route} ids=${r.ids ?? '-'} regions=${r.regions} irqs=${r.irqs} dma=${r.dma}`;
  }
  return `FAIL ${r.device} ${r.error?.kind}: ${r.error?.message}${r.error?.hint ? ` (hint: ${r.error.hint})` : ''}`;
}

export function describeLocation(l: DeviceLocation): string {
  return `${l.name} (${l.bus}, driver ${l.driver ?? 'none'})`;
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}
