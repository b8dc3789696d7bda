"""Session reads never go back in time across a primary failover (SIGKILL of the node
process holding the primary), while reads spread over two read replicas, writes keep
coming, and one replica of each agent lags throughout. Each session checks that no reply
is older than the newest value it saw (its own writes and its reads): read-your-writes
and monotonic reads. Without ``Na-Min-Version`` this run sees hundreds of stale reads."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from natsagents import AgentError, Mesh
from natsagents.testing import wait_for
from tests.cluster.test_cluster_node import node_of
from tests.cluster.test_replicas import doomed_node, owner, replicated, survivors
from tests.node_process import SessionCounter

pytestmark = pytest.mark.slow

SESSIONS = 4
AGENTS = 3


async def _session_load(client: Mesh, index: int, stop: asyncio.Event, out: dict[str, Any]) -> None:
    session = client.session()
    seen: dict[str, int] = {}
    while not stop.is_set():
        for a in range(AGENTS):
            aid = f"f{a}"
            ref = client.ref(SessionCounter, aid, session=session)
            try:
                if index % 2 == 0:
                    value = await ref.call("add", timeout=10)
                    out["writes"] += 1
                else:
                    value = await ref.call("get", timeout=10)
                    out["reads"] += 1
            except AgentError as exc:
                out["errors"].append(f"{aid}: {exc.code}")
                continue
            if value < seen.get(aid, 0):
                out["back_in_time"].append(f"session {index} {aid}: {value} after {seen[aid]}")
            seen[aid] = max(seen.get(aid, 0), value)


async def test_session_reads_never_go_back_in_time_across_a_failover(
    mesh_factory: Any, nats_url: str, mesh_prefix: str
) -> None:
    async with doomed_node(nats_url, mesh_prefix) as proc:
        client = await mesh_factory(name="client")
        for a in range(AGENTS):
            await client.ref(SessionCounter, f"f{a}").call("add")  # primaries on the doomed node
        meshes = await survivors(mesh_factory)
        for a in range(AGENTS):
            await replicated(meshes, f"SessionCounter/f{a}", count=2)
            # One replica of each agent lags all along: only Na-Min-Version keeps sessions safe.
            node_of(meshes[0]).replicas.hold("SessionCounter", f"f{a}", True)
        out: dict[str, Any] = {"writes": 0, "reads": 0, "errors": [], "back_in_time": []}
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_session_load(client, i, stop, out)) for i in range(SESSIONS)]
        try:
            await asyncio.sleep(1.0)  # load before the kill (a duration of load, not a sync)
            proc.kill()
            killed = time.monotonic()
            await proc.wait()
            before = out["writes"]
            await wait_for(lambda: out["writes"] >= before + 30, timeout=20, interval=0.05, what="writes resumed")
            resumed = time.monotonic() - killed
            await asyncio.sleep(2.0)  # two more seconds of load after the takeover
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        print(
            f"writes resumed {resumed:.2f} s after the kill; writes {out['writes']}, reads {out['reads']}, "
            f"errors {len(out['errors'])}, back in time {len(out['back_in_time'])}"
        )
        assert out["back_in_time"] == []
        assert out["writes"] > before, "writes did not resume after the failover"
        for a in range(AGENTS):
            owner(meshes, f"SessionCounter/f{a}")  # taken over by a survivor
