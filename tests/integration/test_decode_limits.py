"""Decoding limits (security findings 6 and 12): bodies that expand or nest without bound.

Unit tests of ``wire.codec``, ``wire.envelope`` and ``wire.batch`` with no server, then a
hostile peer (raw nats-py) against a live host in this process, whose peak RSS growth and
answer time are measured around each message."""

from __future__ import annotations

import datetime
import functools
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import msgpack.fallback
import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natsagents import ClusterSettings, Mesh, ProtocolError
from natsagents.state import StateStore
from natsagents.transport import ConnectSettings, Transport
from natsagents.wire import batch as wire_batch
from natsagents.wire import codec, envelope, scan
from natsagents.wire import headers as h
from natsagents.wire.owner import owner_mac
from tests.agents import Counter, Typed

MiB = 1024 * 1024
#: The limits as docs/protocol.md §5.4 and §9.1 state them.
DEPTH = 1024
OBJECTS = 524_288
INFLATED = 4 * MiB


def empty_maps(n: int) -> bytes:
    """A msgpack array of ``n`` empty maps: one byte each, ~70 bytes each once decoded."""
    return b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n


@functools.cache
def bomb(n: int) -> bytes:
    """The findings' deflate bomb: ``n`` empty maps, compressed (16 Mi: 16 KiB, 63 Mi: 63 KiB)."""
    return zlib.compress(empty_maps(n), 9)


def nested(depth: int, leaf: bytes = b"\xc0") -> bytes:
    """``depth`` arrays, each holding the next one."""
    return b"\x91" * depth + leaf


def open_path(width: int, depth: int, item: bytes) -> bytes:
    """``depth`` arrays, each ``width`` items followed by the next array: no array closes
    before the innermost, so no item can be counted before every one has been built."""
    out = b"\xc0"
    for _ in range(depth):
        out = b"\xdd" + (width + 1).to_bytes(4, "big") + item * width + out
    return out


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


class PeakRss:
    """The growth of this process's peak RSS (VmHWM) since :meth:`start`, in MiB."""

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pytest.skip("the peak RSS cannot be reset here (/proc/self/clear_refs)")
        self.base = _status("VmRSS")

    def growth(self) -> float:
        return (_status("VmHWM") - self.base) / MiB


@pytest.fixture
def peak() -> PeakRss:
    return PeakRss()


# -- codec ----------------------------------------------------------------------------------


def test_the_limits_are_the_documented_ones() -> None:
    assert (codec.MAX_DEPTH, codec.MAX_OBJECTS) == (DEPTH, OBJECTS)
    assert envelope.MAX_INFLATED == INFLATED


@pytest.mark.parametrize("depth", [DEPTH + 1, 3000, 100_000])
@pytest.mark.parametrize("container", [b"\x91", b"\x81\x00"], ids=["arrays", "maps"])  # [[…]], {0: {0: …}}
def test_any_depth_beyond_the_limit_is_a_clear_value_error(container: bytes, depth: int) -> None:
    with pytest.raises(ValueError, match=f"nested deeper than {DEPTH} levels"):
        codec.decode(container * depth + b"\xc0")
    assert codec.decode(b"\x91" * DEPTH + b"\xc0") is not None


def test_depth_is_a_value_error_with_msgpacks_pure_python_unpacker_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its C extension msgpack recurses: RecursionError becomes the same ValueError."""
    monkeypatch.setattr(codec, "_unpackb", msgpack.fallback.unpackb)
    with pytest.raises(ValueError, match="nested deeper than"):
        codec.decode(nested(5000))
    assert codec.decode(codec.encode({"a": [1, 2]})) == {"a": [1, 2]}


@pytest.mark.parametrize(
    "body",
    [
        empty_maps(300_000),  # one array: each map counts as itself and as an item
        b"\x94" + empty_maps(80_000) * 4,  # arrays that close: counted as they do
        open_path(100_000, 4, b"\x80"),  # arrays that stay open: each map counts when built
        b"\xdd" + (600_000).to_bytes(4, "big") + b"\x00" * 600_000,  # longer than the limit
        b"\xdf" + (300_000).to_bytes(4, "big") + b"\x00\xc0" * 300_000,  # one map, the same
    ],
    ids=["flat", "closed", "open", "one-long-array", "one-long-map"],
)
def test_a_plain_body_over_the_object_limit_is_refused(body: bytes) -> None:
    assert len(body) < MiB  # it travels as it is, compression plays no part
    with pytest.raises(ValueError, match=f"msgpack body holds more than {OBJECTS} objects"):
        codec.decode(body)


def test_bodies_within_the_limits_decode_and_the_limit_can_be_lifted() -> None:
    records = [{"k": i, "v": "x" * 10} for i in range(20_000)]  # 390 KB: counted, within
    assert codec.decode(codec.encode(records)) == records
    blob = {"blob": b"\x00" * (3 * MiB)}  # few objects, however long
    assert codec.decode(codec.encode(blob)) == blob
    many = list(range(1000, 601_000))  # 600,001 objects: too many from a peer, not in our own state
    with pytest.raises(ValueError, match="holds more than"):
        codec.decode(codec.encode(many))
    assert codec.decode(codec.encode(many), None) == many
    assert codec.decode(codec.encode(many), 2 * len(many)) == many


def test_the_object_limit_bounds_memory_however_the_body_is_built(peak: PeakRss) -> None:
    """4 MiB bodies (what the default inflate limit lets through) of empty maps, the most
    costly object per byte (~70 bytes each: 4 Mi of them would take ~300 MiB unchecked), in
    arrays as long as the limit allows, closed or left open."""
    longest = OBJECTS - 1
    for body in (b"\x98" + empty_maps(longest) * 8, open_path(longest, 8, b"\x80")):
        assert len(body) >= 4 * MiB
        peak.start()
        started = time.perf_counter()
        with pytest.raises(ValueError, match="holds more than"):
            codec.decode(body)
        assert peak.growth() < 50, f"{peak.growth():.0f} MiB"
        assert time.perf_counter() - started < 2


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.binary(max_size=30)
    | st.datetimes(timezones=st.just(datetime.UTC)),
    lambda inner: (
        st.lists(inner, max_size=8)
        | st.dictionaries(st.text(max_size=10) | st.integers(-1000, 1000), inner, max_size=8)
    ),
    max_leaves=60,
)


@settings(max_examples=200, deadline=None)
@given(value=msgpack_values, depth=st.integers(0, 400))
def test_ordinary_values_round_trip_through_both_decoders(value: Any, depth: int) -> None:
    """Within the limits the scan of long bodies (wire.scan) passes what short bodies decode to."""
    for _ in range(depth):  # nesting that encode() can write (msgpack's packer stops at 512)
        value = [value]
    data = codec.encode(value)
    assert codec.decode(data) == value
    assert scan.scan(data, OBJECTS) <= OBJECTS


# -- inflate --------------------------------------------------------------------------------


def test_inflate_stops_at_four_times_the_default_max_payload(peak: PeakRss) -> None:
    body = bomb(63 * MiB)
    peak.start()
    with pytest.raises(ProtocolError, match=f"expands beyond {4 * MiB} bytes"):
        envelope.inflate(body)
    assert peak.growth() < 20
    exact = zlib.compress(b"\x00" * INFLATED)
    assert len(envelope.inflate(exact)) == INFLATED
    with pytest.raises(ProtocolError, match="expands beyond"):
        envelope.inflate(exact, INFLATED - 1)


def test_the_inflate_limit_follows_the_servers_max_payload() -> None:
    assert envelope.inflate_limit(MiB) == 4 * MiB
    assert envelope.inflate_limit(64 * 1024) == 4 * MiB  # never below the default
    assert envelope.inflate_limit(8 * MiB) == 32 * MiB
    five = zlib.compress(msgpack.packb(b"\x00" * (5 * MiB)))
    reply = {h.STATUS: h.STATUS_OK, h.ENCODING: h.ENCODING_DEFLATE}
    with pytest.raises(ProtocolError, match="expands beyond"):
        envelope.parse_reply(reply, five)
    assert envelope.parse_reply(reply, five, max_payload=8 * MiB) == b"\x00" * (5 * MiB)


@pytest.mark.parametrize(
    "after", [b"junk", b"\x00", zlib.compress(b"\x81\xa2by\x05")], ids=["junk", "one-byte", "second-stream"]
)
def test_inflate_refuses_bytes_after_the_end_of_the_stream(after: bytes) -> None:
    with pytest.raises(ProtocolError, match=f"has {len(after)} bytes after the end of its zlib stream"):
        envelope.inflate(zlib.compress(msgpack.packb({"by": 5})) + after)


@pytest.mark.parametrize("cut", [1, 4, 9])
def test_inflate_refuses_a_truncated_stream_and_says_so(cut: int) -> None:
    whole = zlib.compress(msgpack.packb({"text": "abc" * 1000}))
    with pytest.raises(ProtocolError, match="truncated") as caught:
        envelope.inflate(whole[:-cut])
    assert "expands" not in str(caught.value)  # it is short, not long
    exact = zlib.compress(b"\x00" * 1000)
    with pytest.raises(ProtocolError, match="truncated"):
        envelope.inflate(exact[:-4], 1000)  # its 1000 bytes come out, but the stream never ends


# -- batches --------------------------------------------------------------------------------

AT_LEAST_ONCE = {h.PROTO: "1", h.DELIVERY: h.DELIVERY_AT_LEAST_ONCE}


def item(action: str, seq: int, body: bytes) -> tuple[dict[str, str], bytes]:
    hdrs = {**AT_LEAST_ONCE, h.ACTION: action, h.MESSAGE_ID: envelope.new_message_id(), h.STREAM_SEQ: str(seq)}
    return hdrs, body


def nested_batches(depth: int) -> bytes:
    """A batch whose one item is a batch whose one item is … ``depth`` levels; the innermost
    item adds 1 to a Counter."""
    _, body = wire_batch.batch_request([item("add", 1, msgpack.packb({"by": 1}))])
    for level in range(depth - 1):
        hdrs = {**AT_LEAST_ONCE, h.BATCH: "1", h.MESSAGE_ID: f"b{level}", h.STREAM_SEQ: "1"}
        body = msgpack.packb([[hdrs, body]])
    return body


def test_a_batch_item_that_is_a_batch_is_refused() -> None:
    with pytest.raises(ProtocolError, match="item 0 carries Na-Batch: a batch cannot hold a batch"):
        wire_batch.parse_batch_request({h.BATCH: "1"}, nested_batches(2))
    assert len(wire_batch.parse_batch_request({h.BATCH: "1"}, nested_batches(1))) == 1


def test_a_deep_batch_body_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="nested deeper than"):
        wire_batch.parse_batch_request({h.BATCH: "1"}, nested(3000))
    with pytest.raises(ProtocolError, match="nested deeper than"):
        wire_batch.parse_batch_reply({h.BATCH: "1"}, nested(3000), 1)


# -- a hostile peer against a live host -----------------------------------------------------


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def node_victim(mesh_factory: Any) -> Mesh:
    """The same agents on a cluster node: batches run only when signed by a partition
    owner (wire.owner), so the tests of batch bodies sign theirs with its owner key."""
    settings = ClusterSettings(node_id="v1", lease=1.5, rebalance=False, delivery=None)
    mesh: Mesh = await mesh_factory(name="v1", cluster=settings)
    await mesh.host(Counter, Typed)
    assert await mesh.ref("Counter/v").call("add", by=7) == 7
    await mesh.spawn(Counter, "w")
    await mesh.spawn(Typed, "t")
    return mesh


def signed(node: Mesh, prefix: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
    """``headers`` with the owner proof a partition owner would add."""
    key = node.cluster_node.owner_key
    assert key is not None
    return {**headers, h.OWNER_MAC: owner_mac(key, subject(prefix), headers, body)}


@pytest.fixture
async def victim(mesh: Mesh) -> Mesh:
    """Counter/v at 7, Counter/w and Typed/t: the agents every test checks afterwards."""
    await mesh.host(Counter, Typed)
    assert await mesh.ref("Counter/v").call("add", by=7) == 7
    await mesh.spawn(Counter, "w")
    await mesh.spawn(Typed, "t")
    return mesh


class Answer:
    def __init__(self, msg: Any, seconds: float, growth: float) -> None:
        self.headers: dict[str, str] = dict(msg.headers or {})
        self.status = self.headers.get(h.STATUS)
        self.data: bytes = msg.data
        self.body: Any = msgpack.unpackb(msg.data) if msg.data else None
        self.message: str = self.body.get("message", "") if isinstance(self.body, dict) else ""
        self.seconds = seconds
        self.growth = growth


async def hostile(
    raw: Any, subject: str, body: bytes, headers: dict[str, str], peak: PeakRss, timeout: float = 10
) -> Answer:
    peak.start()
    started = time.perf_counter()
    msg = await raw.request(subject, body, headers=headers, timeout=timeout)
    return Answer(msg, time.perf_counter() - started, peak.growth())


async def still_serving(mesh: Mesh) -> None:
    """The agent under attack kept its state; it and the others answer as before."""
    assert await mesh.ref("Counter/v").call("get") == 7
    before = await mesh.ref("Counter/w").call("get")
    assert await mesh.ref("Counter/w").call("add", by=2) == before + 2
    shaped = await mesh.ref("Typed/t").call("shapes", point={"x": 1}, color="red", tags=["a"])
    assert shaped["x"] == 1 and shaped["color"] == "red"


def subject(prefix: str, target: str = "Counter.v") -> str:
    return f"{prefix}.agent.{target}"


DEFLATE = {h.ACTION: "add", h.ENCODING: h.ENCODING_DEFLATE}


@pytest.mark.parametrize("maps", [16 * MiB, 63 * MiB], ids=["16KiB", "63KiB"])
async def test_a_deflate_bomb_is_answered_quickly_and_cheaply(
    victim: Mesh, raw: Any, mesh_prefix: str, peak: PeakRss, maps: int
) -> None:
    body = bomb(maps)
    assert len(body) < 64 * 1024
    answer = await hostile(raw, subject(mesh_prefix), body, DEFLATE, peak)
    assert answer.status == "bad_request"
    assert answer.message == f"compressed body expands beyond {4 * MiB} bytes"
    assert answer.seconds < 1, f"answered after {answer.seconds:.2f} s"
    assert answer.growth < 50, f"peak RSS grew {answer.growth:.0f} MiB"
    await still_serving(victim)


async def test_a_compressed_body_with_bytes_after_its_stream_is_refused(
    victim: Mesh, raw: Any, mesh_prefix: str, peak: PeakRss
) -> None:
    body = zlib.compress(msgpack.packb({"by": 5})) + b"junk"
    answer = await hostile(raw, subject(mesh_prefix), body, DEFLATE, peak)
    assert answer.status == "bad_request"
    assert answer.message == "compressed body has 4 bytes after the end of its zlib stream"
    await still_serving(victim)  # the add of 5 was not applied


async def test_a_truncated_compressed_body_is_refused_as_truncated(
    victim: Mesh, raw: Any, mesh_prefix: str, peak: PeakRss
) -> None:
    body = zlib.compress(msgpack.packb({"by": 5}))[:-3]
    answer = await hostile(raw, subject(mesh_prefix), body, DEFLATE, peak)
    assert answer.status == "bad_request"
    assert answer.message == "compressed body is truncated: its zlib stream does not end"
    await still_serving(victim)


async def test_a_plain_body_over_the_object_limit_never_reaches_the_handler(
    victim: Mesh, raw: Any, mesh_prefix: str, peak: PeakRss
) -> None:
    body = b"\x81\xa5value" + empty_maps(300_000)  # 300 KB: echo would send it all back
    answer = await hostile(raw, subject(mesh_prefix), body, {h.ACTION: "echo"}, peak)
    assert answer.status == "bad_request"
    assert answer.message == f"msgpack body holds more than {OBJECTS} objects"
    assert answer.growth < 50
    await still_serving(victim)


async def test_deep_nesting_in_a_request_is_refused(victim: Mesh, raw: Any, mesh_prefix: str, peak: PeakRss) -> None:
    answer = await hostile(raw, subject(mesh_prefix), b"\x81\xa2by" + nested(3000), {h.ACTION: "add"}, peak)
    assert answer.status == "bad_request"
    assert answer.message == f"msgpack body nested deeper than {DEPTH} levels"
    await still_serving(victim)


async def test_a_deep_value_that_msgpack_accepts_still_gets_a_clean_answer(
    victim: Mesh, raw: Any, mesh_prefix: str, peak: PeakRss
) -> None:
    """1000 levels decode (msgpack's stack holds 1024), but an error message that printed
    the value would pass the recursion limit: the host must answer all the same."""
    body = b"\x82\xa5point\x81\xa1x\x01\xa5color" + nested(1000)
    answer = await hostile(raw, subject(mesh_prefix, "Typed.t"), body, {h.ACTION: "shapes"}, peak)
    assert answer.status == "bad_request"
    assert answer.message == "invalid parameters: color: expected one of ['red', 'blue'], got list"
    await still_serving(victim)


async def answered_once(raw: Any, mesh_prefix: str, headers: dict[str, str], body: bytes) -> Answer:
    """Send a batch and return its one reply. A second reply would come before the answer to
    a ``get`` sent after it: same agent (FIFO), same host connection, same subscriber."""
    inbox = raw.new_inbox()
    sub = await raw.subscribe(inbox)
    started = time.perf_counter()
    await raw.publish(subject(mesh_prefix), body, reply=inbox, headers=headers)
    first = await sub.next_msg(timeout=10)
    answer = Answer(first, time.perf_counter() - started, 0.0)
    await raw.publish(subject(mesh_prefix), b"", reply=inbox, headers={h.ACTION: "get"})
    barrier = await sub.next_msg(timeout=10)
    assert msgpack.unpackb(barrier.data) == 7, "a second reply came before the barrier's"
    assert sub.pending_msgs == 0
    await sub.unsubscribe()
    return answer


@pytest.mark.parametrize("depth", [2, 3000])
async def test_nested_batches_are_refused_with_one_answer(
    node_victim: Mesh, raw: Any, mesh_prefix: str, depth: int
) -> None:
    victim = node_victim
    body = nested_batches(depth)
    assert len(body) < 512 * 1024
    headers = {h.PROTO: "1", h.BATCH: "1", h.MESSAGE_ID: envelope.new_message_id()}
    answer = await answered_once(raw, mesh_prefix, signed(victim, mesh_prefix, headers, body), body)
    assert answer.status == "bad_request"
    assert answer.message == "batch request item 0 carries Na-Batch: a batch cannot hold a batch"
    await still_serving(victim)


async def test_deep_nesting_in_a_batch_is_refused(node_victim: Mesh, raw: Any, mesh_prefix: str) -> None:
    victim = node_victim
    headers = {h.PROTO: "1", h.BATCH: "1", h.MESSAGE_ID: envelope.new_message_id()}
    deep = nested(3000)
    answer = await answered_once(raw, mesh_prefix, signed(victim, mesh_prefix, headers, deep), deep)  # the batch body
    assert answer.status == "bad_request"
    assert answer.message == f"batch request body: msgpack body nested deeper than {DEPTH} levels"
    # One item whose own body nests too deep: the batch runs, that item is refused.
    _, body = wire_batch.batch_request([item("add", 1, b"\x81\xa2by" + nested(3000))])
    headers[h.MESSAGE_ID] = envelope.new_message_id()
    answer = await answered_once(raw, mesh_prefix, signed(victim, mesh_prefix, headers, body), body)
    assert answer.status == "ok" and answer.headers[h.BATCH] == "1"
    ((hdrs, data),) = wire_batch.parse_batch_reply(answer.headers, answer.data, 1)
    assert hdrs[h.STATUS] == "bad_request"
    assert msgpack.unpackb(data)["message"] == f"msgpack body nested deeper than {DEPTH} levels"
    await still_serving(victim)


async def test_stored_state_is_not_held_to_the_limits_of_a_peers_body(nats_url: str, mesh_prefix: str) -> None:
    """The SDK's own state (up to max_payload) may hold more objects than a peer's body may:
    600,000 small ints in 600 KB load back as they were stored."""
    transport = await Transport.connect(ConnectSettings(servers=(nats_url,)))
    try:
        store = StateStore(transport, mesh_prefix)
        await store.start()
        state = {"xs": [0] * 600_000}
        saved = await store.save("Counter", "big", state, epoch=1, revision=0)
        loaded = await store.load("Counter", "big")
        assert (loaded.data, loaded.revision) == (state, saved.revision)
    finally:
        await transport.close()
