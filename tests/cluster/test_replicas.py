"""Read replicas and session consistency on cluster nodes (one real JetStream server,
three nodes in this process): replicas serve read-only actions and never writes, their
lag is bounded and observable, they follow migration and deactivation of the primary;
session reads never go back in time (read-your-writes, monotonic reads), also through a
token handed to another mesh; hostile min-versions and tokens are refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import nats
import nkeys
import pytest

from natsagents import Agent, ClusterSettings, Identity, InvalidSessionToken, Mesh, action
from natsagents.delivery.settings import DeliverySettings
from natsagents.errors import ActionDefinitionError
from natsagents.testing import wait_for
from natsagents.wire import codec, envelope
from natsagents.wire.ids import agent_key
from tests import node_process
from tests.cluster.test_cluster_node import _see_each_other, node_of, nodes, settings
from tests.integration.test_hostile_peer import RawConnection
from tests.node_process import SessionCounter


class Board(Agent):
    """A session kind with two read replicas."""

    kind = "Board"
    consistency = "session"
    read_replicas = 2
    session_wait = 0.1

    def initial_state(self) -> dict[str, Any]:
        return {"n": 0}

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] += by
        return int(self.state["n"])

    @action(read_only=True)
    async def get(self) -> int:
        return int(self.state["n"])


class Feed(Board):
    """An eventual kind with read replicas."""

    kind = "Feed"
    consistency = "eventual"
    flush_interval = 0.05


KINDS = (Board, Feed)


def metric(mesh: Mesh, name: str, labels: dict[str, str]) -> float:
    return mesh.metrics.value(name, labels)


def reads(meshes: list[Mesh], kind: str, outcome: str) -> float:
    return sum(metric(m, "natsagents_replica_reads_total", {"kind": kind, "outcome": outcome}) for m in meshes)


def handled(mesh: Mesh, kind: str, act: str) -> float:
    return metric(mesh, "natsagents_handled_total", {"kind": kind, "action": act, "outcome": "ok"})


def holders(meshes: list[Mesh], address: str) -> list[Mesh]:
    return [m for m in meshes if address in node_of(m).replicas.held()]


def owner(meshes: list[Mesh], address: str) -> Mesh:
    (m,) = [m for m in meshes if address in m.local_agents()]
    return m


async def three(mesh_factory: Any) -> tuple[list[Mesh], Mesh]:
    meshes = await nodes(mesh_factory, "n1", "n2", "n3", kinds=KINDS)
    client = await mesh_factory(name="client")
    return meshes, client


async def replicated(meshes: list[Mesh], address: str, count: int = 2) -> list[Mesh]:
    await wait_for(lambda: len(holders(meshes, address)) == count, timeout=10, what=f"{count} replicas of {address}")
    return holders(meshes, address)


async def test_replicas_serve_reads_and_never_writes(mesh_factory: Any, nats_url: str) -> None:
    meshes, client = await three(mesh_factory)
    ref = client.ref(Board, "b")
    assert await ref.call("add") == 1
    primary = owner(meshes, "Board/b")
    replicas = await replicated(meshes, "Board/b")
    assert primary not in replicas
    await wait_for(
        lambda: all(node_of(m).replicas.lag("Board", "b")["version"] > 0 for m in replicas),  # type: ignore[index]
        what="replicas loaded",
    )
    for _ in range(60):
        assert await ref.call("get") == 1
    served = reads(meshes, "Board", "served")
    assert served > 0, "no read reached a replica"
    assert sum(handled(m, "Board", "get") for m in replicas) == served  # counted where they ran
    for i in range(2, 22):
        assert await ref.call("add") == i
    assert all(handled(m, "Board", "add") == 0 for m in replicas)  # writes ran on the primary only
    assert handled(primary, "Board", "add") == 21
    # A write published on the read subject (a peer breaking the rule) is forwarded.
    nc = await nats.connect(nats_url)
    try:
        prefix = node_of(primary).prefix
        for _ in range(10):
            msg = await nc.request(
                f"{prefix}.read.Board.b", codec.encode({"by": 1}), headers={"Na-Action": "add"}, timeout=5
            )
            assert msg.headers is not None and msg.headers["Na-Status"] == "ok", msg.headers
    finally:
        await nc.close()
    assert all(handled(m, "Board", "add") == 0 for m in replicas)
    assert await ref.call("get") == 31


async def test_lag_is_bounded_and_observable(mesh_factory: Any) -> None:
    meshes, client = await three(mesh_factory)
    for cls in (Board, Feed):
        await _lag_shows_and_ends(meshes, client, cls, "l")


async def _lag_shows_and_ends(meshes: list[Mesh], client: Mesh, cls: type[Agent], aid: str) -> None:
    kind = cls.kind
    ref = client.ref(cls, aid)
    await ref.call("add")
    replicas = await replicated(meshes, f"{kind}/{aid}")
    rep = node_of(replicas[0]).replicas
    rep.hold(kind, aid, True)
    for _ in range(5):
        await ref.call("add")
    # Held back: the replica heard of newer versions and says for how long it has known.
    await wait_for(lambda: rep.lag(kind, aid)["lag"] > 0, timeout=3, what="lag shows")  # type: ignore[index]
    await wait_for(
        lambda: metric(replicas[0], "natsagents_replica_lag_seconds", {"kind": kind}) > 0, timeout=3, what="lag gauge"
    )
    rep.hold(kind, aid, False)
    assert await ref.call("get") == 6

    def current() -> bool:
        for m in replicas:
            info = node_of(m).replicas.lag(kind, aid)
            if info is None or info["lag"] != 0 or info["version"] != info["latest"]:
                return False
        return True

    await wait_for(current, timeout=5, what="replicas caught up after writes stopped")


async def test_session_reads_never_go_back_across_lagging_replicas(mesh_factory: Any) -> None:
    meshes, client = await three(mesh_factory)
    writer = client.ref(Board, "s")
    await writer.call("add")
    replicas = await replicated(meshes, "Board/s")
    for m in replicas:  # both replicas stop following: only the primary is current
        node_of(m).replicas.hold("Board", "s", True)
    session = client.session()
    ref = client.ref(Board, "s", session=session)
    stale = 0
    for i in range(2, 8):
        assert await ref.call("add") == i  # the session saw version v_i
        for _ in range(4):
            assert await ref.call("get") == i  # read-your-writes, wherever it is served
        for _ in range(4):  # a new session each time: no minimum version
            if await client.ref(Board, "s", session=client.session()).call("get") < i:
                stale += 1
    assert reads(meshes, "Board", "forwarded") > 0  # lagging replicas handed the session's reads on
    assert stale > 0, "a session-less caller should have seen the held replicas' old state"
    # Monotonic reads: one replica released, the other still held at version 1.
    node_of(replicas[0]).replicas.hold("Board", "s", False)
    reader = client.session()
    seen = 0
    for _ in range(40):
        value = await client.ref(Board, "s", session=reader).call("get")
        assert value >= seen, f"read went back in time: {value} after {seen}"
        seen = value
    assert seen == 7
    # The token carries the guarantee to another process.
    other = await mesh_factory(name="other")
    assert await ref.call("add") == 8
    for garbage in ("s1.garbage!", session.token()[:-3] + "@@@", "x" * 100_000):
        with pytest.raises(InvalidSessionToken):
            other.session(token=garbage)
    resumed = other.session(token=session.token())
    for _ in range(20):
        assert await other.ref(Board, "s", session=resumed).call("get") == 8


async def test_replicas_follow_migration_and_stop_on_deactivation(mesh_factory: Any) -> None:
    meshes, client = await three(mesh_factory)
    ref = client.ref(Board, "m")
    await ref.call("add")
    primary = owner(meshes, "Board/m")
    replicas = await replicated(meshes, "Board/m")
    target = replicas[0]
    await client.migrate(Board, "m", to=target.node_id or "")
    assert owner(meshes, "Board/m") is target

    def moved() -> bool:
        now = holders(meshes, "Board/m")
        return len(now) == 2 and target not in now

    await wait_for(moved, timeout=10, what="replicas re-placed around the new primary")
    assert primary in holders(meshes, "Board/m")
    assert await ref.call("add") == 2
    assert await ref.call("get") == 2
    assert await target.deactivate(Board, "m")
    await wait_for(lambda: holders(meshes, "Board/m") == [], timeout=10, what="replicas stopped")
    await wait_for(
        lambda: all(metric(m, "natsagents_read_replicas", {"kind": "Board"}) == 0 for m in meshes), what="gauges"
    )


async def test_replay_questions_on_the_read_subject_are_answered_by_replicas_too(
    mesh_factory: Any, nats_url: str
) -> None:
    """A replay question (``Na-Reply-Mode: replay``, protocol §7.5) may reach a replica
    through the read subject's queue group. The replica's host had no ``replay``: the
    question raised ``AttributeError`` in the subscription and was never answered (the
    fuzz's read target: 21 of 4,037 requests). Each is now answered from what the copy
    that got it knows: an id it never ran is ``unavailable`` + retry, "unknown"."""
    meshes, client = await three(mesh_factory)
    ref = client.ref(Board, "r")
    await ref.call("add")
    await replicated(meshes, "Board/r")
    prefix = node_of(meshes[0]).prefix
    nc = await nats.connect(nats_url)
    try:
        for _ in range(12):  # primary and replicas alike (one queue group)
            headers = {"Na-Action": "get", "Na-Reply-Mode": "replay", "Na-Msg-Id": envelope.new_message_id()}
            msg = await nc.request(f"{prefix}.read.Board.r", b"", headers=headers, timeout=5)
            assert msg.headers is not None and msg.headers["Na-Status"] == "unavailable", msg.headers
            body = codec.decode(msg.data)
            assert body["details"] == {"retry": True, "result": "unknown"}
    finally:
        await nc.close()
    assert await ref.call("get") == 1


async def test_malformed_requests_on_the_read_subject_are_answered_by_replicas_too(
    mesh_factory: Any, nats_url: str
) -> None:
    """Malformed header blocks on the read subject (the fuzz's ``bad-block-rand`` and
    ``bad-utf8``): whoever gets them, primary or replica, answers each (``bad_request``; a
    replica forwards what it does not run, the malformed block's marker included, and the
    primary refuses it). A write with a non-ASCII header value is run by the primary, as
    on its agent subject (§19.1), once per request."""
    meshes, client = await three(mesh_factory)
    ref = client.ref(Board, "m")
    await ref.call("add")
    await replicated(meshes, "Board/m")
    prefix = node_of(meshes[0]).prefix
    subject = f"{prefix}.read.Board.m".encode()
    blocks = [
        b"\x18J\x04l;\xed\n\x8b\x18\xc9\x1cc\xfe;\x87;",  # not a header block
        b"NATS/1.0\r\nNa-Action: \xff\xfe\r\nNa-Msg-Id: \xc3\r\n\r\n",  # not UTF-8
        b"NATS/1.0\r\nNa-Action: get\r\nNa-Caller: \xc3\xa9\xff\r\n\r\n",  # a value not ASCII
        b"NATS/1.0\r\nNa-Action: add\r\nNa-Caller: \xc3\xa9\r\n\r\n",  # a write, not ASCII
    ]
    nc = await nats.connect(nats_url)
    raw = await RawConnection.open(nats_url)
    try:
        replies: asyncio.Queue[Any] = asyncio.Queue()
        await nc.subscribe("_INBOX.readbad.>", cb=replies.put)
        await nc.flush()
        for i, block in enumerate(blocks):
            for j in range(6):  # primary and replicas alike (one queue group)
                await raw.hpub(subject, b"_INBOX.readbad.%d.%d" % (i, j), block, b"\x80")
                reply = await asyncio.wait_for(replies.get(), 5)
                assert reply.headers is not None and reply.headers.get("Na-Status") in ("bad_request", "ok"), (
                    block,
                    reply.headers,
                )
    finally:
        await raw.close()
        await nc.close()
    assert await ref.call("get") == 1 + 6  # the six writes, each run once


async def test_hostile_min_versions_are_refused_and_harm_no_one(mesh_factory: Any, nats_url: str) -> None:
    meshes, client = await three(mesh_factory)
    ref = client.ref(Board, "h")
    await ref.call("add")
    await replicated(meshes, "Board/h")
    prefix = node_of(meshes[0]).prefix
    nc = await nats.connect(nats_url)
    try:
        for bad in ("x", "-1", "1" * 20, "\uff11", "5x", "0x10"):
            for _ in range(6):  # reach primary and replicas alike
                msg = await nc.request(
                    f"{prefix}.read.Board.h", b"", headers={"Na-Action": "get", "Na-Min-Version": bad}
                )
                assert msg.headers is not None and msg.headers["Na-Status"] == "bad_request", (bad, msg.headers)
        # A forged, huge minimum is waited for (bounded), then the primary answers.
        msg = await nc.request(
            f"{prefix}.read.Board.h", b"", headers={"Na-Action": "get", "Na-Min-Version": "9" * 19}, timeout=5
        )
        assert msg.headers is not None and msg.headers["Na-Status"] == "ok"
        assert codec.decode(msg.data) == 1
    finally:
        await nc.close()
    assert await ref.call("get") == 1
    assert await ref.call("add") == 2


async def test_replica_options_are_checked() -> None:
    with pytest.raises(ActionDefinitionError, match="read_replicas needs consistency"):

        class Strong(Agent):
            read_replicas = 1

    with pytest.raises(ActionDefinitionError, match="read_replicas must be"):

        class TooMany(Agent):
            consistency = "session"
            read_replicas = 99

    with pytest.raises(ActionDefinitionError, match="persistence = 'action'"):

        class Manual(Agent):
            consistency = "session"
            persistence = "manual"


# -- the primary's node dies -------------------------------------------------------------

LEASE = 1.5


def doomed_node(nats_url: str, mesh_prefix: str) -> contextlib.AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """A node process hosting ``SessionCounter`` (tests.node_process), killed on exit."""
    options = {"kinds": ["SessionCounter"], "cluster": {"lease": LEASE, "delivery": None}}
    return node_process.running(nats_url, mesh_prefix, "doomed", options)


async def survivors(mesh_factory: Any) -> list[Mesh]:
    out = []
    for name in ("s1", "s2"):
        m = await mesh_factory(
            name=name, cluster=ClusterSettings(node_id=name, lease=LEASE, rebalance=False, delivery=None)
        )
        await m.host(SessionCounter)
        out.append(m)
    return out


async def test_replicas_follow_a_failover_when_the_primary_node_is_killed(
    mesh_factory: Any, nats_url: str, mesh_prefix: str
) -> None:
    async with doomed_node(nats_url, mesh_prefix) as proc:
        client = await mesh_factory(name="client")
        session = client.session()
        ref = client.ref(SessionCounter, "k", session=session)
        assert await ref.call("add", by=5) == 5  # lands on the only node: doomed
        meshes = await survivors(mesh_factory)
        await replicated(meshes, "SessionCounter/k")  # both survivors hold a replica
        proc.kill()
        await proc.wait()
        # The replicas keep answering reads while the owner's lease runs out …
        for _ in range(10):
            assert await ref.call("get", timeout=5) == 5
        # … a write takes the agent over on a survivor, and the replicas re-form around it.
        assert await ref.call("add", timeout=10) == 6
        new_owner = owner(meshes, "SessionCounter/k")
        await wait_for(lambda: holders(meshes, "SessionCounter/k") == [m for m in meshes if m is not new_owner])
        for _ in range(10):
            assert await ref.call("get") == 6


async def test_exactly_once_works_with_session_kinds(mesh_factory: Any) -> None:
    meshes = await nodes(mesh_factory, "n1", "n2", kinds=KINDS, delivery=DeliverySettings(partitions=2))
    client = await mesh_factory(name="client")
    session = client.session()
    ref = client.ref(Board, "x", session=session).with_options(delivery="exactly_once")
    for i in range(1, 6):
        assert await ref.call("add", timeout=10) == i
    assert session.version("Board", "x") > 0  # durable replies carry the version too
    assert await client.ref(Board, "x", session=session).call("get") == 5
    assert sum(handled(m, "Board", "add") for m in meshes) == 5


async def test_a_garbage_state_record_leaves_replicas_behind_not_wrong(mesh_factory: Any) -> None:
    meshes, client = await three(mesh_factory)
    ref = client.ref(Board, "g")
    await ref.call("add", by=7)
    replicas = await replicated(meshes, "Board/g")
    await wait_for(lambda: all(node_of(m).replicas.lag("Board", "g")["version"] > 0 for m in replicas))  # type: ignore[index]
    before = [node_of(m).replicas.lag("Board", "g")["version"] for m in replicas]  # type: ignore[index]
    await node_of(meshes[0]).state.bucket.put(agent_key("Board", "g"), b"\xc1 not a state record")
    for m in replicas:
        rep = node_of(m).replicas
        await wait_for(lambda rep=rep: rep.lag("Board", "g")["lag"] > 0, what="the garbage revision is heard of")  # type: ignore[misc,index]
    assert [node_of(m).replicas.lag("Board", "g")["version"] for m in replicas] == before  # type: ignore[index]
    for _ in range(10):  # replicas still answer with the last good state
        assert await client.ref(Board, "g", session=client.session()).call("get") == 7


class Vault(Board):
    """A replicated kind whose reads say who called (verified signatures)."""

    kind = "Vault"

    @action(read_only=True)
    async def who(self) -> str | None:
        return self.context.caller_identity


async def test_signed_reads_verify_on_replicas(mesh_factory: Any) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    public = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
    meshes = []
    for name in ("n1", "n2", "n3"):
        m = await mesh_factory(name=name, cluster=settings(name), trusted_callers={public: "reader"})
        await m.host(Vault)
        meshes.append(m)
    await _see_each_other(meshes)
    client = await mesh_factory(name="signed", identity=Identity.from_seed(seed))
    ref = client.ref(Vault, "v")
    await ref.call("add")
    await replicated(meshes, "Vault/v")
    for _ in range(30):
        assert await ref.call("who") == "reader"  # signed over the agent subject, verified everywhere
    assert reads(meshes, "Vault", "served") > 0
