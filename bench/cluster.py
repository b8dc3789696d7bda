"""Cluster benchmarks: activation rate, idle memory per agent, migration pause, failover
after ``kill -9`` and the share of agents moved when a node joins.

Every node is a host process (``bench/_cluster_host.py``) hosting ``Counter`` (state
``{"n": int}`` persisted after each ``add``) and ``Keeper`` (the same, ``restart =
"permanent"``); this script is the client, starts and stops every process and server,
and talks to the hosts over a control subject (``benchctl.<node>``). Sections:

* ``activation`` (one single-server JetStream, R1; one node process): ``mesh.spawn`` of N
  agents on the hosting node, 200 in flight; then on-demand activation: a remote client
  calls ``get`` on agents nobody activated yet (200 in flight); then more spawns up to the
  memory count. Baseline in the same run: the same sequence on a standalone host (no
  ``cluster=``, no KV). Memory: the host's VmRSS (``/proc/<pid>/status``, after a
  ``gc.collect()``) before and after; bytes per agent and the RSS projected for 100k. Also
  the host's idle CPU with all those agents active.
* ``migration`` (single server, two nodes): N agents under continuous load (a caller per
  agent, ``add`` at a steady rate); every agent is migrated to the other node once per
  strategy, one move at a time, while a probe calls that agent back to back. Reported: the
  node's ``pause_ms``, the longest caller-observed call overlapping each move, failed calls
  (must be 0) and whether every counter still equals the number of successful ``add`` calls.
* ``failover`` (a 3-server NatsCluster, R3; three nodes, lease 1.5 s): M ``Counter``
  agents, ``kill -9`` of one node process, then per agent of the dead node the time from the
  kill until a call (retried) answers, and whether the state survived. Then a replacement
  node, M ``Keeper`` agents (``restart="permanent"``), another ``kill -9`` and, without
  calling them, the time until each is re-placed on a live node (watched in the directory).
* ``join`` (single server, rebalance on): K agents on three nodes, settled; a fourth node
  joins; once no agent moved for 2 s: the share of agents that moved (ideal 1/4) and the
  largest node against the average.

Usage::

    python bench/cluster.py              # full, under 5 minutes
    python bench/cluster.py --quick      # under 60 s
    python bench/cluster.py --only failover,join

The last line of the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Child, CpuMeter, format_table, machine_info, percentile

from natsagents import Mesh
from natsagents.cluster import Claim, Directory

HOST_SCRIPT = str(Path(__file__).resolve().parent / "_cluster_host.py")
SECTIONS = ("activation", "migration", "failover", "join")
LEASE = 1.5

#: Targets from the issue.
TARGET_ACTIVATION_RATE = 2000.0  # agents/s on one node
TARGET_RSS_100K = 10**9  # bytes: 100k idle agents in at most 1 GB of RSS
TARGET_PAUSE_P99_MS = 50.0
TARGET_FAILOVER_S = LEASE + 1.0
TARGET_MOVED = 0.25  # within 0.5-1.5 x 1/4
TARGET_MAX_OVER_AVG = 1.25


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def rss_bytes(pid: int) -> int:
    """VmRSS of process ``pid`` in bytes (0 when unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pcts(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``values`` (nan when empty)."""
    s = sorted(values)
    return {"p50": percentile(s, 50), "p99": percentile(s, 99), "max": s[-1] if s else float("nan")}


def r(value: float, digits: int = 1) -> float:
    return round(value, digits)


# -- host processes ----------------------------------------------------------------------


class Hosts:
    """The host processes of one section, stopped (or killed) when the section ends."""

    def __init__(self) -> None:
        self.children: dict[str, Child] = {}
        self.urls: dict[str, str] = {}

    async def start(self, url: str, prefix: str, node: str, *, cluster: bool = True, rebalance: bool = False) -> Child:
        argv = [sys.executable, HOST_SCRIPT, "--url", url, "--prefix", prefix, "--node", node]
        if cluster:
            argv += ["--cluster", "--lease", str(LEASE)]
        if rebalance:
            argv.append("--rebalance")
        child = await asyncio.to_thread(Child, f"host {node}", argv, ready_timeout=60.0)
        self.children[node] = child
        self.urls[node] = url
        return child

    async def start_many(self, specs: list[tuple[str, str, str]], **kw: Any) -> None:
        """Start ``(url, prefix, node)`` hosts in parallel."""
        await asyncio.gather(*(self.start(url, prefix, node, **kw) for url, prefix, node in specs))

    def kill(self, node: str) -> float:
        """``kill -9`` the host; returns ``perf_counter()`` just before the signal."""
        child = self.children[node]
        t = time.perf_counter()
        os.kill(child.pid, signal.SIGKILL)
        child.proc.wait()
        return t

    def stop_all(self, *, kill: bool = False) -> None:
        """Close every host's stdin (it closes its mesh and exits), then wait; or SIGKILL."""
        for child in self.children.values():
            if kill and child.proc.poll() is None:
                child.proc.kill()
            elif child.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    child.proc.stdin.close()
        for child in self.children.values():
            child.stop(timeout=20.0)
        self.children.clear()


class Control:
    """Control requests to the hosts (``benchctl.<node>``) over a plain nats-py connection."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc

    @classmethod
    async def connect(cls, url: str) -> Control:
        import nats

        return cls(await nats.connect(url, name="bench-cluster-control"))

    async def __call__(self, node: str, op: str, timeout: float = 30.0, **body: Any) -> dict[str, Any]:
        import nats.errors

        data = json.dumps({"op": op, **body}).encode()
        for attempt in range(50):  # a host that just printed READY may not be routable for a moment
            try:
                msg = await self.nc.request(f"benchctl.{node}", data, timeout=timeout)
                break
            except nats.errors.NoRespondersError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        out = json.loads(msg.data)
        if "error" in out:
            raise RuntimeError(f"{node} {op}: {out['error']}")
        return out

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.close()


@contextlib.asynccontextmanager
async def section_hosts(kill: bool = False) -> Any:
    hosts = Hosts()
    try:
        yield hosts
    finally:
        await asyncio.to_thread(hosts.stop_all, kill=kill)


async def concurrently(n: int, limit: int, fn: Callable[[int], Awaitable[Any]]) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with gate:
            return await fn(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


class DirectoryWatch:
    """The directory bucket as the client sees it through a watch: the current owner of
    every agent, every change of owner with its ``perf_counter()`` time."""

    def __init__(self, mesh: Mesh) -> None:
        self.directory = Directory(mesh._transport, mesh.prefix)
        self.changes: list[tuple[float, str, str | None, str | None]] = []  # (t, address, old, new)
        self.owner: dict[str, str] = {}
        self.last_change = time.perf_counter()

    async def start(self) -> DirectoryWatch:
        self.directory.add_listener(self._on_change)
        await self.directory.start()
        return self

    def _on_change(self, key: tuple[str, str], claim: Claim | None, revision: int = 0) -> None:
        address = f"{key[0]}/{key[1]}"
        old = self.owner.get(address)
        new = claim.record.node if claim is not None else None
        if new == old:
            return
        if new is None:
            self.owner.pop(address, None)
        else:
            self.owner[address] = new
        now = time.perf_counter()
        self.changes.append((now, address, old, new))
        self.last_change = now

    async def wait_quiet(self, quiet: float, limit: float, *, after: float | None = None) -> bool:
        """Wait until no owner changed for ``quiet`` s (and, with ``after``, at least one
        change happened after that time), at most ``limit`` s. True if it settled."""
        end = time.perf_counter() + limit
        while time.perf_counter() < end:
            now = time.perf_counter()
            moved_since = after is None or self.last_change > after
            if moved_since and now - self.last_change >= quiet:
                return True
            await asyncio.sleep(0.05)
        return False

    def per_node(self, kind: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for address, node in self.owner.items():
            if kind is None or address.startswith(kind + "/"):
                counts[node] = counts.get(node, 0) + 1
        return dict(sorted(counts.items()))

    async def stop(self) -> None:
        await self.directory.stop()


# -- 1 + 2: activation rate and idle memory ----------------------------------------------


async def activation_run(url: str, mode: str, cfg: argparse.Namespace) -> dict[str, Any]:
    """One host (standalone or cluster node): spawn, on-demand activation, spawn more, RSS."""
    prefix = f"bact{mode[0]}"
    out: dict[str, Any] = {}
    ctl = await Control.connect(url)
    client = await Mesh.connect(url, prefix=prefix, name=f"bench-client-{mode}")
    try:
        async with section_hosts(kill=True) as hosts:  # a close of 100k agents is not measured
            child = await hosts.start(url, prefix, "n1", cluster=mode == "cluster")
            await ctl("n1", "gc")
            await asyncio.sleep(0.5)
            rss0 = rss_bytes(child.pid)
            await ctl("n1", "stats")  # reset the GC and loop-lag counters
            out["phases"] = phases = {}

            async def phase(name: str, res: dict[str, Any]) -> None:
                st = await ctl("n1", "stats")
                phases[name] = {
                    "count": res["ok"],
                    "seconds": r(res["elapsed_s"], 3),
                    "rate": r(res["ok"] / res["elapsed_s"]),
                    "errors": res["errors"],
                    "failed": res.get("failed", 0),
                    "error_sample": res.get("error_sample", [])[:2],
                    "gc_s": r(st["gc_total_s"], 3),
                    "gc_max_s": r(st["gc_max_s"], 3),
                    "gc_full": st["gc_full"],
                    "loop_lag_max_s": r(st["loop_lag_max_s"], 3),
                }
                v = phases[name]
                log(
                    f"  {mode}: {name} {v['count']:,} in {v['seconds']:.2f} s = {v['rate']:,.0f}/s; "
                    f"errors {v['errors']} (failed after retries {v['failed']}); host GC {v['gc_s']:.2f} s "
                    f"(longest {v['gc_max_s'] * 1000:.0f} ms, {v['gc_full']} full), loop lag max "
                    f"{v['loop_lag_max_s'] * 1000:.0f} ms"
                )

            # 1. spawn on the hosting node
            res = await ctl("n1", "spawn", timeout=900, tag="s", start=0, count=cfg.n_rate, concurrency=200)
            await phase("spawn", res)
            out["spawn_rate"] = res["ok"] / res["elapsed_s"]
            out["spawn_p50_ms"], out["spawn_p99_ms"] = res["p50_ms"], res["p99_ms"]

            # 2. on-demand: a remote client calls agents nobody activated
            latencies: list[float] = []
            errors: list[str] = []

            async def call(i: int) -> None:
                t0 = time.perf_counter()
                try:
                    await client.ref(f"Counter/d{i}").call("get", timeout=60.0)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
                latencies.append(time.perf_counter() - t0)

            started = time.perf_counter()
            await concurrently(cfg.n_demand, 200, call)
            elapsed = time.perf_counter() - started
            out["demand_rate"] = len(latencies) / elapsed
            p = pcts(latencies)
            out["demand_p50_ms"], out["demand_p99_ms"] = p["p50"] * 1000, p["p99"] * 1000
            await phase(
                "on-demand",
                {"ok": len(latencies), "elapsed_s": elapsed, "errors": len(errors), "error_sample": errors[:2]},
            )

            # 3. more agents, up to the memory count
            rest = cfg.n_mem - cfg.n_rate
            if rest > 0:
                res = await ctl("n1", "spawn", timeout=900, tag="s", start=cfg.n_rate, count=rest, concurrency=200)
                await phase("spawn-more", res)
                out["spawn_rest_rate"] = res["ok"] / res["elapsed_s"]
            info = await ctl("n1", "gc")
            await asyncio.sleep(0.5)
            info = await ctl("n1", "info")
            rss1 = rss_bytes(child.pid)
            agents = info["local"]
            out.update(agents=agents, rss_before=rss0, rss_after=rss1)
            out["bytes_per_agent"] = (rss1 - rss0) / agents if agents else float("nan")
            out["rss_100k_projected"] = rss0 + out["bytes_per_agent"] * 100_000
            # Idle CPU with all of them active: one-second slices over the window, the
            # median reported (a single short window swung 5-18 % between runs of the same
            # code: a heartbeat round or a GC pass falling in it or not), with the spread and
            # the garbage collector's share of the window.
            await ctl("n1", "stats")  # reset the GC and loop-lag counters
            slices = []
            for _ in range(max(1, round(cfg.idle_s))):
                meter = CpuMeter({"host": child.pid})
                meter.start()
                await asyncio.sleep(1.0)
                slices.append(meter.stop().get("host", float("nan")) * 100)
            gc_stats = await ctl("n1", "stats")
            out["idle_cpu_pct"] = statistics.median(slices)
            out["idle_cpu_pct_slices"] = [round(x, 1) for x in slices]
            out["idle_gc_s"] = gc_stats.get("gc_total_s", float("nan"))
            out["idle_gc_full"] = gc_stats.get("gc_full", 0)
            out["warnings"] = sum(info["warnings"].values())
            out["warning_kinds"] = sorted(info["warnings"])[:5]
            log(
                f"  {mode}: {agents:,} agents, RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB, "
                f"{out['bytes_per_agent']:,.0f} B/agent, idle CPU {out['idle_cpu_pct']:.1f} % "
                f"(median of 1-s slices {out['idle_cpu_pct_slices']}; GC {out['idle_gc_s']:.3f} s, "
                f"{out['idle_gc_full']} full)"
            )
    finally:
        await client.aclose()
        await ctl.close()
    return out


async def bench_activation(url: str, cfg: argparse.Namespace) -> dict[str, Any]:
    standalone = await activation_run(url, "standalone", cfg)
    cluster = await activation_run(url, "cluster", cfg)
    return {"standalone": standalone, "cluster": cluster}


# -- 3: migration pause ------------------------------------------------------------------


async def bench_migration(url: str, cfg: argparse.Namespace) -> dict[str, Any]:
    prefix = "bmig"
    n = cfg.n_migrate
    ctl = await Control.connect(url)
    client = await Mesh.connect(url, prefix=prefix, name="bench-client-migration")
    try:
        async with section_hosts() as hosts:
            await hosts.start_many([(url, prefix, "n1"), (url, prefix, "n2")])
            addrs = [f"Counter/m{i}" for i in range(n)]
            await concurrently(n, 50, lambda i: client.spawn(addrs[i], timeout=30.0))
            await concurrently(n, 50, lambda i: client.ref(addrs[i]).call("add", by=1))
            owners = {rec.address: rec.node for rec in await client.agents()}
            log(f"  {n} agents: " + ", ".join(f"{nd} {list(owners.values()).count(nd)}" for nd in ("n1", "n2")))
            ok = dict.fromkeys(addrs, 1)  # successful adds per agent (the first above)
            calls: dict[str, list[tuple[float, float]]] = {a: [] for a in addrs}  # (start, end) of ok calls
            failures: list[str] = []
            stop = asyncio.Event()
            progress = asyncio.Event()  # set after every successful call

            async def calls_done(address: str, count: int, task: asyncio.Future[None]) -> None:
                """Wait until ``address`` has ``count`` successful calls (or the probe ended)."""
                while len(calls[address]) < count and not task.done():
                    progress.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(progress.wait(), 0.5)

            async def add(address: str) -> None:
                t0 = time.perf_counter()
                try:
                    await client.ref(address).call("add", by=1, timeout=10.0)
                except Exception as exc:
                    failures.append(f"{address}: {type(exc).__name__}: {exc}")
                    return
                ok[address] += 1
                calls[address].append((t0, time.perf_counter()))
                progress.set()

            interval = n / cfg.load_rate

            async def background(i: int) -> None:
                await asyncio.sleep(interval * i / n)  # spread the callers over the interval
                while not stop.is_set():
                    await add(addrs[i])
                    await asyncio.sleep(interval)

            load = [asyncio.ensure_future(background(i)) for i in range(n)]
            results: dict[str, Any] = {}
            try:
                await asyncio.sleep(0.5)
                for strategy in ("checkpoint_restore", "state_transfer", "cold_start"):
                    pauses: list[float] = []
                    moved = 0
                    moves: list[float] = []
                    worst: list[float] = []
                    started = time.perf_counter()
                    fails_before = len(failures)
                    for address in addrs:
                        target = "n2" if owners[address] == "n1" else "n1"
                        before = len(calls[address])
                        probe_stop = asyncio.Event()

                        async def probe(address: str = address, probe_stop: asyncio.Event = probe_stop) -> None:
                            while not probe_stop.is_set():
                                await add(address)

                        task = asyncio.ensure_future(probe())
                        await calls_done(address, before + 2, task)
                        t0 = time.perf_counter()
                        res = await client.migrate(address, to=target, strategy=strategy)
                        t1 = time.perf_counter()
                        after = len(calls[address])
                        await calls_done(address, after + 2, task)
                        probe_stop.set()
                        await task
                        owners[address] = str(res["to"])
                        moved += bool(res["moved"]) and res["to"] == target
                        pauses.append(float(res["pause_ms"]))
                        moves.append((t1 - t0) * 1000)
                        # the longest successful call that overlapped the move
                        overlap = [e - s for s, e in calls[address] if s < t1 and e > t0]
                        worst.append(max(overlap) * 1000 if overlap else 0.0)
                    elapsed = time.perf_counter() - started
                    p, m, w = pcts(pauses), pcts(moves), pcts(worst)
                    results[strategy] = {
                        "moves": len(pauses),
                        "moved": moved,
                        "pause_p50_ms": r(p["p50"], 2),
                        "pause_p99_ms": r(p["p99"], 2),
                        "pause_max_ms": r(p["max"], 2),
                        "migrate_call_p50_ms": r(m["p50"], 2),
                        "caller_max_p50_ms": r(w["p50"], 2),
                        "caller_max_p99_ms": r(w["p99"], 2),
                        "caller_max_max_ms": r(w["max"], 2),
                        "failed_calls": len(failures) - fails_before,
                        "seconds": r(elapsed, 2),
                    }
                    log(
                        f"  {strategy}: {len(pauses)} moves in {elapsed:.1f} s, pause p50 {p['p50']:.1f} "
                        f"p99 {p['p99']:.1f} ms, caller max p99 {w['p99']:.1f} ms, "
                        f"failed calls {len(failures) - fails_before}"
                    )
            finally:
                stop.set()
                await asyncio.gather(*load, return_exceptions=True)
            # every successful add must be in the state, whatever the moves
            values = await concurrently(n, 50, lambda i: client.ref(addrs[i]).call("get"))
            lost = sum(1 for i, a in enumerate(addrs) if values[i] != ok[a])
            all_calls = sum(len(c) for c in calls.values()) + n
            log(f"  {all_calls:,} successful calls, {len(failures)} failed, {lost} counters off")
            return {
                "agents": n,
                "load_calls_per_s": cfg.load_rate,
                "strategies": results,
                "failed_calls": len(failures),
                "failure_sample": failures[:3],
                "counters_off": lost,
                "successful_calls": all_calls,
            }
    finally:
        await client.aclose()
        await ctl.close()


# -- 4: failover after kill -9 -----------------------------------------------------------


async def leader_of(ctl: Control, nodes: list[str]) -> str | None:
    for node in nodes:
        with contextlib.suppress(Exception):
            if (await ctl(node, "info", timeout=5))["leader"]:
                return node
    return None


def pick_victim(owners: dict[str, str], live: list[str], leader: str | None) -> str:
    """A node other than the leader, the one with the most agents."""
    counts = {node: list(owners.values()).count(node) for node in live if node != leader}
    return max(counts, key=lambda node: (counts[node], node))


async def heartbeat_age(client: Mesh, node: str) -> float:
    for status in await client.nodes():
        if status.record.node_id == node:
            return status.age
    return float("nan")


async def bench_failover(cfg: argparse.Namespace) -> dict[str, Any]:
    from natsagents.server import NatsCluster

    m = cfg.n_failover
    prefix = "bfail"
    out: dict[str, Any] = {"agents": m, "lease_s": LEASE, "target_s": TARGET_FAILOVER_S}
    servers = await asyncio.to_thread(lambda: NatsCluster(3, name="benchfail").start())
    try:
        urls = servers.urls
        ctl = await Control.connect(urls[0])
        client = await Mesh.connect(urls[0], prefix=prefix, name="bench-client-failover")
        try:
            async with section_hosts() as hosts:
                await hosts.start_many([(urls[i], prefix, f"n{i + 1}") for i in range(3)])
                live = ["n1", "n2", "n3"]
                out["transient"] = await failover_transient(client, ctl, hosts, live, m)
                # a replacement node, then permanent agents
                await hosts.start(urls[2], prefix, "n4")
                live = [nd for nd in ("n1", "n2", "n3", "n4") if hosts.children[nd].proc.poll() is None]
                out["permanent"] = await failover_permanent(client, ctl, hosts, live, m)
        finally:
            await client.aclose()
            await ctl.close()
    finally:
        await asyncio.to_thread(servers.stop)
    return out


async def failover_transient(client: Mesh, ctl: Control, hosts: Hosts, live: list[str], m: int) -> dict[str, Any]:
    addrs = [f"Counter/f{i}" for i in range(m)]
    await concurrently(m, 50, lambda i: client.spawn(addrs[i], timeout=30.0))
    await concurrently(m, 50, lambda i: client.ref(addrs[i]).call("add", by=1))
    owners = {rec.address: rec.node for rec in await client.agents() if rec.kind == "Counter"}
    leader = await leader_of(ctl, live)
    victim = pick_victim(owners, live, leader)
    on_victim = [a for a in addrs if owners.get(a) == victim]
    age = await heartbeat_age(client, victim)
    log(f"  transient: {m} agents over {_spread(owners)}; leader {leader}; kill -9 {victim} ({len(on_victim)} agents)")
    t_kill = hosts.kill(victim)
    answered: dict[str, float] = {}
    retries: dict[str, int] = {}
    values: dict[str, Any] = {}
    errors: list[str] = []

    async def probe(address: str) -> None:
        end = t_kill + 30.0
        tries = 0
        while time.perf_counter() < end:
            try:
                values[address] = await client.ref(address).call("get", timeout=max(0.5, end - time.perf_counter()))
            except Exception as exc:
                tries += 1
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)
                continue
            answered[address] = time.perf_counter() - t_kill
            break
        retries[address] = tries

    await asyncio.gather(*(probe(a) for a in addrs))
    victim_times = [answered[a] for a in on_victim if a in answered]
    other_times = [answered[a] for a in addrs if a not in on_victim and a in answered]
    p, q = pcts(victim_times), pcts(other_times)
    after = {rec.address: rec.node for rec in await client.agents() if rec.kind == "Counter"}
    res = {
        "victim": victim,
        "leader": leader,
        "victim_agents": len(on_victim),
        "heartbeat_age_at_kill_s": r(age, 3),
        "failover_p50_s": r(p["p50"], 3),
        "failover_p99_s": r(p["p99"], 3),
        "failover_max_s": r(p["max"], 3),
        "unanswered": len(on_victim) - len(victim_times),
        "survivor_max_s": r(q["max"], 3),
        "calls_retried": sum(1 for t in retries.values() if t),
        "state_lost": sum(1 for a in addrs if values.get(a) != 1),
        "still_on_victim": sum(1 for node in after.values() if node == victim),
        "error_sample": errors[:3],
    }
    log(
        f"  transient: failover p50 {p['p50']:.3f} s, p99 {p['p99']:.3f} s, max {p['max']:.3f} s "
        f"(victim's last heartbeat was {age:.2f} s old at the kill); survivors max {q['max'] * 1000:.0f} ms; "
        f"{res['unanswered']} unanswered, {res['state_lost']} lost state"
    )
    return res


async def failover_permanent(client: Mesh, ctl: Control, hosts: Hosts, live: list[str], m: int) -> dict[str, Any]:
    addrs = [f"Keeper/k{i}" for i in range(m)]
    watch = await DirectoryWatch(client).start()
    try:
        await concurrently(m, 50, lambda i: client.spawn(addrs[i], timeout=30.0))
        await concurrently(m, 50, lambda i: client.ref(addrs[i]).call("add", by=1))
        owners = {a: n for a, n in watch.owner.items() if a.startswith("Keeper/")}
        leader = await leader_of(ctl, live)
        victim = pick_victim(owners, live, leader)
        on_victim = {a for a, node in owners.items() if node == victim}
        age = await heartbeat_age(client, victim)
        log(
            f"  permanent: {m} agents over {_spread(owners)}; leader {leader}; "
            f"kill -9 {victim} ({len(on_victim)} agents)"
        )
        t_kill = hosts.kill(victim)
        end = t_kill + 20.0
        while time.perf_counter() < end:
            if all(watch.owner.get(a) not in (None, victim) for a in on_victim):
                break
            await asyncio.sleep(0.01)
        replaced: dict[str, float] = {}
        for t, address, _old, new in watch.changes:
            if t > t_kill and address in on_victim and new not in (None, victim) and address not in replaced:
                replaced[address] = t - t_kill
        times = list(replaced.values())
        p = pcts(times)
        # then they answer, with their state, from where the directory says
        values = await concurrently(m, 50, lambda i: client.ref(addrs[i]).call("get", timeout=10.0))
        res = {
            "victim": victim,
            "leader": leader,
            "victim_agents": len(on_victim),
            "heartbeat_age_at_kill_s": r(age, 3),
            "replaced_p50_s": r(p["p50"], 3),
            "replaced_p99_s": r(p["p99"], 3),
            "replaced_max_s": r(p["max"], 3),
            "not_replaced": len(on_victim) - len(replaced),
            "state_lost": sum(1 for v in values if v != 1),
        }
        log(
            f"  permanent: re-placed p50 {p['p50']:.3f} s, p99 {p['p99']:.3f} s, max {p['max']:.3f} s "
            f"(last heartbeat {age:.2f} s old at the kill); {res['not_replaced']} not re-placed, "
            f"{res['state_lost']} lost state"
        )
        return res
    finally:
        await watch.stop()


def _spread(owners: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for node in owners.values():
        counts[node] = counts.get(node, 0) + 1
    return ", ".join(f"{node} {c}" for node, c in sorted(counts.items()))


# -- 5: fraction moved when a node joins -------------------------------------------------


async def bench_join(url: str, cfg: argparse.Namespace) -> dict[str, Any]:
    prefix = "bjoin"
    k = cfg.n_join
    client = await Mesh.connect(url, prefix=prefix, name="bench-client-join")
    watch = await DirectoryWatch(client).start()
    try:
        async with section_hosts() as hosts:
            specs = [(url, prefix, f"j{i}") for i in (1, 2, 3)]
            await hosts.start_many(specs, rebalance=True)
            addrs = [f"Counter/j{i}" for i in range(k)]
            await concurrently(k, 100, lambda i: client.spawn(addrs[i], timeout=30.0))
            settled = await watch.wait_quiet(cfg.quiet_s, 60.0)
            before = dict(watch.owner)
            moves_before = len(watch.changes) - k
            log(f"  {k} agents on 3 nodes ({_spread(before)}), settled={settled}")
            t_join = time.perf_counter()
            await hosts.start(url, prefix, "j4", rebalance=True)
            t_ready = time.perf_counter()
            settled = await watch.wait_quiet(cfg.quiet_s, 90.0, after=t_ready)
            after = dict(watch.owner)
            moved = sum(1 for a in addrs if after.get(a) != before.get(a))
            changes = [c for c in watch.changes if c[0] > t_join]
            last = max((c[0] for c in changes), default=t_ready)
            counts = watch.per_node("Counter")
            answers = await concurrently(k, 100, lambda i: _answers(client, addrs[i]))
            avg = k / max(1, len(counts))
            res = {
                "agents": k,
                "moved": moved,
                "moved_fraction": r(moved / k, 4),
                "moves": len(changes),
                "moves_before_join": moves_before,
                "per_node_before": _counts(before),
                "per_node_after": counts,
                "max_over_avg": r(max(counts.values()) / avg, 3),
                "settle_s": r(last - t_ready, 2),
                "settled": settled,
                "missing": sum(1 for a in addrs if a not in after),
                "unanswered_after": answers.count(False),
            }
            log(
                f"  join: {moved} of {k} moved ({moved / k:.3f}) in {len(changes)} moves, last {last - t_ready:.1f} s "
                f"after the node was ready; per node {counts}, max/avg {res['max_over_avg']}"
            )
            return res
    finally:
        await watch.stop()
        await client.aclose()


async def _answers(client: Mesh, address: str) -> bool:
    try:
        await client.ref(address).call("get", timeout=10.0)
    except Exception:
        return False
    return True


def _counts(owners: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in owners.values():
        counts[node] = counts.get(node, 0) + 1
    return dict(sorted(counts.items()))


# -- orchestration -----------------------------------------------------------------------


@contextlib.contextmanager
def single_server() -> Iterator[Any]:
    from natsagents.server import NatsServer

    server = NatsServer().start()
    try:
        yield server
    finally:
        server.stop()


async def run_sections(cfg: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with single_server() as server:
        log(f"nats-server {server.url} (JetStream, R1, pid {server.pid})")
        for name in cfg.sections:
            started = time.perf_counter()
            log(f"[{name}]")
            if name == "activation":
                results[name] = await bench_activation(server.url, cfg)
            elif name == "migration":
                results[name] = await bench_migration(server.url, cfg)
            elif name == "failover":
                results[name] = await bench_failover(cfg)
            elif name == "join":
                results[name] = await bench_join(server.url, cfg)
            results[name]["wall_s"] = r(time.perf_counter() - started)
    return results


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(results: dict[str, Any], cfg: argparse.Namespace) -> dict[str, Any]:
    """Print the tables; return the flat figures for the JSON line."""
    flat: dict[str, Any] = {}
    rows: list[list[Any]] = []
    if "activation" in results:
        c, s = results["activation"]["cluster"], results["activation"]["standalone"]
        for label, key in (("spawn on the node", "spawn_rate"), ("on-demand, remote caller", "demand_rate")):
            flat[f"{key}_cluster"] = r(c[key])
            flat[f"{key}_standalone"] = r(s[key])
            flat[f"{key}_ratio"] = r(c[key] / s[key], 3)
            ok = c[key] >= TARGET_ACTIVATION_RATE
            rows.append(
                [
                    f"activations/s, {label}",
                    f"{c[key]:,.0f}",
                    "≥ 2,000",
                    f"{s[key]:,.0f}",
                    f"{c[key] / s[key]:.3f}",
                    verdict(ok),
                ]
            )
        if "spawn_rest_rate" in c:
            flat["spawn_rest_rate_cluster"] = r(c["spawn_rest_rate"])
            flat["spawn_rest_rate_standalone"] = r(s["spawn_rest_rate"])
            rows.append(
                [
                    f"activations/s, spawn up to {c['agents']:,} agents",
                    f"{c['spawn_rest_rate']:,.0f}",
                    "≥ 2,000",
                    f"{s['spawn_rest_rate']:,.0f}",
                    f"{c['spawn_rest_rate'] / s['spawn_rest_rate']:.3f}",
                    verdict(c["spawn_rest_rate"] >= TARGET_ACTIVATION_RATE),
                ]
            )
        rows.append(
            [
                "spawn latency p99 (ms)",
                f"{c['spawn_p99_ms']:.1f}",
                "",
                f"{s['spawn_p99_ms']:.1f}",
                f"{c['spawn_p99_ms'] / s['spawn_p99_ms']:.3f}",
                "",
            ]
        )
        rows.append(
            [
                "bytes per idle agent",
                f"{c['bytes_per_agent']:,.0f}",
                "≤ 10,000",
                f"{s['bytes_per_agent']:,.0f}",
                f"{c['bytes_per_agent'] / s['bytes_per_agent']:.3f}",
                verdict(c["bytes_per_agent"] <= 10_000),
            ]
        )
        rows.append(
            [
                f"RSS with {c['agents']:,} agents (MiB)",
                f"{c['rss_after'] / 2**20:,.0f}",
                "",
                f"{s['rss_after'] / 2**20:,.0f}",
                "",
                "",
            ]
        )
        rows.append(
            [
                "RSS projected for 100k agents (MB)",
                f"{c['rss_100k_projected'] / 1e6:,.0f}",
                "≤ 1,000",
                f"{s['rss_100k_projected'] / 1e6:,.0f}",
                f"{c['rss_100k_projected'] / s['rss_100k_projected']:.3f}",
                verdict(c["rss_100k_projected"] <= TARGET_RSS_100K),
            ]
        )
        rows.append(
            [
                f"idle CPU with {c['agents']:,} agents (% of a core)",
                f"{c['idle_cpu_pct']:.1f}",
                "",
                f"{s['idle_cpu_pct']:.1f}",
                "",
                "",
            ]
        )
        errs = {m: sum(ph["errors"] for ph in v["phases"].values()) for m, v in (("c", c), ("s", s))}
        fails = {m: sum(ph["failed"] for ph in v["phases"].values()) for m, v in (("c", c), ("s", s))}
        rows.append(
            [
                "activation errors: first tries / failed after 5 tries",
                f"{errs['c']} / {fails['c']}",
                "0",
                f"{errs['s']} / {fails['s']}",
                "",
                verdict(errs["c"] == 0),
            ]
        )
        gc_c = max(ph["gc_max_s"] for ph in c["phases"].values()) * 1000
        gc_s = max(ph["gc_max_s"] for ph in s["phases"].values()) * 1000
        lag_c = max(ph["loop_lag_max_s"] for ph in c["phases"].values()) * 1000
        lag_s = max(ph["loop_lag_max_s"] for ph in s["phases"].values()) * 1000
        rows.append(["longest GC pause on the node (ms)", f"{gc_c:,.0f}", "", f"{gc_s:,.0f}", "", ""])
        rows.append(
            [
                "longest event-loop stall on the node (ms)",
                f"{lag_c:,.0f}",
                f"< lease {LEASE * 1000:,.0f}",
                f"{lag_s:,.0f}",
                "",
                verdict(lag_c < LEASE * 1000),
            ]
        )
        for key in ("bytes_per_agent", "rss_100k_projected", "rss_after", "rss_before"):
            flat[f"{key}_cluster"] = round(c[key])
            flat[f"{key}_standalone"] = round(s[key])
        flat["agents_memory"] = c["agents"]
        flat["idle_cpu_pct_cluster"] = r(c["idle_cpu_pct"])
        flat["idle_cpu_pct_standalone"] = r(s["idle_cpu_pct"])
        for mode, v in (("cluster", c), ("standalone", s)):
            flat[f"activation_errors_{mode}"] = sum(ph["errors"] for ph in v["phases"].values())
            flat[f"activation_failed_{mode}"] = sum(ph["failed"] for ph in v["phases"].values())
            flat[f"gc_max_s_{mode}"] = max(ph["gc_max_s"] for ph in v["phases"].values())
            flat[f"loop_lag_max_s_{mode}"] = max(ph["loop_lag_max_s"] for ph in v["phases"].values())
        flat["host_warnings_cluster"] = c["warnings"]
    if "migration" in results:
        mig = results["migration"]
        for strategy, v in mig["strategies"].items():
            ok = v["pause_p99_ms"] <= TARGET_PAUSE_P99_MS and v["failed_calls"] == 0
            rows.append(
                [
                    f"migration {strategy}: pause p50 / p99 (ms)",
                    f"{v['pause_p50_ms']:.1f} / {v['pause_p99_ms']:.1f}",
                    "p99 ≤ 50",
                    "",
                    "",
                    verdict(v["pause_p99_ms"] <= TARGET_PAUSE_P99_MS),
                ]
            )
            rows.append(
                [
                    "  caller's longest call in the move p50 / p99 / max (ms)",
                    f"{v['caller_max_p50_ms']:.1f} / {v['caller_max_p99_ms']:.1f} / {v['caller_max_max_ms']:.1f}",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            rows.append([f"  failed calls ({v['moves']} moves)", v["failed_calls"], "0", "", "", verdict(ok)])
            for key in ("pause_p50_ms", "pause_p99_ms", "caller_max_p99_ms", "caller_max_max_ms", "failed_calls"):
                flat[f"migrate_{strategy}_{key}"] = v[key]
        rows.append(
            [
                "migration: counters off (lost or doubled adds)",
                mig["counters_off"],
                "0",
                "",
                "",
                verdict(mig["counters_off"] == 0),
            ]
        )
        flat["migrate_failed_calls"] = mig["failed_calls"]
        flat["migrate_counters_off"] = mig["counters_off"]
    if "failover" in results:
        fo = results["failover"]
        t, p = fo["transient"], fo["permanent"]
        rows.append(
            [
                "failover, transient, until answering p50 / p99 / max (s)",
                f"{t['failover_p50_s']:.2f} / {t['failover_p99_s']:.2f} / {t['failover_max_s']:.2f}",
                f"≤ {TARGET_FAILOVER_S:g}",
                "",
                "",
                verdict(t["failover_max_s"] <= TARGET_FAILOVER_S and not t["unanswered"]),
            ]
        )
        rows.append(
            [
                "failover, permanent, until re-placed p50 / p99 / max (s)",
                f"{p['replaced_p50_s']:.2f} / {p['replaced_p99_s']:.2f} / {p['replaced_max_s']:.2f}",
                f"≤ {TARGET_FAILOVER_S:g}",
                "",
                "",
                verdict(p["replaced_max_s"] <= TARGET_FAILOVER_S and not p["not_replaced"]),
            ]
        )
        rows.append(
            [
                "failover: agents with lost state",
                t["state_lost"] + p["state_lost"],
                "0",
                "",
                "",
                verdict(t["state_lost"] + p["state_lost"] == 0),
            ]
        )
        for key in (
            "failover_p50_s",
            "failover_p99_s",
            "failover_max_s",
            "unanswered",
            "state_lost",
            "heartbeat_age_at_kill_s",
            "survivor_max_s",
        ):
            flat[f"failover_transient_{key}"] = t[key]
        for key in (
            "replaced_p50_s",
            "replaced_p99_s",
            "replaced_max_s",
            "not_replaced",
            "state_lost",
            "heartbeat_age_at_kill_s",
        ):
            flat[f"failover_permanent_{key}"] = p[key]
    if "join" in results:
        j = results["join"]
        lo, hi = 0.5 * TARGET_MOVED, 1.5 * TARGET_MOVED
        rows.append(
            [
                "join: fraction of agents moved",
                f"{j['moved_fraction']:.3f}",
                f"{lo:.3f} to {hi:.3f}",
                "",
                "",
                verdict(lo <= j["moved_fraction"] <= hi),
            ]
        )
        rows.append(
            [
                "join: largest node / average",
                f"{j['max_over_avg']:.3f}",
                "≤ 1.25",
                "",
                "",
                verdict(j["max_over_avg"] <= TARGET_MAX_OVER_AVG),
            ]
        )
        for key in ("moved_fraction", "moves", "max_over_avg", "settle_s", "per_node_after"):
            flat[f"join_{key}"] = j[key]
    print()
    print(f"cluster benchmarks ({'quick' if cfg.quick else 'full'}); baseline = standalone host in the same run")
    print(format_table(["figure", "cluster", "target", "baseline", "ratio", "verdict"], rows))
    print()
    return flat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run (< 60 s)")
    p.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    p.add_argument("--agents-rate", dest="n_rate", type=int, help="spawns timed for the rate (10000, quick 5000)")
    p.add_argument("--agents-demand", dest="n_demand", type=int, help="on-demand activations (5000, quick 2000)")
    p.add_argument("--agents-memory", dest="n_mem", type=int, help="agents for the memory figure (100000, quick 20000)")
    p.add_argument("--agents-migrate", dest="n_migrate", type=int, help="agents migrated per strategy (200, quick 50)")
    p.add_argument("--agents-failover", dest="n_failover", type=int, help="agents in the failover run (300, quick 60)")
    p.add_argument("--agents-join", dest="n_join", type=int, help="agents in the join run (1000, quick 300)")
    p.add_argument("--load-rate", type=float, default=200.0, help="background calls/s during migrations (200)")
    cfg = p.parse_args(argv)
    cfg.sections = [s.strip() for s in cfg.only.split(",")] if cfg.only else list(SECTIONS)
    unknown = set(cfg.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    q = cfg.quick
    cfg.n_rate = cfg.n_rate or (5000 if q else 10_000)
    cfg.n_demand = cfg.n_demand or (2000 if q else 5000)
    cfg.n_mem = max(cfg.n_mem or (20_000 if q else 100_000), cfg.n_rate)
    cfg.n_mem -= cfg.n_demand  # the on-demand agents count towards the memory figure
    cfg.n_migrate = cfg.n_migrate or (50 if q else 200)
    cfg.n_failover = cfg.n_failover or (60 if q else 300)
    cfg.n_join = cfg.n_join or (300 if q else 1000)
    cfg.idle_s = 3.0 if q else 10.0
    cfg.quiet_s = 2.0
    started = time.perf_counter()
    try:
        results = asyncio.run(run_sections(cfg))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    flat = report(results, cfg)
    summary = {"bench": "cluster", "quick": cfg.quick, **flat, "sections": results, "machine": machine_info()}
    summary["wall_s"] = r(time.perf_counter() - started)
    print(json.dumps(summary, separators=(",", ":"), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
