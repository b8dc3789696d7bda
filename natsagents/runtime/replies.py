"""Where a host's answers go: publishing replies, and the answers given without running
anything (refused, throttled, a copy of an earlier request, a replay question, an accepted
send).

:meth:`Replies.send` is the one place a host publishes a reply: only to an inbox subject
(``Transport.publish_reply``), a reply too large for the server becomes
``payload_too_large``, and an error nobody will hear (a send) is logged. Answers made in the
connection's reader task (:meth:`refuse` and the others) go through an outbox drained by
one task, so the reader never waits on a publish.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import Any

from ..errors import (
    ALREADY_APPLIED,
    BAD_REQUEST,
    HANDLER_ERROR,
    OVERLOADED,
    PAYLOAD_TOO_LARGE,
    UNAVAILABLE,
    NatsAgentsError,
)
from ..observability import Metrics
from ..tasks import TaskGroup
from ..transport import Inbound, Transport
from ..wire import codec, envelope
from ..wire import headers as h
from .activation import Activation
from .dedup import IN_PROGRESS, Reply

__all__ = ["NIL", "Replies"]

log = logging.getLogger("natsagents.runtime")
#: The body of a nil result (an accepted send's acknowledgement).
NIL = codec.encode(None)


class Replies:
    """A host's replies (see the module docstring).

    Args:
        transport: the connection replies are published on.
        metrics: the mesh's metrics (refusals are counted per kind and reason).
        tasks: the host's task group (the outbox task runs in it).
    """

    def __init__(self, transport: Transport, metrics: Metrics, tasks: TaskGroup) -> None:
        self._t = transport
        self._metrics = metrics
        self._tasks = tasks
        self._outbox: deque[tuple[str, dict[str, str] | bytes, bytes]] = deque()
        self._outbox_busy = False

    # -- publishing ------------------------------------------------------------------

    async def send(
        self,
        subject: str,
        headers: dict[str, str] | bytes,
        body: bytes,
        agent: str | None = None,
        action: str | None = None,
        vetted: bool = False,
    ) -> None:
        """Publish a reply to ``subject`` (``""``: nobody asked for one; an error is logged).
        ``vetted``: the reply subject of a message from a ``service`` subscription
        (``Transport.publish_reply``). Every request's reply comes here: positional
        arguments take less than keywords."""
        if not subject:
            status = h.STATUS_OK if isinstance(headers, bytes) else headers.get(h.STATUS, h.STATUS_OK)
            if status not in (h.STATUS_OK, HANDLER_ERROR):  # handler errors are logged by dispatch
                try:
                    err = codec.decode(body)
                except ValueError:
                    err = None
                err = err if isinstance(err, dict) else {}
                log.warning(
                    "dropped a send to %s (action %s): %s: %s",
                    err.get("agent"),
                    err.get("action"),
                    status,
                    err.get("message"),
                )
            return
        try:
            if not await self._t.publish_reply(subject, body, headers, agent or "a host", vetted):
                self._metrics.rejected_one(agent.partition("/")[0] if agent else "", "reply_subject")
        except NatsAgentsError as exc:
            if getattr(exc, "code", None) == PAYLOAD_TOO_LARGE:
                hdrs, data = envelope.error_reply(
                    PAYLOAD_TOO_LARGE,
                    f"reply is too large for the server ({len(body)} bytes)",
                    agent=agent,
                    action=action,
                )
                with contextlib.suppress(NatsAgentsError):
                    await self._t.publish(subject, data, headers=hdrs)
                return
            log.warning("could not send reply to %s: %s", subject, exc)

    @property
    def busy(self) -> bool:
        """Whether answers are waiting in the outbox (or being published from it)."""
        return self._outbox_busy or bool(self._outbox)

    def post(self, subject: str, headers: dict[str, str] | bytes, body: bytes) -> None:
        """:meth:`send` from the reader task: queued, published in order by one task."""
        self._outbox.append((subject, headers, body))
        if not self._outbox_busy:
            self._outbox_busy = True
            self._tasks.spawn(self.drain(), name="replies-outbox")

    async def drain(self) -> None:
        """Publish what the outbox holds (also called when the host closes)."""
        try:
            while self._outbox:
                subject, headers, body = self._outbox.popleft()
                await self.send(subject, headers, body)
        finally:
            self._outbox_busy = False

    # -- answers that run nothing ------------------------------------------------------

    def refuse(
        self,
        act: Activation,
        msg: Inbound,
        code: str,
        message: str,
        *,
        retry: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Answer ``msg`` with an error without running it (mailbox full, stopping …)."""
        self._metrics.rejected_one(act.kind, code)
        if not msg.reply:
            log.warning("dropped a send to %s: %s", act.address, message)
            return
        action = (msg.headers or {}).get(h.ACTION)
        if retry:
            details = {**(details or {}), "retry": True}
        hdrs, body = envelope.error_reply(code, message, agent=act.address, action=action, details=details)
        self.post(msg.reply, hdrs, body)

    def refuse_waiting(self, act: Activation, msg: Inbound, message: str) -> None:
        """A message left in the mailbox of a stopping agent: ``unavailable`` with retry,
        except an accepted send, whose one reply (the acknowledgement) is gone: it is
        dropped, counted and logged."""
        hdrs = msg.headers
        if msg.reply and hdrs is not None and hdrs.get(h.REPLY_MODE) == h.REPLY_MODE_ACCEPT:
            self._metrics.rejected_one(act.kind, UNAVAILABLE)
            log.warning("dropped an accepted send to %s (action %s): %s", act.address, hdrs.get(h.ACTION), message)
            return
        self.refuse(act, msg, UNAVAILABLE, message, retry=True)

    def drop(self, act: Activation, msg: Inbound) -> None:
        """A message to a superseded copy (``Activation.superseded``) that it did not run:
        no answer (the new owner's queue group got its own copy and answers it; a request
        sent before the new owner subscribed is covered by its caller's resend, §7.4).
        Counted as ``natsagents_rejected_total{reason="superseded"}``."""
        self._metrics.rejected_one(act.kind, "superseded")
        action = (msg.headers or {}).get(h.ACTION)
        log.debug(
            "dropped a message to the superseded copy of %s (action %s, reply %s)", act.address, action, msg.reply
        )

    def throttle(self, act: Activation, msg: Inbound, reason: str) -> None:
        """Refuse a message to an unhealthy agent (runtime.health): ``overloaded`` with
        ``details.reason`` and ``details.retry_after`` (seconds)."""
        health = act.health
        assert health is not None
        self._metrics.rejected_one(act.kind, f"throttled_{reason}")
        if not msg.reply:
            log.warning("dropped a send to %s: throttled (%s)", act.address, reason)
            return
        waiting = len(act.mailbox)
        if reason == "backlog":
            text = f"{act.address} is congested: {waiting} messages waiting (limit {health.backlog_limit})"
        else:
            text = (
                f"{act.address} is slow: handlers take {health.latency:.3f} s on average (limit {health.latency_limit})"
            )
        retry_after = round(health.retry_after(waiting, act.max_workers), 3)
        hdrs, body = envelope.error_reply(
            OVERLOADED,
            text,
            agent=act.address,
            action=(msg.headers or {}).get(h.ACTION),
            details={"reason": reason, "retry_after": retry_after},
        )
        self.post(msg.reply, hdrs, body)

    def duplicate(self, act: Activation, msg: Inbound, entry: Any) -> None:
        """A copy of a request this agent has seen (same ``Na-Msg-Id``): never run it again.
        In progress: the one reply is on its way (an accepted send is acknowledged again);
        answered or applied with its reply kept: that reply again; applied with its reply no
        longer kept (runtime.dedup: past the window or a byte bound): ``already_applied``."""
        hdrs = msg.headers or {}
        if entry is IN_PROGRESS:
            self._metrics.duplicates.labels(act.kind, "in_progress").inc()
            if hdrs.get(h.REPLY_MODE) == h.REPLY_MODE_ACCEPT:
                self.accepted(msg)
            return
        hdrs_kept, body_kept, _ = entry
        if hdrs_kept is None:  # applied by an earlier activation; the reply is gone
            self._metrics.duplicates.labels(act.kind, "applied").inc()
            if hdrs.get(h.REPLY_MODE) == h.REPLY_MODE_ACCEPT:
                self.accepted(msg)
                return
            self.refuse(
                act,
                msg,
                ALREADY_APPLIED,
                "this message was applied (exactly once) but its reply is no longer kept (the copy came after"
                " the reply window, or a byte bound dropped it): its result is lost",
            )
            return
        self._metrics.duplicates.labels(act.kind, "replayed").inc()
        self.post(msg.reply, hdrs_kept, body_kept or b"")

    def replay(self, act: Activation, msg: Inbound) -> None:
        """``Na-Reply-Mode: replay``: answer with the reply of the earlier message named by
        ``Na-Msg-Id`` if this activation knows it (answered: the reply again; applied by an
        earlier activation without its reply: ``already_applied``). Running or unknown
        (not run yet, or forgotten): ``unavailable`` with ``details.retry`` — ask again."""
        message_id = (msg.headers or {}).get(h.MESSAGE_ID)
        if not msg.reply or message_id is None or not envelope.is_message_id(message_id):
            self.refuse(act, msg, BAD_REQUEST, f"a replay request needs a reply subject and a valid {h.MESSAGE_ID}")
            return
        entry = act.recent.get(message_id) if act.recent is not None else None
        if entry is None or entry is IN_PROGRESS:
            state = "still running" if entry is IN_PROGRESS else "not known here (not run yet, or forgotten)"
            self._metrics.rejected_one(act.kind, "replay_unknown")
            hdrs, body = envelope.error_reply(
                UNAVAILABLE,
                f"the result of message {message_id} is {state}",
                agent=act.address,
                action=(msg.headers or {}).get(h.ACTION),
                details={"retry": True, "result": "running" if entry is IN_PROGRESS else "unknown"},
            )
            self.post(msg.reply, hdrs, body)
            return
        self.duplicate(act, msg, entry)

    def accepted(self, msg: Inbound) -> None:
        """Acknowledge a send (reply mode ``accept``) as soon as it is in the mailbox."""
        self.post(msg.reply, envelope.OK_HEADER_BLOCK, NIL)

    async def answer(self, msg: Inbound, reply: Reply, *, agent: str | None = None) -> None:
        """Send ``reply`` to the requester of ``msg`` (nothing without a reply subject)."""
        await self.send(msg.reply, reply[0], reply[1], agent=agent)
