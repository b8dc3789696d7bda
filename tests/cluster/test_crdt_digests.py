"""Digests and hellos of crdt copies (protocol §21.4), against one real JetStream server,
with a raw NATS connection playing the peer: a digest lacking something of ours is answered
at once with the delta it lacks (only the keys it has not seen); a digest showing we lack
something is answered with our digest; a hostile digest is dropped and counted; a hello
from a node not heard for a second is echoed and answered with digests, a second one
within the second is not."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest

from natsagents.cluster.crdt_sync import HELLO
from natsagents.crdt import CausalContext, ORMap
from natsagents.testing import wait_for
from natsagents.wire import codec
from natsagents.wire import headers as h
from natsagents.wire.subjects import crdt_subject
from tests.cluster.test_cluster_node import nodes
from tests.cluster.test_crdt_mode import KINDS, copy_state, value_on


def _digest(cc: CausalContext) -> bytes:
    return codec.encode({"t": "ormap", "cc": cc.to_obj()})


async def _peer(nats_url: str, subject: str) -> tuple[Any, asyncio.Queue[Any]]:
    raw = await nats.connect(nats_url)
    got: asyncio.Queue[Any] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        if (msg.headers or {}).get(h.CRDT_NODE) == "n1":
            await got.put(msg)

    await raw.subscribe(subject, cb=on_msg)
    await raw.flush()
    return raw, got


async def test_a_digest_is_answered_with_what_it_lacks_or_with_ours(
    mesh_factory: Any, nats_url: str, mesh_prefix: str
) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    for key in ("a", "b", "c"):
        await n1.ref("Tags/d").call("tag", key=key, tag="x")
    mine = copy_state(n1, "Tags", "d")
    subject = crdt_subject(mesh_prefix, "Tags", "d")
    raw, got = await _peer(nats_url, subject)
    try:
        # A peer that has seen keys a and b (the first two dots) lacks only c: the answer is
        # a plain delta holding c alone, and merged into the peer it gives the whole state.
        replica = next(iter(mine.context.vv))
        seen = CausalContext({replica: 2})
        peer: ORMap[Any] = ORMap.from_obj(
            {**mine.to_obj(), "e": [e for e in mine.to_obj()["e"] if e[0] != "c"], "cc": seen.to_obj()}
        )
        await raw.publish(subject, _digest(seen), headers={h.CRDT_NODE: "peer", h.CRDT_DIGEST: "1"})
        answer = await asyncio.wait_for(got.get(), 5)
        assert (answer.headers or {}).get(h.CRDT_WHOLE) is None  # a delta, not the whole state
        delta: ORMap[Any] = ORMap.from_wire(answer.data)
        assert set(delta.value) == {"c"}
        assert peer.merge(delta) == mine
        # A peer holding a dot we lack (and everything of ours): our digest, nothing else.
        ahead = mine.context.union(CausalContext({"peer:1": 1}))
        await raw.publish(subject, _digest(ahead), headers={h.CRDT_NODE: "peer", h.CRDT_DIGEST: "1"})
        ours = await asyncio.wait_for(got.get(), 5)
        assert (ours.headers or {}).get(h.CRDT_DIGEST) == "1"
        assert CausalContext.from_obj(codec.decode(ours.data)["cc"]) == mine.context
        # Hostile digests: dropped and counted, the copy unchanged, still answering.
        metrics = n1.metrics
        for bad in (b"\xc1", codec.encode([1]), codec.encode({"t": "orset", "cc": {}}), codec.encode({"t": "ormap"})):
            await raw.publish(subject, bad, headers={h.CRDT_NODE: "peer", h.CRDT_DIGEST: "1"})
        await wait_for(
            lambda: (metrics.value("natsagents_crdt_deltas_total", {"kind": "Tags", "outcome": "dropped"}) or 0) >= 4,
            what="dropped",
        )
        assert copy_state(n1, "Tags", "d") == mine
        assert got.empty()
    finally:
        await raw.close()


async def test_a_hello_from_a_new_node_is_echoed_and_answered_with_digests(
    mesh_factory: Any, nats_url: str, mesh_prefix: str
) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    await n1.ref("Tags/h").call("tag", key="k", tag="x")
    await wait_for(lambda: value_on(n1, "Tags", "h") is not None, what="copy")
    raw, got = await _peer(nats_url, f"{mesh_prefix}.crdt.Tags.*")
    try:
        hello = f"{mesh_prefix}.crdt.Tags.{HELLO}"
        await raw.publish(hello, b"", headers={h.CRDT_NODE: "far", h.CRDT_HELLO: "3.5"})
        first = await asyncio.wait_for(got.get(), 5)
        second = await asyncio.wait_for(got.get(), 5)
        by_kind = {
            "echo" if m.subject == hello else "digest": m for m in (first, second)
        }  # the echo, then the digest of the copy changed meanwhile
        assert (by_kind["echo"].headers or {}).get(h.CRDT_ECHO) == "1"
        assert by_kind["digest"].subject == crdt_subject(mesh_prefix, "Tags", "h")
        assert (by_kind["digest"].headers or {}).get(h.CRDT_DIGEST) == "1"
        # Heard within the second: no news. An echo from another new node: digests, no echo.
        await raw.publish(hello, b"", headers={h.CRDT_NODE: "far", h.CRDT_HELLO: "3.6"})
        await raw.publish(hello, b"", headers={h.CRDT_NODE: "other", h.CRDT_HELLO: "x", h.CRDT_ECHO: "1"})
        third = await asyncio.wait_for(got.get(), 5)
        assert (third.headers or {}).get(h.CRDT_DIGEST) == "1"
        await raw.flush()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(got.get(), 0.3)  # nothing more (a bounded wait for silence)
    finally:
        await raw.close()


async def test_a_storm_of_hellos_from_new_names_costs_one_round_per_second(
    mesh_factory: Any, nats_url: str, mesh_prefix: str
) -> None:
    """Each hello from a node not heard for a second is news: it is echoed and every copy of
    the kind changed within its window publishes its digest. A peer saying hello under a
    new name each time made every one news: 100 hellos (5 KB) to a node holding 20 copies
    drew 100 echoes and 2,000 digests from it, an amplification without bound. News rounds
    are now one per kind per second; hellos meanwhile widen the next round, not add one."""
    copies = 20
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    for i in range(copies):
        await n1.ref(f"Tags/s{i}").call("tag", key="k", tag="x")
    await wait_for(lambda: all(value_on(n1, "Tags", f"s{i}") is not None for i in range(copies)), what="copies")
    raw, got = await _peer(nats_url, f"{mesh_prefix}.crdt.Tags.*")
    try:
        hello = f"{mesh_prefix}.crdt.Tags.{HELLO}"
        loop = asyncio.get_running_loop()
        began = loop.time()
        for i in range(100):
            await raw.publish(hello, b"", headers={h.CRDT_NODE: f"storm{i}", h.CRDT_HELLO: "60"})
        await raw.flush()
        first = await asyncio.wait_for(got.get(), 5)
        answers = [first]
        # Everything n1 answers within 2.5 s of the storm (at most three rounds: the first,
        # one coalescing the rest, and slack for a loaded machine).
        while (left := began + 2.5 - loop.time()) > 0:
            try:
                answers.append(await asyncio.wait_for(got.get(), left))
            except TimeoutError:
                break
    finally:
        await raw.close()
    echoes = sum(1 for m in answers if m.subject == hello)
    digests = sum(1 for m in answers if (m.headers or {}).get(h.CRDT_DIGEST) == "1")
    print(f"\n100 hellos under new names: {echoes} echoes, {digests} digests from n1")
    assert 1 <= echoes <= 3
    assert copies <= digests <= 3 * copies
