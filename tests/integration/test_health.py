"""Health signals and throttling: a congested or slow agent sheds load with a typed
``Overloaded`` (and a cluster node restarts it when the kind asks for that)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from natsagents import Agent, ClusterSettings, Mesh, Overloaded, action
from natsagents.errors import ActionDefinitionError
from natsagents.testing import wait_for


class Busy(Agent):
    """Blocks in ``block`` until the test opens its gate; sheds load at 4 waiting."""

    mailbox_size = 100
    throttle_backlog = 4

    async def on_start(self) -> None:
        self.gate = asyncio.Event()
        self.started = 0

    @action
    async def block(self) -> int:
        self.started += 1
        await self.gate.wait()
        self.state["done"] = self.state.get("done", 0) + 1
        return int(self.state["done"])


class Sluggish(Agent):
    """Slow when asked to be; throttled above 50 ms of average handler time."""

    max_concurrency = 2
    throttle_latency = 0.05

    def initial_state(self) -> dict[str, Any]:
        return {"running": 0}

    @action
    async def work(self, seconds: float) -> float:
        self.state["running"] += 1
        try:
            await asyncio.sleep(seconds)  # the handler's own work, not synchronisation
        finally:
            self.state["running"] -= 1
        return seconds


class Restarting(Sluggish):
    kind = "Restarting"
    throttle_latency = 0.02
    unhealthy = "restart"
    unhealthy_grace = 0.2
    persistence = "none"


def rejected(mesh: Mesh, kind: str, reason: str) -> float:
    return mesh.metrics.value("natsagents_rejected_total", {"kind": kind, "reason": reason})


async def test_a_congested_agent_sheds_load_until_half_its_backlog_ran(mesh: Mesh) -> None:
    await mesh.host(Busy)
    ref = mesh.ref("Busy/b")
    first = ref.request("block")
    # The first request runs first (it activated the agent; its retry can trail a send).
    await wait_for(lambda: getattr(mesh.local_agent("Busy/b"), "started", 0) == 1, timeout=5, what="first running")
    for _ in range(4):
        await ref.send("block")  # waiting: 1, 2, 3, 4
    with pytest.raises(Overloaded) as err:
        await ref.send("block")
    assert err.value.details["reason"] == "backlog"
    assert err.value.details["retry_after"] > 0
    assert "congested" in err.value.message
    assert mesh.unhealthy_agents() == {"Busy/b": "backlog"}
    with pytest.raises(Overloaded):
        await ref.call("block", timeout=2)  # still congested: 4 > 4 // 2
    assert rejected(mesh, "Busy", "throttled_backlog") == 2
    mesh.local_agent("Busy/b").gate.set()
    assert await first == 1
    await wait_for(lambda: mesh.local_agent("Busy/b").state["done"] == 5, timeout=5, what="backlog ran")
    assert mesh.unhealthy_agents() == {}
    assert await ref.call("block") == 6  # admitted again


async def test_a_slow_agent_admits_only_what_a_free_worker_can_take(mesh: Mesh) -> None:
    await mesh.host(Sluggish)
    ref = mesh.ref("Sluggish/s")
    for _ in range(3):
        await ref.call("work", seconds=0.15)  # average 0.03, 0.054, 0.073 s
    assert mesh.unhealthy_agents() == {"Sluggish/s": "latency"}
    slow = ref.request("work", seconds=0.3)
    second = ref.request("work", seconds=0.3)  # the second worker
    await wait_for(lambda: mesh.local_agent("Sluggish/s").state["running"] == 2, timeout=5, what="both running")
    with pytest.raises(Overloaded) as err:
        await ref.call("work", seconds=0)
    assert err.value.details["reason"] == "latency"
    assert err.value.details["retry_after"] > 0
    assert await slow == 0.3 and await second == 0.3
    # Fast work brings the average back under 80 % of the limit.
    while mesh.unhealthy_agents():
        assert await ref.call("work", seconds=0) == 0
    together = [ref.request("work", seconds=0.05) for _ in range(3)]  # queued again, not refused
    assert [await f for f in together] == [0.05, 0.05, 0.05]
    assert rejected(mesh, "Sluggish", "throttled_latency") == 1


async def test_a_node_restarts_an_agent_unhealthy_past_its_grace(mesh_factory: Any) -> None:
    node = await mesh_factory(
        name="n1", cluster=ClusterSettings(node_id="n1", lease=1.5, rebalance=False, delivery=None)
    )
    await node.host(Restarting)
    ref = node.ref("Restarting/r")
    for _ in range(2):
        await ref.call("work", seconds=0.1)
    assert node.cluster_node.info()["unhealthy"] == {"Restarting/r": "latency"}
    restarts = {"kind": "Restarting", "reason": "unhealthy"}
    await wait_for(lambda: node.metrics.value("natsagents_restarts_total", restarts) >= 1, timeout=5, what="restart")
    await wait_for(lambda: node.local_agents() == ["Restarting/r"], timeout=5, what="active again")
    assert node.cluster_node.info()["unhealthy"] == {}  # a fresh activation starts healthy
    assert await ref.call("work", seconds=0) == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("throttle_backlog", 0),
        ("throttle_backlog", 2.5),
        ("throttle_latency", -1),
        ("unhealthy", "explode"),
        ("unhealthy_grace", 0),
    ],
)
def test_bad_health_options_are_refused_at_definition(option: str, value: Any) -> None:
    with pytest.raises(ActionDefinitionError, match=option):
        type("Bad", (Agent,), {option: value})
