"""``split_brain_allowed`` on one real JetStream server: concurrent versions of an eventual
agent's state meet in its record and are resolved by the kind's ``conflict_resolution``.

* a sibling stored beside a running owner's state (what a stale copy leaves) is picked up
  by the owner's watch and resolved against its live state: last-write-wins counts the
  owner's overwritten changes, a merge keeps both;
* a stale copy superseded with unstored changes stores them as a sibling instead of losing
  them; the next activation resolves it (a real proxied partition:
  ``test_split_brain_partition.py``).
"""

from __future__ import annotations

import time
from typing import Any

from natsagents import Agent, Hints, action
from natsagents.crdt import Sibling, Timestamp, VersionVector
from natsagents.state.store import StateStore
from natsagents.testing import wait_for
from natsagents.wire.ids import agent_key
from tests.cluster.takeover import claim_as_successor
from tests.cluster.test_cluster_node import node_of, nodes


class SbCounter(Agent):
    """A counter whose concurrent versions are resolved by last-write-wins."""

    kind = "SbCounter"
    consistency = "eventual"
    partition_strategy = "split_brain_allowed"
    flush_interval = 0.05

    def initial_state(self) -> dict[str, Any]:
        return {"n": 0}

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] += by
        return int(self.state["n"])

    @action(read_only=True)
    async def get(self) -> int:
        return int(self.state["n"])

    @action
    async def store(self) -> None:
        await self.save_state()


class SlowSbCounter(SbCounter):
    kind = "SlowSbCounter"
    flush_interval = 30.0  # stored only by ``store`` within a test


class SbSet(Agent):
    """A set whose concurrent versions are merged (union): nothing acknowledged is lost."""

    kind = "SbSet"
    consistency = "eventual"
    partition_strategy = "split_brain_allowed"
    conflict_resolution = "merge"
    flush_interval = 0.05

    def initial_state(self) -> dict[str, Any]:
        return {"items": []}

    @action
    async def put(self, item: str) -> int:
        self.state["items"] = sorted({*self.state["items"], item})
        return len(self.state["items"])

    @action(read_only=True)
    async def items(self) -> list[str]:
        return list(self.state["items"])

    def merge_states(self, a: Any, b: Any) -> Any:
        return {"items": sorted({*a.get("items", []), *b.get("items", [])})}


async def _record(mesh: Any, kind: str, agent_id: str) -> Any:
    entry = await node_of(mesh).state.bucket.get(agent_key(kind, agent_id), leader=True)
    return None if entry is None else StateStore.parse(entry.value, entry.revision)


async def _put_sibling(mesh: Any, kind: str, agent_id: str, sibling: Sibling[Any]) -> None:
    """What a stale copy's settle stores: the owner's record unchanged, plus a sibling."""
    cur = await _record(mesh, kind, agent_id)
    value = StateStore.with_extras(
        StateStore.encode(cur.data, cur.epoch), (), vv=cur.vv, stamp=cur.stamp, siblings=[sibling]
    )
    await node_of(mesh).state.save_encoded(kind, agent_id, value, revision=cur.revision)


def _ms() -> int:
    return time.time_ns() // 1_000_000


async def test_a_sibling_beside_a_running_owner_is_resolved_by_its_rule(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=(SbCounter, SbSet))
    client = await mesh_factory(name="client")
    counter, items = client.ref("SbCounter/x"), client.ref("SbSet/s")
    for _ in range(4):
        await counter.call("add")
    for item in "abc":
        await items.call("put", item=item)

    async def settled(kind: str, agent_id: str, data: Any) -> Any:
        async def check() -> bool:
            rec = await _record(n1, kind, agent_id)
            return rec is not None and rec.data == data and not rec.siblings

        await wait_for(check, timeout=5, what=f"{kind}/{agent_id} stored as {data}")
        return await _record(n1, kind, agent_id)

    rec = await settled("SbCounter", "x", {"n": 4})
    assert rec.vv == VersionVector({"n1": 4})  # acknowledged changes, not writes
    assert rec.stamp is not None and rec.stamp.replica == "n1"
    # A copy elsewhere went on from n = 1 with 6 changes of its own, later than ours.
    ghost = Sibling({"n": 100}, VersionVector({"n1": 1, "ghost": 6}), Timestamp(_ms() + 5_000, 0, "ghost"))
    await _put_sibling(n1, "SbCounter", "x", ghost)
    rec = await settled("SbCounter", "x", {"n": 100})
    assert rec.vv == VersionVector({"n1": 4, "ghost": 6})
    assert await counter.call("get") == 100
    conflicts = node_of(n1).conflicts
    assert conflicts.total("overwritten", "SbCounter") == 3  # the owner's changes 2..4
    assert n1.metrics.value("natsagents_state_conflicts_total", {"kind": "SbCounter", "outcome": "overwritten"}) == 3
    assert await counter.call("add") == 101  # the owner goes on from the resolved state

    await settled("SbSet", "s", {"items": ["a", "b", "c"]})
    other = Sibling({"items": ["z"]}, VersionVector({"ghost": 1}), Timestamp(_ms() + 5_000, 0, "ghost"))
    await _put_sibling(n1, "SbSet", "s", other)
    await settled("SbSet", "s", {"items": ["a", "b", "c", "z"]})
    assert await items.call("items") == ["a", "b", "c", "z"]
    assert conflicts.total("overwritten", "SbSet") == 0 and conflicts.total("resolved", "SbSet") == 1


async def test_a_superseded_copy_keeps_its_unstored_changes_as_a_sibling(mesh_factory: Any) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2", kinds=(SlowSbCounter,))
    client = await mesh_factory(name="client")
    ref = client.ref("SlowSbCounter/f")
    await client.spawn("SlowSbCounter/f", hints=Hints(pin="n1"))
    for _ in range(3):
        await ref.call("add")
    await ref.call("store")
    base = await _record(n1, "SlowSbCounter", "f")
    assert base.data == {"n": 3} and base.vv == VersionVector({"n1": 3})
    n2_stamp = node_of(n2).conflicts.hlc.now()  # n2's change, before n1's next two
    assert await ref.call("add") == 4
    assert await ref.call("add") == 5  # acknowledged by n1, not stored (flush_interval 30 s)
    # n2 takes the agent over as if n1's lease had lapsed, and writes a change of its own
    # (state first, then the directory claim n1 hears of: a fixed order for the test).
    d2 = node_of(n2)
    adopted = await d2.state.adopt("SlowSbCounter", "f", 2)
    assert adopted.vv == base.vv and adopted.stamp == base.stamp  # adoption keeps the version
    value = StateStore.with_extras(
        StateStore.encode({"n": 10}, 2), (), vv=VersionVector({"n1": 3, "n2": 1}), stamp=n2_stamp
    )
    await d2.state.save_encoded("SlowSbCounter", "f", value, revision=adopted.revision)
    claim = await claim_as_successor(d2, "SlowSbCounter", "f")
    assert claim.record.epoch == 2
    # n1 hears of it, stores its two changes beside n2's state and stops its copy.
    await wait_for(lambda: n1.local_agents() == [], timeout=5, what="stale copy stopped")
    rec = await _record(n2, "SlowSbCounter", "f")
    assert rec.data == {"n": 10} and len(rec.siblings) == 1
    assert rec.siblings[0].value == {"n": 5} and rec.siblings[0].version == VersionVector({"n1": 5})
    assert node_of(n1).conflicts.total("siblings") == 1
    assert n1.metrics.value("natsagents_state_saves_total", {"kind": "SlowSbCounter", "outcome": "lost"}) == 0
    # The next activation (at n2) resolves them: n1's changes are newer, n2's one is lost.
    assert await ref.call("get") == 5
    assert n2.local_agents() == ["SlowSbCounter/f"]
    assert node_of(n2).conflicts.total("overwritten") == 1
    assert await ref.call("add") == 6


async def test_a_sibling_the_rule_cannot_merge_falls_back_to_last_write_wins(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=(SbSet,))
    client = await mesh_factory(name="client")
    items = client.ref("SbSet/h")
    await items.call("put", item="a")
    await wait_for(lambda: _record(n1, "SbSet", "h"), timeout=5)

    async def stored_a() -> bool:
        rec = await _record(n1, "SbSet", "h")
        return rec is not None and rec.data == {"items": ["a"]}

    await wait_for(stored_a, timeout=5)
    # Anyone who may write the bucket may store this: data merge_states cannot take, older.
    hostile = Sibling("garbage", VersionVector({"ghost": 2}), Timestamp(1, 0, "ghost"))
    await _put_sibling(n1, "SbSet", "h", hostile)
    conflicts = node_of(n1).conflicts
    await wait_for(lambda: conflicts.total("resolved", "SbSet") == 1, timeout=5)
    assert conflicts.total("overwritten", "SbSet") == 2  # the older sibling lost
    assert await items.call("put", item="b") == 2  # the agent goes on with its own state
    assert await items.call("items") == ["a", "b"]


async def test_after_a_migration_the_new_owner_keeps_the_version_and_resolves(mesh_factory: Any) -> None:
    _, n2 = await nodes(mesh_factory, "n1", "n2", kinds=(SbCounter,))
    client = await mesh_factory(name="client")
    ref = client.ref("SbCounter/m")
    await client.spawn("SbCounter/m", hints=Hints(pin="n1"))
    for _ in range(3):
        await ref.call("add")
    result = await client.migrate("SbCounter/m", to="n2", strategy="state_transfer")
    assert result["moved"] and result["to"] == "n2"
    assert await ref.call("add") == 4

    async def stored_4() -> bool:
        rec = await _record(n2, "SbCounter", "m")
        return rec is not None and rec.data == {"n": 4}

    await wait_for(stored_4, timeout=5)
    rec = await _record(n2, "SbCounter", "m")
    assert rec.vv == VersionVector({"n1": 3, "n2": 1})  # n1's changes travel with the state
    ghost = Sibling({"n": 50}, VersionVector({"n1": 3, "ghost": 1}), Timestamp(_ms() + 5_000, 0, "ghost"))
    await _put_sibling(n2, "SbCounter", "m", ghost)
    await wait_for(lambda: node_of(n2).conflicts.total("resolved") == 1, timeout=5)
    assert await ref.call("get") == 50
    assert node_of(n2).conflicts.total("overwritten") == 1  # n2's one change after the move
