// The seam between vfio-bind and the kernel. Everything above it talks to an injected Kernel, so unit
// tests can put a fake one in its place (test/fake-kernel.ts) and the VM suite proves the real one.

/** What a failed system call throws: the shape of Node's own fs errors. */
export interface SysErrorLike extends Error {
  /** errno's name, e.g. "EBUSY" */
  code: string;
  /** negative errno, as libuv reports it */
  errno: number;
  syscall: string;
  path?: string;
}

/** What ioctlEach throws: the failed record's index besides the errno. */
export interface BatchSysError extends SysErrorLike {
  index: number;
}

export function isSysError(e: unknown): e is SysErrorLike {
  return e instanceof Error && typeof (e as SysErrorLike).code === 'string' && typeof (e as SysErrorLike).errno === 'number';
}

export interface FileStat {
  /** st_mode */
  mode: number;
  /** st_rdev, the device number of a character or block device */
  rdev: number;
  isCharacterDevice: boolean;
}

export interface Kernel {
  /** open(2) read-write, close-on-exec; returns the fd */
  open(path: string): number;
  close(fd: number): void;
  /** ioctl(2): returns its non-negative result; arg is passed by value (number) or by address (buffer) */
  ioctl(fd: number, request: number, arg?: number | Buffer): number;
  /**
   * As ioctl(), but a failure returns -errno instead of throwing: for a probe whose refusal is an
   * answer, where building a thrown error would cost more than the call.
   */
  ioctlErrno(fd: number, request: number, arg?: number | Buffer): number;
  /**
   * One ioctl per `stride`-byte record of `records`, each by address, in order, stopping at the first
   * that fails: its SysError carries `index`, and every record before it succeeded. Returns the count.
   */
  ioctlEach(fd: number, request: number, records: Buffer, stride: number): number;
  /** pread(2)/pwrite(2): the byte count transferred */
  pread(fd: number, buf: Buffer, offset: bigint | number): number;
  pwrite(fd: number, buf: Buffer, offset: bigint | number): number;
  /**
   * read(2)/write(2) at the file's own position, off the event loop (a stream: a migration data fd,
   * whose driver may sleep until the device has data). Calls back with the byte count, or the error
   * with its errno name (ENOMSG too, which libuv does not name).
   */
  read(fd: number, buf: Buffer, callback: (err: SysErrorLike | null, bytes: number) => void): void;
  write(fd: number, buf: Buffer, callback: (err: SysErrorLike | null, bytes: number) => void): void;
  fstat(fd: number): FileStat;
  stat(path: string): FileStat;
  readlink(path: string): string;
  realpath(path: string): string;
  readdir(path: string): string[];
  /** a sysfs attribute's text, trailing newline removed */
  readText(path: string): string;
  /** a whole file's bytes (/proc/config.gz) */
  readBytes(path: string): Buffer;
  exists(path: string): boolean;
  /** access(2) with R_OK|W_OK: could this process open the path read-write? */
  accessible(path: string): boolean;
  /** one write(2) of text to a file (a sysfs attribute, or a state file under /run), created if absent */
  writeText(path: string, text: string): void;
  unlink(path: string): void;
  /** mkdir -p */
  mkdirp(path: string): void;

  // Memory. A mapping is an ArrayBuffer that unmap() detaches (its views go empty) before munmap.
  /** the kernel's page size (4096; 16384 or 65536 on some arm64 kernels) */
  readonly pageSize: number;
  /** its PMD-sized huge page (2 MiB with 4 KiB pages, 512 MiB with 64 KiB) */
  readonly hugePageSize: number;
  /** mmap(2) MAP_SHARED of `length` bytes at `offset` in fd (a device region) */
  mmap(fd: number, offset: bigint, length: number, writable: boolean): ArrayBuffer;
  /** page-aligned anonymous memory, populated (MAP_HUGETLB when hugePages) */
  allocDma(length: number, hugePages: boolean): ArrayBuffer;
  /** munmap(2) of a mapping from mmap or allocDma; idempotent */
  unmap(buffer: ArrayBuffer): void;
  /** the virtual address of a mapping */
  addressOf(buffer: ArrayBuffer): bigint;
  /** one load or store of exactly `width` bytes (MMIO registers answer only certain widths) */
  mmioRead(buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4): number;
  mmioRead(buffer: ArrayBuffer, offset: number, width: 8): bigint;
  mmioWrite(buffer: ArrayBuffer, offset: number, width: 1 | 2 | 4 | 8, value: number | bigint): void;
  /**
   * May JavaScript load and store this mapping's registers itself, through typed-array views, or must
   * each access be an mmioRead/mmioWrite? True only where every width was proven to stay one access of
   * that width, never merged, dropped or hoisted (src/device/mmio.ts says where).
   */
  mmioDirect(buffer: ArrayBuffer): boolean;
  /** stores before it reach memory before MMIO stores after it reach the device (dma_wmb) */
  dmaWriteBarrier(): void;
  /** loads after it are not satisfied before MMIO loads before it (dma_rmb) */
  dmaReadBarrier(): void;

  // Interrupts.
  /** eventfd(2), non-blocking and close-on-exec */
  eventfd(): number;
  /** calls back on the event loop each time the eventfd fires, with the count read from it */
  watch(fd: number, callback: (err: Error | null, count?: bigint) => void, options?: { keepAlive?: boolean }): object;
  unwatch(handle: object): void;
}

/**
 * major/minor of a Linux dev_t as glibc encodes it (major bits 0-11 at 8-19 and 12-31 at 44-63, minor
 * bits 0-7 at 0-7 and 8-31 at 20-43), in plain arithmetic: exact for every number a Stats rdev can
 * hold, and without BigInt, which costs more than the open beside it on the bind path under emulation.
 */
const low = (n: number, bits: number): number => n % 2 ** bits;
const high = (n: number, shift: number): number => Math.floor(n / 2 ** shift);
export const major = (rdev: number): number => low(high(rdev, 8), 12) + high(rdev, 44) * 2 ** 12;
export const minor = (rdev: number): number => low(rdev, 8) + low(high(rdev, 20), 24) * 2 ** 8;
export const makedev = (maj: number, min: number): number =>
  low(maj, 12) * 2 ** 8 + high(maj, 12) * 2 ** 44 + low(min, 8) + high(min, 8) * 2 ** 20;
