"""The NATS services API (the "micro" protocol, ADR-32) for a cluster node, so that
``nats micro ls``, ``nats micro info natsagents`` and ``nats micro stats natsagents`` list
the nodes of a mesh like any other NATS service.

Each node answers, on plain subscriptions (every instance answers):

```text
$SRV.PING   $SRV.PING.natsagents   $SRV.PING.natsagents.<node id>    → io.nats.micro.v1.ping_response
$SRV.INFO   $SRV.INFO.natsagents   $SRV.INFO.natsagents.<node id>    → io.nats.micro.v1.info_response
$SRV.STATS  $SRV.STATS.natsagents  $SRV.STATS.natsagents.<node id>   → io.nats.micro.v1.stats_response
```

with JSON bodies: the service ``natsagents``, its ``id`` (the node id), ``version``, and
``metadata`` (``node``, ``prefix``, ``kinds``, ``proto``); one *endpoint* per hosted kind
(subject ``<prefix>.agent.<kind>.*``, queue group ``<prefix>.agents``) whose stats come
from the node's own metrics (messages handled and refused, failures, handler time, the
latest error) plus, in ``data``, its agents, their backlog and the hottest of them.

Nothing here receives agent messages: the endpoints describe the subjects the host
already serves. Requests are untrusted: one whose reply subject is not an inbox
(``Transport.may_answer``), that has no reply subject, or that carries a body (the API's
requests have none) is dropped and counted; at most :data:`QUEUE_LIMIT` wait for an
answer (one task answers them in turn), more are dropped, so a flood costs the node a
bounded share of its loop. The hottest agents are recomputed at most once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import heapq
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any, Protocol

from ..errors import NatsAgentsError
from ..tasks import TaskGroup
from ..transport import Inbound, Subscription, Transport
from ..wire.subjects import SERVICE_NAME
from .metrics import Metrics

__all__ = [
    "INFO_TYPE",
    "PING_TYPE",
    "QUEUE_LIMIT",
    "SERVICE_NAME",
    "STATS_TYPE",
    "AgentLike",
    "ServiceResponder",
]

log = logging.getLogger("natsagents.observability")

PING_TYPE = "io.nats.micro.v1.ping_response"
INFO_TYPE = "io.nats.micro.v1.info_response"
STATS_TYPE = "io.nats.micro.v1.stats_response"
_TYPES = {"PING": PING_TYPE, "INFO": INFO_TYPE, "STATS": STATS_TYPE}
#: Requests waiting for an answer at most; more are dropped.
QUEUE_LIMIT = 64
#: Hottest agents listed per kind in the stats ``data``.
HOT_LIMIT = 10
_HOT_EVERY = 1.0  # seconds a computed hot list is reused
# semver.org's suggested regular expression (ADR-32 asks for a SemVer version).
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)


class _Answered(Protocol):
    @property
    def order(self) -> Sized: ...


class AgentLike(Protocol):
    """What the stats read of an active agent (``runtime.activation.Activation``)."""

    @property
    def kind(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def mailbox(self) -> Sized: ...

    @property
    def busy(self) -> int: ...

    @property
    def recent(self) -> _Answered | None: ...


def _semver(version: str) -> str:
    return version if _SEMVER.fullmatch(version) else "0.0.0"


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("natsagents")
    except PackageNotFoundError:
        return ""


def _iso(ts: float) -> str:
    """UTC, millisecond precision, ``Z``: what Go's RFC 3339 parser and nats-py's read."""
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class ServiceResponder:
    """Answers ``$SRV.PING|INFO|STATS`` for one cluster node (module docstring).

    Args:
        transport: the node's connection.
        prefix: the mesh's subject prefix.
        node_id: the node id (the service instance id).
        version: the version to report (default: the installed natsagents'; ``0.0.0``
            unless it is SemVer).
        kinds: the kinds hosted now.
        metrics: the node's metrics (endpoint stats).
        agents: the node's active agents now (``data`` of the endpoint stats).
        settings: a hosted kind's declared behaviour (``agent.base.kind_summary``): in
            each endpoint's INFO metadata and STATS ``data.settings``.
        partition: the node's partition status now (``cluster.partition``): metadata
            ``partition`` of every answer.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        prefix: str,
        node_id: str,
        kinds: Callable[[], Iterable[str]],
        metrics: Metrics,
        agents: Callable[[], Iterable[AgentLike]],
        version: str | None = None,
        settings: Callable[[str], Mapping[str, str]] | None = None,
        partition: Callable[[], str] | None = None,
    ) -> None:
        self._t = transport
        self.prefix = prefix
        self.node_id = node_id
        self.version = _semver(_installed_version() if version is None else version)
        self._kinds = kinds
        self._metrics = metrics
        self._agents = agents
        self._settings = settings
        self._partition = partition
        self._started = time.time()
        self._subs: list[Subscription] = []
        self._queue: deque[tuple[str, str, str]] = deque()  # (verb, reply subject, request subject)
        self._wake = asyncio.Event()
        self._tasks = TaskGroup(f"services API of {node_id}", log)
        self._hot: tuple[float, dict[str, dict[str, Any]]] = (float("-inf"), {})
        #: Requests answered, and dropped (no reply subject, a body, the queue full).
        self.answered = 0
        self.dropped = 0

    @property
    def subjects(self) -> list[str]:
        """The nine subjects served."""
        return [
            subject
            for verb in _TYPES
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{SERVICE_NAME}", f"$SRV.{verb}.{SERVICE_NAME}.{self.node_id}")
        ]

    async def start(self) -> None:
        """Subscribe and start answering."""
        self._tasks.spawn(self._answer_loop(), name="services API")
        try:
            for subject in self.subjects:
                verb = subject.split(".")[1]
                self._subs.append(await self._t.subscribe(subject, self._handler(verb), service=True))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Unsubscribe and stop answering (idempotent)."""
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(NatsAgentsError):
                await sub.unsubscribe()
        self._queue.clear()
        await self._tasks.aclose()

    # -- requests --------------------------------------------------------------------

    def _handler(self, verb: str) -> Callable[[Inbound], None]:
        def on_request(msg: Inbound) -> None:
            # Runs in the reader task: only checks and enqueues. The transport already
            # dropped requests whose reply subject is not an inbox (service=True).
            if not msg.reply or msg.data or len(self._queue) >= QUEUE_LIMIT:
                self.dropped += 1
                return
            self._queue.append((verb, msg.reply, msg.subject))
            self._wake.set()

        return on_request

    async def _answer_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                verb, reply, subject = self._queue.popleft()
                try:
                    body = _dumps(self.response(verb))
                    if await self._t.publish_reply(reply, body, on=subject):
                        self.answered += 1
                except NatsAgentsError as exc:  # too large, connection gone: this request only
                    log.debug("services API answer on %s failed: %s", subject, exc)
                await asyncio.sleep(0)  # a burst of requests never holds the loop

    # -- responses -------------------------------------------------------------------

    def response(self, verb: str) -> dict[str, Any]:
        """The JSON object answering ``PING``, ``INFO`` or ``STATS``."""
        kinds = sorted(set(self._kinds()))
        out: dict[str, Any] = {
            "type": _TYPES[verb],
            "name": SERVICE_NAME,
            "id": self.node_id,
            "version": self.version,
            "metadata": {"node": self.node_id, "prefix": self.prefix, "kinds": ",".join(kinds), "proto": "1"},
        }
        if self._partition is not None:
            out["metadata"]["partition"] = self._partition()
        if verb == "INFO":
            out["description"] = (
                f"natsagents cluster node {self.node_id} (agents of kinds: {', '.join(kinds) or 'none'})"
            )
            out["endpoints"] = [{**self._endpoint(kind), "metadata": self._endpoint_metadata(kind)} for kind in kinds]
        elif verb == "STATS":
            out["started"] = _iso(self._started)
            out["endpoints"] = self._stats(kinds)
        return out

    def _endpoint(self, kind: str) -> dict[str, Any]:
        return {"name": kind, "subject": f"{self.prefix}.agent.{kind}.*", "queue_group": f"{self.prefix}.agents"}

    def _endpoint_metadata(self, kind: str) -> dict[str, str]:
        return {"kind": kind, "activate": f"{self.prefix}.activate.{kind}", **self._kind_settings(kind)}

    def _kind_settings(self, kind: str) -> dict[str, str]:
        if self._settings is None:
            return {}
        try:
            return dict(self._settings(kind))
        except KeyError:  # no longer hosted
            return {}

    def _stats(self, kinds: list[str]) -> list[dict[str, Any]]:
        totals = self._metrics.handled_by_kind()
        hot = self.hot()
        out = []
        for kind in kinds:
            t = totals.get(kind)
            requests = (t.handled + t.refused) if t is not None else 0
            nanos = round(t.seconds * 1e9) if t is not None else 0
            out.append(
                {
                    **self._endpoint(kind),
                    "num_requests": requests,
                    "num_errors": (t.failed + t.refused) if t is not None else 0,
                    "last_error": t.last_error if t is not None else "",
                    "processing_time": nanos,
                    "average_processing_time": nanos // requests if requests else 0,
                    "data": {
                        **hot.get(kind, {"agents": 0, "backlog": 0, "busy": 0, "hot": []}),
                        "settings": self._kind_settings(kind),
                    },
                }
            )
        return out

    def hot(self) -> dict[str, dict[str, Any]]:
        """Per kind: ``agents``, ``backlog`` (messages waiting), ``busy`` (running) and
        ``hot``, the :data:`HOT_LIMIT` agents with the most requests answered recently
        (those whose replies the host keeps for copies, about 10 s) plus waiting and
        running; reused for a second."""
        now = time.monotonic()
        at, cached = self._hot
        if now - at < _HOT_EVERY:
            return cached
        per_kind: dict[str, dict[str, Any]] = {}
        heaps: dict[str, list[tuple[int, str, int, int, int]]] = {}
        for act in list(self._agents()):
            recent = act.recent
            answered = len(recent.order) if recent is not None else 0
            waiting, busy = len(act.mailbox), act.busy
            row = per_kind.get(act.kind)
            if row is None:
                row = per_kind[act.kind] = {"agents": 0, "backlog": 0, "busy": 0, "hot": []}
            row["agents"] += 1
            row["backlog"] += waiting
            row["busy"] += busy
            score = answered + waiting + busy
            if score:
                heap = heaps.setdefault(act.kind, [])
                item = (score, act.address, answered, waiting, busy)
                if len(heap) < HOT_LIMIT:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)
        for kind, heap in heaps.items():
            per_kind[kind]["hot"] = [
                {"agent": address, "recent": answered, "backlog": waiting, "busy": busy}
                for _, address, answered, waiting, busy in sorted(heap, reverse=True)
            ]
        self._hot = (now, per_kind)
        return per_kind
