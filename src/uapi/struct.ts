// Declarative C struct layouts: one description serves encoding, decoding, and the test that checks
// every size and offset against the kernel's own headers (test/uapi).

export type FieldType = 'u8' | 'u16' | 'u32' | 's32' | 'u64';
export type FieldSpecs = Readonly<Record<string, readonly [FieldType, number]>>;

export interface StructLayout<D extends FieldSpecs = FieldSpecs> {
  /** the C struct's name in the kernel headers, without `struct` */
  readonly cName: string;
  readonly size: number;
  readonly fields: D;
}

/** JavaScript's view of a field: u64 is a bigint (addresses and sizes exceed 2^53), the rest numbers. */
type Value<T extends FieldType> = T extends 'u64' ? bigint : number;
export type Decoded<D extends FieldSpecs> = { -readonly [K in keyof D]: Value<D[K][0]> };
export type Encodable<D extends FieldSpecs> = { [K in keyof D]?: number | bigint };

const WIDTH: Record<FieldType, number> = { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8 };

export function struct<const D extends FieldSpecs>(cName: string, size: number, fields: D): StructLayout<D> {
  for (const [name, [type, offset]] of Object.entries(fields)) {
    if (offset + WIDTH[type] > size) throw new Error(`${cName}.${name} lies outside the struct`);
  }
  return { cName, size, fields };
}

export function writeField(buf: Buffer, [type, offset]: readonly [FieldType, number], value: number | bigint, base = 0): void {
  const at = base + offset;
  switch (type) {
    case 'u8': buf.writeUInt8(Number(value), at); break;
    case 'u16': buf.writeUInt16LE(Number(value), at); break;
    case 'u32': buf.writeUInt32LE(Number(value), at); break;
    case 's32': buf.writeInt32LE(Number(value), at); break;
    case 'u64': buf.writeBigUInt64LE(BigInt(value), at); break;
  }
}

export function readField(buf: Buffer, [type, offset]: readonly [FieldType, number], base = 0): number | bigint {
  const at = base + offset;
  switch (type) {
    case 'u8': return buf.readUInt8(at);
    case 'u16': return buf.readUInt16LE(at);
    case 'u32': return buf.readUInt32LE(at);
    case 's32': return buf.readInt32LE(at);
    case 'u64': return buf.readBigUInt64LE(at);
  }
}

/** A zeroed buffer of the struct's size (or more, for a trailing array) with the given fields set. */
export function encode<D extends FieldSpecs>(layout: StructLayout<D>, values: Encodable<D>, totalSize = layout.size): Buffer {
  const buf = Buffer.alloc(Math.max(totalSize, layout.size));
  encodeAt(buf, layout, values, 0);
  return buf;
}

function encodeAt<D extends FieldSpecs>(buf: Buffer, layout: StructLayout<D>, values: Encodable<D>, base: number): void {
  // for..in, not Object.entries: no array per call on the path of every ioctl
  for (const name in values) {
    const spec = layout.fields[name];
    if (spec === undefined) throw new Error(`${layout.cName} has no field ${name}`);
    const value = values[name];
    if (value !== undefined) writeField(buf, spec, value, base);
  }
}

/**
 * A DataView over a Buffer's bytes, for the few hot paths (DMA map and unmap) that write a struct's
 * fields straight at their offsets: no object per call, and DataView's 64-bit stores are single
 * builtins where Buffer.writeBigUInt64LE splits the bigint in JavaScript. Unlike Buffer's writers they
 * do not range-check: their callers pass values already checked.
 */
export const viewOf = (buf: Buffer): DataView => new DataView(buf.buffer, buf.byteOffset, buf.byteLength);

/** One zeroed struct buffer and its DataView, made once and reused for every call of a hot request. */
export function reusableStruct(layout: StructLayout): { buffer: Buffer; view: DataView } {
  const buffer = Buffer.alloc(layout.size);
  return { buffer, view: viewOf(buffer) };
}

/** Decodes the struct found at `base` in buf. */
export function decode<D extends FieldSpecs>(layout: StructLayout<D>, buf: Buffer, base = 0): Decoded<D> {
  const out: Record<string, number | bigint> = {};
  // for..in, not Object.entries: no array of pairs per decode
  for (const name in layout.fields) out[name] = readField(buf, layout.fields[name]!, base);
  return out as Decoded<D>;
}
