"""One inbox partition while its lease is held: a fresh pull consumer (oldest
unacknowledged message first), per-agent FIFO queues, forwarding each message — or a batch
of an agent's waiting messages — to its agent (signed with the owner key), then the answer
to ``Na-Reply-To``, the ack, a retry with backoff, or a dead letter (docs/delivery.md,
protocol §15.2 to §15.4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import (
    ALREADY_APPLIED,
    BAD_REQUEST,
    NOT_FOUND,
    PAYLOAD_TOO_LARGE,
    TIMEOUT,
    UNAUTHORIZED,
    UNAVAILABLE,
    UNKNOWN_ACTION,
    AgentError,
    NatsAgentsError,
    ProtocolError,
)
from ..observability import Metrics
from ..runtime.caller import Caller
from ..runtime.exactly_once import SETTLED
from ..transport import Transport
from ..transport import jetstream as js
from ..transport.kv import Bucket
from ..wire import batch as wire_batch
from ..wire import envelope
from ..wire import headers as h
from ..wire.identity import expires_of, is_signed
from ..wire.ids import decode_id
from ..wire.owner import owner_mac
from ..wire.subjects import agent_subject, dead_letter_subject, partition_subject
from .attempts import AttemptCounts
from .settings import DeliverySettings, dlq_stream, inbox_stream

__all__ = ["PERMANENT", "Owner", "Partition"]

log = logging.getLogger("natsagents.delivery")

#: Error codes that no retry can fix: the message goes to the dead letters at once.
PERMANENT = frozenset({BAD_REQUEST, UNKNOWN_ACTION, NOT_FOUND, PAYLOAD_TOO_LARGE, UNAUTHORIZED})
#: Codes a whole batch may be refused with because of batching itself (a host without
#: §15.4, or a batch over max_payload): the kind's messages then go one by one.
_NO_BATCHES = frozenset({BAD_REQUEST, UNKNOWN_ACTION, PAYLOAD_TOO_LARGE})
#: Most bytes (bodies and headers) of the messages one batch request carries.
_BATCH_BYTES = 256 * 1024


class Owner(Protocol):
    """What a partition needs of the node's owners (``delivery.owners.PartitionOwners``)."""

    transport: Transport
    caller: Caller
    control: Bucket
    metrics: Metrics
    settings: DeliverySettings
    prefix: str
    node_id: str
    owner_key: bytes | None
    unbatched: set[str]
    running: dict[int, Partition]


class _LeaseGone(Exception):
    """The partition's lease no longer holds: settle nothing more (the next holder will)."""


class Partition:
    """Consumes one partition while its lease is held (``run`` is the lease's task).

    ``holds`` tells whether the lease still holds (``cluster.leader.LeaderLease.holds``).
    Nothing is forwarded, answered or acknowledged once it does not: a lease that was
    lost (its key overwritten or deleted, or renewals that went unanswered) may have a
    new holder already, consuming the same messages afresh.
    """

    def __init__(self, owners: Owner, n: int, holds: Callable[[], bool] = lambda: True) -> None:
        self.o = owners
        self.n = n
        self.holds = holds
        self.queues: dict[str, deque[js.JsMsg]] = {}
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.held: set[js.JsMsg] = set()  # fetched and not yet acknowledged
        # Attempts of earlier owners (delivery.attempts): stream seq → attempts so far.
        self.attempts = AttemptCounts(owners.control, n)
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
        await self.attempts.learn(o.transport, stream, durable)
        consumer = await self._fresh_consumer(stream, config)
        o.running[self.n] = self
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
            if o.running.get(self.n) is self:
                del o.running[self.n]
            keepalive.cancel()
            try:
                await self._hand_back()
            finally:
                # Also when a lost lease cuts the hand-back short (cancelled, again and
                # again): an open consumer stays subscribed and keeps what reaches it.
                with contextlib.suppress(Exception):
                    await consumer.close()
            log.info("%s gave up inbox partition %d", o.node_id, self.n)

    async def _fresh_consumer(self, stream: str, config: js.ConsumerConfig) -> js.PullConsumer:
        """A new consumer that starts at the oldest unacknowledged message: what an earlier
        owner (or an earlier consumer of ours) held comes first, in stream order. Both calls
        retry for as long as this node owns the partition."""
        t = self.o.transport
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
                    batchable = (
                        limit > 1
                        and len(queue) > 1
                        and not self.attempts.is_suspect(msg)
                        and kind not in self.o.unbatched
                    )
                    batch = self._take(queue, limit) if batchable else [msg]
                    self.inflight[agent] = len(batch)
                    if len(batch) > 1:
                        done = await self._process_batch(batch)
                    else:
                        self.o.metrics.durable_batches.labels(kind).observe(1)
                        await self._process(msg)
                except asyncio.CancelledError:
                    raise
                except _LeaseGone:
                    log.info("partition %d: lease lost while handling stream message %d", self.n, msg.stream_seq)
                    return
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
            if self.attempts.dirty:
                await self.attempts.store()

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
        records = {
            m.stream_seq: self.attempts.get(m.stream_seq, 1) if self.attempts.is_suspect(m) else 0 for m in waiting
        }
        records.update(unfinished)
        if records:
            self.attempts.record(records)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self.attempts.store()
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
            if out and (len(out) >= limit or size > min(_BATCH_BYTES, self.o.transport.max_payload // 2)):
                break
            expires = (msg.headers or {}).get(h.DEADLINE, "")
            if out and expires.isdigit() and now_ms >= int(expires):
                break  # it goes to the dead letters on its own
            if out and self.attempts.is_suspect(msg):
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

    def _refusal(self, reply_to: str, msg: js.JsMsg) -> tuple[str, str] | None:
        """Why a stored message must not run (it goes to the dead letters): ``(code,
        reason)``, or ``None``. Its reply must go to a caller's inbox: the agent's answer
        would otherwise go where the sender named with our rights (``$KV.…``, a node's
        control subject). ``Na-Batch`` is the owner's order, not a caller's: with it, a
        caller's body would reach the host as items carrying stream sequences of its
        choosing. And a caller signature must have been fresh when the message was stored,
        valid for no longer than the stream's duplicate window, under ``Nats-Msg-Id`` =
        ``Na-Msg-Id``: then a copy stored again before the signature expires is dropped by
        the stream as a duplicate, and hosts need not check freshness (protocol §15.2)."""
        headers = msg.headers or {}
        if reply_to and not self.o.transport.may_answer(reply_to):
            return BAD_REQUEST, f"{h.REPLY_TO} {reply_to[:120]!r} is not an inbox subject"
        if h.BATCH in headers:
            return BAD_REQUEST, f"{h.BATCH} is set by partition owners only, not on a stored message"
        if is_signed(headers):
            expires = expires_of(headers)
            stored_ms = int(msg.timestamp * 1000)
            if expires is None:
                return UNAUTHORIZED, f"malformed caller signature: {h.CALLER_EXPIRES} must be Unix ms"
            if headers.get("Nats-Msg-Id") != headers.get(h.MESSAGE_ID):
                return UNAUTHORIZED, f"a signed durable message is stored with Nats-Msg-Id = its {h.MESSAGE_ID}"
            if expires <= stored_ms:
                return UNAUTHORIZED, f"the caller signature had expired {stored_ms - expires} ms before it was stored"
            if expires > stored_ms + int(self.o.settings.duplicate_window * 1000):
                return UNAUTHORIZED, (
                    f"the caller signature was valid for longer than the inbox's duplicate window "
                    f"({self.o.settings.duplicate_window:g} s) when it was stored"
                )
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
        o.metrics.durable_batches.labels(kind).observe(len(msgs))
        subject = agent_subject(o.prefix, kind, agent_id)
        block, body = wire_batch.batch_request(
            [(p[0], m.data) for p, m in zip(prepared, msgs, strict=True)], owner_key=o.owner_key, subject=subject
        )
        attempt_first = max(0, head.num_delivered - 1) + 1
        self._check()
        try:
            reply = await o.caller.forward(
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
            await self._process(head, first=(UNAVAILABLE, str(exc), None), attempt=attempt_first)
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
            await self._process(head, first=(UNAVAILABLE, text, None), attempt=attempt_first)
            return 1
        for i, (rh, rb) in enumerate(answers):
            msg = msgs[i]
            item_code = rh.get(h.STATUS, h.STATUS_OK)
            if item_code in SETTLED:
                reply_to = prepared[i][1]
                if reply_to:
                    await self._answer(reply_to, rh, rb)
                await self._ack(msg)
                o.metrics.durable.labels(kind, "ok" if item_code == h.STATUS_OK else ALREADY_APPLIED).inc()
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
            await self._dead(msg, hdrs, reply_to, *refusal, 1, None)  # (_answer checks reply_to)
            return
        try:
            agent_id = decode_id(token)
        except NatsAgentsError as exc:
            await self._dead(msg, hdrs, reply_to, BAD_REQUEST, str(exc), 1, None)
            return
        subject = agent_subject(o.prefix, kind, agent_id)
        if o.owner_key is not None:
            hdrs[h.OWNER_MAC] = owner_mac(o.owner_key, subject, hdrs, msg.data)
        block = envelope.encode_headers(hdrs)
        suspect = self.attempts.is_suspect(msg)
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
                    UNAVAILABLE,
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
                    msg, hdrs, reply_to, TIMEOUT, "its message_ttl passed before it could run", attempt, None
                )
                return
            attempt += 1
            reply: Any = None
            if first is not None:
                code, text, reply = first
                first = None
            else:
                if suspect:
                    await self.attempts.count(msg, attempt - 1)
                self.running[msg.stream_seq] = attempt
                self._check()
                try:
                    reply = await o.caller.forward(
                        subject, msg.data, block, time.time() + s.attempt_timeout, kind, agent_id, action
                    )
                    code = (reply.headers or {}).get(h.STATUS, h.STATUS_OK)
                    text = ""
                except AgentError as exc:
                    code, text = exc.code, exc.message
                except NatsAgentsError as exc:
                    code, text = UNAVAILABLE, str(exc)
            if code in SETTLED:
                if reply_to:
                    await self._answer(reply_to, reply.headers, reply.data)
                await self._ack(msg)
                o.metrics.durable.labels(kind, "ok" if code == h.STATUS_OK else ALREADY_APPLIED).inc()
                return
            if code in PERMANENT or attempt >= s.max_deliver:
                await self._dead(msg, hdrs, reply_to, code, text or _error_text(reply), attempt, reply)
                return
            o.metrics.durable.labels(kind, "retried").inc()
            await asyncio.sleep(s.delay(attempt))

    def _check(self) -> None:
        if not self.holds():
            raise _LeaseGone(f"the lease of partition {self.n} no longer holds")

    async def _ack(self, msg: js.JsMsg) -> None:
        self._check()
        self.running.pop(msg.stream_seq, None)
        if self.attempts:
            self.attempts.forget(msg)
        # A plain ack (no round trip): the agent's next message need not wait for the
        # server's confirmation. An ack that is lost brings the message back after
        # ack_wait: the agent's state refuses it (exactly-once) or it runs once more
        # (at-least-once): both within the guarantee.
        try:
            await msg.ack()
        except Exception as exc:
            log.warning("partition %d: ack of stream message %d failed: %s", self.n, msg.stream_seq, exc)

    async def _answer(self, reply_to: str, headers: Any, data: bytes) -> None:
        self._check()
        with contextlib.suppress(NatsAgentsError):
            await self.o.transport.publish_reply(reply_to, data, headers=headers, on=f"partition {self.n}")

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
        self._check()
        parts = msg.subject.split(".")
        kind, token = parts[-2], parts[-1]
        letter = dict(hdrs)
        letter.pop(h.STREAM_SEQ, None)
        letter[h.DLQ_ERROR] = code
        letter[h.DLQ_REASON] = " ".join(text.split())[:512] or code
        letter[h.DLQ_DELIVERIES] = str(attempts)
        letter[h.DLQ_STREAM_SEQ] = str(msg.stream_seq)
        letter[h.DLQ_SUBJECT] = f"{o.prefix}.inbox.{kind}.{token}"
        letter[h.DLQ_TIME] = str(int(time.time() * 1000))
        try:
            await js.publish(
                o.transport,
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
            letter[h.DLQ_REASON],
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
        o.metrics.durable.labels(kind, "dead_letter").inc()


class _Reply:
    """An item of a batch reply, shaped like a reply message."""

    __slots__ = ("data", "headers")

    def __init__(self, headers: dict[str, str], data: bytes) -> None:
        self.headers = headers
        self.data = data


def _error_text(reply: Any) -> str:
    if reply is None:
        return ""
    try:
        envelope.parse_reply(reply.headers, reply.data)
    except AgentError as exc:
        return exc.message
    return ""
