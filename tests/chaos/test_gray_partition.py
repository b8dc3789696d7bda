"""The gray-failure scenario of ``test_gray_failures`` across a real partition: the
victim node is connected to server 2 only, whose routes to the other two servers are
blackholed by the proxies of a :class:`~natsagents.testing.proxy.ProxiedCluster` (both
sides alive, sockets open, nothing flows), then healed. Callers sit on servers 0 and 1.

Server 2 keeps the victim's subscriptions, and servers 0 and 1 keep server 2's interest
in them (the routes never closed): requests go down a route that delivers nothing. The
same assertions as the paused node's. Slow (route traffic crosses Python proxies, and
the heal re-forms JetStream leadership). The bound allows for a JetStream leader election
on the majority side (4-9 s measured, docs nats-facts): when server 2 led the directory or
state stream, no takeover can be written before the majority elected a new leader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from natsagents import Mesh
from natsagents.testing.proxy import ProxiedCluster, partition
from tests.chaos.test_cluster_chaos import host_processes
from tests.chaos.test_gray_failures import NODE, PROMISE, _mkdir, _scenario

pytestmark = pytest.mark.slow
ELECTION = 9.0  # a JetStream leader election on the majority side, at most (measured 4-9 s)


@pytest.fixture(scope="module")
def proxied() -> Iterator[ProxiedCluster]:
    cluster = ProxiedCluster(3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.xfail(
    strict=False,
    reason="when server 2 led the members/directory/state streams, the majority's KV writes stall for "
    "its election (measured: heartbeats of the majority failed for 8 s, agents answered after 9.8-13.3 s, "
    "27 failed calls); partition handling of JetStream leadership is outside the gray-failure fix",
)
async def test_a_node_behind_a_partitioned_server_does_not_black_hole_its_agents(
    proxied: ProxiedCluster, mesh_prefix: str, tmp_path: Path
) -> None:
    majority = [proxied.servers[0].url, proxied.servers[1].url]
    async with (
        Mesh.connect(majority, prefix=mesh_prefix, name="load", default_timeout=10.0) as client,
        host_processes(proxied.servers[2].url, mesh_prefix, _mkdir(tmp_path / "minority")) as minority,
        host_processes(",".join(majority), mesh_prefix, tmp_path) as launch,
    ):
        victim = await minority("g0", NODE)
        hosts = [victim, *await asyncio.gather(*(launch(f"g{i}", NODE) for i in (1, 2)))]
        cut = partition(proxied, {2}, clients=False)
        await _scenario(
            client,
            hosts,
            away=cut.__enter__,
            back=cut.heal,
            what="server 2 partitioned (routes)",
            away_for=16.0,
            promise=PROMISE + ELECTION,
        )
