// Errors as the fake kernel throws them: shaped as Node's fs errors (and the addon's, which carry no
// path), and the ioctl argument checks that answer EFAULT for memory the kernel cannot copy.

const ERRNO = {
  EPERM: [1, 'operation not permitted'],
  ENOENT: [2, 'no such file or directory'],
  EIO: [5, 'i/o error'],
  E2BIG: [7, 'argument list too long'],
  ENXIO: [6, 'no such device or address'],
  EBADF: [9, 'bad file descriptor'],
  EAGAIN: [11, 'resource temporarily unavailable'],
  ENOMEM: [12, 'not enough memory'],
  EACCES: [13, 'permission denied'],
  EFAULT: [14, 'bad address in system call argument'],
  EBUSY: [16, 'resource busy or locked'],
  EEXIST: [17, 'file already exists'],
  ENODEV: [19, 'no such device'],
  ENOTDIR: [20, 'not a directory'],
  EISDIR: [21, 'illegal operation on a directory'],
  EINVAL: [22, 'invalid argument'],
  EMFILE: [24, 'too many open files'],
  ENOTTY: [25, 'inappropriate ioctl for device'],
  ENOSPC: [28, 'no space left on device'],
  ESPIPE: [29, 'invalid seek'],
  ELOOP: [40, 'too many symbolic links encountered'],
  ENOMSG: [42, 'no message of desired type'],
  EOVERFLOW: [75, 'value too large for defined data type'],
  EBADFD: [77, 'file descriptor in bad state'],
  EMSGSIZE: [90, 'message too long'],
  EOPNOTSUPP: [95, 'operation not supported'],
  EADDRINUSE: [98, 'address already in use'],
  ETIMEDOUT: [110, 'connection timed out'],
} as const;
export type Errno = keyof typeof ERRNO;
export const ERRNO_NAMES = Object.keys(ERRNO) as Errno[];

/** errno's number: EBUSY -> 16 */
export const errnoNumber = (code: Errno): number => ERRNO[code][0];

export interface FakeSysError extends Error {
  code: Errno;
  errno: number;
  syscall: string;
  path?: string;
}

/** An error shaped as Node's fs errors (and the addon's, which carry no path). */
export function sysError(code: Errno, syscall: string, filePath?: string): FakeSysError {
  const [num, text] = ERRNO[code];
  const err = new Error(`${code}: ${text}, ${syscall}${filePath !== undefined ? ` '${filePath}'` : ''}`) as FakeSysError;
  err.code = code;
  err.errno = -num;
  err.syscall = syscall;
  if (filePath !== undefined) err.path = filePath;
  return err;
}

/** an ioctl's error, as the addon throws it (no path) */
export function ioctlError(code: Errno): FakeSysError {
  return sysError(code, 'ioctl');
}

/** A struct passed by address: a missing or short buffer is memory the kernel cannot copy (EFAULT). */
export function userStruct(arg: number | Buffer | undefined, minsz: number): Buffer {
  if (!Buffer.isBuffer(arg) || arg.length < minsz) throw ioctlError('EFAULT');
  return arg;
}

export function cString(arg: number | Buffer | undefined): string {
  if (!Buffer.isBuffer(arg)) throw ioctlError('EFAULT');
  const end = arg.indexOf(0);
  if (end < 0) throw ioctlError('EFAULT'); // strndup_user would read past the buffer
  return arg.subarray(0, end).toString('utf8');
}
