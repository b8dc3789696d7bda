"""``consistency = "crdt"`` on cluster nodes (one real JetStream server): several nodes hold a
copy of one agent at once; each answers at once, ships its deltas over core NATS and merges
into the state record; copies converge; a node started later catches up from the record; a
stopping copy merges first; hostile bytes on the delta subject are dropped and counted; an
``exactly_once`` call is refused. The real partition is in ``test_crdt_partition.py``."""

from __future__ import annotations

import os
from collections import Counter as Served
from typing import Any

import nats
import pytest

from natsagents import Agent, BadRequest, ConfigurationError, HandlerError, Hints, Mesh, action
from natsagents.crdt import GCounter, ORMap, ORSet, PNCounter
from natsagents.delivery.settings import DeliverySettings
from natsagents.testing import wait_for
from natsagents.wire import codec
from natsagents.wire.ids import agent_key
from natsagents.wire.subjects import crdt_subject
from tests.cluster.test_cluster_node import node_of, nodes


class Views(Agent):
    """A counter every node may hold a copy of."""

    kind = "Views"
    consistency = "crdt"
    flush_interval = 0.05
    served: Served[str] = Served()

    def initial_state(self) -> PNCounter:
        return PNCounter()

    @action
    async def add(self, by: int = 1) -> int:
        Views.served[self.replica.split(":")[0]] += 1
        return int(self.mutate(self.state.increment(self.replica, by)).value)

    @action(read_only=True)
    async def get(self) -> int:
        return int(self.state.value)

    @action(read_only=True)
    async def sneaky(self) -> int:
        return int(self.mutate(self.state.increment(self.replica, 1000)).value)

    @action
    async def fail(self) -> None:
        self.mutate(self.state.increment(self.replica, 500))
        raise ValueError("no")


class Cart(Agent):
    """An add-wins set."""

    kind = "Cart"
    consistency = "crdt"
    flush_interval = 0.05

    def initial_state(self) -> ORSet:
        return ORSet()

    @action
    async def put(self, item: str) -> None:
        self.mutate(self.state.add(self.replica, item))

    @action
    async def drop(self, item: str) -> None:
        self.mutate(self.state.remove(item))

    @action(read_only=True)
    async def items(self) -> list[str]:
        return sorted(str(x) for x in self.state.value)


class Slow(Views):
    kind = "Slow"
    flush_interval = 30.0  # only a stop merges it within a test


class Tags(Agent):
    kind = "Tags"
    consistency = "crdt"

    def initial_state(self) -> ORMap[ORSet]:
        return ORMap(ORSet)

    @action
    async def tag(self, key: str, tag: str) -> None:
        self.mutate(self.state.update(self.replica, key, lambda s: s.add(self.replica, tag)))


KINDS = (Views, Cart, Slow, Tags)


def copy_state(mesh: Mesh, kind: str, agent_id: str) -> Any:
    agent = mesh._host.agent_instance(kind, agent_id)
    return None if agent is None else agent.state


def value_on(mesh: Mesh, kind: str, agent_id: str) -> Any:
    state = copy_state(mesh, kind, agent_id)
    return None if state is None else state.value


async def record(mesh: Mesh, kind: str, cls: Any, agent_id: str) -> Any:
    entry = await node_of(mesh).state.bucket.get(agent_key(kind, agent_id))
    if entry is None:
        return None
    try:
        return cls.from_wire(codec.decode(entry.value)["data"]).value
    except (ValueError, KeyError, TypeError):
        return "not a record"


async def record_is(mesh: Mesh, kind: str, cls: Any, agent_id: str, want: Any) -> bool:
    return await record(mesh, kind, cls, agent_id) == want


async def test_two_copies_take_writes_and_converge_and_a_late_node_catches_up(mesh_factory: Any) -> None:
    Views.served.clear()
    n1, n2 = await nodes(mesh_factory, "n1", "n2", kinds=KINDS)
    client = await mesh_factory(name="client")
    ref = client.ref("Views/v")
    assert await ref.call("add", by=1) == 1
    # The other node follows the first delta: both hold a copy, both serve calls.
    await wait_for(lambda: value_on(n1, "Views", "v") == value_on(n2, "Views", "v") == 1, what="two copies")
    for _ in range(60):
        await ref.call("add", by=2)
    total = 121
    await wait_for(lambda: value_on(n1, "Views", "v") == value_on(n2, "Views", "v") == total, what="converged")
    print(f"\ncalls served per node {dict(Views.served)}")
    assert set(Views.served) == {"n1", "n2"}  # both copies took writes
    assert n1.local_agents() == n2.local_agents() == ["Views/v"]
    assert await client.agents() == []  # no directory record: nobody owns a crdt agent
    await wait_for(lambda: record_is(n1, "Views", PNCounter, "v", total), what="record merged")
    # A node started later catches up from the record (no delta reaches it).
    (n3,) = await nodes(mesh_factory, "n3", kinds=KINDS)
    await n3.spawn("Views", "v", hints=Hints(pin="n3"))
    assert value_on(n3, "Views", "v") == total
    # ... and follows the next writes like the others.
    await ref.call("add", by=1)
    await wait_for(lambda: {value_on(m, "Views", "v") for m in (n1, n2, n3)} == {total + 1}, what="three copies")
    assert n1.metrics.value("natsagents_crdt_deltas_total", {"kind": "Views", "outcome": "sent"}) > 0


async def test_an_orset_converges_with_adds_and_removes_from_both_copies(mesh_factory: Any) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2", kinds=KINDS)
    client = await mesh_factory(name="client")
    ref = client.ref("Cart/c")
    for i in range(40):
        await ref.call("put", item=f"i{i}")
    for i in range(0, 40, 4):
        await ref.call("drop", item=f"i{i}")
    want = sorted(f"i{i}" for i in range(40) if i % 4)
    await wait_for(
        lambda: value_on(n1, "Cart", "c") == value_on(n2, "Cart", "c") == frozenset(want), what="sets converged"
    )
    assert await ref.call("items") == want
    await wait_for(lambda: record_is(n2, "Cart", ORSet, "c", frozenset(want)), what="record merged")


async def test_a_stopping_copy_merges_into_the_record_first(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    ref = n1.ref("Slow/s")
    for _ in range(5):
        await ref.call("add")
    assert await record(n1, "Slow", PNCounter, "s") is None  # flush_interval 30 s: not yet
    assert await n1.deactivate("Slow", "s")
    assert await record(n1, "Slow", PNCounter, "s") == 5
    assert await ref.call("add") == 6  # a new copy starts from the record


async def test_failed_and_read_only_actions_roll_back(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    ref = n1.ref("Views/r")
    assert await ref.call("add", by=3) == 3
    with pytest.raises(HandlerError):
        await ref.call("fail")
    with pytest.raises(HandlerError, match="read-only action sneaky changed the state"):
        await ref.call("sneaky")
    assert await ref.call("get") == 3
    assert await ref.call("add") == 4


async def test_hostile_delta_bytes_are_dropped_and_counted(mesh_factory: Any, nats_url: str, mesh_prefix: str) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2", kinds=KINDS)
    ref = n1.ref("Views/h")
    await ref.call("add", by=7)
    tags = n1.ref("Tags/t")
    await tags.call("tag", key="k", tag="x")
    await wait_for(lambda: value_on(n1, "Views", "h") == value_on(n2, "Views", "h") == 7, what="two copies")
    await wait_for(lambda: value_on(n2, "Tags", "t") is not None, what="two tag copies")
    raw = await nats.connect(nats_url)
    try:
        subject = crdt_subject(mesh_prefix, "Views", "h")
        huge = os.urandom(min(raw.max_payload, 1 << 20) - 4096)
        bad = [
            b"",
            b"\xc1",  # never valid msgpack
            b"garbage that is not msgpack at all",
            codec.encode({"t": "pn", "v": 1, "p": {"x": -5}}),  # a negative count
            codec.encode([1, 2, 3]),
            GCounter().increment("x", 5).state.to_wire(),  # another type
            codec.encode({"t": "pn", "v": 99, "p": {}, "n": {}}),  # unknown version
            huge,
        ]
        for data in bad:
            await raw.publish(subject, data)
        # An ORMap of another value type: decodes, does not merge.
        wrong = ORMap(GCounter).update("x", "k", lambda c: c.increment("x", 1)).state.to_wire()
        await raw.publish(crdt_subject(mesh_prefix, "Tags", "t"), wrong)
        # A token that is not one: dropped before anything is activated.
        await raw.publish(f"{mesh_prefix}.crdt.Views.%%%", PNCounter().increment("x", 1).state.to_wire())
        await raw.flush()
        drops = len(bad) + 2

        def dropped() -> float:
            return sum(
                m.metrics.value("natsagents_crdt_deltas_total", {"kind": k, "outcome": "dropped"}) or 0
                for m in (n1, n2)
                for k in ("Views", "Tags")
            )

        await wait_for(lambda: dropped() >= 2 * drops - 1, what=f"dropped {dropped()}")
    finally:
        await raw.close()
    assert value_on(n1, "Views", "h") == value_on(n2, "Views", "h") == 7  # unchanged
    assert await ref.call("add") == 8  # still working
    assert value_on(n2, "Tags", "t") == {"k": frozenset({"x"})}
    print(f"\ndropped {dropped()} hostile deltas")


async def test_exactly_once_to_a_crdt_kind_is_refused(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS, delivery=DeliverySettings(partitions=2))
    with pytest.raises(ConfigurationError, match="needs consistency 'strong' or 'session'"):
        n1.ref(Views, "x").with_options(delivery="exactly_once")
    client = await mesh_factory(name="client")
    with pytest.raises(BadRequest, match="needs consistency 'strong' or 'session'"):
        await client.ref("Views/x").with_options(delivery="exactly_once").call("add", timeout=10)
    assert await client.ref("Views/x").with_options(delivery="at_least_once").call("add", timeout=10) == 1


async def test_a_garbage_record_is_ignored_and_overwritten_by_the_next_merge(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    bucket = node_of(n1).state.bucket
    await bucket.put(agent_key("Views", "g"), b"\xc1 not a record")
    ref = n1.ref("Views/g")
    assert await ref.call("add", by=2) == 2  # started from the initial state
    await wait_for(lambda: record_is(n1, "Views", PNCounter, "g", 2), what="record overwritten")
    await bucket.put(agent_key("Views", "g"), codec.encode({"epoch": 0, "data": b"\x00garbage"}))
    assert await ref.call("add") == 3  # the watch dropped it; the copy is unchanged
    await wait_for(lambda: record_is(n1, "Views", PNCounter, "g", 3), what="record merged again")
    assert n1.metrics.value("natsagents_crdt_merges_total", {"kind": "Views", "outcome": "dropped"}) >= 1


async def test_directory_records_under_a_crdt_agents_key_are_ignored(
    mesh_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A crdt agent has no directory record; one written under its key (garbage, deleted,
    a well-formed record naming another node) is ignored. The directory listener read the
    copy as an owned one: ``AttributeError: 'CrdtCopy' object has no attribute 'claim'``,
    logged as "directory listener failed" for each (491 times in a 100k fuzz)."""
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    assert await n1.ref("Views/dir").call("add", by=2) == 2
    directory = node_of(n1).directory
    key = agent_key("Views", "dir")
    caplog.set_level("WARNING", logger="natsagents.cluster.directory")
    await directory.bucket.put(key, b"\xc1")
    await directory.bucket.delete(key)
    forged = {"kind": "Views", "id": "dir", "node": "ghost", "epoch": 7, "status": "active", "since": 1.0}
    await directory.bucket.put(key, codec.encode(forged))
    await wait_for(
        lambda: (c := directory.lookup_claim("Views", "dir")) is not None and c.record.node == "ghost",
        what="the forged record seen",
    )
    failed = [r for r in caplog.records if "listener failed" in r.getMessage()]
    assert not failed, failed[0].exc_info
    assert await n1.ref("Views/dir").call("add", by=1) == 3
