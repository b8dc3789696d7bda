/**
 * natsagents TypeScript client: call and host natsagents agents over NATS, speaking wire
 * protocol v1 (docs/protocol.md of the natsagents repository).
 */
export { connect, Mesh, AgentRef } from "./mesh.js";
export type { ConnectOptions } from "./mesh.js";
export type { CallOptions } from "./caller.js";
export { Session, MAX_TOKEN_AGENTS, MAX_TOKEN_CHARS, MAX_VERSION } from "./session.js";
export type { SessionOptions } from "./session.js";
export type { KindOptions, ActionDef, Handler } from "./host.js";
export type { ParamSpec, ParamType } from "./params.js";
export type { MessageContext } from "./context.js";
export { currentContext } from "./context.js";
export {
  AgentError,
  AgentNotFound,
  AlreadyApplied,
  BadRequest,
  CallTimeout,
  CircuitOpen,
  ClusterAtCapacity,
  Codes,
  ConfigurationError,
  ConnectError,
  ERROR_CODES,
  HandlerError,
  InvalidAddress,
  InvalidAgentId,
  InvalidSessionToken,
  JetStreamError,
  MeshClosed,
  NatsAgentsError,
  Overloaded,
  PartitionError,
  PayloadTooLarge,
  ProtocolError,
  TransportError,
  Unauthorized,
  Unavailable,
  UnknownAction,
  errorForCode,
} from "./errors.js";
export type { AgentErrorFields } from "./errors.js";
export {
  H as Headers,
  agentSubject,
  activateSubject,
  readSubject,
  durableSubject,
  decodeId,
  encodeId,
  isReplySubject,
  newMessageId,
  parseAddress,
  parseHeaderBlock,
} from "./wire.js";
export type { Delivery, Priority } from "./wire.js";
export { decode, encode, MAX_DEPTH, MAX_OBJECTS } from "./codec.js";
