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


async def test_a_full_cluster_node_sends_the_agent_to_another(mesh_factory: Any) -> None:
    def node(name: str, **options: Any) -> Any:
        # A loose load bound: placement does not know n1's agent limit, and the bounded-load
        # rule alone would keep n2 from taking the agents n1 refuses (a known limit).
        settings = ClusterSettings(node_id=name, lease=1.5, rebalance=False, delivery=None, load_factor=10.0)
        return mesh_factory(name=name, cluster=settings, **options)

    n1: Mesh = await node("n1", max_agents=2)
    await n1.host(Counter)
    n2: Mesh = await node("n2")
    await n2.host(Counter)

    async def both_live() -> bool:
        return sum(status.live for status in await n1.nodes()) == 2

    await wait_for(both_live, timeout=10, what="n1 sees n2")
    for i in range(8):
        assert await n1.ref(f"Counter/k{i}").call("add") == 1
    assert len(n1.local_agents()) <= 2
    assert len(n1.local_agents()) + len(n2.local_agents()) == 8


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
