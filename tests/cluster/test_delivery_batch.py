"""Batches (protocol §15.4): a partition owner hands several durable messages of one agent
over in one request, and the host stores their state changes in one write.

The wire format and the host's answers are checked with batch requests published by raw
nats-py; the owner's batching, its handling of a failure inside a batch and its fallback
for a host that refuses batches run through a real node and stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import nats
import pytest

from natsagents import Agent, ClusterSettings, ConfigurationError, Mesh, ProtocolError, action
from natsagents.cluster.owner_key import KEY as OWNER_KEY
from natsagents.delivery.settings import DeliverySettings, inbox_stream
from natsagents.server import NatsServer
from natsagents.testing import wait_for
from natsagents.transport.jetstream import stream_info
from natsagents.transport.kv import open_bucket
from natsagents.wire import batch as wire_batch
from natsagents.wire import envelope
from natsagents.wire.owner import owner_mac
from natsagents.wire.subjects import agent_subject, agent_wildcard, bucket_name

FAST = DeliverySettings(partitions=2, max_deliver=3, backoff=(0.02,), ack_wait=5.0, attempt_timeout=5.0)


class Tally(Agent):
    """Appends what it is given; ``hold`` waits for the test's gate; ``fail`` raises."""

    max_state_bytes = 4096
    gate: asyncio.Event | None = None

    def initial_state(self) -> dict[str, Any]:
        return {"items": []}

    @action
    async def add(self, value: Any) -> int:
        self.state["items"].append(value)
        return len(self.state["items"])

    @action
    async def hold(self) -> None:
        self.state["items"].append("held")
        if Tally.gate is not None:
            await Tally.gate.wait()

    @action
    async def fail(self) -> None:
        self.state["items"].append("never stored")
        raise RuntimeError("refused")

    @action
    async def get(self) -> list[Any]:
        return list(self.state["items"])


class Wide(Tally):
    """Runs two handlers at once: a batch must not hold another message's write back."""

    max_concurrency = 2


class Careful(Tally):
    """Throttled when its handlers take more than 30 ms on average (runtime.health)."""

    throttle_latency = 0.03

    @action
    async def work(self) -> None:
        await asyncio.sleep(0.01)  # the handler's own work (10 ms), not a synchronisation


def saves(node: Mesh, kind: str = "Tally") -> float:
    return node.metrics.value("natsagents_state_saves_total", {"kind": kind, "outcome": "ok"})


async def a_node(mesh_factory: Any, name: str = "n1", delivery: DeliverySettings = FAST) -> Mesh:
    node = await mesh_factory(
        name=name, cluster=ClusterSettings(node_id=name, lease=1.5, rebalance=False, delivery=delivery)
    )
    await node.host(Tally, Wide, Careful)
    return node


def item(action: str, seq: int, delivery: str = "exactly_once", **params: Any) -> tuple[dict[str, str], bytes]:
    hdrs = {
        "Na-Proto": "1",
        "Na-Action": action,
        "Na-Msg-Id": envelope.new_message_id(),
        "Na-Delivery": delivery,
        "Na-Stream-Seq": str(seq),
    }
    return hdrs, msgpack.packb(params)


class RawPeer:
    """Batch requests to one agent from raw nats-py (what a partition owner sends, signed
    with the cluster's owner key, wire.owner)."""

    def __init__(self, nc: Any, subject: str, key: Callable[[], Awaitable[bytes]]) -> None:
        self.nc = nc
        self.subject = subject
        self.key = key

    async def request(self, headers: dict[str, str], body: bytes) -> Any:
        headers = {**headers, "Na-Owner-Mac": owner_mac(await self.key(), self.subject, headers, body)}
        for _ in range(100):
            try:
                return await self.nc.request(self.subject, body, timeout=5, headers=headers)
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.02)  # the server's early no-responders (protocol §7.2)
        raise AssertionError("no responder")

    async def batch(self, *items: tuple[dict[str, str], bytes]) -> list[tuple[str, Any]]:
        block, body = wire_batch.batch_request(list(items))
        headers = dict(line.split(": ", 1) for line in block.decode().split("\r\n")[1:] if line)
        reply = await self.request(headers, body)
        assert reply.headers["Na-Status"] == "ok", msgpack.unpackb(reply.data)
        answers = wire_batch.parse_batch_reply(reply.headers, reply.data, len(items))
        return [(hdrs["Na-Status"], msgpack.unpackb(data)) for hdrs, data in answers]


@pytest.fixture
async def peer(nats_url: str, mesh_prefix: str, connect: Any) -> Any:
    nc = await nats.connect(nats_url)
    keys: list[bytes] = []

    async def key() -> bytes:  # the node made it when it started
        if not keys:
            control = await open_bucket(await connect(nats_url), bucket_name(mesh_prefix, "control"), history=1)
            entry = await control.get(OWNER_KEY)
            assert entry is not None
            keys.append(entry.value)
        return keys[0]

    yield lambda agent_id, kind="Tally": RawPeer(nc, agent_subject(mesh_prefix, kind, agent_id), key)
    await nc.close()


# -- the wire -------------------------------------------------------------------------------


def test_a_batch_request_and_reply_round_trip() -> None:
    items = [item("add", 1, value=1), item("add", 2, value=[1, 2])]
    block, body = wire_batch.batch_request(items)
    assert block.startswith(b"NATS/1.0\r\n") and b"Na-Batch: 2\r\n" in block and b"Na-Msg-Id: " in block
    assert wire_batch.parse_batch_request({"Na-Batch": "2"}, body) == items
    headers, data = wire_batch.batch_reply([(envelope.OK_HEADER_BLOCK, b"\x01"), ({"Na-Status": "bad_request"}, b"")])
    assert headers["Na-Batch"] == "2" and headers["Na-Status"] == "ok"
    assert wire_batch.parse_batch_reply(headers, data, 2) == [
        ({"Na-Proto": "1", "Na-Status": "ok"}, b"\x01"),
        ({"Na-Status": "bad_request"}, b""),
    ]
    with pytest.raises(ValueError):
        wire_batch.batch_request([])
    with pytest.raises(ValueError):
        wire_batch.batch_request([item("add", 1)] * (wire_batch.MAX_BATCH + 1))


@pytest.mark.parametrize(
    ("count", "body"),
    [
        ("", msgpack.packb([])),
        ("0", msgpack.packb([])),
        ("x", msgpack.packb([])),
        (str(wire_batch.MAX_BATCH + 1), msgpack.packb([])),
        ("1", b"\xc1"),  # not msgpack
        ("1", msgpack.packb({"a": 1})),  # not an array
        ("2", msgpack.packb([[{}, b""]])),  # fewer items than announced
        ("1", msgpack.packb([[{}, b"", 1]])),  # an item is not a pair
        ("1", msgpack.packb([[{"a": 1}, b""]])),  # a header value is not a string
        ("1", msgpack.packb([[{}, "text"]])),  # a body is not binary
    ],
)
def test_a_malformed_batch_is_a_protocol_error(count: str, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire_batch.parse_batch_request({"Na-Batch": count}, body)


def test_a_batch_reply_with_more_answers_than_messages_is_refused() -> None:
    headers, data = wire_batch.batch_reply([({"Na-Status": "ok"}, b"")] * 3)
    with pytest.raises(ProtocolError):
        wire_batch.parse_batch_reply(headers, data, 2)
    with pytest.raises(ProtocolError):
        wire_batch.parse_batch_reply({"Na-Status": "ok"}, data, 3)  # no Na-Batch


def test_forward_batch_is_checked() -> None:
    for bad in (0, wire_batch.MAX_BATCH + 1, 2.5):
        with pytest.raises(ConfigurationError):
            DeliverySettings(forward_batch=bad)  # type: ignore[arg-type]


# -- the host -------------------------------------------------------------------------------


async def test_a_batch_runs_in_order_and_is_stored_in_one_write(mesh_factory: Any, peer: Any) -> None:
    node = await a_node(mesh_factory)
    await node.spawn("Tally/a")
    raw = peer("a")
    before = saves(node)
    answers = await raw.batch(item("add", 5, value="x"), item("add", 6, value="y"), item("add", 7, value="z"))
    assert answers == [("ok", 1), ("ok", 2), ("ok", 3)]
    assert saves(node) == before + 1  # three messages, one write
    stored = await node.cluster_node.state.load("Tally", "a")
    assert stored.data["items"] == ["x", "y", "z"] and stored.seq == 7
    # Applied sequences are refused inside a later batch; the batch goes on after them.
    answers = await raw.batch(item("add", 6, value="again"), item("add", 8, value="w"))
    assert [a[0] for a in answers] == ["already_applied", "ok"]
    assert (await node.ref("Tally/a").call("get")) == ["x", "y", "z", "w"]


async def test_an_agent_with_concurrent_handlers_writes_each_batch_item(mesh_factory: Any, peer: Any) -> None:
    node = await a_node(mesh_factory)
    await node.spawn("Wide/w")
    before = saves(node, "Wide")
    answers = await peer("w", "Wide").batch(item("add", 1, value=1), item("add", 2, value=2))
    assert answers == [("ok", 1), ("ok", 2)]
    assert saves(node, "Wide") == before + 2
    stored = await node.cluster_node.state.load("Wide", "w")
    assert stored.data["items"] == [1, 2] and stored.seq == 2


async def test_a_batch_counts_as_its_messages_for_latency_throttling(mesh_factory: Any, peer: Any) -> None:
    """25 messages of 10 ms in one batch are 25 handlers of 10 ms, not one of 250 ms."""
    node = await a_node(mesh_factory)
    await node.spawn("Careful/c")
    items = [item("work", seq, "at_least_once") for seq in range(1, 26)]
    assert [a[0] for a in await peer("c", "Careful").batch(*items)] == ["ok"] * 25
    assert node.unhealthy_agents() == {}


async def test_a_batch_stops_at_the_first_failure_and_stores_what_ran_before_it(mesh_factory: Any, peer: Any) -> None:
    node = await a_node(mesh_factory)
    await node.spawn("Tally/f")
    raw = peer("f")
    answers = await raw.batch(item("add", 1, value=1), item("fail", 2), item("add", 3, value=3))
    assert [a[0] for a in answers] == ["ok", "handler_error"]  # the third did not run
    assert "refused" in answers[1][1]["message"]
    stored = await node.cluster_node.state.load("Tally", "f")
    assert stored.data["items"] == [1] and stored.seq == 1  # the failed message's change rolled back
    # Unknown actions and bad parameters stop it too, before running.
    answers = await raw.batch(item("add", 2, value=2), item("nope", 3), item("add", 4, value=4))
    assert [a[0] for a in answers] == ["ok", "unknown_action"]
    assert (await node.ref("Tally/f").call("get")) == [1, 2]


async def test_a_batch_whose_write_fails_applies_none_of_it(mesh_factory: Any, peer: Any) -> None:
    node = await a_node(mesh_factory)
    await node.spawn("Tally/big")
    raw = peer("big")
    assert await raw.batch(item("add", 1, value="a")) == [("ok", 1)]
    # Each message fits; together they exceed max_state_bytes (4096): the one write fails.
    chunk = "b" * 1500
    answers = await raw.batch(item("add", 2, value=chunk), item("add", 3, value=chunk), item("add", 4, value=chunk))
    assert [a[0] for a in answers] == ["payload_too_large"]  # the first message's answer; none applied
    stored = await node.cluster_node.state.load("Tally", "big")
    assert stored.data["items"] == ["a"] and stored.seq == 1
    assert (await node.ref("Tally/big").call("get")) == ["a"]  # the live state went back too
    assert await raw.batch(item("add", 2, value="c")) == [("ok", 2)]  # sequence 2 was not recorded


async def test_a_batch_cut_short_leaves_nothing_half_done(mesh_factory: Any, peer: Any) -> None:
    """The agent's worker is cancelled while a batch waits inside its second item: none of
    the batch stays in the state, and the next message is stored as usual (the batch does
    not keep holding the agent's writes back)."""
    node = await a_node(mesh_factory)
    await node.spawn("Tally/cut")
    raw = peer("cut")
    assert await raw.batch(item("add", 1, value="before")) == [("ok", 1)]
    Tally.gate = asyncio.Event()
    try:
        pending = asyncio.ensure_future(
            raw.batch(item("add", 2, value="a"), item("hold", 3), item("add", 4, value="b"))
        )
        act = node._host.activations[("Tally", "cut")]
        await wait_for(lambda: act.busy == 1 and act.agent.state["items"][-1] == "held", timeout=5, what="in hold")
        for task in list(act.workers):
            task.cancel()
        await wait_for(lambda: not act.workers, timeout=5, what="the worker gone")
    finally:
        Tally.gate = None
    pending.cancel()
    assert act.agent.state["items"] == ["before"]  # back to what was stored
    before = saves(node)
    assert await raw.batch(item("add", 5, value="after")) == [("ok", 2)]
    assert saves(node) == before + 1
    stored = await node.cluster_node.state.load("Tally", "cut")
    assert stored.data["items"] == ["before", "after"] and stored.seq == 5


async def test_malformed_batches_are_refused_whole(mesh_factory: Any, peer: Any) -> None:
    node = await a_node(mesh_factory)
    await node.spawn("Tally/m")
    raw = peer("m")
    base = {"Na-Proto": "1", "Na-Batch": "2", "Na-Msg-Id": envelope.new_message_id()}
    reply = await raw.request(base, msgpack.packb([[{}, b""]]))  # one item, two announced
    assert reply.headers["Na-Status"] == "bad_request"
    no_seq = {"Na-Proto": "1", "Na-Action": "add"}  # a core message cannot be batched
    _, body = wire_batch.batch_request([(no_seq, msgpack.packb({"value": 1}))])
    reply = await raw.request({"Na-Batch": "1"}, body)
    assert reply.headers["Na-Status"] == "bad_request" and b"Na-Stream-Seq" in reply.data
    assert (await node.ref("Tally/m").call("get")) == []


async def test_a_resent_batch_is_answered_again_not_run_again(mesh_factory: Any, peer: Any) -> None:
    node = await a_node(mesh_factory)
    await node.spawn("Tally/r")
    raw = peer("r")
    items = [item("add", 1, "at_least_once", value=1), item("add", 2, "at_least_once", value=2)]
    block, body = wire_batch.batch_request(items)
    headers = dict(line.split(": ", 1) for line in block.decode().split("\r\n")[1:] if line)
    first = await raw.request(headers, body)
    again = await raw.request(headers, body)  # the same Na-Msg-Id: a resend
    assert first.data == again.data and first.headers["Na-Batch"] == "2"
    assert (await node.ref("Tally/r").call("get")) == [1, 2]


# -- the partition owner --------------------------------------------------------------------


async def held_messages(node: Mesh, count: int) -> None:
    owners = node._owners
    assert owners is not None
    await wait_for(lambda: owners.held() >= count, timeout=10, what=f"{count} messages held by the owner")


def batch_histogram(node: Mesh) -> tuple[float, float]:
    labels = {"kind": "Tally"}
    return (
        node.metrics.value("natsagents_durable_batch_messages_sum", labels),
        node.metrics.value("natsagents_durable_batch_messages_count", labels),
    )


async def test_messages_queued_for_an_agent_go_in_one_batch_and_one_write(mesh_factory: Any, mesh_prefix: str) -> None:
    node = await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    ref = client.ref("Tally/q").with_options(delivery="exactly_once")
    Tally.gate = asyncio.Event()
    try:
        await ref.send("hold")
        await wait_for(lambda: batch_histogram(node)[1] == 1, timeout=10, what="the first message handed over")
        for value in range(20):
            await (ref.with_options(message_id="batched-7") if value == 7 else ref).send("add", value=value)
        await held_messages(node, 21)
        before = saves(node)
        Tally.gate.set()
        await wait_for(lambda: batch_histogram(node)[0] == 21, timeout=10, what="all handed over")
    finally:
        Tally.gate = None
    assert batch_histogram(node) == (21, 2)  # the held one alone, the 20 behind it in one request
    await wait_for(lambda: node._owners is not None and node._owners.held() == 0, timeout=10, what="all acked")
    assert saves(node) - before == 2  # "hold", then the batch
    assert await client.ref("Tally/q").call("get") == ["held", *range(20)]
    # A batch item's reply is kept like a single message's: a retried call gets it.
    assert await ref.with_options(message_id="batched-7").call("add", value=7, timeout=10) == 9
    info = await stream_info(client.transport, inbox_stream(mesh_prefix))
    assert info["state"]["messages"] == 0


async def test_a_failure_inside_a_batch_is_retried_alone_and_the_rest_keep_their_order(
    mesh_factory: Any,
) -> None:
    node = await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    ref = client.ref("Tally/p").with_options(delivery="at_least_once")
    Tally.gate = asyncio.Event()
    try:
        await ref.send("hold")
        await wait_for(lambda: batch_histogram(node)[1] == 1, timeout=10, what="the first message handed over")
        await ref.send("add", value=1)
        await ref.send("fail")
        await ref.send("add", value=2)
        await held_messages(node, 4)
        Tally.gate.set()
        letters: list[Any] = []

        async def dead_lettered() -> bool:
            letters[:] = await client.dead_letters()
            return len(letters) == 1

        await wait_for(dead_lettered, timeout=15, what="the failing message dead-lettered")
    finally:
        Tally.gate = None
    assert (letters[0].action, letters[0].error, letters[0].deliveries) == ("fail", "handler_error", 3)
    assert await ref.call("get", timeout=10) == ["held", 1, 2]
    ok = node.metrics.value("natsagents_durable_messages_total", {"kind": "Tally", "outcome": "ok"})
    assert ok == 4  # hold, add 1, add 2, get


async def test_a_host_that_refuses_batches_gets_the_messages_one_by_one(
    mesh_factory: Any, mesh_prefix: str, nats_url: str
) -> None:
    """A peer host (raw nats-py) that answers batch requests with bad_request, as a
    host without §15.4 would: the owner falls back to single messages, none is lost."""
    node = await a_node(mesh_factory)
    client = await mesh_factory(name="client")
    nc = await nats.connect(nats_url)
    seen: list[int] = []
    batches = 0
    gate = asyncio.Event()

    async def host(msg: Any) -> None:
        nonlocal batches
        hdrs = msg.headers or {}
        if "Na-Batch" in hdrs:
            batches += 1
            out, body = envelope.error_reply("bad_request", f"missing Na-Action header (batch {batches})")
            await nc.publish(msg.reply, body, headers=out)
            return
        if not seen:
            await gate.wait()  # hold the first so that the others queue behind it
        seen.append(msgpack.unpackb(msg.data)["value"])
        out, body = envelope.ok_reply(len(seen))
        await nc.publish(msg.reply, body, headers=out)

    await nc.subscribe(agent_wildcard(mesh_prefix, "Peer"), cb=host)
    await nc.flush()
    try:
        ref = client.ref("Peer/one").with_options(delivery="at_least_once")
        for value in range(6):
            await ref.send("put", value=value)
        await held_messages(node, 6)
        gate.set()
        await wait_for(lambda: len(seen) == 6, timeout=15, what="all six delivered")
        assert seen == list(range(6))
        assert batches == 1 and node._owners is not None and node._owners.unbatched == {"Peer"}
        await wait_for(lambda: node._owners is not None and node._owners.held() == 0, timeout=10, what="acked")
        assert await client.dead_letters() == []
    finally:
        await nc.close()


def count_attempt_writes(node: Mesh) -> list[str]:
    """Instrument ``node``'s control bucket: the keys of attempt-count writes, as made
    (and ``"failed <key>"`` for each that raised, a CAS conflict for instance)."""
    owners = node._owners
    assert owners is not None
    writes: list[str] = []
    control = owners.control
    for name in ("update", "create"):
        original = getattr(control, name)

        async def counted(key: str, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            try:
                return await _original(key, *args, **kwargs)
            except Exception:
                if key.startswith("attempts."):
                    writes.append(f"failed {key}")
                raise
            finally:
                if key.startswith("attempts."):
                    writes.append(key)

        setattr(control, name, counted)
    return writes


async def hold_ten_agents(node: Mesh, client: Mesh) -> list[Any]:
    """10 agents, each with a ``hold`` running at ``node`` and five ``add`` waiting."""
    refs = [client.ref(f"Tally/t{i}").with_options(delivery="at_least_once") for i in range(10)]
    for ref in refs:
        await ref.send("hold")
    for value in range(5):
        for ref in refs:
            await ref.send("add", value=value)
    await held_messages(node, 60)
    return refs


async def take_over(mesh_factory: Any, *, vanish: bool) -> tuple[Mesh, Mesh, list[Any], list[str]]:
    """n1 holds 10 agents' messages (one running each, five waiting); n2 joins, then n1
    leaves gracefully or vanishes (its connection closed: no hand-back, its leases run
    out). Returns n2, the client, the agents' refs and n2's attempt-count writes, once n2
    owns every partition and has run everything n1 held."""
    n1 = await a_node(mesh_factory, "n1")
    client = await mesh_factory(name="client")
    Tally.gate = asyncio.Event()
    try:
        refs = await hold_ten_agents(n1, client)
        n2 = await a_node(mesh_factory, "n2")
        writes = count_attempt_writes(n2)
        if vanish:
            await n1.transport.close(drain=False)
            Tally.gate.set()
        else:
            Tally.gate.set()  # n1's running handlers finish; it hands the waiting ones back
            await n1.aclose()
        owners = n2._owners
        assert owners is not None
        await wait_for(lambda: owners.owned() == [0, 1], timeout=15, what="n2 owns every partition")
        ran = 60 if vanish else 50  # the held "hold"s too when n1 could not finish them
        await wait_for(lambda: owners.held() == 0 and _total(n2) >= ran, timeout=20, what="n2 ran what n1 held")
    finally:
        Tally.gate = None
    for ref in refs:
        assert await ref.call("get", timeout=10) == ["held", 0, 1, 2, 3, 4]
    assert await client.dead_letters() == []
    assert not [w for w in writes if w.startswith("failed")]  # no write raced another
    return n2, client, refs, writes


async def test_a_leaving_owner_hands_its_messages_back_uncounted(mesh_factory: Any) -> None:
    """The waiting messages go back marked untried (attempts 0): n2 counts nothing for them
    and batches them as usual."""
    n2, _, _, writes = await take_over(mesh_factory, vanish=False)
    assert len(writes) <= 2  # per partition, the zeros cleared once; no count per message
    assert batch_histogram(n2)[1] < 50  # batched, not one by one


async def test_a_takeover_from_a_vanished_owner_counts_its_messages_in_few_writes(mesh_factory: Any) -> None:
    """Every message n1 was handed is a suspect: n2 records an attempt for each before
    running it, and the records of concurrent agents share writes."""
    _, _, _, writes = await take_over(mesh_factory, vanish=True)
    assert 1 <= len(writes) < 60  # one per suspect attempt would be 60


def _total(node: Mesh) -> float:
    return node.metrics.value("natsagents_durable_messages_total", {"kind": "Tally", "outcome": "ok"})


class Echo(Agent):
    """``blob(size)`` answers with ``size`` bytes (a small request, a large reply); its
    state (not persisted) lists the sizes asked."""

    persistence = "none"
    gate: asyncio.Event | None = None

    @action
    async def blob(self, size: int) -> bytes:
        if Echo.gate is not None and not self.state.get("sizes"):
            await Echo.gate.wait()  # hold the first so that the others queue behind it
        self.state.setdefault("sizes", []).append(size)
        return b"x" * size

    @action
    async def sizes(self) -> list[int]:
        return list(self.state.get("sizes", []))


async def small_payload_node(mesh_factory: Any, url: str) -> Mesh:
    node = await mesh_factory(
        url, name="n1", cluster=ClusterSettings(node_id="n1", lease=1.5, rebalance=False, delivery=FAST)
    )
    await node.host(Echo)
    return node


async def queue_blobs(node: Mesh, client: Mesh, sizes: list[int]) -> Any:
    """``blob`` messages asking for replies of the given sizes, held at the owner behind the first."""
    ref = client.ref("Echo/e").with_options(delivery="at_least_once")
    Echo.gate = asyncio.Event()
    await ref.send("blob", size=sizes[0])
    labels = {"kind": "Echo"}
    await wait_for(
        lambda: node.metrics.value("natsagents_durable_batch_messages_count", labels) == 1,
        timeout=10,
        what="the first message handed over alone",
    )
    for size in sizes[1:]:
        await ref.send("blob", size=size)
    await held_messages(node, len(sizes))
    Echo.gate.set()
    owners = node._owners
    assert owners is not None
    await wait_for(lambda: owners.held() == 0, timeout=20, what="all acknowledged")
    Echo.gate = None
    return ref


async def test_batches_fit_a_small_max_payload(mesh_factory: Any) -> None:
    """max_payload 64 KiB: the host stops a batch once its replies fill a quarter of it,
    so messages with 12 KB replies are answered two by two, each exactly once."""
    with NatsServer(max_payload=64 * 1024) as server:
        node = await small_payload_node(mesh_factory, server.url)
        client = await mesh_factory(server.url, name="client")
        try:
            ref = await queue_blobs(node, client, [10] + [12_000] * 6)
            assert await ref.call("sizes", timeout=10) == [10] + [12_000] * 6  # each once, in order
            assert await client.dead_letters() == []
            assert node._owners is not None and node._owners.unbatched == set()
            labels = {"kind": "Echo"}
            requests = node.metrics.value("natsagents_durable_batch_messages_count", labels)
            assert requests >= 4  # the held one, then at most two 12 KB messages per request
        finally:
            await client.aclose()  # before the server stops
            await node.aclose()


async def test_a_batch_reply_over_max_payload_makes_the_kind_go_one_by_one(mesh_factory: Any) -> None:
    """A 15 KB reply (under the host's quarter) followed by a 60 KB one: together over
    64 KiB. The host cannot send the batch reply; the owner sends that kind's messages one
    by one from then on, and none is lost or run twice."""
    with NatsServer(max_payload=64 * 1024) as server:
        node = await small_payload_node(mesh_factory, server.url)
        client = await mesh_factory(server.url, name="client")
        try:
            ref = await queue_blobs(node, client, [10, 15_000, 60_000, 20])
            # All ran once, in order: the host answers the batch's re-sent messages that ran
            # from what it remembers of them (their replies, kept like single messages').
            assert await ref.call("sizes", timeout=10) == [10, 15_000, 60_000, 20]
            assert await client.dead_letters() == []
            assert node._owners is not None and node._owners.unbatched == {"Echo"}
        finally:
            await client.aclose()  # before the server stops
            await node.aclose()
