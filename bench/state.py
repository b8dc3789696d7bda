"""State benchmarks: eventual against strong writes, how far eventual state lags behind its
replies, what a ``kill -9`` of an eventual node loses, and read-only actions against the
same action run exclusively.

One JetStream server (R1, in a temp dir); the agents run in a host process
(``python bench/state.py --serve …``, started by this script), the callers in this one.
Sections:

* ``writes``: ``add`` on a persisted counter for T seconds per mode:
  ``consistency = "eventual"`` (``flush_interval`` 0.2 s) against ``"strong"`` (the
  baseline: the state is stored by compare-and-set before each reply). Two shapes: hot
  agents (5 agents, 10 sequential callers each: a strong agent's writes queue behind each
  other's store round trip; this is the ``ratio_eventual_strong`` figure, target at least
  3), and spread (50 agents, one caller each: ``ratio_eventual_strong_spread``, where
  both modes are bounded by CPU on a small machine).
* ``lag`` (measured during the eventual run): a KV watch on the state bucket sees each
  stored value; for every acknowledged ``add`` the time from its reply until a stored
  value includes it. p50/p99 (the bound is ``flush_interval`` plus one write).
* ``kill``: a fresh host process with eventual counters under the same load is killed
  (SIGKILL) after a moment; acknowledged increments missing from the stored state are
  counted, with the age of the oldest one at the kill (the unflushed window).
* ``replicas``: one session agent on three node processes, 32 callers (a session each)
  calling a read-only action that costs about 1 ms of CPU: with ``read_replicas = 2`` against the
  same kind without replicas (the baseline, every read on the primary):
  ``ratio_reads_replicas_primary``. Session writes against strong are part of ``writes``
  (hot shape): ``ratio_session_strong``.
* ``crdt``: the same hot writes on a ``consistency = "crdt"`` counter (``PNCounter``, one copy,
  deltas over core NATS, merged into the record within 0.2 s) against strong:
  ``ratio_crdt_strong`` (target at least 3); and ``convergence_10k_s`` (target at most 2 s):
  two copies of an ORMap diverged by 10,000 keys across a real (proxied) cut, timed from
  the heal until both read the same (``bench/_crdt_state.py``).
* ``reads``: one agent, 50 concurrent callers, an action that awaits 10 ms: marked
  ``@action(read_only=True)`` against the same action without it (the baseline, one at a
  time). Reported as calls/s and their ratio.

Usage::

    python bench/state.py            # full, about 2 minutes
    python bench/state.py --quick    # under a minute

The last line of the output is one JSON object with every figure
(``ratio_eventual_strong``, ``eventual_lag_p50_ms``, ``eventual_lag_p99_ms``,
``eventual_lost_on_kill``, ``ratio_read_only_exclusive``, ``ratio_session_strong``,
``ratio_reads_replicas_primary``, ``ratio_crdt_strong``, ``convergence_10k_s`` …).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Child, CpuMeter, format_table, machine_info, percentile, signal_ready, wait_for_stdin_eof
from _crdt_state import CrdtCounter, bench_convergence
from _crdt_state import bench_kill as bench_kill_crdt
from _crdt_state import bench_lag as bench_lag_crdt

from natsagents import Agent, ClusterSettings, Mesh, NatsAgentsError, action
from natsagents.wire import codec

FLUSH_INTERVAL = 0.2
TARGET_RATIO = 3.0
READ_WAIT = 0.010
READ_CONCURRENCY = 50
REPLICA_READ_ITEMS = 12_000  # a read costs about 1 ms of CPU
REPLICA_CALLERS = 32


class StrongCounter(Agent):
    """A counter whose state is stored before each reply (the default)."""

    def initial_state(self) -> dict[str, int]:
        return {"n": 0}

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] += by
        return int(self.state["n"])

    @action(read_only=True)
    async def get(self) -> int:
        return int(self.state["n"])


class EventualCounter(StrongCounter):
    """The same counter, stored behind its replies within ``flush_interval``."""

    consistency = "eventual"
    flush_interval = FLUSH_INTERVAL


class SessionCounter(StrongCounter):
    """The same counter with ``consistency = "session"``: stored before each reply, and
    every reply carries its state version (``Na-State-Version``)."""

    consistency = "session"


class Catalog(Agent):
    """A read-mostly session agent whose reads cost some CPU; with two read replicas."""

    consistency = "session"
    read_replicas = 2

    def initial_state(self) -> dict[str, Any]:
        return {"items": list(range(REPLICA_READ_ITEMS))}

    @action(read_only=True)
    async def lookup(self, key: int = 0) -> int:
        items = self.state["items"]
        return sum(items[i] for i in range(key % 2, len(items))) and os.getpid()


class CatalogPrimaryOnly(Catalog):
    """The baseline: the same agent without replicas (every read on the primary)."""

    read_replicas = 0


class Reader(Agent):
    """The same slow read, shared (``read_only``) and exclusive."""

    mailbox_size = 4096

    @action(read_only=True)
    async def shared(self) -> int:
        await asyncio.sleep(READ_WAIT)
        return 1

    @action
    async def exclusive(self) -> int:
        await asyncio.sleep(READ_WAIT)
        return 1


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pcts(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {"p50": round(percentile(s, 50), 2), "p99": round(percentile(s, 99), 2), "max": round(s[-1], 2) if s else 0}


# -- the host process ----------------------------------------------------------------


async def serve(url: str, prefix: str, node: str) -> None:
    settings = ClusterSettings(node_id=node, lease=1.5, rebalance=False, delivery=None)
    async with Mesh.connect(url, prefix=prefix, name=node, cluster=settings) as mesh:
        await mesh.host(
            StrongCounter, EventualCounter, SessionCounter, CrdtCounter, Reader, Catalog, CatalogPrimaryOnly
        )
        signal_ready()
        await wait_for_stdin_eof()


def start_host(url: str, prefix: str, node: str) -> Child:
    argv = [sys.executable, __file__, "--serve", "--url", url, "--prefix", prefix, "--node", node]
    return Child(node, argv)


# -- writes and lag ------------------------------------------------------------------


class Acks:
    """Acknowledged totals per agent, with their reply times (monotonic)."""

    def __init__(self) -> None:
        self.by_agent: dict[str, list[tuple[int, float]]] = {}
        self.failed = 0

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.by_agent.values())


async def drive(
    client: Mesh, kind: str, agents: int, seconds: float, acks: Acks, *, tag: str, callers: int = 1
) -> float:
    """``callers`` sequential ``add`` callers per agent for ``seconds``; returns calls/s."""
    refs = [client.ref(kind, f"{tag}{i}") for i in range(agents)]
    await asyncio.gather(*(ref.call("get", timeout=30) for ref in refs))  # activated first
    end = time.monotonic() + seconds

    async def loop(ref: Any) -> None:
        seen = acks.by_agent.setdefault(ref.id, [])
        while time.monotonic() < end:
            try:
                total = await ref.call("add", timeout=2.0)
            except NatsAgentsError:
                acks.failed += 1
                return
            seen.append((total, time.monotonic()))

    started = time.monotonic()
    before = acks.count
    await asyncio.gather(*(loop(ref) for ref in refs for _ in range(callers)))
    for seen in acks.by_agent.values():
        seen.sort()  # several callers of one agent append out of order
    return (acks.count - before) / (time.monotonic() - started)


async def watch_stored(client: Mesh, prefix: str, kind: str, out: dict[str, list[tuple[int, float]]]) -> None:
    """Record (stored n, when seen) per agent id from the state bucket's watch."""
    from natsagents.transport.kv import open_bucket

    bucket = await open_bucket(client._transport, f"{prefix}_state", history=1)
    head = f"{kind}."
    async with bucket.watch(f"{kind}.>") as watch:
        async for entry in watch:
            if entry is None or not entry.value or not entry.key.startswith(head):
                continue
            data = codec.decode(entry.value).get("data") or {}
            out.setdefault(entry.key[len(head) :], []).append((int(data.get("n", 0)), time.monotonic()))


def lags_ms(acks: Acks, stored: dict[str, list[tuple[int, float]]]) -> tuple[list[float], int]:
    """Per acknowledged add: ms from its reply to the first stored value including it;
    and how many were never seen stored."""
    out: list[float] = []
    missing = 0
    for agent, seen in acks.by_agent.items():
        rows = stored.get(agent, [])
        values = [n for n, _ in rows]
        for total, at in seen:
            i = bisect.bisect_left(values, total)
            if i == len(rows):
                missing += 1
                continue
            out.append(max(0.0, rows[i][1] - at) * 1000)
    return out, missing


async def bench_writes(url: str, cfg: argparse.Namespace, server_pid: int | None) -> dict[str, Any]:
    prefix = "bs" + secrets.token_hex(3)
    host = start_host(url, prefix, "w1")
    cpu_us: dict[str, float] = {}  # host + server CPU per write (robust on a busy machine)
    try:
        async with Mesh.connect(url, prefix=prefix, name="load") as client:
            # Hot agents: few agents, several callers each (a rate counter, a presence map).
            hot: dict[str, float] = {}
            for kind in ("StrongCounter", "EventualCounter", "SessionCounter", "CrdtCounter"):
                meter = CpuMeter({"host": host.pid, "server": server_pid})
                meter.start()
                acks = Acks()
                hot[kind] = await drive(
                    client, kind, cfg.hot_agents, cfg.seconds, acks, tag="h", callers=cfg.hot_callers
                )
                used = meter.stop()
                cpu_us[kind] = sum(used.values()) / max(acks.count, 1) * 1e6
                log(f"hot agents, {kind}: {hot[kind]:,.0f} writes/s, {cpu_us[kind]:.0f} µs host+server CPU per write")
            strong = Acks()
            rate_strong = await drive(client, "StrongCounter", cfg.agents, cfg.seconds, strong, tag="s")
            log(f"strong: {rate_strong:,.0f} writes/s")
            stored: dict[str, list[tuple[int, float]]] = {}
            watcher = asyncio.ensure_future(watch_stored(client, prefix, "EventualCounter", stored))
            await asyncio.sleep(0.3)  # the watch is up before the first write
            eventual = Acks()
            rate_eventual = await drive(client, "EventualCounter", cfg.agents, cfg.seconds, eventual, tag="e")
            log(f"eventual: {rate_eventual:,.0f} writes/s")
            await asyncio.sleep(FLUSH_INTERVAL * 3 + 0.5)  # the last flushes land
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            lags, unseen = lags_ms(eventual, stored)
            writes = sum(len(v) for v in stored.values())
    finally:
        host.stop()
    return {
        "hot_agents": cfg.hot_agents,
        "hot_callers_per_agent": cfg.hot_callers,
        "hot_strong_writes_per_s": round(hot["StrongCounter"], 1),
        "hot_eventual_writes_per_s": round(hot["EventualCounter"], 1),
        "hot_ratio": round(hot["EventualCounter"] / hot["StrongCounter"], 2),
        "hot_session_writes_per_s": round(hot["SessionCounter"], 1),
        "hot_session_ratio": round(hot["SessionCounter"] / hot["StrongCounter"], 2),
        "hot_session_cpu_us_per_write": round(cpu_us["SessionCounter"], 1),
        "hot_crdt_writes_per_s": round(hot["CrdtCounter"], 1),
        "hot_crdt_ratio": round(hot["CrdtCounter"] / hot["StrongCounter"], 2),
        "hot_crdt_cpu_us_per_write": round(cpu_us["CrdtCounter"], 1),
        "hot_strong_cpu_us_per_write": round(cpu_us["StrongCounter"], 1),
        "hot_eventual_cpu_us_per_write": round(cpu_us["EventualCounter"], 1),
        "hot_cpu_ratio": round(cpu_us["StrongCounter"] / cpu_us["EventualCounter"], 2),
        "agents": cfg.agents,
        "seconds": cfg.seconds,
        "strong_writes_per_s": round(rate_strong, 1),
        "eventual_writes_per_s": round(rate_eventual, 1),
        "ratio": round(rate_eventual / rate_strong, 2),
        "failed_calls": strong.failed + eventual.failed,
        "eventual_acks": eventual.count,
        "eventual_store_writes": writes,
        "lag_ms": pcts(lags),
        "acks_never_seen_stored": unseen,
    }


async def bench_kill(url: str, cfg: argparse.Namespace) -> dict[str, Any]:
    """SIGKILL a node with eventual counters under load; count what was lost."""
    from natsagents.state import StateStore

    runs = []
    for run in range(cfg.kill_runs):
        prefix = "bk" + secrets.token_hex(3)
        host = start_host(url, prefix, f"k{run}")
        async with Mesh.connect(url, prefix=prefix, name="load") as client:
            acks = Acks()
            load = asyncio.ensure_future(drive(client, "EventualCounter", cfg.agents, 30.0, acks, tag="k"))
            await asyncio.sleep(cfg.kill_after)
            host.proc.kill()
            killed = time.monotonic()
            host.proc.wait()
            await load
            host.stop()
            store = StateStore(client._transport, prefix)
            await store.start()
            lost = 0
            oldest = 0.0
            for agent, seen in acks.by_agent.items():
                data = (await store.load("EventualCounter", agent)).data or {}
                n = int(data.get("n", 0))
                missing = [at for total, at in seen if total > n]
                lost += len(missing)
                if missing:
                    oldest = max(oldest, killed - min(missing))
            rate = acks.count / cfg.kill_after
            runs.append({"acked": acks.count, "lost": lost, "oldest_lost_ms": round(oldest * 1000, 1), "rate": rate})
            log(f"kill run {run}: {acks.count} acked, {lost} lost, oldest lost {oldest * 1000:.0f} ms before the kill")
    return {
        "runs": runs,
        "lost_max": max(r["lost"] for r in runs),
        "lost_mean": round(sum(r["lost"] for r in runs) / len(runs), 1),
        "oldest_lost_ms_max": max(r["oldest_lost_ms"] for r in runs),
        "acked_per_s": round(sum(r["rate"] for r in runs) / len(runs), 1),
    }


async def bench_reads(url: str, cfg: argparse.Namespace) -> dict[str, Any]:
    prefix = "br" + secrets.token_hex(3)
    host = start_host(url, prefix, "r1")
    out: dict[str, Any] = {}
    try:
        async with Mesh.connect(url, prefix=prefix, name="load") as client:
            for action_name in ("exclusive", "shared"):
                ref = client.ref("Reader", action_name)
                await ref.call(action_name, timeout=30)
                end = time.monotonic() + cfg.read_seconds
                done = 0

                async def loop(ref: Any = ref, action_name: str = action_name, end: float = end) -> None:
                    nonlocal done
                    while time.monotonic() < end:
                        await ref.call(action_name, timeout=30)
                        done += 1

                started = time.monotonic()
                await asyncio.gather(*(loop() for _ in range(READ_CONCURRENCY)))
                out[action_name] = round(done / (time.monotonic() - started), 1)
                log(f"reads, {action_name}: {out[action_name]:,.0f} calls/s")
    finally:
        host.stop()
    out["ratio"] = round(out["shared"] / out["exclusive"], 2)
    out["concurrency"] = READ_CONCURRENCY
    out["handler_ms"] = READ_WAIT * 1000
    return out


async def bench_replicas(url: str, cfg: argparse.Namespace) -> dict[str, Any]:
    """Reads (about 1 ms of CPU each) of one session agent from 32 callers (each its own
    session) on three nodes:
    with two read replicas against primary-only (the baseline), in the same run."""
    prefix = "bp" + secrets.token_hex(3)
    hosts = [start_host(url, prefix, f"p{i}") for i in range(1, 4)]
    out: dict[str, Any] = {}
    try:
        async with Mesh.connect(url, prefix=prefix, name="load") as client:
            for cls in (CatalogPrimaryOnly, Catalog):
                sessions = [client.session() for _ in range(REPLICA_CALLERS)]
                refs = [client.ref(cls, "c", session=s) for s in sessions]
                await refs[0].call("lookup", timeout=30)
                pids: set[int] = set()
                wanted = 1 + cls.read_replicas
                warm_end = time.monotonic() + 15
                while len(pids) < wanted and time.monotonic() < warm_end:  # replicas formed
                    pids.update(await asyncio.gather(*(r.call("lookup", key=1, timeout=30) for r in refs)))
                end = time.monotonic() + cfg.read_seconds
                done = 0
                served: set[int] = set()

                async def loop(ref: Any, end: float = end, served: set[int] = served) -> None:
                    nonlocal done
                    k = 0
                    while time.monotonic() < end:
                        served.add(await ref.call("lookup", key=k, timeout=30))
                        done += 1
                        k += 1

                meter = CpuMeter({h.name: h.pid for h in hosts})
                meter.start()
                started = time.monotonic()
                await asyncio.gather(*(loop(r) for r in refs))
                rate = done / (time.monotonic() - started)
                used = meter.stop()
                # The busiest node's CPU per read: what bounds reads when nodes have CPUs of their own.
                busiest = max(used.values()) / max(done, 1) * 1e6 if used else 0.0
                out[cls.__name__] = {
                    "reads_per_s": round(rate, 1),
                    "processes_serving": len(served),
                    "busiest_node_cpu_us_per_read": round(busiest, 1),
                    "node_cpu_s": {k: round(v, 2) for k, v in used.items()},
                }
                log(
                    f"replica reads, {cls.__name__}: {rate:,.0f} reads/s from {len(served)} processes, "
                    f"busiest node {busiest:.0f} µs CPU per read"
                )
    finally:
        for host in hosts:
            host.stop()
    out["ratio"] = round(out["Catalog"]["reads_per_s"] / out["CatalogPrimaryOnly"]["reads_per_s"], 2)
    out["busiest_cpu_ratio"] = round(
        out["CatalogPrimaryOnly"]["busiest_node_cpu_us_per_read"]
        / max(out["Catalog"]["busiest_node_cpu_us_per_read"], 1e-9),
        2,
    )
    out["callers"] = REPLICA_CALLERS
    return out


async def run(cfg: argparse.Namespace) -> dict[str, Any]:
    from natsagents.server import NatsServer

    server = NatsServer(jetstream=True).start()
    results: dict[str, Any] = {}
    try:
        results["writes"] = await bench_writes(server.url, cfg, server.pid)
        results["kill"] = await bench_kill(server.url, cfg)
        results["reads"] = await bench_reads(server.url, cfg)
        results["replicas"] = await bench_replicas(server.url, cfg)
        results["crdt_kill"] = await bench_kill_crdt(server.url, cfg, start_host)
        results["crdt_lag"] = await bench_lag_crdt(server.url, 200 if cfg.quick else 1000)
    finally:
        server.stop()
    results["crdt_convergence"] = await bench_convergence(cfg)
    return results


def report(results: dict[str, Any], cfg: argparse.Namespace) -> dict[str, Any]:
    w, k, rd, rp = results["writes"], results["kill"], results["reads"], results["replicas"]
    cv = results["crdt_convergence"]
    rows = [
        [
            f"writes/s, eventual vs strong, {w['hot_agents']} hot agents x {w['hot_callers_per_agent']} callers",
            f"{w['hot_eventual_writes_per_s']:,.0f}",
            f"{w['hot_strong_writes_per_s']:,.0f}",
            f"{w['hot_ratio']:.2f}",
            "≥ 3",
            "ok" if w["hot_ratio"] >= TARGET_RATIO else "BELOW",
        ],
        [
            f"writes/s, session vs strong, {w['hot_agents']} hot agents x {w['hot_callers_per_agent']} callers",
            f"{w['hot_session_writes_per_s']:,.0f}",
            f"{w['hot_strong_writes_per_s']:,.0f}",
            f"{w['hot_session_ratio']:.2f}",
            "≈ 1",
            f"{w['hot_session_cpu_us_per_write']:.0f} µs CPU per write",
        ],
        [
            f"writes/s, crdt vs strong, {w['hot_agents']} hot agents x {w['hot_callers_per_agent']} callers",
            f"{w['hot_crdt_writes_per_s']:,.0f}",
            f"{w['hot_strong_writes_per_s']:,.0f}",
            f"{w['hot_crdt_ratio']:.2f}",
            "≥ 3",
            ("ok" if w["hot_crdt_ratio"] >= TARGET_RATIO else "BELOW")
            + f", {w['hot_crdt_cpu_us_per_write']:.0f} µs CPU per write",
        ],
        [
            f"crdt convergence after a heal, {cv['keys']:,} keys diverged {cv['diverged']} (s)",
            f"{cv['convergence_s']:.2f}",
            "",
            "",
            "≤ 2",
            ("ok" if cv["convergence_s"] <= 2.0 else "ABOVE") + f", state {cv['state_bytes']:,} bytes",
        ],
        [
            "crdt replication lag reply → other copy, p50 / p99 ms",
            f"{results['crdt_lag']['p50_ms']} / {results['crdt_lag']['p99_ms']}",
            "",
            "",
            "",
            "deltas over core NATS",
        ],
        [
            "crdt acked increments lost on SIGKILL, 1 copy / 2 copies",
            f"{results['crdt_kill']['copies_1']['lost']} / {results['crdt_kill']['copies_2']['lost']}",
            "",
            "",
            "1 copy: the unflushed window",
            f"of {results['crdt_kill']['copies_1']['acked']} / {results['crdt_kill']['copies_2']['acked']} acked",
        ],
        [
            "host + server CPU µs per write, strong / eventual (hot)",
            f"{w['hot_eventual_cpu_us_per_write']:,.0f}",
            f"{w['hot_strong_cpu_us_per_write']:,.0f}",
            f"{w['hot_cpu_ratio']:.2f}",
            "",
            "strong costs ratio x",
        ],
        [
            f"writes/s, eventual vs strong, {w['agents']} agents x 1 caller",
            f"{w['eventual_writes_per_s']:,.0f}",
            f"{w['strong_writes_per_s']:,.0f}",
            f"{w['ratio']:.2f}",
            "",
            "",
        ],
        [
            "eventual lag reply→stored, p50 / p99 ms",
            f"{w['lag_ms']['p50']} / {w['lag_ms']['p99']}",
            "",
            "",
            f"≤ {FLUSH_INTERVAL * 1000:.0f} + a write",
            "",
        ],
        [
            f"acked writes lost on SIGKILL (max of {len(k['runs'])})",
            str(k["lost_max"]),
            "",
            "",
            "the unflushed window",
            f"oldest {k['oldest_lost_ms_max']} ms",
        ],
        [
            f"reads/s, read_only vs exclusive ({READ_WAIT * 1000:.0f} ms, {READ_CONCURRENCY} callers)",
            f"{rd['shared']:,.0f}",
            f"{rd['exclusive']:,.0f}",
            f"{rd['ratio']:.1f}",
            "",
            "",
        ],
        [
            f"session reads/s, 2 replicas vs primary-only (3 nodes, {rp['callers']} sessions)",
            f"{rp['Catalog']['reads_per_s']:,.0f}",
            f"{rp['CatalogPrimaryOnly']['reads_per_s']:,.0f}",
            f"{rp['ratio']:.2f}",
            "",
            f"served by {rp['Catalog']['processes_serving']} processes",
        ],
        [
            "busiest node's CPU µs per read, primary-only / 2 replicas",
            f"{rp['Catalog']['busiest_node_cpu_us_per_read']:,.0f}",
            f"{rp['CatalogPrimaryOnly']['busiest_node_cpu_us_per_read']:,.0f}",
            f"{rp['busiest_cpu_ratio']:.2f}",
            "",
            "the scale-out with a CPU per node",
        ],
    ]
    print()
    print(f"state benchmarks ({'quick' if cfg.quick else 'full'}); flush_interval {FLUSH_INTERVAL} s")
    print(format_table(["figure", "SDK", "baseline", "ratio", "target", "note"], rows))
    print()
    return {
        "ratio_eventual_strong": w["hot_ratio"],
        "strong_writes_per_s": w["hot_strong_writes_per_s"],
        "eventual_writes_per_s": w["hot_eventual_writes_per_s"],
        "cpu_ratio_strong_eventual": w["hot_cpu_ratio"],
        "ratio_eventual_strong_spread": w["ratio"],
        "strong_writes_per_s_spread": w["strong_writes_per_s"],
        "eventual_writes_per_s_spread": w["eventual_writes_per_s"],
        "eventual_lag_p50_ms": w["lag_ms"]["p50"],
        "eventual_lag_p99_ms": w["lag_ms"]["p99"],
        "eventual_lost_on_kill": k["lost_max"],
        "eventual_lost_oldest_ms": k["oldest_lost_ms_max"],
        "read_only_calls_per_s": rd["shared"],
        "exclusive_calls_per_s": rd["exclusive"],
        "ratio_read_only_exclusive": rd["ratio"],
        "ratio_session_strong": w["hot_session_ratio"],
        "session_writes_per_s": w["hot_session_writes_per_s"],
        "ratio_reads_replicas_primary": rp["ratio"],
        "replica_reads_per_s": rp["Catalog"]["reads_per_s"],
        "primary_only_reads_per_s": rp["CatalogPrimaryOnly"]["reads_per_s"],
        "ratio_busiest_node_cpu_primary_replicas": rp["busiest_cpu_ratio"],
        "ratio_crdt_strong": w["hot_crdt_ratio"],
        "crdt_writes_per_s": w["hot_crdt_writes_per_s"],
        "cpu_ratio_strong_crdt": round(w["hot_strong_cpu_us_per_write"] / max(w["hot_crdt_cpu_us_per_write"], 1e-9), 2),
        "convergence_10k_s": cv["convergence_s"],
        "convergence_10k_routed_s": cv["routed_s"],
        "convergence_10k_first_digest_s": cv["first_digest_s"],
        "crdt_lost_on_kill_1_copy": results["crdt_kill"]["copies_1"]["lost"],
        "crdt_lost_on_kill_2_copies": results["crdt_kill"]["copies_2"]["lost"],
        "crdt_lag_p50_ms": results["crdt_lag"]["p50_ms"],
        "crdt_lag_p99_ms": results["crdt_lag"]["p99_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short run (< 60 s)")
    p.add_argument("--agents", type=int, default=50, help="agents, one sequential caller each (50)")
    p.add_argument("--hot-agents", type=int, default=5, help="hot agents (5)")
    p.add_argument("--hot-callers", type=int, default=10, help="sequential callers per hot agent (10)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--node", help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)
    if cfg.serve:
        asyncio.run(serve(cfg.url, cfg.prefix, cfg.node))
        return 0
    cfg.seconds = 3.0 if cfg.quick else 10.0
    cfg.read_seconds = 3.0 if cfg.quick else 8.0
    cfg.kill_runs = 1 if cfg.quick else 3
    cfg.kill_after = 2.0 if cfg.quick else 4.0
    started = time.perf_counter()
    results = asyncio.run(run(cfg))
    flat = report(results, cfg)
    summary = {"bench": "state", "quick": cfg.quick, **flat, "sections": results, "machine": machine_info()}
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    summary["load_avg_1m"] = round(os.getloadavg()[0], 2)  # a shared machine: say how busy it was
    print(json.dumps(summary, separators=(",", ":"), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
