"""The request multiplexer: one wildcard inbox subscription for every reply, a dict of
futures keyed by a counter token, timeouts checked in 5 ms slots (one loop timer per slot)
instead of ``asyncio.wait_for`` (a task per request) or a timer each, and resends of
requests still unanswered. Also the shape of a received message (:class:`Inbound`).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable
from typing import Protocol

__all__ = ["Inbound", "Stalled"]


class Inbound(Protocol):
    """A received message (structural: nats-py's ``Msg`` satisfies it)."""

    subject: str
    reply: str
    data: bytes
    headers: dict[str, str] | None


class _Expired(Exception):
    """Set on a reply future when its timer fires."""


#: Told that a request is being resent (no reply within its interval): called with the
#: request's subject and a function that publishes it once more now (if still unanswered).
Stalled = Callable[[str, Callable[[], None]], None]

#: A request to publish again, unchanged, while its reply has not come:
#: (token, interval, subject, reply subject, header block, payload, stalled).
_Resend = tuple[str, float, str, str, bytes, bytes, Stalled | None]


class _ReplyMux:
    """Routes replies arriving on ``<inbox>.<token>`` to the waiting future."""

    __slots__ = (
        "_loop",
        "_pending",
        "_plen",
        "_resend_slots",
        "_slots",
        "_subjects",
        "_tokens",
        "prefix",
        "republish",
    )

    #: Timeouts are checked in slots of this many seconds: one loop timer per slot instead
    #: of one per request (each costs a heap push and pop). A timeout fires up to one slot late.
    TICK = 0.005
    #: Resends are due in coarser slots.
    RESEND_TICK = 0.05

    def __init__(
        self, prefix: str, loop: asyncio.AbstractEventLoop, republish: Callable[[_Resend], None] | None = None
    ) -> None:
        self.prefix = prefix
        self._plen = len(prefix)
        self._loop = loop
        self._pending: dict[str, asyncio.Future[Inbound]] = {}
        self._subjects: dict[str, str] = {}  # token → the request's subject (see fail_subject)
        self._tokens = itertools.count(1)
        self._slots: dict[int, list[int]] = {}
        self._resend_slots: dict[int, list[_Resend]] = {}
        self.republish = republish

    def register(self, timeout: float | None, subject: str = "") -> tuple[str, asyncio.Future[Inbound]]:
        n = next(self._tokens)
        token = str(n)
        fut: asyncio.Future[Inbound] = self._loop.create_future()
        self._pending[token] = fut
        if subject:
            self._subjects[token] = subject
        if timeout is not None:
            key = math.ceil((self._loop.time() + timeout) / self.TICK)
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = []
                self._loop.call_at(key * self.TICK, self._expire_slot, key)
            slot.append(n)
        return token, fut

    def resend_later(self, resend: _Resend, first: float | None = None) -> None:
        """Publish ``resend`` again after its interval (the first time after ``first``
        seconds, when given) unless its reply came."""
        key = math.ceil((self._loop.time() + (resend[1] if first is None else first)) / self.RESEND_TICK)
        slot = self._resend_slots.get(key)
        if slot is None:
            slot = self._resend_slots[key] = []
            self._loop.call_at(key * self.RESEND_TICK, self._resend_slot, key)
        slot.append(resend)

    def _resend_slot(self, key: int) -> None:
        pending = self._pending
        for resend in self._resend_slots.pop(key, ()):
            fut = pending.get(resend[0])
            if fut is None or fut.done() or self.republish is None:
                continue
            self.republish(resend)
            self.resend_later(resend)

    def _expire_slot(self, key: int) -> None:
        pending = self._pending
        for n in self._slots.pop(key, ()):
            fut = pending.get(str(n))
            if fut is not None and not fut.done():
                fut.set_exception(_Expired())

    def waiting(self, token: str) -> bool:
        """Whether the request of ``token`` still waits for its reply."""
        fut = self._pending.get(token)
        return fut is not None and not fut.done()

    def discard(self, token: str) -> None:
        self._pending.pop(token, None)
        self._subjects.pop(token, None)

    def fail_subject(self, subject: str, exc: BaseException) -> int:
        """Fail the pending requests published to ``subject`` (the server refused them).
        Compared without case: nats-py lowercases the server's error line."""
        failed = 0
        subject = subject.lower()
        for token, sent_to in list(self._subjects.items()):
            if sent_to.lower() == subject:
                fut = self._pending.get(token)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
                    failed += 1
        return failed

    def __call__(self, msg: Inbound) -> None:
        fut = self._pending.pop(msg.subject[self._plen :], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def fail_all(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def __len__(self) -> int:
        return len(self._pending)
