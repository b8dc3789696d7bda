"""The NATS services API (ADR-32) of a cluster node, asked with raw nats-py requests as
``nats micro ls/info/stats`` asks: ``$SRV.PING|INFO|STATS`` in their three forms.

Before: nodes did not answer ``$SRV.*``, so ``nats micro ls`` listed nothing."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from natsagents import ClusterSettings, HandlerError, Hints, Mesh
from natsagents.agent.base import kind_summary
from natsagents.observability import Metrics
from natsagents.observability.micro import QUEUE_LIMIT, ServiceResponder
from natsagents.testing import wait_for
from tests.agents import Counter, Keeper

_FIELDS = {"type", "name", "id", "version", "metadata"}
_ENDPOINT_INFO = {"name", "subject", "queue_group", "metadata"}
_ENDPOINT_STATS = {
    "name",
    "subject",
    "queue_group",
    "num_requests",
    "num_errors",
    "last_error",
    "processing_time",
    "average_processing_time",
    "data",
}


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


async def a_node(mesh_factory: Any, node_id: str, *kinds: type, **options: Any) -> Mesh:
    settings = ClusterSettings(node_id=node_id, lease=1.5, rebalance=False, delivery=None, **options)
    node: Mesh = await mesh_factory(name=node_id, cluster=settings)
    await node.host(*kinds)
    return node


async def gather(nc: Client, subject: str, *, expect: int, prefix: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Request ``subject`` once and collect the answers of this test's mesh (those whose
    metadata names ``prefix``) until ``expect`` of them came (as ``nats micro ls`` does,
    which collects answers for a while)."""
    inbox = nc.new_inbox()
    got: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        body = json.loads(msg.data)
        if body.get("metadata", {}).get("prefix") == prefix:
            got.append(body)
            if len(got) >= expect:
                done.set()

    sub = await nc.subscribe(inbox, cb=on_msg)
    await nc.publish(subject, b"", reply=inbox)
    await asyncio.wait_for(done.wait(), timeout)
    await sub.unsubscribe()
    return got


def check_common(body: dict[str, Any], node_id: str, kind_type: str) -> None:
    assert body["type"] == kind_type
    assert body["name"] == "natsagents" and body["id"] == node_id
    assert body["version"].count(".") == 2  # SemVer
    assert all(isinstance(v, str) for v in body["metadata"].values())
    assert body["metadata"]["node"] == node_id and body["metadata"]["proto"] == "1"


async def test_ping_info_and_stats_per_the_spec(mesh_factory: Any, mesh_prefix: str, raw: Client) -> None:
    a, b = f"{mesh_prefix}-a", f"{mesh_prefix}-b"
    node = await a_node(mesh_factory, a, Counter, Keeper)
    await a_node(mesh_factory, b, Counter)
    ref = await node.spawn("Counter", "c1", hints=Hints(pin=a))  # on node a, whatever placement says
    for _ in range(3):
        await ref.call("add")
    with pytest.raises(HandlerError):
        await ref.call("fail")
    assert node.cluster_node is not None and node.local_agents() == ["Counter/c1"]

    # PING: every form; all nodes of the mesh answer the first two.
    for subject in ("$SRV.PING", "$SRV.PING.natsagents"):
        pongs = await gather(raw, subject, expect=2, prefix=mesh_prefix)
        assert sorted(p["id"] for p in pongs) == [a, b]
    (pong,) = await gather(raw, f"$SRV.PING.natsagents.{a}", expect=1, prefix=mesh_prefix)
    assert set(pong) == _FIELDS
    check_common(pong, a, "io.nats.micro.v1.ping_response")
    assert pong["metadata"] == {
        "node": a,
        "prefix": mesh_prefix,
        "kinds": "Counter,Keeper",
        "proto": "1",
        "partition": "ok",  # the node's own view of its side (cluster.partition)
    }
    assert ServicePing.from_dict(pong).id == a

    # INFO: one endpoint per hosted kind, on the subjects the host serves.
    (info,) = await gather(raw, f"$SRV.INFO.natsagents.{a}", expect=1, prefix=mesh_prefix)
    assert set(info) == _FIELDS | {"description", "endpoints"}
    check_common(info, a, "io.nats.micro.v1.info_response")
    assert [e["name"] for e in info["endpoints"]] == ["Counter", "Keeper"]
    counter = info["endpoints"][0]
    assert set(counter) == _ENDPOINT_INFO
    assert counter["subject"] == f"{mesh_prefix}.agent.Counter.*"
    assert counter["queue_group"] == f"{mesh_prefix}.agents"
    assert counter["metadata"] == {
        "kind": "Counter",
        "activate": f"{mesh_prefix}.activate.Counter",
        **kind_summary(Counter),
    }
    assert counter["metadata"]["consistency"] == "strong" and counter["metadata"]["persistence"] == "action"
    assert [e.name for e in ServiceInfo.from_dict(info).endpoints] == ["Counter", "Keeper"]

    # STATS: the calls made above, counted by the node's own metrics.
    (stats,) = await gather(raw, f"$SRV.STATS.natsagents.{a}", expect=1, prefix=mesh_prefix)
    assert set(stats) == _FIELDS | {"started", "endpoints"}
    check_common(stats, a, "io.nats.micro.v1.stats_response")
    started = datetime.datetime.strptime(stats["started"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs(started - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)) < datetime.timedelta(minutes=5)
    counter, keeper = stats["endpoints"]
    assert set(counter) == _ENDPOINT_STATS
    assert (counter["name"], counter["num_requests"], counter["num_errors"]) == ("Counter", 4, 1)
    assert counter["last_error"] == "handler_error (fail)"
    assert counter["processing_time"] > 0 and isinstance(counter["processing_time"], int)
    assert counter["average_processing_time"] == counter["processing_time"] // 4
    assert counter["data"]["agents"] == 1 and counter["data"]["hot"][0]["agent"] == "Counter/c1"
    assert counter["data"]["settings"] == kind_summary(Counter)
    assert counter["data"]["hot"][0]["recent"] >= 3  # answered requests the host keeps for copies
    assert (keeper["num_requests"], keeper["num_errors"], keeper["last_error"], keeper["processing_time"]) == (
        0,
        0,
        "",
        0,
    )
    assert ServiceStats.from_dict(stats).endpoints[0].num_requests == 4
    # Node b hosts only Counter and ran nothing.
    (other,) = await gather(raw, f"$SRV.STATS.natsagents.{b}", expect=1, prefix=mesh_prefix)
    assert [(e["name"], e["num_requests"]) for e in other["endpoints"]] == [("Counter", 0)]


async def test_hostile_requests_are_dropped(mesh_factory: Any, mesh_prefix: str, raw: Client) -> None:
    a = f"{mesh_prefix}-a"
    node = await a_node(mesh_factory, a, Counter)
    assert node.cluster_node is not None and node.cluster_node.services is not None
    services = node.cluster_node.services
    ping = f"$SRV.PING.natsagents.{a}"
    # Where a forged reply subject points: another agent, the KV API, a node's control subject.
    targets = [f"{mesh_prefix}.agent.Counter.victim", "$KV.x.y", f"{mesh_prefix}.node.{a}.drain"]
    seen: list[str] = []

    async def spy(msg: Any) -> None:
        seen.append(msg.subject)

    spies = [await raw.subscribe(t, cb=spy) for t in targets]
    stray = raw.new_inbox()
    strays = await raw.subscribe(stray, cb=spy)
    refused = node.transport.refused_replies
    for target in targets:
        await raw.publish(ping, b"", reply=target)
    await raw.publish(ping, b"garbage \x00\xff body", reply=stray)  # the API's requests have no body
    await raw.publish(f"$SRV.STATS.natsagents.{a}", b"{}", reply=stray)
    await raw.publish(ping, b"")  # no reply subject
    # One valid request after them: answered, and so everything before it was handled
    # (one connection, one order).
    (pong,) = await gather(raw, ping, expect=1, prefix=mesh_prefix)
    assert pong["id"] == a
    await raw.flush()
    assert seen == []
    assert node.transport.refused_replies - refused == len(targets)
    assert services.dropped == 3

    # A flood: answered up to the queue's bound, the rest dropped; the node keeps working.
    flood = raw.new_inbox()
    answers: list[bytes] = []

    async def count(msg: Any) -> None:
        answers.append(msg.data)

    flood_sub = await raw.subscribe(flood, cb=count)
    n = 20 * QUEUE_LIMIT
    for _ in range(n):
        await raw.publish(f"$SRV.STATS.natsagents.{a}", b"", reply=flood)
    assert await node.ref("Counter/c1").call("add") == 1
    await gather(raw, ping, expect=1, prefix=mesh_prefix)  # after every request of the flood
    await wait_for(lambda: len(answers) + services.dropped - 3 == n, what="every request answered or dropped")
    assert len(answers) >= 1 and all(json.loads(a)["type"] == "io.nats.micro.v1.stats_response" for a in answers)
    for sub in (*spies, strays, flood_sub):
        await sub.unsubscribe()


async def test_the_services_api_can_be_turned_off(mesh_factory: Any, mesh_prefix: str, raw: Client) -> None:
    on, off = f"{mesh_prefix}-on", f"{mesh_prefix}-off"
    await a_node(mesh_factory, off, Counter, services_api=False)
    await a_node(mesh_factory, on, Counter)
    pongs = await gather(raw, "$SRV.PING.natsagents", expect=1, prefix=mesh_prefix)
    assert [p["id"] for p in pongs] == [on]
    with pytest.raises(nats.errors.NoRespondersError):
        await raw.request(f"$SRV.PING.natsagents.{off}", b"", timeout=5)


def test_waiting_requests_are_bounded_and_the_version_is_semver() -> None:
    responder = ServiceResponder(
        None,  # type: ignore[arg-type]  # never used: nothing is answered here
        prefix="na", node_id="n1", version="0", kinds=list, metrics=Metrics(), agents=list,
    )  # fmt: skip
    on_ping = responder._handler("PING")
    for _ in range(QUEUE_LIMIT + 36):  # all arrive in one read: the answering task has not run
        on_ping(SimpleNamespace(subject="$SRV.PING", reply="_INBOX.x.1", data=b"", headers=None))
    assert (len(responder._queue), responder.dropped) == (QUEUE_LIMIT, 36)
    assert responder.response("PING")["version"] == "0.0.0"
    assert responder.response("STATS")["endpoints"] == []
