"""Decoding bombs against a live host (security issue, "bounded decoding"): the costliest
crafted bodies per byte (tests/unit/test_codec_bounds.py has their shapes) sent plain and
compressed to a host in this process, whose peak RSS growth and answer time are measured;
and many costly but valid bodies at once, which the host's decode budget bounds."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import nats
import pytest

from natsagents import Agent, ClusterSettings, Mesh, NatsAgentsError, action
from natsagents.errors import JetStreamError
from natsagents.testing import wait_for
from natsagents.transport.jetstream import api_request
from natsagents.wire import codec
from natsagents.wire import headers as h
from natsagents.wire.ids import agent_key
from natsagents.wire.owner import owner_mac
from natsagents.wire.subjects import bucket_name, node_subject
from tests.agents import Counter, Typed
from tests.integration.test_decode_limits import PeakRss, still_serving, subject
from tests.unit.test_codec_bounds import announced, flat, open_path

MiB = 1024 * 1024
#: Largest plain body that fits a 1 MiB max_payload with our headers.
PLAIN = MiB - 4096


class Holder(Agent):
    """Holds the value it was sent until ``release`` is called (several handlers at once)."""

    max_concurrency = 16
    mailbox_size = 64

    async def on_start(self) -> None:
        self.gate = asyncio.Event()
        self.held: list[Any] = []

    @action
    async def hold(self, value: Any = None) -> int:
        self.held.append(value)
        try:
            await self.gate.wait()
        finally:
            self.held.remove(value)
        return len(value) if isinstance(value, list) else 0

    @action
    async def release(self) -> None:
        self.gate.set()


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def victim(mesh: Mesh) -> Mesh:
    await mesh.host(Counter, Typed, Holder)
    assert await mesh.ref("Counter/v").call("add", by=7) == 7
    await mesh.spawn(Counter, "w")
    await mesh.spawn(Typed, "t")
    await mesh.spawn(Holder, "h")
    return mesh


@pytest.fixture
def peak() -> PeakRss:
    return PeakRss()


def param(body: bytes) -> bytes:
    """``{"value": <body>}``: the body as the value of a parameter."""
    return b"\x81\xa5value" + body


#: (body, sent compressed, the answer's message): each costs ~8 KiB per byte (announced
#: arrays), or ~20-100 bytes per byte (objects), to a decoder that does not scan first.
LONGEST = codec.MAX_OBJECTS - 1
BOMBS = {
    "announced-plain-1MiB": (lambda: param(announced(PLAIN - 7, 1023, LONGEST)), False, "holds more than"),
    "announced-plain-256KiB": (lambda: param(announced(256 * 1024 - 7, 1023)), False, "ends inside a value"),
    "announced-deflate-4MiB": (lambda: param(announced(4 * MiB - 7, 1023, LONGEST)), True, "holds more than"),
    "open-strings-deflate-4MiB": (lambda: param(open_path(174_720, 8, b"\xa2ab")), True, "holds more than"),
    "nil-maps-deflate-4MiB": (lambda: param(flat(4 * MiB - 16, b"\x81\xc0\xc0")), True, "holds more than"),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
async def test_a_decoding_bomb_is_refused_quickly_and_cheaply(
    victim: Mesh, raw: Any, mesh_prefix: str, peak: PeakRss, bomb: str
) -> None:
    make, compressed, message = BOMBS[bomb]
    body = make()
    headers = {h.ACTION: "hold"}
    if compressed:
        body = zlib.compress(body, 9)
        headers[h.ENCODING] = h.ENCODING_DEFLATE
    assert len(body) <= PLAIN
    peak.start()
    started = time.perf_counter()
    reply = await raw.request(subject(mesh_prefix, "Holder.h"), body, headers=headers, timeout=10)
    took = time.perf_counter() - started
    growth = peak.growth()
    print(f"{bomb}: {len(body)} bytes sent, peak RSS +{growth:.1f} MiB, answered in {took:.3f} s")
    assert (reply.headers or {}).get(h.STATUS) == "bad_request"
    assert message in msgpack.unpackb(reply.data)["message"]
    assert took < 2, f"{bomb}: answered after {took:.2f} s"
    # What the body itself takes (up to 4 MiB inflated, a copy or two) and the scan; before
    # the scan these cost hundreds of MiB (docs/security.md, "Bounded decoding").
    assert growth < 30, f"{bomb}: peak RSS grew {growth:.0f} MiB"
    await still_serving(victim)


def costly_body(strings: int) -> bytes:
    """A valid ``hold`` body, compressed: an array of 2-character strings, each ~64 bytes
    once decoded (350,000: ~22 MiB from a 1 MiB msgpack body, 20 KiB compressed)."""
    return zlib.compress(param(flat(3 * strings, b"\xa2ab")), 9)


async def send_many(raw: Any, prefix: str, body: bytes, n: int) -> list[Any]:
    inboxes = [raw.new_inbox() for _ in range(n)]
    subs = [await raw.subscribe(inbox, max_msgs=1) for inbox in inboxes]
    headers = {h.ACTION: "hold", h.ENCODING: h.ENCODING_DEFLATE}
    for inbox in inboxes:
        await raw.publish(subject(prefix, "Holder.h"), body, reply=inbox, headers=headers)
    await raw.flush()
    return subs


async def test_costly_bodies_at_once_are_bounded_by_the_decode_budget(
    victim: Mesh, raw: Any, mesh_prefix: str, peak: PeakRss
) -> None:
    """Eight valid bodies of ~23 MiB decoded each, to handlers that hold them: the default
    budget (64 MiB) admits two at once and answers the rest ``overloaded`` at once."""
    budget = victim._host.decode_budget
    assert budget.limit == 64 * MiB and budget.held == 0
    body = costly_body(350_000)
    peak.start()
    subs = await send_many(raw, mesh_prefix, body, 8)
    refused = []
    for sub in subs[2:]:
        msg = await sub.next_msg(timeout=10)
        refused.append(msg)
    growth = peak.growth()
    print(f"8 costly bodies at once: peak RSS +{growth:.1f} MiB, {budget.held / MiB:.1f} MiB held")
    for msg in refused:
        assert (msg.headers or {}).get(h.STATUS) == "overloaded"
        details = msgpack.unpackb(msg.data)["details"]
        assert details["reason"] == "decode_budget" and details["retry_after"] > 0
    assert 2 * 22 * MiB < budget.held <= budget.limit
    # Two held (~46 MiB) and one being decoded; eight at once would take ~185 MiB.
    assert growth < 110, f"peak RSS grew {growth:.0f} MiB"
    await victim.ref("Holder/h").call("release")
    for sub in subs[:2]:
        msg = await sub.next_msg(timeout=10)
        assert (msg.headers or {}).get(h.STATUS) == "ok"
        assert msgpack.unpackb(msg.data) == 350_000
    assert budget.held == 0
    # Room again: one more is admitted and runs (the gate stays open now).
    assert await victim.ref("Holder/h").call("hold", value=["ab"] * 40_000) == 40_000
    await still_serving(victim)


async def test_the_budget_always_admits_one_body_and_counts_only_long_ones(
    victim: Mesh, raw: Any, mesh_prefix: str
) -> None:
    budget = victim._host.decode_budget
    budget.limit = 1  # nothing fits beside another body
    subs = await send_many(raw, mesh_prefix, costly_body(30_000), 2)  # 90 KB each: counted
    msg = await subs[1].next_msg(timeout=10)
    assert (msg.headers or {}).get(h.STATUS) == "overloaded"
    assert budget.held > 30_000 * codec.OBJECT_BYTES
    # Bodies up to codec.LONG_BODY (64 KiB) are not counted: they run beside the held one.
    for value in (["ab"] * 10, ["ab"] * 20_000):
        echo = await raw.request(
            subject(mesh_prefix, "Counter.w"), msgpack.packb({"value": value}), headers={h.ACTION: "echo"}, timeout=10
        )
        assert (echo.headers or {}).get(h.STATUS) == "ok" and msgpack.unpackb(echo.data) == value
    await victim.ref("Holder/h").call("release")
    msg = await subs[0].next_msg(timeout=10)
    assert (msg.headers or {}).get(h.STATUS) == "ok" and msgpack.unpackb(msg.data) == 30_000
    assert budget.held == 0


# -- garbage in the state bucket ------------------------------------------------------------


@pytest.mark.parametrize(("maps", "message"), [(400_000, "epoch None"), (600_000, "holds more than")])
async def test_a_garbage_state_record_costs_nothing_lasting(
    mesh_factory: Any, raw: Any, mesh_prefix: str, peak: PeakRss, maps: int, message: str
) -> None:
    """Anyone who may write the state bucket may put garbage there (the fuzz does: seed
    3626751743 drove a host to 942 MiB). Each activation of the agent reads it and fails;
    the garbage (400,000 empty maps: ~30 MiB decoded) must not outlive the failure, however
    often it is tried (a caller asks again until its deadline), and a record beyond the
    limit is not built at all."""
    node: Mesh = await mesh_factory(
        name="g1", cluster=ClusterSettings(node_id="g1", lease=1.5, rebalance=False, delivery=None)
    )
    await node.host(Counter)
    kv = await raw.jetstream().key_value(bucket_name(mesh_prefix, "state"))
    await kv.put(agent_key("Counter", "g"), param(flat(maps, b"\x80")))
    peak.start()
    # Each call asks for the activation again and again until its timeout; 3 s leaves room
    # for one decode of the garbage on a loaded machine (1.5 s timed out before the first).
    for _ in range(2):
        with pytest.raises(NatsAgentsError, match=f"state of Counter/g is corrupt: .*{message}"):
            await node.ref("Counter/g").call("get", timeout=3.0)
    growth = peak.growth()
    print(f"garbage state of {maps} maps, 2 calls of 3 s: peak RSS +{growth:.1f} MiB")
    assert growth < 80, f"peak RSS grew {growth:.0f} MiB"
    assert await node.ref("Counter/h").call("add", by=2) == 2


async def test_a_failed_state_load_is_freed_at_once_not_by_the_cyclic_collector(
    mesh_factory: Any, raw: Any, mesh_prefix: str
) -> None:
    """What kept failed state loads alive (the long fuzz's RSS, security.md): ``Host.activate``
    kept the future it shares with concurrent activations in its frame, the future held the
    failure and the failure's traceback held that frame: a cycle, so every activation
    attempt's frames (the record's bytes, up to ``max_payload``; before 08d2396 the decoded
    record) lived until the cyclic collector's next full run, which a host with many
    long-lived objects seldom makes. A caller's ``no host`` error and every error reply
    (``envelope.parse_reply``) made the same cycle with their frames. Counted with the
    collector off: no failure may outlive the call that saw it."""
    node: Mesh = await mesh_factory(
        name="g1", cluster=ClusterSettings(node_id="g1", lease=1.5, rebalance=False, delivery=None)
    )
    await node.host(Counter)
    kv = await raw.jetstream().key_value(bucket_name(mesh_prefix, "state"))
    await kv.put(agent_key("Counter", "g"), param(flat(50_000, b"\x80")))  # 50 KB, decodes
    assert await node.ref("Counter/h").call("add", by=1) == 1
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(2):  # each call asks for the activation again until its timeout
            with pytest.raises(NatsAgentsError, match="state of Counter/g is corrupt") as failed:
                await node.ref("Counter/g").call("get", timeout=1.5)
            del failed
        held = tracemalloc.get_traced_memory()[0] - base
        alive = [o for o in gc.get_objects() if isinstance(o, BaseException) and "is corrupt" in str(o)]
    finally:
        tracemalloc.stop()
        gc.enable()
    print(f"2 calls over a garbage state record: {len(alive)} failures alive, {held / MiB:.1f} MiB still traced")
    assert not alive, f"{len(alive)} failures kept alive: {[type(e).__name__ for e in alive][:6]}"
    assert held < 1 * MiB
    del alive
    assert await node.ref("Counter/h").call("add", by=1) == 2


# -- the other decode sites: control requests, registry records, JetStream API answers ------


@pytest.fixture
async def node(mesh_factory: Any) -> Mesh:
    mesh: Mesh = await mesh_factory(
        name="b1", cluster=ClusterSettings(node_id="b1", lease=1.5, rebalance=False, delivery=None)
    )
    await mesh.host(Counter, Typed)
    assert await mesh.ref("Counter/v").call("add", by=7) == 7
    return mesh


def adopt_bomb(maps: int) -> bytes:
    """An ``adopt`` request whose migration snapshot (``transfer.data``) is ``maps`` empty
    maps (~70 bytes each once built: 600,000 would be ~42 MiB)."""
    head = msgpack.packb({"kind": "Counter", "id": "bomb", "transfer": {"revision": 0, "epoch": 1, "data": None}})
    assert head.endswith(b"\xa4data\xc0")
    return head[:-1] + flat(maps, b"\x80")


@pytest.mark.parametrize("signed", [False, True], ids=["outsider", "node-key"])
async def test_a_forged_migration_snapshot_is_refused_within_the_decode_bounds(
    node: Mesh, raw: Any, mesh_prefix: str, peak: PeakRss, signed: bool
) -> None:
    """A migration snapshot comes from a peer node (``adopt`` on the node control subject,
    protocol §12): an outsider is refused before its body is decoded; even a node holding
    the owner key (a compromised peer) gets ``bad_request`` without the snapshot being built."""
    target = node_subject(mesh_prefix, "b1", "adopt")
    body = adopt_bomb(600_000)
    headers: dict[str, str] = {}
    if signed:
        key = node.cluster_node.owner_key
        assert key is not None
        headers[h.OWNER_MAC] = owner_mac(key, target, headers, body)
    peak.start()
    started = time.perf_counter()
    reply = await raw.request(target, body, headers=headers, timeout=10)
    took, growth = time.perf_counter() - started, peak.growth()
    status = (reply.headers or {}).get(h.STATUS)
    print(f"forged adopt ({len(body)} B, {'signed' if signed else 'unsigned'}): {status}, peak RSS +{growth:.1f} MiB")
    assert status == ("bad_request" if signed else "unauthorized")
    if signed:
        assert "holds more than" in msgpack.unpackb(reply.data)["message"]
    assert took < 2 and growth < 20, f"{took:.2f} s, peak RSS +{growth:.0f} MiB"
    assert await node.ref("Counter/v").call("get") == 7
    assert "Counter/bomb" not in {f"{a.kind}/{a.agent_id}" for a in node._host.activations.values()}


REGISTRY_KEYS = {
    "directory": ("directory", agent_key("Counter", "v2")),
    "membership": ("members", "ghost"),
    "rebalancer": ("control", "rebalancer"),
}


@pytest.mark.parametrize("record", list(REGISTRY_KEYS))
async def test_a_bomb_in_a_registry_record_is_ignored_within_the_decode_bounds(
    mesh_factory: Any, raw: Any, mesh_prefix: str, peak: PeakRss, record: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone who may write a control bucket may put a bomb there: the node's watches and
    reads decode it within ``codec``'s bounds, ignore it (a garbage leader key is taken
    over), and keep working."""
    caplog.set_level(logging.DEBUG, logger="natsagents")
    node: Mesh = await mesh_factory(
        name="r1", cluster=ClusterSettings(node_id="r1", lease=1.0, rebalance=record == "rebalancer", delivery=None)
    )
    await node.host(Counter)
    assert await node.ref("Counter/v").call("add", by=7) == 7
    name, key = REGISTRY_KEYS[record]
    kv = await raw.jetstream().key_value(bucket_name(mesh_prefix, name))
    peak.start()
    await kv.put(key, flat(600_000, b"\x80"))  # 600 KB: ~42 MiB if it were built
    assert await node.ref("Counter/v2").call("add", by=3) == 3  # reads its directory record
    if record == "rebalancer":

        async def taken_over() -> bool:
            return bytes((await kv.get(key)).value) == msgpack.packb("r1")  # not decoded here

        await wait_for(taken_over, timeout=5, what="the garbage leader key taken over")
    else:
        await node.cluster_node.membership.beat_now()
        await wait_for(
            lambda: any(f"under {key!r}: msgpack body holds more than" in r.getMessage() for r in caplog.records),
            what=f"the {record} bomb refused",
        )
    growth = peak.growth()
    print(f"bomb in the {record} record (600,000 empty maps, 600 KB): peak RSS +{growth:.1f} MiB")
    assert growth < 20, f"peak RSS grew {growth:.0f} MiB"
    assert await node.ref("Counter/v").call("add", by=1) == 8


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "not JSON"),  # deeper than the JSON parser recurses
        (b"\xff\xfe{", "not JSON"),
        (b"[" + b"[]," * 340_000 + b"[]]", "holds more than 262144 JSON values"),  # 1 MiB: was +26 MiB
    ],
    ids=["deep", "not-utf8", "many-lists"],
)
async def test_a_forged_jetstream_api_answer_is_a_typed_error(
    nats_url: str, raw: Any, connect: Any, peak: PeakRss, answer: bytes, message: str
) -> None:
    """JetStream API answers are JSON from the server, read from our own inbox; whoever
    could publish there (a user allowed ``_INBOX.>``) gets a typed ``JetStreamError``, not
    a ``RecursionError`` out of the client, at a bounded cost."""
    transport = await connect(nats_url)

    async def forged(msg: Any) -> None:
        await raw.publish(msg.reply, answer)

    await raw.subscribe("$JS.API.FORGED.INFO", cb=forged)
    await raw.flush()
    peak.start()
    with pytest.raises(JetStreamError, match=message):
        await api_request(transport, "$JS.API.FORGED.INFO", None, 5.0)
    growth = peak.growth()
    print(f"forged JetStream API answer ({len(answer)} B): peak RSS +{growth:.1f} MiB")
    assert growth < 5, f"peak RSS grew {growth:.0f} MiB"
