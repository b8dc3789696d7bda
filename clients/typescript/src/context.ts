/**
 * The context of the message a hosted handler is running, carried across `await`s with
 * `AsyncLocalStorage` so that calls a handler makes inherit its deadline, correlation id
 * and trace context (protocol §4.1) without passing them by hand.
 */
import { AsyncLocalStorage } from "node:async_hooks";

/** What a handler knows about the message it runs (its second argument). */
export interface MessageContext {
  /** `Kind/id` of the agent running. */
  readonly agent: string;
  readonly kind: string;
  readonly id: string;
  readonly action: string;
  /** `Na-Msg-Id`: the idempotency key of the message. */
  readonly messageId: string;
  /** `Na-Corr-Id` (the message id when absent). */
  readonly correlationId: string;
  /** `Na-Deadline` (Unix ms), or `null`. */
  readonly deadline: number | null;
  /** `Na-Caller` as sent (informational, not authenticated), or `null`. */
  readonly caller: string | null;
  readonly traceparent: string | null;
  readonly tracestate: string | null;
  /** The agent's in-memory state (see `HostOptions.init`); assign to replace it. */
  state: unknown;
}

export const current = new AsyncLocalStorage<MessageContext>();

/** The context of the handler running now, or `undefined` outside handlers. */
export function currentContext(): MessageContext | undefined {
  return current.getStore();
}
