"""Per-kind request figures from the NATS services API (``$SRV.STATS``).

Each cluster node registers the NATS micro service ``natsagents`` with one endpoint per
hosted kind; ``$SRV.STATS.natsagents`` (every instance answers) returns, per node, the
standard ``io.nats.micro.v1.stats_response``: for each endpoint its ``subject``,
``num_requests``, ``num_errors`` and ``processing_time`` (nanoseconds, cumulative). The
dashboard asks once per sample, gathers the replies for a short window, and turns the
differences between two samples into requests per second and mean latency per kind.

An endpoint belongs to kind ``K`` of this mesh when its subject is
``<prefix>.agent.K…`` or ``<prefix>.activate.K…``, or when the service's metadata names
this mesh (``"prefix": <prefix>``) and the endpoint's name (or its ``kind`` field) is a
valid kind. Anything else on the account — other services, other meshes — is ignored.
Replies are untrusted: bounded in number and size, and every field type-checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidAddress
from ..transport import Inbound, Transport
from ..wire.ids import validate_kind

__all__ = [
    "STATS_SUBJECT",
    "EndpointTotals",
    "HotAgent",
    "KindRates",
    "RateTracker",
    "gather_stats",
    "kind_details",
    "node_partitions",
    "parse_stats",
]

#: natsagents nodes register the service ``natsagents`` (observability/micro.py).
STATS_SUBJECT = "$SRV.STATS.natsagents"
STATS_TYPE = "io.nats.micro.v1.stats_response"
MAX_REPLIES = 512
MAX_REPLY_BYTES = 512 * 1024
MAX_ENDPOINTS = 1024
MAX_HOT = 10
MAX_SETTINGS = 16
MAX_SETTING_CHARS = 256
_MAX_COUNT = 2**63


@dataclass(frozen=True, slots=True)
class HotAgent:
    """One of the busiest agents a node reports for a kind (endpoint ``data.hot``)."""

    agent: str
    node: str
    recent: int  # requests answered in the last seconds
    backlog: int  # messages waiting
    busy: int  # messages running


@dataclass(frozen=True, slots=True)
class EndpointTotals:
    """Cumulative figures of one endpoint of one service instance, and what its ``data``
    says now (agents, backlog, running, hottest agents), when it says it."""

    instance: str  # service id + endpoint name: the key differences are taken on
    kind: str
    requests: int
    errors: int
    processing_ns: int
    node: str = ""
    backlog: int | None = None
    busy: int | None = None
    hot: tuple[HotAgent, ...] = ()
    settings: tuple[tuple[str, str], ...] = ()  # the kind's declared behaviour (``data.settings``)


@dataclass(frozen=True, slots=True)
class KindRates:
    """One kind over one sampling interval."""

    rate: float  # requests per second
    errors: float  # errors per second
    latency_ms: float | None  # mean processing time of the interval's requests


async def gather_stats(transport: Transport, *, window: float = 0.5, expect: int | None = None) -> list[bytes]:
    """Ask ``$SRV.STATS.natsagents`` and collect the raw replies for ``window`` seconds (less once
    ``expect`` replies came). At most :data:`MAX_REPLIES` replies of at most
    :data:`MAX_REPLY_BYTES` each are kept.

    Raises:
        MeshClosed, TransportError: the connection is unusable.
    """
    inbox = f"{transport.settings.inbox_prefix}.{secrets.token_hex(10)}"
    replies: list[bytes] = []
    enough = asyncio.Event()

    def take(msg: Inbound) -> None:
        if len(replies) < MAX_REPLIES and len(msg.data) <= MAX_REPLY_BYTES:
            replies.append(bytes(msg.data))
        if len(replies) >= MAX_REPLIES or (expect is not None and len(replies) >= expect):
            enough.set()

    sub = await transport.subscribe(inbox, take)
    try:
        await transport.publish(STATS_SUBJECT, b"", reply=inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), window)
    finally:
        await sub.unsubscribe()
    return list(replies)


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_COUNT:
        return None
    return value


def _kind(name: str) -> str | None:
    try:
        return validate_kind(name)
    except InvalidAddress:
        return None


def _endpoint_kind(endpoint: Mapping[str, Any], prefix: str, ours: bool) -> str | None:
    subject = endpoint.get("subject")
    if isinstance(subject, str) and subject.startswith(prefix + "."):
        tokens = subject[len(prefix) + 1 :].split(".")
        if len(tokens) >= 2 and tokens[0] in ("agent", "activate"):
            return _kind(tokens[1])
    if ours:
        for field in ("kind", "name"):
            value = endpoint.get(field)
            if isinstance(value, str):
                kind = _kind(value)
                if kind is not None:
                    return kind
    return None


def _hot(value: object, node: str) -> tuple[HotAgent, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for item in value[:MAX_HOT]:
        if not isinstance(item, dict):
            continue
        agent = item.get("agent")
        recent, backlog, busy = (
            _count(item.get("recent", 0)),
            _count(item.get("backlog", 0)),
            _count(item.get("busy", 0)),
        )
        if not isinstance(agent, str) or not 0 < len(agent) <= 300 or None in (recent, backlog, busy):
            continue
        out.append(HotAgent(agent, node, recent or 0, backlog or 0, busy or 0))
    return tuple(out)


def _settings(raw: Any) -> tuple[tuple[str, str], ...]:
    """``data.settings``: string to string, bounded; anything else is left out."""
    if not isinstance(raw, dict):
        return ()
    out = []
    for key, value in list(raw.items())[:MAX_SETTINGS]:
        if isinstance(key, str) and isinstance(value, str) and 0 < len(key) <= 64:
            out.append((key, value[:MAX_SETTING_CHARS]))
    return tuple(sorted(out))


def parse_stats(replies: Iterable[bytes], prefix: str) -> list[EndpointTotals]:
    """The endpoints of ``prefix``'s kinds in ``$SRV.STATS`` replies; malformed replies,
    endpoints and fields are skipped."""
    out: list[EndpointTotals] = []
    for raw in replies:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if not isinstance(body, dict) or body.get("type") != STATS_TYPE:
            continue
        service_id = body.get("id")
        endpoints = body.get("endpoints")
        if not isinstance(service_id, str) or not isinstance(endpoints, list):
            continue
        metadata = body.get("metadata")
        ours = isinstance(metadata, dict) and metadata.get("prefix") == prefix
        for endpoint in endpoints[:MAX_ENDPOINTS]:
            if not isinstance(endpoint, dict):
                continue
            kind = _endpoint_kind(endpoint, prefix, ours)
            requests = _count(endpoint.get("num_requests"))
            errors = _count(endpoint.get("num_errors", 0))
            processing = _count(endpoint.get("processing_time", 0))
            if kind is None or requests is None or errors is None or processing is None:
                continue
            name = endpoint.get("name")
            node = service_id[:64]
            instance = f"{node}/{name[:64] if isinstance(name, str) else kind}"
            data = endpoint.get("data")
            if isinstance(data, dict):
                backlog, busy, hot = _count(data.get("backlog")), _count(data.get("busy")), _hot(data.get("hot"), node)
                settings = _settings(data.get("settings"))
            else:
                backlog, busy, hot, settings = None, None, (), ()
            out.append(EndpointTotals(instance, kind, requests, errors, processing, node, backlog, busy, hot, settings))
    return out


#: What a node may report as its partition status (``cluster.partition``).
PARTITION_STATUSES = frozenset({"ok", "peers_lapsed", "quorum_lost", "nats_unreachable"})


def node_partitions(replies: Iterable[bytes], prefix: str) -> dict[str, str]:
    """Per node of ``prefix`` (service id), the partition status its ``$SRV.STATS`` reply
    reports in ``metadata.partition``; unknown values and other meshes are left out."""
    out: dict[str, str] = {}
    for raw in replies:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if not isinstance(body, dict) or body.get("type") != STATS_TYPE:
            continue
        service_id, metadata = body.get("id"), body.get("metadata")
        if not isinstance(service_id, str) or not isinstance(metadata, dict) or metadata.get("prefix") != prefix:
            continue
        status = metadata.get("partition")
        if isinstance(status, str) and status in PARTITION_STATUSES:
            out[service_id[:64]] = status
    return out


class RateTracker:
    """Turns successive samples of cumulative endpoint totals into rates per kind.

    Each instance is compared with its own previous sample (a node that missed a sample
    is compared over the longer interval); an instance seen for the first time, or whose
    counters went back (a restarted node), only sets its baseline. Instances not seen
    for ``forget`` seconds are dropped, and at most ``max_instances`` are kept.
    """

    def __init__(self, *, forget: float = 60.0, max_instances: int = 10_000) -> None:
        self._last: dict[str, tuple[EndpointTotals, float]] = {}
        self._forget = forget
        self._max = max_instances

    def update(self, totals: Iterable[EndpointTotals], at: float) -> dict[str, KindRates]:
        """Rates per kind since each instance's previous sample; ``at``: monotonic seconds."""
        requests: dict[str, float] = {}
        errors: dict[str, float] = {}
        processing: dict[str, float] = {}
        counted: dict[str, int] = {}
        for instance, (_, seen) in list(self._last.items()):
            if at - seen > self._forget:
                del self._last[instance]
        for now in totals:
            previous = self._last.get(now.instance)
            if previous is None and len(self._last) >= self._max:
                continue
            self._last[now.instance] = (now, at)
            if previous is None:
                continue
            then, then_at = previous
            seconds = at - then_at
            if seconds <= 0 or now.requests < then.requests or now.processing_ns < then.processing_ns:
                continue
            d_req = now.requests - then.requests
            requests[now.kind] = requests.get(now.kind, 0.0) + d_req / seconds
            errors[now.kind] = errors.get(now.kind, 0.0) + max(0, now.errors - then.errors) / seconds
            processing[now.kind] = processing.get(now.kind, 0.0) + (now.processing_ns - then.processing_ns)
            counted[now.kind] = counted.get(now.kind, 0) + d_req
        return {
            kind: KindRates(
                rate=rate,
                errors=errors[kind],
                latency_ms=(processing[kind] / counted[kind] / 1e6) if counted[kind] else None,
            )
            for kind, rate in requests.items()
        }


def kind_details(totals: Iterable[EndpointTotals]) -> dict[str, dict[str, Any]]:
    """Per kind, what the nodes' endpoint ``data`` says now: ``nodes`` answering for it,
    ``backlog`` and ``busy`` summed, the ``hot`` agents (the busiest first, at most
    :data:`MAX_HOT`), and the kind's declared ``settings`` (consistency, persistence, ...);
    a setting the nodes disagree on (a rolling upgrade) reads ``"mixed"``."""
    out: dict[str, dict[str, Any]] = {}
    hot: dict[str, list[HotAgent]] = {}
    for t in totals:
        row = out.setdefault(t.kind, {"nodes": [], "backlog": None, "busy": None, "hot": [], "settings": {}})
        if t.node not in row["nodes"]:
            row["nodes"].append(t.node)
        settings = row["settings"]
        for key, setting in t.settings:
            settings[key] = setting if settings.get(key, setting) == setting else "mixed"
        for field, value in (("backlog", t.backlog), ("busy", t.busy)):
            if value is not None:
                row[field] = (row[field] or 0) + value
        hot.setdefault(t.kind, []).extend(t.hot)
    for kind, agents in hot.items():
        agents.sort(key=lambda a: (a.recent + a.backlog + a.busy, a.agent), reverse=True)
        rows: list[dict[str, Any]] = []
        listed: set[str] = set()
        for a in agents:  # an agent two nodes report (it just moved) is listed once, the busier
            if a.agent in listed:
                continue
            listed.add(a.agent)
            rows.append({"agent": a.agent, "node": a.node, "recent": a.recent, "backlog": a.backlog, "busy": a.busy})
            if len(rows) == MAX_HOT:
                break
        out[kind]["hot"] = rows
    for row in out.values():
        row["nodes"].sort()
    return out
