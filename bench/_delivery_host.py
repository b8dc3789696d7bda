"""A process of ``bench/delivery.py``: an SDK cluster node or a raw nats-py consumer.

Started by the benchmark, never by hand::

    python bench/_delivery_host.py node --url URL --prefix P --node n1 [--partitions 16 ...]
    python bench/_delivery_host.py raw --url URL --stream S --name c1 --partitions 0,3,6

``node``: ``Mesh.connect(url, cluster=ClusterSettings(..., delivery=DeliverySettings(...)))``
hosting :class:`Counter` (state persisted after each ``add``, as exactly-once needs) and
:class:`Scratch` (the same without persisted state). The node consumes its share of the
durable inbox's partitions. For the latency figures the benchmark wraps the partition
owner's ``_ack`` in this process (measurement only: it reads the publish time the client
put in the message after the double ack returned, and counts the acknowledged messages).

``raw``: plain nats-py JetStream. For each partition given, a durable pull consumer
``p<n>`` (made by the benchmark) is read in a loop: ``fetch(batch)``, then every message
of the batch is acknowledged with ``ack_sync()`` (double ack, as the SDK's owner does),
concurrently, and the next fetch follows. A message with a ``Bench-Done`` header (the
serial phase) is followed by an empty core message to that subject once acknowledged.

Both print ``READY``, answer control requests on ``benchdel.<name>`` (a plain nats-py
connection, JSON) and exit when stdin closes:

* ``info``: partitions consumed (and, on a node, those it should consume), agents here;
* ``count``: the number of messages acknowledged so far;
* ``mark``: start a measurement window (clears the latency histograms); answers the
  number of messages acknowledged so far;
* ``take``: the count so far and the latency histograms since ``mark``;
* ``timings``: with ``--timings``, wall time per step of a durable message (owner's
  queue, forward, ack, the agent's handling and state write) since the last ``timings``;
* ``prof_on`` / ``prof_off`` ``{path}``: cProfile of this process, dumped to ``path``.

Latencies are kept as histograms with 2 % wide logarithmic buckets (``bucket(µs)``), so
that the benchmark can merge the processes' figures and take percentiles from the sum.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
from _common import signal_ready, wait_for_stdin_eof

from natsagents import Agent, ClusterSettings, Mesh, action
from natsagents.delivery.settings import DeliverySettings

LOG_STEP = math.log(1.02)
#: Raw side, serial phase: the consumer publishes an empty message here after the ack.
DONE_HEADER = "Bench-Done"


def bucket(us: float) -> int:
    """The histogram bucket of a latency in µs (2 % wide, logarithmic)."""
    return int(math.log(max(us, 1.0)) / LOG_STEP)


class Hist:
    """Latency histogram: bucket → count."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def add_ns(self, published_ns: int) -> None:
        if published_ns:
            b = bucket((time.time_ns() - published_ns) / 1000)
            self.counts[b] = self.counts.get(b, 0) + 1

    def take(self) -> dict[str, int]:
        return {str(k): v for k, v in self.counts.items()}


class Counter(Agent):
    """A counter whose state (``{"n": int}``) is persisted after each ``add`` (the
    default ``persistence = "action"``). ``t`` is the publish time (ns), for latency."""

    @action
    async def add(self, by: int = 1, t: int = 0) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action
    async def get(self) -> int:
        return int(self.state.get("n", 0))


class Scratch(Counter):
    """The same counter, state not persisted (at-least-once only)."""

    persistence = "none"


class Probe:
    """What the benchmark reads from this process."""

    def __init__(self) -> None:
        self.acked = 0  # messages acknowledged (a node without the _ack hook reads its metrics)
        self.ack_hist = Hist()  # publish → double ack confirmed
        self.profile: cProfile.Profile | None = None
        self.timings: Timings | None = None

    def mark(self) -> None:
        self.ack_hist = Hist()


def _publish_time(data: bytes) -> int:
    try:
        body = msgpack.unpackb(data, raw=False)
        return int(body.get("t", 0))
    except Exception:
        return 0


class Timings:
    """Wall time spent in named coroutine methods (``--timings``): count, total, p50/p99."""

    def __init__(self) -> None:
        self.hists: dict[str, dict[int, int]] = {}
        self.totals: dict[str, float] = {}

    def add(self, key: str, seconds: float) -> None:
        hist = self.hists.setdefault(key, {})
        b = bucket(seconds * 1e6)
        hist[b] = hist.get(b, 0) + 1
        self.totals[key] = self.totals.get(key, 0.0) + seconds

    def take(self) -> dict[str, Any]:
        out = {k: {"hist": {str(b): n for b, n in h.items()}, "total_s": self.totals[k]} for k, h in self.hists.items()}
        self.hists, self.totals = {}, {}
        return out

    def wrap(self, owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return
        clock = time.perf_counter

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return await original(*args, **kwargs)
            finally:
                self.add(key, clock() - t0)

        setattr(owner, name, timed)


async def loop_lag(timings: Timings, every: float = 0.01) -> None:
    """How late a 10 ms timer fires: how busy this process's event loop is."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(every)
        timings.add("process: event-loop lag (10 ms timer)", max(0.0, loop.time() - t - every))


def _instrument_timings(timings: Timings) -> None:
    """Time the steps of a durable message on this node (measurement only)."""
    from natsagents.cluster.node import ClusterNode
    from natsagents.delivery import partition as partition_module
    from natsagents.runtime.caller import Caller
    from natsagents.runtime.host import Host
    from natsagents.state.store import StateStore
    from natsagents.transport.jetstream import JsMsg, PullConsumer

    partition = partition_module.Partition
    timings.wrap(partition, "_process", "owner: _process (forward + answer + ack)")
    timings.wrap(Caller, "forward", "owner: Caller.forward (request to the agent → reply)")
    timings.wrap(JsMsg, "ack_sync", "owner: JsMsg.ack_sync (double ack)")
    timings.wrap(PullConsumer, "fetch", "owner: PullConsumer.fetch")
    timings.wrap(Host, "dispatch", "agent: Host.dispatch (decode, run, persist)")
    timings.wrap(ClusterNode, "after_action", "agent: ClusterNode.after_action (persist)")
    timings.wrap(StateStore, "save_encoded", "agent: StateStore.save_encoded (KV CAS write)")
    # time a message waits in the owner between fetch and the start of its _process
    enqueue, process = partition._enqueue, partition._process
    fetched: dict[int, float] = {}

    def _enqueue(self: Any, msg: Any) -> None:
        fetched[id(msg)] = time.perf_counter()
        enqueue(self, msg)

    async def _process(self: Any, msg: Any) -> None:
        t = fetched.pop(id(msg), None)
        if t is not None:
            timings.add("owner: queued (fetch → _process starts)", time.perf_counter() - t)
        await process(self, msg)

    partition._enqueue = _enqueue
    partition._process = _process
    # time a request waits in the agent's mailbox (deliver → Host.dispatch starts)
    from natsagents.runtime.activation import Activation

    deliver, handle = Activation.deliver, Host.dispatch
    arrived: dict[int, float] = {}

    def _deliver(self: Any, msg: Any) -> None:
        arrived[id(msg)] = time.perf_counter()
        deliver(self, msg)

    async def _handle(self: Any, act: Any, msg: Any) -> Any:
        t = arrived.pop(id(msg), None)
        if t is not None:
            timings.add("agent: mailbox (deliver → Host.dispatch starts)", time.perf_counter() - t)
        return await handle(self, act, msg)

    Activation.deliver = _deliver  # type: ignore[method-assign]
    Host.dispatch = _handle  # type: ignore[method-assign]


def _instrument_owner_ack(probe: Probe) -> bool:
    """Record publish → ack for every durable message this node acknowledges."""
    try:
        from natsagents.delivery import partition as partition_module
    except ImportError:
        return False
    partition = getattr(partition_module, "Partition", None)
    original = getattr(partition, "_ack", None)
    if original is None:
        return False

    async def _ack(self: Any, msg: Any) -> None:
        await original(self, msg)
        probe.acked += 1
        probe.ack_hist.add_ns(_publish_time(msg.data))

    partition._ack = _ack  # type: ignore[union-attr]
    return True


async def control(name: str, url: str, probe: Probe, info: Any, count: Any) -> Any:
    import nats

    ctl = await nats.connect(url, name=f"benchdel-{name}")

    async def on_ctl(msg: Any) -> None:
        try:
            body = json.loads(msg.data)
            op = body.get("op")
            if op == "info":
                out: dict[str, Any] = info()
            elif op == "count":
                out = {"acked": count()}
            elif op == "mark":
                probe.mark()
                out = {"acked": count()}
            elif op == "take":
                out = {"acked": count(), "ack_hist": probe.ack_hist.take()}
            elif op == "timings":
                out = probe.timings.take() if probe.timings is not None else {}
            elif op == "prof_on":
                probe.profile = cProfile.Profile()
                probe.profile.enable()
                out = {}
            elif op == "prof_off":
                if probe.profile is not None:
                    probe.profile.disable()
                    probe.profile.dump_stats(body["path"])
                    probe.profile = None
                out = {}
            else:
                out = {"error": f"unknown op {op!r}"}
        except Exception as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        await msg.respond(json.dumps(out).encode())

    await ctl.subscribe(f"benchdel.{name}", cb=on_ctl)
    await ctl.flush()
    return ctl


# -- SDK node ----------------------------------------------------------------------------


async def run_node(cfg: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format=f"[{cfg.node}] %(levelname)s %(name)s: %(message)s")
    probe = Probe()
    instrumented = _instrument_owner_ack(probe)
    timings = Timings()
    lag = None
    if cfg.timings:
        _instrument_timings(timings)
        lag = asyncio.ensure_future(loop_lag(timings))
    probe.timings = timings
    delivery = DeliverySettings(
        partitions=cfg.partitions, batch=cfg.batch, max_pending=cfg.max_pending, attempt_timeout=30.0
    )
    cluster = ClusterSettings(node_id=cfg.node, lease=cfg.lease, rebalance=False, delivery=delivery)
    mesh = await Mesh.connect(cfg.url, name=cfg.node, prefix=cfg.prefix, cluster=cluster)
    ctl = None
    try:
        await mesh.host(Counter, Scratch)

        def info() -> dict[str, Any]:
            owners = getattr(mesh, "_owners", None)
            return {
                "node": cfg.node,
                "owned": owners.owned() if owners is not None else [],
                "desired": sorted(owners.desired()) if owners is not None else [],
                "local": len(mesh.local_agents()),
                "instrumented": instrumented,
                # handed over in batches (DeliverySettings.forward_batch): messages and requests
                "batched": sum(
                    mesh.metrics.value("natsagents_durable_batch_messages_sum", {"kind": kind})
                    for kind in ("Counter", "Scratch")
                ),
                "batches": sum(
                    mesh.metrics.value("natsagents_durable_batch_messages_count", {"kind": kind})
                    for kind in ("Counter", "Scratch")
                ),
            }

        def count() -> int:
            if instrumented:  # a plain counter: reading the metrics collects the registry
                return probe.acked
            total = 0.0
            for kind in ("Counter", "Scratch"):
                for outcome in ("ok", "already_applied"):
                    total += mesh.metrics.value("natsagents_durable_messages_total", {"kind": kind, "outcome": outcome})
            return int(total)

        ctl = await control(cfg.node, cfg.url, probe, info, count)
        signal_ready()
        await wait_for_stdin_eof()
    finally:
        if lag is not None:
            lag.cancel()
        if ctl is not None:
            with contextlib.suppress(Exception):
                await ctl.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(mesh.aclose(), 20.0)


# -- raw nats-py consumer ----------------------------------------------------------------


async def run_raw(cfg: argparse.Namespace) -> None:
    import nats
    import nats.errors

    probe = Probe()
    timings = probe.timings = Timings()
    clock = time.perf_counter
    partitions = [int(p) for p in cfg.partitions.split(",") if p]
    nc = await nats.connect(cfg.url, name=f"raw-{cfg.name}")
    js = nc.jetstream()

    async def settle(msg: Any) -> None:
        published = _publish_time(msg.data)
        t0 = clock()
        try:
            await msg.ack_sync(timeout=5.0)
            timings.add("raw: Msg.ack_sync (double ack)", clock() - t0)
        except Exception as exc:
            sys.stderr.write(f"[{cfg.name}] ack failed: {type(exc).__name__}: {exc}\n")
            return
        probe.acked += 1
        probe.ack_hist.add_ns(published)
        done = (msg.headers or {}).get(DONE_HEADER)
        if done:  # the serial phase: tell the producer the message is acknowledged
            await nc.publish(done, b"")

    async def consume(n: int) -> None:
        sub = await js.pull_subscribe_bind(durable=f"p{n}", stream=cfg.stream)
        while True:
            t0 = clock()
            try:
                msgs = await sub.fetch(cfg.batch, timeout=1.0)
                timings.add("raw: fetch", clock() - t0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as exc:
                sys.stderr.write(f"[{cfg.name}] fetch p{n} failed: {type(exc).__name__}: {exc}\n")
                await asyncio.sleep(0.2)
                continue
            await asyncio.gather(*(settle(m) for m in msgs))

    tasks = [asyncio.ensure_future(consume(n)) for n in partitions]
    if cfg.timings:
        tasks.append(asyncio.ensure_future(loop_lag(timings)))
    ctl = None
    try:

        def info() -> dict[str, Any]:
            return {"node": cfg.name, "owned": partitions}

        ctl = await control(cfg.name, cfg.url, probe, info, lambda: probe.acked)
        signal_ready()
        await wait_for_stdin_eof()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if ctl is not None:
            with contextlib.suppress(Exception):
                await ctl.close()
        with contextlib.suppress(Exception):
            await nc.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    node = sub.add_parser("node")
    node.add_argument("--url", required=True)
    node.add_argument("--prefix", required=True)
    node.add_argument("--node", required=True)
    node.add_argument("--lease", type=float, default=3.0)
    node.add_argument("--partitions", type=int, default=16)
    node.add_argument("--batch", type=int, default=64)
    node.add_argument("--max-pending", type=int, default=1024)
    node.add_argument("--timings", action="store_true", help="time the steps of each message")
    raw = sub.add_parser("raw")
    raw.add_argument("--url", required=True)
    raw.add_argument("--stream", required=True)
    raw.add_argument("--name", required=True)
    raw.add_argument("--partitions", required=True, help="comma-separated partition numbers")
    raw.add_argument("--batch", type=int, default=64)
    raw.add_argument("--timings", action="store_true", help="also time the event loop's lag")
    args = p.parse_args()
    asyncio.run(run_node(args) if args.role == "node" else run_raw(args))
