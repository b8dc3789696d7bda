"""``natsagents top``: a live terminal view of the cluster's nodes, kinds and hottest agents.

Each frame reads the membership bucket (liveness, agents, cpu, memory, draining: as of
each node's last heartbeat) and asks every node's NATS services API for its stats
(``$SRV.STATS.natsagents``, :mod:`natsagents.observability.micro`): requests, errors and
handler time per kind, backlog and the agents with the most recent requests. Rates are
the difference between two frames. Answers are untrusted: anything that is not a valid
stats answer of this mesh (its prefix) is ignored.

``--once`` prints a single frame (two samples ``--interval`` apart, so that rates are
real) and exits; ``--json`` prints frames as JSON (one object with ``--once``, else one
object per line, each interval).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..wire.subjects import validate_prefix
from .main import Exit, _positive_float, _positive_int, add_connection_options, command, open_mesh

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..cluster.view import NodeStatus
    from ..mesh import Mesh

__all__ = ["Frame", "Sampler", "parse_stats"]

_SERVICE = "natsagents"
_STATS_TYPE = "io.nats.micro.v1.stats_response"
_MAX_ENDPOINTS = 1024
_MAX_HOT = 100
_MAX_TEXT = 200
#: Seconds a frame waits for the stats of every live node (all answered: no wait).
_ANSWER_WAIT = 1.5


# -- reading stats answers ------------------------------------------------------------


def _count(value: object) -> int | None:
    return value if type(value) is int and 0 <= value <= 2**63 else None


def _text(value: object) -> str:
    if not isinstance(value, str):
        return ""
    flat = "".join(c if c.isprintable() else " " for c in value[:_MAX_TEXT])
    return flat.strip()


@dataclass(frozen=True, slots=True)
class KindStats:
    """One endpoint (kind) of one node's stats answer."""

    kind: str
    requests: int
    errors: int
    processing_ns: int
    last_error: str
    agents: int
    backlog: int
    busy: int
    hot: tuple[tuple[str, int, int, int], ...]  # (agent, recent, backlog, busy)


def parse_stats(body: bytes, prefix: str) -> tuple[str, list[KindStats]] | None:
    """``(node id, per-kind stats)`` from a ``$SRV.STATS`` answer of a natsagents node of
    mesh ``prefix``; ``None`` for anything else (another service, another mesh, garbage)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("type") != _STATS_TYPE or doc.get("name") != _SERVICE:
        return None
    meta, node, endpoints = doc.get("metadata"), doc.get("id"), doc.get("endpoints")
    if not isinstance(meta, dict) or meta.get("prefix") != prefix or not isinstance(node, str) or not node:
        return None
    if not isinstance(endpoints, list):
        return None
    out = []
    for ep in endpoints[:_MAX_ENDPOINTS]:
        if not isinstance(ep, dict) or not isinstance(ep.get("name"), str):
            continue
        requests, errors, nanos = (_count(ep.get(k)) for k in ("num_requests", "num_errors", "processing_time"))
        if requests is None or errors is None or nanos is None:
            continue
        raw_data = ep.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        raw_hot = data.get("hot")
        hot = []
        for item in raw_hot[:_MAX_HOT] if isinstance(raw_hot, list) else []:
            if isinstance(item, dict) and isinstance(item.get("agent"), str):
                numbers = [_count(item.get(k)) or 0 for k in ("recent", "backlog", "busy")]
                hot.append((_text(item["agent"]), numbers[0], numbers[1], numbers[2]))
        out.append(
            KindStats(
                kind=_text(ep["name"]),
                requests=requests,
                errors=errors,
                processing_ns=nanos,
                last_error=_text(ep.get("last_error")),
                agents=_count(data.get("agents")) or 0,
                backlog=_count(data.get("backlog")) or 0,
                busy=_count(data.get("busy")) or 0,
                hot=tuple(hot),
            )
        )
    return _text(node), out


# -- sampling -------------------------------------------------------------------------


@dataclass(slots=True)
class Frame:
    """One view of the cluster, JSON-ready (``to_json``)."""

    time: float
    nodes: list[dict[str, Any]] = field(default_factory=list)
    kinds: list[dict[str, Any]] = field(default_factory=list)
    hot: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "nodes": self.nodes, "kinds": self.kinds, "hot": self.hot}


def _rate(now: tuple[float, int], before: tuple[float, int] | None) -> float | None:
    if before is None or now[0] <= before[0] or now[1] < before[1]:
        return None
    return (now[1] - before[1]) / (now[0] - before[0])


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class Sampler:
    """Takes frames from one mesh, remembering the previous counts for rates."""

    def __init__(self, mesh: Mesh, prefix: str, *, limit: int, wait: float) -> None:
        self._mesh = mesh
        self._prefix = prefix
        self._limit = limit
        self._wait = wait
        self._before: dict[tuple[str, str], tuple[float, int, int]] = {}

    async def stats(self, expect: int) -> dict[str, list[KindStats]]:
        """Ask every node for its stats; answers until ``expect`` nodes answered or the
        wait is over."""
        t = self._mesh.transport
        inbox = f"{t.settings.inbox_prefix}.{secrets.token_hex(8)}"
        got: dict[str, list[KindStats]] = {}
        enough = asyncio.Event()

        def on_answer(msg: Any) -> None:
            parsed = parse_stats(msg.data, self._prefix)
            if parsed is not None and parsed[0] not in got:
                got[parsed[0]] = parsed[1]
                if len(got) >= expect:
                    enough.set()

        sub = await t.subscribe(inbox, on_answer)
        try:
            await t.publish(f"$SRV.STATS.{_SERVICE}", b"", reply=inbox)
            if expect > 0:
                try:
                    await asyncio.wait_for(enough.wait(), self._wait)
                except TimeoutError:
                    pass  # some nodes do not answer (services API off, or not permitted)
        finally:
            await sub.unsubscribe()
        return got

    async def frame(self) -> Frame:
        statuses: list[NodeStatus] = await self._mesh.nodes()
        live = [s for s in statuses if s.live]
        stats = await self.stats(len(live))
        now = time.time()
        frame = Frame(time=now)
        kinds: dict[str, dict[str, Any]] = {}
        hot: list[dict[str, Any]] = []
        before, self._before = self._before, {}
        for s in statuses:
            rec = s.record
            load: Mapping[str, Any] = rec.load
            per_kind = stats.get(rec.node_id)
            req_rate: float | None = None
            err_rate: float | None = None
            backlog: int | None = None
            busy: int | None = None
            if per_kind is not None:
                backlog, busy = sum(k.backlog for k in per_kind), sum(k.busy for k in per_kind)
                req_rate = err_rate = 0.0
                for k in per_kind:
                    self._before[(rec.node_id, k.kind)] = (now, k.requests, k.errors)
                    prev = before.get((rec.node_id, k.kind))
                    r = _rate((now, k.requests), prev[:2] if prev else None)
                    e = _rate((now, k.errors), (prev[0], prev[2]) if prev else None)
                    req_rate = None if r is None or req_rate is None else req_rate + r
                    err_rate = None if e is None or err_rate is None else err_rate + e
                    row = kinds.setdefault(
                        k.kind,
                        {
                            "kind": k.kind,
                            "nodes": 0,
                            "agents": 0,
                            "requests": 0,
                            "errors": 0,
                            "requests_per_s": 0.0,
                            "processing_ns": 0,
                            "last_error": "",
                        },
                    )
                    row["nodes"] += 1
                    row["agents"] += k.agents
                    row["requests"] += k.requests
                    row["errors"] += k.errors
                    row["processing_ns"] += k.processing_ns
                    row["requests_per_s"] = (
                        None if r is None or row["requests_per_s"] is None else row["requests_per_s"] + r
                    )
                    row["last_error"] = row["last_error"] or k.last_error
                    hot.extend(
                        {"agent": a, "node": rec.node_id, "recent": n, "backlog": b, "busy": u} for a, n, b, u in k.hot
                    )
            agents = load.get("agents")
            frame.nodes.append(
                {
                    "node": rec.node_id,
                    "live": s.live,
                    "stale": not s.live,
                    "age": round(s.age, 3),
                    "draining": rec.draining,
                    # a lapsed node's figures are its last heartbeat's: not shown as current
                    "agents": agents if s.live and isinstance(agents, int) else None,
                    "cpu": _number(load.get("cpu")) if s.live else None,
                    "memory": _number(load.get("memory")) if s.live else None,
                    "kinds": list(rec.kinds),
                    "requests_per_s": req_rate,
                    "errors_per_s": err_rate,
                    "backlog": backlog,
                    "busy": busy,
                    "services_api": per_kind is not None,
                }
            )
        for row in kinds.values():
            row["average_ms"] = row["processing_ns"] / row["requests"] / 1e6 if row["requests"] else None
        frame.kinds = sorted(kinds.values(), key=lambda r: r["kind"])
        hot.sort(key=lambda h: (-(h["recent"] + h["backlog"] + h["busy"]), h["agent"]))
        frame.hot = hot[: self._limit]
        return frame


# -- rendering ------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".1f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def render(frame: Frame) -> RenderableType:
    """The frame as rich tables: nodes, kinds, hottest agents."""
    from rich.console import Group
    from rich.table import Table

    nodes = Table(title="nodes", title_justify="left", expand=False)
    for name in ("NODE", "LIVE", "AGENTS", "CPU", "MEM", "REQ/S", "ERR/S", "BACKLOG", "BUSY", "DRAINING"):
        nodes.add_column(name, justify="left" if name in ("NODE", "LIVE", "DRAINING") else "right", no_wrap=True)
    for n in frame.nodes:
        nodes.add_row(
            n["node"],
            "yes" if n["live"] else f"no ({n['age']:.0f}s)",
            "stale" if n["stale"] else _fmt(n["agents"], "d"),
            _pct(n["cpu"]),
            _pct(n["memory"]),
            _fmt(n["requests_per_s"]),
            _fmt(n["errors_per_s"]),
            _fmt(n["backlog"], "d"),
            _fmt(n["busy"], "d"),
            "yes" if n["draining"] else "no",
        )
    kinds = Table(title="kinds", title_justify="left")
    for name in ("KIND", "NODES", "AGENTS", "REQUESTS", "ERRORS", "REQ/S", "AVG MS", "LAST ERROR"):
        kinds.add_column(
            name, justify="left" if name in ("KIND", "LAST ERROR") else "right", no_wrap=name != "LAST ERROR"
        )
    for k in frame.kinds:
        kinds.add_row(
            k["kind"],
            str(k["nodes"]),
            str(k["agents"]),
            str(k["requests"]),
            str(k["errors"]),
            _fmt(k["requests_per_s"]),
            _fmt(k["average_ms"], ".2f"),
            k["last_error"] or "-",
        )
    # ANSWERED: requests answered in the host's dedup window (~10 s), the replies it keeps.
    hot = Table(title="hottest agents", title_justify="left")
    for name in ("AGENT", "NODE", "ANSWERED/10S", "WAITING", "RUNNING"):
        hot.add_column(name, justify="left" if name in ("AGENT", "NODE") else "right", no_wrap=True)
    for h in frame.hot:
        hot.add_row(h["agent"], h["node"], str(h["recent"]), str(h["backlog"]), str(h["busy"]))
    parts: list[RenderableType] = [nodes, kinds, hot]
    if not frame.nodes:
        parts = ["no nodes"]
    return Group(*parts)


# -- the command ----------------------------------------------------------------------


def _top_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--json", action="store_true", help="print frames as JSON (one object per line)")
    parser.add_argument(
        "--interval", metavar="SECONDS", type=_positive_float, default=1.0, help="seconds between frames (default: 1)"
    )
    parser.add_argument(
        "--limit", metavar="N", type=_positive_int, default=10, help="hottest agents shown (default: 10)"
    )
    add_connection_options(parser)


@command(
    "top",
    help="a live view of the cluster: nodes, kinds and the hottest agents",
    configure=_top_options,
    description="Show the cluster's nodes (liveness, agents, cpu, memory, request and error rates, backlog, "
    "draining), its kinds (requests, errors, average handler time, last error) and its hottest agents, "
    "refreshed every --interval seconds until Ctrl-C. Node figures come from heartbeats (a node that is not "
    "live shows its agents as 'stale'); request figures from each node's NATS services API "
    "($SRV.STATS.natsagents, as 'nats micro stats natsagents' shows them). "
    "Exit codes: 0 ok (also on Ctrl-C), 2 bad usage, 3 NATS unreachable.",
)
def _top(args: argparse.Namespace) -> int:
    validate_prefix(args.prefix)
    try:
        return asyncio.run(_top_async(args))
    except KeyboardInterrupt:
        return Exit.OK


async def _top_async(args: argparse.Namespace) -> int:
    async with open_mesh(args) as mesh:
        sampler = Sampler(mesh, args.prefix, limit=args.limit, wait=_ANSWER_WAIT)
        first = await sampler.frame()
        if args.once:
            await asyncio.sleep(args.interval)  # a second sample: rates need two
            _print(await sampler.frame(), as_json=args.json)
            return Exit.OK
        if args.json:
            _print(first, as_json=True)
            while True:
                await asyncio.sleep(args.interval)
                _print(await sampler.frame(), as_json=True)
        from rich.console import Console
        from rich.live import Live

        with Live(render(first), console=Console(), auto_refresh=False, screen=False) as live:
            while True:
                await asyncio.sleep(args.interval)
                live.update(render(await sampler.frame()), refresh=True)


def _print(frame: Frame, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(frame.to_json(), separators=(",", ":")), flush=True)
        return
    from rich.console import Console

    # Not a terminal (a pipe, a file): wide enough that tables are not folded.
    width = None if sys.stdout.isatty() else max(160, shutil.get_terminal_size().columns)
    Console(width=width, highlight=False).print(render(frame))
