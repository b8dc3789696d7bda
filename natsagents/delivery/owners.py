"""Partition owners: cluster nodes consume the durable inbox and hand messages to agents.

Each node holds a KV lease (``<prefix>_control``, key ``partition.<n>``) on its share of the
inbox partitions: partition ``n`` belongs to the live node with the highest
``hash64("n:node")`` (rendezvous hashing, so a joining or leaving node moves only its own
share). Only the lease holder consumes a partition, through one durable pull consumer
(``p<n>``), so each partition — and each agent, all of whose messages land in one
partition — has one reader at a time.

Per partition the owner keeps a FIFO per agent: an agent's messages run one after the
other, in stream order, while different agents proceed concurrently; several waiting for
one agent are handed over in one batch request (``wire.batch``). A message is handed
to its agent by a core request to the agent's subject (activation on demand, resends and
"retry" answers as for any call), with ``Na-Stream-Seq`` added. Then:

* ok (or ``already_applied``: an exactly-once message that ran before): the reply goes to
  the requester's ``Na-Reply-To``, if any, and the message is acknowledged (double ack);
* a failure that may pass (``handler_error``, ``timeout``, ``unavailable``, ``overloaded``,
  ``at_capacity``): tried again after ``DeliverySettings.backoff`` — in process, holding the
  agent's later messages back so their order holds — up to ``max_deliver`` attempts
  (counting those of earlier owners: see ``_learn_suspects``);
* a permanent failure (``bad_request``, ``unknown_action``, ``not_found``,
  ``payload_too_large``, ``unauthorized``) or the last attempt: the message goes to the
  dead-letter stream with its headers, the error and the attempt count, the requester gets
  the error, and the message is acknowledged.

While a message waits or runs, the owner renews its ack deadline (``+WPI``). An owner that
gives a partition up stops fetching, lets running messages finish and hands the waiting
ones back (``-NAK``) so the next owner gets them at once and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from ..cluster import records
from ..cluster.leader import LeaderLease
from ..cluster.ring import hash64
from ..errors import AgentError, NatsAgentsError, ProtocolError
from ..observability import Metrics
from ..runtime.caller import Caller
from ..runtime.durable import DeliverySettings, dlq_stream, ensure_delivery_streams, inbox_stream
from ..transport import Transport
from ..transport import jetstream as js
from ..transport.kv import Bucket, CasConflict, KeyNotFound
from ..wire import batch as wire_batch
from ..wire import codec, envelope
from ..wire import headers as h
from ..wire.ids import decode_id
from ..wire.owner import owner_mac
from ..wire.subjects import agent_subject, dead_letter_subject, partition_subject

__all__ = ["PERMANENT", "PartitionOwners"]

log = logging.getLogger("natsagents.delivery")

#: Error codes a new attempt cannot fix: the message goes to the dead-letter stream at once.
PERMANENT = frozenset({"bad_request", "unknown_action", "not_found", "payload_too_large", "unauthorized"})
#: Headers of a dead letter (besides the original ones).
DLQ_ERROR = "Na-Dlq-Error"
DLQ_REASON = "Na-Dlq-Reason"
DLQ_DELIVERIES = "Na-Dlq-Deliveries"
DLQ_STREAM_SEQ = "Na-Dlq-Stream-Seq"
DLQ_SUBJECT = "Na-Dlq-Subject"
DLQ_TIME = "Na-Dlq-Time"
#: Answers to a whole batch request that mean its host does not take batches, or that
#: batches of this kind do not fit in a message (a request or reply over max_payload).
_NO_BATCHES = frozenset({"bad_request", "unknown_action", "payload_too_large"})
#: Seconds the attempt counts of a partition's suspect messages are kept after their last change.
_ATTEMPTS_TTL = 24 * 3600.0
#: Most bytes (bodies and headers) of the messages one batch request carries.
_BATCH_BYTES = 256 * 1024


class PartitionOwners:
    """The durable-inbox consumer of one cluster node.

    Args:
        transport: the node's connection.
        caller: the mesh's caller (forwards messages to agents).
        control: the ``<prefix>_control`` bucket (partition leases).
        members: live members now (node id → record with ``kinds`` and ``draining``).
        changed: waits up to the given seconds for a membership change.
        node_id: this node.
        prefix: the mesh's subject prefix.
        settings: partitions, attempts, backoff…
        lease: seconds of a partition lease.
        metrics: the mesh's metrics.
        owner_key: the cluster's owner key (``cluster.owner_key``): what this owner
            forwards is signed with it (``wire.owner``); hosts refuse unsigned
            ``Na-Stream-Seq`` and batches.
    """

    def __init__(
        self,
        transport: Transport,
        caller: Caller,
        control: Bucket,
        members: Callable[[], Mapping[str, Any]],
        changed: Callable[[float], Any],
        node_id: str,
        prefix: str,
        settings: DeliverySettings,
        lease: float,
        metrics: Metrics,
        *,
        owner_key: bytes | None = None,
    ) -> None:
        self._t = transport
        self.owner_key = owner_key
        self._caller = caller
        self._control = control
        self._members = members
        self._changed = changed
        self.node_id = node_id
        self.prefix = prefix
        self.settings = settings
        self._lease = max(1.0, lease)
        self._metrics = metrics
        self.partitions = settings.partitions
        self._leases: dict[int, LeaderLease] = {}
        #: Kinds whose host refused a batch request: their messages go one by one.
        self.unbatched: set[str] = set()
        self._running: dict[int, _Partition] = {}  # partitions consuming now
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.partitions = await ensure_delivery_streams(self._t, self.prefix, self.settings)
        self._task = asyncio.get_running_loop().create_task(self._assign())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        leases, self._leases = self._leases, {}
        await asyncio.gather(*(lease.stop() for lease in leases.values()), return_exceptions=True)

    def held(self) -> int:
        """Messages fetched by this node's partitions and not yet acknowledged."""
        return sum(len(part.held) for part in self._running.values())

    def owned(self) -> list[int]:
        """Partitions this node consumes now."""
        return sorted(n for n, lease in self._leases.items() if lease.is_leader)

    def desired(self) -> set[int]:
        """Partitions this node should own: rendezvous hashing over live nodes."""
        live = [
            n for n, r in self._members().items() if getattr(r, "kinds", None) and not getattr(r, "draining", False)
        ]
        if self.node_id not in live:
            live.append(self.node_id)
        return {p for p in range(self.partitions) if max(live, key=lambda n: hash64(f"{p}:{n}")) == self.node_id}

    async def _assign(self) -> None:
        while True:
            want = self.desired()
            for p in sorted(want - set(self._leases)):
                lease = LeaderLease(
                    self._control, f"partition.{p}", self.node_id, ttl=self._lease, lead=_Partition(self, p).run
                )
                lease.start()
                self._leases[p] = lease
            for p in sorted(set(self._leases) - want):
                lease = self._leases.pop(p)
                await lease.stop()  # graceful: the running partition hands its messages back
            self._metrics.partitions_owned.set(len(self.owned()))
            await self._changed(1.0)


class _Partition:
    """Consumes one partition while its lease is held (``run`` is the lease's task)."""

    def __init__(self, owners: PartitionOwners, n: int) -> None:
        self.o = owners
        self.n = n
        self.queues: dict[str, deque[js.JsMsg]] = {}
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.held: set[js.JsMsg] = set()  # fetched and not yet acknowledged
        # Attempts of earlier owners (see _learn_suspects): stream seq → attempts so far.
        self.attempts_key = f"attempts.{n}"
        self.attempts: dict[int, int] = {}
        self.attempts_revision = 0
        self.attempts_dirty = False
        # Writes of the counts are serialised and coalesced: a change waits for one write
        # that started after it (``_changes`` counts changes, ``_stored`` what was written).
        self._attempts_lock: asyncio.Lock | None = None
        self._changes = 0
        self._stored = 0
        self.suspect_upto = 0
        self.unstarted: set[int] = set()  # handed back by a leaving owner without an attempt
        self.running: dict[int, int] = {}  # stream seq → the attempt under way
        self.inflight: dict[str, int] = {}  # agent → messages at its queue's head being handled
        self.room = asyncio.Event()
        self.room.set()

    async def run(self) -> None:
        o = self.o
        s = o.settings
        stream = inbox_stream(o.prefix)
        durable = f"p{self.n}"
        config = js.ConsumerConfig(
            durable=durable,
            filter_subject=partition_subject(o.prefix, self.n),
            ack_wait=s.ack_wait,
            max_deliver=-1,
            max_ack_pending=s.max_pending,
        )
        await self._learn_suspects(stream, durable)
        consumer = await self._fresh_consumer(stream, config)
        o._running[self.n] = self
        keepalive = asyncio.get_running_loop().create_task(self._keep_alive())
        log.info("%s consumes inbox partition %d", o.node_id, self.n)
        expected = 0  # the next consumer (delivery) sequence
        try:
            while True:
                await self.room.wait()
                try:
                    # no_wait: return what is there now (or the first to come within
                    # expires) instead of holding messages until a whole batch came.
                    msgs = await consumer.fetch(min(s.batch, s.max_pending - len(self.held)), expires=1.0, no_wait=True)
                except (js.JetStreamError, AgentError) as exc:
                    log.debug("partition %d: fetch failed: %s", self.n, exc)
                    await asyncio.sleep(0.2)
                    continue
                for msg in msgs:
                    cseq = msg.metadata.consumer_seq
                    if expected and cseq != expected:
                        # A delivery never reached us (a server died with it on the way):
                        # the server hands it out again only after ack_wait, behind newer
                        # messages of the same agent, and exactly-once would then refuse it.
                        # Start over from the oldest unacknowledged message, in order.
                        log.warning(
                            "partition %d: delivery %d missing (got %d): restarting from the ack floor",
                            self.n,
                            expected,
                            cseq,
                        )
                        await self._drop_waiting()
                        with contextlib.suppress(Exception):
                            await consumer.close()
                        consumer = await self._fresh_consumer(stream, config)
                        expected = 0
                        break
                    expected = cseq + 1
                    self._enqueue(msg)
        finally:
            if o._running.get(self.n) is self:
                del o._running[self.n]
            keepalive.cancel()
            await self._hand_back()
            with contextlib.suppress(Exception):
                await consumer.close()
            log.info("%s gave up inbox partition %d", o.node_id, self.n)

    async def _learn_suspects(self, stream: str, durable: str) -> None:
        """Before a takeover's fresh consumer: which messages an earlier owner may have been
        running when it went away (up to its consumer's last delivered sequence), and the
        attempts earlier owners recorded for them (``attempts.<n>`` in the control bucket).
        JetStream's delivery count starts again with the fresh consumer; these carry on."""
        o = self.o
        known = True  # whether we know the earlier consumer's last delivery
        try:
            info = await js.consumer_info(o._t, stream, durable, timeout=5.0)
        except js.ConsumerNotFound:
            info = {}
        except NatsAgentsError as exc:
            log.warning("partition %d: reading the earlier consumer failed (%s): counting afresh", self.n, exc)
            info, known = {}, False
        floor = _stream_seq(info.get("ack_floor"))
        self.suspect_upto = _stream_seq(info.get("delivered"))
        try:
            entry = await o._control.get(self.attempts_key, timeout=5.0)
        except NatsAgentsError as exc:
            log.warning("partition %d: reading attempt counts failed (%s)", self.n, exc)
            entry = None
        counts: dict[int, int] = {}
        self.attempts_revision = 0
        if entry is not None:
            self.attempts_revision = entry.revision
            counts = {seq: n for seq, n in _counts(entry.value, self.attempts_key).items() if seq > floor}
            # A count for a message no earlier consumer delivered is impossible (garbage):
            # believing it would dead-letter that message before it ever ran.
            beyond = [seq for seq in counts if known and seq > self.suspect_upto]
            if beyond:
                records.garbage(log, "attempt count", self.attempts_key, f"{len(beyond)} messages never delivered")
                for seq in beyond:
                    del counts[seq]
        if counts:
            self.suspect_upto = max(self.suspect_upto, max(counts))
        # 0: a leaving owner handed the message back without trying it. This owner is the
        # first to try it: not a suspect. The zeros go, so that if this owner dies while
        # trying, the next one counts that attempt (as it would for any suspect).
        self.unstarted = {seq for seq, n in counts.items() if n == 0}
        self.attempts = {seq: n for seq, n in counts.items() if n > 0}
        if self.unstarted:
            await self._store_attempts()

    def _suspect(self, msg: js.JsMsg) -> bool:
        """Delivered before this owner's consumer existed: an earlier owner may have run it."""
        seq = msg.stream_seq
        return seq <= self.suspect_upto and seq not in self.unstarted

    async def _count_attempt(self, msg: js.JsMsg, before: int) -> None:
        """Record, before running it, that a suspect message gets attempt ``before + 1``: if
        this node dies during it, the next owner counts it."""
        self.attempts[msg.stream_seq] = before + 1
        await self._store_attempts()

    def _forget_attempts(self, msg: js.JsMsg) -> None:
        if self.attempts.pop(msg.stream_seq, None) is not None:
            self.attempts_dirty = True

    async def _store_attempts(self) -> None:
        """Write the attempt counts, including every change made before this call. Callers
        that come while a write is on its way share the next one (after a takeover many
        agents' suspects are counted at once: one write per round trip, not per message)."""
        self._changes += 1
        wanted = self._changes
        if self._attempts_lock is None:
            self._attempts_lock = asyncio.Lock()
        async with self._attempts_lock:
            if self._stored >= wanted:
                return  # a write that started after our change carried it
            covered = self._changes
            await self._write_attempts()
            self._stored = covered

    async def _write_attempts(self) -> None:
        """One write of the counts (CAS on the key's revision). A conflict (an earlier
        owner still wrote after this one read) merges the two, keeping the higher count."""
        control = self.o._control
        for _ in range(3):
            value = codec.encode(self.attempts)
            try:
                if self.attempts_revision:
                    self.attempts_revision = await control.update(
                        self.attempts_key, value, revision=self.attempts_revision, ttl=_ATTEMPTS_TTL, timeout=5.0
                    )
                else:
                    self.attempts_revision = await control.create(
                        self.attempts_key, value, ttl=_ATTEMPTS_TTL, timeout=5.0
                    )
                self.attempts_dirty = False
                return
            except KeyNotFound:
                self.attempts_revision = 0  # expired or deleted: create it again
            except CasConflict:
                try:
                    entry = await control.get(self.attempts_key, timeout=5.0)
                except NatsAgentsError:
                    break
                self.attempts_revision = 0 if entry is None else entry.revision
                other = _counts(entry.value) if entry is not None else {}
                for seq, count in other.items():
                    if seq in self.attempts:
                        self.attempts[seq] = max(self.attempts[seq], count)
            except NatsAgentsError as exc:
                log.warning("partition %d: storing attempt counts failed: %s", self.n, exc)
                break
        # Not stored: a count may be one short; the message's handling is not held up for it.
        self.attempts_dirty = True

    async def _fresh_consumer(self, stream: str, config: js.ConsumerConfig) -> js.PullConsumer:
        """A new consumer that starts at the oldest unacknowledged message: what an earlier
        owner (or an earlier consumer of ours) held comes first, in stream order. Both calls
        retry for as long as this node owns the partition."""
        t = self.o._t
        await js.delete_consumer(t, stream, config.durable, timeout=float("inf"))
        await js.ensure_consumer(t, stream, config, timeout=float("inf"))
        return js.PullConsumer(t, stream, config.durable)

    async def _drop_waiting(self) -> None:
        """Forget the messages waiting behind each agent's running one (a fresh consumer
        delivers them again) and let the running ones finish."""
        for agent, queue in self.queues.items():
            while len(queue) > self.inflight.get(agent, 1):
                self.held.discard(queue.pop())
        workers = list(self.workers.values())
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        self.room.set()

    def _enqueue(self, msg: js.JsMsg) -> None:
        # Stored subject: <prefix>.inboxp.<n>.<kind>.<token>
        key = msg.subject.rsplit(".", 2)
        agent = f"{key[-2]}.{key[-1]}" if len(key) == 3 else msg.subject
        self.held.add(msg)
        if len(self.held) >= self.o.settings.max_pending:
            self.room.clear()
        queue = self.queues.get(agent)
        if queue is None:
            queue = self.queues[agent] = deque()
        queue.append(msg)
        if agent not in self.workers:
            self.workers[agent] = asyncio.get_running_loop().create_task(self._work(agent, queue))

    async def _work(self, agent: str, queue: deque[js.JsMsg]) -> None:
        limit = self.o.settings.forward_batch
        kind = agent.split(".", 1)[0]
        try:
            while queue:
                msg = queue[0]
                done = 1
                try:
                    batchable = limit > 1 and len(queue) > 1 and not self._suspect(msg) and kind not in self.o.unbatched
                    batch = self._take(queue, limit) if batchable else [msg]
                    self.inflight[agent] = len(batch)
                    if len(batch) > 1:
                        done = await self._process_batch(batch)
                    else:
                        self.o._metrics.durable_batches.labels(kind).observe(1)
                        await self._process(msg)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("partition %d: handling stream message %d failed", self.n, msg.stream_seq)
                for _ in range(min(done, len(queue))):
                    self.held.discard(queue.popleft())
                self.room.set()
        finally:
            self.inflight.pop(agent, None)
            self.workers.pop(agent, None)
            if not queue:
                self.queues.pop(agent, None)

    async def _keep_alive(self) -> None:
        """Renew the ack deadline of every message waiting or running here."""
        interval = self.o.settings.ack_wait / 3
        while True:
            await asyncio.sleep(interval)
            for msg in list(self.held):
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            if self.attempts_dirty:
                await self._store_attempts()

    async def _hand_back(self) -> None:
        """Stop: let each agent's running message finish (bounded), give the rest back."""
        waiting: list[js.JsMsg] = []
        for agent, queue in self.queues.items():
            busy = self.inflight.get(agent, 1)
            waiting.extend(list(queue)[busy:])
            while len(queue) > busy:
                queue.pop()
        workers = list(self.workers.values())
        if workers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.o.settings.attempt_timeout):
                    await asyncio.gather(*workers, return_exceptions=True)
        unfinished = dict(self.running)  # attempts cut short: they count
        for task in workers:
            task.cancel()
        # Tell the next owner how often each message it gets back was tried: 0 for those
        # never started here (unless an earlier owner had them), so none is counted twice.
        records = {m.stream_seq: self.attempts.get(m.stream_seq, 1) if self._suspect(m) else 0 for m in waiting}
        records.update(unfinished)
        if records:
            self.attempts.update(records)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._store_attempts()
        for msg in sorted(waiting, key=lambda m: m.stream_seq):
            with contextlib.suppress(Exception):
                await msg.nak()
        self.held.clear()

    def _take(self, queue: deque[js.JsMsg], limit: int) -> list[js.JsMsg]:
        """The messages at the head of an agent's queue that go in one batch: at most
        ``limit``, within ``_BATCH_BYTES``, none whose ``message_ttl`` has passed."""
        out: list[js.JsMsg] = []
        size = 0
        now_ms = time.time() * 1000
        for msg in queue:
            size += len(msg.data) + 256 + sum(len(k) + len(v) for k, v in (msg.headers or {}).items())
            if out and (len(out) >= limit or size > min(_BATCH_BYTES, self.o._t.max_payload // 2)):
                break
            expires = (msg.headers or {}).get(h.DEADLINE, "")
            if out and expires.isdigit() and now_ms >= int(expires):
                break  # it goes to the dead letters on its own
            if out and self._suspect(msg):
                break  # its attempt is recorded first, on its own
            out.append(msg)
        return out

    @staticmethod
    def _prepare(msg: js.JsMsg) -> tuple[dict[str, str], str, str, str, str]:
        """The headers to forward (``Nats-*``, ``Na-Reply-To``, priority and reply mode
        removed; ``Na-Stream-Seq`` added), the reply subject, kind, token and action."""
        hdrs = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        hdrs.pop(h.OWNER_MAC, None)  # ours is added when it goes out
        reply_to = hdrs.pop(h.REPLY_TO, "")
        hdrs.pop(h.REPLY_MODE, None)  # the owner waits for the result
        hdrs.pop(h.PRIORITY, None)  # the stream's order is the agent's order
        parts = msg.subject.split(".")
        hdrs[h.STREAM_SEQ] = str(msg.stream_seq)
        return hdrs, reply_to, parts[-2], parts[-1], hdrs.get(h.ACTION, "")

    def _refusal(self, reply_to: str, msg: js.JsMsg) -> str | None:
        """Why a stored message must not run (it goes to the dead letters), or ``None``.
        Its reply must go to a caller's inbox: the agent's answer would otherwise go
        where the sender named with our rights (``$KV.…``, a node's control subject).
        And ``Na-Batch`` is the owner's order, not a caller's: with it, a caller's
        body would reach the host as items carrying stream sequences of its choosing."""
        if reply_to and not self.o._t.may_answer(reply_to):
            return f"{h.REPLY_TO} {reply_to[:120]!r} is not an inbox subject"
        if h.BATCH in (msg.headers or {}):
            return f"{h.BATCH} is set by partition owners only, not on a stored message"
        return None

    async def _process_batch(self, msgs: list[js.JsMsg]) -> int:
        for msg in msgs:  # attempts under way (a hand-back records them if cut short)
            self.running[msg.stream_seq] = max(0, msg.num_delivered - 1) + 1
        done = await self._batch(msgs)
        for msg in msgs[done:]:
            self.running.pop(msg.stream_seq, None)  # not tried: they wait in the queue
        return done

    def _unbatch(self, kind: str, code: str) -> int:
        """A batch of ``kind`` failed as a whole in a way batching itself causes: a host
        without §15.4, or a request or reply over ``max_payload``. From now on that kind's
        messages go one by one; those of this batch are sent again (none is counted)."""
        log.warning("partition %d: a batch to %s failed (%s): sending its messages one by one", self.n, kind, code)
        self.o.unbatched.add(kind)
        return 0

    async def _batch(self, msgs: list[js.JsMsg]) -> int:
        """Hand ``msgs`` (one agent's, in stream order) to the agent in one batch request
        (wire.batch). Each message the agent applied is answered and acknowledged; the
        first that failed goes on as a single message (retries, dead letters). Returns
        how many of ``msgs``, from the first, are finished: the rest stay queued."""
        o = self.o
        s = o.settings
        head = msgs[0]
        expires = (head.headers or {}).get(h.DEADLINE, "")
        if expires.isdigit() and time.time() * 1000 >= int(expires):
            await self._process(head)  # dead-lettered unrun
            return 1
        prepared = [self._prepare(m) for m in msgs]
        for i, (p, m) in enumerate(zip(prepared, msgs, strict=True)):
            if self._refusal(p[1], m) is not None:
                if i == 0:
                    await self._process(head)  # dead-lettered as bad_request, unrun
                    return 1
                del prepared[i:], msgs[i:]  # batch the ones before it; it goes alone
                break
        _, _, kind, token, _ = prepared[0]
        try:
            agent_id = decode_id(token)
        except NatsAgentsError:
            await self._process(head)  # dead-lettered as bad_request
            return 1
        o._metrics.durable_batches.labels(kind).observe(len(msgs))
        subject = agent_subject(o.prefix, kind, agent_id)
        block, body = wire_batch.batch_request(
            [(p[0], m.data) for p, m in zip(prepared, msgs, strict=True)], owner_key=o.owner_key, subject=subject
        )
        attempt_first = max(0, head.num_delivered - 1) + 1
        try:
            reply = await o._caller.forward(
                subject,
                body,
                block,
                time.time() + s.attempt_timeout,
                kind,
                agent_id,
                prepared[0][4],
            )
        except AgentError as exc:
            if exc.code in _NO_BATCHES:
                return self._unbatch(kind, exc.code)
            await self._process(head, first=(exc.code, exc.message, None), attempt=attempt_first)
            return 1
        except NatsAgentsError as exc:
            await self._process(head, first=("unavailable", str(exc), None), attempt=attempt_first)
            return 1
        code = (reply.headers or {}).get(h.STATUS, h.STATUS_OK)
        if code in _NO_BATCHES:
            return self._unbatch(kind, code)
        if code != h.STATUS_OK:  # the batch as a whole was refused: the head's outcome
            await self._process(head, first=(code, "", reply), attempt=attempt_first)
            return 1
        try:
            answers = wire_batch.parse_batch_reply(reply.headers, reply.data, len(msgs))
            if not answers:
                raise ProtocolError("no item answered")
        except ProtocolError as exc:
            text = f"malformed batch reply: {exc}"
            await self._process(head, first=("unavailable", text, None), attempt=attempt_first)
            return 1
        for i, (rh, rb) in enumerate(answers):
            msg = msgs[i]
            item_code = rh.get(h.STATUS, h.STATUS_OK)
            if item_code in (h.STATUS_OK, "already_applied"):
                reply_to = prepared[i][1]
                if reply_to:
                    await self._answer(reply_to, rh, rb)
                await self._ack(msg)
                o._metrics.durable.labels(kind, "ok" if item_code == h.STATUS_OK else "already_applied").inc()
                continue
            await self._process(msg, first=(item_code, "", _Reply(rh, rb)), attempt=max(0, msg.num_delivered - 1) + 1)
            return i + 1
        return len(answers)

    async def _process(
        self, msg: js.JsMsg, first: tuple[str, str, Any] | None = None, attempt: int | None = None
    ) -> None:
        """Hand one message to its agent until it is applied, dead-lettered or this owner
        stops. ``first``: the outcome ``(code, text, reply)`` of an attempt already made
        (in a batch), counted as attempt number ``attempt``."""
        o = self.o
        s = o.settings
        hdrs, reply_to, kind, token, action = self._prepare(msg)
        refusal = self._refusal(reply_to, msg)
        if refusal is not None:
            await self._dead(msg, hdrs, reply_to, "bad_request", refusal, 1, None)  # (_answer checks reply_to)
            return
        try:
            agent_id = decode_id(token)
        except NatsAgentsError as exc:
            await self._dead(msg, hdrs, reply_to, "bad_request", str(exc), 1, None)
            return
        subject = agent_subject(o.prefix, kind, agent_id)
        if o.owner_key is not None:
            hdrs[h.OWNER_MAC] = owner_mac(o.owner_key, subject, hdrs, msg.data)
        block = envelope.encode_headers(hdrs)
        suspect = self._suspect(msg)
        if first is not None and attempt is not None:
            attempt -= 1
        elif suspect:
            # An earlier owner delivered it (and may have died running it): its recorded
            # attempts, or one. Counted before each attempt, so a crash is counted too.
            attempt = max(self.attempts.get(msg.stream_seq, 1), msg.num_delivered - 1)
            if attempt >= s.max_deliver:
                await self._dead(
                    msg,
                    hdrs,
                    reply_to,
                    "unavailable",
                    f"delivered {attempt} times without an answer: its handler may be crashing its host",
                    attempt,
                    None,
                )
                return
        else:
            attempt = max(0, msg.num_delivered - 1)  # deliveries of this owner's consumer
        expires = hdrs.get(h.DEADLINE, "")
        while True:
            if first is None and expires.isdigit() and time.time() * 1000 >= int(expires):
                await self._dead(
                    msg, hdrs, reply_to, "timeout", "its message_ttl passed before it could run", attempt, None
                )
                return
            attempt += 1
            reply: Any = None
            if first is not None:
                code, text, reply = first
                first = None
            else:
                if suspect:
                    await self._count_attempt(msg, attempt - 1)
                self.running[msg.stream_seq] = attempt
                try:
                    reply = await o._caller.forward(
                        subject, msg.data, block, time.time() + s.attempt_timeout, kind, agent_id, action
                    )
                    code = (reply.headers or {}).get(h.STATUS, h.STATUS_OK)
                    text = ""
                except AgentError as exc:
                    code, text = exc.code, exc.message
                except NatsAgentsError as exc:
                    code, text = "unavailable", str(exc)
            if code in (h.STATUS_OK, "already_applied"):
                if reply_to:
                    await self._answer(reply_to, reply.headers, reply.data)
                await self._ack(msg)
                o._metrics.durable.labels(kind, "ok" if code == h.STATUS_OK else "already_applied").inc()
                return
            if code in PERMANENT or attempt >= s.max_deliver:
                await self._dead(msg, hdrs, reply_to, code, text or _error_text(reply), attempt, reply)
                return
            o._metrics.durable.labels(kind, "retried").inc()
            await asyncio.sleep(s.delay(attempt))

    async def _ack(self, msg: js.JsMsg) -> None:
        self.running.pop(msg.stream_seq, None)
        if self.attempts:
            self._forget_attempts(msg)
        # A plain ack (no round trip): the agent's next message need not wait for the
        # server's confirmation. An ack that is lost brings the message back after
        # ack_wait: the agent's state refuses it (exactly-once) or it runs once more
        # (at-least-once): both within the guarantee.
        try:
            await msg.ack()
        except Exception as exc:
            log.warning("partition %d: ack of stream message %d failed: %s", self.n, msg.stream_seq, exc)

    async def _answer(self, reply_to: str, headers: Any, data: bytes) -> None:
        with contextlib.suppress(NatsAgentsError):
            await self.o._t.publish_reply(reply_to, data, headers=headers, on=f"partition {self.n}")

    async def _dead(
        self,
        msg: js.JsMsg,
        hdrs: dict[str, str],
        reply_to: str,
        code: str,
        text: str,
        attempts: int,
        reply: Any,
    ) -> None:
        o = self.o
        parts = msg.subject.split(".")
        kind, token = parts[-2], parts[-1]
        letter = dict(hdrs)
        letter.pop(h.STREAM_SEQ, None)
        letter[DLQ_ERROR] = code
        letter[DLQ_REASON] = " ".join(text.split())[:512] or code
        letter[DLQ_DELIVERIES] = str(attempts)
        letter[DLQ_STREAM_SEQ] = str(msg.stream_seq)
        letter[DLQ_SUBJECT] = f"{o.prefix}.inbox.{kind}.{token}"
        letter[DLQ_TIME] = str(int(time.time() * 1000))
        try:
            await js.publish(
                o._t,
                dead_letter_subject(o.prefix, kind, token),
                msg.data,
                msg_id=f"dlq-{msg.stream_seq}",
                headers=letter,
                timeout=10.0,
                expected_stream=dlq_stream(o.prefix),
            )
        except Exception as exc:
            log.error("partition %d: dead letter of stream message %d not stored: %s", self.n, msg.stream_seq, exc)
            return  # not acknowledged: it comes back after ack_wait
        log.warning(
            "stream message %d to %s/%s dead-lettered after %d attempt(s): %s: %s",
            msg.stream_seq,
            kind,
            token,
            attempts,
            code,
            letter[DLQ_REASON],
        )
        if reply_to:
            if reply is not None:
                await self._answer(reply_to, reply.headers, reply.data)
            else:
                hdrs_out, body = envelope.error_reply(
                    code, text, agent=f"{kind}/{token}", details={"dead_letter": True, "stream_seq": msg.stream_seq}
                )
                await self._answer(reply_to, hdrs_out, body)
        await self._ack(msg)
        o._metrics.durable.labels(kind, "dead_letter").inc()


class _Reply:
    """An item of a batch reply, shaped like a reply message."""

    __slots__ = ("data", "headers")

    def __init__(self, headers: dict[str, str], data: bytes) -> None:
        self.headers = headers
        self.data = data


def _counts(value: bytes, key: str = "") -> dict[int, int]:
    """The stored attempt counts (``{stream seq: attempts}``, 0: handed back untried);
    malformed entries are skipped (with ``key``, garbage is logged)."""
    try:
        raw = codec.decode(value)
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        if key:
            records.garbage(log, "attempt counts", key, "not a map")
        return {}
    return {
        k: v for k, v in raw.items() if type(k) is int and type(v) is int and 0 < k <= records.MAX_COUNTER and v >= 0
    }


def _stream_seq(position: Any) -> int:
    """``stream_seq`` of a consumer info's ``delivered`` or ``ack_floor`` (0 if absent)."""
    seq = position.get("stream_seq") if isinstance(position, dict) else None
    return seq if type(seq) is int and seq > 0 else 0


def _error_text(reply: Any) -> str:
    if reply is None:
        return ""
    try:
        envelope.parse_reply(reply.headers, reply.data)
    except AgentError as exc:
        return exc.message
    return ""
