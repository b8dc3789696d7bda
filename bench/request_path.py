"""The responder's request path in one process: what answering one request costs the
host, against a raw nats-py responder measured in the same run.

Requests are fed straight into the responder connection's protocol parser, as the server
would send them (``HMSG`` with the headers a ``ref.call`` carries; ``MSG`` with the same
body for raw), in chunks of 50, and the run waits until every reply is queued; replies go
to a real nats-server (no one listens). No caller process and no socket reads take part, so
the figures are the responder's own:

* **Python opcodes and calls per request** (``sys.settrace``): deterministic, unaffected
  by machine load, the figure to compare across versions (issue 10);
* **CPU µs per request** (``time.process_time``, median of rounds): the same work timed,
  which does move with load.

* raw: a nats-py subscription whose callback does ``await msg.respond(msg.data)``;
* sdk: ``Mesh.connect(url, prefix="bench")`` hosting ``Echo``
  (``echo(payload: dict) -> dict``), the agent active before anything is measured.

Usage::

    python bench/request_path.py            # 5 rounds of 4000 requests, 2000 traced
    python bench/request_path.py --quick    # < 30 s
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
from _common import format_table, machine_info, median, nats_server, raw_echo_responder

from natsagents import Agent, Mesh, action
from natsagents.wire import envelope
from natsagents.wire.subjects import agent_subject

PREFIX = "bench"
RAW_SUBJECT = "bench.echo"
PAYLOAD: dict[str, Any] = {
    "user": "user-000123",
    "op": "update",
    "seq": 123456,
    "ts": 1718000000.125,
    "tags": ["alpha", "beta", "gamma"],
    "text": "lorem ipsum dolor sit",
}
BODY: bytes = msgpack.packb({"payload": PAYLOAD}, use_bin_type=True)
CHUNK = 50


class Echo(Agent):
    @action
    async def echo(self, payload: dict) -> dict:  # type: ignore[type-arg]
        return payload


def sdk_frames(sid: int, subject: str, start: int, n: int) -> list[bytes]:
    """``HMSG`` frames of ``n`` requests as a ``ref.call`` sends them (unique ids and inboxes)."""
    deadline = int(time.time() * 1000) + 120_000
    out = []
    for i in range(start, start + n):
        hdrs = envelope.request_headers(
            action="echo",
            message_id=f"m{i:012d}abcdefgh",
            correlation_id=None,
            deadline_ms=deadline,
            caller="bench-caller",
        )
        block = envelope.encode_headers(hdrs)
        reply = f"_INBOX.abcdefghijklmnopqrstuv.{i}".encode()
        total = len(block) + len(BODY)
        out.append(b"HMSG %s %d %s %d %d\r\n%s%s\r\n" % (subject.encode(), sid, reply, len(block), total, block, BODY))
    return out


def raw_frames(sid: int, start: int, n: int) -> list[bytes]:
    """``MSG`` frames with the same body."""
    return [
        b"MSG %s %d _INBOX.abcdefghijklmnopqrstuv.%d %d\r\n%s\r\n" % (RAW_SUBJECT.encode(), sid, i, len(BODY), BODY)
        for i in range(start, start + n)
    ]


class OpCounter:
    """Python opcodes and calls (coroutine resumptions included) while active."""

    def __init__(self) -> None:
        self.opcodes = 0
        self.calls = 0
        self.by_function: collections.Counter[str] = collections.Counter()

    def _trace(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "call":
            frame.f_trace_opcodes = True
            self.calls += 1
        elif event == "opcode":
            self.opcodes += 1
            code = frame.f_code
            self.by_function[f"{Path(code.co_filename).name}:{code.co_name}"] += 1
        return self._trace

    def start(self) -> None:
        sys.settrace(self._trace)

    def stop(self) -> None:
        sys.settrace(None)


Make = Callable[[int, int], list[bytes]]  # (first request number, count) -> frames
Feed = Callable[[list[bytes]], Awaitable[None]]


async def measure(make: Make, feed: Feed, cfg: argparse.Namespace) -> dict[str, Any]:
    """Warm up, time ``cfg.rounds`` rounds, then trace one round of ``cfg.traced`` (the
    frames are built before each is measured)."""
    seq = 0
    await feed(make(seq, cfg.requests))  # warm-up
    seq += cfg.requests
    cpu = []
    for _ in range(cfg.rounds):
        frames = make(seq, cfg.requests)
        seq += cfg.requests
        gc.collect()
        t0 = time.process_time()
        await feed(frames)
        cpu.append((time.process_time() - t0) / cfg.requests * 1e6)
    frames = make(seq, cfg.traced)
    counter = OpCounter()
    counter.start()
    try:
        await feed(frames)
    finally:
        counter.stop()
    top = [(name, round(n / cfg.traced, 1)) for name, n in counter.by_function.most_common(cfg.top)]
    return {
        "cpu_us": median(cpu),
        "cpu_us_rounds": [round(c, 1) for c in cpu],
        "opcodes": counter.opcodes / cfg.traced,
        "calls": counter.calls / cfg.traced,
        "top": top,
    }


async def run_sdk(url: str, cfg: argparse.Namespace) -> dict[str, Any]:
    async with Mesh.connect(url, prefix=PREFIX, name="bench-path-sdk") as mesh:
        await mesh.host(Echo)
        ref = mesh.ref("Echo/e-1")
        assert await ref.call("echo", payload=PAYLOAD) == PAYLOAD, "Echo agent returned something else"
        act = mesh._host.activations[("Echo", "e-1")]
        assert act.subscription is not None
        sub = act.subscription._sub
        nc, sid = sub._conn, sub._id
        subject = agent_subject(PREFIX, "Echo", "e-1")

        async def feed(frames: list[bytes]) -> None:
            for k in range(0, len(frames), CHUNK):
                await nc._ps.parse(b"".join(frames[k : k + CHUNK]))
                await act.wait_idle()

        return await measure(lambda start, n: sdk_frames(sid, subject, start, n), feed, cfg)


async def run_raw(url: str, cfg: argparse.Namespace) -> dict[str, Any]:
    import nats

    nc = await nats.connect(url, name="bench-path-raw")
    try:
        sub, feed = await raw_echo_responder(nc, RAW_SUBJECT, CHUNK)
        return await measure(lambda start, n: raw_frames(sub._id, start, n), feed, cfg)
    finally:
        await nc.drain()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run (< 30 s)")
    p.add_argument("--rounds", type=int, help="timed rounds (default 5, quick 2)")
    p.add_argument("--requests", type=int, help="requests per timed round (default 4000, quick 1000)")
    p.add_argument("--traced", type=int, help="requests traced for opcodes (default 2000, quick 500)")
    p.add_argument("--top", type=int, default=0, help="print the N functions with the most opcodes per request")
    cfg = p.parse_args(argv)
    cfg.rounds = cfg.rounds or (2 if cfg.quick else 5)
    cfg.requests = cfg.requests or (1000 if cfg.quick else 4000)
    cfg.traced = cfg.traced or (500 if cfg.quick else 2000)
    cfg.top = max(cfg.top, 0)
    started = time.perf_counter()
    with nats_server(None) as (url, _):
        raw = asyncio.run(run_raw(url, cfg))
        sdk = asyncio.run(run_sdk(url, cfg))

    def row(label: str, key: str, fmt: str) -> list[str]:
        return [label, format(raw[key], fmt), format(sdk[key], fmt), f"{sdk[key] / raw[key]:.2f}"]

    rows = [
        row("Python opcodes per request", "opcodes", ".0f"),
        row("Python calls per request", "calls", ".1f"),
        row("CPU µs per request (median)", "cpu_us", ".1f"),
    ]
    print(f"responder request path, {len(BODY)}-byte body, chunks of {CHUNK}; CPU rounds {cfg.rounds} x {cfg.requests}")
    print(format_table(["", "raw nats-py", "natsagents", "sdk/raw"], rows))
    for name, ops in sdk["top"]:
        print(f"  {ops:8.1f}  {name}")
    summary = {
        "bench": "request_path",
        "sdk_opcodes_per_request": round(sdk["opcodes"], 1),
        "raw_opcodes_per_request": round(raw["opcodes"], 1),
        "ratio_opcodes": round(sdk["opcodes"] / raw["opcodes"], 3),
        "sdk_calls_per_request": round(sdk["calls"], 1),
        "raw_calls_per_request": round(raw["calls"], 1),
        "sdk_cpu_us": round(sdk["cpu_us"], 1),
        "raw_cpu_us": round(raw["cpu_us"], 1),
        "ratio_cpu": round(sdk["cpu_us"] / raw["cpu_us"], 3),
        "sdk_cpu_us_rounds": sdk["cpu_us_rounds"],
        "raw_cpu_us_rounds": raw["cpu_us_rounds"],
        "rounds": cfg.rounds,
        "requests": cfg.requests,
        "traced": cfg.traced,
        "quick": cfg.quick,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine_info(),
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
