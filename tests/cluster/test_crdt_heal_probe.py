"""A healed cut is caught up as soon as the servers route again, not at the next round
(protocol §21.4): node ``nA`` on server 0 and ``nC`` on server 2 of a
:class:`~natsagents.testing.proxy.ProxiedCluster` each take a write the other cannot see
(server 2's routes cut); then the cut heals. The periodic round is set to a minute, the
heal's own resync is off and the kind merges into its record only every minute, so the one
thing that can bring the copies together within the test is the hello a node says while it
is not ``ok`` (and for a second after) and the digest exchange it starts (without it this
test times out)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import nats
import pytest
from nats.aio.msg import Msg

from natsagents import Agent, ClusterSettings, Mesh, action
from natsagents.cluster.crdt_sync import HELLO, HELLO_AFTER
from natsagents.cluster.node import ClusterNode
from natsagents.crdt import ORMap, ORSet
from natsagents.testing import wait_for
from natsagents.testing.proxy import ProxiedCluster, partition
from natsagents.wire import headers as h
from tests.cluster.fresh import node_on_fresh_cluster
from tests.cluster.test_crdt_mode import value_on

LEASE = 1.0
ROUND = 60.0  # the backstop round and the record merges: never within the test


class Marks(Agent):
    kind = "Marks"
    consistency = "crdt"
    flush_interval = ROUND

    def initial_state(self) -> ORMap[ORSet]:
        return ORMap(ORSet)

    @action
    async def mark(self, key: str, tag: str) -> None:
        self.mutate(self.state.update(self.replica, key, lambda s: s.add(self.replica, tag)))


@pytest.fixture(scope="module")
def proxied() -> Iterator[ProxiedCluster]:
    cluster = ProxiedCluster(3, name="crdtprobe", ping_interval=1.0, ping_max=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def _node(url: str, prefix: str, node: str) -> Mesh:
    """A node on a freshly made cluster (``fresh.node_on_fresh_cluster``)."""
    settings = ClusterSettings(node_id=node, lease=LEASE, rebalance=False, delivery=None)
    return await node_on_fresh_cluster(url, prefix, settings)


def _cluster(mesh: Mesh) -> ClusterNode:
    node = mesh.cluster_node
    assert node is not None
    return node


async def test_a_healed_copy_converges_without_waiting_for_a_round(proxied: ProxiedCluster, mesh_prefix: str) -> None:
    major, minor = proxied.servers[0].url, proxied.servers[2].url
    async with (
        await _node(major, mesh_prefix, "nA") as node_a,
        await _node(minor, mesh_prefix, "nC") as node_c,
        Mesh.connect(major, prefix=mesh_prefix, name="west", default_timeout=5.0) as west,
        Mesh.connect(minor, prefix=mesh_prefix, name="east", default_timeout=5.0) as east,
    ):
        for node in (node_a, node_c):
            await node.host(Marks)
            sync = _cluster(node).crdts.sync
            sync.gossip_every = ROUND
            sync.resync_on_heal = False
        for attempt in range(20):  # a delta sent before nC's interest reached server 0 is lost
            await west.ref("Marks/m").call("mark", key="seed", tag="s")
            try:
                await wait_for(lambda: value_on(node_c, "Marks", "m") is not None, timeout=0.5, what="nC follows")
                break
            except TimeoutError:
                if attempt == 19:
                    raise
        a, c = _cluster(node_a), _cluster(node_c)
        loop = asyncio.get_running_loop()
        raw = await nats.connect(major)  # hears nC's hellos on the majority's server
        heard: list[float] = []

        async def on_hello(msg: Msg) -> None:
            if (msg.headers or {}).get(h.CRDT_NODE) == "nC":
                heard.append(time.time())

        await raw.subscribe(f"{mesh_prefix}.crdt.Marks.{HELLO}", cb=on_hello)
        await raw.flush()
        with partition(proxied, {2}, clients=False, mode="cut") as cut:
            await wait_for(lambda: c.partition.state.status != "ok", timeout=10, what="nC leaves ok")
            await west.ref("Marks/m").call("mark", key="west", tag="w")
            await east.ref("Marks/m").call("mark", key="east", tag="e")
            assert "east" not in value_on(node_a, "Marks", "m")  # the cut holds
            assert "west" not in value_on(node_c, "Marks", "m")
            cut.heal()
        healed = loop.time()
        want = {"seed": frozenset({"s"}), "west": frozenset({"w"}), "east": frozenset({"e"})}
        await wait_for(
            lambda: value_on(node_a, "Marks", "m") == value_on(node_c, "Marks", "m") == want,
            timeout=15,
            interval=0.01,
            what="the copies converge after the heal",
        )
        took = loop.time() - healed
        print(f"\nconverged {took:.2f} s after the heal (nA {a.partition.state.status}, nC {c.partition.state.status})")
        assert took < ROUND / 4
        # nC's state turns ok on heartbeats crossing the healed routes, often before any
        # hello said while not ok could cross: it goes on saying hellos after ok, and
        # those reach the far side (the routes are up).
        await wait_for(lambda: c.partition.state.status == "ok", timeout=10, what="nC back to ok")
        back = [e.at for e in c.partition.history if e.kind == "heal"][-1]
        await wait_for(lambda: c.crdts.sync.cut_loop is None, timeout=HELLO_AFTER + 5, what="nC's hellos end")
        after = [t for t in heard if t > back]
        print(f"hellos from nC heard on server 0: {len(heard)}, {len(after)} after nC was ok again")
        assert after, "no hello from nC crossed after its state was ok again"
        await raw.close()
