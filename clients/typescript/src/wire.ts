/**
 * Protocol v1 names and rules (docs/protocol.md §2-§4): kinds, ids and their subject
 * tokens, subjects, header names, message ids, reply-subject checks, header blocks.
 * Pure functions: no I/O.
 */
import { ConfigurationError, InvalidAddress, InvalidAgentId } from "./errors.js";

/** Header names (case-sensitive on the wire, §1). */
export const H = {
  PROTO: "Na-Proto",
  ACTION: "Na-Action",
  MSG_ID: "Na-Msg-Id",
  CORR_ID: "Na-Corr-Id",
  DEADLINE: "Na-Deadline",
  CALLER: "Na-Caller",
  REPLY_MODE: "Na-Reply-Mode",
  STATUS: "Na-Status",
  PRIORITY: "Na-Priority",
  ENCODING: "Na-Encoding",
  ACCEPT_ENCODING: "Na-Accept-Encoding",
  DELIVERY: "Na-Delivery",
  STREAM_SEQ: "Na-Stream-Seq",
  BATCH: "Na-Batch",
  REPLY_TO: "Na-Reply-To",
  OWNER_MAC: "Na-Owner-Mac",
  TRACEPARENT: "traceparent",
  TRACESTATE: "tracestate",
  NATS_MSG_ID: "Nats-Msg-Id",
  STATE_VERSION: "Na-State-Version",
  MIN_VERSION: "Na-Min-Version",
  REPLICA: "Na-Replica",
  REPLICA_LAG: "Na-Replica-Lag",
} as const;

export const PROTO_VERSION = "1";
export const STATUS_OK = "ok";
export const REPLY_MODES = ["result", "accept", "replay"] as const;
export const PRIORITIES = ["high", "normal", "low"] as const;
export type Priority = (typeof PRIORITIES)[number];
export const DELIVERIES = ["at_most_once", "at_least_once", "exactly_once"] as const;
export type Delivery = (typeof DELIVERIES)[number];
export const DEFLATE = "deflate";

export const DEFAULT_PREFIX = "na";
export const DEFAULT_REPLY_PREFIXES: readonly string[] = ["_INBOX."];
/** The server's `max_payload` when nothing else is known (1 MiB). */
export const DEFAULT_MAX_PAYLOAD = 1024 * 1024;

export const KIND_RE = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;
export const ACTION_RE = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;
export const MSG_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
export const DEADLINE_RE = /^[0-9]{1,15}$/;
const PLAIN_ID_RE = /^[A-Za-z0-9_-]+$/;
const ENCODED_ID_RE = /^=[A-Za-z0-9_-]+$/;
const PREFIX_RE = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;
export const MAX_ID_CHARS = 200;
export const MAX_TOKEN_BYTES = 300;
export const MAX_CALLER_CHARS = 256;
export const MAX_REPLY_SUBJECT = 256;

/** The kind, if valid (§2). @throws InvalidAddress */
export function validateKind(kind: unknown): string {
  if (typeof kind !== "string" || !KIND_RE.test(kind)) {
    throw new InvalidAddress(
      `invalid agent kind ${JSON.stringify(kind)}: use 1-64 characters [A-Za-z0-9_-], starting with a letter`,
    );
  }
  return kind;
}

/** The prefix, if valid (§1). @throws ConfigurationError */
export function validatePrefix(prefix: unknown): string {
  if (typeof prefix !== "string" || prefix.length > 64 || !PREFIX_RE.test(prefix)) {
    throw new ConfigurationError(
      `invalid subject prefix ${JSON.stringify(prefix)}: use dot-separated tokens of [A-Za-z0-9_-]`,
    );
  }
  return prefix;
}

/** The action, if it can be a `Na-Action` (§4.1). @throws ConfigurationError */
export function validateAction(action: unknown): string {
  if (typeof action !== "string" || !ACTION_RE.test(action)) {
    throw new ConfigurationError(
      `invalid action ${JSON.stringify(action)}: use 1-64 characters [A-Za-z0-9_], starting with a letter`,
    );
  }
  return action;
}

/** Code points of a string (ids are limited in code points, not UTF-16 units). */
function codePoints(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

/**
 * The subject token of an agent id (§2): the id itself when it is `[A-Za-z0-9_-]+`, else
 * `=` + unpadded base64url of its UTF-8 bytes.
 * @throws InvalidAgentId
 */
export function encodeId(agentId: unknown): string {
  if (typeof agentId !== "string") {
    throw new InvalidAgentId(`agent id must be a string, not ${typeof agentId}`);
  }
  if (agentId.length === 0) throw new InvalidAgentId("agent id must not be empty");
  if (codePoints(agentId) > MAX_ID_CHARS) {
    throw new InvalidAgentId(`agent id longer than ${MAX_ID_CHARS} characters`);
  }
  if (PLAIN_ID_RE.test(agentId)) return agentId;
  if (!agentId.isWellFormed()) {
    throw new InvalidAgentId(`agent id ${JSON.stringify(agentId)} is not valid Unicode text (lone surrogate)`);
  }
  const token = "=" + Buffer.from(agentId, "utf8").toString("base64url");
  if (token.length > MAX_TOKEN_BYTES) {
    throw new InvalidAgentId(`agent id too long once encoded (${token.length} > ${MAX_TOKEN_BYTES} bytes)`);
  }
  return token;
}

/** The id a subject token carries (inverse of {@link encodeId}). @throws InvalidAgentId */
export function decodeId(token: string): string {
  if (token.length > MAX_TOKEN_BYTES) throw new InvalidAgentId("agent id token too long");
  if (PLAIN_ID_RE.test(token)) return token;
  if (!ENCODED_ID_RE.test(token)) throw new InvalidAgentId(`invalid agent id token ${JSON.stringify(token)}`);
  const raw = Buffer.from(token.slice(1), "base64url");
  let agentId: string;
  try {
    agentId = new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    throw new InvalidAgentId(`invalid encoded agent id ${JSON.stringify(token)}`);
  }
  let again: string;
  try {
    again = encodeId(agentId);
  } catch {
    throw new InvalidAgentId(`invalid encoded agent id ${JSON.stringify(token)}`);
  }
  if (again !== token) throw new InvalidAgentId(`non-canonical encoded agent id ${JSON.stringify(token)}`);
  return agentId;
}

/** Split `Kind/id` at the first `/` (the id may hold more). @throws InvalidAddress */
export function parseAddress(address: string): [string, string] {
  const at = address.indexOf("/");
  if (at < 0) throw new InvalidAddress(`agent address must look like 'Kind/id', got ${JSON.stringify(address)}`);
  const kind = validateKind(address.slice(0, at));
  const id = address.slice(at + 1);
  encodeId(id);
  return [kind, id];
}

/** `<prefix>.agent.<kind>.<token>` (§3). */
export function agentSubject(prefix: string, kind: string, agentId: string): string {
  return `${prefix}.agent.${validateKind(kind)}.${encodeId(agentId)}`;
}

/**
 * `<prefix>.read.<kind>.<token>`: where read-only actions of a kind with read replicas go;
 * its primary and replicas subscribe it (§19.1).
 */
export function readSubject(prefix: string, kind: string, agentId: string): string {
  return `${prefix}.read.${validateKind(kind)}.${encodeId(agentId)}`;
}

/** `<prefix>.activate.<kind>` (§3). */
export function activateSubject(prefix: string, kind: string): string {
  return `${prefix}.activate.${validateKind(kind)}`;
}

/** `<prefix>.inbox.<kind>.<token>`: where durable messages are published (§15.1). */
export function durableSubject(prefix: string, kind: string, agentId: string): string {
  return `${prefix}.inbox.${validateKind(kind)}.${encodeId(agentId)}`;
}

/** `<prefix>_<purpose>` with the prefix's dots made `_` (stream and bucket names). */
export function streamName(prefix: string, purpose: string): string {
  return `${prefix.replaceAll(".", "_")}_${purpose}`;
}

const PRINTABLE_RE = /^[!-~]+$/;

/**
 * Whether a host may publish a reply to `subject` (§3): it starts with one of the inbox
 * prefixes, is printable ASCII of at most 256 characters, with no empty token, `*` or `>`.
 */
export function isReplySubject(subject: string, prefixes: readonly string[] = DEFAULT_REPLY_PREFIXES): boolean {
  return (
    subject.length <= MAX_REPLY_SUBJECT &&
    prefixes.some((p) => subject.startsWith(p)) &&
    PRINTABLE_RE.test(subject) &&
    !subject.includes("..") &&
    !subject.endsWith(".") &&
    !subject.includes("*") &&
    !subject.includes(">")
  );
}

/**
 * A fresh message id (§4.1): 128 random bits from the platform's CSPRNG as 22 base64url
 * characters. Nothing about one id tells anything about the next.
 */
export function newMessageId(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Buffer.from(bytes).toString("base64url");
}

/** Header map as it travels: name → value (one value per name). */
export type HeaderMap = Record<string, string>;

/** Bytes the header block of `headers` takes on the wire (§9). */
export function headersSize(headers: HeaderMap | null | undefined): number {
  if (!headers) return 0;
  const entries = Object.entries(headers);
  if (entries.length === 0) return 0;
  let size = 12; // "NATS/1.0\r\n" + final "\r\n"
  for (const [k, v] of entries) size += Buffer.byteLength(k) + Buffer.byteLength(v) + 4;
  return size;
}

/** Set by {@link parseHeaderBlock} on a block it cannot read; answered `bad_request`. */
export const MALFORMED = "Na-Malformed-Headers";

/**
 * Read a NATS header block (`NATS/1.0[ <status>[ <description>]]\r\n` then `Name: value`
 * lines) as the protocol says a host reads it (§3): never throws; bytes that are not UTF-8
 * read as U+FFFD; lines without a colon, or whose name has whitespace or non-ASCII
 * characters, are skipped; a block that does not start with `NATS/1.0` gives
 * `{[MALFORMED]: reason}`. The status line's code goes to `Status` (and `Description`).
 * A name given twice keeps its last value.
 */
export function parseHeaderBlock(raw: Uint8Array): HeaderMap {
  const text = new TextDecoder("utf-8").decode(raw);
  if (!text.startsWith("NATS/1.0")) return { [MALFORMED]: "the header block does not start with NATS/1.0" };
  const rest = text.slice(8);
  const eol = rest.indexOf("\r\n");
  const first = eol < 0 ? rest : rest.slice(0, eol);
  const out: HeaderMap = Object.create(null) as HeaderMap;
  if (first) {
    if (first[0] !== " ") return { [MALFORMED]: "the header block's first line is not NATS/1.0" };
    const status = first.trim();
    const sp = status.indexOf(" ");
    const code = sp < 0 ? status : status.slice(0, sp);
    if (/^[0-9]{3}$/.test(code)) {
      out["Status"] = code;
      const description = sp < 0 ? "" : status.slice(sp + 1).trim();
      if (description) out["Description"] = description;
    }
  }
  if (eol >= 0) {
    for (const line of rest.slice(eol + 2).split("\r\n")) {
      const colon = line.indexOf(":");
      if (colon < 0) continue;
      const name = line.slice(0, colon).trim();
      if (!name || !/^[\x00-\x7f]+$/.test(name) || /[ \t]/.test(name)) continue;
      out[name] = line.slice(colon + 1).trim();
    }
  }
  return out;
}
