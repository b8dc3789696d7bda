/**
 * Bodies (docs/protocol.md §5, §9.1): msgpack values, decoded within the protocol's limits,
 * and the optional zlib compression.
 *
 * Type mapping of this client:
 *
 * | msgpack             | decodes to                                   | encoded from                 |
 * |---------------------|----------------------------------------------|------------------------------|
 * | nil                 | `null`                                       | `null` (`undefined` in a map: left out) |
 * | bool, float         | `boolean`, `number`                          | same                         |
 * | int                 | `number` (a `bigint` beyond ±2^53)           | safe-integer `number`, `bigint` |
 * | str (valid UTF-8)   | `string`                                     | `string`                     |
 * | bin                 | `Uint8Array`                                 | `Uint8Array` (`Buffer`)      |
 * | array, map          | `Array`, plain object (keys: str or int)     | `Array`, plain object (not `Map`) |
 * | ext −1 (timestamp)  | `Date` (millisecond precision)               | `Date`                       |
 * | any other ext       | rejected                                     | —                            |
 */
import { decode as mpDecode, encode as mpEncode } from "@msgpack/msgpack";
import { inflateSync } from "node:zlib";
import { deflateSync } from "node:zlib";
import { ProtocolError } from "./errors.js";

/** Most objects a body may decode to (§5.4): arrays and maps 1, array items 1, map entries 2. */
export const MAX_OBJECTS = 512 * 1024;
/** Deepest nesting of arrays and maps a body may have (§5.4). */
export const MAX_DEPTH = 1024;
/** A compressed body may expand to this many times the server's `max_payload` (§9.1)... */
export const INFLATE_RATIO = 4;
/** ... and never less than 4 MiB. */
export const MIN_INFLATE_LIMIT = 4 * 1024 * 1024;

const EMPTY = new Uint8Array(0);
const NIL = new Uint8Array([0xc0]);

/**
 * Encode a value as one msgpack value.
 * @throws TypeError when the value cannot be encoded (a function, a symbol …).
 */
export function encode(value: unknown): Uint8Array {
  if (value === null || value === undefined) return NIL;
  try {
    // Without bigint support @msgpack/msgpack writes integral numbers as ints of any width;
    // with it, it writes numbers beyond 32 bits as floats (Unix ms would become floats).
    return mpEncode(value, { ignoreUndefined: true, maxDepth: MAX_DEPTH });
  } catch (err) {
    if (!hasBigInt(value, 0)) throw err;
    return mpEncode(widen(value), { useBigInt64: true, ignoreUndefined: true, maxDepth: MAX_DEPTH });
  }
}

function plainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v) && !ArrayBuffer.isView(v) && !(v instanceof Date);
}

function hasBigInt(v: unknown, depth: number): boolean {
  if (typeof v === "bigint") return true;
  if (depth > MAX_DEPTH) return false;
  if (Array.isArray(v)) return v.some((x) => hasBigInt(x, depth + 1));
  if (plainObject(v)) return Object.values(v).some((x) => hasBigInt(x, depth + 1));
  return false;
}

/** A copy whose integral numbers beyond 32 bits are bigints (encoded as int64/uint64). */
function widen(v: unknown): unknown {
  if (typeof v === "number") return Number.isSafeInteger(v) && (v >= 2 ** 32 || v < -(2 ** 31)) ? BigInt(v) : v;
  if (Array.isArray(v)) return v.map(widen);
  if (plainObject(v)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = widen(x);
    return out;
  }
  return v;
}

/** What a scan of a msgpack body found. */
interface Scan {
  /** The body holds 64-bit integers (decoded as `bigint`, then narrowed). */
  has64: boolean;
}

const fatalUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Walk the msgpack bytes without building anything: one complete value, nothing after it,
 * within the object and depth limits, strings valid UTF-8, no extension but the timestamp.
 * @throws ProtocolError with the protocol's messages.
 */
function scan(data: Uint8Array, maxObjects: number): Scan {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const end = data.byteLength;
  let pos = 0;
  let objects = 0;
  let has64 = false;
  // Items still to read in each open container (a map counts keys and values).
  const open: number[] = [];
  const need = (n: number): void => {
    if (pos + n > end) throw new ProtocolError("malformed msgpack body: truncated");
  };
  const u8 = (): number => {
    need(1);
    return data[pos++]!;
  };
  const u16 = (): number => {
    need(2);
    const v = view.getUint16(pos);
    pos += 2;
    return v;
  };
  const u32 = (): number => {
    need(4);
    const v = view.getUint32(pos);
    pos += 4;
    return v;
  };
  const skip = (n: number): void => {
    need(n);
    pos += n;
  };
  const str = (n: number): void => {
    need(n);
    try {
      fatalUtf8.decode(data.subarray(pos, pos + n));
    } catch {
      throw new ProtocolError("malformed msgpack body: a string is not valid UTF-8");
    }
    pos += n;
  };
  const ext = (n: number): void => {
    need(1);
    const type = view.getInt8(pos);
    pos += 1;
    if (type !== -1) throw new ProtocolError(`msgpack extension type ${type} is not allowed`);
    if (n !== 4 && n !== 8 && n !== 12) throw new ProtocolError("malformed msgpack body: bad timestamp");
    skip(n);
  };
  let opened = false;
  const container = (items: number, cost: number): void => {
    objects += cost;
    if (objects > maxObjects) throw new ProtocolError(`msgpack body holds more than ${maxObjects} objects`);
    if (items > 0) {
      if (open.length >= MAX_DEPTH) {
        throw new ProtocolError(`msgpack body nested deeper than ${MAX_DEPTH} levels`);
      }
      open.push(items);
      opened = true;
    }
  };
  for (;;) {
    opened = false;
    const b = u8();
    if (b <= 0x7f || b >= 0xe0) {
      // fixint
    } else if (b <= 0x8f) {
      const n = b & 0x0f;
      container(2 * n, 1 + 2 * n);
    } else if (b <= 0x9f) {
      const n = b & 0x0f;
      container(n, 1 + n);
    } else if (b <= 0xbf) {
      str(b & 0x1f);
    } else {
      switch (b) {
        case 0xc0:
        case 0xc2:
        case 0xc3:
          break;
        case 0xc4:
          skip(u8());
          break;
        case 0xc5:
          skip(u16());
          break;
        case 0xc6:
          skip(u32());
          break;
        case 0xc7:
          ext(u8());
          break;
        case 0xc8:
          ext(u16());
          break;
        case 0xc9:
          ext(u32());
          break;
        case 0xca:
          skip(4);
          break;
        case 0xcb:
          skip(8);
          break;
        case 0xcc:
        case 0xd0:
          skip(1);
          break;
        case 0xcd:
        case 0xd1:
          skip(2);
          break;
        case 0xce:
        case 0xd2:
          skip(4);
          break;
        case 0xcf:
        case 0xd3:
          has64 = true;
          skip(8);
          break;
        case 0xd4:
          ext(1);
          break;
        case 0xd5:
          ext(2);
          break;
        case 0xd6:
          ext(4);
          break;
        case 0xd7:
          ext(8);
          break;
        case 0xd8:
          ext(16);
          break;
        case 0xd9:
          str(u8());
          break;
        case 0xda:
          str(u16());
          break;
        case 0xdb:
          str(u32());
          break;
        case 0xdc: {
          const n = u16();
          container(n, 1 + n);
          break;
        }
        case 0xdd: {
          const n = u32();
          container(n, 1 + n);
          break;
        }
        case 0xde: {
          const n = u16();
          container(2 * n, 1 + 2 * n);
          break;
        }
        case 0xdf: {
          const n = u32();
          container(2 * n, 1 + 2 * n);
          break;
        }
        default:
          throw new ProtocolError(`malformed msgpack body: invalid byte 0x${b.toString(16)}`);
      }
    }
    if (opened) continue; // a container's items follow
    // One value read: close every container it completes.
    while (open.length > 0) {
      const top = open.length - 1;
      open[top]! -= 1;
      if (open[top]! > 0) break;
      open.pop();
    }
    if (open.length === 0) break;
  }
  if (pos !== end) throw new ProtocolError(`malformed msgpack body: ${end - pos} bytes after its value`);
  return { has64 };
}

function narrow(value: unknown): unknown {
  if (typeof value === "bigint") {
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = narrow(value[i]);
    return value;
  }
  if (value !== null && typeof value === "object" && !(value instanceof Uint8Array) && !(value instanceof Date)) {
    const obj = value as Record<string, unknown>;
    for (const k of Object.keys(obj)) obj[k] = narrow(obj[k]);
  }
  return value;
}

/**
 * Decode one msgpack body within the protocol's limits (§5.4); an empty body is `null`.
 * @throws ProtocolError: malformed, trailing bytes, a forbidden extension, invalid UTF-8,
 *   too many objects, too deep.
 */
export function decode(data: Uint8Array, maxObjects: number = MAX_OBJECTS): unknown {
  if (data.byteLength === 0) return null;
  const { has64 } = scan(data, maxObjects);
  let value: unknown;
  try {
    value = mpDecode(data, { useBigInt64: true });
  } catch (err) {
    throw new ProtocolError(`malformed msgpack body: ${(err as Error).message}`, { cause: err });
  }
  return has64 ? narrow(value) : value;
}

/** How far a compressed body that came through a server with this `max_payload` may expand. */
export function inflateLimit(maxPayload: number): number {
  return Math.max(MIN_INFLATE_LIMIT, INFLATE_RATIO * maxPayload);
}

/** `data` compressed (a zlib stream), or `null` when that is not smaller (§9.1). */
export function deflate(data: Uint8Array): Uint8Array | null {
  const packed = deflateSync(data, { level: 1 });
  return packed.byteLength < data.byteLength
    ? new Uint8Array(packed.buffer, packed.byteOffset, packed.byteLength)
    : null;
}

/**
 * Undo {@link deflate}: exactly one complete zlib stream, expanding to at most `limit` bytes.
 * @throws ProtocolError with the protocol's messages (§9.1).
 */
export function inflate(data: Uint8Array, limit: number = MIN_INFLATE_LIMIT): Uint8Array {
  let result: { buffer: Buffer; engine: { bytesWritten: number } };
  try {
    result = inflateSync(data, { maxOutputLength: limit, info: true }) as unknown as typeof result;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === "ERR_BUFFER_TOO_LARGE" || e instanceof RangeError) {
      throw new ProtocolError(`compressed body expands beyond ${limit} bytes`);
    }
    if (e.code === "Z_BUF_ERROR") {
      throw new ProtocolError("compressed body is truncated: its zlib stream does not end");
    }
    throw new ProtocolError(`compressed body is not a valid deflate (zlib) stream: ${e.message}`);
  }
  const extra = data.byteLength - result.engine.bytesWritten;
  if (extra > 0) throw new ProtocolError(`compressed body has ${extra} bytes after the end of its zlib stream`);
  const out = result.buffer;
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

export { EMPTY, NIL };
