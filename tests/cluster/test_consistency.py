"""Consistency per kind on cluster nodes (one real JetStream server): eventual kinds answer
before their write is stored and store it within ``flush_interval``, coalesced; graceful
stops and migrations store first; a stale copy's flush is fenced off and the copy stops;
a failing store does not block the mailbox. Read-only actions store nothing, and one that
changes the state fails and is rolled back. ``exactly_once`` needs strong. The SIGKILL
window is measured in ``tests/chaos/test_eventual_kill.py``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
import pytest

from natsagents import Agent, BadRequest, ConfigurationError, HandlerError, Hints, Mesh, action
from natsagents.delivery.settings import DeliverySettings
from natsagents.testing import wait_for
from tests.cluster.test_cluster_node import node_of, nodes, settings, stored


class Tally(Agent):
    """A persisted counter whose writes are stored behind the replies."""

    kind = "Tally"
    consistency = "eventual"
    flush_interval = 0.3

    def initial_state(self) -> dict[str, Any]:
        return {"n": 0}

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] += by
        return int(self.state["n"])

    @action(read_only=True)
    async def get(self) -> int:
        return int(self.state["n"])

    @action(read_only=True)
    async def sneaky(self) -> int:
        self.state["n"] += 1000  # a read-only action must not do this
        return int(self.state["n"])

    @action
    async def fail(self) -> None:
        self.state["n"] += 500
        raise ValueError("no")


class SlowTally(Tally):
    kind = "SlowTally"
    flush_interval = 30.0  # only graceful paths store it within a test


class Strict(Tally):
    kind = "Strict"
    consistency = "strong"


KINDS = (Tally, SlowTally, Strict)


def saves(mesh: Mesh, kind: str, outcome: str = "ok") -> float:
    return mesh.metrics.value("natsagents_state_saves_total", {"kind": kind, "outcome": outcome}) or 0.0


async def test_eventual_answers_first_and_stores_within_the_interval_coalesced(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    ref = n1.ref("Tally/t")
    assert await ref.call("add") == 1
    assert await stored(n1, "Tally", "t") is None  # answered before it was stored
    for i in range(2, 51):
        assert await ref.call("add") == i
    await wait_for(lambda: _stored_n(n1, "t", 50), timeout=3, what="stored behind")
    assert saves(n1, "Tally") < 25, "writes were not coalesced"


def _stored_n(mesh: Mesh, agent_id: str, n: int, kind: str = "Tally") -> Any:
    async def check() -> bool:
        return await stored(mesh, kind, agent_id) == {"n": n}

    return check()


async def test_a_failed_action_rolls_back_to_the_last_acknowledged_state_not_the_stored_one(
    mesh_factory: Any,
) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    ref = n1.ref("SlowTally/r")
    for _ in range(3):
        await ref.call("add")
    with pytest.raises(HandlerError):
        await ref.call("fail")
    assert await ref.call("get") == 3  # acknowledged and unstored: kept
    assert await stored(n1, "SlowTally", "r") is None


async def test_graceful_stop_and_close_store_what_is_unflushed(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    for i in range(5):
        await n1.ref("SlowTally/s").call("add", by=2)
        await n1.ref(f"SlowTally/c{i}").call("add", by=i + 1)
    assert await stored(n1, "SlowTally", "s") is None
    assert await n1.deactivate("SlowTally/s")
    assert await stored(n1, "SlowTally", "s") == {"n": 10}
    reader = await mesh_factory(name="reader", cluster=settings("n9"))
    await n1.aclose()  # every agent stores first
    for i in range(5):
        assert await stored(reader, "SlowTally", f"c{i}") == {"n": i + 1}


@pytest.mark.parametrize("strategy", ["checkpoint_restore", "state_transfer"])
async def test_migration_stores_first_and_loses_nothing(mesh_factory: Any, strategy: str) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2", kinds=KINDS)
    client = await mesh_factory(name="client")
    await client.spawn("SlowTally/m", hints=Hints(pin="n1"))
    acked = 0
    stop = asyncio.Event()

    async def load() -> None:
        nonlocal acked
        while not stop.is_set():
            await client.ref("SlowTally/m").call("add", timeout=5)
            acked += 1

    worker = asyncio.ensure_future(load())
    await wait_for(lambda: acked >= 20)
    result = await client.migrate("SlowTally/m", to="n2", strategy=strategy)
    assert result["moved"]
    assert (await stored(n1, "SlowTally", "m"))["n"] >= 20  # stored by the move, not by the timer
    mark = acked
    await wait_for(lambda: acked >= mark + 20)
    stop.set()
    await worker
    assert await client.ref("SlowTally/m").call("get") == acked
    assert await n2.deactivate("SlowTally/m")
    assert await stored(n1, "SlowTally", "m") == {"n": acked}


async def test_a_stale_copys_flush_is_fenced_off_and_the_copy_stops(mesh_factory: Any) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2", kinds=KINDS)
    client = await mesh_factory(name="client")
    await client.spawn("Tally/f", hints=Hints(pin="n1"))
    assert await client.ref("Tally/f").call("add", by=10) == 10
    await wait_for(lambda: _stored_n(n1, "f", 10), timeout=3, what="first value stored")
    node1 = node_of(n1)
    node1.directory._listeners.clear()  # blind n1 to the takeover: only the CAS can stop it
    claim = await node_of(n2).directory.claim("Tally", "f", "n2", is_live=lambda node: False)
    await node_of(n2).state.adopt("Tally", "f", claim.record.epoch)
    # n1 still serves and acknowledges; its flush is refused and the copy stops.
    assert await client.ref("Tally/f").call("add", by=1) == 11
    await wait_for(lambda: n1.local_agents() == [], timeout=5, what="stale copy stopped")
    assert saves(n1, "Tally", "fenced") == 1
    assert saves(n1, "Tally", "lost") == 1  # the acknowledged change the stale copy never stored
    assert await stored(n2, "Tally", "f") == {"n": 10}  # the adopted state is intact
    assert await client.ref("Tally/f").call("add", by=1) == 11  # the new owner goes on from it


async def test_a_failing_store_does_not_block_the_mailbox(mesh_factory: Any, mesh_prefix: str, nats_url: str) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    ref = n1.ref("Tally/down")
    await ref.call("add")
    await wait_for(lambda: _stored_n(n1, "down", 1), timeout=3)
    # A real fault: the server refuses every write to the state bucket (its stream's
    # message size limit drops below a record), then accepts them again.
    nc = await nats.connect(nats_url)
    try:
        jsm = nc.jsm()
        stream = f"KV_{mesh_prefix}_state"
        config = (await jsm.stream_info(stream)).config
        config.max_msg_size = 8
        await jsm.update_stream(config)
        started = time.monotonic()
        for i in range(2, 22):
            assert await ref.call("add", timeout=2) == i
        assert time.monotonic() - started < 2.0, "calls waited for the failing store"
        await wait_for(lambda: saves(n1, "Tally", "too_large") >= 2, timeout=5, what="failed writes retried")
        assert await stored(n1, "Tally", "down") == {"n": 1}
        config.max_msg_size = -1
        await jsm.update_stream(config)
    finally:
        await nc.close()
    await wait_for(lambda: _stored_n(n1, "down", 21), timeout=15, what="stored once the store came back")
    assert n1.local_agents() == ["Tally/down"]


async def test_read_only_actions_store_nothing_and_may_not_change_state(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    ref = n1.ref("Strict/ro")
    assert await ref.call("add") == 1
    before = saves(n1, "Strict")
    assert await asyncio.gather(*(ref.call("get") for _ in range(20))) == [1] * 20
    assert saves(n1, "Strict") == before
    with pytest.raises(HandlerError, match="read-only action sneaky changed the state"):
        await ref.call("sneaky")
    assert await ref.call("get") == 1  # rolled back
    assert await stored(n1, "Strict", "ro") == {"n": 1}
    assert await ref.call("add") == 2


async def test_exactly_once_needs_strong(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS, delivery=DeliverySettings(partitions=2))
    with pytest.raises(ConfigurationError, match="needs consistency 'strong' or 'session'"):
        n1.ref(Tally, "x").with_options(delivery="exactly_once")
    # A caller that does not know the class is refused by the host, before anything runs.
    client = await mesh_factory(name="client")
    with pytest.raises(BadRequest, match="needs consistency 'strong' or 'session'"):
        await client.ref("Tally/x").with_options(delivery="exactly_once").call("add", timeout=10)
    assert await client.ref("Tally/x").with_options(delivery="at_least_once").call("add", timeout=10) == 1
    assert await n1.ref("Strict/x").with_options(delivery="exactly_once").call("add", timeout=10) == 1
