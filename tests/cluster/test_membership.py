"""Membership over a real JetStream KV bucket: join, heartbeat, graceful leave, lapse."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import natsagents as na
from natsagents.cluster.membership import MemberRecord, Membership
from natsagents.transport import ConnectSettings, Transport

Factory = Callable[..., Awaitable[Membership]]


@pytest.fixture
async def members(nats_url: str, mesh_prefix: str) -> AsyncIterator[Factory]:
    opened: list[tuple[Transport, Membership]] = []

    async def make(node: str, **kwargs: object) -> Membership:
        t = await Transport.connect(ConnectSettings(servers=(nats_url,), name=node))
        m = Membership(t, mesh_prefix, node, **kwargs)  # type: ignore[arg-type]
        await m.start()
        opened.append((t, m))
        return m

    try:
        yield make
    finally:
        for t, m in opened:
            await m.stop(leave=False)
            await t.close()


async def test_nodes_see_each_other_and_their_load(members: Factory) -> None:
    load = {"agents": 0}
    a = await members("node-a", lease=1.5, describe=lambda: {"kinds": ["Counter"], "load": dict(load)})
    b = await members("node-b", lease=1.5)
    await a.wait_until(lambda m: set(m) == {"node-a", "node-b"}, timeout=5)
    await b.wait_until(lambda m: set(m) == {"node-a", "node-b"}, timeout=5)
    assert b.members()["node-a"].kinds == ("Counter",)
    load["agents"] = 7
    await b.wait_until(lambda m: m["node-a"].load.get("agents") == 7, timeout=5)


async def test_graceful_leave_is_seen_at_once(members: Factory) -> None:
    a = await members("node-a", lease=30)
    b = await members("node-b", lease=30)
    await a.wait_until(lambda m: "node-b" in m, timeout=5)
    await b.stop(leave=True)
    await a.wait_until(lambda m: "node-b" not in m, timeout=2)  # far sooner than the 30 s lease


async def test_a_silent_node_lapses_after_its_lease(members: Factory) -> None:
    a = await members("node-a", lease=1.0)
    b = await members("node-b", lease=1.0)
    await a.wait_until(lambda m: "node-b" in m, timeout=5)
    loop_time = asyncio.get_running_loop().time
    await b.stop(leave=False)  # a crash: no goodbye
    stopped = loop_time()
    await a.wait_until(lambda m: "node-b" not in m, timeout=5)
    assert loop_time() - stopped <= 1.0 + 1.0  # lease + one interval of slack
    assert a.is_live("node-a")


async def test_records_round_trip_and_reject_garbage() -> None:
    rec = MemberRecord("n1", kinds=("A",), capacity={"cpu": 2}, load={"agents": 3}, tags=("gpu",), lease=2.0)
    assert MemberRecord.from_wire(rec.to_wire()) == rec
    for bad in (b"\xc1", na.wire.codec.encode([1]), na.wire.codec.encode({"node": 5})):
        with pytest.raises(ValueError):
            MemberRecord.from_wire(bad)


async def test_bad_settings(nats_url: str) -> None:
    t = await Transport.connect(ConnectSettings(servers=(nats_url,)))
    try:
        with pytest.raises(na.ConfigurationError):
            Membership(t, "p", "bad node")
        with pytest.raises(na.ConfigurationError):
            Membership(t, "p", "n", lease=0)
        with pytest.raises(na.ConfigurationError):
            Membership(t, "p", "n", lease=1, interval=2)
    finally:
        await t.close()
