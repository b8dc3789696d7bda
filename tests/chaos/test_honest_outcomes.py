"""Honest outcomes under chaos (issue 11): an applied call never reports failure.

Three ``tests.node_process`` nodes (lease 1.5 s) on a 3-server JetStream cluster host
``Counter`` and ``PermCounter`` agents; the test process drives one sequential
at-most-once ``add(by=1)`` loop per agent without pause (a few hundred calls/s on a small
box). Under that load one NATS server is SIGKILLed (and restarted), then one node process
is SIGSTOPped for a few seconds (and resumed).

Every failed call is classified by what its error claims: ``AlreadyApplied`` (it ran, its
result is lost: an applied call reporting failure), *did not run* (a ``timeout``, ``overloaded``,
``unavailable`` … reply: protocol §6.3), or *unknown* (a ``CallTimeout`` without a reply).
A sequential loop knows, at its next acknowledged total, how many of the calls that failed
since the previous one were applied; more applied than *unknown* outcomes means an error
claimed "did not run" for a call that ran. Asserted, with the counts printed: 0
``AlreadyApplied``, 0 false "did not run", 0 lost, 0 doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from natsagents import Mesh
from natsagents.errors import ALREADY_APPLIED, TIMEOUT, AgentError, NatsAgentsError
from natsagents.server import NatsCluster
from natsagents.server.process import _wait_stopped
from natsagents.testing import wait_for
from natsagents.transport.kv import api_request, open_bucket
from natsagents.wire.subjects import bucket_name
from tests.chaos.test_cluster_chaos import host_processes

pytestmark = pytest.mark.slow

KINDS = ("Counter", "PermCounter")
NODE = {"kinds": list(KINDS), "cluster": {"rebalance": False, "delivery": None}, "stats": "after_close"}
#: Codes whose reply says the message did not run (docs/protocol.md §6.3).
NOT_RUN = frozenset(
    {"bad_request", "unknown_action", "not_found", "timeout", "overloaded", "unavailable", "unauthorized"}
    | {"at_capacity", "circuit_open"}
)


@dataclass
class Ledger:
    """One agent's calls (several loops at once): acknowledged, and the failures by what
    their errors claim (``unknown``, ``not_run``, ``applied``, ``ran``)."""

    ok: int = 0
    claims: Tally[str] = field(default_factory=Tally)

    def judge(self, final: int) -> dict[str, int]:
        """Against the agent's final total: every acknowledged call applied once, and the
        failed ones that were applied are ``final - ok``. More of them than failures that
        may have run: an error claimed "did not run" for a call that ran."""
        landed = final - self.ok
        may = sum(n for c, n in self.claims.items() if c != "not_run")
        failed = sum(self.claims.values())
        return {
            "lost": max(0, -landed),
            "doubled": max(0, landed - failed),
            "false_not_run": max(0, min(landed, failed) - may),
            "failed_but_applied": max(0, landed),
        }


class Drive:
    """``loops`` concurrent at-most-once ``add(by=1)`` loops per agent, on ``meshes``."""

    def __init__(
        self, meshes: list[Mesh], agents: Iterable[tuple[str, str]], *, loops: int = 4, timeout: float = 8.0
    ) -> None:
        self.meshes = meshes
        self.loops = loops
        self.timeout = timeout
        self.ledgers = {a: Ledger() for a in agents}
        self.errors: Tally[str] = Tally()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.started = time.monotonic()

    def start(self) -> Drive:
        self._tasks = [
            asyncio.create_task(self._loop(self.meshes[n % len(self.meshes)], k, i))
            for k, i in self.ledgers
            for n in range(self.loops)
        ]
        return self

    async def _loop(self, mesh: Mesh, kind: str, agent_id: str) -> None:
        ref = mesh.ref(kind, agent_id)
        ledger = self.ledgers[(kind, agent_id)]
        while not self._stop.is_set():
            try:
                await ref.call("add", by=1, timeout=self.timeout)
            except AgentError as exc:
                if exc.code == ALREADY_APPLIED:
                    claim = "applied"
                elif exc.code == TIMEOUT and not exc.remote:
                    claim = "unknown"  # no reply: it may have run
                elif exc.code in NOT_RUN:
                    claim = "not_run"
                else:
                    claim = "ran"  # handler_error, payload_too_large: the handler ran
                ledger.claims[claim] += 1
                self.errors[f"{exc.code}{'' if exc.remote else ' (local)'}"] += 1
                continue
            except NatsAgentsError as exc:
                ledger.claims["unknown"] += 1
                self.errors[type(exc).__name__] += 1
                continue
            ledger.ok += 1

    async def wait_ok(self, at_least: int, timeout: float = 60.0) -> None:
        marks = {a: lg.ok + at_least for a, lg in self.ledgers.items()}
        await wait_for(
            lambda: all(lg.ok >= marks[a] for a, lg in self.ledgers.items()),
            timeout=timeout,
            interval=0.05,
            what=f"{at_least} more acknowledged calls per agent (errors so far: {dict(self.errors)})",
        )

    async def finish(self) -> dict[str, int]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        took = time.monotonic() - self.started
        gate = asyncio.Semaphore(20)
        verdicts: Tally[str] = Tally()

        async def final(kind: str, agent_id: str) -> None:
            async with gate:
                value = await self.meshes[0].ref(kind, agent_id).call("get", timeout=30)
            verdicts.update(self.ledgers[(kind, agent_id)].judge(value))

        await asyncio.gather(*(final(k, i) for k, i in self.ledgers))
        acknowledged = sum(x.ok for x in self.ledgers.values())
        failed = sum(self.errors.values())
        return {
            "calls": acknowledged + failed,
            "calls_per_s": round((acknowledged + failed) / took),
            "acknowledged": acknowledged,
            "failed": failed,
            "already_applied": self.errors.get(ALREADY_APPLIED, 0),
            **{k: verdicts.get(k, 0) for k in ("false_not_run", "failed_but_applied", "lost", "doubled")},
        }


@pytest.fixture
async def clients(nats_cluster: NatsCluster, mesh_prefix: str) -> AsyncIterator[list[Mesh]]:
    """Three callers (each on a server picked at random by its client)."""
    async with contextlib.AsyncExitStack() as stack:
        meshes = []
        for i in range(3):
            mesh = Mesh.connect(nats_cluster.urls, prefix=mesh_prefix, name=f"load{i}", default_timeout=10.0)
            meshes.append(await stack.enter_async_context(mesh))
        yield meshes


async def test_applied_calls_never_report_failure_under_a_server_kill_and_a_node_pause(
    nats_cluster: NatsCluster, mesh_prefix: str, tmp_path: Path, clients: list[Mesh]
) -> None:
    killed: int | None = None
    async with host_processes(nats_cluster.url, mesh_prefix, tmp_path) as launch:
        hosts = list(await asyncio.gather(*(launch(f"o{i}", NODE) for i in range(3))))
        agents = [(k, f"{k[0].lower()}{i}") for k in KINDS for i in range(8)]
        drive = Drive(clients, agents, loops=6).start()
        try:
            await drive.wait_ok(3)
            # 1. SIGKILL the NATS server leading the state stream under load (its writes
            # stall until a new leader; the connections on it move to the others), restart it.
            state = await open_bucket(clients[0].transport, bucket_name(clients[0].prefix, "state"))
            info = await api_request(clients[0].transport, f"$JS.API.STREAM.INFO.{state.stream}", None, 5.0)
            killed = [s.name for s in nats_cluster.servers].index(info["cluster"]["leader"])
            nats_cluster.kill(killed)
            t_kill = time.monotonic()
            await drive.wait_ok(3)
            recovered_kill = time.monotonic() - t_kill
            await asyncio.to_thread(nats_cluster.restart, killed)
            killed = None
            await drive.wait_ok(2)
            # 2. SIGSTOP one node for 6 s (its agents are taken over), then resume it.
            victim = hosts[0]
            victim.pause()
            _wait_stopped(victim.proc.pid, True)
            t_pause = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.Event().wait(), 6.0)  # the pause itself (a fault, not a sync)
            victim.resume()
            await drive.wait_ok(3)
            recovered_pause = time.monotonic() - t_pause
            figures = await drive.finish()
        finally:
            drive._stop.set()
            if killed is not None:
                await asyncio.to_thread(nats_cluster.restart, killed)
    print(
        f"\nhonest outcomes: server SIGKILL (every agent acknowledged again after {recovered_kill:.1f} s) and "
        f"node SIGSTOP 6 s (recovered {recovered_pause:.1f} s after the pause): {figures}; "
        f"errors {dict(drive.errors)}"
    )
    assert figures["already_applied"] == 0, figures
    assert figures["false_not_run"] == 0, figures
    assert figures["lost"] == 0 and figures["doubled"] == 0, figures
