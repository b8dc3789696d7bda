"""Regression tests for what the fuzzer (``tests/fuzz.py``) found: each failed on the code
before its fix, as its docstring says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import nats
import pytest

from natsagents import Agent, CallTimeout, ClusterSettings, Mesh, action
from natsagents.cluster.leader import LeaderLease
from natsagents.delivery.settings import DeliverySettings
from natsagents.testing import wait_for
from natsagents.transport.kv import open_bucket
from natsagents.wire import codec, envelope
from natsagents.wire import headers as h
from natsagents.wire.subjects import bucket_name, durable_subject
from tests.fuzz import RawPublisher


class Held(Agent):
    """``hold`` runs until the test opens the gate; counts its runs."""

    gate: asyncio.Event | None = None
    runs = 0

    @action
    async def hold(self) -> int:
        Held.runs += 1
        assert Held.gate is not None
        await Held.gate.wait()
        return Held.runs


async def reachable(nc: Any, subject: str) -> None:
    """Wait until a request to ``subject`` reaches its subscriber (right after a subscribe,
    another connection may still get the server's "no responders" for a moment)."""

    async def answered() -> bool:
        try:
            await nc.request(subject, b"", headers={h.ACTION: "nope"}, timeout=5)
        except nats.errors.NoRespondersError:
            return False
        return True

    await wait_for(answered, timeout=5, what=f"{subject} reachable")


@pytest.fixture
async def sniffer(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


async def test_a_partition_lease_lost_mid_message_answers_the_message_once(
    mesh_factory: Any, mesh_prefix: str, sniffer: Any
) -> None:
    """Fuzz finding: durable results published twice to one ``Na-Reply-To``. A partition
    whose lease was lost while a message ran (its key overwritten: a hostile write, or a
    node paused past its lease) kept that message in its per-agent queue; the same node
    took the lease back and its next run handled the stale copy as well as the stream's
    redelivery: the message ran (or was answered) twice. Before the fix: 2 results."""
    Held.gate, Held.runs = asyncio.Event(), 0
    delivery = DeliverySettings(partitions=1, max_deliver=5, backoff=(0.05,), ack_wait=10.0, attempt_timeout=20.0)
    node = await mesh_factory(
        name="n1", cluster=ClusterSettings(node_id="n1", lease=1.5, rebalance=False, delivery=delivery)
    )
    await node.host(Held)
    owners = node._owners
    assert owners is not None
    await wait_for(lambda: owners.owned() == [0], timeout=10, what="n1 owns the partition")
    results: list[Any] = []

    async def collect(msg: Any) -> None:
        results.append(msg)

    await sniffer.subscribe("_INBOX.res.>", cb=collect)
    mid = envelope.new_message_id()
    headers = {
        h.PROTO: "1",
        h.ACTION: "hold",
        h.MESSAGE_ID: mid,
        h.DELIVERY: h.DELIVERY_AT_LEAST_ONCE,
        h.REPLY_TO: "_INBOX.res.1",
        "Nats-Msg-Id": mid,
    }
    js = sniffer.jetstream()
    await js.publish(durable_subject(mesh_prefix, "Held", "x"), msgpack.packb({}), headers=headers)
    await wait_for(lambda: Held.runs == 1, timeout=10, what="the handler runs")

    control = await open_bucket(node._transport, bucket_name(mesh_prefix, "control"), history=1)
    garbage = await control.put("partition.0", b"garbage")

    async def retaken() -> bool:
        entry = await control.get("partition.0")
        return entry is not None and entry.revision > garbage and codec.decode(entry.value) == "n1"

    await wait_for(retaken, timeout=10, what="n1 takes its lease back")
    await wait_for(lambda: owners.owned() == [0], timeout=10)
    Held.gate.set()
    await wait_for(lambda: len(results) >= 1, timeout=20, what="the result")
    # A barrier: the agent's next durable message comes after every copy of the first.
    mid2 = envelope.new_message_id()
    await js.publish(
        durable_subject(mesh_prefix, "Held", "x"),
        msgpack.packb({}),
        headers={**headers, h.MESSAGE_ID: mid2, "Nats-Msg-Id": mid2, h.REPLY_TO: "_INBOX.res.2"},
    )
    await wait_for(lambda: any(m.subject == "_INBOX.res.2" for m in results), timeout=30, what="the barrier")
    await sniffer.flush()
    firsts = [m for m in results if m.subject == "_INBOX.res.1"]
    assert len(firsts) == 1, [(m.headers, m.data) for m in firsts]
    assert firsts[0].headers[h.STATUS] == "ok"
    assert Held.runs == 2  # the first message once (a copy is never run twice), the barrier once
    assert isinstance(node, Mesh)


async def test_a_discarded_agent_answers_each_waiting_message_once(mesh: Mesh, mesh_prefix: str, sniffer: Any) -> None:
    """Fuzz finding: two replies to one request (``unavailable`` twice, or ``unavailable``
    then the handler's result). When a copy of an agent was discarded (fenced off by a
    newer owner) while a handler ran, the messages waiting behind it were refused
    (``unavailable``, retry) — and then run all the same: the worker kept popping them
    from the mailbox it held. Before the fix: 2 replies to the waiting request, and the
    handler ran twice."""
    Held.gate, Held.runs = asyncio.Event(), 0
    await mesh.host(Held)
    act = await mesh._host.activate("Held", "x")
    subject = f"{mesh_prefix}.agent.Held.x"
    replies: dict[str, list[Any]] = {"_INBOX.q.1": [], "_INBOX.q.2": []}

    async def collect(msg: Any) -> None:
        replies[msg.subject].append(msg)

    await sniffer.subscribe("_INBOX.q.>", cb=collect)
    await reachable(sniffer, subject)
    for n in (1, 2):
        hdrs = {h.PROTO: "1", h.ACTION: "hold", h.MESSAGE_ID: envelope.new_message_id()}
        await sniffer.publish(subject, b"", reply=f"_INBOX.q.{n}", headers=hdrs)
    await sniffer.flush()
    await wait_for(lambda: Held.runs == 1 and len(act.mailbox) == 1, timeout=5, what="one runs, one waits")
    discarding = asyncio.get_running_loop().create_task(mesh._host.discard(act))
    await wait_for(lambda: len(replies["_INBOX.q.2"]) == 1, timeout=5, what="the waiting one is refused")
    Held.gate.set()
    await discarding
    await wait_for(lambda: len(replies["_INBOX.q.1"]) == 1, timeout=5, what="the running one is answered")
    await sniffer.flush()
    assert [m.headers[h.STATUS] for m in replies["_INBOX.q.2"]] == ["unavailable"]
    assert Held.runs == 1


class _Unanswered:
    """A bucket whose writes time out unanswered (an overloaded server, or a connection
    that lost its way): what a leader's renewals meet while a candidate's go through."""

    def __init__(self, bucket: Any) -> None:
        self._bucket = bucket
        self.name = bucket.name
        self.silent = False

    async def update(self, key: str, value: bytes, *, revision: int, ttl: float | None = None, timeout: float) -> int:
        if self.silent:
            await asyncio.sleep(timeout)
            raise CallTimeout(f"no reply within {timeout} s")
        result: int = await self._bucket.update(key, value, revision=revision, ttl=ttl, timeout=timeout)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bucket, name)


async def test_a_leader_that_cannot_renew_steps_down_before_its_lease_runs_out(mesh: Mesh, mesh_prefix: str) -> None:
    """Fuzz finding: durable results published twice, by two nodes. Under load (2 cores,
    server and hosts saturated) a partition owner's lease renewals timed out; it went on
    consuming, while the other node judged the unrenewed revision dead after the lease
    and took the partition over: both ran the same messages. A leader must step down
    once its lease can have run out, renewed or not. Before the fix: both led at once."""
    control = await open_bucket(mesh._transport, bucket_name(mesh_prefix, "control"), history=1)
    leading: set[str] = set()
    most = 0

    def lead_as(node: str) -> Any:
        async def lead() -> None:
            nonlocal most
            leading.add(node)
            most = max(most, len(leading))
            try:
                await asyncio.Event().wait()
            finally:
                leading.discard(node)

        return lead

    slow = _Unanswered(control)
    a = LeaderLease(slow, "role", "a", ttl=1.0, interval=0.25, lead=lead_as("a"))  # type: ignore[arg-type]
    b = LeaderLease(control, "role", "b", ttl=1.0, interval=0.25, lead=lead_as("b"))
    a.start()
    try:
        await wait_for(lambda: leading == {"a"}, timeout=5, what="a leads")
        b.start()
        slow.silent = True  # a's renewals go unanswered from now on
        await wait_for(lambda: "b" in leading, timeout=10, what="b takes over")
        assert most == 1, "a and b led at the same time"
        assert not a.is_leader
    finally:
        await b.stop()
        slow.silent = False
        await a.stop()


async def test_an_accepted_send_left_in_a_stopping_agents_mailbox_gets_no_second_reply(
    mesh: Mesh, mesh_prefix: str, sniffer: Any
) -> None:
    """Fuzz finding: an acknowledged send (``Na-Reply-Mode: accept``) answered ``ok``, then
    ``unavailable``. A send waiting in the mailbox of an agent that stopped without running
    it (discarded, or its stop timed out) was refused like a request, although its one
    reply, the acknowledgement, had gone. Before the fix: ``['ok', 'unavailable']``."""
    Held.gate, Held.runs = asyncio.Event(), 0
    await mesh.host(Held)
    act = await mesh._host.activate("Held", "y")
    subject = f"{mesh_prefix}.agent.Held.y"
    replies: dict[str, list[str]] = {"_INBOX.s.1": [], "_INBOX.s.2": []}

    async def collect(msg: Any) -> None:
        replies[msg.subject].append(msg.headers[h.STATUS])

    await sniffer.subscribe("_INBOX.s.>", cb=collect)
    await reachable(sniffer, subject)
    for n, mode in ((1, h.REPLY_MODE_RESULT), (2, h.REPLY_MODE_ACCEPT)):
        hdrs = {h.PROTO: "1", h.ACTION: "hold", h.MESSAGE_ID: envelope.new_message_id(), h.REPLY_MODE: mode}
        await sniffer.publish(subject, b"", reply=f"_INBOX.s.{n}", headers=hdrs)
    await sniffer.flush()
    await wait_for(lambda: replies["_INBOX.s.2"] == ["ok"] and len(act.mailbox) == 1, timeout=5, what="accepted")
    discarding = asyncio.get_running_loop().create_task(mesh._host.discard(act))
    await wait_for(lambda: not act.mailbox, timeout=5, what="the mailbox is emptied")
    Held.gate.set()
    await discarding
    await wait_for(lambda: len(replies["_INBOX.s.1"]) == 1, timeout=5, what="the running one is answered")
    await sniffer.flush()
    assert replies["_INBOX.s.2"] == ["ok"]
    assert Held.runs == 1


async def test_a_partition_whose_lease_is_lost_settles_nothing_more(
    mesh_factory: Any, mesh_prefix: str, sniffer: Any
) -> None:
    """Fuzz finding: durable results published twice, by two owners of one partition.
    A partition whose lease was lost (its key deleted or overwritten: a hostile write; or
    renewals that timed out under load) let its running message finish, answer and ack,
    as on a graceful hand-over, while a new owner (on the other node, at once: the key
    was gone) consumed the partition afresh and handled the redelivered message as well.
    Once its lease is lost a partition answers and acks nothing: the next holder does.
    Here the holder is the same node; the result must come from its new term. Before the
    fix: the old term answered while no one held the lease."""
    Held.gate, Held.runs = asyncio.Event(), 0
    delivery = DeliverySettings(partitions=1, max_deliver=5, backoff=(0.05,), ack_wait=10.0, attempt_timeout=20.0)
    node = await mesh_factory(
        name="n1", cluster=ClusterSettings(node_id="n1", lease=1.5, rebalance=False, delivery=delivery)
    )
    await node.host(Held)
    owners = node._owners
    assert owners is not None
    await wait_for(lambda: owners.owned() == [0], timeout=10, what="n1 owns the partition")
    results: list[tuple[Any, list[int]]] = []

    async def collect(msg: Any) -> None:
        results.append((msg, owners.owned()))

    await sniffer.subscribe("_INBOX.lost.>", cb=collect)
    mid = envelope.new_message_id()
    headers = {
        h.PROTO: "1",
        h.ACTION: "hold",
        h.MESSAGE_ID: mid,
        h.DELIVERY: h.DELIVERY_AT_LEAST_ONCE,
        h.REPLY_TO: "_INBOX.lost.1",
        "Nats-Msg-Id": mid,
    }
    js = sniffer.jetstream()
    await js.publish(durable_subject(mesh_prefix, "Held", "x"), msgpack.packb({}), headers=headers)
    await wait_for(lambda: Held.runs == 1, timeout=10, what="the handler runs")
    control = await open_bucket(node._transport, bucket_name(mesh_prefix, "control"), history=1)
    await control.delete("partition.0")
    await wait_for(lambda: owners.owned() == [], timeout=5, interval=0.001, what="n1 notices")
    Held.gate.set()  # the running message finishes now, its lease gone
    await wait_for(lambda: len(results) >= 1, timeout=20, what="the result")
    await sniffer.flush()
    assert [(m.headers[h.STATUS], owned) for m, owned in results] == [("ok", [0])]


async def test_requests_with_the_same_malformed_message_id_are_each_refused(
    mesh: Mesh, mesh_prefix: str, sniffer: Any
) -> None:
    """Fuzz finding: a malformed request never answered. Copies are recognised by
    ``Na-Msg-Id`` — but a malformed id (``bad id``, or bytes that are not UTF-8, which
    all read as U+FFFD) was remembered too, so a second malformed request carrying the
    same one while the first waited was taken for its copy and dropped unanswered, where
    each should get its ``bad_request``. Before the fix: one reply of two."""
    Held.gate, Held.runs = asyncio.Event(), 0
    await mesh.host(Held)
    await mesh._host.activate("Held", "z")
    subject = f"{mesh_prefix}.agent.Held.z"
    replies: dict[str, list[str]] = {f"_INBOX.m.{n}": [] for n in range(4)}

    async def collect(msg: Any) -> None:
        replies[msg.subject].append(msg.headers[h.STATUS])

    await sniffer.subscribe("_INBOX.m.>", cb=collect)
    await reachable(sniffer, subject)
    hold = {h.PROTO: "1", h.ACTION: "hold", h.MESSAGE_ID: envelope.new_message_id()}
    await sniffer.publish(subject, b"", reply="_INBOX.m.0", headers=hold)
    await sniffer.flush()
    await wait_for(lambda: Held.runs == 1, timeout=5, what="the agent is busy")
    await sniffer.publish(subject, b"", reply="_INBOX.m.1", headers={h.ACTION: "hold", h.MESSAGE_ID: "bad id"})
    await sniffer.publish(subject, b"", reply="_INBOX.m.2", headers={h.ACTION: "get", h.MESSAGE_ID: "bad id"})
    raw = RawPublisher(sniffer.connected_url.geturl())  # bytes nats-py would not send
    await raw.open()
    try:
        block = b"NATS/1.0\r\nNa-Action: hold\r\nNa-Msg-Id: \xc3\r\n\r\n"
        raw.send(subject.encode(), b"_INBOX.m.3", block, b"")
        raw.send(subject.encode(), b"_INBOX.m.3", block, b"")  # another one: answered too
        await raw.flush()
    finally:
        await raw.close()
    await sniffer.flush()
    Held.gate.set()
    # FIFO: once this is answered, every message sent before it (the server has routed
    # them all: both connections flushed) was answered or dropped.
    await mesh.ref("Held/z").call("hold")
    await sniffer.flush()
    assert replies == {
        "_INBOX.m.0": ["ok"],
        "_INBOX.m.1": ["bad_request"],
        "_INBOX.m.2": ["bad_request"],
        "_INBOX.m.3": ["bad_request", "bad_request"],
    }
