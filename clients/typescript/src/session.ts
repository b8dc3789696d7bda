/**
 * Caller sessions (protocol §19.2, §19.4): what one caller session has seen, the highest
 * state version (`Na-State-Version`, the KV revision of the agent's state record) per agent.
 * Reads sent on a read subject with the session carry it as `Na-Min-Version`: a replica that
 * holds an older state waits for its watch or forwards the read to the primary, so the
 * session reads its own writes and never goes back in time, wherever its reads are served.
 *
 * A session travels between processes (and languages) as a token: `s1.` + base64url without
 * padding of the msgpack array `[[kind, id, version], …]` — exactly the Python SDK's
 * `Session.token()`. Tokens are bounded ({@link MAX_TOKEN_AGENTS} agents,
 * {@link MAX_TOKEN_CHARS} characters) and read whole or refused whole
 * ({@link InvalidSessionToken}). They are not secret and not signed: a forged one can only
 * make reads wait for replicas or go to the primary.
 */
import { encode } from "./codec.js";
import { ConfigurationError, InvalidSessionToken } from "./errors.js";
import { encodeId, validateKind } from "./wire.js";

/** Agents a token carries at most (the most recently seen ones). */
export const MAX_TOKEN_AGENTS = 256;
/** Characters a token may have at most. */
export const MAX_TOKEN_CHARS = 32 * 1024;
/** Versions are KV revisions: positive 64-bit stream sequences. */
export const MAX_VERSION = 2n ** 63n - 1n;
const TOKEN_PREFIX = "s1.";
const BASE64URL_RE = /^[A-Za-z0-9_-]*$/;
const VERSION_RE = /^[0-9]{1,19}$/;

/** Options of a new {@link Session}. */
export interface SessionOptions {
  /** Agents remembered at most; the least recently seen are forgotten first (default 10 000). */
  maxAgents?: number;
}

/** The key of an agent in a session's map (a kind has no NUL, so the split is unambiguous). */
function key(kind: string, id: string): string {
  return `${kind}\u0000${id}`;
}

/** A `Na-State-Version` / `Na-Min-Version` value (1-19 ASCII digits, at most 2^63-1), else `null`. */
export function parseVersion(text: string | undefined): bigint | null {
  if (text === undefined || !VERSION_RE.test(text)) return null;
  const v = BigInt(text);
  return v <= MAX_VERSION ? v : null;
}

/**
 * What one caller session has seen: the highest state version per agent. Make one with
 * `mesh.session()` (or `mesh.session({ token })` to resume another process's), and pass it
 * to calls (`{ session }`, per call or with `ref.withOptions`).
 */
export class Session {
  private readonly max: number;
  /** `kind\0id` → [kind, id, version], in the order last raised (oldest first). */
  private readonly versions = new Map<string, [string, string, bigint]>();

  constructor(options: SessionOptions = {}) {
    const max = options.maxAgents ?? 10_000;
    if (!Number.isInteger(max) || max < 1) {
      throw new ConfigurationError(`maxAgents must be an integer >= 1, not ${String(max)}`);
    }
    this.max = max;
  }

  /** Agents this session remembers. */
  get size(): number {
    return this.versions.size;
  }

  /** The highest state version of `kind/id` this session saw (`0n`: none). */
  version(kind: string, id: string): bigint {
    return this.versions.get(key(kind, id))?.[2] ?? 0n;
  }

  /**
   * A reply of `kind/id` carried state `version`: remember it if it is the highest.
   * @throws ConfigurationError for a version that is not an integer
   */
  observe(kind: string, id: string, version: bigint | number): void {
    if (typeof version !== "bigint" && !Number.isSafeInteger(version)) {
      throw new ConfigurationError(`a state version is an integer, not ${String(version)}`);
    }
    const v = BigInt(version);
    const k = key(kind, id);
    const known = this.versions.get(k);
    if (known !== undefined && v <= known[2]) return;
    if (known === undefined && v <= 0n) return;
    this.versions.delete(k); // re-inserted last: the most recently raised
    this.versions.set(k, [kind, id, v]);
    if (this.versions.size > this.max) {
      const oldest = this.versions.keys().next().value as string;
      this.versions.delete(oldest);
    }
  }

  /**
   * This session as a string another process (Python or TypeScript) resumes with
   * `mesh.session({ token })` / `mesh.session(token=…)`: the {@link MAX_TOKEN_AGENTS} most
   * recently raised agents.
   */
  token(): string {
    const items = [...this.versions.values()].slice(-MAX_TOKEN_AGENTS);
    // Safe integers stay numbers (encoded in the smallest msgpack int, as Python does);
    // larger ones are bigints (uint64, as Python encodes them too).
    const body = encode(items.map(([kind, id, v]) => [kind, id, v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v]));
    return TOKEN_PREFIX + Buffer.from(body).toString("base64url");
  }

  /**
   * The session a {@link Session.token} (of either SDK) describes.
   * @throws InvalidSessionToken: not a string of this format, too large, or naming an
   *   invalid kind, id or version. Nothing of a refused token is kept.
   */
  static fromToken(token: unknown, options: SessionOptions = {}): Session {
    if (typeof token !== "string") {
      throw new InvalidSessionToken(`a session token is a string, not ${token === null ? "null" : typeof token}`);
    }
    if (token.length > MAX_TOKEN_CHARS) {
      throw new InvalidSessionToken(`session token too long (${token.length} > ${MAX_TOKEN_CHARS} characters)`);
    }
    if (!token.startsWith(TOKEN_PREFIX))
      throw new InvalidSessionToken("not a session token (it must start with 's1.')");
    const text = token.slice(TOKEN_PREFIX.length);
    if (!BASE64URL_RE.test(text) || text.length % 4 === 1) {
      throw new InvalidSessionToken("session token is not readable: not base64url");
    }
    const raw = Buffer.from(text, "base64url");
    if (raw.toString("base64url") !== text) {
      throw new InvalidSessionToken("session token is not readable: not canonical base64url");
    }
    let items: [string, string, bigint][];
    try {
      items = readEntries(raw);
    } catch (err) {
      if (err instanceof InvalidSessionToken) throw err;
      throw new InvalidSessionToken(`session token is not readable: ${(err as Error).message}`);
    }
    const session = new Session(options);
    for (const [kind, id, version] of items) {
      try {
        validateKind(kind);
        encodeId(id);
      } catch (err) {
        throw new InvalidSessionToken(`session token names an invalid agent: ${(err as Error).message}`);
      }
      if (version <= 0n || version > MAX_VERSION) {
        throw new InvalidSessionToken(`session token holds an invalid version ${version}`);
      }
      session.observe(kind, id, version);
    }
    return session;
  }

  toString(): string {
    return `Session(${this.versions.size} agents)`;
  }
}

/** A strict reader of the token's msgpack: an array of `[str, str, int]`, nothing else. */
function readEntries(data: Uint8Array): [string, string, bigint][] {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  let pos = 0;
  const need = (n: number): void => {
    if (pos + n > data.byteLength) throw new Error("truncated msgpack");
  };
  const byte = (): number => {
    need(1);
    return data[pos++]!;
  };
  const uint = (n: 1 | 2 | 4 | 8): bigint => {
    need(n);
    const v =
      n === 1
        ? BigInt(view.getUint8(pos))
        : n === 2
          ? BigInt(view.getUint16(pos))
          : n === 4
            ? BigInt(view.getUint32(pos))
            : view.getBigUint64(pos);
    pos += n;
    return v;
  };
  const sint = (n: 1 | 2 | 4 | 8): bigint => {
    need(n);
    const v =
      n === 1
        ? BigInt(view.getInt8(pos))
        : n === 2
          ? BigInt(view.getInt16(pos))
          : n === 4
            ? BigInt(view.getInt32(pos))
            : view.getBigInt64(pos);
    pos += n;
    return v;
  };
  const arrayLength = (): number => {
    const b = byte();
    if (b >= 0x90 && b <= 0x9f) return b - 0x90;
    if (b === 0xdc) return Number(uint(2));
    if (b === 0xdd) return Number(uint(4));
    throw new InvalidSessionToken(`a session token holds a list of at most ${MAX_TOKEN_AGENTS} agents`);
  };
  const str = (what: string): string => {
    const b = byte();
    let n: number;
    if (b >= 0xa0 && b <= 0xbf) n = b - 0xa0;
    else if (b === 0xd9) n = Number(uint(1));
    else if (b === 0xda) n = Number(uint(2));
    else if (b === 0xdb) n = Number(uint(4));
    else throw new InvalidSessionToken(`session token names an invalid agent: the ${what} is not a string`);
    need(n);
    const s = utf8.decode(data.subarray(pos, pos + n));
    pos += n;
    return s;
  };
  const int = (): bigint => {
    const b = byte();
    if (b <= 0x7f) return BigInt(b);
    if (b >= 0xe0) return BigInt(b - 0x100);
    if (b >= 0xcc && b <= 0xcf) return uint(([1, 2, 4, 8] as const)[b - 0xcc]!);
    if (b >= 0xd0 && b <= 0xd3) return sint(([1, 2, 4, 8] as const)[b - 0xd0]!);
    throw new InvalidSessionToken("session token holds an invalid version (not an integer)");
  };
  const count = arrayLength();
  if (count > MAX_TOKEN_AGENTS) {
    throw new InvalidSessionToken(`a session token holds a list of at most ${MAX_TOKEN_AGENTS} agents`);
  }
  const out: [string, string, bigint][] = [];
  for (let i = 0; i < count; i++) {
    let entry: number;
    try {
      entry = arrayLength();
    } catch {
      throw new InvalidSessionToken("a session token entry is [kind, id, version]");
    }
    if (entry !== 3) throw new InvalidSessionToken("a session token entry is [kind, id, version]");
    out.push([str("kind"), str("id"), int()]);
  }
  if (pos !== data.byteLength) throw new Error("trailing bytes after the msgpack value");
  return out;
}
