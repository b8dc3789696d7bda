"""Decoding bombs against a live host (security issue, "bounded decoding"): the costliest
crafted bodies per byte (tests/unit/test_codec_bounds.py has their shapes) sent plain and
compressed to a host in this process, whose peak RSS growth and answer time are measured;
and many costly but valid bodies at once, which the host's decode budget bounds."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import nats
import pytest

from natsagents import Agent, ClusterSettings, Mesh, NatsAgentsError, action
from natsagents.wire import codec
from natsagents.wire import headers as h
from natsagents.wire.ids import agent_key
from natsagents.wire.subjects import bucket_name
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
    for _ in range(4):  # each call asks for the activation again and again until its timeout
        with pytest.raises(NatsAgentsError, match=f"state of Counter/g is corrupt: .*{message}"):
            await node.ref("Counter/g").call("get", timeout=1.5)
    growth = peak.growth()
    print(f"garbage state of {maps} maps, 4 calls of 1.5 s: peak RSS +{growth:.1f} MiB")
    assert growth < 80, f"peak RSS grew {growth:.0f} MiB"
    assert await node.ref("Counter/h").call("add", by=2) == 2
