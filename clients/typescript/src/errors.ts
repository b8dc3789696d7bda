/**
 * The exception tree of the client, mirroring the Python SDK's (`natsagents/errors.py`):
 *
 * ```text
 * NatsAgentsError
 * ├── ConfigurationError          bad settings or arguments (a kind, id, action, option)
 * │   ├── InvalidAddress
 * │   │   └── InvalidAgentId
 * │   └── InvalidSessionToken     a session token that is not one (§19.4)
 * ├── TransportError              talking to NATS failed
 * │   ├── ConnectError            servers unreachable, credentials refused
 * │   ├── MeshClosed              the mesh (connection) is closed or closing
 * │   └── JetStreamError          a JetStream request was refused (status, errCode)
 * ├── ProtocolError               a peer sent something that is not protocol v1
 * └── AgentError                  a call failed; one subclass per wire error code
 *     ├── BadRequest              bad_request
 *     ├── UnknownAction           unknown_action
 *     ├── AgentNotFound           not_found
 *     ├── HandlerError            handler_error (remoteTraceback)
 *     ├── CallTimeout             timeout (remote: false when no reply came at all)
 *     ├── Overloaded              overloaded
 *     ├── Unavailable             unavailable
 *     ├── PayloadTooLarge         payload_too_large
 *     ├── Unauthorized            unauthorized
 *     ├── ClusterAtCapacity       at_capacity
 *     ├── CircuitOpen             circuit_open (never on the wire; for completeness)
 *     ├── AlreadyApplied          already_applied
 *     └── PartitionError          partition
 * ```
 *
 * An error code this client does not know (a newer peer) gives a plain `AgentError` whose
 * `code` is the received code (protocol §6.3).
 */

/** The wire error codes of protocol v1 (§6.3). */
export const Codes = {
  BAD_REQUEST: "bad_request",
  UNKNOWN_ACTION: "unknown_action",
  NOT_FOUND: "not_found",
  HANDLER_ERROR: "handler_error",
  TIMEOUT: "timeout",
  OVERLOADED: "overloaded",
  UNAVAILABLE: "unavailable",
  PAYLOAD_TOO_LARGE: "payload_too_large",
  UNAUTHORIZED: "unauthorized",
  AT_CAPACITY: "at_capacity",
  CIRCUIT_OPEN: "circuit_open",
  ALREADY_APPLIED: "already_applied",
  PARTITION: "partition",
} as const;

/** Root of every error this client raises. */
export class NatsAgentsError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A setting or argument is invalid. */
export class ConfigurationError extends NatsAgentsError {}

/** An agent kind or id cannot be turned into a subject token. */
export class InvalidAddress extends ConfigurationError {}

/** An agent id is empty, too long, or not encodable. */
export class InvalidAgentId extends InvalidAddress {}

/**
 * A session token (`session.token()`, protocol §19.4) is malformed, too large, or names
 * invalid agents or versions: it came from elsewhere and is refused whole.
 */
export class InvalidSessionToken extends ConfigurationError {}

/** Talking to NATS failed. */
export class TransportError extends NatsAgentsError {}

/** No server could be reached, or the servers refused the credentials. */
export class ConnectError extends TransportError {}

/** The mesh (or its connection) is closed or closing. */
export class MeshClosed extends TransportError {}

/** A JetStream request was refused by the server. */
export class JetStreamError extends TransportError {
  readonly status: number | undefined;
  readonly errCode: number | undefined;

  constructor(message: string, opts: { status?: number; errCode?: number; cause?: unknown } = {}) {
    super(message, { cause: opts.cause });
    this.status = opts.status;
    this.errCode = opts.errCode;
  }
}

/** A message is not valid natsagents protocol v1. */
export class ProtocolError extends NatsAgentsError {}

/** Fields an {@link AgentError} may carry. */
export interface AgentErrorFields {
  /** `Kind/id` of the agent called, when known. */
  agent?: string | null;
  /** The action called, when known. */
  action?: string | null;
  /** The handler's traceback text (`handler_error`, when the host exposes it). */
  remoteTraceback?: string | null;
  /** Machine-readable extras sent by the host (`details` of the error body). */
  details?: Record<string, unknown> | null;
  /** `true` when the error came in a reply, `false` when raised locally. */
  remote?: boolean;
  cause?: unknown;
}

/** A call to an agent failed. `code` is the protocol v1 error code. */
export class AgentError extends NatsAgentsError {
  code: string = Codes.HANDLER_ERROR;
  agent: string | null;
  action: string | null;
  remoteTraceback: string | null;
  details: Record<string, unknown>;
  remote: boolean;

  constructor(message: string, fields: AgentErrorFields = {}) {
    super(message, { cause: fields.cause });
    this.agent = fields.agent ?? null;
    this.action = fields.action ?? null;
    this.remoteTraceback = fields.remoteTraceback ?? null;
    this.details = { ...(fields.details ?? {}) };
    this.remote = fields.remote ?? false;
  }

  /** The host's message text, without the code and address `toString()` adds. */
  get text(): string {
    return this.message;
  }

  override toString(): string {
    let where = "";
    if (this.agent) {
      where = ` [${this.agent}${this.action ? "." + this.action : ""}]`;
    }
    return `${this.name}: ${this.code}: ${this.message}${where}`;
  }
}

/** `bad_request`: malformed headers, undecodable body, invalid parameters. */
export class BadRequest extends AgentError {
  override code: string = Codes.BAD_REQUEST;
}
/** `unknown_action`: the agent's kind has no such action (`details.actions` lists them). */
export class UnknownAction extends AgentError {
  override code: string = Codes.UNKNOWN_ACTION;
}
/** `not_found`: the agent is not active and its kind is not activated on demand. */
export class AgentNotFound extends AgentError {
  override code: string = Codes.NOT_FOUND;
}
/** `handler_error`: the handler raised; `remoteTraceback` holds its traceback. */
export class HandlerError extends AgentError {
  override code: string = Codes.HANDLER_ERROR;
}
/**
 * `timeout`: the deadline passed. `remote: true` — the host said so and the message did not
 * run; `remote: false` — no reply came, so whether it ran is unknown.
 */
export class CallTimeout extends AgentError {
  override code: string = Codes.TIMEOUT;
}
/** `overloaded`: the mailbox is full or the agent is throttled (`details.retry_after`). */
export class Overloaded extends AgentError {
  override code: string = Codes.OVERLOADED;
}
/** `unavailable`: no host serves the kind, the agent is stopping, or the host is closing. */
export class Unavailable extends AgentError {
  override code: string = Codes.UNAVAILABLE;
}
/** `payload_too_large`: headers plus body exceed the server's `max_payload`. */
export class PayloadTooLarge extends AgentError {
  override code: string = Codes.PAYLOAD_TOO_LARGE;
}
/** `unauthorized`: the caller may not give this order (`details.reason`). */
export class Unauthorized extends AgentError {
  override code: string = Codes.UNAUTHORIZED;
}
/** `at_capacity`: no live node can host the agent. */
export class ClusterAtCapacity extends AgentError {
  override code: string = Codes.AT_CAPACITY;
}
/** `circuit_open`: a caller-side circuit breaker refused; never sent on the wire. */
export class CircuitOpen extends AgentError {
  override code: string = Codes.CIRCUIT_OPEN;
}
/** `already_applied`: a copy of a message that ran exactly once and whose reply the host no longer keeps (past the reply window, protocol §8.6); its result is lost. */
export class AlreadyApplied extends AgentError {
  override code: string = Codes.ALREADY_APPLIED;
}

/**
 * `partition`: the agent's node is on the minority side of a partition and its kind pauses
 * there; that copy did not run the message. Another copy on the majority side may own the
 * agent: resend with the same message id for `details.retry_for` seconds to learn (protocol §6.4).
 */
export class PartitionError extends AgentError {
  override code: string = Codes.PARTITION;
}

const BY_CODE: Record<string, new (message: string, fields?: AgentErrorFields) => AgentError> = {
  [Codes.BAD_REQUEST]: BadRequest,
  [Codes.UNKNOWN_ACTION]: UnknownAction,
  [Codes.NOT_FOUND]: AgentNotFound,
  [Codes.HANDLER_ERROR]: HandlerError,
  [Codes.TIMEOUT]: CallTimeout,
  [Codes.OVERLOADED]: Overloaded,
  [Codes.UNAVAILABLE]: Unavailable,
  [Codes.PAYLOAD_TOO_LARGE]: PayloadTooLarge,
  [Codes.UNAUTHORIZED]: Unauthorized,
  [Codes.AT_CAPACITY]: ClusterAtCapacity,
  [Codes.CIRCUIT_OPEN]: CircuitOpen,
  [Codes.ALREADY_APPLIED]: AlreadyApplied,
  [Codes.PARTITION]: PartitionError,
};

/** Every error code of protocol v1. */
export const ERROR_CODES: readonly string[] = Object.freeze(Object.keys(BY_CODE));

/**
 * The {@link AgentError} subclass for a wire error code; an unknown code gives a plain
 * `AgentError` whose `code` is the code received.
 */
export function errorForCode(code: string, message: string, fields: AgentErrorFields = {}): AgentError {
  const cls = Object.prototype.hasOwnProperty.call(BY_CODE, code) ? BY_CODE[code] : undefined;
  if (cls === undefined) {
    const err = new AgentError(message, { remote: true, ...fields });
    err.code = code;
    return err;
  }
  return new cls(message, { remote: true, ...fields });
}
