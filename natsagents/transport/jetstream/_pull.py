"""The pull consumer: fetches batches over one private inbox subscription."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from ...errors import (
    CallTimeout,
    ConfigurationError,
    ConsumerNotFound,
    JetStreamError,
    MalformedAckSubject,
    MeshClosed,
    StreamNotFound,
    TransportError,
)
from ..connection import Inbound, Subscription, Transport
from ._common import _LOOKUP_TIMEOUT, _NS, _name, _seconds
from ._consumers import consumer_info
from ._messages import JsMsg

log = logging.getLogger("natsagents.transport.jetstream")

_FETCH_GRACE = 1.0  # how long after ``expires`` a fetch waits for the server's 408
_ENDED_EARLY = ("Leadership Change", "Server Shutdown", "Message Size Exceeds")  # 409s that end a fetch


def _header(headers: Mapping[Any, str] | None, name: str) -> str:
    """A header by name (nats-py keys some status headers with a ``str`` enum)."""
    for key, value in (headers or {}).items():
        if key == name:
            return value
    return ""


class _Pull:
    """One outstanding pull request."""

    __slots__ = ("done", "ended", "error", "inbox", "last_seen", "loop", "msgs", "want")

    def __init__(self, inbox: str, want: int, loop: asyncio.AbstractEventLoop) -> None:
        self.inbox = inbox
        self.want = want
        self.loop = loop
        self.msgs: list[JsMsg] = []
        self.done = asyncio.Event()
        self.error: JetStreamError | None = None
        self.ended = ""  # why the server ended the request
        self.last_seen = loop.time()

    def add(self, msg: JsMsg) -> None:
        self.msgs.append(msg)
        self.last_seen = self.loop.time()
        if len(self.msgs) >= self.want:
            self.done.set()

    def status(self, code: str, description: str, what: str) -> None:
        self.last_seen = self.loop.time()
        if code == "100":  # idle heartbeat
            return
        self.ended = f"{code} {description}".strip()
        if code in ("404", "408") or (code == "409" and description.startswith(_ENDED_EARLY)):
            pass  # no messages, request expired, or ended early (fetch again)
        elif code == "409" and description == "Consumer Deleted":
            self.error = ConsumerNotFound(f"{what}: the consumer was deleted", status=409)
        elif code == "503":
            self.error = JetStreamError(f"{what}: no consumer answers pull requests", status=503)
        else:
            self.error = JetStreamError(f"{what}: the server ended the pull request: {self.ended}", status=_int(code))
        self.done.set()


def _int(code: str) -> int | None:
    return int(code) if code.isdigit() else None


class PullConsumer:
    """Fetches batches from a durable pull consumer (create it with :func:`ensure_consumer`).

    One private inbox subscription (made on the first fetch) serves every fetch, each
    with its own reply subject. Fetches run one at a time. Deliveries that arrive when no
    fetch waits for them (a fetch that gave up before the server ended its request) are
    kept for the next fetch; :meth:`close` hands any left back to the server (NAK).

    Use ``async with PullConsumer(transport, stream, durable) as c: msgs = await c.fetch(…)``.
    """

    def __init__(self, transport: Transport, stream: str, durable: str) -> None:
        """
        Raises:
            ConfigurationError: invalid stream or consumer name.
        """
        self._t = transport
        self.stream = _name("stream", stream)
        self.durable = _name("consumer", durable)
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._prefix = f"{transport.settings.inbox_prefix}.{secrets.token_hex(8)}."
        self._tokens = itertools.count(1)
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()
        self._pull: _Pull | None = None
        self._buffer: deque[JsMsg] = deque()
        self._closed = False

    def __repr__(self) -> str:
        return f"<PullConsumer {self.stream}/{self.durable}>"

    async def __aenter__(self) -> PullConsumer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _on_msg(self, msg: Inbound) -> None:
        """Runs in the connection's reader task: route a delivery or status message."""
        if self._closed:
            return  # not kept: the server delivers it again after ack_wait
        pull = self._pull
        if not msg.reply:
            code = (msg.headers or {}).get("Status")
            if code and pull is not None and msg.subject == pull.inbox:
                pull.status(code, _header(msg.headers, "Description"), repr(self))
            return  # statuses of requests given up on
        try:
            delivery = JsMsg._from(self._t, msg)
        except MalformedAckSubject as exc:
            log.warning("%r: dropped a delivery: %s", self, exc)
            return
        if pull is not None and len(pull.msgs) < pull.want:
            pull.add(delivery)
        else:
            self._buffer.append(delivery)

    async def fetch(
        self, batch: int, expires: float, no_wait: bool = False, *, heartbeat: float | None = None
    ) -> list[JsMsg]:
        """Up to ``batch`` messages.

        Waits until ``batch`` messages came or ``expires`` seconds passed. With
        ``no_wait`` it returns as soon as no further message is available right away;
        when none is, it waits up to ``expires`` for the first (nats-server 2.15 answers
        such a request at once only when it has messages).

        An error status from the server ends the batch: it is raised when no message came,
        else the messages are returned (and the next fetch meets the error).

        Args:
            batch: most messages to return, >= 1.
            expires: seconds the server holds the request.
            no_wait: do not wait for a full batch.
            heartbeat: seconds between the server's idle heartbeats; two missed ones end
                the fetch early (the server or the route is gone). ``None``: a quarter of
                ``expires`` (at most 5 s) when ``expires`` is at least 4 s, else none.

        Returns:
            The messages, in delivery order; ``[]`` when none came within ``expires``.

        Raises:
            ConsumerNotFound: the consumer does not exist (or was deleted mid-fetch).
            StreamNotFound: the stream does not exist.
            JetStreamError: the server refused the request (``status`` 400/409), or the
                consumer is unavailable (``status`` 503, leader election: transient).
            ConfigurationError: invalid arguments. MeshClosed.
        """
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ConfigurationError(f"batch must be an int >= 1, not {batch!r}")
        expires_ns = _seconds("expires", expires)
        if heartbeat is None and expires >= 4:
            heartbeat = min(expires / 4, 5.0)
        if heartbeat is not None:
            if _seconds("heartbeat", heartbeat) * 2 > expires_ns:
                raise ConfigurationError(f"heartbeat ({heartbeat} s) must be at most half of expires ({expires} s)")
        async with self._lock:
            if self._closed:
                raise MeshClosed(f"{self!r} is closed")
            if self._sub is None:
                self._sub = await self._t.subscribe(self._prefix + "*", self._on_msg)
            out: list[JsMsg] = []
            while self._buffer and len(out) < batch:
                out.append(self._buffer.popleft())
            if len(out) == batch:
                return out
            loop = asyncio.get_running_loop()
            pull = _Pull(self._prefix + str(next(self._tokens)), batch - len(out), loop)
            body: dict[str, Any] = {"batch": pull.want, "expires": expires_ns}
            if no_wait:
                body["no_wait"] = True
            if heartbeat is not None:
                body["idle_heartbeat"] = round(heartbeat * _NS)
            self._pull = pull
            try:
                await self._t.publish(self._next_subject, json.dumps(body).encode(), reply=pull.inbox)
                await self._wait(pull, loop.time() + expires + _FETCH_GRACE, heartbeat)
            finally:
                self._pull = None
            out.extend(pull.msgs)
            if pull.error is not None and not out:
                if pull.error.status == 503:
                    raise await self._unavailable(pull.error)
                raise pull.error
            return out

    @staticmethod
    async def _wait(pull: _Pull, until: float, heartbeat: float | None) -> None:
        loop = pull.loop
        while not pull.done.is_set():
            now = loop.time()
            left = until - now
            if heartbeat is not None:
                left = min(left, pull.last_seen + 2 * heartbeat + 0.25 - now)
            if left <= 0:
                return  # expired without the server's 408, or heartbeats missed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await pull.done.wait()

    async def _unavailable(self, error: JetStreamError) -> JetStreamError:
        """No consumer answered: tell a missing consumer or stream from an unavailable one."""
        try:
            await consumer_info(self._t, self.stream, self.durable, timeout=_LOOKUP_TIMEOUT)
        except (ConsumerNotFound, StreamNotFound) as exc:
            missing = type(exc)(f"{self!r}: {exc}", status=exc.status, err_code=exc.err_code)
            missing.__cause__ = error
            return missing
        except (JetStreamError, CallTimeout):
            pass
        return JetStreamError(f"{error} (the consumer exists: its leader may be changing; fetch again)", status=503)

    async def close(self) -> None:
        """Unsubscribe and hand undelivered buffered messages back (NAK). Idempotent."""
        if self._closed:
            return
        self._closed = True
        pull = self._pull
        if pull is not None:
            pull.error = JetStreamError(f"{self!r} closed during a fetch")
            pull.done.set()
        buffered, self._buffer = list(self._buffer), deque()
        if self._sub is not None:
            # Shielded: a cancelled close still unsubscribes (else the subscription, and
            # this consumer, live as long as the connection).
            await asyncio.shield(self._sub.unsubscribe())
        for msg in buffered:
            with contextlib.suppress(TransportError):
                await msg.nak()
