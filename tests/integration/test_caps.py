"""Caps against a peer that names agents until a host's memory is full: a host holds at
most ``max_agents`` activations and refuses one more with a typed ``at_capacity``.

Before: no cap; 200,000 distinct ids were all activated in 11 s and stayed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from natsagents import Agent, ClusterAtCapacity, ClusterSettings, ConfigurationError, Mesh, action
from natsagents.testing import wait_for
from tests.agents import Counter


async def test_a_host_refuses_activations_beyond_max_agents_at_once(mesh_factory: Any) -> None:
    host = await mesh_factory(max_agents=3)
    await host.host(Counter)
    caller = await mesh_factory(name="caller")
    for i in range(3):
        assert await caller.ref(f"Counter/c{i}").call("add") == 1
    started = time.monotonic()
    with pytest.raises(ClusterAtCapacity) as err:
        await caller.ref("Counter/c3").call("add", timeout=5)
    assert time.monotonic() - started < 1.0  # typed, at once: not a timeout
    assert "max_agents=3" in err.value.message
    assert sorted(host.local_agents()) == ["Counter/c0", "Counter/c1", "Counter/c2"]
    assert await caller.ref("Counter/c0").call("add") == 2  # the agents it holds still answer
    assert await host.deactivate("Counter/c0")
    assert await caller.ref("Counter/c3").call("add") == 1  # room again


def _node(mesh_factory: Any, name: str, **options: Any) -> Any:
    # The default load bound (1.25): placement knows each node's agent cap from its
    # membership record, so a full node takes no share of the bound.
    settings = ClusterSettings(node_id=name, lease=1.5, rebalance=False, delivery=None)
    return mesh_factory(name=name, cluster=settings, **options)


async def _see_each_other(*meshes: Mesh) -> None:
    async def all_live() -> bool:
        return all(node.cluster_node is not None and len(node.cluster_node.nodes()) == len(meshes) for node in meshes)

    await wait_for(all_live, timeout=10, what="the nodes see each other")


async def test_a_full_cluster_node_sends_the_agent_to_another(mesh_factory: Any) -> None:
    """Before: with the default load bound n2 refused the agents n1 could not take (the
    placer did not know n1's cap) and the 6th activation timed out; the test needed
    ``load_factor=10``."""
    n1: Mesh = await _node(mesh_factory, "n1", max_agents=2)
    await n1.host(Counter)
    n2: Mesh = await _node(mesh_factory, "n2")
    await n2.host(Counter)
    await _see_each_other(n1, n2)
    assert {n.node_id: n.max_agents for n in n2.cluster_node.nodes()} == {"n1": 2, "n2": 100_000}  # type: ignore[union-attr]
    for i in range(8):
        assert await n1.ref(f"Counter/k{i}").call("add", timeout=5) == 1
    assert len(n1.local_agents()) <= 2
    assert len(n1.local_agents()) + len(n2.local_agents()) == 8


async def test_two_full_nodes_refuse_the_next_agent_at_once(mesh_factory: Any) -> None:
    """2 nodes with max_agents=N host 2N agents over both; the 2N+1-th is refused with a
    typed ``at_capacity`` at once, not after the caller's timeout."""
    cap = 4
    n1: Mesh = await _node(mesh_factory, "n1", max_agents=cap)
    n2: Mesh = await _node(mesh_factory, "n2", max_agents=cap)
    await n1.host(Counter)
    await n2.host(Counter)
    await _see_each_other(n1, n2)
    caller: Mesh = await mesh_factory(name="caller")
    for i in range(2 * cap):
        assert await caller.ref(f"Counter/f{i}").call("add", timeout=5) == 1
    assert (len(n1.local_agents()), len(n2.local_agents())) == (cap, cap)
    for via in (caller, n1, n2):  # an activation request, and placement on either node
        started = time.monotonic()
        with pytest.raises(ClusterAtCapacity) as err:
            await via.ref("Counter/one-too-many").call("add", timeout=10)
        took = time.monotonic() - started
        print(f"the {2 * cap + 1}th agent refused at_capacity in {took * 1000:.0f} ms (via {via.name})")
        assert took < 2.0  # typed, at once: not the 10 s timeout
        assert "agent limit" in err.value.message
        assert set(err.value.rejected) == {"n1", "n2"}
    started = time.monotonic()
    with pytest.raises(ClusterAtCapacity):
        await n1.spawn("Counter/spawned", timeout=10)  # an explicit spawn (queue=True) too
    assert time.monotonic() - started < 2.0
    assert await caller.ref("Counter/f0").call("add") == 2  # the agents held still answer
    assert await n2.deactivate(n2.local_agents()[0])

    def room_seen() -> bool:  # a node learns of n2's room from n2's next heartbeat
        return all(
            info.load.agents < cap
            for node in (n1, n2)
            for info in (node.cluster_node.nodes() if node.cluster_node is not None else [])
            if info.node_id == "n2"
        )

    await wait_for(room_seen, timeout=10, what="both nodes see room on n2")
    assert await caller.ref("Counter/one-too-many").call("add", timeout=5) == 1  # room again, on n2
    assert "Counter/one-too-many" in n2.local_agents()


async def test_the_rebalancer_fills_a_capped_node_up_to_its_cap_only(mesh_factory: Any) -> None:
    """A node joining with ``max_agents=3`` gets 3 of the 12 agents, not its share of 6:
    the rebalancer's plan knows the cap, so no move is refused and taken back (each
    would pause an agent for nothing, again at every round)."""

    def node(name: str, **options: Any) -> Any:
        settings = ClusterSettings(node_id=name, lease=1.5, rebalance_rate=200.0, delivery=None)
        return mesh_factory(name=name, cluster=settings, **options)

    n1: Mesh = await node("n1")
    await n1.host(Counter)
    for i in range(12):
        assert await n1.ref(f"Counter/r{i}").call("add") == 1
    n2: Mesh = await node("n2", max_agents=3)
    await n2.host(Counter)
    await wait_for(lambda: len(n2.local_agents()) == 3, timeout=15, what="n2 filled up to its cap")
    assert n1.cluster_node is not None and n2.cluster_node is not None

    def idle() -> bool:
        return n1.cluster_node.moves_in_flight == 0 and n2.cluster_node.moves_in_flight == 0  # type: ignore[union-attr]

    await wait_for(idle, timeout=10, what="no move under way")
    assert (len(n1.local_agents()), len(n2.local_agents())) == (9, 3)
    failed = n1.metrics.registry.get_sample_value(
        "natsagents_migrations_total", {"kind": "Counter", "strategy": "checkpoint_restore", "outcome": "failed"}
    )
    assert not failed  # before: 3 moves refused at_capacity and taken back


def test_max_agents_must_be_a_positive_int() -> None:
    for bad in (0, -1, 1.5, "10", True):
        with pytest.raises(ConfigurationError):
            Mesh.connect("nats://127.0.0.1:1", max_agents=bad)  # type: ignore[arg-type]


class Gpu(Agent):
    resources = {"custom": {"gpu": 1}}

    @action
    async def ping(self) -> str:
        return self.id


async def test_a_node_holds_at_most_max_queued_placements(mesh_factory: Any) -> None:
    """Before: 3,000 queued placements with impossible needs were all held (an idle node at
    38 % of a core)."""
    settings = ClusterSettings(node_id="q1", lease=1.5, rebalance=False, delivery=None, max_queued=2)
    node: Mesh = await mesh_factory(name="q1", cluster=settings)  # no gpu at all
    await node.host(Gpu)
    waiting = [asyncio.ensure_future(node.spawn(f"Gpu/w{i}", timeout=20)) for i in range(2)]
    try:

        async def both_queued() -> bool:
            return len(node.cluster_node.info()["queued"]) == 2

        await wait_for(both_queued, timeout=10, what="two placements queued")
        started = time.monotonic()
        with pytest.raises(ClusterAtCapacity, match="max_queued"):
            await node.spawn("Gpu/third", timeout=20)
        assert time.monotonic() - started < 2.0  # refused at once, not after its 20 s
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
    with pytest.raises(ConfigurationError):
        ClusterSettings(max_queued=-1)
