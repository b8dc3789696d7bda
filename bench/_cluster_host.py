"""A host process for ``bench/cluster.py``: one cluster node (or a standalone host).

Started by the benchmark, never by hand::

    python bench/_cluster_host.py --url URL --prefix P --node n1 [--cluster --lease 1.5 --rebalance]

It connects a mesh (``cluster=ClusterSettings(...)`` with ``--cluster``), hosts
:class:`Counter` and :class:`Keeper`, opens a second, plain nats-py connection for
control requests on ``benchctl.<node>`` (JSON in, JSON out) and prints ``READY``. It
closes the mesh and exits when its stdin closes (the benchmark kills it instead where a
close is not part of what is measured, or is the point: ``kill -9``).

Control operations (``{"op": ...}``):

* ``spawn`` ``{tag, start, count, kind, concurrency}``: ``mesh.spawn`` of
  ``<kind>/<tag><i>`` for ``i`` in ``[start, start + count)``, at most ``concurrency`` in
  flight; answers the elapsed time, the per-spawn latency percentiles and the errors.
* ``gc``: ``gc.collect()`` (before reading the RSS from the outside).
* ``stats``: garbage-collector pauses and the event loop's longest lag since the last
  ``stats`` (the ticker runs every 20 ms).
* ``info``: node id, leadership, agents active here, warnings logged so far.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile, signal_ready, wait_for_stdin_eof

from natsagents import Agent, ClusterSettings, Mesh, action


class Counter(Agent):
    """A counter whose state (``{"n": int}``) is persisted after each ``add``."""

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return self.state["n"]

    @action
    async def get(self) -> int:
        return self.state.get("n", 0)


class Keeper(Counter):
    """A ``Counter`` that the leader re-places at once when its node dies."""

    restart = "permanent"


KINDS: dict[str, type[Agent]] = {"Counter": Counter, "Keeper": Keeper}


class _LogCounter(logging.Handler):
    """Counts warnings by message template and prints only the first few of each kind,
    so that a storm of identical warnings does not drown the benchmark's output."""

    SHOW = 3

    def __init__(self, node: str) -> None:
        super().__init__(logging.WARNING)
        self.node = node
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.name}: {record.msg}"[:120]
        n = self.counts.get(key, 0) + 1
        self.counts[key] = n
        if n <= self.SHOW:
            try:
                text = record.getMessage()
            except Exception:
                text = str(record.msg)
            more = " (further ones only counted)" if n == self.SHOW else ""
            sys.stderr.write(f"[{self.node}] {record.levelname.lower()} {record.name}: {text[:300]}{more}\n")


async def spawn_range(mesh: Mesh, body: dict[str, Any]) -> dict[str, Any]:
    """Spawn a range of agents; a spawn that fails is tried again (up to 5 times, 0.1 s
    apart) and counted, so that the memory figure still gets its agents."""
    kind, tag = body.get("kind", "Counter"), body.get("tag", "a")
    start, count = int(body.get("start", 0)), int(body["count"])
    concurrency = int(body.get("concurrency", 200))
    latencies: list[float] = []
    errors: list[str] = []
    failed = 0
    clock = time.perf_counter
    todo = iter(range(start, start + count))

    async def one(i: int) -> None:
        nonlocal failed
        for attempt in range(5):
            t0 = clock()
            try:
                await mesh.spawn(f"{kind}/{tag}{i}", timeout=60.0)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            else:
                latencies.append(clock() - t0)
                return
            if attempt < 4:
                await asyncio.sleep(0.1)
        failed += 1

    async def worker() -> None:
        # A fixed pool of workers, as a real client would run: not one task per agent
        # (tens of thousands of tasks created at once stall the loop and feed the GC).
        for i in todo:
            await one(i)

    started = clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = clock() - started
    latencies.sort()
    return {
        "elapsed_s": elapsed,
        "ok": len(latencies),
        "errors": len(errors),
        "failed": failed,
        "error_sample": sorted(set(errors))[:3],
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


class LoopStats:
    """Garbage-collector pauses (``gc.callbacks``) and event-loop lag (a 20 ms ticker) since
    the last :meth:`take`: what can stall a node past its lease."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self.reset()
        gc.callbacks.append(self._on_gc)

    def reset(self) -> None:
        self.gc_total = 0.0
        self.gc_max = 0.0
        self.gc_full = 0
        self.lag_max = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        pause = time.perf_counter() - self._t0
        self.gc_total += pause
        self.gc_max = max(self.gc_max, pause)
        self.gc_full += info.get("generation") == 2

    async def tick(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.02)
            now = loop.time()
            self.lag_max = max(self.lag_max, now - last - 0.02)
            last = now

    def take(self) -> dict[str, Any]:
        out = {
            "gc_total_s": self.gc_total,
            "gc_max_s": self.gc_max,
            "gc_full": self.gc_full,
            "loop_lag_max_s": self.lag_max,
        }
        self.reset()
        return out


async def main(cfg: argparse.Namespace) -> None:
    import nats

    counter = _LogCounter(cfg.node)
    logging.getLogger().addHandler(counter)
    logging.getLogger().setLevel(logging.WARNING)
    cluster = None
    if cfg.cluster:
        cluster = ClusterSettings(node_id=cfg.node, lease=cfg.lease, rebalance=cfg.rebalance)
    stats = LoopStats()
    ticker = asyncio.ensure_future(stats.tick())
    mesh = await Mesh.connect(cfg.url, name=cfg.node, prefix=cfg.prefix, cluster=cluster)
    ctl = await nats.connect(cfg.url, name=f"benchctl-{cfg.node}")
    try:
        await mesh.host(Counter, Keeper)

        async def on_ctl(msg: Any) -> None:
            try:
                body = json.loads(msg.data)
                op = body.get("op")
                if op == "spawn":
                    out: dict[str, Any] = await spawn_range(mesh, body)
                elif op == "gc":
                    gc.collect()
                    out = {}
                elif op == "stats":
                    out = stats.take()
                elif op == "info":
                    node = mesh.cluster_node
                    out = {
                        "node": cfg.node,
                        "leader": bool(node is not None and node.is_leader),
                        "local": len(mesh.local_agents()),
                        "warnings": dict(counter.counts),
                    }
                else:
                    out = {"error": f"unknown op {op!r}"}
            except Exception as exc:
                out = {"error": f"{type(exc).__name__}: {exc}"}
            await msg.respond(json.dumps(out).encode())

        await ctl.subscribe(f"benchctl.{cfg.node}", cb=on_ctl)
        await ctl.flush()
        signal_ready()
        await wait_for_stdin_eof()
    finally:
        ticker.cancel()
        with contextlib.suppress(Exception):
            await ctl.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(mesh.aclose(), cfg.close_timeout)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--cluster", action="store_true")
    p.add_argument("--lease", type=float, default=1.5)
    p.add_argument("--rebalance", action="store_true")
    p.add_argument("--close-timeout", type=float, default=15.0)
    asyncio.run(main(p.parse_args()))
