"""Answer each logical message once.

A requester that hears nothing may publish the *same* request again (same ``Na-Msg-Id``,
same reply subject; see docs/protocol.md §7.4): NATS can lose a request in transit, for
instance when the queue subscription it was routed to goes away as an agent moves. The
host must then not run the message twice. Per activation it remembers the ids of recent
requests:

* **in progress** (in the mailbox or running): a copy is ignored; the one reply goes to
  the reply subject both copies share;
* **answered**: a copy gets the stored reply again for as long as its caller may still
  resend it: until the request's deadline + 1 s (at least ``ttl`` seconds after the answer,
  at most ``window``; ``window`` for a request without a deadline);
* **applied, reply not kept**: a copy gets ``already_applied`` instead of running the
  action a second time. Only when the reply could not be kept: it was dropped to stay
  within the byte bounds below, or an earlier activation persisted the id without it.

Entries move with the agent when it migrates (:meth:`Dedup.export` / :meth:`Dedup.load`)
and, on cluster nodes, are persisted with the agent's state (:func:`trim_applied` bounds
that list), so a successor activation answers a copy with the first reply too.

Memory is bounded: entries expire as above, an agent keeps at most ``max_per_agent``
answered ids (the oldest go first), and the replies kept by all agents of a host hold at
most ``max_bytes``: beyond it the oldest replies are dropped and their ids kept, so a copy
gets ``already_applied`` (it ran) and never runs again. An id is only ever forgotten when it
expires or past ``max_per_agent``. A copy must be the same request (same action and body,
:func:`fingerprint`), so a caller that reuses or guesses another's id never gets that
caller's reply. Expiry visits each agent with entries about once a ``ttl``, not each entry.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

from ..wire import envelope

__all__ = [
    "APPLIED_MAX_BYTES",
    "DURABLE_WINDOW",
    "IN_PROGRESS",
    "REPLY_WINDOW",
    "Dedup",
    "Entry",
    "Recent",
    "Remembers",
    "Reply",
    "applied_size",
    "fingerprint",
    "keep_until_ms",
    "trim_applied",
]

#: Marks a request in the mailbox or running.
IN_PROGRESS: Final = "in_progress"
#: Longest a reply is kept for copies (seconds), whatever the request's deadline; also how
#: long one without a deadline is kept.
REPLY_WINDOW: Final = 60.0
#: How long a copy of a durable message may come (seconds): a redelivery by its partition
#: owner, within the inbox stream's duplicate window.
DURABLE_WINDOW: Final = 120.0
#: Most bytes of applied entries (ids, expiries and kept replies) persisted with one
#: agent's state (:func:`trim_applied`; a kind with ``max_state_bytes`` gets a quarter of it
#: if that is less).
APPLIED_MAX_BYTES: Final = 64 * 1024
#: Bytes counted for an entry beyond its reply body (dict slot, tuple, id, headers).
_ENTRY_OVERHEAD = 64
_time = time.time

Reply = tuple[dict[str, str] | bytes, bytes]
#: An answered entry: reply headers, reply body, expiry (``time.time()``). Headers and body
#: are ``None`` for an id an earlier activation applied and whose reply is gone.
Entry = tuple[dict[str, str] | bytes | None, bytes | None, float]


class Remembers(Protocol):
    """What dedup needs of an activation: its recent ids (``None`` while it has none)."""

    recent: Recent | None


class Recent(dict[str, Any]):
    """One agent's recent request ids → ``IN_PROGRESS`` or an :data:`Entry`, plus
    ``order``: the answered ids, oldest first (answers expire in that order)."""

    __slots__ = ("fingerprints", "order")

    def __init__(self) -> None:
        super().__init__()
        self.order: deque[str] = deque()
        #: id → :func:`fingerprint` of the request this activation saw under it: a copy must
        #: be the same request, so that a message id guessed or reused by another caller
        #: never earns that caller the stored reply of someone else's request (nor the
        #: other way round).
        self.fingerprints: dict[str, int] = {}

    def forget(self, message_id: str) -> None:
        self.pop(message_id, None)
        self.fingerprints.pop(message_id, None)


def fingerprint(action: str | None, body: bytes) -> int:
    """What identifies a request beyond its id (this process only: ``hash`` is salted).
    ``Activation.deliver`` computes it inline (once a request): keep the two alike."""
    return hash((action, body))


def keep_until_ms(deadline_ms: int | None, now_ms: int, *, floor_ms: int = 0, window: float = REPLY_WINDOW) -> int:
    """Until when (Unix ms) a copy of a request answered at ``now_ms`` may still come: its
    deadline + 1 s (its caller resends until the deadline; 1 s for clocks and transit), at
    least ``floor_ms`` after now, at most ``window`` seconds; ``window`` without a deadline."""
    cap = now_ms + int(window * 1000)
    until = cap if deadline_ms is None else min(deadline_ms + 1000, cap)
    return max(until, now_ms + floor_ms)


def applied_size(entry: tuple[str, int, bytes | None]) -> int:
    """Bytes one persisted applied entry adds to a state record (msgpack, close enough:
    array header, id string, 9-byte expiry, body header and body)."""
    return 2 + len(entry[0]) + 1 + 9 + (0 if entry[2] is None else len(entry[2]) + 5)


def trim_applied(
    applied: Sequence[tuple[str, int, bytes | None]], now_ms: int, max_bytes: int = APPLIED_MAX_BYTES
) -> list[tuple[str, int, bytes | None]]:
    """The applied entries (oldest first) worth persisting with an agent's state, within
    ``max_bytes``: expired ones go; beyond the cap the oldest *replies* go first (their ids
    stay: a copy gets ``already_applied``, it never runs again), and only when the ids alone
    do not fit, the oldest ids. Returns a new list."""
    kept = [a for a in applied if a[1] > now_ms]
    total = sum(applied_size(a) for a in kept)
    i = 0
    while total > max_bytes and i < len(kept):
        a = kept[i]
        if a[2] is not None:
            kept[i] = (a[0], a[1], None)
            total -= len(a[2]) + 5
        i += 1
    drop = 0
    while total > max_bytes and drop < len(kept):
        total -= applied_size(kept[drop])
        drop += 1
    return kept[drop:]


class Dedup:
    """Recent request ids of a host's activations (each activation holds its own
    :class:`Recent` in ``act.recent``; this object expires them).

    Args:
        ttl: seconds an answered request's reply is kept at least for copies of it.
        max_per_agent: answered requests kept at most per agent.
        window: seconds a reply is kept at most (until the request's deadline + 1 s).
        max_bytes: bytes of replies kept at most by all agents of the host (each counted
            with a fixed overhead); beyond it the oldest replies are dropped, their ids kept.
    """

    __slots__ = (
        "_bytes",
        "_due",
        "_kept",
        "_kept_acts",
        "_kept_ids",
        "_scheduled",
        "max_bytes",
        "max_per_agent",
        "ttl",
        "window",
    )

    def __init__(
        self,
        ttl: float = 10.0,
        max_per_agent: int = 10_000,
        *,
        window: float = REPLY_WINDOW,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.ttl = ttl
        self.max_per_agent = max_per_agent
        self.window = window
        self.max_bytes = max_bytes
        # (when to look, activation): at most one per activation with answered entries.
        self._due: deque[tuple[float, Remembers]] = deque()
        self._scheduled: set[Remembers] = set()
        # Entries holding a reply, oldest first, in three deques side by side (activation,
        # id, entry): no tuple per entry for the garbage collector to track and visit.
        # ``_bytes`` is what they hold (live entries and ones forgotten since), each entry
        # counted ``len(body) + _ENTRY_OVERHEAD``.
        self._kept_acts: deque[Remembers] = deque()
        self._kept_ids: deque[str] = deque()
        self._kept: deque[Entry] = deque()
        self._bytes = 0

    @staticmethod
    def lookup(act: Remembers, message_id: str) -> Any:
        """``None`` for a new id, else ``IN_PROGRESS`` or an :data:`Entry`."""
        recent = act.recent
        return None if recent is None else recent.get(message_id)

    @staticmethod
    def begin(act: Remembers, message_id: str) -> None:
        recent = act.recent
        if recent is None:
            recent = act.recent = Recent()
        recent[message_id] = IN_PROGRESS

    def finish(
        self,
        act: Remembers,
        message_id: str,
        reply: Reply | None,
        deadline_ms: int | None = None,
        durable: bool = False,
    ) -> None:
        """The request was answered with ``reply`` (``None``: nothing worth keeping, e.g.
        refused before running, or its state not stored; a copy may run it). How long
        copies may come: until the request's deadline (``Na-Deadline``, ``deadline_ms``),
        for a ``durable`` message (redelivered by its partition owner) the durable window."""
        recent = act.recent
        if recent is None:
            return
        if reply is None:
            if recent.get(message_id) is IN_PROGRESS:
                recent.forget(message_id)
                if not recent:
                    act.recent = None
            return
        now = _time()
        # Until when copies may come: keep_until_ms() with floor_ms = ttl, in float seconds
        # (inlined: this runs for every answered request).
        if durable:
            until = now + max(self.window, DURABLE_WINDOW)
        else:
            until = now + self.window
            if deadline_ms is not None:
                end = deadline_ms / 1000 + 1.0
                if end < until:
                    until = end
            floor = now + self.ttl
            if until < floor:
                until = floor
        hdrs, body = reply
        entry: Entry = (hdrs, body, until)
        recent[message_id] = entry
        # _account(), inlined for the usual case (once a request).
        kept = self._kept
        kept.append(entry)
        self._kept_acts.append(act)
        self._kept_ids.append(message_id)
        held = self._bytes = self._bytes + len(body) + _ENTRY_OVERHEAD
        if held > self.max_bytes or kept[0][2] <= now:
            self._shed(now)
        order = recent.order
        order.append(message_id)
        if len(order) > self.max_per_agent:  # the oldest answer goes
            recent.forget(order.popleft())
        if act not in self._scheduled:
            self._scheduled.add(act)
            self._due.append((now + self.ttl, act))
        if self._due[0][0] <= now:
            self._expire(now)

    def _account(self, act: Remembers, message_id: str, entry: Entry, now: float) -> None:
        """Count the reply ``entry`` holds against ``max_bytes``; past it, the oldest
        replies are dropped (their ids stay: ``already_applied``, never a second run)."""
        body = entry[1]
        if body is None:
            return
        kept = self._kept
        kept.append(entry)
        self._kept_acts.append(act)
        self._kept_ids.append(message_id)
        self._bytes += len(body) + _ENTRY_OVERHEAD
        if self._bytes > self.max_bytes or kept[0][2] <= now:
            self._shed(now)

    def _shed(self, now: float) -> None:
        """Drop the kept replies that expired and, past ``max_bytes``, the oldest others
        (their ids stay: ``already_applied``, never a second run)."""
        kept, acts, ids = self._kept, self._kept_acts, self._kept_ids
        while kept:
            old_entry = kept[0]
            over = self._bytes > self.max_bytes
            if not over and old_entry[2] > now:
                break
            kept.popleft()
            old_act, old_id = acts.popleft(), ids.popleft()
            self._bytes -= len(old_entry[1]) + _ENTRY_OVERHEAD  # type: ignore[arg-type]  # has a body
            recent = old_act.recent
            if over and old_entry[2] > now and recent is not None and recent.get(old_id) is old_entry:
                recent[old_id] = (None, None, old_entry[2])  # applied, its reply dropped

    def _expire(self, now: float) -> None:
        due = self._due
        while due and due[0][0] <= now:
            _, act = due.popleft()
            recent = act.recent
            next_due = 0.0
            if recent is not None:
                order = recent.order
                while order:
                    entry = recent.get(order[0])
                    if entry is not None and entry is not IN_PROGRESS and entry[2] > now:
                        next_due = entry[2]
                        break
                    if entry is not IN_PROGRESS:
                        recent.forget(order[0])
                    order.popleft()
                if not recent:
                    act.recent = None
            if next_due:
                due.append((next_due, act))
            else:
                self._scheduled.discard(act)

    def _keep(self, act: Remembers, entries: Iterable[tuple[str, Entry]]) -> None:
        """Add answered entries (oldest first) that came from elsewhere."""
        recent = act.recent
        now = time.time()
        for message_id, entry in entries:
            if entry[2] <= now:
                continue
            if recent is None:
                recent = act.recent = Recent()
            if message_id not in recent:
                recent[message_id] = entry
                recent.order.append(message_id)
                self._account(act, message_id, entry, now)
        if recent is not None and recent.order and act not in self._scheduled:
            self._scheduled.add(act)
            self._due.append((now + self.ttl, act))

    def remember_applied(self, act: Remembers, entries: Iterable[tuple[str, int, bytes | None]]) -> None:
        """Messages a previous activation applied (``(id, expires_ms, ok reply body or
        None)``): a copy gets the reply again, or ``already_applied`` without one."""
        self._keep(
            act,
            (
                (mid, (None, None, ms / 1000) if body is None else (envelope.OK_HEADER_BLOCK, body, ms / 1000))
                for mid, ms, body in sorted(entries, key=lambda e: e[1])
            ),
        )

    def export(self, act: Remembers, limit: int = 4096, max_bytes: int = 256 * 1024) -> list[list[Any]]:
        """The ``limit`` newest answered and applied ids of ``act`` for its next activation
        (msgpack-able): ``[id, reply headers (map) or None, reply body or None, expires
        ms]``. Replies beyond ``max_bytes`` (the newest are kept) go as "applied, reply
        unknown", so the move stays small; the ids still travel."""
        out: list[list[Any]] = []
        now = time.time()
        budget = max_bytes
        for message_id, entry in reversed((act.recent or {}).items()):
            if len(out) >= limit:
                break
            if entry is IN_PROGRESS or entry[2] <= now:
                continue
            hdrs, body, expires = entry
            if body is not None and len(body) > budget:
                hdrs = body = None
            if isinstance(hdrs, bytes):  # an ok block encoded by the host (a session kind's has its version)
                hdrs = envelope.headers_of_block(hdrs)
            if body is not None:
                budget -= len(body)
            out.append([message_id, hdrs, body, int(expires * 1000)])
        out.reverse()
        return out

    def load(self, act: Remembers, entries: object) -> None:
        """Take over what :meth:`export` gave (malformed entries are skipped)."""
        if not isinstance(entries, list):
            return
        now = time.time()
        good: list[tuple[str, Entry]] = []
        for item in entries:
            if not (isinstance(item, list) and 3 <= len(item) <= 4 and isinstance(item[0], str)):
                continue
            message_id, hdrs, body = item[:3]
            # Its expiry, within the window (an older peer sends none: the whole window).
            ms = item[3] if len(item) == 4 else None
            expires = now + self.window
            if type(ms) is int:
                expires = min(ms / 1000, expires)
            if hdrs is None:
                good.append((message_id, (None, None, expires)))
            elif isinstance(hdrs, dict) and isinstance(body, bytes):
                good.append((message_id, ({str(k): str(v) for k, v in hdrs.items()}, body, expires)))
        self._keep(act, good)

    def __len__(self) -> int:
        """Agents with answered entries."""
        return len(self._scheduled)
