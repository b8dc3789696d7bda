"""The cluster node in one process: several cluster meshes on one real JetStream server.

Placement-directed activation, single activation, persisted state (after each action,
manual, none, custom checkpoint/restore, rollback, size limits), fencing of a stale copy,
supervision, resources and queueing, hints, migration strategies, drain, the leader and
its rebalancer. Multi-process chaos (kill -9, SIGSTOP, server loss) is in
``test_cluster_chaos.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from typing import Any

import pytest

from natsagents import (
    Agent,
    AgentNotFound,
    ClusterAtCapacity,
    ClusterSettings,
    ConfigurationError,
    HandlerError,
    Hints,
    Mesh,
    PayloadTooLarge,
    Unavailable,
    action,
)
from natsagents.cluster.node import ClusterNode
from natsagents.cluster.rebalance import plan_moves
from natsagents.testing import wait_for
from natsagents.wire import codec
from natsagents.wire.ids import agent_key
from tests.agents import Counter
from tests.cluster.takeover import claim_as_successor

LEASE = 1.5


def settings(node: str, **extra: Any) -> ClusterSettings:
    extra.setdefault("rebalance", False)
    extra.setdefault("delivery", None)  # durable delivery has its own tests (test_delivery*)
    return ClusterSettings(node_id=node, lease=LEASE, **extra)


async def nodes(
    mesh_factory: Any, *names: str, kinds: tuple[type[Agent], ...] = (Counter,), **extra: Any
) -> list[Mesh]:
    out = []
    for name in names:
        m = await mesh_factory(name=name, cluster=settings(name, **extra))
        await m.host(*kinds)
        out.append(m)
    await _see_each_other(out)
    return out


async def _see_each_other(meshes: list[Mesh]) -> None:
    names = {m.node_id for m in meshes}

    def seen() -> bool:
        for m in meshes:
            node = m.cluster_node
            assert node is not None
            members = node.membership.members()
            if not names <= set(members) or any(not members[n].kinds for n in names):  # type: ignore[index]
                return False
        return True

    await wait_for(seen, timeout=10, what="members see each other")


def node_of(mesh: Mesh) -> ClusterNode:
    assert mesh.cluster_node is not None
    return mesh.cluster_node


async def stored(mesh: Mesh, kind: str, agent_id: str) -> Any:
    entry = await node_of(mesh).state.bucket.get(agent_key(kind, agent_id))
    return None if entry is None else codec.decode(entry.value)["data"]


def owners(meshes: list[Mesh]) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in meshes:
        for address in m.local_agents():
            assert address not in out, f"{address} active on {out[address]} and {m.node_id}"
            out[address] = m.node_id or ""
    return out


# -- placement and single activation ---------------------------------------------------


async def test_on_demand_activation_is_placed_across_nodes(mesh_factory: Any) -> None:
    meshes = await nodes(mesh_factory, "n1", "n2", "n3")
    client = await mesh_factory(name="client")
    for i in range(60):
        assert await client.ref(f"Counter/c{i}").call("add", by=i) == i
    where = owners(meshes)
    assert len(where) == 60
    load = Tally(where.values())
    assert set(load) == {"n1", "n2", "n3"}
    assert max(load.values()) / (60 / 3) <= 1.25 + 1e-9, load
    records = {r.address: r for r in await client.agents()}
    assert {a: r.node for a, r in records.items()} == where  # one record per agent, naming its owner
    assert all(r.epoch >= 1 and r.status.value == "active" for r in records.values())


class Starts(Agent):
    kind = "Starts"
    started: list[str] = []

    async def on_start(self) -> None:
        Starts.started.append(self.id)
        await asyncio.sleep(0.01)  # widen the race window

    @action
    async def ping(self) -> str:
        return self.id


async def test_concurrent_first_calls_activate_once_in_the_cluster(mesh_factory: Any) -> None:
    Starts.started = []
    meshes = await nodes(mesh_factory, "n1", "n2", "n3", kinds=(Starts,))
    callers = [await mesh_factory(name=f"c{i}") for i in range(3)]
    results = await asyncio.gather(*(c.ref("Starts/one").call("ping") for c in callers for _ in range(15)))
    assert results == ["one"] * 45
    assert Starts.started == ["one"]
    assert len(owners(meshes)) == 1


async def test_spawn_from_a_node_uses_placement(mesh_factory: Any) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2")
    for i in range(20):
        await n1.spawn(f"Counter/s{i}")
    load = Tally(owners([n1, n2]).values())
    assert load["n1"] > 0 and load["n2"] > 0  # not all on the spawning node


async def test_pin_and_avoid_hints(mesh_factory: Any) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2")
    client = await mesh_factory(name="client")
    for i in range(5):
        await client.spawn(f"Counter/p{i}", hints=Hints(pin="n2"))
        await client.spawn(f"Counter/a{i}", hints=Hints(avoid=("n2",)))
    where = owners([n1, n2])
    assert all(where[f"Counter/p{i}"] == "n2" for i in range(5))
    assert all(where[f"Counter/a{i}"] == "n1" for i in range(5))
    with pytest.raises(ClusterAtCapacity) as info:
        await client.spawn("Counter/nowhere", hints=Hints(pin="n9"), queue=False)
    assert "n9" in info.value.rejected


# -- persisted state -------------------------------------------------------------------


async def test_state_survives_its_node_leaving(mesh_factory: Any) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2")
    client = await mesh_factory(name="client")
    await client.spawn("Counter/keep", hints=Hints(pin="n1"))
    for _ in range(5):
        await client.ref("Counter/keep").call("add")
    assert await stored(n1, "Counter", "keep") == {"n": 5}
    await n1.aclose()
    assert await client.ref("Counter/keep").call("add") == 6  # re-activated on n2 from the store
    assert n2.local_agents() == ["Counter/keep"]


async def test_read_only_actions_write_nothing(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1")
    ref = n1.ref("Counter/ro")
    await ref.call("add", by=2)
    saves = n1.metrics.value("natsagents_state_saves_total", {"kind": "Counter", "outcome": "ok"})
    for _ in range(5):
        assert await ref.call("get") == 2
    assert n1.metrics.value("natsagents_state_saves_total", {"kind": "Counter", "outcome": "ok"}) == saves


async def test_failed_action_rolls_state_back(mesh_factory: Any) -> None:
    class Fragile(Agent):
        kind = "Fragile"

        @action
        async def add_then_fail(self, by: int) -> None:
            self.state["n"] = self.state.get("n", 0) + by
            raise RuntimeError("after the change")

        @action
        async def add(self, by: int) -> int:
            self.state["n"] = self.state.get("n", 0) + by
            return int(self.state["n"])

    (n1,) = await nodes(mesh_factory, "n1", kinds=(Fragile,))
    ref = n1.ref("Fragile/f")
    assert await ref.call("add", by=1) == 1
    with pytest.raises(HandlerError):
        await ref.call("add_then_fail", by=100)
    assert await ref.call("add", by=1) == 2  # the failed action left no trace
    assert await stored(n1, "Fragile", "f") == {"n": 2}


async def test_oversized_state_is_refused_and_rolled_back(mesh_factory: Any) -> None:
    class Hoarder(Agent):
        kind = "Hoarder"
        max_state_bytes = 2_000

        @action
        async def put(self, blob: str) -> int:
            self.state.setdefault("blobs", []).append(blob)
            return len(self.state["blobs"])

    (n1,) = await nodes(mesh_factory, "n1", kinds=(Hoarder,))
    ref = n1.ref("Hoarder/h")
    assert await ref.call("put", blob="x" * 500) == 1
    with pytest.raises(PayloadTooLarge) as info:
        await ref.call("put", blob="y" * 5_000)
    assert info.value.details["max_size"] == 2_000
    assert await ref.call("put", blob="z") == 2  # the big blob is gone from memory too
    assert await stored(n1, "Hoarder", "h") == {"blobs": ["x" * 500, "z"]}


class Tags(Agent):
    """State that is not plain data: a set, stored as a sorted list."""

    kind = "Tags"

    def initial_state(self) -> Any:
        return set()

    def checkpoint(self) -> Any:
        return sorted(self.state)

    def restore(self, data: Any) -> None:
        self.state = set(data)

    @action
    async def tag(self, name: str) -> list[str]:
        self.state.add(name)
        return sorted(self.state)


async def test_checkpoint_and_restore_hooks(mesh_factory: Any) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2", kinds=(Tags,))
    client = await mesh_factory(name="client")
    await client.spawn("Tags/t", hints=Hints(pin="n1"))
    await client.ref("Tags/t").call("tag", name="b")
    assert await client.ref("Tags/t").call("tag", name="a") == ["a", "b"]
    assert await stored(n1, "Tags", "t") == ["a", "b"]
    await client.migrate("Tags/t", to="n2")
    assert isinstance(n2.local_agent("Tags/t").state, set)  # type: ignore[union-attr]
    assert await client.ref("Tags/t").call("tag", name="c") == ["a", "b", "c"]


async def test_manual_and_no_persistence(mesh_factory: Any) -> None:
    class Manual(Agent):
        kind = "Manual"
        persistence = "manual"

        @action
        async def add(self, save: bool = False) -> int:
            self.state["n"] = self.state.get("n", 0) + 1
            if save:
                await self.save_state()
            return int(self.state["n"])

    class Volatile(Agent):
        kind = "Volatile"
        persistence = "none"

        @action
        async def add(self) -> int:
            self.state["n"] = self.state.get("n", 0) + 1
            return int(self.state["n"])

    (n1,) = await nodes(mesh_factory, "n1", kinds=(Manual, Volatile))
    await n1.ref("Manual/m").call("add")
    assert await stored(n1, "Manual", "m") is None  # not after an action
    await n1.ref("Manual/m").call("add", save=True)
    assert await stored(n1, "Manual", "m") == {"n": 2}
    await n1.ref("Manual/m").call("add")
    await n1.deactivate("Manual/m")  # stopping saves
    assert await stored(n1, "Manual", "m") == {"n": 3}
    assert await n1.ref("Manual/m").call("add") == 4

    await n1.ref("Volatile/v").call("add")
    await n1.deactivate("Volatile/v")
    assert await stored(n1, "Volatile", "v") is None
    assert await n1.ref("Volatile/v").call("add") == 1


# -- fencing ---------------------------------------------------------------------------


async def test_a_stale_copy_is_fenced_and_stops(mesh_factory: Any) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2")
    client = await mesh_factory(name="client")
    await client.spawn("Counter/f", hints=Hints(pin="n1"))
    assert await client.ref("Counter/f").call("add", by=10) == 10
    # n2 takes the agent over as if n1's lease had lapsed (n1 keeps running: split brain).
    claim = await claim_as_successor(node_of(n2), "Counter", "f")
    assert claim.taken_over and claim.record.epoch == 2
    await node_of(n2).state.adopt("Counter", "f", claim.record.epoch)
    # n1 notices through the directory watch and stops its copy without writing.
    await wait_for(lambda: n1.local_agents() == [], timeout=5, what="stale copy stopped")
    assert n1.metrics.value("natsagents_fenced_total", {"kind": "Counter"}) == 1
    # The next call activates the agent at its new owner, from the adopted state.
    assert await client.ref("Counter/f").call("add", by=1) == 11
    assert n2.local_agents() == ["Counter/f"]
    assert await stored(n2, "Counter", "f") == {"n": 11}


async def test_a_stale_write_is_refused_and_the_call_retried(mesh_factory: Any) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2")
    client = await mesh_factory(name="client")
    await client.spawn("Counter/w", hints=Hints(pin="n1"))
    await client.ref("Counter/w").call("add", by=1)
    node1 = node_of(n1)
    node1.directory._listeners.clear()  # blind n1 to the takeover: only the CAS can stop it
    claim = await node_of(n2).directory.claim("Counter", "w", "n2", is_live=lambda node: False)
    await node_of(n2).state.adopt("Counter", "w", claim.record.epoch)
    # n1 still serves the subject; its write is fenced off, the caller retries and
    # reaches n2, which applies the increment exactly once.
    assert await client.ref("Counter/w").call("add", by=1) == 2
    await wait_for(lambda: n1.local_agents() == [], timeout=5)
    assert await stored(n2, "Counter", "w") == {"n": 2}
    assert n1.metrics.value("natsagents_state_saves_total", {"kind": "Counter", "outcome": "fenced"}) == 1


# -- supervision -----------------------------------------------------------------------


async def test_errors_restart_the_agent_until_max_restarts(mesh_factory: Any) -> None:
    class Flaky(Agent):
        kind = "Flaky"
        restart_after_errors = 2
        max_restarts = 2
        restart_window = 60.0
        starts = 0

        async def on_start(self) -> None:
            type(self).starts += 1

        @action
        async def boom(self) -> None:
            raise RuntimeError("boom")

        @action
        async def ok(self) -> int:
            return type(self).starts

    (n1,) = await nodes(mesh_factory, "n1", kinds=(Flaky,))
    ref = n1.ref("Flaky/x")
    assert await ref.call("ok") == 1
    for _ in range(2):
        with pytest.raises(HandlerError):
            await ref.call("boom")
    await wait_for(lambda: Flaky.starts == 2, what="restarted once")
    for _ in range(2):
        with pytest.raises(HandlerError):
            await ref.call("boom")
    await wait_for(lambda: Flaky.starts == 3, what="restarted twice")
    for _ in range(2):
        with pytest.raises(HandlerError):
            await ref.call("boom")
    await wait_for(lambda: n1.local_agents() == [], what="stopped after max restarts")
    with pytest.raises(Unavailable) as info:
        await ref.call("ok", timeout=2)
    assert "failed too often" in info.value.message
    assert n1.metrics.value("natsagents_restarts_total", {"kind": "Flaky", "reason": "errors"}) == 2


async def test_a_hung_handler_is_restarted(mesh_factory: Any) -> None:
    class Hangs(Agent):
        kind = "Hangs"
        handler_timeout = 0.3
        starts = 0

        async def on_start(self) -> None:
            type(self).starts += 1

        @action
        async def hang(self) -> None:
            await asyncio.sleep(3600)

        @action
        async def ping(self) -> int:
            return type(self).starts

    (n1,) = await nodes(mesh_factory, "n1", kinds=(Hangs,))
    ref = n1.ref("Hangs/h")
    await ref.send("hang")
    await wait_for(lambda: Hangs.starts == 2, timeout=5, what="hung agent restarted")
    assert await ref.call("ping") == 2
    assert n1.metrics.value("natsagents_restarts_total", {"kind": "Hangs", "reason": "hung"}) == 1


# -- resources and queueing ------------------------------------------------------------


class Gpu(Agent):
    kind = "Gpu"
    resources = {"custom": {"gpu": 1}}

    @action
    async def ping(self) -> str:
        return self.id


async def test_resources_reserve_release_and_at_capacity(mesh_factory: Any) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2", kinds=(Gpu,), capacity={"custom": {"gpu": 1}})
    client = await mesh_factory(name="client")
    await client.spawn("Gpu/a")
    await client.spawn("Gpu/b")
    assert sorted(owners([n1, n2]).values()) == ["n1", "n2"]  # one gpu each
    with pytest.raises(ClusterAtCapacity) as info:
        await client.spawn("Gpu/c", queue=False)
    assert set(info.value.rejected) == {"n1", "n2"}

    # Queued: waits, visibly, until a gpu is released.
    waiting = asyncio.ensure_future(client.spawn("Gpu/c", timeout=10))

    async def queued_somewhere() -> bool:
        infos = [await node_of(n1).request_node(n, "info", {}, 2) for n in ("n1", "n2")]
        return any("Gpu/c" in i["queued"] for i in infos)

    await wait_for(queued_somewhere, timeout=5, what="placement queued")
    holder = next(m for m in (n1, n2) if "Gpu/a" in m.local_agents())
    await holder.deactivate("Gpu/a")
    await asyncio.wait_for(waiting, 10)
    assert "Gpu/c" in holder.local_agents()
    assert node_of(holder).reserved.custom["gpu"] == 1


async def test_spawn_argument_errors(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1")
    with pytest.raises(ConfigurationError):
        await n1.spawn("Counter/x", resources={"cpu": -1})
    with pytest.raises(ConfigurationError):
        await n1.spawn("Counter/x", resources={"disk": 1})
    with pytest.raises(ConfigurationError):
        await n1.spawn("Counter/x", hints={"pin": "n1"})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        await n1.migrate("Counter/x", to="n1", strategy="teleport")


# -- migration and drain ---------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["checkpoint_restore", "state_transfer", "cold_start"])
async def test_migration_keeps_state_and_callers(mesh_factory: Any, strategy: str) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2")
    client = await mesh_factory(name="client")
    await client.spawn("Counter/m", hints=Hints(pin="n1"))
    acked = 0
    stop = asyncio.Event()

    async def load() -> None:
        nonlocal acked
        while not stop.is_set():
            await client.ref("Counter/m").call("add", timeout=5)
            acked += 1

    worker = asyncio.ensure_future(load())
    await wait_for(lambda: acked >= 20)
    result = await client.migrate("Counter/m", to="n2", strategy=strategy)
    assert result["moved"] and result["from"] == "n1" and result["to"] == "n2"
    assert 0 < result["pause_ms"] < 1000
    mark = acked
    await wait_for(lambda: acked >= mark + 20)
    stop.set()
    await worker  # raises if any call failed
    assert owners([n1, n2]) == {"Counter/m": "n2"}
    assert await client.ref("Counter/m").call("get") == acked
    rec = next(r for r in await client.agents() if r.address == "Counter/m")
    assert rec.node == "n2" and rec.epoch == 2


async def test_migration_errors(mesh_factory: Any) -> None:
    class Other(Agent):
        kind = "Other"

        @action
        async def ping(self) -> None:
            return None

    n1 = (await nodes(mesh_factory, "n1"))[0]
    n2 = (await nodes(mesh_factory, "n2", kinds=(Other,)))[0]
    await _see_each_other([n1, n2])
    await n1.ref("Counter/e").call("add")
    with pytest.raises(Unavailable):
        await n1.migrate("Counter/e", to="n2")  # n2 does not host Counter
    with pytest.raises(Unavailable):
        await n1.migrate("Counter/e", to="nobody")
    with pytest.raises(AgentNotFound):
        await n1.migrate("Counter/never", to="n2")
    assert await n1.ref("Counter/e").call("get") == 1  # still here, still whole


async def test_drain_moves_every_agent(mesh_factory: Any) -> None:
    n1, n2, n3 = await nodes(mesh_factory, "n1", "n2", "n3")
    client = await mesh_factory(name="client")
    for i in range(30):
        await client.ref(f"Counter/d{i}").call("add", by=i)
    before = owners([n1, n2, n3])
    on_n1 = [a for a, n in before.items() if n == "n1"]
    result = await client.drain("n1")
    assert result == {"node": "n1", "moved": len(on_n1), "stopped": 0}
    after = owners([n1, n2, n3])
    assert len(after) == 30 and "n1" not in after.values()
    for i in range(30):
        assert await client.ref(f"Counter/d{i}").call("get") == i
    # A draining node takes no new agents.
    for i in range(10):
        await client.ref(f"Counter/new{i}").call("add")
    assert "n1" not in owners([n1, n2, n3]).values()


# -- leader and rebalancer -------------------------------------------------------------


async def test_one_leader_and_failover_of_leadership(mesh_factory: Any) -> None:
    meshes = await nodes(mesh_factory, "n1", "n2", "n3")
    await wait_for(lambda: sum(node_of(m).is_leader for m in meshes) == 1, timeout=5)
    leader = next(m for m in meshes if node_of(m).is_leader)
    rest = [m for m in meshes if m is not leader]
    await leader.aclose()  # a leaving leader deletes its lease
    await wait_for(lambda: sum(node_of(m).is_leader for m in rest) == 1, timeout=5)


async def test_a_joining_node_receives_its_share(mesh_factory: Any) -> None:
    meshes = await nodes(mesh_factory, "n1", "n2", "n3", rebalance=True, rebalance_rate=200.0)
    client = await mesh_factory(name="client")
    total = 90
    for i in range(total):
        await client.ref(f"Counter/r{i}").call("add", by=i)
    # The leader may still even out the first three nodes; take the layout it keeps.
    three = {"n1": 1.0, "n2": 1.0, "n3": 1.0}

    def settled() -> bool:  # no move under way, every agent active, nothing left to move
        layout = owners(meshes)
        idle = all(node_of(m).moves_in_flight == 0 for m in meshes)
        return idle and len(layout) == total and not plan_moves(layout, three)

    await wait_for(settled, timeout=10, what="three nodes settled")
    before = owners(meshes)
    newcomer = (await nodes(mesh_factory, "n4", rebalance=True, rebalance_rate=200.0))[0]
    meshes.append(newcomer)

    def balanced() -> bool:
        load = Tally(owners(meshes).values())
        return len(load) == 4 and max(load.values()) / (total / 4) <= 1.25 and load["n4"] >= total / 4 - 2

    await wait_for(balanced, timeout=20, interval=0.05, what="rebalanced")
    after = owners(meshes)
    moved = [a for a in after if after[a] != before[a]]
    assert 0.5 * total / 4 <= len(moved) <= 1.5 * total / 4
    assert all(after[a] == "n4" for a in moved), [(a, before[a], after[a]) for a in moved]  # only to the newcomer
    for i in range(total):
        assert await client.ref(f"Counter/r{i}").call("get") == i


# -- bad input on the cluster subjects --------------------------------------------------


async def test_malformed_control_and_activation_requests_get_bad_request(mesh_factory: Any, mesh_prefix: str) -> None:
    from natsagents.errors import BadRequest, Unauthorized
    from natsagents.wire import envelope

    (n1,) = await nodes(mesh_factory, "n1")
    node = node_of(n1)
    transport = n1.transport

    async def raw(subject: str, data: bytes) -> Any:
        msg = await transport.request(subject, data, timeout=5)
        return envelope.parse_reply(msg.headers, msg.data)

    for op in ("migrate", "bogus"):
        with pytest.raises(BadRequest):
            await raw(f"{mesh_prefix}.node.n1.{op}", b"\xc1")  # not msgpack
    for op in ("adopt", "activate"):  # node-to-node only: unsigned, refused before the body is read
        with pytest.raises(Unauthorized, match="cluster nodes only"):
            await raw(f"{mesh_prefix}.node.n1.{op}", b"\xc1")
    bad_bodies: list[tuple[str, Any]] = [
        ("migrate", {"kind": "Counter"}),
        ("migrate", ["not", "a", "map"]),
        ("adopt", {"kind": "Counter", "id": "x", "transfer": "nope"}),
        ("adopt", {"kind": "no such kind!", "id": "x"}),
        ("activate", {"kind": "Counter", "id": 5}),
        ("activate", {"kind": "Counter", "id": "x", "needs": {"cpu": "lots"}}),
        ("activate", {"kind": "Counter", "id": "x", "hints": {"pin": 3}}),
        ("activate", {"kind": "Counter", "id": "x", "deadline": "soon"}),
        ("bogus", {}),
    ]
    for op, body in bad_bodies:
        with pytest.raises(BadRequest):
            await node.request_node("n1", op, body, 5)
    for body in ({"id": "x", "needs": {"disk": 1}}, {"id": "x", "hints": []}, {"id": "x", "queue": "no"}):
        with pytest.raises(BadRequest):
            await raw(f"{mesh_prefix}.activate.Counter", codec.encode(body))
    # Nothing was activated or claimed by any of it, and the node still works.
    assert n1.local_agents() == []
    assert await n1.agents() == []
    assert await n1.ref("Counter/ok").call("add") == 1


async def test_spawning_a_kind_no_node_serves_is_unavailable(mesh_factory: Any) -> None:
    (n1,) = await nodes(mesh_factory, "n1")
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await n1.spawn("Nobody/x", timeout=5)
    assert "no node serves" in info.value.message
    assert time.monotonic() - started < 1  # at once, not after queueing to the deadline


async def test_concurrent_placements_keep_the_load_bound(mesh_factory: Any) -> None:
    meshes = await nodes(mesh_factory, "n1", "n2", "n3")
    clients = [await mesh_factory(name=f"c{i}") for i in range(3)]
    # 90 first calls at once through three callers: activation requests land on all three
    # nodes, which place concurrently from views that lag each other's placements.
    await asyncio.gather(*(clients[i % 3].ref(f"Counter/b{i}").call("add", timeout=10) for i in range(90)))
    load = Tally(owners(meshes).values())
    assert sum(load.values()) == 90
    assert max(load.values()) <= 38, load  # ceil(1.25 x 90 / 3) = 38


async def test_a_placed_activation_over_the_load_bound_is_refused(mesh_factory: Any) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2")
    for i in range(10):
        await n1.spawn(f"Counter/pinned{i}", hints=Hints(pin="n1"))  # pins ignore the bound
    await wait_for(lambda: node_of(n2).directory.count_on("n1") == 10, what="n2's directory view")
    body = {"kind": "Counter", "id": "extra", "placed": True}
    # From a placer's stale view n1 looked fine; n1 knows better: ceil(1.25 x 11 / 2) = 7 < 10.
    with pytest.raises(ClusterAtCapacity) as info:
        await node_of(n2).request_node("n1", "activate", body, 5)
    assert "load bound" in info.value.rejected["n1"]
    # The owner path (no "placed") is never refused for load, and placement goes to n2.
    assert await node_of(n2).request_node("n1", "activate", {"kind": "Counter", "id": "extra"}, 5) == {"node": "n1"}
    await n2.spawn("Counter/next")
    assert "Counter/next" in n2.local_agents()


async def test_a_takeover_of_an_agent_that_never_saved_starts_from_its_initial_state(mesh_factory: Any) -> None:
    n1, n2 = await nodes(mesh_factory, "n1", "n2")
    client = await mesh_factory(name="client")
    await client.spawn("Counter/fresh", hints=Hints(pin="n1"))
    assert await client.ref("Counter/fresh").call("get") == 0  # active on n1, nothing saved
    # n2 takes it over as if n1 had died; the adoption fences a state that never existed.
    claim = await claim_as_successor(node_of(n2), "Counter", "fresh")
    adopted = await node_of(n2).state.adopt("Counter", "fresh", claim.record.epoch)
    assert adopted.empty and adopted.revision > 0
    await wait_for(lambda: n1.local_agents() == [], timeout=5, what="stale copy stopped")
    assert await client.ref("Counter/fresh").call("add", by=2) == 2  # not restored from None
    stored = await node_of(n2).state.load("Counter", "fresh")
    assert not stored.empty and stored.data == {"n": 2}


async def test_a_leader_whose_task_fails_steps_down_and_tries_again(mesh_factory: Any) -> None:
    from natsagents.cluster.leader import LeaderLease

    n1 = (await nodes(mesh_factory, "n1"))[0]
    control = node_of(n1).control
    runs: list[int] = []

    async def lead() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("setup failed")
        await asyncio.Event().wait()

    lease = LeaderLease(control, "flaky-role", "n1", ttl=1.0, interval=0.1, lead=lead)
    lease.start()
    try:
        await wait_for(lambda: len(runs) >= 2 and lease.is_leader, timeout=10, what="led again")
    finally:
        await lease.stop()


async def test_the_placement_view_follows_each_heartbeats_reservations(mesh_factory: Any) -> None:
    """Another node's capacity and reservations are parsed once per heartbeat record
    (``Roster``), so a reservation made or given back there shows in this node's placement
    view with its next heartbeat, not only the first one seen."""
    n1, n2 = await nodes(mesh_factory, "n1", "n2", kinds=(Gpu,), capacity={"custom": {"gpu": 1}})
    await n1.spawn("Gpu/mine")
    holder, other = (n1, n2) if "Gpu/mine" in n1.local_agents() else (n2, n1)
    roster = node_of(other)._roster

    def gpus_of_holder() -> float:
        info = next(i for i in roster.nodes() if i.node_id == holder.name)
        assert info.capacity.custom["gpu"] == 1
        return info.reserved.custom.get("gpu", 0)

    await wait_for(lambda: gpus_of_holder() == 1, timeout=5, what="the reservation seen by the other node")
    await holder.deactivate("Gpu/mine")
    await wait_for(lambda: gpus_of_holder() == 0, timeout=5, what="the release seen by the other node")
