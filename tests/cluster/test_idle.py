"""``Agent.idle_timeout``: a host deactivates agents left idle that long (their state stored
and their directory record released by a cluster node), never one that is running or has
messages waiting; the next message activates it again with its state. What bounds a node's
memory when callers touch many ids once (issue 9's 200,000 ids; the long fuzz's RSS)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from natsagents import Agent, action
from natsagents.errors import ActionDefinitionError
from natsagents.testing import wait_for
from tests.cluster.test_cluster_node import nodes, stored


class Visit(Agent):
    """Counts visits; forgotten from memory after 0.3 s without one."""

    idle_timeout = 0.3

    def initial_state(self) -> dict[str, Any]:
        return {"n": 0}

    @action
    async def add(self) -> int:
        self.state["n"] += 1
        return int(self.state["n"])

    @action
    async def hold(self, gate: str) -> int:
        await HELD[gate].wait()
        return int(self.state["n"])


HELD: dict[str, asyncio.Event] = {}


async def test_an_idle_agent_is_deactivated_and_comes_back_with_its_state(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=(Visit,))
    for i in range(20):  # (on a slow machine the first may be collected before the last runs)
        assert await n1.ref(f"Visit/v{i}").call("add") == 1
    await wait_for(lambda: n1.local_agents() == [], timeout=5, what="idle agents deactivated")
    assert await stored(n1, "Visit", "v3") == {"n": 1}  # stored on the way out
    records = {r.address for r in await n1.agents()}
    assert not any(a.startswith("Visit/") for a in records), records  # released from the directory
    assert n1.metrics.value("natsagents_idle_deactivations_total", {"kind": "Visit"}) == 20
    assert await n1.ref("Visit/v3").call("add") == 2  # activated again, with its state


async def test_a_running_or_waiting_agent_is_not_collected(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=(Visit,))
    HELD["g"] = asyncio.Event()
    ref = n1.ref("Visit/busy")
    running = asyncio.ensure_future(ref.call("hold", gate="g", timeout=10))
    acts = n1._host.activations

    def holding() -> bool:  # (a copy activated but collected before its first message is not it)
        act = acts.get(("Visit", "busy"))
        return act is not None and act.busy == 1

    await wait_for(holding, timeout=5, what="hold running")
    act = acts[("Visit", "busy")]
    queued = asyncio.ensure_future(ref.call("add", timeout=10))  # waits in the mailbox
    await wait_for(lambda: len(act.mailbox) == 1, timeout=5, what="a message waiting")
    # Three idle timeouts later, with a handler running: still active, nothing lost.
    host = n1._host
    assert host.idle_agents(act.idle_since + 3 * Visit.idle_timeout) == []
    sweeps = host.idle_sweeps
    await wait_for(lambda: host.idle_sweeps >= sweeps + 3, timeout=5, what="three sweeps while it runs")
    assert n1.local_agents() == ["Visit/busy"] and len(act.mailbox) == 1
    HELD["g"].set()
    assert await running == 0 and await queued == 1
    await wait_for(lambda: n1.local_agents() == [], timeout=5, what="deactivated once idle")


def test_a_permanent_kind_takes_no_idle_timeout() -> None:
    with pytest.raises(ActionDefinitionError, match="permanent"):

        class Always(Agent):
            restart = "permanent"
            idle_timeout = 5.0

    for bad in (0, -1, "1", True):
        with pytest.raises(ActionDefinitionError, match="idle_timeout"):
            type("Bad", (Agent,), {"idle_timeout": bad})


async def test_kinds_without_idle_timeout_stay(mesh_factory: Any) -> None:
    from tests.agents import Counter

    (n1,) = await nodes(mesh_factory, "n1", kinds=(Counter, Visit))
    await n1.ref("Counter/c").call("add", by=1)
    await n1.ref("Visit/v").call("add")
    await wait_for(lambda: n1.local_agents() == ["Counter/c"], timeout=5, what="only the Visit collected")
