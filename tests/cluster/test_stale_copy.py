"""A stale copy of an agent never answers what its successor answers (protocol §8.8), and
a node knows when its lease lapsed in the others' eyes.

Each line of ownership of an agent subscribes its inbox in a queue group of its own (§3),
so while a superseded copy (its node was cut off and the agent taken over) is still
subscribed, every message reaches both copies. The successor answers; the stale copy,
which learns it was superseded, must drop what it did not run instead of answering
``unavailable`` a second time.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator

import msgpack
import nats
import pytest
from nats.aio.msg import Msg

from natsagents import ClusterSettings, Mesh
from natsagents.server import NatsServer
from natsagents.testing import wait_for
from natsagents.testing.proxy import Proxy
from natsagents.wire import envelope
from natsagents.wire.subjects import agent_subject
from tests.agents import Counter

LEASE = 1.0
REQUESTS = 20


def _settings(node: str) -> ClusterSettings:
    return ClusterSettings(node_id=node, lease=LEASE, rebalance=False, delivery=None)


@pytest.fixture
async def client(nats_url: str, mesh_prefix: str) -> AsyncIterator[Mesh]:
    mesh = await Mesh.connect(nats_url, prefix=mesh_prefix, name="client")
    try:
        yield mesh
    finally:
        await mesh.aclose()


@pytest.mark.timeout(60)
async def test_a_superseded_copy_drops_what_the_new_owner_answers(
    nats_server: NatsServer, nats_url: str, mesh_prefix: str, client: Mesh
) -> None:
    with Proxy(nats_server.port) as proxy:
        n1 = await Mesh.connect(f"nats://{proxy.address}", prefix=mesh_prefix, name="n1", cluster=_settings("n1"))
        n2: Mesh | None = None
        raw = await nats.connect(nats_url)
        try:
            await n1.host(Counter)
            assert await client.ref("Counter/s").call("add", by=1) == 1  # on n1, the only host
            n2 = await Mesh.connect(nats_url, prefix=mesh_prefix, name="n2", cluster=_settings("n2"))
            await n2.host(Counter)
            node2 = n2.cluster_node
            assert node2 is not None
            await wait_for(lambda: node2.membership.is_live("n1"), timeout=5)

            # n1 is cut off (its connection stays open: the server keeps its subscription
            # and holds what it sends it); once its lease lapsed, n2 takes the agent over.
            proxy.blackhole()
            assert await client.ref("Counter/s").call("add", by=1, timeout=15) == 2
            assert "Counter/s" in n2.local_agents()

            # Requests now reach both copies: n2's queue group and n1's held subscription.
            replies: dict[str, list[str]] = defaultdict(list)

            async def collect(msg: Msg) -> None:
                replies[msg.subject].append((msg.headers or {}).get("Na-Status", "?"))

            await raw.subscribe("_INBOX.stale.>", cb=collect)
            subject = agent_subject(mesh_prefix, "Counter", "s")
            for i in range(REQUESTS):
                hdrs = {"Na-Proto": "1", "Na-Action": "get", "Na-Msg-Id": envelope.new_message_id()}
                await raw.publish(subject, msgpack.packb({}), reply=f"_INBOX.stale.{i}", headers=hdrs)
            await raw.flush()
            await wait_for(lambda: len(replies) == REQUESTS, timeout=10)

            # n1 comes back: it reads the held requests, finds it was superseded, stops its copy.
            proxy.heal()
            await wait_for(lambda: "Counter/s" not in n1.local_agents(), timeout=15)
            node1 = n1.cluster_node
            assert node1 is not None
            await wait_for(lambda: not n1._host.replies.busy, timeout=5)
            await n1.transport.flush()
            await raw.flush()
            await asyncio.sleep(0)
            doubled = {s: r for s, r in replies.items() if len(r) != 1}
            assert not doubled, f"{len(doubled)} of {REQUESTS} requests answered twice: {sorted(doubled.items())[:3]}"
            assert all(r == ["ok"] for r in replies.values()), dict(replies)
            assert await client.ref("Counter/s").call("get") == 2
        finally:
            await raw.close()
            if n2 is not None:
                await n2.aclose()
            await n1.aclose()


@pytest.mark.timeout(30)
async def test_heartbeats_held_by_a_cut_still_count_as_a_gap(nats_server: NatsServer, mesh_prefix: str) -> None:
    """A cut shorter than two leases: heartbeats sent during it reach the server only when
    it heals, each less than a lease after the one before by their sending times, yet the
    others saw no heartbeat for more than a lease (and may have taken the node's agents
    over). The node must count that as a gap, so its copies re-verify their claims before
    serving (before: no gap counted, and a superseded copy answered reads)."""
    with Proxy(nats_server.port) as proxy:
        n1 = await Mesh.connect(f"nats://{proxy.address}", prefix=mesh_prefix, name="n1", cluster=_settings("n1"))
        try:
            node = n1.cluster_node
            assert node is not None
            membership = node.membership
            await wait_for(lambda: membership.own_lease_left() > 0, timeout=5)
            gaps = membership.gaps
            proxy.blackhole()
            cut = time.monotonic()
            # Observers judge the lease from when they saw the last heartbeat: lapsed by now.
            await wait_for(lambda: membership.own_lease_left() < -0.4, timeout=5, interval=0.01)
            proxy.heal()
            held = time.monotonic() - cut
            await wait_for(lambda: membership.own_lease_left() > 0, timeout=5, interval=0.01)
            assert held < 2 * LEASE, f"cut for {held:.2f} s: the test wants a cut shorter than two leases"
            assert membership.gaps == gaps + 1
        finally:
            await n1.aclose()
