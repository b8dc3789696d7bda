"""What a heal costs a crdt copy (one real JetStream server): a whole state that lacks
something of ours is answered at once, with the state the copy held, even while the copy
publishes its own whole state periodically (a partition's gossip), so the side that missed
ours does not wait for our next round; and a merge into the record this copy itself wrote
last decodes nothing (the copy holds all of it: equal bytes mean nothing to store)."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest

from natsagents.cluster.crdts import CrdtCopies
from natsagents.crdt import ORMap, ORSet, PNCounter
from natsagents.testing import wait_for
from natsagents.wire import codec
from natsagents.wire import headers as h
from natsagents.wire.ids import agent_key
from natsagents.wire.subjects import crdt_subject
from tests.cluster.test_cluster_node import node_of, nodes
from tests.cluster.test_crdt_mode import KINDS, copy_state, record_is, value_on


async def test_a_whole_state_lacking_ours_is_answered_at_once_while_we_gossip(
    mesh_factory: Any, nats_url: str, mesh_prefix: str
) -> None:
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    await n1.ref("Tags/a").call("tag", key="mine", tag="x")
    crdts = node_of(n1).crdts
    gossip = asyncio.get_running_loop().create_future()
    crdts.sync._loop = gossip  # type: ignore[assignment]  # as while the node is not "ok"
    raw = await nats.connect(nats_url)
    try:
        subject = crdt_subject(mesh_prefix, "Tags", "a")
        answers: asyncio.Queue[Any] = asyncio.Queue()

        async def on_msg(msg: Any) -> None:
            if (msg.headers or {}).get(h.CRDT_NODE) == "n1":
                await answers.put(msg)

        await raw.subscribe(subject, cb=on_msg)
        await raw.flush()
        theirs = ORMap(ORSet).update("peer:1", "theirs", lambda s: s.add("peer:1", "y")).state
        await raw.publish(subject, theirs.to_wire(), headers={h.CRDT_NODE: "peer", h.CRDT_WHOLE: "1"})
        answer = await asyncio.wait_for(answers.get(), 5)
        assert (answer.headers or {}).get(h.CRDT_WHOLE) == "1"
        assert ORMap.from_wire(answer.data).value == {"mine": frozenset({"x"})}  # what we held
        await wait_for(
            lambda: value_on(n1, "Tags", "a") == {"mine": frozenset({"x"}), "theirs": frozenset({"y"})},
            what="merged theirs",
        )
        # A whole state holding everything of ours is not answered.
        both = copy_state(n1, "Tags", "a")
        await raw.publish(subject, both.to_wire(), headers={h.CRDT_NODE: "peer", h.CRDT_WHOLE: "1"})
        await raw.flush()
        await n1.ref("Tags/a").call("tag", key="later", tag="z")  # after the whole state, in order
        delta = await asyncio.wait_for(answers.get(), 5)
        assert (delta.headers or {}).get(h.CRDT_WHOLE) is None  # the action's delta, no answer
    finally:
        crdts.sync._loop = None
        gossip.cancel()
        await raw.close()


async def test_a_merge_into_the_record_this_copy_wrote_last_decodes_nothing(
    mesh_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = [0]
    real = CrdtCopies._decode_record

    def counting(self: CrdtCopies, *args: Any) -> Any:
        decoded[0] += 1
        return real(self, *args)

    monkeypatch.setattr(CrdtCopies, "_decode_record", counting)
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    ref = n1.ref("Slow/s")  # flush_interval 30 s: only save_now merges it
    await ref.call("add", by=4)
    act = n1._host.activations[("Slow", "s")]
    crdts = node_of(n1).crdts
    await crdts.save_now(act)
    await wait_for(lambda: record_is(n1, "Slow", PNCounter, "s", 4), what="stored")
    bucket = node_of(n1).state.bucket
    first = await bucket.get(agent_key("Slow", "s"))
    assert first is not None
    before = decoded[0]
    await crdts.save_now(act)  # nothing new: the record is the one this copy wrote
    again = await bucket.get(agent_key("Slow", "s"))
    assert again is not None and again.revision == first.revision  # nothing written
    await ref.call("add", by=1)
    await crdts.save_now(act)  # a change: written over our own record, still no decode
    await wait_for(lambda: record_is(n1, "Slow", PNCounter, "s", 5), what="stored again")
    assert decoded[0] == before, "the copy's own record was decoded again"


async def test_a_record_holding_a_whole_state_merged_already_is_not_decoded_again(
    mesh_factory: Any, nats_url: str, mesh_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    real = CrdtCopies._decode

    def counting(self: CrdtCopies, act: Any, like: Any, data: Any, what: str) -> Any:
        decoded.append(what)
        return real(self, act, like, data, what)

    monkeypatch.setattr(CrdtCopies, "_decode", counting)
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    await n1.ref("Tags/b").call("tag", key="mine", tag="x")
    theirs = ORMap(ORSet).update("peer:1", "theirs", lambda s: s.add("peer:1", "y")).state
    raw = await nats.connect(nats_url)
    try:
        subject = crdt_subject(mesh_prefix, "Tags", "b")
        await raw.publish(subject, theirs.to_wire(), headers={h.CRDT_NODE: "peer", h.CRDT_WHOLE: "1"})
        await raw.flush()
        both = {"mine": frozenset({"x"}), "theirs": frozenset({"y"})}
        await wait_for(lambda: value_on(n1, "Tags", "b") == both, what="merged theirs")
        # The peer's record merge lands: the same bytes as its whole state.
        decoded.clear()
        bucket = node_of(n1).state.bucket
        await bucket.put(agent_key("Tags", "b"), codec.encode({"epoch": 0, "data": theirs.to_wire()}))

        async def record_has_both() -> bool:
            entry = await bucket.get(agent_key("Tags", "b"))
            return entry is not None and ORMap.from_wire(codec.decode(entry.value)["data"]).value == both

        # The copy holds more than that record: it merges into it again (without decoding it).
        await wait_for(record_has_both, timeout=5, what="merged into the record again")
        assert "state record" not in decoded, decoded
    finally:
        await raw.close()
