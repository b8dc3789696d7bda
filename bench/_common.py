"""Shared helpers of the benchmarks: the server, child processes, statistics, tables.

The benchmarks are scripts (``python bench/<name>.py``), not a package: they import this
module by putting their own directory on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent


# -- statistics ------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, nearest-rank with
    linear interpolation (same as ``numpy.percentile``'s default)."""
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# -- the server ------------------------------------------------------------------------


@contextlib.contextmanager
def nats_server(url: str | None) -> Iterator[tuple[str, int | None]]:
    """Yield ``(url, pid)``: ``url`` itself if given (pid ``None``), else those of an
    embedded nats-server without JetStream (stopped afterwards)."""
    if url:
        yield url, None
        return
    from natsagents.server import NatsServer

    server = NatsServer(jetstream=False).start()
    try:
        yield server.url, server.pid
    finally:
        server.stop()


# -- CPU accounting --------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds used so far by process ``pid``, all threads, from ``/proc`` (Linux).

    Uses the scheduler's nanosecond run times (``/proc/<pid>/task/*/schedstat``) where
    available, else user + system time from ``/proc/<pid>/stat`` (10 ms ticks; this
    misses threads that already exited, schedstat does not matter here: the measured
    processes keep their threads). ``None`` where neither exists.
    """
    try:
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuMeter:
    """CPU used by named processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._start: dict[str, float | None] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            before, after = self._start.get(name), cpu_seconds(pid)
            if before is not None and after is not None:
                out[name] = after - before
        return out


# -- child processes -------------------------------------------------------------------


class Child:
    """A child process that prints one ``READY`` line when it can serve and exits when
    its stdin closes (so it also ends when the parent dies)."""

    def __init__(self, name: str, argv: list[str], *, ready_timeout: float = 30.0) -> None:
        self.name = name
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # inherit: a crash shows up on the terminal
            env=env,
            cwd=str(REPO_DIR),
        )
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        got: list[bytes] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                got.append(line)
                if line.strip() == b"READY":
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not got or got[-1].strip() != b"READY":
            self.stop()
            tail = b"".join(got[-5:]).decode(errors="replace")
            raise RuntimeError(f"{self.name} did not become ready within {timeout:g} s (rc={self.proc.poll()}): {tail}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Close stdin (the signal to exit), then terminate, then kill."""
        proc = self.proc
        if proc.poll() is None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def wait_for_stdin_eof() -> None:
    """In a child: return when the parent closes our stdin (or dies)."""
    import asyncio

    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)


def signal_ready() -> None:
    sys.stdout.write("READY\n")
    sys.stdout.flush()


# -- the raw responder -----------------------------------------------------------------


async def raw_echo_responder(nc: Any, subject: str, chunk: int) -> tuple[Any, Callable[[list[bytes]], Awaitable[None]]]:
    """A raw nats-py responder on ``subject`` of connection ``nc`` (its callback does
    ``await msg.respond(msg.data)``): the baseline of the responder benchmarks
    (``request_path.py``, ``request_instructions.py``). Returns the subscription and
    ``feed(frames)``, which hands request frames to the connection's protocol parser
    ``chunk`` at a time and waits after each chunk until every one was answered."""
    answered = want = 0
    waiter: asyncio.Future[None] | None = None

    async def echo(msg: Any) -> None:
        nonlocal answered
        await msg.respond(msg.data)
        answered += 1
        if waiter is not None and answered >= want and not waiter.done():
            waiter.set_result(None)

    sub = await nc.subscribe(subject, cb=echo)

    async def feed(frames: list[bytes]) -> None:
        nonlocal waiter, want
        for k in range(0, len(frames), chunk):
            part = frames[k : k + chunk]
            waiter = asyncio.get_running_loop().create_future()
            want = answered + len(part)
            await nc._ps.parse(b"".join(part))
            await waiter

    return sub, feed


# -- reporting -------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["nats_py"] = version("nats-py")
        info["msgpack"] = version("msgpack")
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        cols = enumerate(zip(row, widths, strict=True))
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in cols))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
