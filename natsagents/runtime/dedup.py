"""Answer each logical message once.

A requester that hears nothing may publish the *same* request again (same ``Na-Msg-Id``,
same reply subject; see docs/protocol.md §7.4): NATS can lose a request in transit, for
instance when the queue subscription it was routed to goes away as an agent moves. The
host must then not run the message twice. Per activation it remembers the ids of recent
requests:

* **in progress** (in the mailbox or running): a copy is ignored; the one reply goes to
  the reply subject both copies share;
* **answered**: a copy gets the stored reply again, for ``ttl`` seconds after the answer;
* **applied elsewhere**: ids a previous activation persisted with the agent's state
  (cluster nodes, ``persistence = "action"``) whose reply is gone; a copy gets
  ``already_applied`` instead of running the action a second time.

Entries move with the agent when it migrates (:meth:`Dedup.export` / :meth:`Dedup.load`).
Memory is bounded: entries expire ``ttl`` seconds after the answer, and an agent keeps at
most ``max_per_agent`` of them (the oldest go first). The cost per request is one dict
entry holding the reply's bytes; expiry visits each agent with entries about once a
``ttl``, not each entry.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Final, Protocol

from ..wire import envelope

__all__ = ["IN_PROGRESS", "Dedup", "Entry", "Recent", "Remembers", "Reply", "fingerprint"]

#: Marks a request in the mailbox or running.
IN_PROGRESS: Final = "in_progress"

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
    """What identifies a request beyond its id (this process only: ``hash`` is salted)."""
    return hash((action, body))


class Dedup:
    """Recent request ids of a host's activations (each activation holds its own
    :class:`Recent` in ``act.recent``; this object expires them).

    Args:
        ttl: seconds an answered request's reply is kept for copies of it.
        max_per_agent: answered requests kept at most per agent.
    """

    __slots__ = ("_due", "_scheduled", "max_per_agent", "ttl")

    def __init__(self, ttl: float = 10.0, max_per_agent: int = 10_000) -> None:
        self.ttl = ttl
        self.max_per_agent = max_per_agent
        # (when to look, activation): at most one per activation with answered entries.
        self._due: deque[tuple[float, Remembers]] = deque()
        self._scheduled: set[Remembers] = set()

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

    def finish(self, act: Remembers, message_id: str, reply: Reply | None) -> None:
        """The request was answered with ``reply`` (``None``: nothing worth keeping, e.g.
        refused before running, or its state not stored; a copy may run it)."""
        recent = act.recent
        if recent is None:
            return
        if reply is None:
            if recent.get(message_id) is IN_PROGRESS:
                recent.forget(message_id)
                if not recent:
                    act.recent = None
            return
        now = time.time()
        recent[message_id] = (reply[0], reply[1], now + self.ttl)
        order = recent.order
        order.append(message_id)
        if len(order) > self.max_per_agent:  # the oldest answer goes
            recent.forget(order.popleft())
        if act not in self._scheduled:
            self._scheduled.add(act)
            self._due.append((now + self.ttl, act))
        if self._due[0][0] <= now:
            self._expire(now)

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

    def export(self, act: Remembers, limit: int = 256) -> list[list[Any]]:
        """The ``limit`` newest answered and applied ids of ``act`` for its next activation
        (msgpack-able): ``[id, reply headers (map) or None, reply body or None]``. Copies
        come within a resend interval or two of the answer, so the newest are the ones that
        matter, and a busy agent's move stays small."""
        out: list[list[Any]] = []
        now = time.time()
        for message_id, entry in reversed((act.recent or {}).items()):
            if len(out) >= limit:
                break
            if entry is IN_PROGRESS or entry[2] <= now:
                continue
            hdrs, body, _ = entry
            if isinstance(hdrs, bytes):  # only the prebuilt "ok" block is stored as bytes
                hdrs = envelope.ok_reply(None)[0]
            out.append([message_id, hdrs, body])
        out.reverse()
        return out

    def load(self, act: Remembers, entries: object) -> None:
        """Take over what :meth:`export` gave (malformed entries are skipped)."""
        if not isinstance(entries, list):
            return
        expires = time.time() + self.ttl
        good: list[tuple[str, Entry]] = []
        for item in entries:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
                continue
            message_id, hdrs, body = item
            if hdrs is None:
                good.append((message_id, (None, None, expires)))
            elif isinstance(hdrs, dict) and isinstance(body, bytes):
                good.append((message_id, ({str(k): str(v) for k, v in hdrs.items()}, body, expires)))
        self._keep(act, good)

    def __len__(self) -> int:
        """Agents with answered entries."""
        return len(self._scheduled)
