// Finds and loads the native addon (native/vfio_addon.c). The package ships one prebuilt Node-API
// binary per platform under prebuilds/<platform>-<arch>-<libc>/, so that installing it needs no
// compiler and runs no install script; a binary built from source (`npm run build:addon`, node-gyp)
// under build/Release/ takes precedence, as node-gyp-build orders them.
//
// Our own loader rather than node-gyp-build: it knows the one file it wants (no directory scan), it
// tells glibc from musl by the C library this process really runs on (node-gyp-build guesses musl
// from /etc/alpine-release), and when nothing fits it throws a typed AddonMissingError with its own
// exit code, naming the platform and the command that builds one.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { AddonMissingError } from '../errors.js';
import { packageRoot } from '../package.js';

export interface Addon {
  ioctl(fd: number, request: number, arg?: number | ArrayBufferView): number;
  /** as ioctl(), but a failure returns -errno instead of throwing (a probe whose refusal is an answer) */
  ioctlErrno(fd: number, request: number, arg?: number | ArrayBufferView): number;
  /** one ioctl per stride-byte record, in order; throws at the first failure, with .index */
  ioctlEach(fd: number, request: number, records: Buffer, stride: number): number;
  mmap(fd: number, offset: bigint, length: number, writable: boolean): ArrayBuffer;
  allocDma(length: number, hugePages: boolean): ArrayBuffer;
  unmap(buffer: ArrayBuffer): void;
  addressOf(buffer: ArrayBuffer): bigint;
  mmioRead(buffer: ArrayBuffer, offset: number, width: number): number | bigint;
  mmioWrite(buffer: ArrayBuffer, offset: number, width: number, value: number | bigint): void;
  /** stores before it reach memory before MMIO stores after it (x86 sfence, arm64 dmb oshst) */
  dmaWriteBarrier(): void;
  /** loads after it are not satisfied before MMIO loads before it (x86 lfence, arm64 dmb oshld) */
  dmaReadBarrier(): void;
  eventfd(): number;
  watch(fd: number, callback: (err: Error | null, count?: bigint) => void, keepAlive?: boolean): object;
  unwatch(handle: object): void;
  /** mappings and watches alive now, and how many the garbage collector had to undo (leaks) */
  liveCounts(): { mappings: number; watches: number; finalized: { mappings: number; watches: number } };
  /** the errno name a failed call's .code carries, or null for a number Linux does not define */
  errnoName(errno: number): string | null;
  /** does nothing: the cost of a Node-API call itself (the benchmarks' floor) */
  noop(): void;
}

export type Libc = 'glibc' | 'musl' | 'unknown';

/** The platforms the package ships a binary for (scripts/build-addon.mjs builds them, at prepack). */
export const PREBUILT_TARGETS = ['linux-x64-glibc', 'linux-arm64-glibc'] as const;

const ADDON_FILE = 'vfio_addon.node';
/** where node-gyp puts a binary built from source in the package */
export const SOURCE_BUILD = path.join('build', 'Release', ADDON_FILE);
/** the command that builds one from source, run from the consumer's project */
export const BUILD_FROM_SOURCE = 'npm explore vfio-bind -- npm run build:addon';

/**
 * The C library this process runs on, read from its own memory map: the dynamic loader and libc that
 * are really mapped (ld-musl-*.so.1, or glibc's libc.so.6), not a guess from the distribution.
 * Without /proc, Node's own report (which names glibc's runtime version) decides between glibc and
 * unknown.
 */
export function detectLibc(maps?: string): Libc {
  let text = maps;
  if (text === undefined) {
    try {
      text = fs.readFileSync('/proc/self/maps', 'utf8');
    } catch {
      const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
      return header?.glibcVersionRuntime ? 'glibc' : 'unknown';
    }
  }
  if (/\/(ld-musl-[\w-]+\.so\.1|libc\.musl-[\w-]+\.so\.1)$/m.test(text)) return 'musl';
  if (/\/(libc\.so\.6|libc-2\.\d+\.so|ld-linux[\w-]*\.so\.\d)$/m.test(text)) return 'glibc';
  return 'unknown';
}

/** The prebuild directory name for a platform, e.g. linux-x64-glibc. */
export const targetName = (platform: string, arch: string, libc: Libc): string => `${platform}-${arch}-${libc}`;

/** The binary to load: a source build if there is one, else the prebuild for this platform. */
export function findAddon(root: string, target: string, exists: (p: string) => boolean = fs.existsSync): string {
  const candidates = [path.join(root, SOURCE_BUILD), path.join(root, 'prebuilds', target, ADDON_FILE)];
  const found = candidates.find(exists);
  if (found) return found;
  throw new AddonMissingError(
    `vfio-bind has no native addon for ${target}: it ships prebuilt ones for ${PREBUILT_TARGETS.join(' and ')}, and none was built from source`,
    {
      path: candidates[1],
      hint: `build one from source (needs a C compiler, make and python3): ${BUILD_FROM_SOURCE}`,
    },
  );
}

let addon: Addon | undefined;

/** Loads the addon once. */
export function loadAddon(): Addon {
  if (addon) return addon;
  const file = findAddon(packageRoot(), targetName(process.platform, process.arch, detectLibc()));
  try {
    addon = createRequire(file)(file) as Addon;
  } catch (e) {
    throw new AddonMissingError(`vfio-bind's native addon ${file} does not load: ${(e as Error).message.split('\n')[0]}`, {
      path: file,
      hint: `rebuild it from source for this machine: ${BUILD_FROM_SOURCE}`,
      cause: e,
    });
  }
  return addon;
}
