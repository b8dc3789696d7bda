/** Reading a request's headers as a host must (protocol §4.1, validation order). */
import { ProtocolError } from "./errors.js";
import {
  ACTION_RE,
  DEADLINE_RE,
  H,
  MALFORMED,
  MAX_CALLER_CHARS,
  MSG_ID_RE,
  PROTO_VERSION,
  newMessageId,
} from "./wire.js";
import type { HeaderMap } from "./wire.js";

/** What the headers of a request say. */
export interface RequestMeta {
  action: string;
  messageId: string;
  correlationId: string;
  deadline: number | null;
  caller: string | null;
  replyMode: "result" | "accept";
  traceparent: string | null;
  tracestate: string | null;
}

const cut = (v: string): string => JSON.stringify(v.slice(0, 80));

/**
 * Check the headers of a request in the order of §4.1.
 * @throws ProtocolError (answered `bad_request`)
 */
export function parseRequest(headers: HeaderMap | null): RequestMeta {
  const h = headers ?? {};
  const get = (k: string): string | undefined => (Object.prototype.hasOwnProperty.call(h, k) ? h[k] : undefined);
  const malformed = get(MALFORMED);
  if (malformed !== undefined) throw new ProtocolError(`malformed NATS header block: ${malformed.slice(0, 80)}`);
  const proto = get(H.PROTO);
  if (proto !== undefined && proto !== PROTO_VERSION) {
    throw new ProtocolError(`unsupported protocol version ${cut(proto)} (this host speaks ${PROTO_VERSION})`);
  }
  const action = get(H.ACTION);
  if (action === undefined) throw new ProtocolError(`missing ${H.ACTION} header`);
  if (!ACTION_RE.test(action)) throw new ProtocolError(`malformed ${H.ACTION} header ${cut(action)}`);
  let messageId = get(H.MSG_ID);
  if (messageId === undefined) messageId = newMessageId();
  else if (!MSG_ID_RE.test(messageId)) throw new ProtocolError(`malformed ${H.MSG_ID} header ${cut(messageId)}`);
  const correlationId = get(H.CORR_ID) ?? messageId;
  if (!MSG_ID_RE.test(correlationId)) throw new ProtocolError(`malformed ${H.CORR_ID} header ${cut(correlationId)}`);
  const rawDeadline = get(H.DEADLINE);
  let deadline: number | null = null;
  if (rawDeadline !== undefined) {
    if (!DEADLINE_RE.test(rawDeadline)) throw new ProtocolError(`malformed ${H.DEADLINE} header ${cut(rawDeadline)}`);
    deadline = Number(rawDeadline);
  }
  const replyMode = get(H.REPLY_MODE) ?? "result";
  if (replyMode !== "result" && replyMode !== "accept") {
    throw new ProtocolError(`malformed ${H.REPLY_MODE} header ${cut(replyMode)}`);
  }
  const caller = get(H.CALLER) ?? null;
  if (caller !== null && [...caller].length > MAX_CALLER_CHARS) {
    throw new ProtocolError(`${H.CALLER} header longer than ${MAX_CALLER_CHARS} characters`);
  }
  return {
    action,
    messageId,
    correlationId,
    deadline,
    caller,
    replyMode,
    traceparent: get(H.TRACEPARENT) ?? null,
    tracestate: get(H.TRACESTATE) ?? null,
  };
}
