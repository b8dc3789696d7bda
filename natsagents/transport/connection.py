"""The NATS connection: the only module (with its package) that touches nats-py.

Two things here go beyond a thin wrapper:

* **Direct subscriptions.** nats-py gives each callback subscription its own queue and
  task. We pass nats-py's documented ``future=`` hook a sink object instead, so the
  reader task hands each message straight to our (synchronous, non-blocking) handler:
  no task per subscription (cheap idle agents) and one scheduling hop less per message.
* **A lean request multiplexer.** One wildcard inbox subscription for every reply, a
  dict of futures keyed by a counter token, and timeouts checked in 5 ms slots (one loop
  timer per slot) instead of ``asyncio.wait_for`` (a task per request) or a timer each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from ..errors import (
    CallTimeout,
    ConnectError,
    MeshClosed,
    PayloadTooLarge,
    TransportError,
    Unauthorized,
)
from ..wire.envelope import encode_headers, parse_header_block
from ..wire.subjects import MAX_REPLY_SUBJECT, reply_subject_pattern
from .failures import Failure, classify
from .mux import Inbound, Stalled, _Expired, _ReplyMux, _Resend
from .settings import ConnectSettings

__all__ = ["Inbound", "NoResponders", "Subscription", "Transport"]

log = logging.getLogger("natsagents.transport")


class _Client(Client):
    """nats-py's client, hardened against hostile messages.

    nats-py parses a message's header block and builds the message inside its read loop;
    an exception there (a block shorter than ``NATS/1.0``, bytes that are not UTF-8 in a
    status line or a subject) ends the loop while the socket stays open: the client is
    alive but deaf, a queue member that keeps receiving requests and answers none, until
    a ping timeout minutes later. One 15-byte message from any peer did that. Here every
    message is read on its own: a header block we cannot read becomes a marker header
    (``envelope.MALFORMED``, answered ``bad_request`` by hosts) and any other failure
    drops that one message (counted in ``dropped``), never the connection.
    """

    dropped = 0

    async def _process_headers(self, headers: bytes) -> dict[str, str] | None:
        return parse_header_block(headers) if headers else None

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        try:
            await super()._process_msg(sid, subject, reply, data, headers)
        except Exception as exc:  # never let one message end the read loop
            self.dropped += 1
            _log_dropped(subject, exc)


_last_drop_log = 0.0


def _header_block(headers: Mapping[str, str] | bytes | None) -> bytes:
    """The header block to send: a prebuilt one as is, a mapping encoded, none empty."""
    if type(headers) is bytes:  # the usual case, before the slower Mapping check
        return headers
    return encode_headers(headers) if isinstance(headers, Mapping) else (headers or b"")


def _log_dropped(subject: bytes, exc: BaseException) -> None:
    """Warn about a dropped message at most once a second (a flood must not flood the log)."""
    global _last_drop_log
    now = time.monotonic()
    if now - _last_drop_log >= 1.0:
        _last_drop_log = now
        log.warning("dropped an unreadable message on %r: %s: %s", subject[:120], type(exc).__name__, exc)


Handler = Callable[[Inbound], None]


class NoResponders(TransportError):
    """Nobody is subscribed to the subject of a request (NATS status 503)."""


class _Sink:
    """Stands in for the future nats-py's ``subscribe(future=…)`` expects.

    nats-py calls ``cancelled()`` then ``set_result(msg)`` from its reader task for every
    message; we dispatch synchronously. The handler must not block and must not raise.
    """

    __slots__ = ("_handler", "_subject")

    def __init__(self, subject: str, handler: Handler) -> None:
        self._handler = handler
        self._subject = subject

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def set_result(self, msg: Inbound) -> None:
        try:
            self._handler(msg)
        except Exception:  # never let a handler break nats-py's reader loop
            log.exception("message handler for %s failed", self._subject)


class _ServiceSink(_Sink):
    """A sink for subjects that answer requests: a request whose reply subject is not an
    inbox we may answer (:meth:`Transport.may_answer`) is dropped before its handler sees
    it, so nothing runs on behalf of a sender who pointed the answer somewhere else."""

    __slots__ = ("_transport",)

    def __init__(self, subject: str, handler: Handler, transport: Transport) -> None:
        super().__init__(subject, handler)
        self._transport = transport

    def set_result(self, msg: Inbound) -> None:
        reply = msg.reply
        # Transport.may_answer, inlined: once a request.
        if reply and (len(reply) > MAX_REPLY_SUBJECT or self._transport._answerable(reply) is None):
            self._transport.refused_reply(reply, msg.subject)
            return
        try:  # as _Sink.set_result, inlined: once a request
            self._handler(msg)
        except Exception:
            log.exception("message handler for %s failed", self._subject)


class Subscription:
    """A live subscription; ``await unsubscribe()`` ends it (idempotent)."""

    __slots__ = ("_done", "_sub", "subject")

    def __init__(self, sub: Any, subject: str) -> None:
        self._sub = sub
        self.subject = subject
        self._done = False

    async def unsubscribe(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()

    async def drain(self, timeout: float = 2.0) -> None:
        """Unsubscribe without dropping messages already on their way: the server is told
        first, and the handler keeps receiving until a round trip proves nothing more
        can arrive (a plain unsubscribe drops them, and their requesters wait in vain).
        Falls back to a plain unsubscribe after ``timeout`` (e.g. while disconnected)."""
        if self._done:
            return
        self._done = True
        try:
            await asyncio.wait_for(self._sub.drain(), timeout)
        except (TimeoutError, nats.errors.Error):
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()


@contextlib.contextmanager
def map_errors(subject: str = "") -> Iterator[None]:
    """Translate nats-py exceptions into the natsagents tree."""
    try:
        yield
    except nats.errors.NoRespondersError as exc:
        raise NoResponders(f"no responders on {subject}") from exc
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError) as exc:
        raise MeshClosed("the NATS connection is closed") from exc
    except nats.errors.MaxPayloadError as exc:
        raise PayloadTooLarge(f"message to {subject} exceeds the server's max_payload") from exc
    except nats.errors.OutboundBufferLimitError as exc:
        raise TransportError("disconnected from NATS and the outbound buffer is full") from exc
    except nats.errors.TimeoutError as exc:
        raise CallTimeout(f"NATS operation on {subject} timed out") from exc
    except nats.errors.Error as exc:
        raise TransportError(f"NATS error on {subject}: {exc}") from exc


class Transport:
    """One NATS connection with direct subscriptions and a request multiplexer.

    Create with :meth:`connect`; end with :meth:`close`.
    """

    def __init__(self, nc: Client, settings: ConnectSettings) -> None:
        self._nc = nc
        self.settings = settings
        self._loop = asyncio.get_running_loop()
        self._mux: _ReplyMux | None = None
        self._mux_lock = asyncio.Lock()
        self._closed = False
        self.last_error: BaseException | None = None
        self.resends = 0  # requests published again for want of a reply
        self.on_resend: Callable[[], None] | None = None
        self._resend_tasks: set[asyncio.Task[None]] = set()
        self._answer_prefixes = settings.answer_prefixes
        # ``wire.subjects.is_reply_subject`` for these prefixes, compiled once (twice a request).
        self._answerable = reply_subject_pattern(settings.answer_prefixes).fullmatch
        self.refused_replies = 0  # requests dropped, or replies not sent, for their reply subject
        self.permission_errors = 0  # publishes and subscriptions the server refused
        self._last_refusal_log = 0.0
        self._reported: set[str] = set()  # failure reasons logged since the connection was lost
        self._lost: Failure | None = None  # why the connection was lost (None: connected)
        self._inbox_refused: str | None = None  # the server refused our inbox subscription: why

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    async def connect(cls, settings: ConnectSettings) -> Transport:
        """Connect to the first reachable server.

        Raises:
            ConnectError: no server answered within ``connect_timeout``, the credentials
                were refused, or (``fail_fast``) every server failed for good; its
                ``reason`` says which.
        """
        errors: list[BaseException] = []
        auth_failed = asyncio.Event()
        gave_up = asyncio.Event()  # fail_fast: every server failed for good
        permanent = [0]  # consecutive attempts that failed for good (one server each)
        holder: list[Transport] = []

        async def error_cb(exc: Exception) -> None:
            if holder:
                holder[0]._on_error(exc)
                return
            errors.append(exc)
            if _is_auth_error(exc):
                auth_failed.set()
            # nats-py tries the servers in turn: as many permanent failures in a row as
            # there are servers means that each of them failed so.
            permanent[0] = permanent[0] + 1 if classify(exc).permanent else 0
            if settings.fail_fast and permanent[0] >= len(settings.servers):
                gave_up.set()

        async def disconnected_cb() -> None:
            log.info("disconnected from NATS")

        async def reconnected_cb() -> None:
            if holder:
                holder[0]._on_reconnected()

        async def closed_cb() -> None:
            if holder:
                holder[0]._on_closed()

        nc = _Client()
        kwargs: dict[str, Any] = {
            "servers": list(settings.servers),
            "name": settings.name,
            "error_cb": error_cb,
            "disconnected_cb": disconnected_cb,
            "reconnected_cb": reconnected_cb,
            "closed_cb": closed_cb,
            "connect_timeout": max(1, int(settings.connect_timeout)),
            "reconnect_time_wait": settings.reconnect_wait,
            "max_reconnect_attempts": (
                1 if settings.fail_fast and settings.max_reconnect_attempts < 0 else settings.max_reconnect_attempts
            ),
            "tls": settings.tls,
            "tls_hostname": settings.tls_hostname,
            "inbox_prefix": settings.inbox_prefix,
            "drain_timeout": max(1, int(settings.drain_timeout)),
        }
        auth = settings.auth
        if auth is not None:
            if auth.user is not None:
                kwargs.update(user=auth.user, password=auth.password)
            elif auth.token is not None:
                kwargs["token"] = auth.token
            elif auth.nkey_seed is not None:
                if auth.nkey_seed.startswith("S"):
                    kwargs["nkeys_seed_str"] = auth.nkey_seed
                else:
                    kwargs["nkeys_seed"] = auth.nkey_seed
            elif auth.creds_file is not None:
                kwargs["user_credentials"] = str(auth.creds_file)

        connect_task = asyncio.ensure_future(nc.connect(**kwargs))
        auth_task = asyncio.ensure_future(auth_failed.wait())
        gave_up_task = asyncio.ensure_future(gave_up.wait())
        try:
            done, _ = await asyncio.wait(
                {connect_task, auth_task, gave_up_task},
                timeout=settings.connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            await _abandon(nc, connect_task, auth_task, gave_up_task)
            raise
        if connect_task in done and connect_task.exception() is None:
            auth_task.cancel()
            gave_up_task.cancel()
            transport = cls(nc, settings)
            holder.append(transport)
            return transport
        failure = connect_task.exception() if connect_task in done else None
        await _abandon(nc, connect_task, auth_task, gave_up_task)
        # NoServersError only says that nats-py stopped trying: the errors say why.
        if failure is None or isinstance(failure, nats.errors.NoServersError):
            failure = errors[-1] if errors else failure
        urls = ", ".join(settings.servers)
        if auth_failed.is_set() or (failure is not None and _is_auth_error(failure)):
            raise ConnectError(f"NATS at {urls} refused the credentials ({failure})", reason="credentials") from failure
        if failure is None:
            timeout = settings.connect_timeout
            raise ConnectError(f"could not connect to NATS at {urls}: no answer within {timeout:g} s", reason="timeout")
        why = classify(failure)
        within = "" if why.permanent else f" within {settings.connect_timeout:g} s"
        raise ConnectError(f"could not connect to NATS at {urls}{within}: {why.text}", reason=why.reason) from failure

    def _on_error(self, exc: Exception) -> None:
        """An error nats-py reports on a connection that was up: a permission violation,
        or the connection lost and the reconnection attempts failing. Each reason is
        logged once (as a sentence, with the URL) until the connection is back."""
        self.last_error = exc
        if self._on_permission_error(exc):
            return
        why = classify(exc)
        if why.reason == "error":
            log.warning("NATS error: %s", exc)
            return
        if self._lost is None or why.reason == "closed":
            self._lost = why
        if why.reason in self._reported:
            log.debug("NATS connection: %s", why.text)
            return
        self._reported.add(why.reason)
        url = self.connected_url or ", ".join(self.settings.servers)
        if why.reason == "closed":
            log.warning("lost the connection to NATS at %s: %s; reconnecting", url, why.text)
        else:
            log.warning("reconnecting to NATS at %s: %s; still trying", url, why.text)

    def _on_reconnected(self) -> None:
        # Loud when the loss was: a warning said the connection was lost.
        (log.warning if self._reported else log.info)("reconnected to NATS at %s", self.connected_url)
        self._reported.clear()
        self._lost = None

    def _on_permission_error(self, exc: BaseException) -> bool:
        """A ``-ERR 'Permissions Violation for Publish to "<subject>"'`` from the server:
        the requests we published there are refused, so end them now with
        :class:`~natsagents.Unauthorized` instead of letting them wait for their timeout.
        ``True`` if ``exc`` was such an error (logged here)."""
        match = _PERMISSION_RE.search(str(exc))
        if match is None:
            return False
        op, subject = match.group(1).lower(), match.group(2)
        self.permission_errors += 1
        failed = 0
        if op == "publish" and self._mux is not None:
            failed = self._mux.fail_subject(
                subject, Unauthorized(f"the NATS server does not allow this connection to publish to {subject}")
            )
        elif op == "subscription" and subject.startswith(self.settings.inbox_prefix.lower() + "."):
            # Our own inbox: no reply can ever come. End the waiting requests, and refuse
            # the next ones at once (a user whose permissions name its inbox: _INBOX.<user>).
            self._inbox_refused = (
                f"the NATS server does not allow this connection to subscribe to its inbox {subject}:"
                f" its permissions allow another inbox prefix than {self.settings.inbox_prefix!r}"
            )
            if self._mux is not None:
                failed = len(self._mux)
                self._mux.fail_all(Unauthorized(self._inbox_refused))
        verb = "publish to" if op == "publish" else "subscribe to"
        log.warning("NATS refused to let this connection %s %s (%d request(s) ended)", verb, subject, failed)
        return True

    def _on_closed(self) -> None:
        unexpected = not self._closed
        self._closed = True
        if self._mux is None:
            return
        if unexpected and self._lost is not None:
            # nats-py gave up reconnecting (fail_fast, or max_reconnect_attempts).
            urls = ", ".join(self.settings.servers)
            message = f"lost the connection to NATS at {urls} ({self._lost.text}) and no server took it back"
            self._mux.fail_all(MeshClosed(message))
        else:
            self._mux.fail_all(MeshClosed("the NATS connection closed"))

    @property
    def is_closed(self) -> bool:
        return self._closed or self._nc.is_closed

    @property
    def is_connected(self) -> bool:
        return self._nc.is_connected

    @property
    def max_payload(self) -> int:
        """The server's ``max_payload``: headers + body of one message must fit."""
        return int(self._nc.max_payload)

    @property
    def server_version(self) -> str | None:
        """The connected server's version from its INFO (``"2.15.1"``), if it gave one."""
        version = (self._nc._server_info or {}).get("version")
        return version if isinstance(version, str) else None

    @property
    def connected_url(self) -> str | None:
        url = self._nc.connected_url
        return url.geturl() if url is not None else None

    def message_counts(self) -> tuple[int, int]:
        """Messages received and sent on this connection so far."""
        stats = self._nc.stats
        return int(stats.get("in_msgs", 0)), int(stats.get("out_msgs", 0))

    @property
    def pending_requests(self) -> int:
        """Requests waiting for a reply (for tests and metrics)."""
        return len(self._mux) if self._mux is not None else 0

    @property
    def subscription_count(self) -> int:
        """Live NATS subscriptions on this connection (for tests and metrics)."""
        return len(self._nc._subs)

    async def close(self, *, drain: bool = True) -> None:
        """Unsubscribe everything, flush what was published (if ``drain``) and close.

        Idempotent. Bounded by ``drain_timeout``: nats-py's own ``drain()`` can wait far
        longer (or swallow cancellation) when the server stops answering mid-way. The
        host has already drained the agents' mailboxes before the mesh closes this.
        """
        if self._nc.is_closed:
            self._closed = True
            return
        self._closed = True
        try:
            if drain and self._nc.is_connected:
                for sub in list(self._nc._subs.values()):
                    with contextlib.suppress(nats.errors.Error):
                        await sub.unsubscribe()
                with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                    await self._nc._flush_pending(force_flush=True)  # the UNSUBs first (flush())
                    await self._nc.flush(timeout=max(1, int(self.settings.drain_timeout)))
        finally:
            if not self._nc.is_closed:
                # A connection that died under us may still raise its socket error here.
                with contextlib.suppress(nats.errors.Error, OSError):
                    await self._nc.close()
            if self._mux is not None:
                self._mux.fail_all(MeshClosed("the NATS connection closed"))

    # -- publishing ------------------------------------------------------------------

    def check_size(self, subject: str, header_block: bytes, payload: bytes) -> None:
        """Raise :class:`PayloadTooLarge` unless headers + payload fit ``max_payload``.

        nats-py checks only the payload; the server closes the connection when headers
        push a message over the limit, and nats-py then closes for good.
        """
        size = len(header_block) + len(payload)
        limit = self._nc.max_payload
        if size > limit:
            raise PayloadTooLarge(
                f"message to {subject} is {size} bytes with headers; the server allows {limit}",
                details={"size": size, "max_payload": limit},
            )

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | bytes | None = None,
        reply: str = "",
    ) -> None:
        """Publish one message, size-checked. ``headers`` may be a mapping or a header block
        from :func:`~natsagents.wire.envelope.encode_headers` (reused across messages)."""
        block = _header_block(headers)
        self.check_size(subject, block, payload)
        await self._send(subject, reply, block, payload)

    def may_answer(self, subject: str) -> bool:
        """Whether a reply may be published to ``subject``: a caller's inbox (one of the
        settings' ``answer_prefixes``), never ``$KV.…``, ``$JS.…``, control or agent
        subjects (``wire.subjects.is_reply_subject``)."""
        return len(subject) <= MAX_REPLY_SUBJECT and self._answerable(subject) is not None

    def refused_reply(self, subject: str, on: str) -> None:
        """Count (and, at most once a second, log) a reply subject we will not answer."""
        self.refused_replies += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= 1.0:
            self._last_refusal_log = now
            log.warning(
                "refused to answer a message on %s: its reply subject %r is not an inbox (%s)",
                on,
                subject[:120],
                ", ".join(self._answer_prefixes),
            )

    async def publish_reply(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str] | bytes | None = None,
        on: str = "",
        vetted: bool = False,
    ) -> bool:
        """:meth:`publish` an answer to ``subject`` if :meth:`may_answer` allows it;
        ``False`` (counted, logged) when it does not. ``vetted``: ``subject`` is the reply
        subject of a message received on a ``service`` subscription, whose sink checked
        it on arrival (not checked again: a regular expression per request)."""
        if not vetted and not self.may_answer(subject):
            self.refused_reply(subject, on or "a reply")
            return False
        # What publish() does, one coroutine less per reply (check_size only when it raises).
        block = headers if type(headers) is bytes else _header_block(headers)
        if len(block) + len(payload) > self._nc.max_payload:
            self.check_size(subject, block, payload)
        await self._send(subject, "", block, payload)
        return True

    async def _send(self, subject: str, reply: str, block: bytes, payload: bytes) -> None:
        """Queue a PUB/HPUB with a prebuilt header block, as nats-py's ``publish`` does
        (same buffering, stats and flush signalling) minus its per-call header encoding.
        Subjects come from ``wire.subjects`` or from the server: no spaces or CR/LF."""
        nc = self._nc
        if self._closed or nc.is_closed or nc.is_draining_pubs:
            raise MeshClosed("the NATS connection is closed")
        size = len(payload)
        if not nc.is_connected and (nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size):
            raise TransportError("disconnected from NATS and the outbound buffer is full")
        if block:
            cmd = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
                subject.encode(),
                reply.encode(),
                len(block),
                len(block) + size,
                block,
                payload,
            )
        else:
            cmd = b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), size, payload)
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += size
        await nc._send_command(cmd)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    async def flush(self, timeout: float = 5.0) -> None:
        """Round trip to the server: everything published before is on the server."""
        with map_errors("flush"):
            # nats-py writes flush()'s PING straight to the socket, ahead of commands still in
            # its pending buffer (a SUB just made): the PONG could come back before the server
            # saw them (11 of 300 subscriptions, tests/integration/test_flush.py). Write the
            # buffer out first.
            await self._nc._flush_pending(force_flush=True)
            await self._nc.flush(timeout=max(timeout, 0.001))  # type: ignore[arg-type]  # float works

    # -- subscribing -----------------------------------------------------------------

    async def subscribe(
        self, subject: str, handler: Handler, *, queue: str = "", service: bool = False
    ) -> Subscription:
        """Subscribe ``handler`` to ``subject`` (optionally in a queue group).

        ``handler`` runs synchronously in the connection's reader task: it must only
        enqueue or schedule work, never block. ``service``: the subject answers requests;
        messages whose reply subject we may not answer (:meth:`may_answer`) are dropped.
        """
        if self._closed:
            raise MeshClosed("the NATS connection is closed")
        sink = _ServiceSink(subject, handler, self) if service else _Sink(subject, handler)
        with map_errors(subject):
            sub = await self._nc.subscribe(subject, queue=queue, future=sink)  # type: ignore[arg-type]
        # nats-py gives every subscription an asyncio.Queue (with three deques and an
        # Event) that only callback and iterator subscriptions use; ours dispatch through
        # the sink. Dropping it saves ~1 KB and 7 GC-tracked objects per agent; drain()
        # and unsubscribe() check for a missing queue.
        sub._pending_queue = None  # type: ignore[assignment]
        return Subscription(sub, subject)

    # -- requests --------------------------------------------------------------------

    async def _ensure_mux(self) -> _ReplyMux:
        if self._mux is not None:
            return self._mux
        async with self._mux_lock:
            if self._mux is None:
                prefix = f"{self.settings.inbox_prefix}.{self._nc._nuid.next().decode()}."
                mux = _ReplyMux(prefix, self._loop, self._republish)
                await self.subscribe(prefix + "*", mux)
                self._mux = mux
        return self._mux

    async def expect_reply(self, timeout: float | None) -> tuple[str, Callable[[], Awaitable[Inbound]]]:
        """A reply subject of ours and a coroutine function that waits for the one message
        sent to it (for replies that come another way than a request: a durable message
        names it in a header).

        The wait raises CallTimeout after ``timeout`` seconds; MeshClosed when closed."""
        if self._inbox_refused is not None:
            raise Unauthorized(self._inbox_refused)
        mux = self._mux or await self._ensure_mux()
        token, fut = mux.register(timeout)
        subject = mux.prefix + token

        async def wait() -> Inbound:
            try:
                return await fut
            except _Expired:
                raise CallTimeout(f"no reply on {subject} within {timeout:g} s") from None
            finally:
                mux.discard(token)

        return subject, wait

    def _republish(self, resend: _Resend) -> None:
        self.resends += 1
        if self.on_resend is not None:
            self.on_resend()
        self._publish_again(resend)
        stalled = resend[6]
        if stalled is not None:
            try:
                stalled(resend[2], lambda: self._publish_again(resend, only_waiting=True))
            except Exception:
                log.exception("a stalled-request callback failed")

    def _publish_again(self, resend: _Resend, *, only_waiting: bool = False) -> None:
        if only_waiting and (self._closed or self._mux is None or not self._mux.waiting(resend[0])):
            return
        _, _, subject, reply, block, payload, _ = resend
        task = self._loop.create_task(self._send(subject, reply, block, payload))
        self._resend_tasks.add(task)
        task.add_done_callback(self._resend_done)

    def _resend_done(self, task: asyncio.Task[None]) -> None:
        self._resend_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("resending a request failed: %s", task.exception())

    async def request(
        self,
        subject: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | bytes | None = None,
        timeout: float | None,
        resend: float | None = None,
        stalled: Stalled | None = None,
        stall_after: float | None = None,
    ) -> Inbound:
        """Publish a request and wait for its reply.

        ``resend``: publish the identical request again (same reply subject) every
        ``resend`` seconds while no reply came. NATS may drop a request in transit (a
        queue subscription leaving as the request crosses a route); the receiving side
        must recognise copies (``Na-Msg-Id``, see runtime.dedup). ``stalled(subject,
        again)`` is called at each resend; ``again()`` publishes the request once more
        at once while it is still unanswered (the caller found a new way to its agent).
        ``stall_after``: the first resend (and ``stalled`` call) comes after this many
        seconds when it is shorter than ``resend``.

        Raises:
            NoResponders: nobody subscribes to ``subject``.
            CallTimeout: no reply within ``timeout`` seconds.
            PayloadTooLarge, MeshClosed, TransportError.
        """
        if self._closed:
            raise MeshClosed("the NATS connection is closed")
        if self._inbox_refused is not None:
            raise Unauthorized(self._inbox_refused)
        block = encode_headers(headers) if isinstance(headers, Mapping) else (headers or b"")
        self.check_size(subject, block, payload)
        mux = self._mux or await self._ensure_mux()
        token, fut = mux.register(timeout, subject)
        reply = mux.prefix + token
        try:
            await self._send(subject, reply, block, payload)
            if resend is not None and (timeout is None or resend < timeout):
                # The first copy after ``stall_after`` only when that is sooner (docstring).
                first = (
                    stall_after if stalled is not None and stall_after is not None and stall_after < resend else None
                )
                mux.resend_later((token, resend, subject, reply, block, payload, stalled), first)
            msg = await fut
        except _Expired:
            raise CallTimeout(f"no reply from {subject} within {timeout:g} s") from None
        finally:
            mux.discard(token)
        hdrs = msg.headers
        if hdrs is not None and hdrs.get("Status") == "503" and not msg.data:
            raise NoResponders(f"no responders on {subject}")
        return msg


_PERMISSION_RE = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"', re.IGNORECASE)


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text or "authentication" in text


async def _abandon(nc: Client, *tasks: asyncio.Future[Any]) -> None:
    """Cancel a half-made connection and make sure nats-py left nothing running."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task
    with contextlib.suppress(BaseException):
        await nc.close()
