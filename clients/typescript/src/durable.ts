/**
 * Durable delivery from a peer (protocol §15.1): store the message in the inbox stream with
 * a JetStream publish (`Nats-Msg-Id` = `Na-Msg-Id`, so a publish repeated after an unknown
 * outcome is stored once), then wait for the result on our own reply subject; a publish
 * answered "duplicate" also asks the agent for the earlier result (a replay request, §7.5).
 * A cluster node's partition owner runs the message (exactly once with `exactly_once`).
 */
import { JetStreamApiError, RetentionPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { JetStreamClient, PubAck } from "@nats-io/jetstream";
import type { Caller, DurablePath } from "./caller.js";
import { CallTimeout, JetStreamError, Unavailable } from "./errors.js";
import { parseReply } from "./reply.js";
import { toNatsHeaders } from "./transport.js";
import type { Inbound, Transport } from "./transport.js";
import { H, PROTO_VERSION, agentSubject, durableSubject, streamName } from "./wire.js";
import type { Delivery, HeaderMap } from "./wire.js";

/** Partitions of an inbox stream this client creates (a stream's count never changes). */
export const DEFAULT_PARTITIONS = 16;
const NANOS = 1_000_000;
const STREAM_EXISTS = 10058;
/** One publish attempt waits at most this long before publishing again with the same ids. */
const ATTEMPT_MS = 5_000;
/** How long storing a message may take when the call has no deadline. */
const STORE_MS = 30_000;

export interface DurableSettings {
  prefix: string;
  /** Create the inbox and dead-letter streams when the publish finds none. */
  createStreams: boolean;
}

/** No stream listens on the subject: nats.js reports the publish's 503 as `JetStreamNotEnabled`. */
function isNoStream(err: unknown): boolean {
  return (
    (err instanceof Error && err.name === "JetStreamNotEnabled") ||
    (err instanceof JetStreamApiError && err.code === 10059)
  );
}

function isTimeout(err: unknown): boolean {
  return err instanceof Error && (err.name === "TimeoutError" || /timeout/i.test(err.message));
}

export class DurablePublisher implements DurablePath {
  private readonly js: JetStreamClient;

  constructor(
    private readonly transport: Transport,
    private readonly caller: Caller,
    private readonly settings: DurableSettings,
  ) {
    this.js = jetstream(transport.nc);
  }

  async publish(
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
  ): Promise<unknown> {
    const address = `${kind}/${id}`;
    const hdrs: HeaderMap = { ...headers };
    delete hdrs[H.DEADLINE]; // the caller's deadline bounds its wait, not the message's life
    delete hdrs[H.REPLY_MODE];
    delete hdrs[H.PRIORITY]; // the stream's order is the agent's order
    if (messageTtl !== undefined) hdrs[H.DEADLINE] = String(Math.floor(Date.now() + messageTtl));
    hdrs[H.DELIVERY] = delivery;
    const msgId = hdrs[H.MSG_ID]!;
    const remaining = (): number | undefined => (deadline === null ? undefined : Math.max(1, deadline - Date.now()));
    let reply: ReturnType<Transport["expectReply"]> | null = null;
    if (!acceptOnly) {
      reply = this.transport.expectReply(remaining());
      hdrs[H.REPLY_TO] = reply.subject;
    }
    const subject = durableSubject(this.settings.prefix, kind, id);
    this.transport.checkSize(subject, { ...hdrs, [H.NATS_MSG_ID]: msgId }, body);
    let ack: PubAck;
    try {
      ack = await this.store(subject, body, hdrs, msgId, deadline, address, action);
    } catch (err) {
      reply?.cancel();
      throw err;
    }
    if (reply === null) return undefined;
    let msg: Inbound;
    if (ack.duplicate) {
      msg = await this.earlierResult(reply, kind, id, action, msgId, deadline, ack.seq);
    } else {
      try {
        msg = await reply.wait;
      } catch (err) {
        if (!(err instanceof CallTimeout)) throw err;
        throw new CallTimeout(
          `no result within the timeout; the message is stored (stream sequence ${ack.seq}) and will run`,
          { agent: address, action, details: { stored: true, stream_seq: ack.seq } },
        );
      }
    }
    onReply?.(msg.headers);
    return parseReply(msg, address, action, this.transport.maxPayload);
  }

  /**
   * Publish until a PubAck comes, within the deadline (30 s without one): a timeout leaves
   * the outcome unknown, so the same ids go again (§15.1 step 2); "no responders" means no
   * stream listens (create the streams once, when allowed) or a stream leader election on a
   * cluster (retry with backoff).
   */
  private async store(
    subject: string,
    body: Uint8Array,
    hdrs: HeaderMap,
    msgId: string,
    deadline: number | null,
    address: string,
    action: string,
  ): Promise<PubAck> {
    const until = deadline ?? Date.now() + STORE_MS;
    let created = false;
    let noStream = false;
    let delay = 50;
    for (;;) {
      const left = until - Date.now();
      if (left <= 0) {
        if (noStream) {
          throw new Unavailable("no durable inbox stream stores messages for this agent (no responders)", {
            agent: address,
            action,
          });
        }
        throw new CallTimeout("storing the message timed out; it may or may not be stored", { agent: address, action });
      }
      try {
        return await this.js.publish(subject, body, {
          msgID: msgId,
          headers: toNatsHeaders(hdrs),
          timeout: Math.min(ATTEMPT_MS, left),
        });
      } catch (err) {
        if (isNoStream(err)) {
          noStream = true;
          if (this.settings.createStreams && !created) {
            created = true;
            await this.ensureStreams();
            continue;
          }
          await new Promise((r) =>
            setTimeout(r, Math.min(delay * (0.5 + Math.random()), Math.max(0, until - Date.now()))),
          );
          delay = Math.min(delay * 2, 1000);
          continue;
        }
        if (isTimeout(err)) {
          noStream = false;
          continue;
        }
        if (err instanceof JetStreamApiError) {
          throw new Unavailable(`the durable inbox did not store the message: ${err.message}`, {
            agent: address,
            action,
            cause: new JetStreamError(err.message, { status: err.status, errCode: err.code }),
          });
        }
        throw err;
      }
    }
  }

  /**
   * The inbox and dead-letter streams as §15 describes them (P = 16; R3 when the server is
   * in a cluster of at least 3 servers). An existing stream is left as it is.
   */
  async ensureStreams(): Promise<void> {
    const jsm = await jetstreamManager(this.transport.nc);
    const p = this.settings.prefix;
    const info = this.transport.nc.info;
    const replicas = info?.cluster && (info.connect_urls?.length ?? 0) >= 3 ? 3 : 1;
    const add = async (config: Parameters<typeof jsm.streams.add>[0]): Promise<void> => {
      try {
        await jsm.streams.add(config);
      } catch (err) {
        if (err instanceof JetStreamApiError && err.code === STREAM_EXISTS) return;
        throw new JetStreamError(`creating stream ${String(config.name)} failed: ${(err as Error).message}`, {
          cause: err,
          ...(err instanceof JetStreamApiError ? { status: err.status, errCode: err.code } : {}),
        });
      }
    };
    await add({
      name: streamName(p, "inbox"),
      subjects: [`${p}.inbox.*.*`],
      subject_transform: {
        src: `${p}.inbox.*.*`,
        dest: `${p}.inboxp.{{partition(${DEFAULT_PARTITIONS},1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}`,
      },
      retention: RetentionPolicy.Workqueue,
      duplicate_window: 120_000 * NANOS,
      max_consumers: Math.max(64, DEFAULT_PARTITIONS * 4),
      num_replicas: replicas,
      metadata: { natsagents_partitions: String(DEFAULT_PARTITIONS) },
    });
    await add({
      name: streamName(p, "dlq"),
      subjects: [`${p}.dlq.>`],
      retention: RetentionPolicy.Limits,
      max_age: 7 * 24 * 3600 * 1000 * NANOS,
      duplicate_window: 120_000 * NANOS,
      num_replicas: replicas,
    });
  }

  /**
   * The reply of a message stored before (§15.1 step 4): whichever comes first of the reply
   * to our own subject and the agent's answer to a replay request, asked again while the
   * agent does not know it yet (`unavailable` + `retry`, handled by `Caller.deliver`).
   */
  private async earlierResult(
    reply: ReturnType<Transport["expectReply"]>,
    kind: string,
    id: string,
    action: string,
    msgId: string,
    deadline: number | null,
    seq: number,
  ): Promise<Inbound> {
    const question: HeaderMap = {
      [H.PROTO]: PROTO_VERSION,
      [H.ACTION]: action,
      [H.MSG_ID]: msgId,
      [H.REPLY_MODE]: "replay",
    };
    const stop = new AbortController();
    const ask = this.caller.deliver(
      agentSubject(this.settings.prefix, kind, id),
      new Uint8Array(0),
      question,
      deadline,
      kind,
      id,
      action,
      { signal: stop.signal },
    );
    try {
      return await firstOf([reply.wait, ask]);
    } catch {
      throw new CallTimeout(
        `no result within the timeout; the message was stored before (stream sequence ${seq}) ` +
          "and its result is not known to the agent yet",
        { agent: `${kind}/${id}`, action, details: { stored: true, stream_seq: seq, duplicate: true } },
      );
    } finally {
      reply.cancel();
      stop.abort(new CallTimeout("answered", { remote: false }));
      ask.catch(() => {});
    }
  }
}

/** The first promise to fulfil; rejects only when all reject. */
function firstOf<T>(promises: Promise<T>[]): Promise<T> {
  return Promise.any(promises);
}
