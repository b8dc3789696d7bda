"""Operator control requests: ``undrain`` (a drained node takes agents again without a
restart) and, on nodes with trusted operators, who may ``drain``, ``undrain`` and
``migrate``: only a cluster node (``Na-Owner-Mac``) or a trusted operator's signature
(the callers' scheme, protocol §4.4, over the control subject), refused ``unauthorized``
at once otherwise.

Before: a drained node stayed drained until it restarted, and anyone who could publish to
``<prefix>.node.<node>.drain`` drained it."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import Any

import nkeys
import pytest

from natsagents import (
    Agent,
    ClusterSettings,
    ConfigurationError,
    Hints,
    Identity,
    Mesh,
    Unauthorized,
    Unavailable,
    action,
)
from natsagents.cluster.node import ClusterNode
from natsagents.testing import wait_for
from natsagents.wire import codec, envelope
from natsagents.wire import headers as h
from natsagents.wire.subjects import node_subject
from tests.agents import Counter


def new_seed() -> str:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


OPS = new_seed()
STRANGER = new_seed()
OPS_KEY = Identity.from_seed(OPS).public_key


def node_of(mesh: Mesh) -> ClusterNode:
    assert mesh.cluster_node is not None
    return mesh.cluster_node


async def two_nodes(mesh_factory: Any, **extra: Any) -> tuple[Mesh, Mesh]:
    meshes = []
    for name in ("n1", "n2"):
        settings = ClusterSettings(node_id=name, lease=1.5, rebalance=False, delivery=None, **extra)
        mesh = await mesh_factory(name=name, cluster=settings)
        await mesh.host(Counter)
        meshes.append(mesh)

    def seen() -> bool:
        return all({n.node_id for n in node_of(m).nodes() if n.live} == {"n1", "n2"} for m in meshes)

    await wait_for(seen, timeout=10, what="the nodes see each other")
    return meshes[0], meshes[1]


def owner(meshes: tuple[Mesh, ...], address: str) -> str | None:
    return next((node_of(m).node_id for m in meshes if address in m.local_agents()), None)


# -- undrain --------------------------------------------------------------------------


async def test_a_drained_node_takes_agents_again_after_undrain(mesh_factory: Any) -> None:
    n1, n2 = await two_nodes(mesh_factory)
    client: Mesh = await mesh_factory(name="client")
    for i in range(6):
        await client.ref(f"Counter/u{i}").call("add")
    result = await client.drain("n1")
    assert result["node"] == "n1" and n1.local_agents() == [] and len(n2.local_agents()) == 6
    await client.ref("Counter/while-drained").call("add")
    assert owner((n1, n2), "Counter/while-drained") == "n2"

    assert await client.undrain("n1") == {"node": "n1", "undrained": True}
    assert not node_of(n1).draining
    await wait_for(lambda: all(n.live for n in node_of(n2).nodes()), timeout=5, what="n2 sees n1 take agents again")
    # n2 holds 7, n1 none: the load bound sends new agents to n1 (no restart needed).
    for i in range(3):
        await client.ref(f"Counter/after{i}").call("add")
    assert [owner((n1, n2), f"Counter/after{i}") for i in range(3)] == ["n1", "n1", "n1"]
    assert await client.ref("Counter/u0").call("add") == 2  # the moved agents stay where they went

    assert await client.undrain("n1") == {"node": "n1", "undrained": False}  # not draining: nothing to do
    # A node drains and undrains itself without a request.
    assert (await n2.drain())["node"] == "n2" and node_of(n2).draining
    assert await n2.undrain() == {"node": "n2", "undrained": True} and not node_of(n2).draining
    with pytest.raises(Unavailable, match="not running"):
        await client.undrain("nobody", timeout=2)
    with pytest.raises(ConfigurationError):
        await client.undrain()  # not a cluster node: name one


class SlowStop(Agent):
    """Takes a while to stop, so that a drain of many takes a while."""

    @action
    async def ping(self) -> str:
        return self.id

    async def on_stop(self) -> None:
        await asyncio.sleep(0.1)


async def test_an_undrain_stops_a_drain_under_way(mesh_factory: Any) -> None:
    n1, n2 = await two_nodes(mesh_factory)
    await n1.host(SlowStop)
    await n2.host(SlowStop)
    await wait_for(
        lambda: all("SlowStop" in n.kinds for n in node_of(n2).nodes()), timeout=5, what="n2 sees SlowStop on n1"
    )
    for i in range(40):
        await n1.spawn(f"SlowStop/s{i}", hints=Hints(pin="n1"))
    drain = asyncio.ensure_future(n1.drain())  # 8 moves at a time, each >= 0.1 s
    await wait_for(lambda: len(n1.local_agents()) < 40, timeout=10, what="the drain moved an agent")
    assert await n2.undrain("n1") == {"node": "n1", "undrained": True}
    result = await drain
    assert 0 < result["moved"] < 40 and result["stopped"] == 0
    assert len(n1.local_agents()) == 40 - result["moved"]  # the rest stayed
    assert not node_of(n1).draining


# -- operator signatures ----------------------------------------------------------------


def signed(seed: str, subject: str, body: bytes, *, expires_ms: int | None = None) -> dict[str, str]:
    """The headers of a control request signed as the SDK does (``wire.identity``)."""
    headers = {h.PROTO: h.PROTO_VERSION, h.MESSAGE_ID: envelope.new_message_id()}
    Identity.from_seed(seed).sign(subject, headers, body, expires_ms or int(time.time() * 1000) + 30_000)
    return headers


async def raw(client: Mesh, subject: str, body: bytes, headers: dict[str, str]) -> Any:
    msg = await client.transport.request(subject, body, headers=headers, timeout=5)
    return envelope.parse_reply(msg.headers, msg.data)


async def refused(reason: str, request: Any) -> None:
    started = time.monotonic()
    with pytest.raises(Unauthorized) as err:
        await request
    assert err.value.details.get("reason") == reason, err.value.message
    assert time.monotonic() - started < 1.0  # at once, not a timeout


async def test_operator_requests_need_a_trusted_signature(mesh_factory: Any) -> None:
    n1, n2 = await two_nodes(mesh_factory, trusted_operators=[OPS_KEY])
    anyone: Mesh = await mesh_factory(name="anyone")
    stranger: Mesh = await mesh_factory(name="stranger", identity=Identity.from_seed(STRANGER))
    ops: Mesh = await mesh_factory(name="ops", identity=Identity.from_seed(OPS))
    await anyone.spawn("Counter/m", hints=Hints(pin="n1"))
    assert n1.local_agents() == ["Counter/m"]

    # Unsigned or signed by a key the nodes do not trust: refused at once, nothing done.
    await refused("unsigned", anyone.drain("n1"))
    await refused("unsigned", anyone.undrain("n1"))
    await refused("unsigned", anyone.migrate("Counter/m", to="n2"))
    await refused("unknown_key", stranger.drain("n1"))
    await refused("unknown_key", stranger.migrate("Counter/m", to="n2"))
    assert not node_of(n1).draining and n1.local_agents() == ["Counter/m"]
    assert (await anyone._cluster_view().info("n1"))["agents"] == ["Counter/m"]  # info is not checked

    # Forged: a valid signature moved to another request, another key, another node; stale.
    subject, body = node_subject(n1.prefix, "n1", "drain"), codec.encode({})
    good = signed(OPS, subject, body)
    sig = bytearray(base64.urlsafe_b64decode(good[h.CALLER_SIG] + "=="))
    sig[7] ^= 0x01
    flipped = dict(good, **{h.CALLER_SIG: base64.urlsafe_b64encode(bytes(sig)).rstrip(b"=").decode()})
    under_another_key = dict(good, **{h.CALLER_KEY: Identity.from_seed(STRANGER).public_key})
    for_n2 = signed(OPS, node_subject(n1.prefix, "n2", "drain"), body)
    as_undrain = signed(OPS, node_subject(n1.prefix, "n1", "undrain"), body)
    expired = signed(OPS, subject, body, expires_ms=int(time.time() * 1000) - 1)
    too_long = signed(OPS, subject, body, expires_ms=int(time.time() * 1000) + 3_600_000)
    await refused("bad_signature", raw(anyone, subject, body, flipped))
    await refused("unknown_key", raw(anyone, subject, body, under_another_key))
    await refused("bad_signature", raw(anyone, subject, codec.encode({"x": 1}), good))  # another body
    await refused("bad_signature", raw(anyone, subject, body, for_n2))  # signed for n2, sent to n1
    await refused("bad_signature", raw(anyone, subject, body, as_undrain))  # signed for another op
    await refused("expired", raw(anyone, subject, body, expired))
    await refused("too_far", raw(anyone, subject, body, too_long))
    await refused("malformed", raw(anyone, subject, body, dict(good, **{h.CALLER_SIG: "x"})))
    assert not node_of(n1).draining

    # Replayed: a signed request runs once; its copy is refused until it expires.
    undrain = node_subject(n1.prefix, "n1", "undrain")
    once = signed(OPS, undrain, body)
    assert await raw(anyone, undrain, body, once) == {"node": "n1", "undrained": False}
    await refused("replayed", raw(anyone, undrain, body, once))

    # The trusted operator's mesh signs: migrate, drain and undrain work.
    moved = await ops.migrate("Counter/m", to="n2")
    assert (moved["from"], moved["to"], moved["moved"]) == ("n1", "n2", True)
    assert (await ops.drain("n2"))["moved"] == 1 and node_of(n2).draining
    assert owner((n1, n2), "Counter/m") == "n1"
    assert await ops.undrain("n2") == {"node": "n2", "undrained": True}
    await wait_for(lambda: all(n.live for n in node_of(n1).nodes()), timeout=5, what="n1 sees n2 undrained")
    assert await raw(anyone, subject, body, good) == {"node": "n1", "moved": 1, "stopped": 0}  # the genuine one
    await refused("replayed", raw(anyone, subject, body, good))
    assert await ops.undrain("n1") == {"node": "n1", "undrained": True}

    # Cluster nodes need no operator key: their requests carry the owner key's proof (the
    # rebalancer's migrate, a node's own mesh asking another node).
    assert owner((n1, n2), "Counter/m") == "n2"
    moved = await n1.migrate("Counter/m", to="n1")
    assert (moved["from"], moved["to"]) == ("n2", "n1")
    assert await n1.ref("Counter/m").call("add") == 1


def test_trusted_operators_are_validated() -> None:
    settings = ClusterSettings(trusted_operators=[OPS_KEY])
    assert set(settings.operators) == {OPS_KEY}
    assert dict(ClusterSettings().operators) == {}
    named = ClusterSettings(trusted_operators={OPS_KEY: "alice"})
    assert named.operators[OPS_KEY].name == "alice"
    for bad in (["not-a-key"], [OPS], [1], {OPS_KEY: "bad name!"}):
        with pytest.raises(ConfigurationError, match="trusted_operators"):
            ClusterSettings(trusted_operators=bad)  # type: ignore[arg-type]
