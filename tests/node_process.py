"""One host or cluster-node process for the tests that need another process (to kill,
pause or fuzz it): ``python -m tests.node_process URLS PREFIX NAME [OPTIONS_JSON]``.

``OPTIONS_JSON`` (all optional):

* ``kinds``: names of the agent classes to host (default ``["Counter"]``), from
  :data:`KINDS` (``tests.agents``, ``tests.fuzz_agents``, ``PermCounter``,
  ``EventualCounter`` and ``Crasher``);
* ``cluster``: ``ClusterSettings`` fields (``lease`` 1.5 s, ``rebalance`` off and no
  durable delivery unless given; a ``delivery`` object becomes ``DeliverySettings``), or
  ``null`` for a standalone host (the default);
* ``drain``: on SIGTERM, drain first and print ``DRAINED {json}``;
* ``stats``: print ``STATS {json}`` (this process's ``natsagents_*_total`` counters) on
  SIGTERM: ``"before_close"`` or ``"after_close"``.

Prints ``READY`` once serving and ``STOPPED`` after closing on SIGTERM. Logs go to stderr
at ``$CLUSTER_HOST_LOG`` (default ``WARNING``); ``$CLUSTER_HOST_DEBUG``: logger names
(comma-separated) logged at ``DEBUG``. ``$NODE_HEAP_REPORT=<folder>``: trace the
Python heap from the start (tracemalloc, slower) and on SIGTERM, before closing, write
``<folder>/heap-<NAME>.txt``: the heap traced before and after a full collection, the
largest allocation sites and the most numerous object types (what a host's RSS holds);
with ``$NODE_HEAP_HOLDERS=<type name>`` also the referrer chains of two objects of that type.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from natsagents import Agent, ClusterSettings, DeliverySettings, Mesh, action
from tests.agents import Counter, Keeper, Typed
from tests.fuzz_agents import Canary, Ephemeral, Lazy, Merged, OnlySpawn, Reader, Tally, Wide


class PermCounter(Counter):
    """The same counter, re-placed by the leader when its node dies."""

    restart = "permanent"


class EventualCounter(Counter):
    """The same counter, its state stored behind the replies (``consistency = "eventual"``)."""

    consistency = "eventual"
    flush_interval = 0.2


class SessionCounter(Agent):
    """A session-consistency counter with two read replicas (tests/cluster/test_replicas.py)."""

    consistency = "session"
    read_replicas = 2

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action(read_only=True)
    async def get(self) -> int:
        return int(self.state.get("n", 0))


class DegradedCounter(Agent):
    """A counter that keeps serving on the minority side (``continue_degraded``: reads
    degraded, writes queued on the node's disk; tests/cluster/test_degraded.py)."""

    partition_strategy = "continue_degraded"

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action(read_only=True)
    async def get(self) -> int:
        return int(self.state.get("n", 0))


class Crasher(Agent):
    """``boom`` kills the process that runs it: a poison message that crashes its host."""

    @action
    async def boom(self) -> None:
        sys.stderr.flush()
        os._exit(3)


KINDS: dict[str, type[Agent]] = {
    cls.__name__: cls
    for cls in (
        Counter,
        Keeper,
        Typed,
        PermCounter,
        EventualCounter,
        SessionCounter,
        DegradedCounter,
        Crasher,
        Canary,
        Tally,
        Wide,
        OnlySpawn,
        Ephemeral,
        Lazy,
        Reader,
        Merged,
    )
}


def counters(mesh: Mesh) -> dict[str, float]:
    """This process's ``natsagents_*_total`` samples, keyed ``metric{labels}``."""
    out: dict[str, float] = {}
    for family in mesh.metrics.registry.collect():
        if not family.name.startswith("natsagents_"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                key = f"{sample.name}{{{labels}}}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


def cluster_settings(name: str, options: dict[str, Any] | None) -> ClusterSettings | None:
    if options is None:
        return None
    options = dict(options)
    options.setdefault("lease", 1.5)
    options.setdefault("rebalance", False)
    delivery = options.pop("delivery", None)
    if delivery is not None:
        delivery = dict(delivery)
        if "backoff" in delivery:
            delivery["backoff"] = tuple(delivery["backoff"])
        delivery = DeliverySettings(**delivery)
    return ClusterSettings(node_id=name, delivery=delivery, **options)


def _print_stats(mesh: Mesh) -> None:
    try:
        print("STATS " + json.dumps(counters(mesh)), flush=True)
    except Exception as exc:  # diagnostics only
        print(f"STATS {{}} ({exc})", flush=True)


def _heap_report(mesh: Mesh, path: Path) -> None:
    """What this process's heap holds (``$NODE_HEAP_REPORT``): diagnostics only."""
    before = tracemalloc.get_traced_memory()[0]
    unreachable = gc.collect()
    snapshot = tracemalloc.take_snapshot()
    current, peak = tracemalloc.get_traced_memory()
    types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    lines = [
        f"traced {before / 2**20:.1f} MiB, after a full collection ({unreachable} unreachable objects) "
        f"{current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB; "
        f"{len(mesh._host.activations)} agents active",
        "largest allocation sites:",
        *(f"  {stat}" for stat in snapshot.statistics("lineno")[:25]),
        "most numerous objects tracked by gc:",
        *(f"  {n} {t}" for t, n in types.most_common(25)),
        *_holders(os.environ.get("NODE_HEAP_HOLDERS", "")),
    ]
    path.write_text("\n".join(lines) + "\n")


def _holders(type_name: str, depth: int = 6) -> list[str]:
    """What keeps the objects of ``type_name`` alive: the referrer chains of two of them."""
    if not type_name:
        return []
    found = [o for o in gc.get_objects() if type(o).__qualname__ == type_name]
    out = [f"holders of {type_name} ({len(found)} alive):"]
    seen: set[int] = {id(found)}
    for obj in found[:2]:
        frontier = [(obj, 0)]
        while frontier:
            item, level = frontier.pop()
            if level >= depth:
                continue
            for ref in gc.get_referrers(item):
                if id(ref) in seen or ref is frontier:
                    continue
                seen.add(id(ref))
                text = type(ref).__qualname__
                if isinstance(ref, (list, set, dict, tuple)):
                    text += f" len {len(ref)}" + (f" keys {list(ref)[:5]!r:.120}" if isinstance(ref, dict) else "")
                elif type(ref).__name__ == "frame":
                    text += f" {ref.f_code.co_filename}:{ref.f_lineno} {ref.f_code.co_name}"
                elif type(ref).__name__ == "coroutine":
                    text += f" {ref.__qualname__}"
                out.append("  " * (level + 1) + text)
                frontier.append((ref, level + 1))
    return out[:400]


async def main(urls: str, prefix: str, name: str, options: dict[str, Any]) -> None:
    heap = os.environ.get("NODE_HEAP_REPORT")
    if heap:
        tracemalloc.start()
    logging.basicConfig(
        level=os.environ.get("CLUSTER_HOST_LOG", "WARNING"),
        stream=sys.stderr,
        format=f"%(asctime)s {name} %(name)s %(levelname)s %(message)s",
    )
    for logger in filter(None, os.environ.get("CLUSTER_HOST_DEBUG", "").split(",")):
        logging.getLogger(logger).setLevel(logging.DEBUG)  # e.g. natsagents.runtime.replies
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    settings = cluster_settings(name, options.get("cluster"))
    mesh = await Mesh.connect(urls.split(","), prefix=prefix, name=name, cluster=settings, stop_timeout=5.0)
    stats = options.get("stats")
    try:
        await mesh.host(*(KINDS[k] for k in options.get("kinds", ["Counter"])))
        print("READY", flush=True)
        await stop.wait()
        if options.get("drain"):
            print("DRAINED " + json.dumps(await mesh.drain()), flush=True)
        if stats == "before_close":
            _print_stats(mesh)
        if heap:
            _heap_report(mesh, Path(heap) / f"heap-{name}.txt")
    finally:
        await mesh.aclose()
    if stats == "after_close":
        _print_stats(mesh)
    print("STOPPED", flush=True)


ROOT = Path(__file__).resolve().parents[1]


async def start(url: str, prefix: str, name: str, options: dict[str, Any]) -> asyncio.subprocess.Process:
    """Start this script as a process (stdout piped) and return it once it printed ``READY``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.node_process",
        url,
        prefix,
        name,
        json.dumps(options),
        stdout=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"READY", line
    return proc


@contextlib.asynccontextmanager
async def running(
    url: str, prefix: str, name: str, options: dict[str, Any]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """:func:`start`, and on exit kill the process unless it ended already."""
    proc = await start(url, prefix, name, options)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


if __name__ == "__main__":
    opts = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], opts))
