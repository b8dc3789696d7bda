"""The dashboard's sampler: every ``interval`` seconds it reads the members (their
heartbeat records: load, agents, draining), the per-kind request totals of the NATS
services API (:mod:`.micro`) and the dead-letter count, and keeps the last ``history``
seconds of points for the page's plots.

The HTTP routes only read what the sampler holds, so a page polling (or a hostile client
hammering) the dashboard never multiplies the requests it makes to NATS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..cluster.view import NodeStatus
from ..delivery.settings import dlq_stream
from ..errors import JetStreamError, NatsAgentsError, StreamNotFound, Unauthorized
from ..tasks import TaskGroup
from ..transport.kv import api_request
from .catalog import HOLD_REFUSED
from .micro import STATS_SUBJECT, RateTracker, gather_stats, kind_details, node_partitions, parse_stats

if TYPE_CHECKING:
    from ..mesh import Mesh

__all__ = ["Sampler", "node_json"]

log = logging.getLogger("natsagents.dashboard")

_STREAM_NOT_FOUND = 10059
_LOG_EVERY = 60.0  # seconds between two warnings about the same failing source


class _Skipped(Exception):
    """A source held off after a refusal: this sample keeps its last figures and error."""


def node_json(status: NodeStatus) -> dict[str, Any]:
    """A member as the page shows it."""
    rec = status.record
    return {
        "node": rec.node_id,
        "live": status.live,
        "age": round(status.age, 3),
        "kinds": list(rec.kinds),
        "capacity": dict(rec.capacity),
        "load": dict(rec.load),
        "tags": list(rec.tags),
        "draining": rec.draining,
        "weight": rec.weight,
        "lease": rec.lease,
        "version": rec.version,
        "started_at": rec.started_at,
        "heartbeat_at": rec.heartbeat_at,
    }


def _number(load: Mapping[str, Any], name: str) -> float | None:
    value = load.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class Sampler:
    """Samples the cluster every ``interval`` seconds, keeping ``history`` seconds.

    Args:
        mesh: an open mesh (a plain client is enough).
        interval: seconds between samples.
        history: seconds of points kept.
        stats_window: seconds to gather ``$SRV.STATS`` replies in each sample.
    """

    def __init__(self, mesh: Mesh, *, interval: float = 2.0, history: float = 600.0, stats_window: float = 0.3) -> None:
        self._mesh = mesh
        self.interval = interval
        self._stats_window = min(stats_window, interval / 2)
        self.points: deque[dict[str, Any]] = deque(maxlen=max(2, int(history / interval)))
        self.nodes: list[dict[str, Any]] = []
        self.dead_letters: int | None = None
        self.kinds: dict[str, dict[str, Any]] = {}  # per kind: nodes, backlog, busy, hot agents
        self.sampled_at: float | None = None
        self.errors: dict[str, str] = {}
        self._rates = RateTracker()
        self._logged: dict[str, float] = {}
        self._held: dict[str, float] = {}  # source → monotonic time before which it is not read
        self._tasks = TaskGroup("dashboard sampler", log)
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._tasks.spawn(self._run(), name="dashboard sampler")

    async def aclose(self) -> None:
        await self._tasks.aclose()

    def wake(self) -> None:
        """Sample now (after an action, so that the page sees its effect soon)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await self.sample()
            self._wake.clear()
            left = self.interval - (time.monotonic() - started)
            if left > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    pass

    def _asks(self, source: str) -> bool:
        """Whether to read ``source`` in this sample (not while a refusal holds it off)."""
        return time.monotonic() >= self._held.get(source, 0.0)

    def _failed(self, source: str, exc: BaseException) -> None:
        self.errors[source] = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if isinstance(exc, Unauthorized):
            # The permissions will not change within seconds: ask again in a while, not in
            # every sample (each refusal is a warning here and a violation in the server's log).
            self._held[source] = now + HOLD_REFUSED
        if now - self._logged.get(source, -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[source] = now
            log.warning("dashboard: reading %s failed: %s", source, exc)

    async def sample(self) -> None:
        """Take one sample (each source on its own: one failing leaves the others)."""
        now = time.time()
        point: dict[str, Any] = {"t": round(now, 3), "kinds": {}, "nodes": {}}
        try:
            if not self._asks("members"):
                raise _Skipped
            statuses = await self._mesh.nodes()
        except _Skipped:
            pass
        except Exception as exc:  # NATS trouble must not end the sampler
            self._failed("members", exc)
        else:
            self.errors.pop("members", None)
            self.nodes = [node_json(s) for s in statuses]
            for s in statuses:
                load = s.record.load
                point["nodes"][s.record.node_id] = {
                    "live": s.live,
                    "agents": _number(load, "agents"),
                    "cpu": _number(load, "cpu"),
                    "memory": _number(load, "memory"),
                    "backlog": _number(load, "mailbox_backlog"),
                }
        transport = self._mesh.transport
        refused_before = transport.permission_errors
        try:
            if not self._asks("services"):
                raise _Skipped
            replies = await gather_stats(transport, window=self._stats_window)
            if (
                not replies
                and transport.permission_errors > refused_before
                and STATS_SUBJECT.lower() in str(transport.last_error).lower()  # nats-py lowercases it
            ):
                raise Unauthorized(f"the NATS server does not allow this connection to publish to {STATS_SUBJECT}")
        except _Skipped:
            pass
        except Exception as exc:
            self._failed("services", exc)
        else:
            self.errors.pop("services", None)
            totals = parse_stats(replies, self._mesh.prefix)
            rates = self._rates.update(totals, time.monotonic())
            self.kinds = kind_details(totals)
            partitions = node_partitions(replies, self._mesh.prefix)
            for node in self.nodes:  # a node's own view of its side, when it answered
                node["partition"] = partitions.get(node["node"])
            point["kinds"] = {
                kind: {"rate": round(r.rate, 3), "errors": round(r.errors, 3), "latency_ms": r.latency_ms}
                for kind, r in sorted(rates.items())
            }
        try:
            if not self._asks("dead letters"):
                raise _Skipped
            self.dead_letters = await self._dead_letter_count()
        except _Skipped:
            pass
        except Exception as exc:
            self._failed("dead letters", exc)
        else:
            self.errors.pop("dead letters", None)
        self.points.append(point)
        self.sampled_at = now

    async def _dead_letter_count(self) -> int:
        subject = f"$JS.API.STREAM.INFO.{dlq_stream(self._mesh.prefix)}"
        try:
            info = await api_request(self._mesh.transport, subject, None, 5.0)
        except JetStreamError as exc:
            if isinstance(exc, StreamNotFound) or exc.err_code == _STREAM_NOT_FOUND:
                return 0
            raise
        state = info.get("state")
        messages = state.get("messages") if isinstance(state, dict) else None
        if isinstance(messages, bool) or not isinstance(messages, int) or messages < 0:
            raise NatsAgentsError("the dead-letter stream's info has no message count")
        return messages
