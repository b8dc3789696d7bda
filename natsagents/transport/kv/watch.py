"""Watching a KV bucket: a reconnect-proof iterator over a push consumer we manage ourselves.

nats-py's ``watch()`` is an ordered consumer that notices a lost consumer (server
restart) only through missed heartbeats, ~15 s later (``nats-facts.md``). Here a watch
owns an ephemeral in-memory push consumer (no acks, flow control, idle heartbeats) on a
private inbox, and tracks the last stream sequence it delivered. It drops and recreates
the consumer, resuming right after that sequence, when:

* the connection reconnected (nats-py's reconnect counter moved);
* a consumer sequence is skipped, or a heartbeat reports more deliveries than we saw;
* three heartbeats are missed while connected, or the server sends another status.

Before the initial values are all delivered, a recreated consumer starts again from the
last value per key and skips sequences already delivered; afterwards it starts at the
next sequence. Either way nothing is delivered twice and nothing is skipped. Flow-control
requests are answered only when the iterator reaches them, so a slow reader holds the
server back instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import secrets
from collections import deque
from types import TracebackType
from typing import NamedTuple

from ...errors import CallTimeout, ConfigurationError, JetStreamError, MeshClosed, TransportError
from ..connection import Inbound, Subscription, Transport
from ..jetstream import api_request
from .entry import Entry, operation_of

__all__ = ["Watch"]

_NS = 1_000_000_000
_TOKEN_RE = re.compile(r"[-/_=a-zA-Z0-9]+")
_CREATE_TIMEOUT = 2.0
_DELETE_TIMEOUT = 0.5


class _Meta(NamedTuple):
    consumer: str
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    pending: int


def _ack_meta(reply: str) -> _Meta | None:
    """Parse ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (or
    the 12-token form with domain and account hash)."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        base = 3
    elif len(tokens) >= 12:
        base = 5
    else:
        return None
    try:
        sseq, cseq, ts, pending = (int(t) for t in tokens[base + 2 : base + 6])
    except ValueError:
        return None
    return _Meta(tokens[base], sseq, cseq, ts, pending)


def _validate_pattern(pattern: object) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigurationError(f"invalid key pattern {pattern!r}")
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if token == "*" or (token == ">" and i == len(tokens) - 1) or _TOKEN_RE.fullmatch(token):
            continue
        raise ConfigurationError(f"invalid key pattern {pattern!r}: tokens are key characters, '*', or a final '>'")
    return pattern


def _reconnects(transport: Transport) -> int:
    return int(transport._nc.stats["reconnects"])


class Watch:
    """An async iterator of :class:`Entry` (and one ``None`` marker); see :meth:`Bucket.watch`,
    which makes one for the stream ``stream`` whose keys are subjects ``prefix + key``.

    Attributes:
        restarts: how many times the consumer was recreated (after reconnects, gaps…).
        last_revision: the last stream sequence delivered (tombstones included).
    """

    def __init__(
        self,
        transport: Transport,
        stream: str,
        prefix: str,
        pattern: str,
        *,
        include_history: bool,
        heartbeat: float,
        headers_only: bool,
    ) -> None:
        if not 0.05 <= heartbeat <= 30:
            raise ConfigurationError(f"heartbeat must be within 0.05..30 seconds, not {heartbeat}")
        self._t = transport
        self._stream = stream
        self._prefix = prefix
        self._filter = prefix + _validate_pattern(pattern)
        self._history = include_history
        self._headers_only = headers_only
        self._hb = heartbeat
        self._queue: deque[Inbound] = deque()
        self._wakeup = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._sub: Subscription | None = None
        self._consumer: str | None = None
        self._cseq = 0
        self._initial_total = 0
        self._init_done = False
        self._marker_due = False
        self._need_reset = False
        self._started = False
        self._closed = False
        self._last_activity = 0.0
        self._seen_reconnects = 0
        self.restarts = 0
        self.last_revision = 0

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Watch:
        await self._ensure_started()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching and delete the consumer (best effort; the server also drops it
        after a period of inactivity). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        await self._drop_consumer()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Entry | None:
        if self._closed:
            raise StopAsyncIteration
        try:
            await self._ensure_started()
            return await self._next()
        except BaseException:  # cancellation or failure ends the watch and its consumer
            await self.aclose()
            raise

    async def _ensure_started(self) -> None:
        if not self._started:
            self._started = True
            self._seen_reconnects = _reconnects(self._t)
            await self._recreate()

    # -- iteration -------------------------------------------------------------------

    async def _next(self) -> Entry | None:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._marker_due:
                self._marker_due = False
                return None
            if self._need_reset:
                self._need_reset = False
                self.restarts += 1
                await self._recreate()
            elif not self._queue:
                await self._idle()
            else:
                entry = await self._process(self._queue.popleft())
                if entry is not None:
                    return entry

    async def _idle(self) -> None:
        """Wait up to one heartbeat for messages, then check the consumer's health."""
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._hb):
                await self._wakeup.wait()
        if self._closed or self._queue:
            return
        if self._t.is_closed:
            raise MeshClosed("the NATS connection is closed")
        if not self._t.is_connected:
            return  # wait for the reconnect; the counter tells us when it happened
        reconnects = _reconnects(self._t)
        if reconnects != self._seen_reconnects:
            self._seen_reconnects = reconnects
            self._need_reset = True
        elif self._loop.time() - self._last_activity > 3 * self._hb + 0.1:
            self._need_reset = True

    def _on_message(self, msg: Inbound) -> None:
        """Runs in the connection's reader task: only enqueue."""
        self._queue.append(msg)
        self._last_activity = self._loop.time()
        self._wakeup.set()

    async def _process(self, msg: Inbound) -> Entry | None:
        headers = msg.headers or {}
        if not msg.reply.startswith("$JS.ACK."):  # a status message from the consumer
            status = headers.get("Status")
            if status is None:
                return None  # not from our consumer
            if status != "100":
                self._need_reset = True  # 409 consumer deleted, leader change…
            elif msg.reply:  # flow control: we have consumed everything before it
                await self._reply(msg.reply)
            else:  # idle heartbeat
                stalled = headers.get("Nats-Consumer-Stalled")
                if stalled:
                    await self._reply(stalled)
                last = headers.get("Nats-Last-Consumer", "")
                if last.isdigit() and int(last) != self._cseq:
                    self._need_reset = True
            return None
        meta = _ack_meta(msg.reply)
        if meta is None or meta.consumer != self._consumer:
            return None
        if meta.consumer_seq != self._cseq + 1:
            self._need_reset = True  # a gap: resume after the last sequence delivered
            return None
        self._cseq = meta.consumer_seq
        initial = not self._init_done
        if initial and (meta.pending == 0 or meta.consumer_seq >= self._initial_total):
            self._init_done = True
            self._marker_due = True
        if meta.stream_seq <= self.last_revision:
            return None  # delivered before the consumer was recreated
        self.last_revision = meta.stream_seq
        op = operation_of(headers)
        if op != "put" and initial and not self._history:
            return None  # a tombstone among the current values: the key is just absent
        value = b"" if op != "put" or self._headers_only else msg.data
        return Entry(msg.subject[len(self._prefix) :], value, meta.stream_seq, meta.timestamp_ns / _NS, op)

    async def _reply(self, subject: str) -> None:
        # A lost reply is answered again when a heartbeat reports the consumer stalled.
        with contextlib.suppress(TransportError):
            await self._t.publish(subject, b"")

    # -- the consumer ----------------------------------------------------------------

    async def _recreate(self) -> None:
        """Replace the consumer, retrying transient failures with backoff until it works.

        Raises:
            JetStreamError: the server refused for good (e.g. the bucket was deleted).
            MeshClosed: the connection closed.
        """
        await self._drop_consumer()
        delay = 0.05
        while True:
            try:
                await self._create()
                return
            except MeshClosed:
                raise
            except JetStreamError as exc:
                if not exc.transient:
                    raise
            except (TransportError, CallTimeout):
                pass  # no responders, timeouts: JetStream is not back yet
            await self._drop_consumer()
            if self._closed:
                raise StopAsyncIteration
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # backoff between attempts
            delay = min(delay * 2, 2.0)

    async def _create(self) -> None:
        name = secrets.token_hex(8)
        inbox = f"{self._t.settings.inbox_prefix}.kvw.{name}"
        self._queue.clear()
        self._cseq = 0
        self._consumer = name
        self._sub = await self._t.subscribe(inbox, self._on_message)
        if self._init_done or (self._history and self.last_revision):
            policy = "by_start_sequence"
        else:
            policy = "all" if self._history else "last_per_subject"
        config: dict[str, object] = {
            "name": name,
            "deliver_subject": inbox,
            "deliver_policy": policy,
            "ack_policy": "none",
            "max_deliver": 1,
            "filter_subject": self._filter,
            "replay_policy": "instant",
            "flow_control": True,
            "idle_heartbeat": round(self._hb * _NS),
            "headers_only": self._headers_only,
            "mem_storage": True,
            "num_replicas": 1,
            "inactive_threshold": round(max(10.0, 10 * self._hb) * _NS),
        }
        if policy == "by_start_sequence":
            config["opt_start_seq"] = self.last_revision + 1
        subject = f"$JS.API.CONSUMER.CREATE.{self._stream}.{name}"
        info = await api_request(self._t, subject, {"stream_name": self._stream, "config": config}, _CREATE_TIMEOUT)
        self._last_activity = self._loop.time()
        if self._closed:  # closed while we were creating it
            await self._drop_consumer()
            raise StopAsyncIteration
        if not self._init_done:
            delivered = info.get("delivered") or {}
            self._initial_total = int(delivered.get("consumer_seq", 0)) + int(info.get("num_pending", 0))
            if self._initial_total == 0:
                self._init_done = True
                self._marker_due = True

    async def _drop_consumer(self) -> None:
        sub, name = self._sub, self._consumer
        self._sub = self._consumer = None
        if sub is not None:
            await sub.unsubscribe()
        if name is not None and self._t.is_connected:
            with contextlib.suppress(TransportError, CallTimeout):
                await api_request(self._t, f"$JS.API.CONSUMER.DELETE.{self._stream}.{name}", None, _DELETE_TIMEOUT)
