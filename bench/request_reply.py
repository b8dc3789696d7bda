"""Request/reply: natsagents ``ref.call`` against raw nats-py ``request()``.

Both go through the same nats-server in the same run, and both responders run in their
own process:

* raw: a nats-py subscription on ``bench.echo`` whose callback does
  ``await msg.respond(msg.data)``; the caller does ``await nc.request("bench.echo", body)``.
* sdk: a process with ``Mesh.connect(url, prefix="bench")`` hosting ``Echo`` (an agent
  whose ``echo(payload: dict) -> dict`` returns its argument); the caller does
  ``await mesh.ref("Echo/e-1").call("echo", payload=PAYLOAD)``.

The raw request body is byte for byte the body the SDK sends (the msgpack of
``{"payload": PAYLOAD}``, about 100 bytes), so the difference is the SDK's own work:
headers, envelope checks, parameter validation, metrics, tracing, mailbox.

Measurements, each after its own warm-up:

* serial latency: N sequential requests, p50/p99 in microseconds;
* throughput: C asyncio tasks each looping over requests for D seconds; requests/s.

The two sides are measured alternately (raw, sdk, raw, sdk, ...) for ``--runs`` rounds
and the **median over rounds** of every figure is reported (per-round values are
printed as well). The last line of the output is one JSON object.

Usage::

    python bench/request_reply.py            # full: 3 rounds, 5000 serial, 5 s at c=100
    python bench/request_reply.py --quick    # < 20 s
    python bench/request_reply.py --servers nats://127.0.0.1:4222
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
from _common import (
    Child,
    CpuMeter,
    format_table,
    machine_info,
    median,
    nats_server,
    percentile,
    signal_ready,
    wait_for_stdin_eof,
)

from natsagents import Agent, Mesh, action

RAW_SUBJECT = "bench.echo"
PREFIX = "bench"
AGENT = "Echo/e-1"

#: The call's parameter; ``{"payload": PAYLOAD}`` packs to about 100 bytes.
PAYLOAD: dict[str, Any] = {
    "user": "user-000123",
    "op": "update",
    "seq": 123456,
    "ts": 1718000000.125,
    "tags": ["alpha", "beta", "gamma"],
    "text": "lorem ipsum dolor sit",
}
#: What the SDK puts in the request body (natsagents.wire.codec.encode of the params).
BODY: bytes = msgpack.packb({"payload": PAYLOAD}, use_bin_type=True)


class Echo(Agent):
    @action
    async def echo(self, payload: dict) -> dict:  # type: ignore[type-arg]
        return payload


# -- responders (child processes) ------------------------------------------------------


async def run_raw_responder(url: str) -> None:
    import nats

    nc = await nats.connect(url, name="bench-raw-responder")

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(RAW_SUBJECT, cb=echo)
    await nc.flush()
    signal_ready()
    try:
        await wait_for_stdin_eof()
    finally:
        await nc.drain()


async def run_sdk_responder(url: str) -> None:
    async with Mesh.connect(url, prefix=PREFIX, name="bench-sdk-responder") as mesh:
        await mesh.host(Echo)
        await mesh._transport.flush()  # the kind's subscription is on the server
        signal_ready()
        await wait_for_stdin_eof()


# -- measurement -----------------------------------------------------------------------

Call = Callable[[], Awaitable[Any]]


async def serial(call: Call, n: int) -> list[float]:
    """Latencies (µs) of ``n`` sequential calls."""
    clock = time.perf_counter_ns
    out = [0.0] * n
    for i in range(n):
        t0 = clock()
        await call()
        out[i] = (clock() - t0) / 1000.0
    return out


async def throughput(call: Call, concurrency: int, duration: float) -> tuple[int, float]:
    """``concurrency`` tasks call in a loop for ``duration`` s: (completed calls, seconds).

    Calls in flight when time is up are waited for and counted, and the elapsed time
    runs until the last of them returns.
    """
    stop = False

    async def worker() -> int:
        n = 0
        while not stop:
            await call()
            n += 1
        return n

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(duration)
        stop = True
        counts = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return sum(counts), time.perf_counter() - started


async def measure_serial(
    sides: dict[str, Call], cfg: argparse.Namespace, meters: dict[str, CpuMeter]
) -> dict[str, dict[str, float]]:
    """Serial latency of every side, measured in interleaved blocks.

    After a warm-up of each side, blocks of ``cfg.block`` sequential calls alternate
    between the sides (raw, sdk, raw, sdk, ...) until each made ``cfg.serial`` calls, so
    both see the same machine load. Also the CPU time of each process per call.
    """
    gc.collect()
    for call in sides.values():
        await serial(call, cfg.serial_warmup)
    lat: dict[str, list[float]] = {side: [] for side in sides}
    cpu: dict[str, dict[str, float]] = {side: {} for side in sides}
    left = cfg.serial
    while left > 0:
        n = min(cfg.block, left)
        left -= n
        for side, call in sides.items():
            meters[side].start()
            lat[side].extend(await serial(call, n))
            for proc, used in meters[side].stop().items():
                cpu[side][proc] = cpu[side].get(proc, 0.0) + used
    out: dict[str, dict[str, float]] = {}
    for side, values in lat.items():
        values.sort()
        r = {
            "p50_us": percentile(values, 50),
            "p99_us": percentile(values, 99),
            "mean_us": sum(values) / len(values),
        }
        for proc, used in cpu[side].items():
            r[f"cpu_serial_{proc}_us"] = used * 1e6 / len(values)
        out[side] = r
    return out


async def measure_throughput(call: Call, cfg: argparse.Namespace, meter: CpuMeter) -> dict[str, float]:
    """Throughput of one side after a warm-up, and the CPU time of each process per call."""
    gc.collect()
    await throughput(call, cfg.concurrency, cfg.warmup_duration)
    meter.start()
    done, elapsed = await throughput(call, cfg.concurrency, cfg.duration)
    out = {"rps": done / elapsed}
    for proc, used in meter.stop().items():
        out[f"cpu_tput_{proc}_us"] = used * 1e6 / done
    return out


async def run_caller(
    url: str, cfg: argparse.Namespace, pids: dict[str, dict[str, int | None]]
) -> dict[str, list[dict[str, float]]]:
    import nats

    nc = await nats.connect(url, name="bench-raw-caller")
    mesh = await Mesh.connect(url, prefix=PREFIX, name="bench-sdk-caller")
    try:
        ref = mesh.ref(AGENT)

        async def raw_call() -> Any:
            return await nc.request(RAW_SUBJECT, BODY, timeout=10.0)

        async def sdk_call() -> Any:
            return await ref.call("echo", payload=PAYLOAD)

        sides: dict[str, Call] = {"raw": raw_call, "sdk": sdk_call}
        if cfg.only:
            sides = {cfg.only: sides[cfg.only]}
        # Check each path once (and activate the agent) before anything is timed.
        if "raw" in sides:
            reply = await raw_call()
            assert reply.data == BODY, "raw responder echoed something else"
        if "sdk" in sides:
            assert await sdk_call() == PAYLOAD, "Echo agent returned something else"
        meters = {side: CpuMeter(pids[side]) for side in sides}
        results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        for rnd in range(cfg.runs):
            round_results = await measure_serial(sides, cfg, meters)
            for side, call in sides.items():
                round_results[side].update(await measure_throughput(call, cfg, meters[side]))
            for side, r in round_results.items():
                results[side].append(r)
                print(
                    f"round {rnd + 1}/{cfg.runs} {side}: p50 {r['p50_us']:.1f} µs  p99 {r['p99_us']:.1f} µs  "
                    f"{r['rps']:,.0f} req/s",
                    file=sys.stderr,
                    flush=True,
                )
        return results
    finally:
        await mesh.aclose()
        await nc.drain()


# -- orchestration ---------------------------------------------------------------------


CPU_PROCS = ("caller", "responder", "server")


def _agg(runs: list[dict[str, float]], key: str) -> float | None:
    vals = [r[key] for r in runs if key in r]
    return median(vals) if vals else None


def summarize(results: dict[str, list[dict[str, float]]], cfg: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "request_reply", "aggregate": "median of rounds"}
    for side in ("sdk", "raw"):
        if side in results:
            out[f"{side}_rps"] = round(_agg(results[side], "rps") or 0.0, 1)
            out[f"{side}_p50_us"] = round(_agg(results[side], "p50_us") or 0.0, 1)
            out[f"{side}_p99_us"] = round(_agg(results[side], "p99_us") or 0.0, 1)
    if "sdk" in results and "raw" in results:
        out["ratio_rps"] = round(out["sdk_rps"] / out["raw_rps"], 3)
        out["ratio_p50"] = round(out["sdk_p50_us"] / out["raw_p50_us"], 3)
        out["ratio_p99"] = round(out["sdk_p99_us"] / out["raw_p99_us"], 3)
    cpu: dict[str, dict[str, float]] = {}
    for side, runs in results.items():
        for phase in ("serial", "tput"):
            for proc in CPU_PROCS:
                v = _agg(runs, f"cpu_{phase}_{proc}_us")
                if v is not None:
                    cpu.setdefault(f"{side}_{phase}", {})[proc] = round(v, 1)
    out.update(
        cpu_us_per_request=cpu,
        rounds=cfg.runs,
        serial_requests=cfg.serial,
        concurrency=cfg.concurrency,
        duration_s=cfg.duration,
        body_bytes=len(BODY),
        quick=cfg.quick,
        per_round={side: [{k: round(v, 1) for k, v in r.items()} for r in runs] for side, runs in results.items()},
        machine=machine_info(),
    )
    return out


def print_table(results: dict[str, list[dict[str, float]]], summary: dict[str, Any]) -> None:
    def fmt(side: str, key: str, agg: Callable[[list[float]], float] = median) -> str:
        vals = [r[key] for r in results.get(side, []) if key in r]
        if not vals:
            return "-"
        v = agg(vals)
        return f"{v:,.0f}" if key == "rps" else f"{v:.1f}"

    def ratio(key: str) -> str:
        sdk, raw = _agg(results.get("sdk", []), key), _agg(results.get("raw", []), key)
        return f"{sdk / raw:.3f}" if sdk is not None and raw else "-"

    c = summary["concurrency"]
    rows = []
    for label, key, best in (
        ("serial p50 (µs)", "p50_us", min),
        ("serial p99 (µs)", "p99_us", min),
        ("serial mean (µs)", "mean_us", min),
        (f"throughput c={c} (req/s)", "rps", max),
    ):
        rows.append([label, fmt("raw", key), fmt("sdk", key), ratio(key), fmt("raw", key, best), fmt("sdk", key, best)])
    for phase, title in (("serial", "serial"), ("tput", f"c={c}")):
        for proc in CPU_PROCS:
            key = f"cpu_{phase}_{proc}_us"
            rows.append([f"CPU µs/req {proc} ({title})", fmt("raw", key), fmt("sdk", key), ratio(key), "", ""])
    print()
    print(
        f"request/reply, {len(BODY)}-byte msgpack body, {summary['rounds']} rounds "
        f"(median of rounds; 'best' = best round), {summary['serial_requests']} serial requests, "
        f"{summary['duration_s']:g} s at concurrency {c}"
    )
    print(format_table(["", "raw nats-py", "natsagents", "sdk/raw", "raw best", "sdk best"], rows))
    print()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run (< 20 s)")
    p.add_argument("--servers", metavar="URL", help="use this NATS server instead of an embedded one")
    p.add_argument("--runs", type=int, help="rounds of raw+sdk measurements (default 3, quick 2)")
    p.add_argument("--serial", type=int, help="sequential requests per latency run (default 5000, quick 1000)")
    p.add_argument("--duration", type=float, help="seconds per throughput run (default 5, quick 1)")
    p.add_argument("--concurrency", type=int, default=100, help="tasks in the throughput run (default 100)")
    p.add_argument("--block", type=int, default=250, help="serial calls per interleaved block (default 250)")
    p.add_argument("--only", choices=("raw", "sdk"), help="measure one side only (for profiling)")
    p.add_argument("--responder", choices=("raw", "sdk"), help=argparse.SUPPRESS)  # child mode
    p.add_argument("--url", help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)

    if cfg.responder:
        runner = run_raw_responder if cfg.responder == "raw" else run_sdk_responder
        asyncio.run(runner(cfg.url))
        return 0

    cfg.runs = cfg.runs or (2 if cfg.quick else 3)
    cfg.serial = cfg.serial or (1000 if cfg.quick else 5000)
    cfg.duration = cfg.duration or (1.0 if cfg.quick else 5.0)
    cfg.serial_warmup = max(200, cfg.serial // 5)
    cfg.warmup_duration = 0.3 if cfg.quick else 1.0

    try:
        return run(cfg)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(cfg: argparse.Namespace) -> int:
    started = time.perf_counter()
    with nats_server(cfg.servers) as (url, server_pid):
        children: dict[str, Child] = {}
        try:
            for side in ("raw", "sdk"):
                if cfg.only and side != cfg.only:
                    continue
                argv_child = [sys.executable, str(Path(__file__).resolve()), "--responder", side, "--url", url]
                children[side] = Child(f"{side} responder", argv_child)
            print(
                f"server {url} (pid {server_pid}); " + ", ".join(f"{c.name} pid {c.pid}" for c in children.values()),
                file=sys.stderr,
                flush=True,
            )
            pids = {
                side: {"caller": os.getpid(), "responder": c.pid, "server": server_pid} for side, c in children.items()
            }
            results = asyncio.run(run_caller(url, cfg, pids))
        finally:
            for child in children.values():
                child.stop()
    summary = summarize(results, cfg)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    print_table(results, summary)
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
