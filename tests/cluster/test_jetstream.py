"""JetStream streams, publishes and pull consumers (transport/jetstream/) against real servers."""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from natsagents.errors import ConfigurationError, PayloadTooLarge, ProtocolError, TransportError
from natsagents.server import NatsCluster
from natsagents.testing import wait_for
from natsagents.transport import Inbound, Transport
from natsagents.transport.jetstream import (
    PARTITIONS_KEY,
    ConsumerConfig,
    ConsumerNotFound,
    JetStreamError,
    JsMsg,
    MalformedAckSubject,
    Outgoing,
    PubAck,
    PublishBatchError,
    PullConsumer,
    StreamConfig,
    StreamNotFound,
    consumer_info,
    delete_consumer,
    delete_stream,
    ensure_consumer,
    ensure_stream,
    parse_ack_subject,
    partition_of,
    partition_of_tokens,
    publish,
    publish_many,
    stream_info,
)
from tests.conftest import Connect

Make = Callable[..., Awaitable[dict[str, object]]]


@pytest.fixture
async def js(connect: Connect, nats_url: str) -> Transport:
    return await connect(nats_url)


@pytest.fixture
async def make_stream(js: Transport) -> AsyncIterator[Make]:
    """Creates streams with ensure_stream and deletes them after the test."""
    made: list[tuple[Transport, str]] = []

    async def make(config: StreamConfig, transport: Transport | None = None) -> dict[str, object]:
        transport = transport or js
        made.append((transport, config.name))
        return await ensure_stream(transport, config)

    try:
        yield make
    finally:
        for transport, name in made:
            if not transport.is_closed:
                await delete_stream(transport, name)


def _work_stream(prefix: str, **options: object) -> StreamConfig:
    return StreamConfig(name=f"W{prefix}", subjects=[f"{prefix}.work.>"], retention="workqueue", **options)  # type: ignore[arg-type]


async def _work_consumer(js: Transport, make_stream: Make, prefix: str, **options: object) -> PullConsumer:
    await make_stream(_work_stream(prefix))
    await ensure_consumer(js, f"W{prefix}", ConsumerConfig("worker", **options))  # type: ignore[arg-type]
    return PullConsumer(js, f"W{prefix}", "worker")


async def _messages(js: Transport, stream: str) -> int:
    return int((await stream_info(js, stream))["state"]["messages"])


# -- partitions --------------------------------------------------------------------------


def test_fnv1a_reference_values() -> None:
    # FNV-1a 32-bit reference vectors: "" -> 0x811c9dc5, "a" -> 0xe40c292c, "foobar" -> 0xbf9cf968
    assert partition_of("", 2**31) == 0x811C9DC5 % 2**31
    assert partition_of(b"a", 0xE40C292D) == 0xE40C292C
    assert partition_of("foobar", 0xBF9CF969) == 0xBF9CF968
    # the tokens are concatenated with no separator
    assert partition_of_tokens(["ab", "c"], 1000) == partition_of_tokens(["a", "bc"], 1000) == partition_of("abc", 1000)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigurationError):
            partition_of("k", bad)  # type: ignore[arg-type]
    for tokens in (["a.b"], [""], ["a b"], "ab"):
        with pytest.raises(ConfigurationError):
            partition_of_tokens(tokens, 16)


def _random_token(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    length = rng.choice([1, 2, 5, 12, 36, 80, 200])
    return "".join(rng.choices(alphabet, k=length))


@pytest.mark.parametrize(
    ("partitions", "args", "count"),
    [(16, "1,2", 400), (7, "2,1", 150), (256, "2", 150)],
    ids=["16-kind-id", "7-id-kind", "256-id-only"],
)
async def test_partitions_match_the_server(
    js: Transport, make_stream: Make, mesh_prefix: str, partitions: int, args: str, count: int
) -> None:
    p = mesh_prefix
    dest = f"{p}.dpart.{{{{partition({partitions},{args})}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"
    config = StreamConfig(name=f"P{p}", subjects=[f"{p}.durable.*.*"], subject_transform=(f"{p}.durable.*.*", dest))
    assert config.partitions == partitions and config.metadata[PARTITIONS_KEY] == str(partitions)
    created = await make_stream(config)
    assert created["metadata"][PARTITIONS_KEY] == str(partitions)  # type: ignore[index]

    rng = random.Random(f"{partitions}{args}")
    pairs = {(_random_token(rng), _random_token(rng)) for _ in range(count)}
    await publish_many(js, [Outgoing(f"{p}.durable.{k}.{i}", b"", msg_id=f"{k}.{i}") for k, i in pairs])
    await ensure_consumer(js, f"P{p}", ConsumerConfig("reader"))
    async with PullConsumer(js, f"P{p}", "reader") as reader:
        msgs = await reader.fetch(len(pairs), expires=5)
    assert len(msgs) == len(pairs)
    for msg in msgs:
        _, _, chosen, kind, ident = msg.subject.split(".")
        indexes = [int(a) for a in args.split(",")]
        tokens = [(kind, ident)[i - 1] for i in indexes]
        expected = partition_of_tokens(tokens, partitions) if len(tokens) > 1 else partition_of(tokens[0], partitions)
        assert int(chosen) == expected, msg.subject


# -- streams -----------------------------------------------------------------------------


async def test_ensure_stream_is_idempotent_and_never_changes_the_partition_count(
    js: Transport, make_stream: Make, mesh_prefix: str
) -> None:
    p = mesh_prefix

    def config(partitions: int = 16, **options: object) -> StreamConfig:
        dest = f"{p}.dpart.{{{{partition({partitions},1,2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"
        return StreamConfig(  # type: ignore[arg-type]
            name=f"E{p}",
            subjects=[f"{p}.durable.*.*"],
            subject_transform=(f"{p}.durable.*.*", dest),
            metadata={"owner": "inbox"},
            **options,  # type: ignore[arg-type]
        )

    first = await make_stream(config())
    assert first["num_replicas"] == 1  # a single server
    again = await ensure_stream(js, config())
    assert again == first
    assert again["metadata"][PARTITIONS_KEY] == "16" and again["metadata"]["owner"] == "inbox"  # type: ignore[index]

    updated = await ensure_stream(js, config(max_age=3600, max_consumers=50, duplicate_window=60))
    assert (updated["max_age"], updated["max_consumers"], updated["duplicate_window"]) == (3600e9, 50, 60e9)
    assert updated["metadata"][PARTITIONS_KEY] == "16"  # type: ignore[index]

    with pytest.raises(ConfigurationError, match="partition count"):
        await ensure_stream(js, config(partitions=32))
    with pytest.raises(ConfigurationError, match="retention"):
        await ensure_stream(js, config(retention="workqueue"))
    info = await stream_info(js, f"E{p}")
    assert info["config"]["metadata"][PARTITIONS_KEY] == "16"
    assert "partition(16,1,2)" in info["config"]["subject_transform"]["dest"]

    with pytest.raises(ConfigurationError):
        StreamConfig(name="x", subjects=["a"], metadata={PARTITIONS_KEY: "8"})  # no partitioned transform
    with pytest.raises(ConfigurationError):
        StreamConfig(name="bad.name", subjects=["a"])
    with pytest.raises(ConfigurationError):
        StreamConfig(name="x", subjects=["a"], max_age=10, duplicate_window=20)


async def test_max_consumers_is_honoured(js: Transport, make_stream: Make, mesh_prefix: str) -> None:
    await make_stream(StreamConfig(name=f"M{mesh_prefix}", subjects=[f"{mesh_prefix}.m.>"], max_consumers=2))
    for name in ("a", "b"):
        await ensure_consumer(js, f"M{mesh_prefix}", ConsumerConfig(name))
    await ensure_consumer(js, f"M{mesh_prefix}", ConsumerConfig("a", ack_wait=5))  # updating one still works
    with pytest.raises(JetStreamError) as refused:
        await ensure_consumer(js, f"M{mesh_prefix}", ConsumerConfig("c"))
    assert refused.value.err_code == 10026
    assert await delete_consumer(js, f"M{mesh_prefix}", "a")
    assert not await delete_consumer(js, f"M{mesh_prefix}", "a")
    await ensure_consumer(js, f"M{mesh_prefix}", ConsumerConfig("c"))
    with pytest.raises(StreamNotFound):
        await ensure_consumer(js, f"NOPE{mesh_prefix}", ConsumerConfig("c"))
    with pytest.raises(ConfigurationError):
        ConsumerConfig("d", max_deliver=1, backoff=[1, 2])


# -- publishing --------------------------------------------------------------------------


async def test_publish_deduplicates_by_msg_id(js: Transport, make_stream: Make, mesh_prefix: str) -> None:
    await make_stream(_work_stream(mesh_prefix))
    subject = f"{mesh_prefix}.work.a"
    first = await publish(js, subject, b"one", msg_id="m1", headers={"X-Kind": "test"})
    second = await publish(js, subject, b"one", msg_id="m1")
    assert (first.stream, first.duplicate) == (f"W{mesh_prefix}", False)
    assert (second.seq, second.duplicate) == (first.seq, True)
    other = await publish(js, subject, b"two", msg_id="m2", expected_stream=f"W{mesh_prefix}")
    assert other.seq == first.seq + 1 and not other.duplicate
    assert await _messages(js, f"W{mesh_prefix}") == 2
    with pytest.raises(JetStreamError) as wrong:
        await publish(js, subject, b"x", msg_id="m3", expected_stream="OTHER")
    assert wrong.value.err_code == 10060 and not isinstance(wrong.value, StreamNotFound)


async def test_publish_without_a_stream_fails_fast(js: Transport, make_stream: Make, mesh_prefix: str) -> None:
    started = time.monotonic()
    with pytest.raises(StreamNotFound) as missing:
        await publish(js, f"{mesh_prefix}.nostream.x", b"x", msg_id="a", timeout=10)
    assert time.monotonic() - started < 1.5
    assert isinstance(missing.value, TransportError) and "nothing was stored" in str(missing.value)

    results = await _batch_with_a_missing_stream(js, make_stream, mesh_prefix)
    assert isinstance(results[1], StreamNotFound)
    acks = [r for i, r in enumerate(results) if i != 1]
    assert [a.seq for a in acks] == [1, 2]  # type: ignore[attr-defined]


async def _batch_with_a_missing_stream(js: Transport, make_stream: Make, p: str) -> tuple[object, ...]:
    await make_stream(_work_stream(p))
    batch = [
        Outgoing(f"{p}.work.a", b"1", "1"),
        Outgoing(f"{p}.nostream.b", b"2", "2"),
        Outgoing(f"{p}.work.c", b"3", "3"),
    ]
    with pytest.raises(PublishBatchError) as failed:
        await publish_many(js, batch)
    assert list(failed.value.failures) == [1]
    return failed.value.results


async def test_publish_many_keeps_order(js: Transport, make_stream: Make, mesh_prefix: str) -> None:
    await make_stream(_work_stream(mesh_prefix))
    msgs = [Outgoing(f"{mesh_prefix}.work.{i % 3}", str(i).encode(), f"id{i}") for i in range(200)]
    acks = await publish_many(js, msgs)
    assert [a.seq for a in acks] == list(range(1, 201))
    again = await publish_many(js, msgs[:10])  # resent with the same ids: all duplicates
    assert all(a.duplicate for a in again) and [a.seq for a in again] == list(range(1, 11))
    assert await publish_many(js, []) == []


async def test_oversized_messages_are_refused_before_sending(
    js: Transport, make_stream: Make, mesh_prefix: str
) -> None:
    await make_stream(_work_stream(mesh_prefix, max_msg_size=1000))
    subject = f"{mesh_prefix}.work.big"
    with pytest.raises(PayloadTooLarge):  # headers + payload over max_payload: never sent
        await publish(js, subject, b"x" * (js.max_payload - 20), msg_id="big")
    with pytest.raises(PayloadTooLarge):
        await publish_many(js, [Outgoing(subject, b"ok", "a"), Outgoing(subject, b"x" * js.max_payload, "b")])
    with pytest.raises(PayloadTooLarge):  # over the stream's max_msg_size: refused by the server
        await publish(js, subject, b"x" * 1500, msg_id="mid")
    assert await _messages(js, f"W{mesh_prefix}") == 0
    assert js.is_connected
    await publish(js, subject, b"small", msg_id="small")
    assert await _messages(js, f"W{mesh_prefix}") == 1


# -- pull consumers ----------------------------------------------------------------------


async def test_fetch_returns_at_most_batch_and_acks_remove_from_a_workqueue(
    js: Transport, make_stream: Make, mesh_prefix: str
) -> None:
    consumer = await _work_consumer(js, make_stream, mesh_prefix)
    stream = f"W{mesh_prefix}"
    await publish_many(js, [Outgoing(f"{mesh_prefix}.work.{i}", f"m{i}".encode(), f"{i}") for i in range(5)])
    async with consumer:
        first = await consumer.fetch(3, expires=2)
        assert [m.data for m in first] == [b"m0", b"m1", b"m2"]
        assert [(m.stream_seq, m.num_delivered) for m in first] == [(1, 1), (2, 1), (3, 1)]
        assert [m.num_pending for m in first] == [4, 3, 2]
        assert first[0].subject == f"{mesh_prefix}.work.0" and first[0].headers["Nats-Msg-Id"] == "0"
        assert first[0].timestamp == pytest.approx(time.time(), abs=5)
        for msg in first:
            await msg.ack_sync()
        await msg.ack_sync()  # a second double ack is fine
        assert await _messages(js, stream) == 2
        rest = await consumer.fetch(10, expires=2, no_wait=True)  # returns without waiting for 10
        assert [m.stream_seq for m in rest] == [4, 5]
        for msg in rest:
            await msg.ack()
        await wait_for(lambda: _messages_is(js, stream, 0), what="acked messages removed")
        info = await consumer_info(js, stream, "worker")
        assert info["num_ack_pending"] == 0 and info["num_pending"] == 0


async def _messages_is(js: Transport, stream: str, count: int) -> bool:
    return await _messages(js, stream) == count


async def test_fetch_on_an_empty_stream_returns_nothing_within_expires(
    js: Transport, make_stream: Make, mesh_prefix: str
) -> None:
    async with await _work_consumer(js, make_stream, mesh_prefix) as consumer:
        for no_wait in (False, True):
            started = time.monotonic()
            assert await consumer.fetch(5, expires=0.5, no_wait=no_wait) == []
            assert 0.4 < time.monotonic() - started < 1.3
        started = time.monotonic()  # idle heartbeats keep a long fetch alive
        assert await consumer.fetch(5, expires=1.0, heartbeat=0.2) == []
        assert 0.9 < time.monotonic() - started < 1.5
        with pytest.raises(ConfigurationError):
            await consumer.fetch(1, expires=1.0, heartbeat=0.8)
        with pytest.raises(ConfigurationError):
            await consumer.fetch(0, expires=1.0)


async def test_fetch_returns_as_soon_as_a_message_comes_with_no_wait(
    js: Transport, make_stream: Make, mesh_prefix: str
) -> None:
    async with await _work_consumer(js, make_stream, mesh_prefix) as consumer:
        fetch = asyncio.ensure_future(consumer.fetch(10, expires=5, no_wait=True))
        await wait_for(lambda: consumer._pull is not None, what="pull request sent")
        started = time.monotonic()
        await publish(js, f"{mesh_prefix}.work.x", b"x", msg_id="x")
        msgs = await fetch
        assert [m.data for m in msgs] == [b"x"] and time.monotonic() - started < 1.0


async def test_nak_with_delay_redelivers_only_after_the_delay(
    js: Transport, make_stream: Make, mesh_prefix: str
) -> None:
    async with await _work_consumer(js, make_stream, mesh_prefix, ack_wait=10) as consumer:
        await publish(js, f"{mesh_prefix}.work.n", b"n", msg_id="n")
        (msg,) = await consumer.fetch(1, expires=2)
        naked = time.monotonic()
        await msg.nak(delay=1.0)
        assert await consumer.fetch(1, expires=0.6) == []  # not redelivered before the delay
        (again,) = await consumer.fetch(1, expires=3)
        assert time.monotonic() - naked >= 0.95
        assert (again.stream_seq, again.num_delivered) == (msg.stream_seq, 2)
        await again.nak()  # a plain NAK redelivers at once
        (third,) = await consumer.fetch(1, expires=1)
        assert third.num_delivered == 3
        await third.ack_sync()


async def test_term_stops_redelivery(js: Transport, make_stream: Make, mesh_prefix: str) -> None:
    async with await _work_consumer(js, make_stream, mesh_prefix, ack_wait=0.3) as consumer:
        await publish(js, f"{mesh_prefix}.work.t", b"poison", msg_id="t")
        (msg,) = await consumer.fetch(1, expires=2)
        await msg.term("cannot parse\nthis")
        assert await consumer.fetch(1, expires=1.0) == []  # more than 3 ack waits: never redelivered
        info = await consumer_info(js, f"W{mesh_prefix}", "worker")
        assert info["num_ack_pending"] == 0 and info["num_redelivered"] == 0


async def test_in_progress_extends_the_ack_wait(js: Transport, make_stream: Make, mesh_prefix: str) -> None:
    async with await _work_consumer(js, make_stream, mesh_prefix, ack_wait=1.0) as consumer:
        await publish(js, f"{mesh_prefix}.work.w", b"slow", msg_id="w")
        (msg,) = await consumer.fetch(1, expires=2)
        for _ in range(4):  # 2 s of work, twice the ack wait: a +WPI every 0.5 s
            assert await consumer.fetch(1, expires=0.5) == []
            await msg.in_progress()
        last = time.monotonic()
        (again,) = await consumer.fetch(1, expires=3)  # no more progress: redelivered after ack_wait
        assert time.monotonic() - last >= 0.9
        assert (again.stream_seq, again.num_delivered) == (msg.stream_seq, 2)


async def test_max_deliver_and_backoff(js: Transport, make_stream: Make, mesh_prefix: str) -> None:
    stream = f"W{mesh_prefix}"
    consumer = await _work_consumer(js, make_stream, mesh_prefix, max_deliver=3, backoff=(0.3, 0.6))
    info = await consumer_info(js, stream, "worker")
    assert info["config"]["ack_wait"] == 0.3e9  # the server replaces ack_wait with backoff[0]
    advisories: list[Inbound] = []
    sub = await js.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.worker", advisories.append)
    async with consumer:
        await publish(js, f"{mesh_prefix}.work.p", b"poison", msg_id="p")
        deliveries = [(await consumer.fetch(1, expires=2))[0]]
        times = [time.monotonic()]
        for _ in range(2):
            deliveries.extend(await consumer.fetch(1, expires=2))
            times.append(time.monotonic())
        assert [m.num_delivered for m in deliveries] == [1, 2, 3]
        assert times[1] - times[0] >= 0.25 and times[2] - times[1] >= 0.55  # backoff[0], then backoff[1]
        assert await consumer.fetch(1, expires=1.2) == []  # two backoffs later: not delivered again
        # the server notices the limit when it would redeliver (to a waiting pull request)
        await wait_for(lambda: bool(advisories), timeout=3, what="max deliveries advisory")
        info = await consumer_info(js, stream, "worker")
        assert info["num_ack_pending"] == 0 and info["delivered"]["stream_seq"] == 1
    await sub.unsubscribe()


async def test_fetch_from_a_missing_or_deleted_consumer(js: Transport, make_stream: Make, mesh_prefix: str) -> None:
    consumer = await _work_consumer(js, make_stream, mesh_prefix)
    async with PullConsumer(js, f"W{mesh_prefix}", "nobody") as missing:
        started = time.monotonic()
        with pytest.raises(ConsumerNotFound):
            await missing.fetch(1, expires=5)
        assert time.monotonic() - started < 1.5
    async with consumer:
        fetch = asyncio.ensure_future(consumer.fetch(1, expires=5))
        await wait_for(lambda: consumer._pull is not None, what="pull request sent")
        await js.flush()  # the pull request reached the server
        assert await delete_consumer(js, f"W{mesh_prefix}", "worker")
        with pytest.raises(ConsumerNotFound):
            await fetch
    with pytest.raises(ConsumerNotFound):
        await consumer_info(js, f"W{mesh_prefix}", "worker")


async def test_a_delivery_to_an_abandoned_fetch_goes_to_the_next(
    js: Transport, make_stream: Make, mesh_prefix: str
) -> None:
    async with await _work_consumer(js, make_stream, mesh_prefix) as consumer:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await consumer.fetch(1, expires=3)  # the server still holds this request
        await publish(js, f"{mesh_prefix}.work.late", b"late", msg_id="late")
        await wait_for(lambda: len(consumer._buffer) == 1, what="late delivery buffered")
        started = time.monotonic()
        (msg,) = await consumer.fetch(1, expires=3)
        assert msg.data == b"late" and msg.num_delivered == 1 and time.monotonic() - started < 0.5
        await msg.ack_sync()
    with pytest.raises(TransportError):
        await consumer.fetch(1, expires=1)  # closed


# -- ack subjects ------------------------------------------------------------------------


def test_ack_subjects_parse() -> None:
    v1 = parse_ack_subject("$JS.ACK.S.D.2.10.7.1795480435006016000.3")
    assert (v1.stream, v1.consumer, v1.num_delivered, v1.stream_seq, v1.consumer_seq, v1.num_pending) == (
        "S",
        "D",
        2,
        10,
        7,
        3,
    )
    assert v1.timestamp_ns == 1795480435006016000 and v1.domain is None
    assert v1.timestamp == pytest.approx(1795480435.006016)
    v2 = parse_ack_subject("$JS.ACK.hub.ACCHASH.S.D.1.5.4.1795480435006016000.0.tok")
    assert (v2.domain, v2.stream, v2.consumer, v2.stream_seq, v2.consumer_seq) == ("hub", "S", "D", 5, 4)
    assert parse_ack_subject("$JS.ACK._.ACCHASH.S.D.1.5.4.17.0.tok.more").domain is None


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "$JS",
        "$JS.ACK",
        "_INBOX.abc.1",
        "$JS.ACK.S.D.1.2.3.4",  # 8 tokens
        "$JS.ACK.S.D.1.2.3.4.5.6",  # 10 tokens
        "$JS.ACK.S.D.1.x.3.4.5",  # not a number
        "$JS.ACK.S.D.1.-2.3.4.5",
        "$JS.ACK.S.D.1.².3.4.5",  # a digit, but not ASCII
        "$JS.ACK..D.1.2.3.4.5",  # empty stream
        "$JS.NAK.S.D.1.2.3.4.5",
        None,
    ],
)
def test_malformed_ack_subjects_raise_a_protocol_error(reply: str) -> None:
    with pytest.raises(MalformedAckSubject) as bad:
        parse_ack_subject(reply)
    assert isinstance(bad.value, ProtocolError) and isinstance(bad.value, JetStreamError)


async def test_a_malformed_reply_never_makes_a_js_msg(js: Transport) -> None:
    with pytest.raises(MalformedAckSubject):
        JsMsg(js, "s", b"", None, "$JS.ACK.S.D.1")
    msg = JsMsg(js, "s", b"x", {"a": "b"}, "$JS.ACK.S.D.1.2.3.4.5")
    assert (msg.stream_seq, msg.num_delivered, msg.num_pending, msg.headers) == (2, 1, 5, {"a": "b"})
    with pytest.raises(ConfigurationError):
        await msg.nak(delay=-1)


# -- a 3-node cluster --------------------------------------------------------------------


async def test_r3_stream_publishes_survive_a_leader_stepdown(
    nats_cluster: NatsCluster, connect: Connect, make_stream: Make, mesh_prefix: str
) -> None:
    transport = await connect(*nats_cluster.urls)
    stream = f"R{mesh_prefix}"
    config = await make_stream(StreamConfig(name=stream, subjects=[f"{mesh_prefix}.r.>"]), transport)
    assert config["num_replicas"] == 3  # replicas=None on a 3-node cluster
    leader = (await stream_info(transport, stream))["cluster"]["leader"]
    acks: list[PubAck] = []
    stepped_down = asyncio.Event()

    async def publisher() -> None:  # one publish after another, across the leader change
        after = 0
        while after < 100:
            i = len(acks)
            acks.append(await publish(transport, f"{mesh_prefix}.r.{i}", str(i).encode(), msg_id=f"id{i}", timeout=15))
            after += stepped_down.is_set()

    task = asyncio.ensure_future(publisher())
    await wait_for(lambda: len(acks) >= 100, what="publishing")
    await transport.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
    stepped_down.set()
    await task
    info = await stream_info(transport, stream)
    assert info["cluster"]["leader"] != leader
    # a timed-out attempt that did land comes back as a duplicate of itself: same sequence
    assert [a.seq for a in acks] == list(range(1, len(acks) + 1))
    assert info["state"]["messages"] == len(acks)  # retried attempts were deduplicated
    again = await publish_many(transport, [Outgoing(f"{mesh_prefix}.r.{i}", b"", f"id{i}") for i in range(10)])
    assert [(a.seq, a.duplicate) for a in again] == [(i, True) for i in range(1, 11)]  # the new leader dedups too

    await ensure_consumer(transport, stream, ConsumerConfig("all"))
    async with PullConsumer(transport, stream, "all") as consumer:
        got = await consumer.fetch(len(acks), expires=5)
        assert [int(m.data) for m in got] == list(range(len(acks)))
        await asyncio.gather(*(m.ack_sync() for m in got))
