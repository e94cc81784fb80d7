// The real Kernel: node:fs for files, our addon for ioctl.
import fs from 'node:fs';
import { loadAddon, type Addon } from './addon.js';
import { isSysError, type FileStat, type Kernel, type SysErrorLike } from './kernel.js';
import { HUGE_PAGE_SIZE, PAGE_SIZE } from './page-size.js';

export { loadAddon, type Addon } from './addon.js';

/**
 * The V8 majors, per CPU architecture, whose JIT and interpreter the VM suite proved to make each
 * typed-array register access one load or store of its width, none merged, dropped or hoisted
 * (test/vm/mmio-direct.test.ts counts the accesses the device sees, through QEMU's trace). 11 is
 * Node 20's. Another engine's optimiser, or its code generator for another architecture, may differ
 * (a newer one may eliminate a store that a later store to the same address overwrites; arm64's may
 * pair two adjacent loads into one ldp), so until the suite has run on it, accesses go through the addon.
 */
const PROVEN_V8_MAJORS: Partial<Record<string, readonly number[]>> = { x64: [11], arm64: [11] };
const directMmioProven = (PROVEN_V8_MAJORS[process.arch] ?? []).includes(Number(process.versions.v8.split('.')[0]));
/** typed arrays index with 32-bit lengths here; a larger mapping (a GPU's BAR) keeps to the addon */
const MAX_DIRECT_MAPPING = 2 ** 32 - 8;

const toStat = (s: fs.Stats): FileStat => ({ mode: s.mode, rdev: s.rdev, isCharacterDevice: s.isCharacterDevice() });

export class NativeKernel implements Kernel {
  readonly pageSize = PAGE_SIZE;
  readonly hugePageSize = HUGE_PAGE_SIZE;
  constructor(private readonly addon: Addon = loadAddon()) {}
  open(path: string): number {
    return fs.openSync(path, fs.constants.O_RDWR);
  }
  close(fd: number): void {
    fs.closeSync(fd);
  }
  ioctl(fd: number, request: number, arg?: number | Buffer): number {
    return this.addon.ioctl(fd, request, arg);
  }
  ioctlErrno(fd: number, request: number, arg?: number | Buffer): number {
    return this.addon.ioctlErrno(fd, request, arg);
  }
  ioctlEach(fd: number, request: number, records: Buffer, stride: number): number {
    return this.addon.ioctlEach(fd, request, records, stride);
  }
  pread(fd: number, buf: Buffer, offset: bigint | number): number {
    return fs.readSync(fd, buf, 0, buf.length, offset);
  }
  pwrite(fd: number, buf: Buffer, offset: bigint | number): number {
    return fs.writeSync(fd, buf, 0, buf.length, Number(offset));
  }
  read(fd: number, buf: Buffer, callback: (err: SysErrorLike | null, bytes: number) => void): void {
    fs.read(fd, buf, 0, buf.length, null, (err, n) => callback(this.named(err), n ?? 0));
  }
  write(fd: number, buf: Buffer, callback: (err: SysErrorLike | null, bytes: number) => void): void {
    fs.write(fd, buf, 0, buf.length, null, (err, n) => callback(this.named(err), n ?? 0));
  }
  /** libuv leaves some errnos unnamed ("Unknown system error -42" for ENOMSG): the addon's table names them. */
  private named(err: NodeJS.ErrnoException | null): SysErrorLike | null {
    if (!err) return null;
    if (!isSysError(err)) return Object.assign(err, { code: 'EIO', errno: -5, syscall: err.syscall ?? 'read' }) as SysErrorLike;
    if (/^Unknown system error/.test(err.code) || err.code === 'UNKNOWN') err.code = this.addon.errnoName(-err.errno) ?? err.code;
    return err;
  }
  fstat(fd: number): FileStat {
    return toStat(fs.fstatSync(fd));
  }
  stat(path: string): FileStat {
    return toStat(fs.statSync(path));
  }
  readlink(path: string): string {
    return fs.readlinkSync(path);
  }
  realpath(path: string): string {
    // one call into libc's realpath(3) (which still checks each component), not fs.realpathSync's JavaScript walk
    return fs.realpathSync.native(path);
  }
  readdir(path: string): string[] {
    return fs.readdirSync(path);
  }
  readText(path: string): string {
    return fs.readFileSync(path, 'utf8').replace(/\n$/, '');
  }
  readBytes(path: string): Buffer {
    return fs.readFileSync(path);
  }
  exists(path: string): boolean {
    return fs.existsSync(path);
  }
  mmap(fd: number, offset: bigint, length: number, writable: boolean): ArrayBuffer {
    return this.addon.mmap(fd, offset, length, writable);
  }
  allocDma(length: number, hugePages: boolean): ArrayBuffer {
    return this.addon.allocDma(length, hugePages);
  }
  unmap(buffer: ArrayBuffer): void {
    this.addon.unmap(buffer);
  }
  addressOf(buffer: ArrayBuffer): bigint {
    return this.addon.addressOf(buffer);
  }
  mmioRead(buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4): number;
  mmioRead(buffer: ArrayBuffer, offset: number, width: 8): bigint;
  mmioRead(buffer: ArrayBuffer, offset: number, width: number): number | bigint {
    return this.addon.mmioRead(buffer, offset, width);
  }
  mmioWrite(buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4 | 8, value: number | bigint): void {
    this.addon.mmioWrite(buffer, offset, width, value);
  }
  mmioDirect(buffer: ArrayBuffer): boolean {
    return directMmioProven && buffer.byteLength <= MAX_DIRECT_MAPPING;
  }
  dmaWriteBarrier(): void {
    this.addon.dmaWriteBarrier();
  }
  dmaReadBarrier(): void {
    this.addon.dmaReadBarrier();
  }
  eventfd(): number {
    return this.addon.eventfd();
  }
  watch(fd: number, callback: (err: Error | null, count?: bigint) => void, options: { keepAlive?: boolean } = {}): object {
    return this.addon.watch(fd, callback, options.keepAlive ?? true);
  }
  unwatch(handle: object): void {
    this.addon.unwatch(handle);
  }
  writeText(path: string, text: string): void {
    fs.writeFileSync(path, text);
  }
  unlink(path: string): void {
    fs.unlinkSync(path);
  }
  mkdirp(path: string): void {
    fs.mkdirSync(path, { recursive: true });
  }
  accessible(path: string): boolean {
    try {
      fs.accessSync(path, fs.constants.R_OK | fs.constants.W_OK);
      return true;
    } catch {
      return false;
    }
  }
}
