"""Membership over a real JetStream KV bucket: join, heartbeat, graceful leave, lapse."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import natsagents as na
from natsagents.cluster.membership import LEAVE_GRACE, MemberRecord, Membership
from natsagents.testing import wait_for
from natsagents.transport import ConnectSettings, Transport
from natsagents.transport.jetstream import api_request, stream_info
from natsagents.transport.kv import open_bucket
from natsagents.wire.subjects import bucket_name

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


async def test_graceful_leave_is_seen_within_half_a_lease(members: Factory) -> None:
    """A deleted record counts for ``LEAVE_GRACE`` (half) of the observer's lease more, not
    the whole lease: anyone could delete a live node's record (see test_registry_garbage)."""
    a = await members("node-a", lease=4)
    b = await members("node-b", lease=4)
    await a.wait_until(lambda m: "node-b" in m, timeout=5)
    loop_time = asyncio.get_running_loop().time
    await b.stop(leave=True)
    left = loop_time()
    await wait_for(lambda: "node-b" not in a.known(), timeout=2, what="the leave seen")
    assert a.is_live("node-b")  # not yet: a deletion is not trusted at once
    await wait_for(lambda: not a.is_live("node-b"), timeout=4, interval=0.02, what="the node gone")
    assert loop_time() - left <= LEAVE_GRACE * 4 + 0.5  # well before the 4 s lease


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


async def test_the_first_heartbeat_waits_for_a_bucket_not_yet_serving(nats_url: str, mesh_prefix: str) -> None:
    """A node starting beside others on a fresh cluster may bind the members bucket while its
    stream does not serve its subjects yet (created by another node a moment before, or its
    leader still being elected): the first heartbeat waits for it like the rest of the start,
    not one heartbeat interval (it failed the start with ``no responders`` in CI)."""
    t = await Transport.connect(ConnectSettings(servers=(nats_url,), name="setup"))
    bucket = bucket_name(mesh_prefix, "members")
    stream = f"KV_{bucket}"
    await open_bucket(t, bucket, history=1)
    config = (await stream_info(t, stream))["config"]
    # Bound by the node's open_bucket, but deaf to $KV.<bucket>.> for now.
    await api_request(t, f"$JS.API.STREAM.UPDATE.{stream}", dict(config, subjects=[f"not-yet.{bucket}.>"]), 5.0)
    attempted = asyncio.Event()
    # Hears the first put (so it is not a "no responders"), answers nothing: the attempt
    # waits out its own timeout while the stream starts serving the subject.
    sub = await t.subscribe(f"$KV.{bucket}.node-a", lambda msg: attempted.set())
    m = Membership(t, mesh_prefix, "node-a", lease=1.5)  # heartbeat interval 0.5 s
    starting = asyncio.create_task(m.start())
    try:
        await asyncio.wait_for(attempted.wait(), 5)
        await sub.unsubscribe()
        await api_request(t, f"$JS.API.STREAM.UPDATE.{stream}", dict(config, subjects=[f"$KV.{bucket}.>"]), 5.0)
        await asyncio.wait_for(starting, 10)
        await m.wait_until(lambda live: "node-a" in live, timeout=5)  # its next heartbeat
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await m.stop(leave=False)
        await t.close()
