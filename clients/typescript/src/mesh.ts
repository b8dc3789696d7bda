/** `connect()` and the `Mesh`: composes the connection, the caller, the durable path and the host. */
import { connect as natsConnect } from "@nats-io/transport-node";
import type { NodeConnectionOptions } from "@nats-io/transport-node";
import { Caller, checkOptions } from "./caller.js";
import type { CallOptions } from "./caller.js";
import { DurablePublisher } from "./durable.js";
import { ConfigurationError, ConnectError, MeshClosed } from "./errors.js";
import { Host } from "./host.js";
import { Session } from "./session.js";
import type { SessionOptions } from "./session.js";
import type { KindOptions } from "./host.js";
import { Transport } from "./transport.js";
import {
  DEFAULT_PREFIX,
  DEFAULT_REPLY_PREFIXES,
  encodeId,
  validateAction,
  validateKind,
  validatePrefix,
} from "./wire.js";

/** Options of {@link connect}. Durations are milliseconds. */
export interface ConnectOptions {
  /** NATS server URL(s) (default `nats://127.0.0.1:4222`). */
  servers?: string | string[];
  /** Subject prefix of the mesh (default `na`). */
  prefix?: string;
  /** Client name: the NATS connection name and `Na-Caller` of calls made outside handlers. */
  name?: string;
  /** How long a call waits when it gives no timeout (default 10 000; `null`: no limit). */
  defaultTimeout?: number | null;
  /** Resend an unanswered request, unchanged, after this long (default 2 000; `null`: never). */
  resendAfter?: number | null;
  /** Compress bodies larger than this (default 65 536; `null`: never compress nor accept it). */
  compressAbove?: number | null;
  /** Prefix of this client's reply subjects (default `_INBOX`; hosts answer only inboxes). */
  inboxPrefix?: string;
  /** Reply-subject prefixes this client's hosts answer to (default `["_INBOX."]`). */
  replyPrefixes?: string[];
  /** Host name sent in activation replies (default: `name`). */
  node?: string;
  /** Include handler stack traces in `handler_error` replies (default `true`). */
  exposeTracebacks?: boolean;
  /** How long a stopping agent may take to finish its mailbox (default 10 000). */
  stopTimeout?: number;
  /** How long the reply of an answered request is kept for copies (default 10 000). */
  dedupTtl?: number;
  /** Most agents this process hosts at once (default 100 000; `null`: no limit). */
  maxAgents?: number | null;
  /** Create the durable inbox streams when a durable send finds none (default `true`). */
  createStreams?: boolean;
  /**
   * Read-only actions per kind with read replicas, e.g. `{ Board: ["get", "list"] }`: calls
   * of them go to the read subject, where replicas answer too (§19.1). Like action names,
   * they are part of a kind's API; a call's `readOnly` option overrides this.
   */
  readActions?: Record<string, readonly string[]>;
  /** Anything else for `@nats-io/transport-node`'s `connect` (credentials, TLS …). */
  nats?: Partial<NodeConnectionOptions>;
}

/** A reference to agent `kind/id`: a value; messages go by subject, wherever the agent lives. */
export class AgentRef {
  constructor(
    readonly kind: string,
    readonly id: string,
    private readonly caller: Caller,
    readonly options: Readonly<CallOptions> = {},
  ) {}

  get address(): string {
    return `${this.kind}/${this.id}`;
  }

  toString(): string {
    return this.address;
  }

  /** The same agent, called with these options by default (delivery, priority …). */
  withOptions(options: CallOptions): AgentRef {
    checkOptions(options);
    return new AgentRef(this.kind, this.id, this.caller, { ...this.options, ...options });
  }

  /**
   * Call `action` and wait for its result.
   * @throws CallTimeout (no reply in time, or the host said `timeout`), and the other
   *   `AgentError` subclasses for an error reply (BadRequest, UnknownAction, HandlerError …).
   */
  async call<T = unknown>(action: string, params?: Record<string, unknown> | null, options?: CallOptions): Promise<T> {
    return (await this.caller.invoke(this.kind, this.id, action, params, { ...this.options, ...options }, false)) as T;
  }

  /**
   * Start a call now and return its promise (for several calls in flight at once:
   * `await Promise.all([ref.request(…), …])`).
   */
  request<T = unknown>(action: string, params?: Record<string, unknown> | null, options?: CallOptions): Promise<T> {
    return this.call<T>(action, params, options);
  }

  /**
   * Send without waiting for the handler. With `ack` (the default) it resolves once the
   * agent's mailbox accepted the message (`Na-Reply-Mode: accept`, §7.3; activation on
   * demand included); `ack: false` publishes with no reply subject at all — nothing
   * comes back, and a message to an inactive agent is lost.
   */
  async send(
    action: string,
    params?: Record<string, unknown> | null,
    options?: CallOptions & { ack?: boolean },
  ): Promise<void> {
    const { ack = true, ...rest } = options ?? {};
    const opts = { ...this.options, ...rest };
    if (ack || (opts.delivery !== undefined && opts.delivery !== "at_most_once")) {
      await this.caller.invoke(this.kind, this.id, action, params, opts, true);
      return;
    }
    await this.caller.publishOnly(this.kind, this.id, action, params, opts);
  }
}

/** A connection to a mesh: call agents, host kinds. Close it with {@link Mesh.close}. */
export class Mesh {
  private closed = false;

  constructor(
    readonly transport: Transport,
    readonly caller: Caller,
    readonly hosting: Host,
    readonly prefix: string,
  ) {}

  /** A reference to agent `kind/id`. @throws InvalidAddress, InvalidAgentId */
  agent(kind: string, id: string): AgentRef {
    validateKind(kind);
    encodeId(id);
    return new AgentRef(kind, id, this.caller);
  }

  /**
   * A new caller session (§19.4): pass it to calls (`{ session }`, or
   * `ref.withOptions({ session })`) to read your own writes and never go back in time
   * through read replicas. With `token` (from `session.token()` here or in Python), the
   * session another process exported.
   * @throws InvalidSessionToken (a malformed token), ConfigurationError
   */
  session(options: SessionOptions & { token?: string } = {}): Session {
    const { token, ...rest } = options;
    return token === undefined ? new Session(rest) : Session.fromToken(token, rest);
  }

  /** The session of calls that name none: read-your-writes for everything this mesh calls. */
  get defaultSession(): Session {
    return this.caller.session;
  }

  /** Serve agent kind `kind` from this process (a standalone peer host, §8). */
  async host<S>(kind: string, options: KindOptions<S>): Promise<void> {
    this.check();
    await this.hosting.host(kind, options);
  }

  /**
   * Activate `kind/id` without a message (explicit spawn): here when this process hosts
   * the kind, else on a host of the kind (waiting for one until the timeout).
   */
  async spawn(kind: string, id: string, timeout: number | null = this.caller.settings.defaultTimeout): Promise<void> {
    this.check();
    try {
      await this.hosting.spawn(kind, id);
    } catch (err) {
      if (!(err instanceof ConfigurationError) || err instanceof MeshClosed) throw err;
      await this.caller.spawn(kind, id, timeout);
    }
  }

  /** Stop an agent hosted here. `false` when it is not active here. */
  deactivate(kind: string, id: string): Promise<boolean> {
    return this.hosting.deactivate(kind, id);
  }

  /** Requests resent for want of a reply (§7.4). */
  get resends(): number {
    return this.transport.resends;
  }

  private check(): void {
    if (this.closed) throw new MeshClosed("the mesh is closed");
  }

  /** Stop hosting (agents finish their mailboxes), then close the connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.hosting.close();
    this.transport.close();
    try {
      await this.transport.nc.drain();
    } catch {
      await this.transport.nc.close().catch(() => {});
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function ms(v: unknown, what: string, allowNull: boolean): void {
  if (v === undefined || (allowNull && v === null)) return;
  if (typeof v !== "number" || !(v > 0))
    throw new ConfigurationError(`${what} must be a positive number of ms${allowNull ? " or null" : ""}`);
}

/**
 * Connect to a mesh.
 * @throws ConfigurationError (bad options), ConnectError (servers unreachable, auth refused)
 */
export async function connect(options: ConnectOptions = {}): Promise<Mesh> {
  const prefix = validatePrefix(options.prefix ?? DEFAULT_PREFIX);
  const name = options.name ?? "ts-client";
  if (typeof name !== "string" || name.length === 0 || name.length > 256 || /[\r\n]/.test(name)) {
    throw new ConfigurationError("name must be 1-256 characters without CR or LF");
  }
  ms(options.defaultTimeout, "defaultTimeout", true);
  ms(options.resendAfter, "resendAfter", true);
  ms(options.stopTimeout, "stopTimeout", false);
  ms(options.dedupTtl, "dedupTtl", false);
  if (options.compressAbove !== undefined && options.compressAbove !== null && !(options.compressAbove >= 0)) {
    throw new ConfigurationError("compressAbove must be a number of bytes >= 0 or null");
  }
  const replyPrefixes = options.replyPrefixes ?? [...DEFAULT_REPLY_PREFIXES];
  if (
    replyPrefixes.length === 0 ||
    replyPrefixes.some((p) => typeof p !== "string" || !p.endsWith(".") || p.length < 2)
  ) {
    throw new ConfigurationError("replyPrefixes must be non-empty strings ending with '.'");
  }
  const readActions = new Map<string, ReadonlySet<string>>();
  for (const [kind, actions] of Object.entries(options.readActions ?? {})) {
    validateKind(kind);
    if (!Array.isArray(actions)) throw new ConfigurationError(`readActions.${kind} must be an array of action names`);
    readActions.set(kind, new Set(actions.map((a) => validateAction(a))));
  }
  const inboxPrefix = options.inboxPrefix ?? "_INBOX";
  let nc;
  try {
    nc = await natsConnect({
      servers: options.servers ?? "nats://127.0.0.1:4222",
      name,
      inboxPrefix,
      ...(options.nats ?? {}),
    });
  } catch (err) {
    throw new ConnectError(`cannot connect to NATS: ${(err as Error).message}`, { cause: err });
  }
  const transport = new Transport(nc, inboxPrefix);
  const caller = new Caller(transport, {
    prefix,
    name,
    defaultTimeout: options.defaultTimeout === undefined ? 10_000 : options.defaultTimeout,
    resendAfter: options.resendAfter === undefined ? 2_000 : options.resendAfter,
    compressAbove: options.compressAbove === undefined ? 64 * 1024 : options.compressAbove,
    backoffInitial: 5,
    backoffMax: 250,
    readActions,
  });
  caller.durable = new DurablePublisher(transport, caller, { prefix, createStreams: options.createStreams ?? true });
  const host = new Host(transport, {
    prefix,
    node: options.node ?? name,
    replyPrefixes,
    exposeTracebacks: options.exposeTracebacks ?? true,
    stopTimeout: options.stopTimeout ?? 10_000,
    dedupTtl: options.dedupTtl ?? 10_000,
    compressAbove: options.compressAbove === undefined ? 64 * 1024 : options.compressAbove,
    maxAgents: options.maxAgents === undefined ? 100_000 : options.maxAgents,
  });
  return new Mesh(transport, caller, host, prefix);
}
