"""A request that got no reply is resent unchanged, and a host never runs a copy twice.

The copies are published with nats-py exactly as docs/protocol.md §7.4 describes (same
``Na-Msg-Id``, same reply subject); the lost-request case uses a real subscriber that
swallows the first copy, as a queue subscription leaving mid-route does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgpack
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from natsagents import Agent, AlreadyApplied, CallTimeout, ClusterSettings, ConfigurationError, Hints, Mesh, action
from natsagents.runtime.dedup import IN_PROGRESS, Dedup
from natsagents.state.store import StateStore, parse_applied
from natsagents.testing import wait_for
from natsagents.wire import codec, envelope
from natsagents.wire.subjects import agent_queue, agent_subject
from tests.agents import Counter, WideGate


class Loud(Agent):
    """Counts its shouts; answers with a reply as large as asked."""

    @action
    async def shout(self, text: str) -> str:
        self.state["n"] = self.state.get("n", 0) + 1
        return text * 100

    @action
    async def count(self) -> int:
        return int(self.state.get("n", 0))


class Inbox:
    """A reply subject of our own, so that copies of one request share it."""

    def __init__(self, nc: Client, subject: str) -> None:
        self.nc = nc
        self.subject = subject
        self.replies: list[Msg] = []
        self.arrived = asyncio.Event()

    @classmethod
    async def open(cls, nc: Client) -> Inbox:
        box = cls(nc, nc.new_inbox())

        async def got(msg: Msg) -> None:
            if msg.headers and msg.headers.get("Status") == "503":
                return  # no responders: the requester sends again (§7.2)
            box.replies.append(msg)
            box.arrived.set()

        await nc.subscribe(box.subject, cb=got)
        await nc.flush()
        return box

    async def publish(self, subject: str, body: dict[str, Any], hdrs: dict[str, str]) -> None:
        await self.nc.publish(subject, msgpack.packb(body), reply=self.subject, headers=hdrs)
        await self.nc.flush()

    async def exchange(self, subject: str, body: dict[str, Any], hdrs: dict[str, str], *, timeout: float = 5) -> Msg:
        """Publish, and publish the same again every 0.5 s until a reply comes (§7.4)."""
        count = len(self.replies)
        deadline = time.monotonic() + timeout
        while len(self.replies) == count:
            assert time.monotonic() < deadline, "no reply"
            self.arrived.clear()
            await self.publish(subject, body, hdrs)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.5)
        return self.replies[count]

    def results(self) -> list[Any]:
        return [msgpack.unpackb(m.data) for m in self.replies]


def headers(action: str, timeout: float = 10.0) -> dict[str, str]:
    return {
        "Na-Proto": "1",
        "Na-Action": action,
        "Na-Msg-Id": envelope.new_message_id(),
        "Na-Deadline": str(int((time.time() + timeout) * 1000)),
    }


@pytest.fixture
async def nc(nats_url: str) -> Any:
    conn = await nats.connect(nats_url, name="raw-peer")
    yield conn
    await conn.close()


async def test_a_copy_of_an_answered_request_gets_the_same_reply_and_runs_once(
    mesh: Mesh, nc: Client, mesh_prefix: str
) -> None:
    await mesh.host(Counter)
    await mesh.spawn("Counter/c")
    box = await Inbox.open(nc)
    subject = agent_subject(mesh_prefix, "Counter", "c")
    hdrs = headers("add")
    await box.exchange(subject, {"by": 5}, hdrs)
    again = await box.exchange(subject, {"by": 5}, hdrs)  # the requester heard nothing and resends
    assert box.results() == [5, 5]
    assert again.headers is not None and again.headers["Na-Status"] == "ok"
    assert await mesh.ref("Counter/c").call("get") == 5  # applied once
    assert mesh.metrics.value("natsagents_duplicates_total", {"kind": "Counter", "entry": "replayed"}) >= 1
    # A new message (new id) with the same body runs.
    await box.exchange(subject, {"by": 5}, headers("add"))
    assert box.results()[2] == 10


async def test_a_copy_of_a_running_request_is_not_run_again(mesh: Mesh, nc: Client, mesh_prefix: str) -> None:
    await mesh.host(WideGate)  # runs "open" beside the blocked "wait"
    gate = mesh.ref("WideGate/g")
    await mesh.spawn("WideGate/g")
    box = await Inbox.open(nc)
    subject = agent_subject(mesh_prefix, "WideGate", "g")
    hdrs = headers("wait")
    await box.publish(subject, {}, hdrs)
    await wait_for(lambda: mesh.local_agent("WideGate/g").state["running"] == 1, timeout=5, what="handler running")
    seen = {"kind": "WideGate", "entry": "in_progress"}
    for _ in range(10):  # a resend while the first copy runs (again if NATS drops it)
        await box.publish(subject, {}, hdrs)
        with contextlib.suppress(TimeoutError):
            await wait_for(lambda: mesh.metrics.value("natsagents_duplicates_total", seen) >= 1, timeout=0.5)
            break
    assert mesh.metrics.value("natsagents_duplicates_total", seen) >= 1
    await gate.call("open")
    await wait_for(lambda: len(box.replies) >= 1, timeout=5, what="the one reply")
    state = mesh.local_agent("WideGate/g").state
    assert state["done"] == 1 and state["max_running"] == 1
    assert box.results()[0] == 1


async def _swallow_first(nc: Client, subject: str, queue: str) -> list[Msg]:
    """A member of the agents' queue group that takes one message and vanishes without
    answering, as a subscription leaving while a request crosses a route does."""
    swallowed: list[Msg] = []

    async def swallow(msg: Msg) -> None:
        swallowed.append(msg)
        await sub.unsubscribe()

    sub = await nc.subscribe(subject, queue=queue, cb=swallow)
    await nc.flush()
    return swallowed


async def test_a_request_lost_in_transit_is_resent_and_answered(
    mesh_factory: Any, nc: Client, mesh_prefix: str
) -> None:
    host = await mesh_factory(name="host")
    await host.host(Counter)
    client = await mesh_factory(name="client", resend_after=0.2)
    # Right after a subscription the server may still answer "no responders" (§7.2); then
    # the agent is activated and the black hole may not get the message: try another id.
    for attempt in range(5):
        address = f"Counter/lost{attempt}"
        swallowed = await _swallow_first(
            nc, agent_subject(mesh_prefix, "Counter", f"lost{attempt}"), agent_queue(mesh_prefix)
        )
        assert await client.ref(address).call("add", by=3, timeout=5) == 3
        if swallowed:
            break
    assert len(swallowed) == 1
    assert client.metrics.value("natsagents_resends_total", {}) >= 1
    assert await client.ref(address).call("get") == 3  # applied once


async def test_without_resend_a_lost_request_times_out(mesh_factory: Any, nc: Client, mesh_prefix: str) -> None:
    host = await mesh_factory(name="host")
    await host.host(Counter)
    client = await mesh_factory(name="client", resend_after=None)
    for attempt in range(5):
        swallowed = await _swallow_first(
            nc, agent_subject(mesh_prefix, "Counter", f"lost{attempt}"), agent_queue(mesh_prefix)
        )
        try:
            await client.ref(f"Counter/lost{attempt}").call("add", timeout=0.5)
        except CallTimeout:
            break
        assert not swallowed  # answered only when the black hole was not seen yet
    assert swallowed
    assert client.metrics.value("natsagents_resends_total", {}) == 0


async def test_resend_after_must_be_positive(nats_url: str) -> None:
    with pytest.raises(ConfigurationError):
        await Mesh.connect(nats_url, resend_after=0)


# -- across activations (cluster nodes) ------------------------------------------------


def _node(name: str) -> ClusterSettings:
    return ClusterSettings(node_id=name, lease=1.5, rebalance=False, delivery=None)


async def _two_nodes(mesh_factory: Any) -> tuple[Mesh, Mesh]:
    n1 = await mesh_factory(name="n1", cluster=_node("n1"))
    n2 = await mesh_factory(name="n2", cluster=_node("n2"))
    for m in (n1, n2):
        await m.host(Counter, Loud)
    await wait_for(lambda: {n.node_id for n in n1.cluster_node.nodes()} >= {"n1", "n2"}, timeout=5, what="n1 sees n2")
    return n1, n2


@pytest.mark.parametrize("strategy", ["checkpoint_restore", "state_transfer", "cold_start"])
async def test_answered_requests_move_with_the_agent(
    mesh_factory: Any, nc: Client, mesh_prefix: str, strategy: str
) -> None:
    n1, n2 = await _two_nodes(mesh_factory)
    await n1.spawn("Counter/m", hints=Hints(pin="n1"))
    box = await Inbox.open(nc)
    subject = agent_subject(mesh_prefix, "Counter", "m")
    hdrs = headers("add")
    await box.exchange(subject, {"by": 4}, hdrs)
    await n1.migrate("Counter/m", to="n2", strategy=strategy)
    assert n2.local_agents() == ["Counter/m"]
    await box.exchange(subject, {"by": 4}, hdrs)  # the copy reaches the new owner
    assert box.results() == [4, 4]
    assert await n1.ref("Counter/m").call("get") == 4
    assert n2.metrics.value("natsagents_duplicates_total", {"kind": "Counter", "entry": "replayed"}) >= 1


async def test_a_successor_answers_a_copy_of_an_applied_request_without_applying_it(
    mesh_factory: Any, nc: Client, mesh_prefix: str
) -> None:
    """The first activation applies and persists the requests, then goes away without a
    hand-over of its replies; the successor knows them from the stored state: it answers a
    copy with the stored reply, or with ``already_applied`` when the reply was too large to
    keep (it ran; it never runs again)."""
    n1, n2 = await _two_nodes(mesh_factory)
    client = await mesh_factory(name="client")
    await client.spawn("Counter/s", hints=Hints(pin="n1"))
    await client.spawn("Loud/s", hints=Hints(pin="n1"))
    box = await Inbox.open(nc)
    subject = agent_subject(mesh_prefix, "Counter", "s")
    hdrs = headers("add")
    await box.exchange(subject, {"by": 7}, hdrs)
    loud_subject = agent_subject(mesh_prefix, "Loud", "s")
    loud = headers("shout")
    # A 70 KB reply: more than the 64 KiB of applied entries kept with the state.
    await box.exchange(loud_subject, {"text": "x" * 700}, loud)
    stored = await n1.cluster_node.state.load("Counter", "s")
    assert [(a[0], a[2]) for a in stored.applied] == [(hdrs["Na-Msg-Id"], codec.encode(7))]
    await n1.aclose()
    await wait_for(lambda: "n1" not in {n.node_id for n in n2.cluster_node.nodes()}, timeout=5, what="n1 gone")
    assert await client.ref("Counter/s").call("get") == 7  # re-activated on n2
    second = await box.exchange(subject, {"by": 7}, hdrs)
    assert second.headers is not None and second.headers["Na-Status"] == "ok"
    assert msgpack.unpackb(second.data) == 7  # the original answer, not a second add
    assert await client.ref("Counter/s").call("get") == 7
    assert await client.ref("Loud/s").call("count") == 1  # re-activated on n2
    third = await box.exchange(loud_subject, {"text": "x" * 700}, loud)
    assert third.headers is not None and third.headers["Na-Status"] == "already_applied"
    with pytest.raises(AlreadyApplied):
        envelope.parse_reply(third.headers, third.data)
    assert await client.ref("Loud/s").call("count") == 1  # not applied twice


# -- the pieces ------------------------------------------------------------------------


class _Act:
    """Dedup touches only ``act.recent`` (and hashes the activation by identity)."""

    recent: dict[str, Any] | None = None


def _act() -> Any:
    return _Act()


def test_dedup_bounds_its_memory_and_expires_answers() -> None:
    dedup = Dedup(ttl=60.0, max_per_agent=3)
    act = _act()
    Dedup.begin(act, "running")
    for i in range(5):
        Dedup.begin(act, f"m{i}")
        assert Dedup.lookup(act, f"m{i}") is IN_PROGRESS
        dedup.finish(act, f"m{i}", (b"h", b"%d" % i))
    # Three answers at most: the oldest went first; the request still running stays.
    assert list(act.recent) == ["running", "m2", "m3", "m4"]
    assert Dedup.lookup(act, "m4")[:2] == (b"h", b"4")
    dedup.finish(act, "running", None)  # refused: forgotten, a copy may run
    assert list(act.recent) == ["m2", "m3", "m4"]

    expired = Dedup(ttl=0.0, window=0.0)
    other = _act()
    Dedup.begin(other, "x")
    expired.finish(other, "x", (b"h", b"b"))
    Dedup.begin(other, "z")
    expired.finish(_act(), "w", (b"h", b"b"))  # finishing anything expires what is due
    assert other.recent == {"z": IN_PROGRESS}  # the expired answer is gone, the running one kept
    expired.finish(other, "z", (b"h", b"b"))
    expired.finish(_act(), "v", (b"h", b"b"))
    assert other.recent is None and len(expired) <= 1


def test_dedup_export_and_load_skip_malformed_entries() -> None:
    dedup = Dedup()
    src = _act()
    Dedup.begin(src, "a")
    dedup.finish(src, "a", (envelope.OK_HEADER_BLOCK, codec.encode(1)))
    Dedup.begin(src, "running")
    dedup.remember_applied(src, [("b", int(time.time() * 1000) + 5000, None), ("old", 1, None)])
    exported = dedup.export(src)
    assert [e[0] for e in exported] == ["a", "b"]
    wire = codec.decode(codec.encode(exported))
    dst = _act()
    dedup.load(dst, [*wire, ["bad"], [1, None, None], ["c", {"x": "y"}, "not bytes"], "junk"])
    dedup.load(dst, "not a list")
    assert set(dst.recent) == {"a", "b"}
    assert dst.recent["b"][:2] == (None, None)  # applied, reply unknown
    hdrs, body, _ = dst.recent["a"]
    assert hdrs["Na-Status"] == "ok" and codec.decode(body) == 1


def test_stored_state_carries_applied_ids_and_tolerates_bad_ones() -> None:
    plain = StateStore.encode({"n": 1}, 3)
    assert StateStore.with_extras(plain, []) == plain
    value = StateStore.with_extras(plain, [("m1", 123, None), ("m2", 456, b"\x05")], seq=42)
    assert codec.decode(value) == {
        "epoch": 3,
        "data": {"n": 1},
        "applied": [["m1", 123], ["m2", 456, b"\x05"]],
        "seq": 42,
    }
    assert codec.decode(StateStore.with_extras(plain, [], seq=7)) == {"epoch": 3, "data": {"n": 1}, "seq": 7}
    assert parse_applied([["m1", 123], ["m3", 5, b"r"], ["bad"], [1, 2], ["m2", "x"], ["m4", 1, "str"], "junk"]) == (
        ("m1", 123, None),
        ("m3", 5, b"r"),
    )
    assert parse_applied(None) == ()
    with pytest.raises(ValueError):
        StateStore.with_extras(codec.encode([1, 2]), [("m", 1, None)])
