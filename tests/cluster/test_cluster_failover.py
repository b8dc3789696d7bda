"""A cluster node process dies (SIGKILL): permanent agents come back elsewhere at once,
the others on their next message, both within lease + 1 s, with their state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from natsagents import ClusterSettings, Mesh
from natsagents.testing import wait_for
from tests import node_process
from tests.agents import Counter, Keeper

LEASE = 1.5


@pytest.fixture
async def node_proc(nats_url: str, mesh_prefix: str) -> AsyncIterator[asyncio.subprocess.Process]:
    options = {"kinds": ["Counter", "Keeper"], "cluster": {"lease": LEASE, "delivery": None}}
    async with node_process.running(nats_url, mesh_prefix, "doomed", options) as proc:
        yield proc


async def test_killed_node_agents_come_back_within_lease(
    node_proc: asyncio.subprocess.Process, mesh_prefix: str, nats_url: str
) -> None:
    client = await Mesh.connect(nats_url, prefix=mesh_prefix, name="client")
    survivor: Mesh | None = None
    try:
        # Everything lands on the only node, the one we will kill.
        for i in range(20):
            assert await client.ref(f"Keeper/k{i}").call("add", by=i + 1) == i + 1
            assert await client.ref(f"Counter/c{i}").call("add", by=i + 1) == i + 1
        assert {r.node for r in await client.agents()} == {"doomed"}
        survivor = await Mesh.connect(
            nats_url,
            prefix=mesh_prefix,
            name="survivor",
            cluster=ClusterSettings(node_id="survivor", lease=LEASE, rebalance=False, delivery=None),
        )
        await survivor.host(Counter, Keeper)
        node = survivor.cluster_node
        assert node is not None
        await wait_for(lambda: node.membership.is_live("doomed"), timeout=5)

        node_proc.kill()
        killed = time.monotonic()
        await node_proc.wait()

        # Permanent agents: re-placed by the leader without any call.
        keepers = {f"Keeper/k{i}" for i in range(20)}
        await wait_for(lambda: keepers <= set(survivor.local_agents()), timeout=LEASE + 3, interval=0.01)
        eager = time.monotonic() - killed
        # Transient agents: their next call waits for the lease, then re-activates them.
        values = await asyncio.gather(*(client.ref(f"Counter/c{i}").call("get", timeout=10) for i in range(20)))
        lazy = time.monotonic() - killed
        assert values == [i + 1 for i in range(20)]  # state intact
        assert [await client.ref(f"Keeper/k{i}").call("get") for i in range(20)] == [i + 1 for i in range(20)]
        print(f"permanent back after {eager:.2f} s, transient answered after {lazy:.2f} s (lease {LEASE} s)")
        assert eager <= LEASE + 1.0
        assert lazy <= LEASE + 1.0
        records = {r.address: r for r in await client.agents()}
        assert all(records[a].node == "survivor" and records[a].epoch == 2 for a in keepers)
    finally:
        if survivor is not None:
            await survivor.aclose()
        await client.aclose()
