"""Native counters on a 3-server JetStream cluster: R3, exact through a server kill.

Adders keep adding while a server is SIGKILLed; an add that times out is published again
with the same ``Nats-Msg-Id`` (within the stream's duplicate window), so every
acknowledged add is counted exactly once and none is lost: the final total is the sum of
the acknowledged deltas.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from natsagents import Mesh
from natsagents.counters import counters_stream
from natsagents.server import NatsCluster
from natsagents.testing import wait_for
from natsagents.transport.jetstream import stream_info


@pytest.fixture
def cluster(nats_cluster: NatsCluster) -> NatsCluster:
    """The module's cluster with every server up: a server an earlier test killed is started
    again here, not after the test (the last test's victim is never restarted for nothing)."""
    for i, server in enumerate(nats_cluster.servers):
        if not server.running:
            nats_cluster.restart(i)
    return nats_cluster


async def _adds_through_a_kill(cluster: NatsCluster, *, kill_leader: bool) -> None:
    prefix = "c" + secrets.token_hex(4)
    async with Mesh.connect(cluster.urls, prefix=prefix, name="adder", default_timeout=10.0) as mesh:
        counter = await mesh.counter("total", timeout=15.0)
        info = await stream_info(mesh.transport, counters_stream(prefix))
        assert info["config"]["num_replicas"] == 3
        leader = info["cluster"]["leader"]
        names = [s.name for s in cluster.servers]
        victim = names.index(leader) if kill_leader else next(i for i, n in enumerate(names) if n != leader)
        acked: list[int] = []
        stop = asyncio.Event()

        async def adder(k: int) -> None:
            delta = 2**64 + k  # beyond int64 on purpose
            while not stop.is_set():
                await counter.add(delta, timeout=25.0)
                acked.append(delta)

        tasks = [asyncio.create_task(adder(k)) for k in range(4)]
        try:
            await wait_for(lambda: len(acked) >= 40, timeout=10.0, what="adds before the kill")
            cluster.kill(victim)
            before = len(acked)
            await wait_for(lambda: len(acked) >= before + 40, timeout=25.0, what="adds after the kill")
        finally:
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [r for r in results if r is not None] == []  # no add failed, none has an unknown outcome
        assert await counter.value(consistent=True, timeout=15.0) == sum(acked)


async def test_a_follower_kill_loses_and_doubles_no_add(cluster: NatsCluster) -> None:
    await _adds_through_a_kill(cluster, kill_leader=False)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_stream_leader_kill_loses_and_doubles_no_add(cluster: NatsCluster) -> None:
    await _adds_through_a_kill(cluster, kill_leader=True)
