"""``natsagents demo``: a short guided tour of the mesh, printed as a transcript.

It hosts two agent kinds in this process and talks to them the way any other process
would, by ``Kind/id``: fire-and-forget sends, request futures, calls with a timeout,
an agent calling other agents, and the typed errors that come back.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..agent import Agent, action, all_of
from ..errors import AgentError, BadRequest, CallTimeout, HandlerError, UnknownAction
from ..mesh import Mesh
from .main import Exit, add_connection_options, command, connection

__all__ = ["Counter", "Summer", "run_demo"]

Out = Callable[[str], None]


class Counter(Agent):
    """Keeps one number per id."""

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action
    async def get(self) -> int:
        return int(self.state.get("n", 0))

    @action
    async def divide(self, by: int) -> float:
        return float(self.state.get("n", 0) / by)

    @action
    async def slow(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "finally done"


class Summer(Agent):
    """Adds up counters: an agent that calls other agents."""

    @action
    async def total(self, ids: list[str]) -> int:
        counts = await all_of(*(self.ref(Counter, i).request("get") for i in ids))
        return sum(counts)


async def run_demo(
    servers: str | None = None, *, connect_timeout: float = 5.0, out: Out = print, **connect_options: Any
) -> int:
    """Run the tour against an embedded server, or ``servers`` under a fresh prefix.

    ``connect_options`` go to ``Mesh.connect`` with ``servers`` (credentials, TLS …).

    Returns:
        0 when every step behaved as shown, 1 otherwise.
    """
    started = time.perf_counter()
    if servers is None:
        opener = Mesh.embedded(name="natsagents-demo", connect_timeout=connect_timeout)
    else:
        # A fresh prefix keeps the demo's agents apart from anything else on that NATS.
        prefix = f"demo-{secrets.token_hex(4)}"
        opener = Mesh.connect(
            servers, name="natsagents-demo", prefix=prefix, connect_timeout=connect_timeout, **connect_options
        )
    ok = True
    async with opener as mesh:
        where = "embedded nats-server" if mesh.embedded_server is not None else "nats-server"
        out(f"natsagents demo: {where} at {mesh.server_url}, subject prefix {mesh.prefix!r}")
        await mesh.host(Counter, Summer)
        out("hosting kinds Counter and Summer here; every call below goes through NATS by 'Kind/id'")
        out("")

        c1 = mesh.ref("Counter/c-1")
        await c1.send("add", by=5)
        out("send     Counter/c-1 add(by=5)              -> accepted by the mailbox, result not awaited")
        out(f"call     Counter/c-1 get()                  -> {await c1.call('get')}")
        futures = [mesh.ref(Counter, i).request("add", by=1) for i in ("c-1", "c-2", "c-3")]
        out("request  add(by=1) on c-1, c-2 and c-3      -> 3 futures in flight at once")
        out(f"all_of   the 3 futures                      -> {await all_of(*futures)}")
        tenfold = mesh.ref("Counter/c-2").request("get").then(lambda n: n * 10)
        out(f".then    Counter/c-2 get() .then(n * 10)    -> {await tenfold}")
        added = await mesh.ref("Counter/c-3").call("add", by=2, timeout=2.0)
        out(f"call     Counter/c-3 add(by=2) timeout=2.0  -> {added}")
        total = await mesh.ref("Summer/s-1").call("total", ids=["c-1", "c-2", "c-3"])
        out(f"agent    Summer/s-1 total(c-1, c-2, c-3)    -> {total}  (Summer called the 3 Counters)")
        out("")

        out("errors come back as typed exceptions:")
        exc = await _failure(c1.call("add", by="five"))
        ok &= _show(out, 'add(by="five")', exc, BadRequest)
        exc = await _failure(c1.call("divide", by=0))
        ok &= _show(out, "divide(by=0)", exc, HandlerError)
        if exc is not None and exc.remote_traceback:
            out(f"{'':<35}{'':<14}remote traceback ends in {_last_frame(exc.remote_traceback)}")
        exc = await _failure(c1.call("launch"))
        ok &= _show(out, "launch()", exc, UnknownAction)
        began = time.perf_counter()
        exc = await _failure(mesh.ref("Counter/slow-1").call("slow", seconds=1.0, timeout=0.25))
        ok &= _show(out, "slow(seconds=1) timeout=0.25", exc, CallTimeout, f"after {time.perf_counter() - began:.2f} s")
    out(f"done in {time.perf_counter() - started:.1f} s")
    return Exit.OK if ok else Exit.FAILED


async def _failure(call: Awaitable[Any]) -> AgentError | None:
    try:
        await call
    except AgentError as exc:
        return exc
    return None


def _show(out: Out, label: str, exc: AgentError | None, expected: type[AgentError], extra: str = "") -> bool:
    if exc is None:
        out(f"  {label:<30}-> unexpectedly succeeded (expected {expected.__name__})")
        return False
    text = extra or f"{exc.code}: {exc.message}"
    out(f"  {label:<30}-> {type(exc).__name__:<14}{text}")
    return isinstance(exc, expected)


def _last_frame(tb: str) -> str:
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', tb)
    if not frames:
        return tb.strip().splitlines()[-1]
    path, line, func = frames[-1]
    return f"{func}() at {Path(path).name}:{line}"


@contextmanager
def _quiet_library_logs(verbose: int) -> Iterator[None]:
    """The demo provokes failures on purpose: keep their warnings off the transcript."""
    logger = logging.getLogger("natsagents")
    previous = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _demo_options(parser: argparse.ArgumentParser) -> None:
    add_connection_options(parser, prefix=False)


@command(
    "demo",
    help="a guided tour: host an agent, send, request, call, errors, timeouts",
    configure=_demo_options,
    description="Host demo agents and talk to them, printing what happens. Uses an embedded "
    "nats-server unless --servers or --context is given (then a fresh subject prefix).",
)
def _demo(args: argparse.Namespace) -> int:
    if args.servers is None and args.context is None:
        run = run_demo(connect_timeout=args.connect_timeout, out=_print)
    else:
        options = connection(args).mesh_options()
        run = run_demo(**options, fail_fast=True, out=_print)
    with _quiet_library_logs(args.verbose):
        return asyncio.run(run)


def _print(line: str) -> None:
    print(line, flush=True)
