"""``consistency = "crdt"`` across a real (proxied) partition: nothing acknowledged is lost.

Server 2 of a :class:`~natsagents.testing.proxy.ProxiedCluster` is isolated from the other
two (routes blackholed). Node ``nA`` is on server 0, node ``nC`` on server 2; both hold a
copy of one counter and one add-wins set. A caller on each side keeps writing through the
cut (each reaches the copy on its own side); at the heal the copies merge. Asserted, with
the counts printed: both sides took writes during the cut (the minority did not pause); the
counter on both copies ends at the sum of the increments acknowledged on both sides (plus,
at most, the calls whose outcome is unknown: a ``CallTimeout`` while the servers still
route some requests to the far copy, protocol §21.1; 0 or 1 per run); the set holds every
acknowledged add that was not removed; the state record holds the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from natsagents import ClusterSettings, Mesh
from natsagents.crdt import ORSet, PNCounter
from natsagents.errors import NatsAgentsError
from natsagents.testing import wait_for
from natsagents.testing.proxy import ProxiedCluster, partition
from tests.cluster.fresh import node_on_fresh_cluster
from tests.cluster.test_crdt_mode import Cart, Views, record_is, value_on
from tests.cluster.test_partition_reads import _lead_from_majority

LEASE = 1.0

pytestmark = pytest.mark.slow  # about 9 s: a 3-server cluster, a cut until detected, the heal


@pytest.fixture(scope="module")
def proxied() -> Iterator[ProxiedCluster]:
    # Routes pinged every second: a cut route (and the interest it carried) is dropped
    # within about 2 s, after which each side routes only to its own copies.
    cluster = ProxiedCluster(3, name="crdtcut", ping_interval=1.0, ping_max=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def _node(url: str, prefix: str, node: str) -> Mesh:
    """A node on a freshly made cluster (``fresh.node_on_fresh_cluster``)."""
    settings = ClusterSettings(node_id=node, lease=LEASE, rebalance=False, delivery=None)
    return await node_on_fresh_cluster(url, prefix, settings)


@dataclass
class Side:
    name: str
    added: int = 0  # acknowledged increments
    put: set[str] = field(default_factory=set)  # acknowledged adds
    dropped: set[str] = field(default_factory=set)  # acknowledged removes
    maybe: set[str] = field(default_factory=set)  # adds or removes whose outcome is unknown
    during_cut: int = 0
    unknown: int = 0


async def _writer(client: Mesh, side: Side, stop: asyncio.Event, cut: asyncio.Event) -> None:
    views, cart = client.ref("Views/p"), client.ref("Cart/p")
    i = 0
    while not stop.is_set():
        i += 1
        item = f"{side.name}{i}"
        step = "add"
        try:
            t0 = asyncio.get_running_loop().time()
            await views.call("add", by=1, timeout=6.0)
            took = asyncio.get_running_loop().time() - t0
            if took > 0.3:
                print(f"{side.name}: add took {took:.2f} s")
            side.added += 1
            step = "put"
            await cart.call("put", item=item, timeout=6.0)
            side.put.add(item)
            if i % 3 == 0:
                step = "drop"
                await cart.call("drop", item=item, timeout=6.0)
                side.dropped.add(item)
        except NatsAgentsError as exc:
            # A CallTimeout proves nothing: the far copy may have run it (routing, protocol §21.1).
            side.unknown += step == "add"
            if step != "add":
                side.maybe.add(item)
                side.put.discard(item)
            print(f"{side.name}: {step} {exc!r}")
            await asyncio.sleep(0.05)  # pacing after an error, not a synchronisation
            continue
        side.during_cut += cut.is_set()
        await asyncio.sleep(0.005)  # a steady stream of writes, not a synchronisation


async def test_both_sides_keep_writing_and_the_heal_loses_nothing(proxied: ProxiedCluster, mesh_prefix: str) -> None:
    major, minor = proxied.servers[0].url, proxied.servers[2].url
    async with (
        await _node(major, mesh_prefix, "nA") as node_a,
        await _node(minor, mesh_prefix, "nC") as node_c,
        Mesh.connect(major, prefix=mesh_prefix, name="far", default_timeout=10.0) as far,
        Mesh.connect(minor, prefix=mesh_prefix, name="near", default_timeout=10.0) as near,
    ):
        await node_a.host(Views, Cart)
        await node_c.host(Views, Cart)
        for attempt in range(20):  # a delta sent before nC's interest reached server 0 is lost
            await far.ref("Views/p").call("add", by=0)
            await far.ref("Cart/p").call("put", item="seed")
            try:
                await wait_for(
                    lambda: value_on(node_c, "Views", "p") == 0 and value_on(node_c, "Cart", "p") == {"seed"},
                    timeout=0.5,
                    what="nC follows",
                )
                break
            except TimeoutError:
                if attempt == 19:
                    raise
        a, c = node_a.cluster_node, node_c.cluster_node
        assert a is not None and c is not None
        await _lead_from_majority(far.transport, a.state.bucket, proxied)
        west, east = Side("w"), Side("e")
        stop, cutting = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.ensure_future(_writer(far, west, stop, cutting)),
            asyncio.ensure_future(_writer(near, east, stop, cutting)),
        ]
        loop = asyncio.get_running_loop()
        with partition(proxied, {2}, clients=False) as cut:
            cutting.set()
            began = (west.added, east.added)
            await wait_for(lambda: c.partition.state.minority, timeout=6 * LEASE, interval=0.01, what="minority")
            try:
                await wait_for(
                    lambda: west.added - began[0] >= 30 and east.added - began[1] >= 30, timeout=15, what="writes"
                )
            finally:
                print(
                    f"\nduring the cut: west {west.added - began[0]}, east {east.added - began[1]}, "
                    f"served {dict(Views.served)}"
                )
            status = c.partition.state.status
            cutting.clear()
            cut.heal()
        healed = loop.time()
        stop.set()
        await asyncio.gather(*tasks)
        total = west.added + east.added
        unknown = west.unknown + east.unknown
        items = frozenset((west.put | east.put | {"seed"}) - west.dropped - east.dropped)
        maybe = west.maybe | east.maybe

        def converged() -> bool:
            views = {value_on(m, "Views", "p") for m in (node_a, node_c)}
            carts = [value_on(m, "Cart", "p") for m in (node_a, node_c)]
            if len(views) != 1 or carts[0] != carts[1] or carts[0] is None:
                return False
            (value,) = views
            return bool(total <= value <= total + unknown and items <= carts[0] <= items | maybe)

        try:
            await wait_for(converged, timeout=20, interval=0.01, what="copies converge after the heal")
        finally:
            print(
                f"\nnC was {status} during the cut; acknowledged during the cut: west {west.during_cut}, "
                f"east {east.during_cut}; increments west {west.added} east {east.added} (sum {total}), "
                f"unknown outcomes {unknown} (+{len(maybe)} set ops); set adds {len(west.put) + len(east.put)}, "
                f"removes {len(west.dropped) + len(east.dropped)}, expected {len(items)} items; copies "
                f"nA={value_on(node_a, 'Views', 'p')} nC={value_on(node_c, 'Views', 'p')}"
            )
        took = loop.time() - healed
        print(f"converged {took:.2f} s after the heal")
        assert status == "quorum_lost"
        assert west.during_cut > 0 and east.during_cut > 0  # the minority kept serving
        final, cart = value_on(node_a, "Views", "p"), value_on(node_a, "Cart", "p")
        await wait_for(lambda: record_is(node_a, "Views", PNCounter, "p", final), timeout=20, what="record")
        await wait_for(lambda: record_is(node_a, "Cart", ORSet, "p", cart), timeout=20, what="set record")
