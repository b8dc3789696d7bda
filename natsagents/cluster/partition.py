"""Which side of a partition this node is on: one small state machine, its typed public
view and its events (the seam other features subscribe to).

A node judges from what it can observe itself, every ``tick`` and on every membership
change (``Membership.changed``):

===================  =========  ================================================================
status               side       when
===================  =========  ================================================================
``ok``               majority   connected, our heartbeats are stored, every member we saw live
                                still is
``peers_lapsed``     majority   connected, our heartbeats are stored, and some members we saw
                                live lapsed (crashed, paused, or cut off on the other side: from
                                here the three look alike)
``quorum_lost``      minority   connected, but our heartbeats have not been stored for a lease
                                and the last one (sent while connected) failed: we cannot write
                                to the JetStream quorum (cut off with our server, or every
                                leader being re-elected)
``nats_unreachable`` unknown    our own connection to NATS is down: we cannot tell the sides
===================  =========  ================================================================

``quorum_lost`` is what ``partition_strategy = "pause_minority"`` acts on
(``Ownership.serving``): the node's agents of such kinds answer ``PartitionError`` at once,
instead of waiting for a lease that will not come back while the majority takes them over.
It cannot be told apart from a JetStream leader election that lasts longer than a lease on
the majority side: no node can store a heartbeat or a state then, so pausing is right there
too (the strong agents could not store anything), only the name overstates it.

Events: every change of status is a :class:`PartitionEvent` (``kind``: ``"start"`` when
leaving ``ok``, ``"heal"`` when coming back to it, ``"change"`` between two non-ok
statuses), logged (WARNING for a start or change, INFO for a heal), counted
(``natsagents_partition_events_total{event,status}``) and shown by a gauge
(``natsagents_partition_status{status}``: 1 for the current one), and handed to the
subscribers in order: callbacks (``subscribe``) and async iterators (``events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Literal

from ..observability import Metrics
from .membership import Membership

__all__ = ["STATUSES", "PartitionEvent", "PartitionMonitor", "PartitionState", "Side", "Status"]

log = logging.getLogger("natsagents.cluster.partition")

Status = Literal["ok", "peers_lapsed", "quorum_lost", "nats_unreachable"]
Side = Literal["majority", "minority", "unknown"]
#: Every status, in the order of the table above.
STATUSES: tuple[Status, ...] = ("ok", "peers_lapsed", "quorum_lost", "nats_unreachable")
_SIDES: dict[Status, Side] = {
    "ok": "majority",
    "peers_lapsed": "majority",
    "quorum_lost": "minority",
    "nats_unreachable": "unknown",
}
_QUEUE = 256  # events kept for a slow ``events()`` reader before the oldest are dropped


@dataclass(frozen=True, slots=True)
class PartitionState:
    """This node's view of the partition it may be in (see the module docstring).

    Attributes:
        node: this node's id.
        status: ``"ok"``, ``"peers_lapsed"``, ``"quorum_lost"`` or ``"nats_unreachable"``.
        since: wall-clock time (``time.time()``) the node entered this status.
        lapsed: the members seen live that lapsed since (sorted node ids).
    """

    node: str
    status: Status = "ok"
    since: float = 0.0
    lapsed: tuple[str, ...] = ()

    @property
    def side(self) -> Side:
        """``"majority"``, ``"minority"`` (cut off from the JetStream quorum) or ``"unknown"``
        (NATS unreachable)."""
        return _SIDES[self.status]

    @property
    def minority(self) -> bool:
        """Whether this node is on the minority side (``pause_minority`` kinds pause)."""
        return self.status == "quorum_lost"

    def to_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "status": self.status,
            "side": self.side,
            "since": self.since,
            "lapsed": list(self.lapsed),
        }


@dataclass(frozen=True, slots=True)
class PartitionEvent:
    """One change of status: ``kind`` is ``"start"`` (left ``ok``), ``"heal"`` (back to
    ``ok``) or ``"change"`` (from one non-ok status to another)."""

    kind: Literal["start", "heal", "change"]
    previous: PartitionState
    current: PartitionState
    at: float = field(default_factory=time.time)


Callback = Callable[[PartitionEvent], object]


class PartitionMonitor:
    """The partition state machine of one node.

    Args:
        membership: this node's membership (its own lease, the others' liveness).
        connected: whether the node's own NATS connection is up now.
        metrics: where the gauge and the counter live.
        tick: seconds between evaluations when nothing changes in the membership.
    """

    def __init__(
        self,
        membership: Membership,
        connected: Callable[[], bool],
        metrics: Metrics,
        *,
        tick: float | None = None,
    ) -> None:
        self._membership = membership
        self._connected = connected
        self._metrics = metrics
        self.tick = tick if tick is not None else min(0.25, membership.interval)
        self._state = PartitionState(membership.node_id, "ok", time.time())
        self._was_live: set[str] = set()
        self._connected_since = float("-inf")  # loop.time() we saw the connection back
        self._callbacks: list[Callback] = []
        self._queues: list[asyncio.Queue[PartitionEvent]] = []
        self.history: list[PartitionEvent] = []  # every event, oldest first (bounded)
        self._show(self._state.status)

    # -- the public view ---------------------------------------------------------------

    @property
    def state(self) -> PartitionState:
        """The state as of now (evaluated on the spot: never older than this call)."""
        return self.evaluate()

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(event)`` on every change of status, in order, from the event
        loop. It must not block (spawn a task for slow work); an exception it raises is
        logged and does not stop the others. Returns a function that unsubscribes."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    async def events(self) -> AsyncGenerator[PartitionEvent, None]:
        """Every change of status from now on, in order (``async for event in …``); a
        reader more than 256 events behind loses the oldest."""
        queue: asyncio.Queue[PartitionEvent] = asyncio.Queue(_QUEUE)
        self._queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            with contextlib.suppress(ValueError):
                self._queues.remove(queue)

    # -- the state machine -------------------------------------------------------------

    async def run(self) -> None:
        """Evaluate on every membership change and every ``tick`` (the node's task)."""
        while True:
            self.evaluate()
            await self._membership.changed(self.tick)

    def evaluate(self) -> PartitionState:
        """Judge the status now; on a change, emit the event. Returns the current state."""
        membership = self._membership
        live = set(membership.members())
        live.discard(membership.node_id)
        self._was_live |= live
        self._was_live &= membership.known()  # a member that left (record deleted) is gone
        lapsed = tuple(sorted(self._was_live - live))
        status: Status
        now = asyncio.get_running_loop().time()
        if not self._connected():
            status = "nats_unreachable"
            self._connected_since = float("inf")
        elif (
            membership.own_lease_left() <= 0
            and membership.last_beat_failed
            and membership.failed_sent >= min(self._connected_since, now)
        ):
            # A heartbeat sent while connected failed: not one lost with the connection.
            status = "quorum_lost"
        elif lapsed:
            status = "peers_lapsed"
        else:
            status = "ok"
        if status != "nats_unreachable" and self._connected_since == float("inf"):
            self._connected_since = now
        old = self._state
        if status == old.status:
            if lapsed != old.lapsed:
                self._state = PartitionState(old.node, status, old.since, lapsed)
            return self._state
        new = self._state = PartitionState(old.node, status, time.time(), lapsed)
        kind: Literal["start", "heal", "change"] = (
            "heal" if status == "ok" else "start" if old.status == "ok" else "change"
        )
        self._emit(PartitionEvent(kind, old, new, new.since))
        return new

    def _emit(self, event: PartitionEvent) -> None:
        status, was = event.current.status, event.previous.status
        lapsed = ", ".join(event.current.lapsed) or "none"
        if event.kind == "heal":
            took = event.at - event.previous.since
            log.info("%s: partition healed (was %s for %.1f s)", event.current.node, was, took)
        else:
            log.warning(
                "%s: partition %s: %s (%s side; was %s; lapsed peers: %s)",
                event.current.node,
                event.kind,
                status,
                event.current.side,
                was,
                lapsed,
            )
        self._metrics.partition_events.labels(event.kind, status).inc()
        self._show(status)
        self.history.append(event)
        del self.history[:-_QUEUE]
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("a partition event subscriber failed")
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def _show(self, current: Status) -> None:
        for status in STATUSES:
            self._metrics.partition_status.labels(status).set(1 if status == current else 0)
