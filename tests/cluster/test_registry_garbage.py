"""A hostile peer with write access to the control buckets (security findings 3 and 11).

Every forged record is written the way the attacker did it: raw KV puts (no TTL) through
the ``Bucket`` API, or raw requests with nats-py. The cluster (two nodes in this process
on one real JetStream server) must keep working and recover by itself within a bounded
time: a phantom member lapses, a directory record of a phantom owner is an orphan, lease
keys nobody renews are taken over, garbage of every registry key type is ignored, and
every activation request gets exactly one answer.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import msgpack
import nats
import pytest

from natsagents import Agent, CallTimeout, ClusterSettings, Mesh, Unavailable, action
from natsagents.cluster.leader import LeaderLease
from natsagents.cluster.node import ClusterNode
from natsagents.delivery.settings import DeliverySettings
from natsagents.testing import wait_for
from natsagents.transport.kv import Bucket, open_bucket
from natsagents.wire import envelope
from natsagents.wire.ids import agent_key
from natsagents.wire.owner import owner_mac
from natsagents.wire.subjects import activate_subject, agent_subject, bucket_name, node_subject
from tests.agents import Counter, Keeper

LEASE = 1.5
PARTITIONS = 4
FAST = DeliverySettings(partitions=PARTITIONS, max_deliver=3, backoff=(0.02,), ack_wait=5.0, attempt_timeout=5.0)
KINDS = ["Counter", "Keeper", "Ledger"]


class Ledger(Agent):
    """Counts the exactly-once messages it applied."""

    def initial_state(self) -> dict[str, Any]:
        return {"items": []}

    @action
    async def add(self, value: int) -> int:
        self.state["items"].append(value)
        return len(self.state["items"])

    @action
    async def get(self) -> list[int]:
        return list(self.state["items"])


def settings(node: str, *, rebalance: bool = False) -> ClusterSettings:
    return ClusterSettings(node_id=node, lease=LEASE, rebalance=rebalance, delivery=FAST)


def node_of(mesh: Mesh) -> ClusterNode:
    assert mesh.cluster_node is not None
    return mesh.cluster_node


async def start_nodes(mesh_factory: Any, *names: str, rebalance: bool = False) -> list[Mesh]:
    meshes = []
    for name in names:
        m = await mesh_factory(name=name, cluster=settings(name, rebalance=rebalance))
        await m.host(Counter, Keeper, Ledger)
        meshes.append(m)

    def seen() -> bool:
        for m in meshes:
            members = node_of(m).membership.members()
            if not set(names) <= set(members) or any(not members[n].kinds for n in names):
                return False
        return True

    await wait_for(seen, timeout=10, what="members see each other")
    return meshes


async def bucket(mesh: Mesh, prefix: str, name: str) -> Bucket:
    return await open_bucket(mesh.transport, bucket_name(prefix, name), history=1)


async def forge(mesh: Mesh, prefix: str, name: str, key: str, value: Any) -> int:
    """Write ``value`` (msgpack-encoded unless bytes) under ``key``: a plain put, no TTL."""
    raw = value if isinstance(value, bytes) else msgpack.packb(value)
    return await (await bucket(mesh, prefix, name)).put(key, raw)


def phantom(node: str = "ghost", /, **changes: Any) -> dict[str, Any]:
    """A membership record of a node that does not exist, claiming a huge lease."""
    now = time.time()
    record: dict[str, Any] = {
        "node": node,
        "kinds": KINDS,
        "capacity": {},
        "load": {"agents": 0, "mailbox_backlog": 0, "cpu": 0.0, "memory": 0.0, "network": 0.0},
        "tags": [],
        "version": "0",
        "started_at": now,
        "heartbeat_at": now,
        "lease": 1e9,
        "draining": False,
        "weight": 1.0,
    }
    record.update(changes)
    return record


async def activations_work(client: Mesh, tag: str, count: int = 30, timeout: float = 15.0) -> float:
    """``count`` new activations (first calls), all answered; returns the seconds taken."""
    started = time.monotonic()
    values = await asyncio.gather(
        *(client.ref(f"Counter/{tag}{i}").call("add", by=i + 1, timeout=timeout) for i in range(count))
    )
    assert values == [i + 1 for i in range(count)]
    return time.monotonic() - started


async def exactly_once_works(client: Mesh, tag: str, count: int = 32, timeout: float = 20.0) -> float:
    """``count`` exactly-once sends to 8 agents, then polls until every one is applied
    exactly once; returns the seconds taken."""
    started = time.monotonic()
    messages = [(f"Ledger/{tag}{i % 8}", "add", {"value": i}) for i in range(count)]
    assert await client.send_many(messages, delivery="exactly_once", timeout=timeout) == [None] * count

    async def applied() -> bool:
        items: list[int] = []
        for k in range(8):
            items += await client.ref(f"Ledger/{tag}{k}").call("get", timeout=timeout)
        assert len(items) == len(set(items)), "a message was applied twice"
        return sorted(items) == list(range(count))

    await wait_for(applied, timeout=timeout, interval=0.1, what=f"{count} exactly-once sends applied")
    return time.monotonic() - started


# -- finding 3: forged membership, directory and lease records ---------------------------


async def test_a_phantom_member_with_a_huge_lease_lapses_and_work_goes_on(mesh_factory: Any, mesh_prefix: str) -> None:
    n1, n2 = await start_nodes(mesh_factory, "n1", "n2")
    client = await mesh_factory(name="client")
    forged = time.monotonic()
    await forge(client, mesh_prefix, "members", "ghost", phantom(heartbeat_at=time.time() + 1e6))
    for m in (n1, n2):
        await wait_for(lambda m=m: "ghost" in node_of(m).membership._records, what="forgery seen")  # type: ignore[misc]

    async def lapse(m: Mesh) -> float:
        # Never trusted for longer than twice our own lease, whatever it claims.
        await wait_for(lambda: not node_of(m).membership.is_live("ghost"), timeout=2 * LEASE + 2, what="lapse")
        return time.monotonic() - forged

    # While the phantom still counts: 30 new activations and 32 exactly-once sends.
    lapses, took, applied = await asyncio.gather(
        asyncio.gather(*(lapse(m) for m in (n1, n2))), activations_work(client, "a"), exactly_once_works(client, "e")
    )
    print(
        f"phantom lapsed after {max(lapses):.2f} s; 30 activations took {took:.2f} s, "
        f"32 exactly-once sends were all applied after {applied:.2f} s"
    )
    assert max(lapses) <= 2 * LEASE + 1


async def test_a_phantom_member_present_at_start_is_not_trusted_for_long(mesh_factory: Any, mesh_prefix: str) -> None:
    client = await mesh_factory(name="client")
    # Written long "ago" by its own claim; stored now; then nodes start and read it first.
    await forge(client, mesh_prefix, "members", "ghost", phantom(heartbeat_at=time.time() + 1e6))
    started = time.monotonic()
    n1, n2 = await start_nodes(mesh_factory, "n1", "n2")
    for m in (n1, n2):
        await wait_for(lambda m=m: not node_of(m).membership.is_live("ghost"), timeout=2 * LEASE + 1, what="lapse")  # type: ignore[misc]
    print(f"phantom present at start lapsed {time.monotonic() - started:.2f} s after the nodes started")
    await activations_work(client, "s", count=10)
    await exactly_once_works(client, "t", count=16)


async def test_a_directory_record_of_a_phantom_owner_is_an_orphan(mesh_factory: Any, mesh_prefix: str) -> None:
    await start_nodes(mesh_factory, "n1", "n2")
    client = await mesh_factory(name="client")
    forged = time.monotonic()
    await forge(client, mesh_prefix, "members", "ghost", phantom())
    record = {"kind": "Counter", "id": "victim", "node": "ghost", "epoch": 7, "status": "active", "since": time.time()}
    await forge(client, mesh_prefix, "directory", agent_key("Counter", "victim"), record)
    # An owner that is no member at all, and garbage bytes: orphans at once.
    await forge(
        client, mesh_prefix, "directory", agent_key("Counter", "nobody"), {**record, "id": "nobody", "node": "gone"}
    )
    await forge(client, mesh_prefix, "directory", agent_key("Counter", "junk"), b"\xc1\xff garbage")
    assert await client.ref("Counter/nobody").call("add", timeout=10) == 1
    assert await client.ref("Counter/junk").call("add", timeout=10) == 1
    assert await client.ref("Counter/victim").call("add", timeout=10) == 1
    took = time.monotonic() - forged
    print(f"agent of the phantom owner answered {took:.2f} s after the forgery")
    assert took <= 2 * LEASE + 3
    owners = {r.address: r.node for r in await client.agents()}
    assert {owners["Counter/victim"], owners["Counter/nobody"], owners["Counter/junk"]} <= {"n1", "n2"}
    await activations_work(client, "d", count=10)


async def test_forged_partition_leases_without_ttl_are_taken_over(mesh_factory: Any, mesh_prefix: str) -> None:
    client = await mesh_factory(name="client")
    control = await bucket(client, mesh_prefix, "control")
    # 16 forged lease keys, no TTL: a plausible holder, a live node's id, garbage, nothing.
    values: list[Any] = ["ghost", "n1", "n2", b"\x00\xff", 12, None, {"node": "n1"}, "x" * 500]
    for p in range(16):
        value = values[p % len(values)]
        await control.put(f"partition.{p}", value if isinstance(value, bytes) else msgpack.packb(value))
    started = time.monotonic()
    n1, n2 = await start_nodes(mesh_factory, "n1", "n2")
    took = await exactly_once_works(client, "p", count=20)
    owned = node_of(n1)
    owners = [m._owners for m in (n1, n2)]
    assert all(o is not None for o in owners)
    await wait_for(
        lambda: sorted(owners[0].owned() + owners[1].owned()) == list(range(PARTITIONS)),  # type: ignore[union-attr]
        timeout=2 * LEASE + 2,
        what="every partition owned",
    )
    print(f"20 exactly-once sends applied {took:.2f} s after the send, {time.monotonic() - started:.2f} s after start")
    assert owned is not None


async def test_a_garbage_rebalancer_key_does_not_stop_the_election(mesh_factory: Any, mesh_prefix: str) -> None:
    client = await mesh_factory(name="client")
    await forge(client, mesh_prefix, "control", "rebalancer", b"\x93garbage")
    # A permanent agent whose owner is gone: only the leader re-places it.
    record = {
        "kind": "Keeper",
        "id": "orphan",
        "node": "gone",
        "epoch": 3,
        "status": "active",
        "since": time.time(),
        "restart": "permanent",
    }
    await forge(client, mesh_prefix, "directory", agent_key("Keeper", "orphan"), record)
    started = time.monotonic()
    n1, n2 = await start_nodes(mesh_factory, "n1", "n2", rebalance=True)
    meshes = (n1, n2)
    await wait_for(lambda: any(node_of(m).is_leader for m in meshes), timeout=2 * LEASE + 2, what="a leader")
    elected = time.monotonic() - started
    await wait_for(
        lambda: any("Keeper/orphan" in m.local_agents() for m in meshes), timeout=2 * LEASE + 3, what="orphan re-placed"
    )
    replaced = time.monotonic() - started
    print(f"leader elected {elected:.2f} s, orphan re-placed {replaced:.2f} s after the nodes started")
    assert sum(node_of(m).is_leader for m in meshes) == 1


async def test_a_dead_lease_key_is_taken_over_by_exactly_one_candidate(mesh_factory: Any, mesh_prefix: str) -> None:
    client = await mesh_factory(name="client")
    control = await bucket(client, mesh_prefix, "control")
    await control.put("role", b"\xc1 not a lease")  # garbage, no TTL
    leading: set[str] = set()
    most = 0

    def lead_as(node: str) -> Any:
        async def lead() -> None:
            nonlocal most
            leading.add(node)
            most = max(most, len(leading))
            try:
                await asyncio.Event().wait()
            finally:
                leading.discard(node)

        return lead

    leases = [LeaderLease(control, "role", f"c{i}", ttl=1.0, interval=0.1, lead=lead_as(f"c{i}")) for i in range(3)]
    started = time.monotonic()
    for lease in leases:
        lease.start()
    try:
        await wait_for(lambda: len(leading) == 1, timeout=5, what="one leader")
        first = time.monotonic() - started
        (holder,) = leading
        # Overwrite the leader's key with garbage: it must step down (its renewal
        # conflicts) before any candidate judges the new revision dead and takes over.
        await control.put("role", msgpack.packb({"node": holder}))
        await wait_for(lambda: holder not in leading, timeout=2, what="the overwritten leader stepped down")
        stepped = time.monotonic()
        await wait_for(lambda: len(leading) == 1, timeout=5, what="a new leader")
        again = time.monotonic() - stepped
        print(f"dead lease taken over after {first:.2f} s; after an overwrite, a leader again {again:.2f} s later")
        assert most == 1
        assert sum(lease.is_leader for lease in leases) == 1
    finally:
        for lease in leases:
            await lease.stop()


# -- garbage of every registry key type ----------------------------------------------------

GARBAGE: list[Any] = [
    b"\xc1",  # never valid msgpack
    b"\x92\x01",  # truncated
    b"",
    None,
    True,
    -1,
    2**64 - 1,
    -(2**63),
    math.inf,
    math.nan,
    "text",
    [1, [2, [3]]],
    {"node": 1},
    {1: 2, "a": [None]},
]


def garbage_members() -> list[tuple[str, Any]]:
    now = time.time()
    out: list[tuple[str, Any]] = [(f"g{i}", value) for i, value in enumerate(GARBAGE)]
    bad_fields: list[dict[str, Any]] = [
        {"lease": math.inf},
        {"lease": math.nan},
        {"lease": -5},
        {"lease": 2**64 - 1},
        {"weight": math.inf},
        {"weight": math.nan},
        {"weight": -1},
        {"weight": 1e308},
        {"kinds": "Counter"},
        {"kinds": [["Counter"]]},
        {"kinds": KINDS * 1000},
        {"tags": [[1]]},
        {"capacity": {"cpu": -1}},
        {"capacity": {"custom": {1: 1, "a": 2}}},
        {"capacity": [1]},
        {"load": {"agents": math.inf}},
        {"load": {"agents": -3}},
        {"load": {"agents": 2**64 - 1}},
        {"load": {"reserved": {"memory": -1}}},
        {"load": {"cpu": math.nan}},
        {"load": "heavy"},
        {"heartbeat_at": now + 1e9},
        {"heartbeat_at": math.inf},
        {"heartbeat_at": -1e18},
        {"started_at": math.nan},
        {"draining": "no"},
        {"max_agents": 0},
        {"max_agents": -1},
        {"max_agents": 1.5},
        {"max_agents": "3"},
        {"max_agents": True},
        {"max_agents": 2**64 - 1},
        {"version": 3},
        {"node": "someone-else"},
    ]
    out += [(f"f{i}", phantom(f"f{i}", **change)) for i, change in enumerate(bad_fields)]
    # A well-formed record written under another node's name.
    out.append(("n1-twin", phantom("n1")))
    return out


def garbage_directory() -> list[Any]:
    base = {"kind": "Counter", "id": "x", "node": "n1", "epoch": 1, "status": "active", "since": 0.0}
    changes: list[dict[str, Any]] = [
        {"epoch": 2**64 - 1},
        {"epoch": -1},
        {"epoch": True},
        {"epoch": 1.5},
        {"node": ["n1"]},
        {"node": "bad node id!"},
        {"status": "zombie"},
        {"since": math.nan},
        {"kind": 7},
        {"id": {"a": 1}},
        {"restart": 1},
        {"needs": {"cpu": math.inf}},
        {"needs": {"custom": {1: 1, "a": 2}}},
        {"hints": {"tags": [[1]]}},
        {"hints": {"pin": 5}},
        {"hints": "none"},
        {"id": "other"},  # a record that does not match its key
    ]
    return list(GARBAGE) + [{**base, **change} for change in changes]


async def test_garbage_in_every_registry_key_is_survived(mesh_factory: Any, mesh_prefix: str) -> None:
    client = await mesh_factory(name="client")
    # Before the nodes start (read as the watches' initial values) ...
    for key, value in garbage_members():
        await forge(client, mesh_prefix, "members", key, value)
    for i, value in enumerate(garbage_directory()):
        await forge(client, mesh_prefix, "directory", agent_key("Counter", f"bad{i}"), value)
        await forge(client, mesh_prefix, "directory", agent_key("Keeper", f"bad{i}"), value)
    for value in GARBAGE:
        await forge(client, mesh_prefix, "control", "rebalancer", value)
    huge_counts = {seq: 10**6 for seq in range(1, 200)}
    for p in range(PARTITIONS):
        await forge(client, mesh_prefix, "control", f"partition.{p}", GARBAGE[p])
        await forge(client, mesh_prefix, "control", f"attempts.{p}", huge_counts if p % 2 else GARBAGE[p])
    started = time.monotonic()
    n1, n2 = await start_nodes(mesh_factory, "n1", "n2", rebalance=True)
    meshes = (n1, n2)
    # ... and again while they run (read as live updates).
    for key, value in garbage_members():
        await forge(client, mesh_prefix, "members", key, value)
    for i, value in enumerate(garbage_directory()):
        await forge(client, mesh_prefix, "directory", agent_key("Counter", f"live{i}"), value)
    took = await activations_work(client, "a")
    applied = await exactly_once_works(client, "e")
    await wait_for(lambda: any(node_of(m).is_leader for m in meshes), timeout=2 * LEASE + 2, what="a leader")
    # Records whose key names an agent are orphans: that agent activates normally.
    for i in range(len(garbage_directory())):
        assert await client.ref(f"Counter/bad{i}").call("add", timeout=10) == 1
        assert await client.ref(f"Counter/live{i}").call("add", timeout=10) == 1
    for m in meshes:
        members = node_of(m).membership
        # Well-formed phantoms lapse within twice our lease; garbage never counted.
        await wait_for(lambda members=members: set(members.members()) == {"n1", "n2"}, timeout=2 * LEASE + 1)  # type: ignore[misc]
        assert members.members()["n1"].lease == LEASE
    print(
        f"with garbage everywhere: 30 activations in {took:.2f} s, 32 exactly-once sends in {applied:.2f} s, "
        f"{time.monotonic() - started:.2f} s in all"
    )


async def test_a_garbage_state_record_makes_only_its_agent_unavailable(mesh_factory: Any, mesh_prefix: str) -> None:
    n1, n2 = await start_nodes(mesh_factory, "n1", "n2")
    client = await mesh_factory(name="client")
    values: list[Any] = [
        *GARBAGE,
        {"epoch": True, "data": {}},
        {"epoch": 2**64 - 1, "data": {}},
        {"epoch": -4, "data": {}},
        {"epoch": 1, "data": {}, "seq": 2**63},
        {"epoch": 1, "data": {}, "seq": -1},
    ]
    for i, value in enumerate(values):
        await forge(client, mesh_prefix, "state", agent_key("Counter", f"s{i}"), value)
    results = await asyncio.gather(
        *(client.ref(f"Counter/s{i}").call("add", timeout=3.0) for i in range(len(values))), return_exceptions=True
    )
    # None ran. The caller asks for the activation again until its deadline: the error is
    # the last attempt's, "corrupt", or a CallTimeout when the deadline cut that attempt
    # short (seen with the suite three files at a time).
    refused = {repr(v)[:40]: r for v, r in zip(values, results, strict=True)}
    assert all(
        (isinstance(r, Unavailable) and "is corrupt" in str(r)) or isinstance(r, CallTimeout) for r in results
    ), refused
    assert any(isinstance(r, Unavailable) for r in results), refused
    await activations_work(client, "ok", count=10)
    for m in (n1, n2):
        assert not any(a.startswith("Counter/s") for a in m.local_agents())


# -- finding 11: every activation request gets exactly one answer -----------------------

NASTY_BODIES: list[Any] = [
    b"",
    b"\xc1",
    b"\x81",
    b"\xdc\xff\xff",
    None,
    0,
    "x",
    [],
    {},
    {"id": None},
    {"id": 5},
    {"id": ""},
    {"id": "x" * 10_000},
    {"id": "a\x00b"},
    {"id": "x", "hints": {"tags": [[1]]}},
    {"id": "x", "hints": {"tags": [{"a": 1}]}},
    {"id": "x", "hints": {"tags": "gpu"}},
    {"id": "x", "hints": {"tags": None}},
    {"id": "x", "hints": []},
    {"id": "x", "hints": "pin"},
    {"id": "x", "hints": {"pin": 1}},
    {"id": "x", "hints": {"pin": ["n1"]}},
    {"id": "x", "hints": {"pin": "n1", "avoid": ["n1"]}},
    {"id": "x", "hints": {"avoid": [None]}},
    {"id": "x", "hints": {"prefer": [[]]}},
    {"id": "x", "hints": {"colocate_with": {"a": 1}}},
    {"id": "x", "hints": {"unknown": 1}},
    {"id": "x", "hints": {1: 2}},
    {"id": "x", "hints": {(1, 2): 3}},
    {"id": "x", "needs": "lots"},
    {"id": "x", "needs": {"cpu": -1}},
    {"id": "x", "needs": {"cpu": math.inf}},
    {"id": "x", "needs": {"cpu": math.nan}},
    {"id": "x", "needs": {"memory": 1.5}},
    {"id": "x", "needs": {"custom": {1: 1, "a": 2}}},
    {"id": "x", "needs": {"custom": {"gpu": "one"}}},
    {"id": "x", "needs": {"custom": [1]}},
    {"id": "x", "needs": {"disk": 1}},
    {"id": "x", "resources": {"cpu": 1}},
    {"id": "x", "spawn": "yes"},
    {"id": "x", "queue": 0},
    {"id": "x", "deadline": "soon"},
    {"id": "x", "deadline": 1.5},
    {"id": "x", "deadline": True},
    {"id": "x", "deadline": -(2**63)},
    {"id": "x", "deadline": 2**64 - 1},
    {"id": "x", "placed": "yes"},
    {"id": "x", "kind": ["Counter"]},
    {"id": "x", "transfer": {"data": 1}},
]


@pytest.mark.parametrize("target", ["activate", "node"])
async def test_every_activation_request_gets_exactly_one_answer(
    mesh_factory: Any, mesh_prefix: str, nats_url: str, target: str
) -> None:
    nodes = await start_nodes(mesh_factory, "n1", "n2")
    subject = (
        activate_subject(mesh_prefix, "Counter")
        if target == "activate"
        else node_subject(mesh_prefix, "n1", "activate")
    )
    # A node's `activate` is node-to-node: this test plays a node, signing with the owner key.
    key = nodes[0].cluster_node.owner_key
    nc = await nats.connect(nats_url)
    try:
        replies: dict[int, list[Any]] = {i: [] for i in range(len(NASTY_BODIES))}
        inbox = nc.new_inbox()

        async def collect(msg: Any) -> None:
            replies[int(msg.subject.rsplit(".", 1)[-1])].append(msg)

        await nc.subscribe(f"{inbox}.*", cb=collect)
        for i, body in enumerate(NASTY_BODIES):
            if target == "node" and isinstance(body, dict):
                body = {"kind": "Counter", **body}
            data = body if isinstance(body, bytes) else msgpack.packb(body)
            headers = {"Na-Proto": "1", "Na-Msg-Id": f"nasty-{i}"}
            if target == "node":
                assert key is not None
                headers["Na-Owner-Mac"] = owner_mac(key, subject, headers, data)
            await nc.publish(subject, data, reply=f"{inbox}.{i}", headers=headers)
        await nc.flush()
        await wait_for(lambda: all(replies.values()), timeout=10, what="an answer to every request")
        await nc.flush()  # a second answer would have come with the first
        statuses = {}
        for i, got in replies.items():
            assert len(got) == 1, (NASTY_BODIES[i], got)
            statuses[i] = (got[0].headers or {}).get("Na-Status", "ok")
        bad = {i for i, s in statuses.items() if s != "bad_request"}
        # The well-formed ones may activate the agent (ok), nothing else.
        assert all(statuses[i] == "ok" for i in bad), {repr(NASTY_BODIES[i])[:60]: statuses[i] for i in bad}
    finally:
        await nc.close()


async def held_counter(mesh_factory: Any) -> tuple[Mesh, Mesh, Mesh]:
    """Two nodes and a client; ``Counter/held`` at 5 on one of them: (owner, other, client)."""
    n1, n2 = await start_nodes(mesh_factory, "n1", "n2")
    client = await mesh_factory(name="client")
    assert await client.ref("Counter/held").call("add", by=5, timeout=10) == 5
    owner, other = (n1, n2) if "Counter/held" in n1.local_agents() else (n2, n1)
    return owner, other, client


async def forge_claim(client: Mesh, prefix: str, owner: Mesh, node: str, epoch: int, group: int = 0) -> None:
    """Write a directory record naming ``node`` as the owner of ``Counter/held`` and wait
    until its owner has seen it."""
    directory = node_of(owner).directory
    mine = directory.lookup_claim("Counter", "held")
    assert mine is not None
    record: dict[str, Any] = {
        "kind": "Counter",
        "id": "held",
        "node": node,
        "epoch": epoch,
        "status": "active",
        "since": time.time(),
    }
    if group:
        record["group"] = group
    await forge(client, prefix, "directory", agent_key("Counter", "held"), record)
    await wait_for(
        lambda: (c := directory.lookup_claim("Counter", "held")) is not None and c.revision > mine.revision,
        what="the forgery seen by the owner",
    )


@pytest.mark.parametrize(
    ("named", "epoch"),
    [("other", 1), ("other", 2), ("ghost", 1), ("ghost", 2)],
    ids=["live-node-same-epoch", "live-node-epoch-above", "no-node-same-epoch", "no-node-epoch-above"],
)
async def test_a_forged_claim_does_not_silence_a_live_copy(
    mesh_factory: Any, mesh_prefix: str, nats_url: str, named: str, epoch: int
) -> None:
    """A directory record naming another node as the owner of an agent active here (as the
    fuzz's directory puts did), whatever its epoch — above ours looks like a takeover of
    our line: the copy asks that node whether it holds the agent before it stops. The
    other *live* node does not; a node that does not exist (the fuzz's ``ghost``) has
    nobody to answer ("no responders"). Either way the copy keeps answering, even callers
    that never resend (no ``Na-Msg-Id``), its state goes on, and its claim is written back.
    The 100k fuzz lost the requests of such callers to copies silenced by records of
    epoch 2 naming a live node (``Tally/order/7``)."""
    owner, other, client = await held_counter(mesh_factory)
    await forge_claim(client, mesh_prefix, owner, other.name if named == "other" else "ghost", epoch)
    raw = await nats.connect(nats_url)
    try:
        subject = agent_subject(mesh_prefix, "Counter", "held")
        headers = {"Na-Proto": "1", "Na-Action": "add"}
        values = []
        for _ in range(5):  # a raw caller: no Na-Msg-Id, no resend
            msg = await raw.request(subject, msgpack.packb({"by": 1}), timeout=3, headers=headers)
            values.append(msgpack.unpackb(msg.data))
    finally:
        await raw.close()
    assert values == [6, 7, 8, 9, 10]
    assert "Counter/held" in owner.local_agents()
    directory = node_of(owner).directory
    await wait_for(
        lambda: (c := directory.lookup_claim("Counter", "held")) is not None and c.record.node == owner.name,
        timeout=5,
        what="the owner's claim written back",
    )
    assert await client.ref("Counter/held").call("get", timeout=10) == 10


@pytest.mark.parametrize("holds", [True, False])
async def test_nothing_is_answered_while_another_nodes_claim_is_checked(
    mesh_factory: Any, mesh_prefix: str, nats_url: str, holds: bool
) -> None:
    """While a copy asks the node named by a newer claim whether it holds the agent, it
    answers nothing — not a replay question (§7.5), which runs nothing, nor a refusal it
    would give on arrival (a batch with a reply mode: ``bad_request``). The 100k fuzz got
    both twice: the doubted copy answered at once, and so did the real owner's copy in its
    own queue group. Here a raw connection plays node ``n9`` and answers ``holds`` only
    when the test says so: ``true`` — the copy stops, superseded, and drops both (the
    successor answers them); ``false`` — the copy goes on and answers each once."""
    owner, _, client = await held_counter(mesh_factory)
    raw = await nats.connect(nats_url)
    try:
        questions: asyncio.Queue[Any] = asyncio.Queue()
        await raw.subscribe(node_subject(mesh_prefix, "n9", "holds"), cb=questions.put)
        await raw.flush()
        await forge_claim(client, mesh_prefix, owner, "n9", 2, group=2)  # a new line of ownership
        asked = await asyncio.wait_for(questions.get(), 5)  # the copy doubts: its question is open
        answers: dict[str, list[Any]] = {"replay": [], "refused": []}
        subject = agent_subject(mesh_prefix, "Counter", "held")
        for what, headers in (
            ("replay", {"Na-Proto": "1", "Na-Reply-Mode": "replay", "Na-Msg-Id": "Qk9HVVMtUkVQTEFZLTAwMDE"}),
            ("refused", {"Na-Proto": "1", "Na-Batch": "1", "Na-Reply-Mode": "accept"}),
        ):
            inbox = raw.new_inbox()

            async def got(m: Any, what: str = what) -> None:
                answers[what].append(m)

            await raw.subscribe(inbox, cb=got)
            await raw.publish(subject, b"", reply=inbox, headers=headers)
        await raw.flush()
        with pytest.raises(TimeoutError):  # the old code answered both within milliseconds
            await wait_for(lambda: any(answers.values()), timeout=0.3)
        hdrs, body = envelope.ok_reply({"holds": holds})
        await raw.publish(asked.reply, body, headers=hdrs)
        await raw.flush()
        if holds:
            await wait_for(lambda: "Counter/held" not in owner.local_agents(), timeout=5, what="the copy stopped")
            await raw.flush()
            assert answers == {"replay": [], "refused": []}, "a superseded copy answered"
        else:
            await wait_for(lambda: all(answers.values()), timeout=5, what="both answered")
            (replayed,), (refused,) = answers["replay"], answers["refused"]
            assert replayed.headers["Na-Status"] == "unavailable"
            assert msgpack.unpackb(replayed.data)["details"] == {"retry": True, "result": "unknown"}
            assert refused.headers["Na-Status"] == "bad_request"
            assert "Counter/held" in owner.local_agents()
            await raw.flush()
            assert len(answers["replay"]) == len(answers["refused"]) == 1
    finally:
        await raw.close()


class Gate(Agent):
    """Its start waits for ``opened`` while ``closed`` is set (a start held half-way)."""

    closed = False
    entered: asyncio.Event | None = None
    opened: asyncio.Event | None = None

    async def on_start(self) -> None:
        if Gate.closed and Gate.opened is not None and Gate.entered is not None:
            Gate.entered.set()
            await Gate.opened.wait()

    @action
    async def ping(self) -> str:
        return "pong"


async def test_a_claim_written_while_the_agent_starts_is_judged_once_it_started(
    mesh_factory: Any, mesh_prefix: str
) -> None:
    """A record of another node that lands while an agent is being started here is not
    lost: the copy is not active yet when the directory watch reports it, so it is judged
    (asked ``holds``) once the start has ended. In the 100k fuzz a forged record named n2
    for an agent live on n1; n2 started a copy on it, n1 wrote its own record back during
    that start, and both copies (two queue groups) answered every message for 20 s: 62
    requests answered twice. Here the record landing mid-start names n1, which holds
    nothing: n2 writes its own back, and keeps serving."""
    n1, n2 = await start_nodes(mesh_factory, "n1", "n2")
    for m in (n1, n2):
        await m.host(Gate)
    client = await mesh_factory(name="client")
    Gate.closed, Gate.entered, Gate.opened = True, asyncio.Event(), asyncio.Event()
    try:
        here = {"kind": "Gate", "id": "x", "node": "n2", "epoch": 1, "status": "active", "since": time.time()}
        await forge(client, mesh_prefix, "directory", agent_key("Gate", "x"), here)
        await wait_for(
            lambda: (c := node_of(n2).directory.lookup_claim("Gate", "x")) is not None and c.record.node == "n2",
            what="n2 named",
        )
        call = asyncio.ensure_future(client.ref("Gate/x").call("ping", timeout=10))
        await asyncio.wait_for(Gate.entered.wait(), 10)  # n2 claimed the record naming it, and starts
        there = {**here, "node": "n1", "epoch": 3, "group": 3}
        await forge(client, mesh_prefix, "directory", agent_key("Gate", "x"), there)
        await wait_for(
            lambda: (c := node_of(n2).directory.lookup_claim("Gate", "x")) is not None and c.record.node == "n1",
            what="n2 hears of n1's record while it starts",
        )
        Gate.opened.set()
        assert await call == "pong"
        await wait_for(
            lambda: (c := node_of(n2).directory.lookup_claim("Gate", "x")) is not None and c.record.node == "n2",
            timeout=5,
            what="n2 asked n1, which holds nothing, and wrote its own record back",
        )
        assert n2.local_agents().count("Gate/x") == 1 and "Gate/x" not in n1.local_agents()
    finally:
        Gate.closed, Gate.entered, Gate.opened = False, None, None


async def test_a_record_naming_a_node_that_holds_no_copy_is_taken_over_when_it_starts_one(
    mesh_factory: Any, mesh_prefix: str
) -> None:
    """A node starting an agent whose record already names it, though it holds no copy and
    nothing is handed over to it (a forged record; a process of the same id that stopped
    without releasing it), takes the record over as a lapsed owner's: a write with
    ``epoch + 1`` and a queue group of its own. Using the record as it was (the old code)
    let a live copy elsewhere write its own record back over it unnoticed, and two copies
    in two queue groups answered every message (the 100k fuzz: 3 requests answered twice
    after the fixes above)."""
    _, n2 = await start_nodes(mesh_factory, "n1", "n2")
    client = await mesh_factory(name="client")
    forged = {"kind": "Counter", "id": "named", "node": "n2", "epoch": 4, "status": "active", "since": time.time()}
    revision = await forge(client, mesh_prefix, "directory", agent_key("Counter", "named"), forged)
    assert await client.ref("Counter/named").call("add", by=1, timeout=10) == 1
    assert n2.local_agents() == ["Counter/named"]  # the record named n2: the activation went there
    claim = node_of(n2).directory.lookup_claim("Counter", "named")
    assert claim is not None and claim.revision > revision
    assert claim.record.node == "n2" and claim.record.epoch == 5 and claim.record.group == 5


@pytest.mark.parametrize("how", ["garbage", "foreign-record", "delete", "purge"])
async def test_a_live_copys_removed_or_garbled_record_is_written_back(
    mesh_factory: Any, mesh_prefix: str, nats_url: str, how: str
) -> None:
    """A live copy's directory record overwritten with garbage, with a record of another
    agent, deleted or purged (the fuzz's directory puts and deletes): the copy writes its
    own record back (compare-and-set on the revision that replaced it), so the agent is
    not an orphan that the next activation elsewhere takes over. The old code left it an
    orphan: the other node, asked to activate it, claimed it afresh, the live copy was
    superseded and dropped what only it had received (the 100k fuzz: requests without an
    ``Na-Msg-Id`` to ``Tally/order/7`` and ``Wide/a.b`` went unanswered)."""
    owner, other, client = await held_counter(mesh_factory)
    directory = node_of(owner).directory
    mine = directory.lookup_claim("Counter", "held")
    assert mine is not None
    key = agent_key("Counter", "held")
    records = await bucket(client, mesh_prefix, "directory")
    if how == "garbage":
        await records.put(key, b"\xc1")
    elif how == "foreign-record":
        await forge(client, mesh_prefix, "directory", key, {"kind": "Counter", "id": "f1", "node": other.name})
    elif how == "delete":
        await records.delete(key)
    else:
        await records.purge(key)
    await wait_for(
        lambda: (
            (c := directory.lookup_claim("Counter", "held")) is not None
            and c.revision > mine.revision
            and c.record.node == owner.name
            and c.record.epoch == mine.record.epoch
            and c.record.group == mine.record.group
        ),
        timeout=5,
        what="the owner's record written back",
    )
    # Asked to activate the agent, the other node finds it active on its owner.
    subject = node_subject(mesh_prefix, other.name, "activate")
    signing = node_of(other).owner_key
    assert signing is not None
    data = msgpack.packb({"kind": "Counter", "id": "held"})
    headers = {"Na-Proto": "1", "Na-Msg-Id": envelope.new_message_id()}
    headers["Na-Owner-Mac"] = owner_mac(signing, subject, headers, data)
    raw = await nats.connect(nats_url)
    try:
        await raw.request(subject, data, timeout=5, headers=headers)
        agent = agent_subject(mesh_prefix, "Counter", "held")
        reply = await raw.request(
            agent, msgpack.packb({"by": 1}), timeout=5, headers={"Na-Proto": "1", "Na-Action": "add"}
        )
        assert msgpack.unpackb(reply.data) == 6
    finally:
        await raw.close()
    assert "Counter/held" in owner.local_agents()
    assert "Counter/held" not in other.local_agents()
    assert await client.ref("Counter/held").call("get", timeout=10) == 6


@pytest.mark.parametrize("how", ["garbage", "record", "delete", "purge"])
async def test_a_live_copys_state_written_by_another_is_stored_over(
    mesh_factory: Any, mesh_prefix: str, how: str
) -> None:
    """A live copy's state record overwritten by someone who does not own the agent (the
    fuzz's state puts and deletes: garbage, a well-formed record, a removal). The copy's
    claim still holds at the stream leader, so no node that could own the agent wrote it:
    its next save goes over the foreign write and the agent goes on with its own state.
    The old code stopped the copy as fenced off (the call answered ``unavailable``) and
    the agent restarted on the foreign record: "state … is corrupt" for every later call,
    or a value nobody wrote through the agent."""
    owner, _, client = await held_counter(mesh_factory)
    key = agent_key("Counter", "held")
    records = await bucket(client, mesh_prefix, "state")
    if how == "garbage":
        await records.put(key, b"\xc1")
    elif how == "record":
        await forge(client, mesh_prefix, "state", key, {"epoch": 1, "data": {"n": 1000}})
    elif how == "delete":
        await records.delete(key)
    else:
        await records.purge(key)
    ref = client.ref("Counter/held")
    assert [await ref.call("add", by=1, timeout=10) for _ in range(3)] == [6, 7, 8]
    assert "Counter/held" in owner.local_agents()
    entry = await records.get(key, leader=True)
    assert entry is not None and msgpack.unpackb(entry.value)["data"] == {"n": 8}


@pytest.mark.parametrize("how", ["delete", "purge", "lease-0", "garbage"])
async def test_a_live_nodes_member_record_deleted_or_forged_hands_none_of_its_agents_over(
    mesh_factory: Any, mesh_prefix: str, nats_url: str, how: str
) -> None:
    """A live node's membership record deleted, purged, rewritten with a lease of 0 or with
    garbage (the fuzz's member puts and deletes). A deletion read as a graceful leave (the
    old code) made the node lapse at once in every other node's view, the stream leader
    confirmed it (no record), and the next activation request elsewhere took its agents
    over while it still ran them: two copies answered (the 100k fuzz: 2 requests answered
    twice, ``Ephemeral/f19`` and ``Ephemeral/f8``). Now a deletion counts only after a
    grace of half a lease, a record's lease counts for at least ours, and the node writes
    its own record back at once."""
    n1, n2 = await start_nodes(mesh_factory, "n1", "n2")
    client = await mesh_factory(name="client")
    await asyncio.gather(*(client.ref(f"Counter/m{i}").call("add", timeout=10) for i in range(16)))
    on_n1 = [a.split("/")[1] for a in n1.local_agents() if a.startswith("Counter/m")]
    assert on_n1, "placement put none of the agents on n1"
    members = await bucket(client, mesh_prefix, "members")
    if how == "delete":
        await members.delete("n1")
    elif how == "purge":
        await members.purge("n1")
    elif how == "lease-0":
        await forge(client, mesh_prefix, "members", "n1", phantom("n1", lease=0))
    else:
        await members.put("n1", b"\xc1")
    # At once, n2 is asked to activate every agent n1 runs (as a placement would).
    subject = node_subject(mesh_prefix, "n2", "activate")
    signing = node_of(n2).owner_key
    assert signing is not None
    raw = await nats.connect(nats_url)
    try:

        async def activate(agent_id: str) -> None:
            data = msgpack.packb({"kind": "Counter", "id": agent_id})
            headers = {"Na-Proto": "1", "Na-Msg-Id": envelope.new_message_id()}
            headers["Na-Owner-Mac"] = owner_mac(signing, subject, headers, data)
            await raw.request(subject, data, timeout=5, headers=headers)

        await asyncio.gather(*(activate(agent_id) for agent_id in on_n1))
    finally:
        await raw.close()
    taken = [a for a in on_n1 if f"Counter/{a}" in n2.local_agents()]
    assert taken == [], f"n2 took over {taken} from live n1"
    assert all(f"Counter/{a}" in n1.local_agents() for a in on_n1)

    async def restored() -> bool:
        entry = await members.get("n1", leader=True)
        return entry is not None and msgpack.unpackb(entry.value).get("lease") == LEASE

    await wait_for(restored, timeout=5, what="n1's own record written back")
    assert node_of(n2).membership.is_live("n1")
