/**
 * The calling side (protocol §7): envelopes, deadlines, activation on demand, retries of
 * "no responders" and of `unavailable` + `retry`, resends of unanswered requests, resends
 * after a `partition` answer (§6.4), and reads on read subjects with a session's minimum
 * version (§19).
 */
import { deflate, encode } from "./codec.js";
import { currentContext } from "./context.js";
import { AgentError, BadRequest, CallTimeout, ConfigurationError, PartitionError, Unavailable } from "./errors.js";
import { parseReply } from "./reply.js";
import { Session, parseVersion } from "./session.js";
import { NoResponders } from "./transport.js";
import type { Inbound, Transport } from "./transport.js";
import {
  DEFLATE,
  DELIVERIES,
  H,
  MSG_ID_RE,
  PRIORITIES,
  PROTO_VERSION,
  activateSubject,
  agentSubject,
  encodeId,
  newMessageId,
  readSubject,
  validateAction,
  validateKind,
} from "./wire.js";
import type { Delivery, HeaderMap, Priority } from "./wire.js";

/** Options of one call, request or send (and of `AgentRef.withOptions`). */
export interface CallOptions {
  /**
   * Milliseconds the caller waits; `null`: no limit. Default: the mesh's `defaultTimeout`.
   * Sent as the absolute `Na-Deadline`.
   */
  timeout?: number | null;
  /** Absolute deadline (Unix ms); with `timeout` too, the earlier one counts. */
  deadline?: number;
  /** `Na-Msg-Id` of this logical message (default: 128 fresh random bits). */
  messageId?: string;
  /** `Na-Corr-Id` (default: the running handler's, else the message id). */
  correlationId?: string;
  /** Mailbox order at the host (at-most-once messages only). */
  priority?: Priority;
  /** `at_most_once` (core NATS, default), `at_least_once` or `exactly_once` (§15). */
  delivery?: Delivery;
  /** Durable messages: milliseconds the stored message stays deliverable. */
  messageTtl?: number;
  /** W3C trace context to send (default: the running handler's, passed through). */
  traceparent?: string;
  tracestate?: string;
  /**
   * The caller session (`mesh.session()`) whose versions this call raises and, for a read,
   * sends as `Na-Min-Version` (§19.2). Default: the mesh's own session.
   */
  session?: Session;
  /**
   * The action is read-only: send it on the read subject `<prefix>.read.<kind>.<token>`,
   * where the agent's read replicas answer too (§19.1), falling back to the agent subject
   * when nobody serves it. Default: whether `connect({ readActions })` lists the action for
   * the kind. Only for kinds with read replicas; ignored for durable and fire-and-forget
   * messages (they always go to the agent's subject or inbox).
   */
  readOnly?: boolean;
}

export interface CallerSettings {
  prefix: string;
  /** `Na-Caller` when not calling from a hosted agent. */
  name: string;
  defaultTimeout: number | null;
  /** Resend an unanswered request after this many ms (§7.4); `null`: never. */
  resendAfter: number | null;
  /** Compress request bodies above this many bytes and accept compressed replies; `null`: never. */
  compressAbove: number | null;
  backoffInitial: number;
  backoffMax: number;
  /** Read-only actions per kind (`connect({ readActions })`): sent on the read subject. */
  readActions: ReadonlyMap<string, ReadonlySet<string>>;
}

/** Options of {@link Caller.deliver}. */
export interface DeliverOptions {
  /** Stop waiting when aborted. */
  signal?: AbortSignal | undefined;
  /**
   * The agent subject of a read sent on its read subject: taken when nobody serves the
   * read subject (the agent is not active anywhere: activate it there, §19.1).
   */
  fallback?: string | undefined;
}

/** Seconds a paused copy asks callers to resend for (`details.retry_for`, at most 60), else 0. */
export function partitionRetryFor(err: PartitionError): number {
  const v = err.details["retry_for"];
  return typeof v === "number" && Number.isFinite(v) && v >= 0 && v <= 60 ? v : 0;
}

/** The durable path (`durable.ts`), plugged in by the mesh. */
export interface DurablePath {
  publish(
    kind: string,
    id: string,
    action: string,
    body: Uint8Array,
    headers: HeaderMap,
    deadline: number | null,
    acceptOnly: boolean,
    delivery: Delivery,
    messageTtl: number | undefined,
    onReply?: (headers: HeaderMap | null) => void,
  ): Promise<unknown>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Check call options once, where they are given. @throws ConfigurationError */
export function checkOptions(o: CallOptions): void {
  if (o.timeout !== undefined && o.timeout !== null && !(typeof o.timeout === "number" && o.timeout > 0)) {
    throw new ConfigurationError(`timeout must be a positive number of ms or null, not ${String(o.timeout)}`);
  }
  if (o.deadline !== undefined && !(Number.isInteger(o.deadline) && o.deadline >= 0)) {
    throw new ConfigurationError(`deadline must be Unix ms, not ${String(o.deadline)}`);
  }
  if (o.messageId !== undefined && !MSG_ID_RE.test(o.messageId)) {
    throw new ConfigurationError("messageId must be 1-64 characters [A-Za-z0-9_-]");
  }
  if (o.correlationId !== undefined && !MSG_ID_RE.test(o.correlationId)) {
    throw new ConfigurationError("correlationId must be 1-64 characters [A-Za-z0-9_-]");
  }
  if (o.priority !== undefined && !PRIORITIES.includes(o.priority)) {
    throw new ConfigurationError(`priority must be one of ${PRIORITIES.join(", ")}`);
  }
  if (o.delivery !== undefined && !DELIVERIES.includes(o.delivery)) {
    throw new ConfigurationError(`delivery must be one of ${DELIVERIES.join(", ")}`);
  }
  if (o.messageTtl !== undefined && !(typeof o.messageTtl === "number" && o.messageTtl > 0)) {
    throw new ConfigurationError("messageTtl must be a positive number of ms");
  }
  if (o.session !== undefined && !(o.session instanceof Session)) {
    throw new ConfigurationError("session must come from mesh.session()");
  }
  if (o.readOnly !== undefined && typeof o.readOnly !== "boolean") {
    throw new ConfigurationError("readOnly must be a boolean");
  }
  for (const k of ["traceparent", "tracestate"] as const) {
    const v = o[k];
    if (v !== undefined && (typeof v !== "string" || /[\r\n]/.test(v))) {
      throw new ConfigurationError(`${k} must be a string without CR or LF`);
    }
  }
}

export class Caller {
  /** The durable publish path, plugged in by the mesh. */
  durable: DurablePath | null = null;
  /**
   * The session of calls that name none (`CallOptions.session`): read-your-writes and
   * monotonic reads for everything this mesh calls.
   */
  readonly session = new Session();

  constructor(
    readonly transport: Transport,
    readonly settings: CallerSettings,
  ) {}

  /** Headers, body and deadline of one message (§4.1, §7.1). */
  private prepare(
    kind: string,
    id: string,
    action: string,
    params: Record<string, unknown> | null | undefined,
    opts: CallOptions,
    replyMode: "result" | "accept",
  ): { body: Uint8Array; headers: HeaderMap; deadline: number | null } {
    validateKind(kind);
    encodeId(id);
    validateAction(action);
    checkOptions(opts);
    const address = `${kind}/${id}`;
    const ctx = currentContext();
    const timeout = opts.timeout === undefined ? this.settings.defaultTimeout : opts.timeout;
    let deadline: number | null = timeout === null ? null : Date.now() + timeout;
    for (const d of [opts.deadline, ctx?.deadline]) {
      if (d !== undefined && d !== null) deadline = deadline === null ? d : Math.min(deadline, d);
    }
    if (params !== null && params !== undefined && (typeof params !== "object" || Array.isArray(params))) {
      throw new BadRequest("parameters must be an object (a msgpack map)", { agent: address, action });
    }
    let body: Uint8Array;
    try {
      body = encode(params ?? {});
    } catch (err) {
      throw new BadRequest(`cannot encode parameters: ${(err as Error).message}`, { agent: address, action });
    }
    const messageId = opts.messageId ?? newMessageId();
    const headers: HeaderMap = { [H.PROTO]: PROTO_VERSION, [H.ACTION]: action, [H.MSG_ID]: messageId };
    const corr = opts.correlationId ?? ctx?.correlationId;
    if (corr && corr !== messageId) headers[H.CORR_ID] = corr;
    if (deadline !== null) headers[H.DEADLINE] = String(Math.floor(deadline));
    headers[H.CALLER] = ctx ? `${ctx.kind}/${encodeId(ctx.id)}` : this.settings.name;
    if (replyMode === "accept") headers[H.REPLY_MODE] = "accept";
    const traceparent = opts.traceparent ?? ctx?.traceparent ?? undefined;
    if (traceparent) {
      headers[H.TRACEPARENT] = traceparent;
      const tracestate = opts.traceparent !== undefined ? opts.tracestate : (ctx?.tracestate ?? undefined);
      if (tracestate) headers[H.TRACESTATE] = tracestate;
    }
    const threshold = this.settings.compressAbove;
    if (threshold !== null) {
      headers[H.ACCEPT_ENCODING] = DEFLATE;
      if (body.byteLength > threshold) {
        const packed = deflate(body);
        if (packed !== null) {
          body = packed;
          headers[H.ENCODING] = DEFLATE;
        }
      }
    }
    if (opts.priority !== undefined && opts.priority !== "normal") headers[H.PRIORITY] = opts.priority;
    return { body, headers, deadline };
  }

  /**
   * Deliver one message and return its result (`undefined` for an acknowledged send).
   * @throws AgentError subclasses, ConfigurationError, PayloadTooLarge, MeshClosed
   */
  async invoke(
    kind: string,
    id: string,
    action: string,
    params: Record<string, unknown> | null | undefined,
    opts: CallOptions,
    acceptOnly: boolean,
  ): Promise<unknown> {
    const address = `${kind}/${id}`;
    try {
      const { body, headers, deadline } = this.prepare(
        kind,
        id,
        action,
        params,
        opts,
        acceptOnly ? "accept" : "result",
      );
      const session = opts.session ?? this.session;
      const observe = (h: HeaderMap | null): void => {
        const version = parseVersion(h?.[H.STATE_VERSION]);
        if (version !== null) session.observe(kind, id, version);
      };
      const delivery = opts.delivery ?? "at_most_once";
      if (delivery !== "at_most_once") {
        if (this.durable === null) throw new ConfigurationError("durable delivery is not available");
        return await this.durable.publish(
          kind,
          id,
          action,
          body,
          headers,
          deadline,
          acceptOnly,
          delivery,
          opts.messageTtl,
          observe,
        );
      }
      const subject = agentSubject(this.settings.prefix, kind, id);
      let msg: Inbound;
      if (opts.readOnly ?? this.settings.readActions.get(kind)?.has(action) ?? false) {
        const floor = session.version(kind, id);
        if (floor > 0n) headers[H.MIN_VERSION] = floor.toString();
        const read = readSubject(this.settings.prefix, kind, id);
        msg = await this.deliver(read, body, headers, deadline, kind, id, action, { fallback: subject });
      } else {
        msg = await this.deliver(subject, body, headers, deadline, kind, id, action);
      }
      observe(msg.headers);
      const result = parseReply(msg, address, action, this.transport.maxPayload);
      return acceptOnly ? undefined : result;
    } catch (err) {
      if (err instanceof AgentError) {
        err.agent = err.agent ?? address;
        err.action = err.action ?? action;
      }
      throw err;
    }
  }

  /**
   * Fire-and-forget (§7.3, second form): publish with no reply subject. Nothing comes back;
   * a message to an agent that is not active is lost.
   */
  async publishOnly(
    kind: string,
    id: string,
    action: string,
    params: Record<string, unknown> | null | undefined,
    opts: CallOptions,
  ): Promise<void> {
    const { body, headers } = this.prepare(kind, id, action, params, opts, "result");
    delete headers[H.ACCEPT_ENCODING]; // no reply to compress
    this.transport.publish(agentSubject(this.settings.prefix, kind, id), body, headers);
    await this.transport.flush();
  }

  /**
   * One request, activating the agent on demand and retrying "no responders" and
   * `unavailable` + `retry` answers until `deadline` (§7.2). A `partition` answer (a paused
   * copy on the minority side, §6.4) is resent with the same message id for its
   * `details.retry_for` seconds: a copy on the majority side may own the agent by then and
   * answer (with the result, if it ran this very message); only after that is the
   * `partition` reply returned. Returns the reply (any status).
   * @throws CallTimeout (also when the deadline comes within a partition's `retry_for`),
   *   Unavailable (no host of the kind), MeshClosed
   */
  async deliver(
    subject: string,
    body: Uint8Array,
    headers: HeaderMap,
    deadline: number | null,
    kind: string,
    id: string,
    action: string,
    options: DeliverOptions = {},
  ): Promise<Inbound> {
    const { signal } = options;
    let fallback = options.fallback;
    const address = `${kind}/${id}`;
    let delay = this.settings.backoffInitial;
    let lastProblem = "no reply";
    let noHost: Unavailable | null = null;
    let partitioned: number | null = null; // when a paused copy first answered "partition"
    for (;;) {
      signal?.throwIfAborted();
      const remaining = deadline === null ? undefined : deadline - Date.now();
      if (remaining !== undefined && remaining <= 0) {
        if (noHost !== null) throw noHost;
        throw new CallTimeout(`deadline passed (${lastProblem})`, { agent: address, action });
      }
      try {
        const msg = await this.transport.request(subject, body, headers, {
          timeoutMs: remaining,
          resendAfterMs: this.settings.resendAfter ?? undefined,
          signal,
        });
        const status = msg.headers?.[H.STATUS];
        if (status === "partition") {
          // A paused copy on the minority side. Another copy on the majority may own the
          // agent now and run this very message (both reachable: a one-way cut, the heal):
          // resend with the same id for a while, so a result is never reported as "did
          // not run" (§6.4).
          partitioned ??= Date.now();
          let retryFor = 0;
          try {
            parseReply(msg, address, action, this.transport.maxPayload);
          } catch (err) {
            if (err instanceof PartitionError) retryFor = partitionRetryFor(err);
          }
          if (Date.now() - partitioned >= retryFor * 1000) return msg;
          lastProblem = "partition";
        } else if (status !== "unavailable") {
          return msg;
        } else {
          try {
            parseReply(msg, address, action, this.transport.maxPayload);
          } catch (err) {
            if (!(err instanceof Unavailable) || err.details["retry"] !== true) return msg;
            lastProblem = err.message;
          }
        }
      } catch (err) {
        if (err instanceof CallTimeout) {
          throw new CallTimeout(err.message, { agent: address, action, remote: false });
        }
        if (!(err instanceof NoResponders)) throw err;
        if (fallback !== undefined) {
          // Nobody serves the read subject: the agent is not active anywhere. The agent
          // subject activates it (§19.1).
          subject = fallback;
          fallback = undefined;
          continue;
        }
        lastProblem = "agent not active";
        let activated = false;
        try {
          activated = await this.activate(kind, id, deadline);
        } catch (e) {
          if (!(e instanceof Unavailable)) throw e;
          lastProblem = e.message;
          noHost = e;
        }
        if (activated) {
          noHost = null;
          continue; // retry at once, same headers
        }
      }
      await this.backoff(delay, deadline);
      delay = Math.min(delay * 2, this.settings.backoffMax);
    }
  }

  /**
   * Ask a host of `kind` to activate the agent (§4.3). `true` once activated, `false` when
   * the deadline passed first.
   * @throws Unavailable (no host of the kind, or it is closing), AgentNotFound, HandlerError,
   *   BadRequest, ClusterAtCapacity
   */
  async activate(kind: string, id: string, deadline: number | null, spawn = false): Promise<boolean> {
    const remaining = deadline === null ? undefined : deadline - Date.now();
    if (remaining !== undefined && remaining <= 0) return false;
    const request: Record<string, unknown> = { id };
    if (deadline !== null) request["deadline"] = Math.floor(deadline);
    if (spawn) request["spawn"] = true;
    let msg: Inbound;
    try {
      msg = await this.transport.request(
        activateSubject(this.settings.prefix, kind),
        encode(request),
        { [H.PROTO]: PROTO_VERSION },
        {
          timeoutMs: remaining,
        },
      );
    } catch (err) {
      if (err instanceof NoResponders) throw new Unavailable(`no host serves kind ${kind}`, { agent: `${kind}/${id}` });
      if (err instanceof CallTimeout) return false;
      throw err;
    }
    parseReply(msg, `${kind}/${id}`, null, this.transport.maxPayload);
    return true;
  }

  /**
   * Activate `kind/id` without a message (explicit spawn, §7.2), waiting for a host of the
   * kind until the timeout.
   */
  async spawn(kind: string, id: string, timeout: number | null): Promise<void> {
    validateKind(kind);
    encodeId(id);
    const deadline = timeout === null ? null : Date.now() + timeout;
    let delay = this.settings.backoffInitial;
    for (;;) {
      try {
        if (await this.activate(kind, id, deadline, true)) return;
        throw new CallTimeout(`activation of ${kind}/${id} timed out`, { agent: `${kind}/${id}` });
      } catch (err) {
        if (!(err instanceof Unavailable) || (deadline !== null && Date.now() >= deadline)) throw err;
      }
      await this.backoff(delay, deadline);
      delay = Math.min(delay * 2, this.settings.backoffMax);
    }
  }

  private async backoff(delay: number, deadline: number | null): Promise<void> {
    let wait = delay * (0.5 + Math.random());
    if (deadline !== null) wait = Math.max(0, Math.min(wait, deadline - Date.now()));
    await sleep(wait);
  }
}
