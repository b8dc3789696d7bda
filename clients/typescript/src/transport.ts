/**
 * The NATS connection as the client uses it: one wildcard reply subscription that routes
 * replies to waiting requests by token (a request multiplexer), resends of unanswered
 * requests to the same reply subject (protocol §7.4), size checks before every publish
 * (§9), and header blocks read as the protocol says (§3). Only this module and
 * `durable.ts` touch `@nats-io/*` objects.
 */
import { createInbox, headers as natsHeaders } from "@nats-io/transport-node";
import type { Msg, MsgHdrs, NatsConnection, Subscription } from "@nats-io/transport-node";
import { CallTimeout, MeshClosed, PayloadTooLarge, TransportError, Unauthorized } from "./errors.js";
import { DEFAULT_MAX_PAYLOAD, MALFORMED, parseHeaderBlock, headersSize } from "./wire.js";
import type { HeaderMap } from "./wire.js";

/** A message as the client sees it: subject, reply subject, headers, body. */
export interface Inbound {
  subject: string;
  reply: string;
  /** `null` when the message has no header block. */
  headers: HeaderMap | null;
  data: Uint8Array;
}

/** Nobody subscribes to the subject a request went to (the server's status 503). */
export class NoResponders extends Error {}

/** Read a NATS message without ever throwing (hostile bytes included). */
export function inbound(msg: Msg): Inbound {
  return { subject: msg.subject, reply: msg.reply ?? "", headers: readHeaders(msg), data: msg.data };
}

/**
 * The header block of a message as the protocol reads it (`wire.parseHeaderBlock`). nats.js
 * parses it lazily and throws on names it finds invalid; the raw bytes are read instead
 * when the message exposes them, else its parsed headers (an unreadable block is
 * {@link MALFORMED}).
 */
function readHeaders(msg: Msg): HeaderMap | null {
  const impl = msg as unknown as { _msg?: { hdr?: number }; _rdata?: Uint8Array };
  const hdr = impl._msg?.hdr;
  if (typeof hdr === "number" && impl._rdata instanceof Uint8Array) {
    if (hdr < 0) return null;
    return parseHeaderBlock(impl._rdata.subarray(0, hdr));
  }
  let h: MsgHdrs | undefined;
  try {
    h = msg.headers;
  } catch (err) {
    return { [MALFORMED]: String((err as Error).message) };
  }
  if (h === undefined) return null;
  const out: HeaderMap = Object.create(null) as HeaderMap;
  if (h.code) out["Status"] = String(h.code);
  for (const [k, v] of h) out[k] = v[v.length - 1] ?? "";
  return out;
}

/** nats.js headers for a header map (names kept exactly as given). */
export function toNatsHeaders(map: HeaderMap): MsgHdrs {
  const h = natsHeaders();
  for (const [k, v] of Object.entries(map)) h.set(k, v);
  return h;
}

interface Pending {
  /** Where the request went (`""`: a reply awaited for a message sent elsewhere). */
  subject: string;
  resolve: (msg: Inbound) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
  resend: NodeJS.Timeout | undefined;
}

/** Options of one request. */
export interface RequestOptions {
  /** Milliseconds to wait for the reply (`undefined`: no limit). */
  timeoutMs?: number | undefined;
  /** Publish the identical request again every this many ms while no reply came. */
  resendAfterMs?: number | undefined;
  /** Stop waiting when aborted (rejects with the signal's reason). */
  signal?: AbortSignal | undefined;
}

export class Transport {
  readonly nc: NatsConnection;
  private readonly muxPrefix: string;
  private readonly pending = new Map<string, Pending>();
  private counter = 0;
  private muxSub: Subscription | null = null;
  private closed = false;
  /** Requests published again for want of a reply (§7.4). */
  resends = 0;

  constructor(nc: NatsConnection, inboxPrefix: string) {
    this.nc = nc;
    this.muxPrefix = createInbox(inboxPrefix) + ".";
    void nc.closed().then(() => this.failAll(new MeshClosed("the NATS connection is closed")));
    void this.watchPermissions();
  }

  /**
   * A publish the server refuses (permissions violation) ends the requests sent to that
   * subject at once with `Unauthorized`, instead of leaving them to time out; a refused
   * subscription of our reply subject ends every request.
   */
  private async watchPermissions(): Promise<void> {
    try {
      for await (const status of this.nc.status()) {
        if (status.type !== "error") continue;
        const err = status.error as Error & { operation?: string; subject?: string };
        if (err?.name !== "PermissionViolationError") continue;
        const refused = new Unauthorized(`the NATS server refused: ${err.message}`, { remote: false });
        const subject = (err.subject ?? "").toLowerCase();
        for (const [token, p] of [...this.pending]) {
          const hit =
            err.operation === "publish"
              ? p.subject.toLowerCase() === subject
              : subject.startsWith(this.muxPrefix.toLowerCase());
          if (hit) {
            this.settle(token, p);
            p.reject(refused);
          }
        }
      }
    } catch {
      // the connection closed
    }
  }

  /** The server's `max_payload` (headers and body together must fit). */
  get maxPayload(): number {
    return this.nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
  }

  /** @throws PayloadTooLarge when headers plus body do not fit the server's `max_payload`. */
  checkSize(subject: string, headers: HeaderMap | null, data: Uint8Array): void {
    const total = headersSize(headers) + data.byteLength;
    if (total > this.maxPayload) {
      throw new PayloadTooLarge(
        `message to ${subject} is ${total} bytes (headers and body), over the server's max_payload ${this.maxPayload}`,
      );
    }
  }

  /** Publish (with a reply subject if given). @throws PayloadTooLarge, MeshClosed */
  publish(subject: string, data: Uint8Array, headers: HeaderMap | null, reply?: string): void {
    if (this.closed || this.nc.isClosed()) throw new MeshClosed("the NATS connection is closed");
    this.checkSize(subject, headers, data);
    try {
      this.nc.publish(subject, data, {
        ...(headers ? { headers: toNatsHeaders(headers) } : {}),
        ...(reply ? { reply } : {}),
      });
    } catch (err) {
      throw new TransportError(`publishing to ${subject} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  private ensureMux(): void {
    if (this.muxSub !== null) return;
    this.muxSub = this.nc.subscribe(this.muxPrefix + "*", {
      callback: (err, msg) => {
        if (err) return;
        try {
          const token = msg.subject.slice(this.muxPrefix.length);
          const p = this.pending.get(token);
          if (p === undefined) return;
          this.settle(token, p);
          p.resolve(inbound(msg));
        } catch {
          // a reply we cannot read is dropped; the request times out
        }
      },
    });
  }

  private settle(token: string, p: Pending): void {
    this.pending.delete(token);
    if (p.timer) clearTimeout(p.timer);
    if (p.resend) clearInterval(p.resend);
  }

  /**
   * A fresh reply subject and a function waiting for the one reply to it (used when the
   * reply comes later, to a subject named in a header: durable messages).
   */
  expectReply(timeoutMs: number | undefined): { subject: string; wait: Promise<Inbound>; cancel: () => void } {
    if (this.closed) throw new MeshClosed("the NATS connection is closed");
    this.ensureMux();
    const token = String(++this.counter);
    let cancel = (): void => {};
    const wait = new Promise<Inbound>((resolve, reject) => {
      const p: Pending = { subject: "", resolve, reject, timer: undefined, resend: undefined };
      if (timeoutMs !== undefined) {
        p.timer = setTimeout(
          () => {
            this.settle(token, p);
            reject(new CallTimeout(`no reply within ${timeoutMs} ms`, { remote: false }));
          },
          Math.max(0, timeoutMs),
        );
      }
      this.pending.set(token, p);
      cancel = () => {
        if (this.pending.get(token) === p) {
          this.settle(token, p);
          reject(new CallTimeout("no longer waiting", { remote: false }));
        }
      };
    });
    wait.catch(() => {}); // a cancelled wait nobody awaits must not be an unhandled rejection
    return { subject: this.muxPrefix + token, wait, cancel };
  }

  /**
   * Publish a request and wait for its reply; resend it unchanged (same reply subject)
   * every `resendAfterMs` while none came.
   * @throws NoResponders, CallTimeout (local), PayloadTooLarge, MeshClosed
   */
  async request(
    subject: string,
    data: Uint8Array,
    headers: HeaderMap | null,
    opts: RequestOptions = {},
  ): Promise<Inbound> {
    if (this.closed) throw new MeshClosed("the NATS connection is closed");
    this.checkSize(subject, headers, data);
    this.ensureMux();
    const token = String(++this.counter);
    const reply = this.muxPrefix + token;
    const natsHdrs = headers ? toNatsHeaders(headers) : undefined;
    const send = (): void => {
      this.nc.publish(subject, data, { reply, ...(natsHdrs ? { headers: natsHdrs } : {}) });
    };
    const msg = await new Promise<Inbound>((resolve, reject) => {
      const p: Pending = { subject, resolve, reject, timer: undefined, resend: undefined };
      const { timeoutMs, resendAfterMs } = opts;
      if (timeoutMs !== undefined) {
        p.timer = setTimeout(
          () => {
            this.settle(token, p);
            reject(new CallTimeout(`no reply from ${subject} within ${timeoutMs} ms`, { remote: false }));
          },
          Math.max(0, timeoutMs),
        );
      }
      if (resendAfterMs !== undefined && resendAfterMs > 0 && (timeoutMs === undefined || resendAfterMs < timeoutMs)) {
        p.resend = setInterval(() => {
          if (this.pending.get(token) !== p) return;
          try {
            send();
            this.resends += 1;
          } catch {
            // the connection is closing: the request fails with it
          }
        }, resendAfterMs);
      }
      this.pending.set(token, p);
      const { signal } = opts;
      if (signal !== undefined) {
        if (signal.aborted) {
          this.settle(token, p);
          reject(signal.reason as Error);
          return;
        }
        signal.addEventListener(
          "abort",
          () => {
            if (this.pending.get(token) !== p) return;
            this.settle(token, p);
            reject(signal.reason as Error);
          },
          { once: true },
        );
      }
      try {
        send();
      } catch (err) {
        this.settle(token, p);
        reject(
          this.nc.isClosed()
            ? new MeshClosed("the NATS connection is closed")
            : new TransportError(`publishing to ${subject} failed: ${(err as Error).message}`, { cause: err }),
        );
      }
    });
    if (msg.headers?.["Status"] === "503" && msg.data.byteLength === 0) {
      throw new NoResponders(`no responders on ${subject}`);
    }
    return msg;
  }

  /** Subscribe with a callback that never throws into the client (`queue`: a queue group). */
  subscribe(subject: string, onMessage: (msg: Msg) => void, queue?: string): Subscription {
    return this.nc.subscribe(subject, {
      ...(queue ? { queue } : {}),
      callback: (err, msg) => {
        if (err) return;
        try {
          onMessage(msg);
        } catch {
          // one bad message never affects any other
        }
      },
    });
  }

  async flush(): Promise<void> {
    await this.nc.flush();
  }

  private failAll(err: Error): void {
    this.closed = true;
    for (const [token, p] of [...this.pending]) {
      this.settle(token, p);
      p.reject(err);
    }
  }

  /** Stop the reply subscription and fail what still waits. */
  close(): void {
    this.failAll(new MeshClosed("the mesh is closed"));
    try {
      this.muxSub?.unsubscribe();
    } catch {
      // closed already
    }
  }
}
