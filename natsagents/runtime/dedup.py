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
Memory is bounded: entries expire after ``ttl`` and the host keeps at most
``max_entries`` answered ones (the oldest go first).
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from ..wire import envelope

if TYPE_CHECKING:
    from .activation import Activation

__all__ = ["APPLIED", "IN_PROGRESS", "Dedup"]

#: Marks a request in the mailbox or running.
IN_PROGRESS: Final = "in_progress"
#: Marks a request a previous activation applied and persisted, reply unknown.
APPLIED: Final = "applied"

Reply = tuple[dict[str, str] | bytes, bytes]


class Dedup:
    """Recent request ids of a host's activations (each activation holds its own map in
    ``act.recent``; this object expires them).

    Args:
        ttl: seconds an answered request's reply is kept for copies of it.
        max_entries: answered requests kept at most, over all agents of the host.
    """

    __slots__ = ("_expiry", "max_entries", "ttl")

    def __init__(self, ttl: float = 10.0, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        # (expires at, activation, message id), in the order the entries were finished.
        self._expiry: deque[tuple[float, Activation, str]] = deque()

    @staticmethod
    def lookup(act: Activation, message_id: str) -> Any:
        """``None`` for a new id, else ``IN_PROGRESS``, ``APPLIED`` or the stored reply."""
        recent = act.recent
        return None if recent is None else recent.get(message_id)

    @staticmethod
    def begin(act: Activation, message_id: str) -> None:
        recent = act.recent
        if recent is None:
            recent = act.recent = {}
        recent[message_id] = IN_PROGRESS

    def finish(self, act: Activation, message_id: str, reply: Reply | None) -> None:
        """The request was answered with ``reply`` (``None``: nothing worth keeping, e.g.
        refused before running; a copy may run it)."""
        recent = act.recent
        if recent is None:
            return
        if reply is None:
            if recent.get(message_id) is IN_PROGRESS:
                del recent[message_id]
                if not recent:
                    act.recent = None
            return
        recent[message_id] = reply
        now = time.time()
        expiry = self._expiry
        expiry.append((now + self.ttl, act, message_id))
        self._expire(now)

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        over = len(expiry) - self.max_entries
        while expiry and (over > 0 or expiry[0][0] <= now):
            _, act, message_id = expiry.popleft()
            over -= 1
            recent = act.recent
            if recent is not None and recent.get(message_id) is not IN_PROGRESS:
                recent.pop(message_id, None)
                if not recent:
                    act.recent = None

    def remember_applied(self, act: Activation, entries: list[tuple[str, int]]) -> None:
        """Ids a previous activation applied (``(id, expires_ms)``), reply unknown."""
        now = time.time()
        for message_id, expires_ms in entries:
            left = expires_ms / 1000 - now
            if left <= 0:
                continue
            recent = act.recent
            if recent is None:
                recent = act.recent = {}
            if message_id not in recent:
                recent[message_id] = APPLIED
                self._expiry.append((now + min(left, self.ttl), act, message_id))

    def export(self, act: Activation, limit: int = 256) -> list[list[Any]]:
        """The ``limit`` newest answered and applied ids of ``act`` for its next activation
        (msgpack-able): ``[id, reply headers (map) or None, reply body or None]``. Copies
        come within a resend interval or two of the answer, so the newest are the ones that
        matter, and a busy agent's move stays small."""
        out: list[list[Any]] = []
        for message_id, entry in reversed((act.recent or {}).items()):
            if len(out) >= limit:
                break
            if entry is IN_PROGRESS:
                continue
            if entry is APPLIED:
                out.append([message_id, None, None])
            else:
                hdrs, body = entry
                if isinstance(hdrs, bytes):  # only the prebuilt "ok" block is stored as bytes
                    hdrs = envelope.ok_reply(None)[0]
                out.append([message_id, hdrs, body])
        out.reverse()
        return out

    def load(self, act: Activation, entries: object) -> None:
        """Take over what :meth:`export` gave (malformed entries are skipped)."""
        if not isinstance(entries, list):
            return
        now = time.time()
        for item in entries:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
                continue
            message_id, hdrs, body = item
            recent = act.recent
            if recent is None:
                recent = act.recent = {}
            if hdrs is None:
                recent[message_id] = APPLIED
            elif isinstance(hdrs, dict) and isinstance(body, bytes):
                recent[message_id] = ({str(k): str(v) for k, v in hdrs.items()}, body)
            else:
                continue
            self._expiry.append((now + self.ttl, act, message_id))

    def __len__(self) -> int:
        return len(self._expiry)
