/**
 * Hosting agent kinds as a standalone peer host (protocol §8): activation on demand,
 * mailboxes, replies only to inbox subjects, graceful stop.
 *
 * A peer host is **standalone**: it does not join a cluster's placement, directory or
 * replicated state (§14 needs the cluster's KV buckets and owner key), so it cannot take
 * durable messages from partition owners (`Na-Stream-Seq`/`Na-Batch` are answered
 * `unauthorized`), and an agent's state lives in this process's memory while the agent is
 * active. Two standalone hosts of one kind may both activate the same id (§8, last part).
 */
import { Activation } from "./activation.js";
import type { ActionEntry, HostServices, KindEntry } from "./activation.js";
import { decode } from "./codec.js";
import type { MessageContext } from "./context.js";
import { Codes, ConfigurationError, MeshClosed, PayloadTooLarge } from "./errors.js";
import { normaliseParams } from "./params.js";
import type { ParamSpec, ParamType } from "./params.js";
import { errorReply, okReply } from "./reply.js";
import type { Reply } from "./reply.js";
import { inbound } from "./transport.js";
import type { Inbound, Transport } from "./transport.js";
import { ACTION_RE, activateSubject, agentSubject, encodeId, isReplySubject, validateKind } from "./wire.js";

/** A handler: gets the checked parameters and the message's context (`ctx.state`). */
export type Handler<S = unknown> = (params: Record<string, unknown>, ctx: MessageContext & { state: S }) => unknown;

/** An action with declared parameters (checked before the handler runs, §5.3). */
export interface ActionDef<S = unknown> {
  params?: Record<string, ParamType | ParamSpec>;
  handler: Handler<S>;
}

/** How a kind is hosted. */
export interface KindOptions<S = unknown> {
  /** Action name (`[A-Za-z][A-Za-z0-9_]{0,63}`) → handler, or `{params, handler}`. */
  actions: Record<string, Handler<S> | ActionDef<S>>;
  /**
   * The start hook: makes a new agent's state (its `ctx.state`). If it throws, the
   * activation is answered `handler_error` (action `on_start`) and nothing subscribes.
   */
  init?: (id: string) => S | Promise<S>;
  /** The stop hook, with the agent's last state (for example to save it somewhere). */
  onStop?: (id: string, state: S) => void | Promise<void>;
  /** A message to an inactive agent activates it (default `true`); else only a spawn does. */
  activateOnDemand?: boolean;
  /** Messages that may wait, counting the ones running (default 1024); beyond: `overloaded`. */
  mailboxSize?: number;
  /** Messages handled at once per agent (default 1: actor semantics). */
  maxConcurrency?: number;
}

export interface HostSettings {
  prefix: string;
  /** This host's name, sent in activation replies (`{"node": …}`). */
  node: string;
  replyPrefixes: readonly string[];
  exposeTracebacks: boolean;
  /** Milliseconds a stopping agent gets to finish its mailbox. */
  stopTimeout: number;
  /** Milliseconds the reply of an answered request is kept for copies of it. */
  dedupTtl: number;
  compressAbove: number | null;
  /** Most agents active here at once (`null`: no limit); one more gets `at_capacity`. */
  maxAgents: number | null;
}

/** Answered requests kept for copies at most, per host (oldest go first). */
const MAX_REMEMBERED = 100_000;

export class Host implements HostServices {
  private readonly kinds = new Map<string, KindEntry>();
  private readonly kindSubs = new Map<string, { unsubscribe(): void }>();
  private readonly activations = new Map<string, Activation>();
  private readonly starting = new Map<string, Promise<Activation>>();
  /** Answered requests in answer order: key → [activation, message id, expires]. */
  private readonly remembered = new Map<string, [Activation, string, number]>();
  private sweeper: NodeJS.Timeout | null = null;
  private closing = false;
  /** Requests dropped unanswered because their reply subject is not an inbox (§3). */
  droppedReplies = 0;

  constructor(
    private readonly transport: Transport,
    readonly settings: HostSettings,
  ) {}

  get exposeTracebacks(): boolean {
    return this.settings.exposeTracebacks;
  }
  get compressAbove(): number | null {
    return this.settings.compressAbove;
  }
  get dedupTtl(): number {
    return this.settings.dedupTtl;
  }
  maxPayload(): number {
    return this.transport.maxPayload;
  }

  /** Publish a reply; one too large for the server becomes `payload_too_large`. */
  send(subject: string, reply: Reply, agent: string, action: string | null): void {
    if (!subject) return;
    try {
      this.transport.publish(subject, reply.body, reply.headers);
    } catch (err) {
      if (err instanceof PayloadTooLarge) {
        const too = errorReply(
          Codes.PAYLOAD_TOO_LARGE,
          `reply is too large for the server (${reply.body.byteLength} bytes)`,
          {
            agent,
            action,
          },
        );
        try {
          this.transport.publish(subject, too.body, too.headers);
        } catch {
          // closing
        }
      }
    }
  }

  remember(act: Activation, messageId: string): void {
    const key = `${act.address}\u0000${messageId}`;
    this.remembered.delete(key);
    this.remembered.set(key, [act, messageId, Date.now() + this.settings.dedupTtl]);
    while (this.remembered.size > MAX_REMEMBERED) {
      const [oldest, [a, mid]] = this.remembered.entries().next().value as [string, [Activation, string, number]];
      this.remembered.delete(oldest);
      a.forget(mid);
    }
    if (this.sweeper === null) {
      this.sweeper = setInterval(() => this.sweep(), Math.max(100, Math.min(1000, this.settings.dedupTtl)));
      this.sweeper.unref();
    }
  }

  private sweep(): void {
    const now = Date.now();
    for (const [key, [act, mid, expires]] of this.remembered) {
      if (expires > now) break; // answer order = expiry order
      this.remembered.delete(key);
      const entry = act.recent.get(mid);
      if (entry !== undefined && entry !== "in_progress" && entry.expires <= now) act.forget(mid);
    }
    if (this.remembered.size === 0 && this.sweeper !== null) {
      clearInterval(this.sweeper);
      this.sweeper = null;
    }
  }

  /**
   * Serve a kind: answer its activation requests (queue group `<prefix>.hosts.<kind>`).
   * @throws ConfigurationError: invalid kind or action names, kind hosted already, closed.
   */
  async host<S>(kind: string, options: KindOptions<S>): Promise<void> {
    validateKind(kind);
    if (this.closing) throw new MeshClosed("the mesh is closing");
    if (this.kinds.has(kind)) throw new ConfigurationError(`kind ${kind} is already hosted here`);
    const actions = new Map<string, ActionEntry>();
    for (const [name, def] of Object.entries(options.actions ?? {})) {
      if (!ACTION_RE.test(name)) {
        throw new ConfigurationError(
          `${kind}: invalid action name ${JSON.stringify(name)}: use [A-Za-z][A-Za-z0-9_]{0,63}`,
        );
      }
      if (typeof def === "function") {
        actions.set(name, { params: null, handler: def as ActionEntry["handler"] });
      } else if (def !== null && typeof def === "object" && typeof def.handler === "function") {
        let params: Map<string, ParamSpec> | null = null;
        try {
          params = def.params ? normaliseParams(`${kind}.${name}`, def.params) : null;
        } catch (err) {
          throw new ConfigurationError((err as Error).message);
        }
        actions.set(name, { params, handler: def.handler as ActionEntry["handler"] });
      } else {
        throw new ConfigurationError(`${kind}.${name}: give a handler function or {params, handler}`);
      }
    }
    const positive = (v: number | undefined, d: number, what: string): number => {
      if (v === undefined) return d;
      if (!Number.isInteger(v) || v < 1) throw new ConfigurationError(`${kind}: ${what} must be an integer >= 1`);
      return v;
    };
    const entry: KindEntry = {
      kind,
      actions,
      init: options.init as KindEntry["init"],
      onStop: options.onStop as KindEntry["onStop"],
      activateOnDemand: options.activateOnDemand ?? true,
      mailboxSize: positive(options.mailboxSize, 1024, "mailboxSize"),
      maxConcurrency: positive(options.maxConcurrency, 1, "maxConcurrency"),
    };
    this.kinds.set(kind, entry);
    const sub = this.transport.subscribe(
      activateSubject(this.settings.prefix, kind),
      (m) => {
        const msg = inbound(m);
        if (msg.reply && !isReplySubject(msg.reply, this.settings.replyPrefixes)) {
          this.droppedReplies += 1;
          return;
        }
        this.answerActivation(entry, msg).catch(() => {}); // answers every error itself
      },
      `${this.settings.prefix}.hosts.${kind}`,
    );
    this.kindSubs.set(kind, sub);
    await this.transport.flush(); // once host() returns, callers on this server find the kind
  }

  private async answerActivation(entry: KindEntry, msg: Inbound): Promise<void> {
    const kind = entry.kind;
    let id: string;
    let spawn = false;
    try {
      const body = decode(msg.data) as Record<string, unknown> | null;
      if (body === null || typeof body !== "object" || Array.isArray(body) || typeof body["id"] !== "string") {
        throw new Error("activation body must be a map with a string 'id'");
      }
      id = body["id"];
      try {
        encodeId(id);
      } catch (err) {
        throw new Error(`malformed activation request: ${(err as Error).message}`);
      }
      if ("spawn" in body) {
        if (typeof body["spawn"] !== "boolean") throw new Error("activation 'spawn' must be a bool");
        spawn = body["spawn"];
      }
    } catch (err) {
      this.send(msg.reply, errorReply(Codes.BAD_REQUEST, (err as Error).message, { agent: kind }), kind, null);
      return;
    }
    const address = `${kind}/${id}`;
    if (this.closing) {
      this.send(msg.reply, errorReply(Codes.UNAVAILABLE, "host is closing", { agent: address }), address, null);
      return;
    }
    if (!spawn && !entry.activateOnDemand && !this.isActive(kind, id)) {
      this.send(
        msg.reply,
        errorReply(Codes.NOT_FOUND, `${address} is not active and ${kind} is not activated on demand`, {
          agent: address,
        }),
        address,
        null,
      );
      return;
    }
    try {
      await this.activate(entry, id);
    } catch (err) {
      let reply: Reply;
      if (err instanceof MeshClosed) reply = errorReply(Codes.UNAVAILABLE, err.message, { agent: address });
      else if (err instanceof CapacityError)
        reply = errorReply(Codes.AT_CAPACITY, err.message, { agent: address, details: err.details });
      else {
        const e = err instanceof Error ? err : new Error(String(err));
        reply = errorReply(Codes.HANDLER_ERROR, `activation failed: ${e.name}: ${e.message}`, {
          agent: address,
          action: "on_start",
          traceback: this.settings.exposeTracebacks ? (e.stack ?? null) : null,
        });
      }
      this.send(msg.reply, reply, address, "on_start");
      return;
    }
    this.send(msg.reply, okReply({ node: this.settings.node }), address, null);
  }

  private isActive(kind: string, id: string): boolean {
    return this.activations.get(`${kind}/${id}`)?.status === "active";
  }

  /** The agent's activation, activating it if needed (one activation for concurrent asks). */
  private async activate(entry: KindEntry, id: string): Promise<Activation> {
    const key = `${entry.kind}/${id}`;
    const act = this.activations.get(key);
    if (act !== undefined && act.status === "active") return act;
    if (this.closing) throw new MeshClosed("the mesh is closing");
    const pending = this.starting.get(key);
    if (pending !== undefined) return pending;
    const started = this.start(entry, id);
    this.starting.set(key, started);
    try {
      return await started;
    } finally {
      this.starting.delete(key);
    }
  }

  private async start(entry: KindEntry, id: string): Promise<Activation> {
    const limit = this.settings.maxAgents;
    // Runs before this start is registered in `starting`: the others starting count.
    if (limit !== null && this.activations.size + this.starting.size >= limit) {
      throw new CapacityError(
        `${this.settings.node} holds ${this.activations.size} agents, its limit (maxAgents=${limit})`,
        {
          kind: entry.kind,
          rejected: { [this.settings.node]: `agent limit (${limit})` },
        },
      );
    }
    const act = new Activation(entry, id, this);
    if (entry.init) act.state = await entry.init(id);
    this.activations.set(act.address, act);
    act.sub = this.transport.subscribe(
      agentSubject(this.settings.prefix, entry.kind, id),
      (m) => {
        const msg = inbound(m);
        if (msg.reply && !isReplySubject(msg.reply, this.settings.replyPrefixes)) {
          this.droppedReplies += 1; // a reply subject is an order: only inboxes are obeyed
          return;
        }
        act.deliver(msg);
      },
      `${this.settings.prefix}.agents`,
    );
    await this.transport.flush(); // subscribed on the server before the activation's ok
    return act;
  }

  /** Explicitly activate `kind/id` here. */
  async spawn(kind: string, id: string): Promise<void> {
    const entry = this.kinds.get(kind);
    if (entry === undefined) throw new ConfigurationError(`kind ${kind} is not hosted here`);
    encodeId(id);
    await this.activate(entry, id);
  }

  /** Stop one agent: no new messages, finish the mailbox, the stop hook. `false` if not active. */
  async deactivate(kind: string, id: string): Promise<boolean> {
    const act = this.activations.get(`${kind}/${id}`);
    if (act === undefined || act.status !== "active") return false;
    await this.stop(act);
    return true;
  }

  /** Addresses of the agents active here. */
  active(): string[] {
    return [...this.activations.values()]
      .filter((a) => a.status === "active")
      .map((a) => a.address)
      .sort();
  }

  private async stop(act: Activation): Promise<void> {
    act.status = "stopping";
    try {
      await act.sub?.drain(); // messages still in flight are answered unavailable + retry
    } catch {
      // closed already
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, this.settings.stopTimeout);
    });
    await Promise.race([act.waitIdle(), timedOut]);
    clearTimeout(timer);
    act.refuseWaiting("the agent stopped before handling the message");
    act.status = "stopped";
    if (this.activations.get(act.address) === act) this.activations.delete(act.address);
    try {
      await act.entry.onStop?.(act.id, act.state);
    } catch {
      // a failing stop hook does not stop the others
    }
  }

  /** Stop serving: unsubscribe the kinds, stop every agent (§8 item 5). */
  async close(): Promise<void> {
    this.closing = true;
    for (const sub of this.kindSubs.values()) {
      try {
        sub.unsubscribe();
      } catch {
        // closed already
      }
    }
    this.kindSubs.clear();
    await Promise.all([...this.activations.values()].filter((a) => a.status === "active").map((a) => this.stop(a)));
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
  }
}

class CapacityError extends Error {
  constructor(
    message: string,
    readonly details: Record<string, unknown>,
  ) {
    super(message);
  }
}
