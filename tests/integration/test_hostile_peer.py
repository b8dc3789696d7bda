"""A hostile peer on the NATS account against a live cluster node (security issue, the
critical findings): raw-protocol header blocks that used to wedge a host, reply subjects
that used to make a host write where the sender may not, owner-only headers sent by a
caller, and message ids guessed from one seen id.

Every test here failed on the code before the fix; each says how in its docstring."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import msgpack
import nats
import pytest

from natsagents import BadRequest, ClusterSettings, Mesh
from natsagents.delivery.settings import DeliverySettings
from natsagents.testing import wait_for
from natsagents.wire import envelope
from natsagents.wire.subjects import agent_subject, bucket_name, durable_subject, node_subject
from tests.agents import Counter

FAST = DeliverySettings(partitions=2, max_deliver=3, backoff=(0.02,), ack_wait=5.0, attempt_timeout=5.0)

#: Header blocks nats-py's parser used to throw on inside its read loop (the loop ended,
#: the socket stayed open: a deaf queue member). The first is the 15-byte block of the report.
BAD_BLOCKS = [
    b"NATS/1.0 \xff\xfe\r\n\r\n",
    b"NATS\r\n\r\n",
    b"NA\r\n",
    b"\r\n",
    b"NATS/1.0 4\xff4 \xfe\r\n\r\n",
    b"NATS/1.0 100 \xff\xfe\r\nX: \xff\r\n\r\n",
    b"NATS/1.0\r\n\xff\xfe: \xff\xfe\r\n\r\n",
    b"XXXX/9.9\r\nNa-Action: add\r\n\r\n",
    b"NATS/1.0 \r\n\r\n",
]


async def a_node(mesh_factory: Any, name: str = "n1") -> Mesh:
    node = await mesh_factory(
        name=name, cluster=ClusterSettings(node_id=name, lease=1.5, rebalance=False, delivery=FAST)
    )
    await node.host(Counter)
    return node


class RawConnection:
    """A NATS client written by hand: sends protocol lines as they are, no validation."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> RawConnection:
        parsed = urlparse(url)
        reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n')
        return cls(reader, writer)

    async def hpub(self, subject: bytes, reply: bytes, block: bytes, payload: bytes = b"") -> None:
        total = len(block) + len(payload)
        self.writer.write(b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject, reply, len(block), total, block, payload))
        await self.flush()

    async def flush(self) -> None:
        self.writer.write(b"PING\r\n")
        await self.writer.drain()
        while True:  # the server answers in order: once PONG comes, it has routed the rest
            line = await asyncio.wait_for(self.reader.readline(), 5)
            assert line, "the server closed the raw connection"
            if line.startswith(b"PONG"):
                return
            assert not line.startswith(b"-ERR"), line

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[RawConnection]:
    conn = await RawConnection.open(nats_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def sniffer(nats_url: str) -> AsyncIterator[Any]:
    """A plain nats-py client for the replies the hostile messages ask for."""
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


# -- 1. one message must not wedge a host ---------------------------------------------------


async def test_malformed_header_blocks_are_answered_one_by_one_and_wedge_nothing(
    mesh_factory: Any, mesh_prefix: str, raw: RawConnection, sniffer: Any
) -> None:
    """Before: the first block ended the host's read loop; 0 of the calls after it were
    answered (CallTimeout) until a ping timeout minutes later."""
    node = await a_node(mesh_factory)
    caller = await mesh_factory(name="caller")
    assert await caller.ref("Counter/victim").call("add") == 1
    replies: asyncio.Queue[Any] = asyncio.Queue()
    sub = await sniffer.subscribe("_INBOX.hostile.>", cb=replies.put)
    await sniffer.flush()
    subject = agent_subject(mesh_prefix, "Counter", "victim").encode()
    for i, block in enumerate(BAD_BLOCKS):
        await raw.hpub(subject, b"_INBOX.hostile.%d" % i, block, msgpack.packb({"by": 100}))
        reply = await asyncio.wait_for(replies.get(), 5)  # the bad message itself is answered
        assert reply.headers["Na-Status"] == "bad_request", (block, reply.headers)
        # and the host goes on: this call would time out on a wedged host
        assert await caller.ref("Counter/victim").call("add", timeout=3) == i + 2
        assert await caller.ref(f"Counter/other-{i}").call("add", timeout=3) == 1
    await sub.unsubscribe()
    assert node.local_agent("Counter/victim").state["n"] == len(BAD_BLOCKS) + 1  # none of the bad ones ran


async def test_a_malformed_block_to_a_caller_inbox_does_not_deafen_the_caller(
    mesh_factory: Any, mesh_prefix: str, raw: RawConnection
) -> None:
    """The node's control subject and the activation subject (and every other
    subscription: one read loop) read headers the same way: a bad block to any of them
    drops or refuses only that message."""
    node = await a_node(mesh_factory)
    for subject in (
        node_subject(mesh_prefix, "n1", "info"),
        f"{mesh_prefix}.activate.Counter",
    ):
        for block in BAD_BLOCKS:
            await raw.hpub(subject.encode(), b"", block, b"\xc1")
    assert await node.ref("Counter/c").call("add", timeout=3) == 1
    assert [n.record.node_id for n in await node.nodes()] == ["n1"]


# -- 2. replies go only where replies belong --------------------------------------------------


async def test_a_reply_subject_outside_the_inbox_is_refused_and_the_message_not_run(
    mesh_factory: Any, mesh_prefix: str, sniffer: Any
) -> None:
    """Before: the host published its reply to ``$KV.<state>.Counter.victim-b`` with its
    own rights (that agent's state became "corrupt"), and a reply subject
    ``<prefix>.node.n1.drain`` drained the node."""
    node = await a_node(mesh_factory)
    caller = await mesh_factory(name="caller")
    b = caller.ref("Counter/victim-b")
    assert await b.call("add", by=7) == 7
    assert await caller.ref("Counter/victim").call("add") == 1
    state_subject = f"$KV.{bucket_name(mesh_prefix, 'state')}.Counter.victim-b"
    hostile = [
        state_subject,
        node_subject(mesh_prefix, "n1", "drain"),
        agent_subject(mesh_prefix, "Counter", "victim-b"),
        "$JS.API.STREAM.DELETE.KV_" + bucket_name(mesh_prefix, "state"),
        "_INBOX.*",
        "_INBOX.>",
        "_INBOX..x",
    ]
    headers = {"Na-Proto": "1", "Na-Action": "add"}
    for reply in hostile:
        await sniffer.publish(
            agent_subject(mesh_prefix, "Counter", "victim"), msgpack.packb({"by": 100}), reply=reply, headers=headers
        )
        await sniffer.publish(
            f"{mesh_prefix}.activate.Counter", msgpack.packb({"id": "fresh"}), reply=reply, headers=headers
        )
        await sniffer.publish(node_subject(mesh_prefix, "n1", "info"), b"", reply=reply)
    await sniffer.flush()
    # A good request after the bad ones: once it is answered, the bad ones were seen.
    assert await caller.ref("Counter/victim").call("add", timeout=3) == 2  # none of the +100s ran
    assert await b.call("add", timeout=3) == 8  # its state was not overwritten
    stored = await node.cluster_node.state.load("Counter", "victim-b")
    assert stored.data == {"n": 8}
    assert not node.cluster_node.draining
    assert node.local_agent("Counter/fresh") is None  # the activation request was not run either
    assert node.transport.refused_replies >= 3 * len(hostile) - 2  # counted (a dropped info has no reply)


async def test_a_durable_message_naming_a_foreign_reply_subject_is_dead_lettered_unrun(
    mesh_factory: Any, mesh_prefix: str, sniffer: Any
) -> None:
    """Before: the partition owner published the agent's answer to the ``Na-Reply-To`` a
    caller put in the stored message: the same state overwrite with one publish."""
    node = await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    b = client.ref("Counter/victim-b")
    assert await b.call("add", by=7) == 7
    js = sniffer.jetstream()
    reply_to = f"$KV.{bucket_name(mesh_prefix, 'state')}.Counter.victim-b"
    headers = {
        "Na-Proto": "1",
        "Na-Action": "add",
        "Na-Msg-Id": envelope.new_message_id(),
        "Na-Delivery": "at_least_once",
        "Na-Reply-To": reply_to,
    }
    await js.publish(durable_subject(mesh_prefix, "Counter", "victim"), msgpack.packb({"by": 100}), headers=headers)
    letters: list[Any] = []

    async def dead() -> bool:
        letters[:] = await client.dead_letters()
        return bool(letters)

    await wait_for(dead, timeout=10, what="dead letter")
    assert [(x.error, x.deliveries) for x in letters] == [("bad_request", 1)]
    assert "Na-Reply-To" in letters[0].reason
    assert await b.call("get") == 7
    assert await client.ref("Counter/victim").call("get") == 0
    assert (await node.cluster_node.state.load("Counter", "victim-b")).data == {"n": 7}


# -- 4. only partition owners speak for the stream ---------------------------------------------


async def test_a_caller_cannot_poison_exactly_once_with_a_stream_sequence(
    mesh_factory: Any, mesh_prefix: str, sniffer: Any
) -> None:
    """Before: a core request with ``Na-Stream-Seq: 999999999999999999`` was applied and
    stored, and every later exactly-once message to the agent was ``already_applied``."""
    await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    ref = client.ref("Counter/eo").with_options(delivery="exactly_once")
    assert await ref.call("add", timeout=10) == 1
    subject = agent_subject(mesh_prefix, "Counter", "eo")
    forged = {
        "Na-Proto": "1",
        "Na-Action": "add",
        "Na-Msg-Id": envelope.new_message_id(),
        "Na-Delivery": "exactly_once",
        "Na-Stream-Seq": "999999999999999999",
    }
    reply = await sniffer.request(subject, msgpack.packb({"by": 100}), headers=forged, timeout=5)
    assert reply.headers["Na-Status"] == "unauthorized"
    forged["Na-Owner-Mac"] = "0" * 32  # a made-up proof is no better
    reply = await sniffer.request(subject, msgpack.packb({"by": 100}), headers=forged, timeout=5)
    assert reply.headers["Na-Status"] == "unauthorized"
    # A forged batch whose item carries the sequence: refused whole.
    item = [{k: v for k, v in forged.items() if k != "Na-Owner-Mac"}, msgpack.packb({"by": 100})]
    batch = {"Na-Proto": "1", "Na-Batch": "1", "Na-Msg-Id": envelope.new_message_id()}
    reply = await sniffer.request(subject, msgpack.packb([item]), headers=batch, timeout=5)
    assert reply.headers["Na-Status"] == "unauthorized"
    for expected in range(2, 7):
        assert await ref.call("add", timeout=10) == expected  # still applied, once each


async def test_a_stored_message_cannot_carry_a_batch(mesh_factory: Any, mesh_prefix: str, sniffer: Any) -> None:
    """A caller's durable message with ``Na-Batch``: the owner would have signed the
    caller's items (and their stream sequences) as its own. Dead-lettered unrun."""
    await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    ref = client.ref("Counter/eo").with_options(delivery="exactly_once")
    assert await ref.call("add", timeout=10) == 1
    item = [
        {"Na-Proto": "1", "Na-Action": "add", "Na-Delivery": "exactly_once", "Na-Stream-Seq": "999999999999"},
        msgpack.packb({"by": 100}),
    ]
    headers = {"Na-Proto": "1", "Na-Action": "add", "Na-Batch": "1", "Na-Msg-Id": envelope.new_message_id()}
    await sniffer.jetstream().publish(
        durable_subject(mesh_prefix, "Counter", "eo"), msgpack.packb([item]), headers=headers
    )
    letters: list[Any] = []

    async def dead() -> bool:
        letters[:] = await client.dead_letters()
        return bool(letters)

    await wait_for(dead, timeout=10, what="dead letter")
    assert [(x.error, "Na-Batch" in x.reason) for x in letters] == [("bad_request", True)]
    assert await ref.call("add", timeout=10) == 2


# -- 5. unguessable ids --------------------------------------------------------------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _predicted(seen: str, ahead: int) -> str:
    """The id ``ahead`` places after ``seen`` under the old scheme (a 12-character
    per-process prefix, then a little-endian base64url counter)."""
    n = sum(_B64.index(c) << (6 * i) for i, c in enumerate(seen[12:])) + ahead
    return seen[:12] + "".join(_B64[(n >> (6 * i)) & 63] for i in range(10))


def test_message_ids_carry_128_random_bits_and_do_not_follow_each_other() -> None:
    """Before: consecutive ids shared a 72-bit prefix and counted up."""
    ids = [envelope.new_message_id() for _ in range(4000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 22 and envelope.is_message_id(i) for i in ids)
    assert sum(a[:4] == b[:4] for a, b in itertools.pairwise(ids)) < 5
    assert not any(_predicted(a, 1) == b for a, b in itertools.pairwise(ids))
    raw = [base64.urlsafe_b64decode(i + "==") for i in ids]
    for bit in range(128):  # every bit is a coin: set in about half of the ids
        ones = sum((r[bit // 8] >> (bit % 8)) & 1 for r in raw)
        assert 1700 < ones < 2300, bit


async def test_pre_sent_guessed_ids_do_not_poison_a_victims_calls(
    mesh_factory: Any, mesh_prefix: str, sniffer: Any
) -> None:
    """Before: an attacker who saw one id pre-sent the next 30 with ``add(by=0)``; the
    victim's five ``add(by=100)`` calls all got the attacker's cached reply and the
    counter did not move."""
    await a_node(mesh_factory)
    victim = await mesh_factory(name="victim")
    ref = victim.ref("Counter/bank")
    assert await ref.call("add", by=0) == 0
    seen = envelope.new_message_id()  # one id of this process, as a sniffer would see it
    subject = agent_subject(mesh_prefix, "Counter", "bank")
    for ahead in range(1, 31):
        headers = {"Na-Proto": "1", "Na-Action": "add", "Na-Msg-Id": _predicted(seen, ahead)}
        await sniffer.request(subject, msgpack.packb({"by": 0}), headers=headers, timeout=5)
    results = [await ref.call("add", by=100) for _ in range(5)]
    assert results == [100, 200, 300, 400, 500]


async def test_refused_replies_are_counted_and_logged_once_a_second(
    mesh_factory: Any, mesh_prefix: str, sniffer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    node = await a_node(mesh_factory)
    assert await node.ref("Counter/x").call("add") == 1
    before = node.transport.refused_replies
    started = time.monotonic()
    for _ in range(200):
        await sniffer.publish(
            agent_subject(mesh_prefix, "Counter", "x"), b"", reply="$KV.x.y", headers={"Na-Action": "add"}
        )
    await sniffer.flush()
    assert await node.ref("Counter/x").call("add") == 2
    assert node.transport.refused_replies - before == 200
    warnings = [r for r in caplog.records if "reply subject" in r.getMessage()]
    assert 1 <= len(warnings) <= 2 + int(time.monotonic() - started)


async def test_a_message_id_used_by_another_caller_does_not_hand_over_its_reply(
    mesh_factory: Any, mesh_prefix: str, sniffer: Any
) -> None:
    """Dedup is keyed by the request, not the id alone. Before: a caller who used a
    victim's (chosen or guessed) message id first made the victim's call return the
    caller's stored reply, its own never run."""
    await a_node(mesh_factory)
    victim = await mesh_factory(name="victim")
    ref = victim.ref("Counter/till")
    assert await ref.call("add", by=5) == 5
    subject = agent_subject(mesh_prefix, "Counter", "till")
    headers = {"Na-Proto": "1", "Na-Action": "add", "Na-Msg-Id": "payment-42"}
    reply = await sniffer.request(subject, msgpack.packb({"by": 0}), headers=headers, timeout=5)
    assert reply.headers["Na-Status"] == "ok" and msgpack.unpackb(reply.data) == 5
    with pytest.raises(BadRequest, match="used for another request"):
        await ref.with_options(message_id="payment-42").call("add", by=100)
    # A genuine copy (same request, same id) still gets the first reply and runs nothing.
    again = await sniffer.request(subject, msgpack.packb({"by": 0}), headers=headers, timeout=5)
    assert again.headers["Na-Status"] == "ok" and msgpack.unpackb(again.data) == 5
    assert await ref.call("get") == 5


async def test_node_only_control_operations_refuse_an_outsider(
    mesh_factory: Any, mesh_prefix: str, sniffer: Any
) -> None:
    """``adopt`` carries an agent's state and ``activate`` places an agent: only a cluster
    node (signing with the owner key) may ask. Before: any peer's ``adopt`` with a forged
    transfer was taken."""
    node = await a_node(mesh_factory)
    ref = node.ref("Counter/vault")
    assert await ref.call("add", by=5) == 5
    forged = {"kind": "Counter", "id": "vault", "strategy": "state_transfer", "transfer": {"data": {"n": 10**6}}}
    for op, body in (("adopt", forged), ("activate", {"kind": "Counter", "id": "elsewhere"})):
        reply = await sniffer.request(
            node_subject(mesh_prefix, "n1", op), msgpack.packb(body), headers={"Na-Proto": "1"}, timeout=5
        )
        assert reply.headers["Na-Status"] == "unauthorized", (op, reply.headers)
    assert await ref.call("get") == 5
    assert node.local_agent("Counter/elsewhere") is None
