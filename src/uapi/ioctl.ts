// Linux ioctl request encoding (include/uapi/asm-generic/ioctl.h; x86, arm64 and riscv use it).
const NRBITS = 8;
const TYPEBITS = 8;
const SIZEBITS = 14;
const NRSHIFT = 0;
const TYPESHIFT = NRSHIFT + NRBITS;
const SIZESHIFT = TYPESHIFT + TYPEBITS;
const DIRSHIFT = SIZESHIFT + SIZEBITS;

export const IOC_NONE = 0;
export const IOC_WRITE = 1;
export const IOC_READ = 2;

export function IOC(dir: number, type: number, nr: number, size: number): number {
  // >>> 0 keeps the result an unsigned 32-bit number once the direction bits reach bit 31
  return ((dir << DIRSHIFT) | (type << TYPESHIFT) | (nr << NRSHIFT) | (size << SIZESHIFT)) >>> 0;
}

export const IO = (type: number, nr: number): number => IOC(IOC_NONE, type, nr, 0);
