/** Replies (protocol §4.2, §6): building them (hosts) and reading them (callers). */
import { decode, encode, inflate, inflateLimit } from "./codec.js";
import { AgentError, ProtocolError, errorForCode } from "./errors.js";
import type { Inbound } from "./transport.js";
import { DEFLATE, H, PROTO_VERSION, STATUS_OK } from "./wire.js";
import type { HeaderMap } from "./wire.js";

export interface Reply {
  headers: HeaderMap;
  body: Uint8Array;
}

export function okReply(result: unknown): Reply {
  return { headers: { [H.PROTO]: PROTO_VERSION, [H.STATUS]: STATUS_OK }, body: encode(result) };
}

/** Fields of an error body (§6.2) besides `code` and `message`. */
export interface ErrorBodyFields {
  agent?: string | null;
  action?: string | null;
  traceback?: string | null;
  details?: Record<string, unknown> | null;
}

export function errorReply(code: string, message: string, fields: ErrorBodyFields = {}): Reply {
  const body: Record<string, unknown> = {
    code,
    message,
    agent: fields.agent ?? null,
    action: fields.action ?? null,
  };
  if (fields.traceback) body["traceback"] = fields.traceback;
  if (fields.details && Object.keys(fields.details).length > 0) body["details"] = fields.details;
  let data: Uint8Array;
  try {
    data = encode(body);
  } catch {
    delete body["details"];
    data = encode(body);
  }
  return { headers: { [H.PROTO]: PROTO_VERSION, [H.STATUS]: code }, body: data };
}

function str(v: unknown): string | null {
  return typeof v === "string" ? v : null;
}

/**
 * The result of a reply, or the typed error it carries (§6). `maxPayload`: the server's,
 * which bounds how far a compressed reply may expand.
 * @throws AgentError (the subclass for the code), ProtocolError (not a v1 reply)
 */
export function parseReply(msg: Inbound, agent: string | null, action: string | null, maxPayload: number): unknown {
  const status = msg.headers?.[H.STATUS];
  if (status === undefined) throw new ProtocolError(`reply without ${H.STATUS} header from ${agent ?? "peer"}`);
  let data = msg.data;
  const encoding = msg.headers?.[H.ENCODING];
  if (encoding !== undefined) {
    if (encoding !== DEFLATE)
      throw new ProtocolError(`reply from ${agent ?? "peer"} uses unknown ${H.ENCODING} ${encoding}`);
    data = inflate(data, inflateLimit(maxPayload));
  }
  if (status === STATUS_OK) {
    try {
      return decode(data);
    } catch (err) {
      throw new ProtocolError(`undecodable reply body from ${agent ?? "peer"}: ${(err as Error).message}`);
    }
  }
  let body: unknown = null;
  try {
    body = decode(data);
  } catch {
    body = null;
  }
  const b = body !== null && typeof body === "object" && !Array.isArray(body) ? (body as Record<string, unknown>) : {};
  const details = b["details"];
  throw errorForCode(status, str(b["message"]) ?? status, {
    agent: str(b["agent"]) ?? agent,
    action: str(b["action"]) ?? action,
    remoteTraceback: str(b["traceback"]),
    details:
      details !== null && typeof details === "object" && !Array.isArray(details)
        ? (details as Record<string, unknown>)
        : null,
    remote: true,
  });
}

export function isAgentError(err: unknown): err is AgentError {
  return err instanceof AgentError;
}
