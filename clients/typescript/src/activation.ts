/**
 * One active agent of a hosted kind: its bounded mailbox with priorities, its workers, the
 * messages it remembers (copies are never run twice, §8.6), and running one message (§8
 * item 4). The host (`host.ts`) owns activations and their subscriptions.
 */
import { createHash } from "node:crypto";
import { decode, deflate, encode, inflate, inflateLimit } from "./codec.js";
import { current } from "./context.js";
import type { MessageContext } from "./context.js";
import { Codes, ProtocolError } from "./errors.js";
import { ParamError, bindParams } from "./params.js";
import type { ParamSpec } from "./params.js";
import { errorReply, okReply } from "./reply.js";
import type { Reply } from "./reply.js";
import { parseRequest } from "./request.js";
import type { Inbound } from "./transport.js";
import { DEFLATE, H, MSG_ID_RE, PRIORITIES, PROTO_VERSION, STATUS_OK } from "./wire.js";

/** A hosted action, as the host runs it. */
export interface ActionEntry {
  params: Map<string, ParamSpec> | null;
  handler: (params: Record<string, unknown>, ctx: MessageContext) => unknown;
}

/** A hosted kind, as the host runs it. */
export interface KindEntry {
  kind: string;
  actions: Map<string, ActionEntry>;
  init: ((id: string) => unknown) | undefined;
  onStop: ((id: string, state: unknown) => unknown) | undefined;
  activateOnDemand: boolean;
  mailboxSize: number;
  maxConcurrency: number;
}

/** What an activation asks of its host. */
export interface HostServices {
  readonly exposeTracebacks: boolean;
  readonly compressAbove: number | null;
  maxPayload(): number;
  /** Publish a reply to an inbox subject (`""`: nobody asked for one). */
  send(subject: string, reply: Reply, agent: string, action: string | null): void;
  /** Remember an answered message for copies of it (the host expires these). */
  remember(act: Activation, messageId: string): void;
  readonly dedupTtl: number;
}

const IN_PROGRESS = "in_progress" as const;
/** A request's id → in progress, or the reply a copy gets until `expires`. */
type Entry = typeof IN_PROGRESS | { reply: Reply; expires: number };

const OK_NIL: Reply = { headers: { [H.PROTO]: PROTO_VERSION, [H.STATUS]: STATUS_OK }, body: new Uint8Array([0xc0]) };

/** What running one message gave: the reply, whether the requester wants it, what a copy gets. */
interface Outcome {
  reply: Reply | null;
  wanted: boolean;
  kept: Reply | null;
  action: string | null;
}

function fingerprint(action: string | undefined, body: Uint8Array): string {
  return createHash("sha256")
    .update(action ?? "")
    .update("\0")
    .update(body)
    .digest("base64url");
}

export type ActivationStatus = "active" | "stopping" | "stopped";

export class Activation {
  readonly address: string;
  status: ActivationStatus = "active";
  state: unknown = undefined;
  /** Subscription of the agent subject (set by the host). */
  sub: { drain(): Promise<void> } | null = null;
  private mailbox: Inbound[] = [];
  private highs = 0;
  private lows = 0;
  private busy = 0;
  private workers = 0;
  private idle: (() => void)[] = [];
  readonly recent = new Map<string, Entry>();
  private readonly fingerprints = new Map<string, string>();

  constructor(
    readonly entry: KindEntry,
    readonly id: string,
    private readonly host: HostServices,
  ) {
    this.address = `${entry.kind}/${id}`;
  }

  private refuse(msg: Inbound, code: string, message: string, details?: Record<string, unknown>): void {
    if (!msg.reply) return; // a send without a reply subject: nobody to tell
    const action = msg.headers?.[H.ACTION] ?? null;
    this.host.send(
      msg.reply,
      errorReply(code, message, { agent: this.address, action, details: details ?? null }),
      this.address,
      action,
    );
  }

  /**
   * A message arrived on the agent subject: refuse it at once, answer it as a copy, or
   * queue it (§8 items 2, 3, 6). Never throws, never waits.
   */
  deliver(msg: Inbound): void {
    if (this.status !== "active") {
      this.refuse(msg, Codes.UNAVAILABLE, "the agent is stopping", { retry: true });
      return;
    }
    const hdrs = msg.headers;
    if (hdrs !== null && (H.STREAM_SEQ in hdrs || H.BATCH in hdrs)) {
      if (H.BATCH in hdrs && H.REPLY_MODE in hdrs) {
        this.refuse(msg, Codes.BAD_REQUEST, `a batch takes no ${H.REPLY_MODE}`);
        return;
      }
      // Owner-only orders need a valid Na-Owner-Mac (§15.3): this host holds no owner key.
      this.refuse(
        msg,
        Codes.UNAUTHORIZED,
        `${H.STREAM_SEQ} and ${H.BATCH} are accepted from partition owners only (a valid ${H.OWNER_MAC})`,
      );
      return;
    }
    if (hdrs?.[H.REPLY_MODE] === "replay") {
      this.replay(msg);
      return;
    }
    if (this.mailbox.length + this.busy >= this.entry.mailboxSize) {
      this.refuse(msg, Codes.OVERLOADED, `mailbox of ${this.address} is full (${this.entry.mailboxSize})`);
      return;
    }
    const priority = hdrs?.[H.PRIORITY];
    if (priority !== undefined && !(PRIORITIES as readonly string[]).includes(priority)) {
      this.refuse(msg, Codes.BAD_REQUEST, `${H.PRIORITY} must be one of high, normal, low`);
      return;
    }
    let messageId: string | null = null;
    if (msg.reply && hdrs !== null) {
      const mid = hdrs[H.MSG_ID];
      messageId = mid !== undefined && MSG_ID_RE.test(mid) ? mid : null;
      if (messageId !== null) {
        const entry = this.recent.get(messageId);
        if (entry !== undefined) {
          const seen = this.fingerprints.get(messageId);
          if (seen !== undefined && seen !== fingerprint(hdrs[H.ACTION], msg.data)) {
            this.refuse(
              msg,
              Codes.BAD_REQUEST,
              `${H.MSG_ID} ${messageId} was used for another request: ids name one message`,
            );
            return;
          }
          this.duplicate(msg, entry);
          return;
        }
      }
    }
    if (msg.reply && hdrs?.[H.REPLY_MODE] === "accept") {
      // Check what can be checked before acknowledging: an accepted send gets one reply.
      let deadline: number | null;
      try {
        deadline = parseRequest(hdrs).deadline;
      } catch (err) {
        this.refuse(msg, Codes.BAD_REQUEST, (err as Error).message);
        return;
      }
      if (deadline !== null && Date.now() >= deadline) {
        this.refuse(msg, Codes.TIMEOUT, "deadline passed before the message was accepted");
        return;
      }
      this.host.send(msg.reply, OK_NIL, this.address, hdrs[H.ACTION] ?? null);
    }
    if (messageId !== null) {
      this.recent.set(messageId, IN_PROGRESS);
      this.fingerprints.set(messageId, fingerprint(hdrs?.[H.ACTION], msg.data));
    }
    if (priority === undefined || priority === "normal") {
      this.mailbox.splice(this.mailbox.length - this.lows, 0, msg);
    } else if (priority === "high") {
      this.mailbox.splice(this.highs, 0, msg);
      this.highs += 1;
    } else {
      this.mailbox.push(msg);
      this.lows += 1;
    }
    if (this.workers < this.entry.maxConcurrency) this.work().catch(() => {}); // run() never throws
  }

  /** A copy of a message seen before: never run twice (§8.6). */
  private duplicate(msg: Inbound, entry: Entry): void {
    const accept = msg.headers?.[H.REPLY_MODE] === "accept";
    if (entry === IN_PROGRESS) {
      if (accept) this.host.send(msg.reply, OK_NIL, this.address, null); // acknowledged again
      return; // the one reply goes to the shared reply subject
    }
    this.host.send(msg.reply, entry.reply, this.address, msg.headers?.[H.ACTION] ?? null);
  }

  /** `Na-Reply-Mode: replay` (§7.5): the reply of an earlier message, or "ask again later". */
  private replay(msg: Inbound): void {
    const mid = msg.headers?.[H.MSG_ID];
    if (!msg.reply || mid === undefined || !MSG_ID_RE.test(mid)) {
      this.refuse(msg, Codes.BAD_REQUEST, `a replay request needs a reply subject and a valid ${H.MSG_ID}`);
      return;
    }
    const entry = this.recent.get(mid);
    if (entry === undefined || entry === IN_PROGRESS) {
      const running = entry === IN_PROGRESS;
      this.refuse(
        msg,
        Codes.UNAVAILABLE,
        `the result of message ${mid} is ${running ? "still running" : "not known here (not run yet, or forgotten)"}`,
        { retry: true, result: running ? "running" : "unknown" },
      );
      return;
    }
    this.duplicate(msg, entry);
  }

  private async work(): Promise<void> {
    this.workers += 1;
    try {
      while (this.mailbox.length > 0) {
        const msg = this.mailbox.shift()!;
        if (this.highs > 0) this.highs -= 1;
        else if (this.mailbox.length < this.lows) this.lows -= 1;
        this.busy += 1;
        let outcome: Outcome;
        try {
          outcome = await this.run(msg);
        } catch (err) {
          // run() answers every failure itself; this is a last guard for the mailbox
          const failed = errorReply(Codes.HANDLER_ERROR, `host error: ${String(err)}`, { agent: this.address });
          outcome = { reply: failed, wanted: true, kept: null, action: null };
        } finally {
          this.busy -= 1;
        }
        if (outcome.reply !== null) {
          this.host.send(outcome.wanted ? msg.reply : "", outcome.reply, this.address, outcome.action);
        }
        const mid = msg.headers?.[H.MSG_ID];
        if (msg.reply && mid !== undefined && MSG_ID_RE.test(mid)) this.finish(mid, outcome.kept);
      }
    } finally {
      this.workers -= 1;
      if (this.workers === 0) {
        for (const resolve of this.idle.splice(0)) resolve();
      }
    }
  }

  /** Keep the reply for copies (or forget the id: a copy of a refused message may run). */
  private finish(messageId: string, kept: Reply | null): void {
    if (kept === null) {
      this.forget(messageId);
      return;
    }
    this.recent.set(messageId, { reply: kept, expires: Date.now() + this.host.dedupTtl });
    this.host.remember(this, messageId);
  }

  forget(messageId: string): void {
    this.recent.delete(messageId);
    this.fingerprints.delete(messageId);
  }

  /** Run one message (§8 item 4). Never throws. */
  private async run(msg: Inbound): Promise<Outcome> {
    const address = this.address;
    let meta;
    try {
      meta = parseRequest(msg.headers);
    } catch (err) {
      return {
        reply: errorReply(Codes.BAD_REQUEST, (err as Error).message, { agent: address }),
        wanted: true,
        kept: null,
        action: null,
      };
    }
    const accept = meta.replyMode === "accept";
    const wanted = Boolean(msg.reply) && !accept;
    const kept: Reply | null = accept ? OK_NIL : null; // a copy of an accepted send is acknowledged again
    const action = meta.action;
    const refuse = (code: string, message: string, details?: Record<string, unknown>): Outcome => ({
      reply: errorReply(code, message, { agent: address, action, details: details ?? null }),
      wanted,
      kept: null,
      action,
    });
    if (meta.deadline !== null && Date.now() >= meta.deadline) {
      return refuse(Codes.TIMEOUT, "deadline passed before the agent ran the message");
    }
    const spec = this.entry.actions.get(action);
    if (spec === undefined) {
      return refuse(Codes.UNKNOWN_ACTION, `${this.entry.kind} has no action '${action}'`, {
        actions: [...this.entry.actions.keys()].sort(),
      });
    }
    let params: Record<string, unknown>;
    try {
      let data = msg.data;
      const encoding = msg.headers?.[H.ENCODING];
      if (encoding !== undefined) {
        if (encoding !== DEFLATE) throw new ProtocolError(`unknown ${H.ENCODING} '${encoding}': use '${DEFLATE}'`);
        data = inflate(data, inflateLimit(this.host.maxPayload()));
      }
      params = bindParams(spec.params, decode(data));
    } catch (err) {
      if (err instanceof ParamError) {
        return refuse(Codes.BAD_REQUEST, `invalid parameters: ${err.message}`, {
          param: err.path,
          problem: err.problem,
        });
      }
      return refuse(Codes.BAD_REQUEST, (err as Error).message);
    }
    const act = this;
    const ctx: MessageContext = {
      agent: address,
      kind: this.entry.kind,
      id: this.id,
      action,
      messageId: meta.messageId,
      correlationId: meta.correlationId,
      deadline: meta.deadline,
      caller: meta.caller,
      traceparent: meta.traceparent,
      tracestate: meta.tracestate,
      get state(): unknown {
        return act.state;
      },
      set state(value: unknown) {
        act.state = value;
      },
    };
    let result: unknown;
    try {
      result = await current.run(ctx, () => spec.handler(params, ctx));
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      const failed = errorReply(Codes.HANDLER_ERROR, `${e.name}: ${e.message}`, {
        agent: address,
        action,
        traceback: this.host.exposeTracebacks ? (e.stack ?? null) : null,
        details: { exception: e.name },
      });
      return { reply: failed, wanted, kept: kept ?? failed, action };
    }
    if (!wanted) return { reply: null, wanted: false, kept, action };
    let reply: Reply;
    try {
      reply = okReply(result);
    } catch (err) {
      const failed = errorReply(Codes.HANDLER_ERROR, `result cannot be encoded: ${(err as Error).message}`, {
        agent: address,
        action,
      });
      return { reply: failed, wanted: true, kept: failed, action };
    }
    const threshold = this.host.compressAbove;
    if (threshold !== null && reply.body.byteLength > threshold && msg.headers?.[H.ACCEPT_ENCODING] === DEFLATE) {
      const packed = deflate(reply.body);
      if (packed !== null) reply = { headers: { ...reply.headers, [H.ENCODING]: DEFLATE }, body: packed };
    }
    return { reply, wanted: true, kept: reply, action };
  }

  /** Resolves once no worker runs. */
  waitIdle(): Promise<void> {
    if (this.workers === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  /**
   * Remove the messages still waiting and answer them `unavailable` + `retry` (an accepted
   * send, whose one reply was its acknowledgement, is dropped).
   */
  refuseWaiting(message: string): void {
    const waiting = this.mailbox.splice(0);
    this.highs = this.lows = 0;
    for (const msg of waiting) {
      if (msg.headers?.[H.REPLY_MODE] === "accept") continue;
      this.refuse(msg, Codes.UNAVAILABLE, message, { retry: true });
    }
  }
}

export { encode };
