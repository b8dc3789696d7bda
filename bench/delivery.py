"""Durable delivery: at-least-once and exactly-once throughput and latency with agents on a
3-node cluster, beside raw nats-py JetStream publish + pull + ack on the same cluster.

One run starts a 3-server ``NatsCluster`` (loopback, free ports; streams R3) and measures:

* ``raw``: plain nats-py (``nats.js``). A stream ``braw`` laid out like the SDK's inbox
  (subjects ``braw.in.<kind>.<agent>``, a subject transform into 16 partitions by
  ``{{partition(16,1,2)}}``, work-queue retention, R3) with one durable pull consumer per
  partition. The producer (this process) keeps C publishes in flight (``js.publish`` with
  a ``Nats-Msg-Id``, waiting for the PubAck), spread over N agent subjects; three consumer
  processes (``_delivery_host.py raw``), one per server, each take the partitions the SDK
  would give its node and loop: ``fetch(64)``, then ``ack_sync()`` (double ack) of every
  message of the batch, concurrently.
* ``at_least_once`` and ``exactly_once``: three node processes (``_delivery_host.py
  node``, one per server, ``ClusterSettings(delivery=DeliverySettings())``) hosting
  ``Counter`` (state persisted after each ``add``); the client (this process) keeps C
  ``ref.send("add", by=1, t=…)`` in flight on N agents, ``ref`` from
  ``mesh.ref(...).with_options(delivery=...)``; ``send`` returns on the PubAck.
* ``at_least_once_volatile``: the same with ``Scratch`` (state not persisted), to show what
  the state write costs.

Both producers obey the same flow control: at most C publishes in flight and at most B
messages (``--max-backlog``, 1000) published and not yet acknowledged by a consumer (the
consumers' counts are polled every 20 ms), so that a producer faster than its consumers
does not spend the shared CPU on a growing backlog; ``--max-backlog 0`` runs open loop.

Per part: a warm-up, then a window of D seconds: **throughput = messages acknowledged by
the consumers (applied by the agents) per second** in the window, counted in the consumer
processes (on a node: its owner's double acks; the agents' counters are checked after); publishes per second and the
backlog left at the end; latency under load from the publish time carried in each message
to the double ack (p50/p99; with the flow control this is about B / throughput); CPU per
message of every process (``/proc``). Then the producer stops and the backlog drains;
every message must be applied (for the SDK: the agents' counters must add up, exactly for
exactly-once). Then a serial phase, one message at a time: the SDK's ``ref.call(...)``
(publish → result, and publish → ack as the node saw it); raw: publish → the consumer's
ack confirmed (and a core message back to the producer).

Usage::

    python bench/delivery.py              # full, about 2-3 minutes
    python bench/delivery.py --quick      # under 60 s
    python bench/delivery.py --duration 20 --agents 100 --concurrency 200 --max-backlog 1000
    python bench/delivery.py --only raw,exactly_once
    python bench/delivery.py --timings    # wall time per step of a message in the nodes
    python bench/delivery.py --profile /tmp/prof   # cProfile of the nodes (figures distorted)

The last line of the output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
from _common import Child, CpuMeter, format_table, machine_info, percentile

from natsagents import Mesh
from natsagents.cluster.ring import hash64

HOST_SCRIPT = str(Path(__file__).resolve().parent / "_delivery_host.py")
PARTS = ("raw", "at_least_once", "exactly_once", "at_least_once_volatile")
PARTITIONS = 16
BATCH = 64
PREFIX = "bdel"
RAW_STREAM = "braw"

#: Targets from the issue.
TARGET_ALO_OVER_RAW = 0.6
TARGET_EO_OVER_ALO = 0.5


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


# -- histograms (as kept by _delivery_host.py) ---------------------------------------------

LOG_STEP = math.log(1.02)


def merge_hists(hists: list[dict[str, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for hist in hists:
        for k, v in hist.items():
            out[int(k)] = out.get(int(k), 0) + v
    return out


def hist_pct(hist: dict[int, int], q: float) -> float:
    """The ``q``-th percentile in ms of a bucketed histogram (bucket middle)."""
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank = q / 100 * (total - 1)
    seen = 0
    for k in sorted(hist):
        seen += hist[k]
        if seen > rank:
            return math.exp((k + 0.5) * LOG_STEP) / 1000
    return math.exp((max(hist) + 0.5) * LOG_STEP) / 1000


def pcts_ms(values: list[float]) -> tuple[float, float]:
    s = sorted(values)
    return percentile(s, 50) * 1000, percentile(s, 99) * 1000


# -- processes -----------------------------------------------------------------------------


class Procs:
    """Child processes of one part; all stopped when it ends (also on errors)."""

    def __init__(self) -> None:
        self.children: dict[str, Child] = {}

    async def start(self, name: str, args: list[str]) -> Child:
        child = await asyncio.to_thread(Child, name, [sys.executable, HOST_SCRIPT, *args], ready_timeout=60.0)
        self.children[name] = child
        return child

    def stop_all(self) -> None:
        for child in self.children.values():  # close every stdin first: they exit in parallel
            if child.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    child.proc.stdin.close()
        for child in self.children.values():
            child.stop(timeout=25.0)
        self.children.clear()


@contextlib.asynccontextmanager
async def processes() -> Any:
    procs = Procs()
    try:
        yield procs
    finally:
        await asyncio.to_thread(procs.stop_all)


class Control:
    """JSON requests to the processes (``benchdel.<name>``)."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc

    async def __call__(self, name: str, op: str, timeout: float = 30.0, **body: Any) -> dict[str, Any]:
        import nats.errors

        data = json.dumps({"op": op, **body}).encode()
        for attempt in range(50):
            try:
                msg = await self.nc.request(f"benchdel.{name}", data, timeout=timeout)
                break
            except nats.errors.NoRespondersError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        out: dict[str, Any] = json.loads(msg.data)
        if "error" in out:
            raise RuntimeError(f"{name} {op}: {out['error']}")
        return out

    async def all(self, names: list[str], op: str, **body: Any) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self(n, op, **body) for n in names)))


def counter(ctl: Control, names: list[str], base: int) -> Callable[[], Awaitable[int]]:
    """Messages the consumers acknowledged since ``base``."""

    async def applied() -> int:
        return sum(c["acked"] for c in await ctl.all(names, "count")) - base

    return applied


def owners_of(nodes: list[str]) -> dict[str, list[int]]:
    """Partition → node by rendezvous hashing, as ``PartitionOwners.desired`` does."""
    out: dict[str, list[int]] = {n: [] for n in nodes}
    for p in range(PARTITIONS):
        out[max(nodes, key=lambda n: hash64(f"{p}:{n}"))].append(p)
    return out


# -- the load ------------------------------------------------------------------------------


class Load:
    """C tasks, each sending in a loop until stopped; counts what was accepted.

    With ``max_backlog`` (> 0) a send starts only while fewer than that many messages are
    sent (or being sent) and not yet applied: end-to-end flow control, from the consumers'
    counts polled every 20 ms. Without it the producer runs open loop and a backlog grows
    in the stream whenever the consumers are slower.
    """

    def __init__(
        self,
        send: Callable[[int], Awaitable[None]],
        concurrency: int,
        max_backlog: int = 0,
        applied: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.send = send
        self.concurrency = concurrency
        self.max_backlog = max_backlog
        self._applied_fn = applied
        self.sent = 0
        self.started = 0
        self.applied = 0
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._run(k)) for k in range(self.concurrency)]
        if self.max_backlog > 0 and self._applied_fn is not None:
            self._tasks.append(asyncio.ensure_future(self._poll()))

    async def _poll(self) -> None:
        assert self._applied_fn is not None
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.applied = await self._applied_fn()
            if self.started - self.applied < self.max_backlog:
                self._room.set()
            await asyncio.sleep(0.02)

    async def _run(self, k: int) -> None:
        while not self._stop.is_set():
            if self.max_backlog > 0:
                while self.started - self.applied >= self.max_backlog and not self._stop.is_set():
                    self._room.clear()
                    await self._room.wait()
                if self._stop.is_set():
                    return
            self.started += 1
            try:
                await self.send(k)
            except Exception as exc:
                self.started -= 1
                self.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)
            else:
                self.sent += 1

    async def stop(self) -> None:
        self._stop.set()
        self._room.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def measure(
    ctl: Control,
    names: list[str],
    load: Load,
    pids: dict[str, int | None],
    cfg: argparse.Namespace,
    label: str,
    base: int,
    hook: Callable[[bool], Awaitable[Any]] | None = None,
) -> dict[str, Any]:
    """Warm-up, window, drain: the throughput part of one side. ``base``: messages the
    consumers had acknowledged before the load started; ``hook(True)`` runs when the
    window opens, ``hook(False)`` when it closes (its result is kept as ``"window"``)."""
    load.start()
    await asyncio.sleep(cfg.warmup)
    meter = CpuMeter(pids)
    marks = await ctl.all(names, "mark")
    sent0 = load.sent
    meter.start()
    if hook is not None:
        await hook(True)
    t0 = time.perf_counter()
    per_second: list[int] = []  # applied in each second of the window (from the flow control's counts)
    last = load.applied
    while time.perf_counter() - t0 < cfg.duration - 1.0:
        await asyncio.sleep(1.0)
        per_second.append(load.applied - last)
        last = load.applied
    await asyncio.sleep(max(0.0, cfg.duration - (time.perf_counter() - t0)))
    takes = await ctl.all(names, "take")
    window = time.perf_counter() - t0
    sent1 = load.sent
    cpu = meter.stop()
    extra = await hook(False) if hook is not None else None
    acked0 = sum(m["acked"] for m in marks)
    acked1 = sum(t["acked"] for t in takes)
    hist = merge_hists([t["ack_hist"] for t in takes])
    await load.stop()
    # drain: every accepted message must be applied
    drain_started = time.perf_counter()
    acked = acked1
    while time.perf_counter() - drain_started < cfg.drain_timeout:
        acked = sum(t["acked"] for t in await ctl.all(names, "take"))
        if acked - base >= load.sent:
            break
        await asyncio.sleep(0.1)
    drain_s = time.perf_counter() - drain_started
    applied = acked1 - acked0
    per_msg = {k: v / max(1, applied) * 1e6 for k, v in cpu.items()}
    per_msg["total"] = sum(per_msg.values())
    out: dict[str, Any] = {
        "window_s": round(window, 3),
        "applied": applied,
        "applied_per_s": applied / window,
        "sent": sent1 - sent0,
        "sent_per_s": (sent1 - sent0) / window,
        "backlog_at_end": sent1 - (acked1 - base),
        "lat_p50_ms": hist_pct(hist, 50),
        "lat_p99_ms": hist_pct(hist, 99),
        "lat_samples": sum(hist.values()),
        "total_sent": load.sent,
        "total_applied": acked - base,
        "drain_s": round(drain_s, 2),
        "drained": acked - base >= load.sent,
        "send_errors": len(load.errors),
        "error_sample": sorted(set(load.errors))[:3],
        "cpu_us_per_msg": per_msg,
        "cpu_cores": {k: v / window for k, v in cpu.items()},
        "load_avg": load_average(),
        "per_second": per_second if load.max_backlog > 0 else [],
    }
    if extra is not None:
        out["window"] = extra
    log(
        f"  {label}: applied {out['applied_per_s']:,.0f}/s (sent {out['sent_per_s']:,.0f}/s, backlog "
        f"{out['backlog_at_end']:,} at the end), publish→ack p50 {out['lat_p50_ms']:.1f} ms p99 "
        f"{out['lat_p99_ms']:.1f} ms; drained in {drain_s:.1f} s; CPU µs/msg "
        + ", ".join(f"{k} {v:.0f}" for k, v in per_msg.items())
        + (f"; {len(load.errors)} send errors: {out['error_sample']}" if load.errors else "")
        + f"; load average {out['load_avg']}"
        + (f"; per second: {per_second}" if load.max_backlog > 0 else "")
    )
    return out


async def serial(one: Callable[[int], Awaitable[None]], cfg: argparse.Namespace) -> tuple[list[float], list[str]]:
    """One message at a time: ``cfg.serial`` of them, or fewer after ``cfg.serial_s`` s."""
    latencies: list[float] = []
    errors: list[str] = []
    end = time.perf_counter() + cfg.serial_s
    for i in range(cfg.serial):
        if time.perf_counter() > end:
            break
        t0 = time.perf_counter()
        try:
            await one(i)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        latencies.append(time.perf_counter() - t0)
    return latencies, errors


def serial_figures(latencies: list[float], errors: list[str], takes: list[dict[str, Any]]) -> dict[str, Any]:
    hist = merge_hists([t["ack_hist"] for t in takes])
    p50, p99 = pcts_ms(latencies)
    return {
        "count": len(latencies),
        "errors": len(errors),
        "error_sample": sorted(set(errors))[:3],
        "observed_p50_ms": p50,
        "observed_p99_ms": p99,
        "ack_p50_ms": hist_pct(hist, 50),
        "ack_p99_ms": hist_pct(hist, 99),
    }


# -- raw nats-py ---------------------------------------------------------------------------


async def retried(op: Callable[[], Awaitable[Any]], what: str, limit: float = 60.0) -> Any:
    """``op()`` again while it times out or the cluster is not ready (a busy machine can
    make a fresh cluster slow to create an R3 stream); creating the same thing twice is a
    no-op on the server."""
    import nats.errors
    import nats.js.errors

    end = time.perf_counter() + limit
    while True:
        try:
            return await op()
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            if time.perf_counter() > end:
                raise
            log(f"  {what}: {type(exc).__name__}, trying again")
            await asyncio.sleep(0.5)


async def part_raw(servers: Any, ctl: Control, cfg: argparse.Namespace) -> dict[str, Any]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig, SubjectTransform

    urls = servers.urls
    nc = await nats.connect(urls[0], name="bench-raw-producer")
    js = nc.jetstream(timeout=10.0)
    try:
        src = f"{RAW_STREAM}.in.*.*"
        dest = f"{RAW_STREAM}.p.{{{{partition({PARTITIONS},1,2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"
        stream = StreamConfig(
            name=RAW_STREAM,
            subjects=[src],
            subject_transform=SubjectTransform(src=src, dest=dest),
            retention=RetentionPolicy.WORK_QUEUE,
            num_replicas=3,
            duplicate_window=120.0,
        )
        await retried(lambda: js.add_stream(stream), "create the raw stream")
        for p in range(PARTITIONS):
            consumer = ConsumerConfig(
                durable_name=f"p{p}",
                filter_subject=f"{RAW_STREAM}.p.{p}.>",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_ack_pending=1024,
                max_deliver=-1,
            )
            await retried(lambda c=consumer: js.add_consumer(RAW_STREAM, c), f"create consumer p{p}")
        names = ["c1", "c2", "c3"]
        shares = owners_of(["n1", "n2", "n3"])  # the same split as the SDK's nodes
        async with processes() as procs:
            children = await asyncio.gather(
                *(
                    procs.start(
                        f"raw consumer {name}",
                        [
                            *("raw", "--url", urls[i], "--stream", RAW_STREAM, "--name", name),
                            *("--partitions", ",".join(map(str, shares[f"n{i + 1}"])), "--batch", str(BATCH)),
                            *(("--timings",) if cfg.timings else ()),
                        ],
                    )
                    for i, name in enumerate(names)
                )
            )
            log(f"  raw: 3 consumer processes, partitions per process {[len(v) for v in shares.values()]}")
            subjects = [f"{RAW_STREAM}.in.Counter.c{i}" for i in range(cfg.agents)]
            ids = itertools.count()
            run = secrets.token_hex(4)

            async def send(k: int) -> None:
                body = msgpack.packb({"by": 1, "t": time.time_ns()})
                await js.publish(subjects[k % cfg.agents], body, headers={"Nats-Msg-Id": f"{run}-{next(ids)}"})

            pids: dict[str, int | None] = {"client": os.getpid()}
            pids.update({n: c.pid for n, c in zip(names, children, strict=True)})
            pids.update({f"server{i}": s.pid for i, s in enumerate(servers.servers)})
            load = Load(send, cfg.concurrency, cfg.max_backlog, counter(ctl, names, 0))
            out = await measure(ctl, names, load, pids, cfg, "raw", 0, window_hook(ctl, names, cfg, "raw", nodes=False))
            if "window" in out:
                print_timings("raw", out["window"], out["applied"])
            # serial: publish; the consumer acks (double ack), then sends a core message back
            await ctl.all(names, "mark")
            done: asyncio.Queue[None] = asyncio.Queue()
            inbox = nc.new_inbox()

            async def on_done(msg: Any) -> None:
                done.put_nowait(None)

            sub = await nc.subscribe(inbox, cb=on_done)

            async def one(i: int) -> None:
                body = msgpack.packb({"by": 1, "t": time.time_ns()})
                hdrs = {"Nats-Msg-Id": f"{run}-s{i}", "Bench-Done": inbox}
                await js.publish(subjects[i % cfg.agents], body, headers=hdrs)
                await asyncio.wait_for(done.get(), 10.0)

            lat, errors = await serial(one, cfg)
            await sub.unsubscribe()
            out["serial"] = serial_figures(lat, errors, await ctl.all(names, "take"))
            s = out["serial"]
            log(
                f"  raw serial: {s['count']} messages, publish→ack p50 {s['ack_p50_ms']:.2f} ms p99 "
                f"{s['ack_p99_ms']:.2f} ms (observed with the core message back: p50 "
                f"{s['observed_p50_ms']:.2f} ms)"
            )
        with contextlib.suppress(Exception):
            await js.delete_stream(RAW_STREAM)
        return out
    finally:
        await nc.close()


# -- natsagents ----------------------------------------------------------------------------


async def wait_partitions(ctl: Control, names: list[str], limit: float = 60.0) -> dict[str, list[int]]:
    """Until every partition has exactly one owner and each node owns what it should."""
    end = time.perf_counter() + limit
    while True:
        infos = await ctl.all(names, "info")
        owned = sorted(p for i in infos for p in i["owned"])
        if owned == list(range(PARTITIONS)) and all(i["owned"] == i["desired"] for i in infos):
            return {i["node"]: i["owned"] for i in infos}
        if time.perf_counter() > end:
            raise RuntimeError(f"partitions not settled after {limit:g} s: {infos}")
        await asyncio.sleep(0.2)


async def part_sdk(servers: Any, ctl: Control, cfg: argparse.Namespace) -> dict[str, Any]:
    urls = servers.urls
    names = ["n1", "n2", "n3"]
    results: dict[str, Any] = {}
    async with processes() as procs:
        children = await asyncio.gather(
            *(
                procs.start(
                    f"node {name}",
                    [
                        *("node", "--url", urls[i], "--prefix", PREFIX, "--node", name),
                        *("--partitions", str(PARTITIONS), "--batch", str(BATCH)),
                        *(("--timings",) if cfg.timings else ()),
                    ],
                )
                for i, name in enumerate(names)
            )
        )
        started = time.perf_counter()
        owned = await wait_partitions(ctl, names)
        infos = await ctl.all(names, "info")
        instrumented = all(i["instrumented"] for i in infos)
        log(
            f"  sdk: 3 nodes, partitions settled in {time.perf_counter() - started:.1f} s: "
            + ", ".join(f"{n} {len(p)}" for n, p in owned.items())
            + ("" if instrumented else " (publish→ack latency not available: owner's _ack not found)")
        )
        pids: dict[str, int | None] = {"client": os.getpid()}
        pids.update({n: c.pid for n, c in zip(names, children, strict=True)})
        pids.update({f"server{i}": s.pid for i, s in enumerate(servers.servers)})
        client = await Mesh.connect(urls[0], prefix=PREFIX, name="bench-delivery-client")
        try:
            for part in cfg.parts:
                if part == "raw":
                    continue
                delivery = "exactly_once" if part == "exactly_once" else "at_least_once"
                kind = "Scratch" if part.endswith("volatile") else "Counter"
                plain = [client.ref(f"{kind}/c{i}") for i in range(cfg.agents)]
                refs = [r.with_options(delivery=delivery) for r in plain]
                before = await asyncio.gather(*(r.call("get", timeout=30.0) for r in plain))  # activates them
                base = sum(t["acked"] for t in await ctl.all(names, "take"))

                async def send(k: int, refs: list[Any] = refs) -> None:
                    await refs[k % cfg.agents].send("add", by=1, t=time.time_ns())

                hook = window_hook(ctl, names, cfg, part)
                load = Load(send, cfg.concurrency, cfg.max_backlog, counter(ctl, names, base))
                infos0 = await ctl.all(names, "info")
                out = await measure(ctl, names, load, pids, cfg, part, base, hook)
                infos1 = await ctl.all(names, "info")
                requests = sum(i["batches"] for i in infos1) - sum(i["batches"] for i in infos0)
                handed = sum(i["batched"] for i in infos1) - sum(i["batched"] for i in infos0)
                out["messages_per_request"] = handed / requests if requests else float("nan")
                log(f"  {part}: {out['messages_per_request']:.2f} messages per request to an agent (batching)")
                if "window" in out:
                    print_timings(part, out["window"], out["applied"])
                after = await asyncio.gather(*(r.call("get", timeout=30.0) for r in plain))
                counted = sum(after) - sum(before)
                out["counted"] = counted
                out["duplicates"] = max(0, counted - out["total_sent"])
                out["lost"] = max(0, out["total_sent"] - counted)
                # serial: ref.call (publish → result); the node records publish → ack
                await ctl.all(names, "mark")

                async def one(i: int, refs: list[Any] = refs) -> None:
                    await refs[i % cfg.agents].call("add", by=1, t=time.time_ns(), timeout=10.0)

                lat, errors = await serial(one, cfg)
                out["serial"] = serial_figures(lat, errors, await ctl.all(names, "take"))
                s = out["serial"]
                log(
                    f"  {part}: counters {counted:,} for {out['total_sent']:,} sends (lost {out['lost']}, "
                    f"doubled {out['duplicates']}); serial {s['count']} calls: publish→result p50 "
                    f"{s['observed_p50_ms']:.2f} ms p99 {s['observed_p99_ms']:.2f} ms, publish→ack p50 "
                    f"{s['ack_p50_ms']:.2f} ms p99 {s['ack_p99_ms']:.2f} ms"
                    + (f"; {len(errors)} errors {s['error_sample']}" if errors else "")
                )
                results[part] = out
        finally:
            await client.aclose()
    return results


def window_hook(
    ctl: Control, names: list[str], cfg: argparse.Namespace, part: str, *, nodes: bool = True
) -> Callable[[bool], Awaitable[Any]] | None:
    """During the window: cProfile of the nodes and of this process (``--profile``), the
    step timings of the nodes or raw consumers (``--timings``)."""
    if not cfg.profile and not cfg.timings:
        return None
    import cProfile

    where = Path(cfg.profile) if cfg.profile and nodes else None
    own = cProfile.Profile()

    async def switch(on: bool) -> Any:
        if on:
            if cfg.timings:
                await ctl.all(names, "timings")  # reset
            if where is not None:
                where.mkdir(parents=True, exist_ok=True)
                await ctl.all(names, "prof_on")
                own.enable()
            return None
        out = None
        if cfg.timings:
            out = {}
            for steps in await ctl.all(names, "timings"):
                for key, v in steps.items():
                    merged = out.setdefault(key, {"hist": {}, "total_s": 0.0})
                    merged["total_s"] += v["total_s"]
                    for b, n in v["hist"].items():
                        merged["hist"][b] = merged["hist"].get(b, 0) + n
        if where is not None:
            own.disable()
            own.dump_stats(str(where / f"{part}-client.prof"))
            await asyncio.gather(*(ctl(n, "prof_off", path=str(where / f"{part}-{n}.prof")) for n in names))
        return out

    return switch


def print_timings(part: str, steps: dict[str, Any], applied: int) -> None:
    """The nodes' step timings of one window (all nodes together)."""
    rows = []
    for key, v in sorted(steps.items()):
        hist = {int(b): n for b, n in v["hist"].items()}
        count = sum(hist.values())
        rows.append(
            [
                key,
                f"{count:,}",
                f"{v['total_s'] / max(1, count) * 1000:.2f}",
                f"{hist_pct(hist, 50):.2f}",
                f"{hist_pct(hist, 99):.2f}",
            ]
        )
    log(f"  {part}: wall time per step in the window ({applied:,} messages applied)")
    log("    " + format_table(["step", "count", "mean ms", "p50 ms", "p99 ms"], rows).replace("\n", "\n    "))


# -- the run -------------------------------------------------------------------------------


async def run(cfg: argparse.Namespace) -> dict[str, Any]:
    import nats

    from natsagents.server import NatsCluster

    servers = await asyncio.to_thread(lambda: NatsCluster(3, name="benchdel").start())
    try:
        nc = await nats.connect(servers.urls[0], name="bench-delivery-control")
        ctl = Control(nc)
        results: dict[str, Any] = {}
        try:
            if "raw" in cfg.parts:
                log("raw nats-py JetStream:")
                results["raw"] = await part_raw(servers, ctl, cfg)
            if any(p != "raw" for p in cfg.parts):
                log("natsagents:")
                results.update(await part_sdk(servers, ctl, cfg))
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
        return results
    finally:
        await asyncio.to_thread(servers.stop)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def r(value: float, digits: int = 1) -> float:
    return round(value, digits) if isinstance(value, float) and math.isfinite(value) else value


def report(results: dict[str, Any], cfg: argparse.Namespace) -> dict[str, Any]:
    raw = results.get("raw")
    alo = results.get("at_least_once")
    eo = results.get("exactly_once")
    vol = results.get("at_least_once_volatile")
    flat: dict[str, Any] = {}
    rows: list[list[Any]] = []

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "applied_per_s") -> float:
        return a[key] / b[key] if a and b and b[key] else float("nan")

    def tput_row(label: str, side: dict[str, Any] | None, base: dict[str, Any] | None, target: str, ok: Any) -> None:
        if side is None:
            return
        rt = ratio(side, base)
        rows.append(
            [
                label,
                f"{side['applied_per_s']:,.0f}",
                f"{base['applied_per_s']:,.0f}" if base else "",
                f"{rt:.3f}" if math.isfinite(rt) else "",
                target,
                verdict(ok(rt)) if ok is not None and math.isfinite(rt) else "",
            ]
        )

    if raw:
        rows.append(["raw nats-py: publish + fetch + ack_sync (msg/s)", "", f"{raw['applied_per_s']:,.0f}", "", "", ""])
    tput_row(
        "at-least-once, applied msg/s (vs raw)",
        alo,
        raw,
        f"≥ {TARGET_ALO_OVER_RAW:g}",
        lambda x: x >= TARGET_ALO_OVER_RAW,
    )
    tput_row(
        "exactly-once, applied msg/s (vs at-least-once)",
        eo,
        alo,
        f"≥ {TARGET_EO_OVER_ALO:g}",
        lambda x: x >= TARGET_EO_OVER_ALO,
    )
    tput_row("exactly-once, applied msg/s (vs raw)", eo, raw, "", None)
    tput_row(
        "at-least-once, state not persisted (vs raw)",
        vol,
        raw,
        f"≥ {TARGET_ALO_OVER_RAW:g}",
        lambda x: x >= TARGET_ALO_OVER_RAW,
    )
    sides = [("raw", raw), ("at-least-once", alo), ("exactly-once", eo), ("alo, no state", vol)]
    for label, side in sides:
        if side is None:
            continue
        base_rate = raw["sent_per_s"] if raw and side is not raw else None
        rows.append(
            [
                f"{label}: publishes accepted/s; backlog at the end",
                f"{side['sent_per_s']:,.0f}; {side['backlog_at_end']:,}",
                "",
                f"{side['sent_per_s'] / base_rate:.3f}" if base_rate else "",
                "",
                "",
            ]
        )
    for label, side in sides:
        if side is None:
            continue
        rows.append(
            [
                f"{label}: under load, publish→ack p50 / p99 (ms)",
                f"{side['lat_p50_ms']:.1f} / {side['lat_p99_ms']:.1f}",
                f"{raw['lat_p50_ms']:.1f} / {raw['lat_p99_ms']:.1f}" if raw and side is not raw else "",
                "",
                "",
                "",
            ]
        )
    for label, side in sides:
        if side is None or "serial" not in side:
            continue
        s = side["serial"]
        rs = raw["serial"] if raw and side is not raw else None
        rows.append(
            [
                f"{label}: serial, publish→ack p50 / p99 (ms)",
                f"{s['ack_p50_ms']:.2f} / {s['ack_p99_ms']:.2f}",
                f"{rs['ack_p50_ms']:.2f} / {rs['ack_p99_ms']:.2f}" if rs else "",
                f"{s['ack_p50_ms'] / rs['ack_p50_ms']:.2f}" if rs else "",
                "",
                "",
            ]
        )
        if side is not raw:
            rows.append(
                [
                    f"{label}: serial, call publish→result p50 / p99 (ms)",
                    f"{s['observed_p50_ms']:.2f} / {s['observed_p99_ms']:.2f}",
                    "",
                    "",
                    "",
                    "",
                ]
            )
    for label, side in sides:
        if side is None:
            continue
        c = side["cpu_us_per_msg"]
        nodes = sum(v for k, v in c.items() if k.startswith(("n", "c")) and k != "client")
        srv = sum(v for k, v in c.items() if k.startswith("server"))
        rows.append(
            [
                f"{label}: CPU µs/msg client / consumers / servers / total",
                f"{c.get('client', 0):.0f} / {nodes:.0f} / {srv:.0f} / {c['total']:.0f}",
                "",
                "",
                "",
                "",
            ]
        )
    for label, side in sides:
        if side is None:
            continue
        rows.append(
            [
                f"{label}: CPU cores busy in the window (all processes)",
                f"{sum(side['cpu_cores'].values()):.2f}",
                "",
                "",
                "",
                "",
            ]
        )
    for label, side in sides:
        if side is None:
            continue
        rows.append([f"{label}: load average at the end of the window", side["load_avg"], "", "", "", ""])
    for label, side in sides[1:]:
        if side is None:
            continue
        rows.append([f"{label}: messages per request to an agent (batches)", f"{side['messages_per_request']:.2f}"])
        rows[-1] += ["", "", "", ""]
    for label, side in sides[1:]:
        if side is None:
            continue
        rows.append(
            [
                f"{label}: counters lost / doubled",
                f"{side['lost']} / {side['duplicates']}",
                "",
                "",
                "0 / 0" if label == "exactly-once" else "0 lost",
                verdict(side["lost"] == 0 and (label != "exactly-once" or side["duplicates"] == 0)),
            ]
        )

    for key, side in (("raw", raw), ("alo", alo), ("eo", eo), ("alo_volatile", vol)):
        if side is None:
            continue
        flat[f"{key}_mps"] = r(side["applied_per_s"])
        flat[f"{key}_sent_per_s"] = r(side["sent_per_s"])
        flat[f"{key}_backlog"] = side["backlog_at_end"]
        flat[f"{key}_load_p50_ms"] = r(side["lat_p50_ms"], 2)
        flat[f"{key}_load_p99_ms"] = r(side["lat_p99_ms"], 2)
        flat[f"{key}_serial_ack_p50_ms"] = r(side["serial"]["ack_p50_ms"], 2)
        flat[f"{key}_serial_ack_p99_ms"] = r(side["serial"]["ack_p99_ms"], 2)
        if key != "raw":
            flat[f"{key}_serial_call_p50_ms"] = r(side["serial"]["observed_p50_ms"], 2)
            flat[f"{key}_serial_call_p99_ms"] = r(side["serial"]["observed_p99_ms"], 2)
            flat[f"{key}_messages_per_request"] = r(side["messages_per_request"], 2)
            flat[f"{key}_lost"] = side["lost"]
            flat[f"{key}_doubled"] = side["duplicates"]
        flat[f"{key}_cpu_us_per_msg"] = {k: r(v) for k, v in side["cpu_us_per_msg"].items()}
        flat[f"{key}_cpu_cores"] = r(sum(side["cpu_cores"].values()), 2)
        flat[f"{key}_load_avg"] = side["load_avg"]
    flat["ratio_alo_raw"] = r(ratio(alo, raw), 3)
    flat["ratio_eo_alo"] = r(ratio(eo, alo), 3)
    flat["ratio_eo_raw"] = r(ratio(eo, raw), 3)
    flat["ratio_alo_volatile_raw"] = r(ratio(vol, raw), 3)
    flat["target_alo_raw"] = TARGET_ALO_OVER_RAW
    flat["target_eo_alo"] = TARGET_EO_OVER_ALO
    print()
    print(
        f"durable delivery ({'quick' if cfg.quick else 'full'}), 3-server cluster R3, {cfg.agents} agents, "
        f"{cfg.concurrency} publishes in flight, at most {cfg.max_backlog or 'unbounded'} sent and not yet applied, "
        f"{cfg.duration:g} s windows, {PARTITIONS} partitions; "
        f"load average at the start {cfg.load_start}"
    )
    print(format_table(["figure", "natsagents", "raw nats-py", "ratio", "target", "verdict"], rows))
    print()
    return flat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run (< 60 s)")
    p.add_argument("--duration", type=float, help="seconds of each measured window (20; quick 4)")
    p.add_argument("--agents", type=int, default=100, help="agents (and raw subjects) the load goes to (100)")
    p.add_argument("--concurrency", type=int, default=200, help="publishes in flight (200)")
    p.add_argument(
        "--max-backlog",
        type=int,
        default=1000,
        help="most messages sent and not yet applied; 0: open loop, the backlog may grow (1000)",
    )
    p.add_argument("--serial", type=int, help="messages of each serial phase (300; quick 60)")
    p.add_argument("--only", help=f"comma-separated parts: {','.join(PARTS)}")
    p.add_argument("--profile", help="directory: cProfile the nodes and the client during the windows")
    p.add_argument("--timings", action="store_true", help="time each step of a durable message in the nodes")
    cfg = p.parse_args(argv)
    cfg.parts = [s.strip() for s in cfg.only.split(",")] if cfg.only else list(PARTS)
    unknown = set(cfg.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    q = cfg.quick
    cfg.duration = cfg.duration or (4.0 if q else 20.0)
    cfg.warmup = 1.0 if q else 2.0
    cfg.serial = cfg.serial or (60 if q else 300)
    cfg.serial_s = 3.0 if q else 15.0
    cfg.drain_timeout = 30.0 if q else 120.0
    cfg.load_start = load_average()
    started = time.perf_counter()
    try:
        results = asyncio.run(run(cfg))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    flat = report(results, cfg)
    summary = {
        "bench": "delivery",
        "quick": cfg.quick,
        **flat,
        "agents": cfg.agents,
        "concurrency": cfg.concurrency,
        "duration_s": cfg.duration,
        "partitions": PARTITIONS,
        "load_avg_start": cfg.load_start,
        "load_avg_end": load_average(),
        "profiled": bool(cfg.profile or cfg.timings),
        "parts": results,
        "machine": machine_info(),
    }
    summary["wall_s"] = r(time.perf_counter() - started)
    print(json.dumps(summary, separators=(",", ":"), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
