"""Durable delivery on one JetStream server: at-least-once and exactly-once through the
partitioned inbox stream, per-agent order, dead letters and their replay, and the host's
sequence fencing. The chaos versions (3-node cluster, SIGKILL) are in test_delivery_chaos."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import nats
import pytest

from natsagents import (
    Agent,
    AgentNotFound,
    AlreadyApplied,
    BadRequest,
    ClusterSettings,
    ConfigurationError,
    HandlerError,
    Mesh,
    UnknownAction,
    action,
)
from natsagents.delivery.settings import DeliverySettings, inbox_stream
from natsagents.testing import wait_for
from natsagents.transport.jetstream import StreamNotFound, stream_info
from natsagents.wire import envelope
from natsagents.wire.owner import owner_mac
from natsagents.wire.subjects import agent_subject

FAST = DeliverySettings(partitions=4, max_deliver=3, backoff=(0.02,), ack_wait=5.0, attempt_timeout=5.0)


class Ledger(Agent):
    """Appends what it is given; ``poison`` fails while ``Ledger.broken`` is true."""

    broken = True

    def initial_state(self) -> dict[str, Any]:
        return {"items": [], "total": 0}

    @action
    async def add(self, value: int) -> int:
        self.state["items"].append(value)
        self.state["total"] += value
        return int(self.state["total"])

    @action
    async def get(self) -> dict[str, Any]:
        return dict(self.state)

    @action
    async def poison(self) -> str:
        if Ledger.broken:
            raise ValueError("cannot digest this")
        self.state["items"].append("digested")
        return "digested"


class Volatile(Agent):
    persistence = "none"

    @action
    async def ping(self) -> str:
        return "pong"


def node_settings(name: str, delivery: DeliverySettings = FAST) -> ClusterSettings:
    return ClusterSettings(node_id=name, lease=1.5, rebalance=False, delivery=delivery)


async def a_node(mesh_factory: Any, name: str = "n1", *kinds: type[Agent]) -> Mesh:
    node = await mesh_factory(name=name, cluster=node_settings(name))
    await node.host(*(kinds or (Ledger, Volatile)))
    return node


async def stored_messages(mesh: Mesh, prefix: str) -> int:
    info = await stream_info(mesh.transport, inbox_stream(prefix))
    return int(info["state"]["messages"])


async def test_at_least_once_and_exactly_once_calls_go_through_the_stream(mesh_factory: Any, mesh_prefix: str) -> None:
    node = await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    for delivery in ("at_least_once", "exactly_once"):
        ref = client.ref("Ledger/a").with_options(delivery=delivery)
        assert await ref.call("add", value=5, timeout=10) in (5, 10)
    assert (await client.ref("Ledger/a").call("get"))["items"] == [5, 5]
    assert await stored_messages(client, mesh_prefix) == 0  # acknowledged: gone from the work queue
    assert node.metrics.value("natsagents_durable_messages_total", {"kind": "Ledger", "outcome": "ok"}) == 2
    # The node took every partition (it is alone).
    assert node._owners is not None and node._owners.owned() == [0, 1, 2, 3]


async def test_durable_sends_keep_each_agents_order(mesh_factory: Any) -> None:
    await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    refs = [client.ref(f"Ledger/o{i}").with_options(delivery="at_least_once") for i in range(3)]
    for value in range(40):
        for ref in refs:
            await ref.send("add", value=value)
    for ref in refs:
        # A durable call queues behind the sends of the same agent.
        state = await ref.call("get", timeout=20)
        assert state["items"] == list(range(40))


async def test_a_poison_message_is_dead_lettered_and_replayed(mesh_factory: Any, mesh_prefix: str) -> None:
    Ledger.broken = True
    node = await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    ref = client.ref("Ledger/p").with_options(delivery="at_least_once")
    with pytest.raises(HandlerError, match="cannot digest"):
        await ref.call("poison", timeout=10)
    letters = await client.dead_letters()
    assert len(letters) == 1
    letter = letters[0]
    assert (letter.agent, letter.action, letter.error, letter.deliveries) == ("Ledger/p", "poison", "handler_error", 3)
    assert "cannot digest" in letter.reason
    assert node.metrics.value("natsagents_durable_messages_total", {"kind": "Ledger", "outcome": "dead_letter"}) == 1
    assert await stored_messages(client, mesh_prefix) == 0  # not looping in the inbox
    Ledger.broken = False
    try:
        await client.replay_dead_letter(letter.seq)
        await wait_for(
            lambda: node.metrics.value("natsagents_durable_messages_total", {"kind": "Ledger", "outcome": "ok"}) >= 1,
            timeout=10,
            what="replayed message applied",
        )
    finally:
        Ledger.broken = True
    assert (await client.ref("Ledger/p").call("get"))["items"] == ["digested"]
    assert await client.dead_letters() == []
    assert await client.delete_dead_letter(letter.seq) is False  # replay deleted it
    assert await client.delete_dead_letter(10_000) is False
    with pytest.raises(AgentNotFound):
        await client.replay_dead_letter(10_000)


async def test_dead_letters_before_any_stream_exists(mesh: Mesh) -> None:
    with pytest.raises(StreamNotFound):
        await mesh.dead_letters()


async def test_permanent_errors_are_dead_lettered_at_once(mesh_factory: Any, mesh_prefix: str) -> None:
    await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    with pytest.raises(UnknownAction):
        await client.ref("Ledger/u").with_options(delivery="at_least_once").call("nope", timeout=10)
    with pytest.raises(BadRequest, match="exactly_once"):  # needs persisted state
        await client.ref("Volatile/v").with_options(delivery="exactly_once").call("ping", timeout=10)
    letters = await client.dead_letters()
    assert sorted((letter.error, letter.deliveries) for letter in letters) == [
        ("bad_request", 1),
        ("unknown_action", 1),
    ]


async def test_the_host_applies_an_exactly_once_sequence_once(
    mesh_factory: Any, mesh_prefix: str, nats_url: str
) -> None:
    """What a partition owner's redelivery looks like to the host: the same stream
    sequence again, with or without the same message id (signed with the owner key, as
    an owner does: wire.owner)."""
    node = await a_node(mesh_factory)
    await node.spawn("Ledger/x")
    key = node.cluster_node.owner_key
    assert key is not None
    nc = await nats.connect(nats_url)
    try:
        subject = agent_subject(mesh_prefix, "Ledger", "x")

        def signed(hdrs: dict[str, str], body: bytes) -> dict[str, str]:
            return {**hdrs, "Na-Owner-Mac": owner_mac(key, subject, hdrs, body)}

        async def send(seq: int, value: int, msg_id: str | None = None) -> tuple[str, Any]:
            hdrs = {
                "Na-Proto": "1",
                "Na-Action": "add",
                "Na-Msg-Id": msg_id or envelope.new_message_id(),
                "Na-Delivery": "exactly_once",
                "Na-Stream-Seq": str(seq),
            }
            for _ in range(50):
                try:
                    body = msgpack.packb({"value": value})
                    reply = await nc.request(subject, body, timeout=5, headers=signed(hdrs, body))
                    break
                except nats.errors.NoRespondersError:
                    await asyncio.sleep(0.02)  # the server's early no-responders (protocol §7.2)
            return (reply.headers or {}).get("Na-Status", ""), msgpack.unpackb(reply.data)

        first_id = envelope.new_message_id()
        assert await send(5, 1, first_id) == ("ok", 1)
        status, body = await send(5, 1)  # same sequence, new id: not applied again
        assert status == "already_applied"
        with pytest.raises(AlreadyApplied):
            envelope.parse_reply({"Na-Status": status}, msgpack.packb(body))
        assert (await send(4, 1))[0] == "already_applied"
        assert await send(6, 2) == ("ok", 3)
        stored = await node.cluster_node.state.load("Ledger", "x")
        assert stored.seq == 6 and stored.data["total"] == 3
        assert any(a[0] == first_id and a[2] is not None for a in stored.applied)  # the reply is kept
        assert (await send(7, 0, "bad-seq"))[0] == "ok"
        hdrs = {"Na-Action": "add", "Na-Delivery": "exactly_once", "Na-Stream-Seq": "x1"}
        body = msgpack.packb({"value": 1})
        reply = await nc.request(subject, body, timeout=5, headers=signed(hdrs, body))
        assert (reply.headers or {})["Na-Status"] == "bad_request"
    finally:
        await nc.close()
    assert (await node.ref("Ledger/x").call("get"))["total"] == 3


async def test_a_second_node_takes_its_share_of_partitions_and_all_of_them_when_the_first_leaves(
    mesh_factory: Any,
) -> None:
    n1 = await a_node(mesh_factory, "n1")
    n2 = await a_node(mesh_factory, "n2")
    o1, o2 = n1._owners, n2._owners
    assert o1 is not None and o2 is not None
    await wait_for(lambda: len(o1.owned()) + len(o2.owned()) == 4 and bool(o2.owned()), timeout=10, what="split")
    assert not set(o1.owned()) & set(o2.owned())
    client = await mesh_factory(name="client")
    await n1.aclose()
    await wait_for(lambda: o2.owned() == [0, 1, 2, 3], timeout=10, what="n2 owns all")
    for i in range(8):
        await client.ref(f"Ledger/h{i}").with_options(delivery="exactly_once").call("add", value=i, timeout=10)


def test_invalid_delivery_settings_and_options_are_refused(mesh: Mesh) -> None:
    for bad in ({"partitions": 0}, {"max_deliver": 0}, {"backoff": ()}, {"ack_wait": 0}):
        with pytest.raises(ConfigurationError):
            DeliverySettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        mesh.ref("Ledger/a").with_options(delivery="twice")


async def test_a_durable_call_that_outlives_its_timeout_still_runs(mesh_factory: Any, mesh_prefix: str) -> None:
    client = await mesh_factory(name="client")
    ref = client.ref("Ledger/late").with_options(delivery="at_least_once")
    started = time.monotonic()
    with pytest.raises(Exception) as err:  # nobody consumes yet: stored, no result in time
        await ref.call("add", value=7, timeout=0.5)
    assert type(err.value).__name__ == "CallTimeout" and err.value.details["stored"] is True  # type: ignore[attr-defined]
    assert time.monotonic() - started < 5
    node = await a_node(mesh_factory)
    await wait_for(
        lambda: node.metrics.value("natsagents_durable_messages_total", {"kind": "Ledger", "outcome": "ok"}) == 1,
        timeout=10,
        what="the stored message ran",
    )
    assert (await client.ref("Ledger/late").call("get"))["items"] == [7]


async def test_an_expired_durable_message_is_dead_lettered_unrun(mesh_factory: Any) -> None:
    client = await mesh_factory(name="client")
    ref = client.ref("Ledger/ttl").with_options(delivery="at_least_once", message_ttl=0.2)
    await ref.send("add", value=1)  # stored; no node consumes yet
    await asyncio.sleep(0.3)  # the message's time to live is what is tested
    node = await a_node(mesh_factory)
    dead = {"kind": "Ledger", "outcome": "dead_letter"}
    await wait_for(lambda: node.metrics.value("natsagents_durable_messages_total", dead) == 1, timeout=10)
    letters = await client.dead_letters()
    assert [(letter.agent, letter.error) for letter in letters] == [("Ledger/ttl", "timeout")]
    assert (await client.ref("Ledger/ttl").call("get"))["items"] == []


async def test_durable_send_many_stores_every_message_once_in_order(mesh_factory: Any) -> None:
    await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    messages = [(f"Ledger/b{i % 4}", "add", {"value": i}) for i in range(40)]
    assert await client.send_many(messages, delivery="exactly_once", in_flight=8) == [None] * 40
    for k in range(4):
        state = await client.ref(f"Ledger/b{k}").with_options(delivery="exactly_once").call("get", timeout=20)
        assert state["items"] == list(range(k, 40, 4))


class SessionLedger(Ledger):
    """A session kind: each ok reply carries ``Na-State-Version``."""

    consistency = "session"


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
async def test_durable_batches_to_a_session_kind_are_answered(mesh_factory: Any, delivery: str) -> None:
    """A partition owner hands an agent its queued messages as one batch. A session kind's
    item replies carry ``Na-State-Version``; the batch reply took only the host's prebuilt
    ok blocks, so a session kind's batch raised ``KeyError`` in the host, was never
    answered, and its messages were retried and dead-lettered (found by the slow degraded
    test: the minority's queued writes replayed after the heal never settled)."""
    await a_node(mesh_factory, "n1", SessionLedger)
    client = await mesh_factory(name="client")
    messages = [(f"SessionLedger/b{i % 2}", "add", {"value": i}) for i in range(40)]
    assert await client.send_many(messages, delivery=delivery, in_flight=16) == [None] * 40
    for k in range(2):
        ref = client.ref(f"SessionLedger/b{k}").with_options(delivery="exactly_once")
        state = await ref.call("get", timeout=20)
        assert state["items"] == list(range(k, 40, 2))
    assert not await client.dead_letters()


async def test_sending_again_with_the_same_message_id_is_the_same_message(mesh_factory: Any) -> None:
    await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    for delivery in ("exactly_once", "at_least_once"):
        ref = client.ref(f"Ledger/same-{delivery}").with_options(delivery=delivery, message_id=f"order-{delivery}")
        await ref.send("add", value=3)
        await ref.send("add", value=3)  # a retry after an unknown outcome: stored once
        state = await client.ref(ref.address).with_options(delivery=delivery).call("get", timeout=20)
        assert state["items"] == [3]
    plain = client.ref("Ledger/same-core").with_options(message_id="order-core")
    assert await plain.call("add", value=4) == 4
    assert await plain.call("add", value=4) == 4  # the host answers the copy from its reply cache
    assert (await client.ref("Ledger/same-core").call("get"))["items"] == [4]
    with pytest.raises(ConfigurationError):
        client.ref("Ledger/x").with_options(message_id="has space")


async def test_a_durable_call_retried_with_its_message_id_gets_the_first_result(mesh_factory: Any) -> None:
    """The stream refuses the copy (same Nats-Msg-Id); the caller gets the first call's
    result from the agent (a replay request) instead of waiting for a reply that went to
    the first call's reply subject."""
    await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    for delivery in ("exactly_once", "at_least_once"):
        ref = client.ref(f"Ledger/r-{delivery}").with_options(delivery=delivery, message_id=f"pay-{delivery}")
        assert await ref.call("add", value=5, timeout=10) == 5
        assert await ref.call("add", value=5, timeout=10) == 5  # the same answer, not applied again
        state = await client.ref(ref.address).with_options(delivery=delivery).call("get", timeout=10)
        assert state["items"] == [5]


async def test_a_retry_before_the_message_ran_waits_for_it_then_gets_its_result(mesh_factory: Any) -> None:
    client = await mesh_factory(name="client")
    ref = client.ref("Ledger/early").with_options(delivery="at_least_once", message_id="early-1")
    await ref.send("add", value=2)  # stored; no node consumes yet
    with pytest.raises(Exception) as err:
        await ref.call("add", value=2, timeout=0.5)
    assert type(err.value).__name__ == "CallTimeout"
    assert err.value.details["stored"] is True and err.value.details["duplicate"] is True  # type: ignore[attr-defined]
    node = await a_node(mesh_factory)
    ok = {"kind": "Ledger", "outcome": "ok"}
    await wait_for(lambda: node.metrics.value("natsagents_durable_messages_total", ok) == 1, timeout=10)
    assert await ref.call("add", value=2, timeout=10) == 2  # the stored message's result
    assert (await client.ref("Ledger/early").call("get"))["items"] == [2]


async def test_replay_requests_answer_from_what_the_agent_knows_and_run_nothing(
    mesh_factory: Any, mesh_prefix: str, nats_url: str
) -> None:
    node = await a_node(mesh_factory)
    assert await node.ref("Ledger/q").with_options(message_id="known-1").call("add", value=4) == 4
    nc = await nats.connect(nats_url)
    try:
        subject = agent_subject(mesh_prefix, "Ledger", "q")

        async def replay(headers: dict[str, str]) -> tuple[str, Any]:
            reply = await nc.request(subject, b"", timeout=5, headers={"Na-Reply-Mode": "replay", **headers})
            return (reply.headers or {}).get("Na-Status", ""), msgpack.unpackb(reply.data)

        assert await replay({"Na-Action": "add", "Na-Msg-Id": "known-1"}) == ("ok", 4)
        status, body = await replay({"Na-Action": "add", "Na-Msg-Id": "never-sent"})
        assert status == "unavailable" and body["details"] == {"retry": True, "result": "unknown"}
        status, body = await replay({"Na-Action": "add"})  # which message?
        assert status == "bad_request"
    finally:
        await nc.close()
    assert (await node.ref("Ledger/q").call("get"))["items"] == [4]  # nothing ran again
