"""An applied request never reports failure: a copy of it gets its first reply for as long
as its caller may still be resending it (docs/protocol.md §8.6, issue 11 "honest outcomes").

Each root cause that made a host answer ``already_applied`` (or run a copy again) for a
request whose reply could have been kept has a test here, on real servers, with copies
published by nats-py exactly as §7.4 describes (same ``Na-Msg-Id``, same reply subject):

* the activation's reply cache expired its answer (10 s) while the caller's deadline was
  later: the copy ran a second time;
* a successor activation (failover) knew the ids from the persisted state but kept only the
  newest four replies of at most 1 KiB: older copies got ``already_applied``.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import nats
import pytest
from nats.aio.client import Client

from natsagents import Agent, ClusterSettings, Hints, Mesh, action
from natsagents.testing import wait_for
from natsagents.wire.subjects import agent_subject
from tests.agents import Counter
from tests.integration.test_resend import Inbox, headers


class Echo(Agent):
    """Counts its calls; answers with a 2 KB reply (more than the old 1 KiB kept)."""

    @action
    async def shout(self, text: str) -> str:
        self.state["n"] = self.state.get("n", 0) + 1
        return text * 100

    @action
    async def count(self) -> int:
        return int(self.state.get("n", 0))


@pytest.fixture
async def nc(nats_url: str) -> Any:
    conn = await nats.connect(nats_url, name="raw-peer")
    yield conn
    await conn.close()


async def test_a_copy_after_the_reply_cache_ttl_but_before_its_deadline_gets_the_reply(
    mesh: Mesh, nc: Client, mesh_prefix: str
) -> None:
    """The reply cache keeps an answer until its request's deadline (+1 s), not just for
    its TTL: the caller may resend until then (a copy used to run again: a doubled add)."""
    await mesh.host(Counter)
    mesh._host.dedup.ttl = 0.05  # the TTL alone would forget the answer at once
    await mesh.spawn("Counter/ttl")
    box = await Inbox.open(nc)
    subject = agent_subject(mesh_prefix, "Counter", "ttl")
    hdrs = headers("add", timeout=30.0)
    first = await box.exchange(subject, {"by": 5}, hdrs)
    assert msgpack.unpackb(first.data) == 5
    started = time.monotonic()
    while time.monotonic() - started < 0.2:  # past the TTL; other answers expire what is due
        await box.exchange(subject, {}, headers("get"))
    copy = await box.exchange(subject, {"by": 5}, hdrs)
    assert copy.headers is not None and copy.headers["Na-Status"] == "ok"
    assert msgpack.unpackb(copy.data) == 5  # the first answer, not a second add
    assert await mesh.ref("Counter/ttl").call("get") == 5


def _node(name: str) -> ClusterSettings:
    return ClusterSettings(node_id=name, lease=1.5, rebalance=False, delivery=None)


async def test_a_successor_answers_every_copy_in_the_window_with_its_first_reply(
    mesh_factory: Any, nc: Client, mesh_prefix: str
) -> None:
    """Failover: the first activation applied ten requests (and one with a 2 KB reply) and
    went away without handing its replies over. The successor knows them from the stored
    state only: each copy gets its own first reply, none runs again, none is answered
    ``already_applied`` (the newest four replies of at most 1 KiB used to be all that was
    kept)."""
    n1 = await mesh_factory(name="n1", cluster=_node("n1"))
    n2 = await mesh_factory(name="n2", cluster=_node("n2"))
    for m in (n1, n2):
        await m.host(Counter, Echo)
    await wait_for(lambda: {n.node_id for n in n1.cluster_node.nodes()} >= {"n1", "n2"}, timeout=5, what="n1 sees n2")
    client = await mesh_factory(name="client")
    await client.spawn("Counter/f", hints=Hints(pin="n1"))
    await client.spawn("Echo/f", hints=Hints(pin="n1"))
    box = await Inbox.open(nc)
    subject = agent_subject(mesh_prefix, "Counter", "f")
    sent = [headers("add", timeout=30.0) for _ in range(10)]
    for hdrs in sent:
        await box.exchange(subject, {"by": 1}, hdrs)
    echo_subject = agent_subject(mesh_prefix, "Echo", "f")
    loud = headers("shout", timeout=30.0)
    await box.exchange(echo_subject, {"text": "x" * 20}, loud)
    assert box.results() == [*range(1, 11), "x" * 2000]
    await n1.aclose()
    await wait_for(lambda: "n1" not in {n.node_id for n in n2.cluster_node.nodes()}, timeout=5, what="n1 gone")
    assert await client.ref("Counter/f").call("get") == 10  # re-activated on n2
    assert await client.ref("Echo/f").call("count") == 1
    for i, hdrs in enumerate(sent):
        copy = await box.exchange(subject, {"by": 1}, hdrs)
        assert copy.headers is not None and copy.headers["Na-Status"] == "ok", (i, copy.headers)
        assert msgpack.unpackb(copy.data) == i + 1  # its own first answer
    copy = await box.exchange(echo_subject, {"text": "x" * 20}, loud)
    assert copy.headers is not None and copy.headers["Na-Status"] == "ok", copy.headers
    assert msgpack.unpackb(copy.data) == "x" * 2000
    assert await client.ref("Counter/f").call("get") == 10  # nothing applied twice
    assert await client.ref("Echo/f").call("count") == 1
