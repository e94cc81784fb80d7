// The DMA mappings of one IOMMU context, on either route: which memory (a DMA buffer, or another
// device's BAR for peer-to-peer DMA) sits at which IOVA, an IOVA allocator inside the ranges the IOMMU
// accepts, and the errors a person can act on.
import { ClosedError, KernelError, NoRouteError, StepError, UnsupportedError, UsageError } from '../errors.js';
import type { RouteName } from '../routes/names.js';
import type { Kernel } from '../sys/kernel.js';
import { hex, type DmaBuffer } from './buffer.js';
import { IovaAllocator, type IovaRange } from './iova.js';
import { isDmaMemory, type DmaMemory, type DmaRevoker } from './memory.js';

/** What a route provides for DMA: the raw map and unmap ioctls and the IOMMU's geometry. */
export interface DmaBackend {
  readonly route: RouteName;
  /** why this context cannot map at all (noiommu; a container without a group yet), or null */
  dmaUnavailable(): string | null;
  /** the IOVA ranges the IOMMU accepts and the alignment of IOVAs and sizes (throws StepError) */
  geometry(): { ranges: IovaRange[]; alignment: bigint };
  mapRaw(vaddr: bigint, iova: bigint, size: bigint, readable: boolean, writable: boolean): void;
  /** mapRaw of each in turn, in one call; a failure is the StepError of the one refused, with its index */
  mapRawEach(maps: readonly RawMap[]): void;
  unmapRaw(iova: bigint, size: bigint): void;
}

export interface DmaMapOptions {
  /** map at this IOVA; by default the lowest free one is chosen */
  iova?: bigint;
  /** choose an IOVA below this one (a device's DMA mask: edu's is 28 bits, so 1n << 28n) */
  limit?: bigint;
  /** the device may read the buffer (default true) */
  readable?: boolean;
  /** the device may write the buffer (default: true, or false for memory mapped read-only into the process) */
  writable?: boolean;
}

/** One mapping as the raw ioctls take it. */
export interface RawMap {
  vaddr: bigint;
  iova: bigint;
  size: bigint;
  readable: boolean;
  writable: boolean;
}

/** A batch entry with its own options (mapBatch). */
export interface DmaBatchEntry<M extends DmaMemory = DmaMemory> extends DmaMapOptions {
  buffer: M;
}

/** What is mapped where: `buffer` is the DMA buffer, or the region mapping of a peer-to-peer map. */
export interface DmaMapping<M extends DmaMemory = DmaMemory> {
  iova: bigint;
  size: bigint;
  buffer: M;
  readable: boolean;
  writable: boolean;
}

export class DmaMappings implements DmaRevoker {
  private readonly allocator = new IovaAllocator([]);
  private alignment: bigint;
  private readonly byIova = new Map<bigint, DmaMapping>();
  /** the kernel's page and huge-page sizes as bigints, converted once: plan() runs per mapping */
  private readonly page: bigint;
  private readonly hugePage: bigint;
  /** the IOMMU's answer, kept until a device joins or leaves the context (asking costs 1-3 system calls) */
  private known = false;

  constructor(
    private readonly backend: DmaBackend,
    private readonly kernel: Kernel,
  ) {
    this.page = BigInt(kernel.pageSize);
    this.hugePage = BigInt(kernel.hugePageSize);
    this.alignment = this.page;
  }

  /**
   * The allocator with the IOMMU's current ranges. They change only when a device joins (its reserved
   * regions shrink them) or leaves the context: the context calls invalidateGeometry() then.
   */
  private geometry(): IovaAllocator {
    if (!this.known) {
      let g: ReturnType<DmaBackend['geometry']>;
      try {
        g = this.backend.geometry();
      } catch (e) {
        throw this.explain(e, () => 'the IOVA ranges');
      }
      this.allocator.ranges = g.ranges;
      this.alignment = g.alignment;
      this.known = true;
    }
    return this.allocator;
  }

  /** The devices of the context changed: ask the IOMMU for its ranges again before the next map. */
  invalidateGeometry(): void {
    this.known = false;
  }

  ranges(): IovaRange[] {
    this.checkAvailable();
    return this.geometry().ranges.map((r) => ({ ...r }));
  }

  list(): DmaMapping[] {
    return [...this.byIova.values()].sort((a, b) => (a.iova < b.iova ? -1 : 1));
  }

  map<M extends DmaMemory>(buffer: M, options: DmaMapOptions = {}): DmaMapping<M> {
    this.checkAvailable();
    const mapping = this.plan(buffer, options);
    const { iova, size } = mapping;
    try {
      this.backend.mapRaw(buffer.address, iova, size, mapping.readable, mapping.writable);
    } catch (e) {
      this.allocator.free(iova);
      this.known = false; // whatever the kernel objected to, the next map asks it afresh
      throw this.explain(e, () => `${size} bytes at IOVA ${hex(iova)}`, size, buffer);
    }
    this.commit(mapping);
    return mapping;
  }

  /**
   * Maps many buffers in one call (a VMM's guest RAM regions, a driver's queues), all or nothing: if
   * any is refused, those mapped before it are unmapped again and nothing stays mapped. Each entry is
   * a buffer or { buffer, ...its own options }; `defaults` apply to every entry.
   */
  mapBatch<M extends DmaMemory = DmaBuffer>(entries: readonly (M | DmaBatchEntry<M>)[], defaults: DmaMapOptions = {}): DmaMapping<M>[] {
    this.checkAvailable();
    const planned: DmaMapping<M>[] = [];
    try {
      for (let i = 0; i < entries.length; i++) {
        const entry = entries[i]!;
        planned.push(isDmaMemory(entry) ? this.plan(entry, defaults, i) : this.plan((entry as DmaBatchEntry<M>).buffer, entry, i, defaults));
      }
    } catch (e) {
      for (const m of planned) this.allocator.free(m.iova);
      throw e;
    }
    if (planned.length === 0) return planned;
    const raw = new Array<RawMap>(planned.length);
    for (let i = 0; i < planned.length; i++) {
      const m = planned[i]!;
      raw[i] = { vaddr: m.buffer.address, iova: m.iova, size: m.size, readable: m.readable, writable: m.writable };
    }
    try {
      this.backend.mapRawEach(raw);
    } catch (refusal) {
      const failed = refusal instanceof StepError ? (refusal.index ?? 0) : 0;
      const e = this.explain(refusal, () => `entry ${failed} of the batch of ${planned.length} (${planned[failed]!.size} bytes at IOVA ${hex(planned[failed]!.iova)})`, planned[failed]?.size, planned[failed]?.buffer);
      // all or nothing: take out what the kernel mapped before the refusal
      const stuck = new Set(this.unmapRuns(planned.slice(0, failed), () => {}));
      for (const m of planned) if (!stuck.has(m)) this.allocator.free(m.iova);
      for (const m of stuck) this.commit(m); // the kernel still maps these: closing the context drops them
      this.known = false;
      if (stuck.size > 0 && e instanceof Error) e.message += ` (and ${stuck.size} of the batch's mappings could not be taken out again: they stay mapped until unmapped or the context closes)`;
      throw e;
    }
    for (const m of planned) this.commit(m);
    return planned;
  }

  /**
   * Unmaps many mappings of this context; touching ones go in one ranged unmap each (the kernel takes
   * out every mapping inside the range), so a batch from mapBatch() unmaps in one system call.
   */
  unmapBatch(mappings: readonly DmaMapping[]): void {
    for (const m of mappings) {
      if (this.byIova.get(m.iova) !== m) throw new UsageError(`nothing of this context is mapped at IOVA ${hex(m.iova)} (unmapped already?)`);
    }
    const sorted = inIovaOrder(mappings);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i]!.iova === sorted[i - 1]!.iova) throw new UsageError(`the mapping at IOVA ${hex(sorted[i]!.iova)} is listed twice`);
    }
    let failure: unknown = null;
    this.unmapRuns(sorted, (run, start, end) => this.forgetRun(run, start, end), (e) => (failure ??= e));
    if (failure) throw failure;
  }

  /**
   * Unmaps `mappings` as runs of touching IOVAs, one ranged unmap per run, calling `done` with each run
   * that went and the span it covered; returns the mappings of the runs the kernel refused (their error
   * to `onError`).
   */
  private unmapRuns(
    mappings: readonly DmaMapping[],
    done: (run: readonly DmaMapping[], start: bigint, end: bigint) => void,
    onError: (e: unknown) => void = () => {},
  ): DmaMapping[] {
    const sorted = inIovaOrder(mappings);
    const stuck: DmaMapping[] = [];
    for (let first = 0; first < sorted.length;) {
      let end = sorted[first]!.iova + sorted[first]!.size;
      let next = first + 1;
      while (next < sorted.length && sorted[next]!.iova === end) end += sorted[next++]!.size;
      const run = sorted.slice(first, next);
      const start = run[0]!.iova;
      try {
        this.backend.unmapRaw(start, end - start);
      } catch (e) {
        stuck.push(...run);
        onError(this.explain(e, () => `IOVA ${hex(start)}-${hex(end - 1n)} (${run.length} mappings)`));
        first = next;
        continue;
      }
      done(run, start, end);
      first = next;
    }
    return stuck;
  }

  /**
   * Checks a buffer and its options (over `defaults`, a batch's) and reserves its IOVA; `entry` names it
   * in a batch's errors. This runs once per mapping, so nothing is built here that only an error needs.
   */
  private plan<M extends DmaMemory>(buffer: M, options: DmaMapOptions, entry?: number, defaults?: DmaMapOptions): DmaMapping<M> {
    const which = (): string => (entry === undefined ? '' : `batch entry ${entry}: `);
    if (!isDmaMemory(buffer)) {
      // an ordinary Buffer may share its pages with other data, and the garbage collector may free it
      throw new UsageError(`${which()}only buffers from allocDmaBuffer() can be mapped for DMA (page-aligned, pinned, never moved), or a device's region mapping (peer-to-peer)`);
    }
    const readable = options.readable ?? defaults?.readable ?? true;
    const writable = options.writable ?? defaults?.writable ?? buffer.writable;
    if (writable && !buffer.writable) {
      throw new UsageError(`${which()}${buffer.description} is mapped read-only into this process, so a device may only read it: map it with writable: false, or map the region writable`);
    }
    if (!readable && !writable) {
      throw new UsageError(`${which()}a DMA mapping the device may neither read nor write is no mapping`);
    }
    if (buffer.freed) throw new ClosedError(`${which()}cannot map ${buffer.kind === 'ram' ? 'a freed DMA buffer' : `${buffer.description}: it is closed`}`);
    const allocator = this.geometry();
    const size = BigInt(buffer.size);
    const wanted = options.iova ?? defaults?.iova;
    let iova: bigint;
    if (wanted !== undefined) {
      iova = typeof wanted === 'bigint' ? wanted : BigInt(wanted);
      // At least a page: an IOAS with no device yet reports alignment 1, and a device joining later
      // would then fail to attach (EADDRINUSE) over a mapping its IOMMU cannot express.
      const need = this.alignment > this.page ? this.alignment : this.page;
      if (iova % need !== 0n) {
        throw new UsageError(`${which()}IOVA ${hex(iova)} is not aligned to the IOMMU's ${need}-byte pages`);
      }
      const why = allocator.reserve(iova, size);
      if (why) throw new UsageError(`${which()}cannot map ${size} bytes at IOVA ${hex(iova)}: ${why}`, { hint: this.rangesHint(allocator) });
    } else {
      // a huge-page-aligned buffer of a huge page or more (huge pages, or THP from allocDma) gets an IOVA
      // aligned alike, so that the IOMMU can map it with its block pages too (2 MiB; 512 MiB with 64 KiB pages)
      const huge = this.hugePage;
      let align = buffer.pageSize === this.kernel.pageSize ? this.page : BigInt(buffer.pageSize);
      if (this.alignment > align) align = this.alignment;
      if (size >= huge && buffer.address % huge === 0n && huge > align) align = huge;
      const limit = options.limit ?? defaults?.limit;
      const found = allocator.allocate(size, align, limit);
      if (found === null) {
        throw new UsageError(`${which()}no free IOVA range of ${size} bytes${limit !== undefined ? ` below ${hex(limit)}` : ''}`, {
          hint: this.rangesHint(allocator),
        });
      }
      iova = found;
    }
    return { iova, size, buffer, readable, writable };
  }

  /** Records a mapping the kernel made; the memory may revoke it (a BAR mapping closing with its device). */
  private commit(mapping: DmaMapping): void {
    mapping.buffer.retain(mapping, this); // no closure per map: this is the hot path
    this.byIova.set(mapping.iova, mapping);
  }

  /** @internal the memory behind `mapping` is going away: unmap it if this context still maps it */
  revoke(mapping: object): void {
    const m = mapping as DmaMapping;
    if (this.byIova.get(m.iova) === m) this.unmap(m);
  }

  /** Unmaps through the backend, or through `raw` (an unmap that also reads a dirty bitmap). */
  unmap(target: DmaMapping | bigint, raw?: (iova: bigint, size: bigint) => void): void {
    const iova = typeof target === 'bigint' ? target : target.iova;
    const mapping = this.byIova.get(iova);
    if (!mapping || (typeof target !== 'bigint' && mapping !== target)) {
      throw new UsageError(`nothing is mapped at IOVA ${hex(iova)} in this context (unmapped already?)`);
    }
    try {
      if (raw) raw(iova, mapping.size);
      else this.backend.unmapRaw(iova, mapping.size);
    } catch (e) {
      throw this.explain(e, () => `IOVA ${hex(iova)}`);
    }
    this.forget(mapping);
  }

  /** The kernel dropped every mapping (the context closed, or a container lost its last group). */
  reset(): void {
    for (const m of [...this.byIova.values()]) this.forget(m);
  }

  private forget(m: DmaMapping): void {
    this.byIova.delete(m.iova);
    this.allocator.free(m.iova);
    m.buffer.release(m);
  }

  /** forget() for a run of touching mappings that tile [start, end), unmapped in one call. */
  private forgetRun(run: readonly DmaMapping[], start: bigint, end: bigint): void {
    for (const m of run) {
      this.byIova.delete(m.iova);
      m.buffer.release(m);
    }
    this.allocator.freeTiling(run, start, end);
  }

  private checkAvailable(): void {
    const why = this.backend.dmaUnavailable();
    if (why) throw new NoRouteError(`this ${this.backend.route} context cannot map DMA: ${why}`);
  }

  private rangesHint(allocator: IovaAllocator): string {
    return `valid IOVA ranges: ${allocator.ranges.map((r) => `${hex(r.start)}-${hex(r.last)}`).join(', ')}`;
  }

  /**
   * What to throw for a raw DMA step's failure `e`: the kernel's errno turned into what a person can act
   * on. `describe` names what was mapped; it and the messages are built only on failure (this is the
   * hot path of a VMM mapping page by page). `memory` is what a map was of.
   */
  private explain(e: unknown, describe: () => string, size?: bigint, memory?: DmaMemory): unknown {
    if (!(e instanceof StepError)) return e;
    const what = describe();
    const base = e.details();
    if (memory?.kind === 'mmio' && e.errno === 'EFAULT' && this.backend.route === 'iommufd') {
      // iopt_map_user_pages pins with pin_user_pages(), which refuses VM_PFNMAP (MMIO) ranges
      return new UnsupportedError(
        `cannot map ${memory.description} (${what}) for peer-to-peer DMA on the ${this.backend.route} route: iommufd in this kernel cannot map a device's MMIO (IOMMU_IOAS_MAP of a PFNMAP range answers EFAULT)`,
        { ...base, hint: "bind with route 'legacy' (a type1 container maps BARs for peer-to-peer DMA)" },
      );
    }
    if (e.errno === 'ENOMEM' && size !== undefined) {
      const limit = this.memlock();
      return new KernelError(
        `cannot pin ${what} for DMA: the locked-memory limit (RLIMIT_MEMLOCK${limit ? `, now ${limit}` : ''}) is too low (${e.step} answered ENOMEM)`,
        { ...base, hint: 'raise it (ulimit -l, LimitMEMLOCK= in a systemd unit, or /etc/security/limits.conf), or run with CAP_IPC_LOCK' },
      );
    }
    if (e.errno === 'ENOSPC' && this.backend.route === 'legacy') {
      return new KernelError(
        `cannot map ${what}: the type1 IOMMU holds at most vfio_iommu_type1.dma_entry_limit mappings at once (65535 by default) (${e.step} answered ENOSPC)`,
        { ...base, hint: 'map fewer, larger buffers, or raise the module parameter vfio_iommu_type1.dma_entry_limit' },
      );
    }
    return new KernelError(`the kernel refused to ${e.step.includes('UNMAP') ? 'unmap' : 'map'} ${what}: ${e.step} answered ${e.errno ?? e.message}`, base);
  }

  /** "soft 8388608, hard 8388608 bytes" from /proc/self/limits, or null. */
  private memlock(): string | null {
    try {
      const line = this.kernel.readText('/proc/self/limits').split('\n').find((l) => l.startsWith('Max locked memory'));
      const m = line && /Max locked memory\s+(\S+)\s+(\S+)\s+(\S+)/.exec(line);
      return m ? `soft ${m[1]}, hard ${m[2]} ${m[3]}` : null;
    } catch {
      return null;
    }
  }
}

/** The mappings by IOVA. A batch comes back from mapBatch() in that order as a rule: sorted only when not. */
function inIovaOrder(mappings: readonly DmaMapping[]): readonly DmaMapping[] {
  for (let i = 1; i < mappings.length; i++) {
    if (mappings[i - 1]!.iova >= mappings[i]!.iova) return [...mappings].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  }
  return mappings;
}
