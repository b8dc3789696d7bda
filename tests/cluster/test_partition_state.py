"""A node's partition state (``cluster/partition.py``) on one real server: its own
connection cut (a proxy between the node and its server), a peer that lapses and one that
leaves; events in order. The minority side of a real partition is in
``test_partition_strategy.py``."""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

import pytest

from natsagents import ClusterSettings, Mesh, PartitionError, PartitionEvent
from natsagents.agent.base import PARTITION_STRATEGIES, SUPPORTED_PARTITION_STRATEGIES
from natsagents.cluster.membership import Membership
from natsagents.cluster.partition import PartitionMonitor
from natsagents.errors import ActionDefinitionError, NotSupportedYet, error_for_code
from natsagents.runtime.host import Host
from natsagents.testing import wait_for
from natsagents.testing.proxy import Proxy
from tests.agents import Counter

LEASE = 1.0


def _settings(node: str) -> ClusterSettings:
    return ClusterSettings(node_id=node, lease=LEASE, rebalance=False, delivery=None)


def _monitor(mesh: Mesh) -> PartitionMonitor:
    monitor = mesh.partition
    assert monitor is not None
    return monitor


async def test_own_connection_cut_is_nats_unreachable_not_a_side(nats_url: str, mesh_prefix: str) -> None:
    """The node's only way to its server goes away (the proxy closes its connection and
    its port: reconnects are refused), then comes back on the same port."""
    port = urlparse(nats_url).port
    assert port is not None
    proxy = Proxy(port)
    url = f"nats://127.0.0.1:{proxy.port}"
    try:
        async with Mesh.connect(url, prefix=mesh_prefix, cluster=_settings("n1")) as mesh:
            await mesh.host(Counter)
            monitor = _monitor(mesh)
            events: list[PartitionEvent] = []
            monitor.subscribe(events.append)
            assert (monitor.state.status, monitor.state.side) == ("ok", "majority")
            loop = asyncio.get_running_loop()
            cut = loop.time()
            proxy.close()
            await wait_for(lambda: monitor.state.status == "nats_unreachable", timeout=5, interval=0.02)
            print(f"nats_unreachable after {loop.time() - cut:.2f} s; side {monitor.state.side}")
            assert monitor.state.side == "unknown" and not monitor.state.minority
            # Longer than a lease without the connection: still "unreachable", never "minority".
            await asyncio.sleep(LEASE * 1.5)  # the duration of the fault, not a synchronisation
            assert monitor.state.status == "nats_unreachable"
            proxy = Proxy(port, port=proxy.port)
            await wait_for(lambda: monitor.state.status == "ok", timeout=10, interval=0.02)
            print("events:", [(e.kind, e.current.status) for e in events])
            assert [(e.kind, e.current.status) for e in events] == [("start", "nats_unreachable"), ("heal", "ok")]
            assert monitor.history[-2:] == events
            text = _metrics(mesh)
            assert 'natsagents_partition_status{status="ok"} 1.0' in text
            assert 'natsagents_partition_events_total{event="start",status="nats_unreachable"} 1.0' in text
    finally:
        proxy.close()


async def test_a_lapsed_peer_is_seen_and_its_return_heals(nats_url: str, mesh_prefix: str) -> None:
    async with Mesh.connect(nats_url, prefix=mesh_prefix, cluster=_settings("n1")) as mesh:
        monitor = _monitor(mesh)
        iterator = monitor.events()
        first = asyncio.ensure_future(anext(iterator))
        ghost = Membership(mesh.transport, mesh_prefix, "ghost", lease=LEASE)
        await ghost.start()
        await wait_for(lambda: "ghost" in mesh.cluster_node.membership.members(), timeout=5)  # type: ignore[union-attr]
        await ghost.stop(leave=False)  # crashed, paused or cut off: it looks the same from here
        event = await asyncio.wait_for(first, 5 * LEASE)
        assert (event.kind, event.current.status, event.current.lapsed) == ("start", "peers_lapsed", ("ghost",))
        assert event.current.side == "majority"
        back = Membership(mesh.transport, mesh_prefix, "ghost", lease=LEASE)
        await back.start()
        event = await asyncio.wait_for(anext(iterator), 5 * LEASE)
        assert (event.kind, event.current.status, event.current.lapsed) == ("heal", "ok", ())
        await back.stop(leave=True)  # a member that leaves is not a lapse
        await asyncio.sleep(2 * LEASE)  # longer than its lease: nothing may happen meanwhile
        assert monitor.state.status == "ok"
        await iterator.aclose()


def test_partition_error_is_its_own_code() -> None:
    err = error_for_code("partition", "cut off", details={"node": "n3", "state": "quorum_lost"})
    assert isinstance(err, PartitionError) and err.code == "partition"
    assert not isinstance(err, TimeoutError)


def test_partition_strategy_is_validated_and_unbuilt_ones_are_refused_when_hosted() -> None:
    with pytest.raises(ActionDefinitionError, match="partition_strategy"):

        class Wrong(Counter):
            partition_strategy = "pause"

    assert Counter.partition_strategy == "pause_minority"
    Host.check_kind(Counter)
    for strategy in PARTITION_STRATEGIES:
        if strategy == "split_brain_allowed":  # refused on a strong kind at class definition
            with pytest.raises(ActionDefinitionError, match="strong means never two writers"):
                type(f"Degraded_{strategy}", (Counter,), {"partition_strategy": strategy})
            continue
        kind = type(f"Degraded_{strategy}", (Counter,), {"partition_strategy": strategy})
        if strategy in SUPPORTED_PARTITION_STRATEGIES:
            Host.check_kind(kind)
            continue
        with pytest.raises(NotSupportedYet, match=strategy):
            Host.check_kind(kind)
    assert "continue_degraded" in SUPPORTED_PARTITION_STRATEGIES


def _metrics(mesh: Mesh) -> str:
    from prometheus_client import generate_latest

    return generate_latest(mesh.metrics.registry).decode()
