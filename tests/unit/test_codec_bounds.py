"""Bounded decoding (security issue, "bounded decoding"): what a crafted body costs to decode.

Each shape is the costliest per body byte of its kind (figures in docs/security.md,
"Bounded decoding"). The bound asserted is the memory traced while decoding (tracemalloc
counts msgpack's allocations too), with margin; before the structural scan (``wire.scan``)
the announced-array shapes cost ~8 KiB of item slots per body byte."""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natsagents.wire import codec, scan

KiB = 1024
MiB = 1024 * KiB
OBJECTS = codec.MAX_OBJECTS


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def announced(total: int, depth: int = 1024, n: int | None = None, header: bytes = b"\xdd") -> bytes:
    """``depth`` arrays, each inside the last and each announcing ``n`` items (default: as many
    as the body is long, all msgpack allows it), then nils up to ``total`` bytes: it ends
    long before the announced items."""
    count = total if n is None else n
    width = 4 if header == b"\xdd" else 2
    head = (header + count.to_bytes(width, "big")) * depth
    return head + b"\xc0" * (total - len(head))


def open_path(width: int, depth: int, item: bytes) -> bytes:
    """``depth`` arrays, each ``width`` items then the next array: none closes before the end."""
    out = b"\xc0"
    for _ in range(depth):
        out = b"\xdd" + u32(width + 1) + item * width + out
    return out


def flat(total: int, item: bytes) -> bytes:
    n = total // len(item)
    return b"\xdd" + u32(n) + item * n


def counted(value: Any) -> int:
    """``codec``'s documented count: each array and map 1 + its items, map entries 2."""
    if isinstance(value, list):
        return 1 + len(value) + sum(counted(v) for v in value)
    if isinstance(value, dict):
        return 1 + 2 * len(value) + sum(counted(k) + counted(v) for k, v in value.items())
    return 0


@contextlib.contextmanager
def traced() -> Iterator[Callable[[], float]]:
    """Peak memory traced (MiB) inside the block, readable during and after it: tracemalloc
    sees msgpack's allocations too."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    seen: list[float] = []

    def peak() -> float:
        return seen[0] if seen else (tracemalloc.get_traced_memory()[1] - base) / MiB

    try:
        yield peak
    finally:
        seen.append(peak())
        tracemalloc.stop()


# Shapes that must be refused: (body, the most objects allowed, the error's message, the bound
# on the traced peak in MiB). The object-count shapes use a lower limit than the default
# (MAX_OBJECTS // 8), as bodies 8 times shorter: the same shapes, and tracemalloc is slow.
SMALL = codec.MAX_OBJECTS // 8
REFUSED = {
    # Item slots announced and never filled: old cost 1024 x 8 x body bytes (128 MiB, 2 GiB …).
    "announced32-16KiB": (lambda: announced(16 * KiB), OBJECTS, "ends inside a value", 1),
    "announced32-256KiB": (lambda: announced(256 * KiB), OBJECTS, "ends inside a value", 1),
    "announced16-64KiB": (lambda: announced(64 * KiB, header=b"\xdc", n=0xFFFF), OBJECTS, "ends inside a value", 1),
    "announced32-1KiB-shallow": (lambda: announced(KiB, depth=200), OBJECTS, "ends inside a value", 1),
    # The long path's old cap (one array up to the limit), as a deflate body inflates to.
    "announced-long-4MiB": (lambda: announced(4 * MiB, n=OBJECTS - 1), OBJECTS, "holds more than", 1),
    # Scalars in arrays still open: the old count saw them only when their array closed.
    "open-strings-512KiB": (lambda: open_path(512 * KiB // 24, 8, b"\xa2ab"), SMALL, "holds more than", 1),
    "open-floats-512KiB": (lambda: open_path(512 * KiB // 40, 8, b"\xca\x3f\x80\x00\x01"), SMALL, "holds more than", 1),
    # Containers, the costliest objects per byte.
    "empty-maps-4MiB": (lambda: flat(4 * MiB, b"\x80"), OBJECTS, "holds more than", 1),
    "nil-maps-512KiB": (lambda: flat(512 * KiB, b"\x81\xc0\xc0"), SMALL, "holds more than", 1),
    "deep-100k": (lambda: b"\x91" * 100_000 + b"\xc0", OBJECTS, "nested deeper than 1024 levels", 1),
}


@pytest.mark.parametrize("shape", list(REFUSED))
def test_a_crafted_body_is_refused_before_it_costs_memory(shape: str) -> None:
    make, limit, message, bound = REFUSED[shape]
    body = make()
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        codec.decode(body, limit)
    took = time.perf_counter() - started
    assert took < 2, f"{shape}: {took:.2f} s"
    with traced() as peak, pytest.raises(ValueError, match=message):
        codec.decode(body, limit)
    assert peak() < bound, f"{shape}: {peak():.1f} MiB traced for {len(body)} bytes"


# Shapes within the limits: decoded, at a cost bounded by the count (~64 B an object).
ACCEPTED = {
    "strings-256KiB": lambda: flat(256 * KiB, b"\xa2ab"),  # 87,381 strings
    "nil-maps-96KiB": lambda: flat(96 * KiB, b"\x81\xc0\xc0"),  # 32,768 maps
    "empty-maps-256KiB": lambda: flat(256 * KiB - 8, b"\x80"),  # counts 524,281
    "ucs4-string-1MiB": lambda: b"\xdb" + u32(MiB - 8) + "\U0001f642".encode() + b"a" * (MiB - 12),
    "bin-4MiB": lambda: b"\xc6" + u32(4 * MiB - 8) + b"\x00" * (4 * MiB - 8),
}


@pytest.mark.parametrize("shape", list(ACCEPTED))
def test_a_costly_body_within_the_limits_costs_at_most_its_estimate(shape: str) -> None:
    body = ACCEPTED[shape]()
    with traced() as peak:
        value, size = codec.decoded_size(body)
        assert value is not None
    # The estimate (len + 64 per object counted) is what the host's decode budget holds;
    # what decoding really took stays within 2x of it (4 bytes a character: the UCS-4 string).
    estimate = (size or len(body) + codec.OBJECT_BYTES * 2 * len(body)) / MiB
    assert peak() < 2 * estimate + 4 * len(body) / MiB, f"{shape}: {peak():.1f} MiB traced, estimated {estimate:.1f}"
    assert peak() < 40, f"{shape}: {peak():.1f} MiB"


def test_the_hot_path_stays_the_plain_unpacker() -> None:
    """A body up to SHORT_BODY bytes goes straight to msgpack (no scan), and the worst it can
    announce without filling stays small: (8/3)·n² bytes of slots, 170 KiB at 256 bytes."""
    body = announced(codec.SHORT_BODY, depth=codec.SHORT_BODY // 3, n=codec.SHORT_BODY, header=b"\xdc")
    with traced() as peak, pytest.raises(ValueError, match="malformed"):
        codec.decode(body)
    assert peak() < 0.25


def test_the_limits_apply_on_every_path() -> None:
    """Depth and completeness are checked whichever path a body takes: short (msgpack
    alone), medium (msgpack's skip first) and long (the scan)."""
    for pad in (0, 1000, 100 * KiB):  # short, medium and long bodies
        filler = msgpack.packb(b"\x00" * pad) if pad else b"\xc0"
        deep = b"\x92" + filler + b"\x91" * 1100 + b"\xc0"
        with pytest.raises(scan.DepthError, match="nested deeper than 1024 levels"):
            codec.decode(deep)
        ok = b"\x92" + filler + b"\x91" * 1000 + b"\xc0"
        assert codec.decode(ok)[0] == (b"\x00" * pad if pad else None)
        with pytest.raises(ValueError, match="malformed msgpack body"):
            codec.decode(ok + b"\x00")  # a byte after the value
        with pytest.raises(ValueError, match="malformed msgpack body"):
            codec.decode(ok[:-1])  # it ends inside the value
    with pytest.raises(ValueError, match="reserved"):
        codec.decode(b"\x92" + msgpack.packb(b"\x00" * 100 * KiB) + b"\xc1")


def test_the_count_is_the_documented_one_and_stops_at_the_limit() -> None:
    records = [{"k": i, "v": "x" * 10, "t": [1, 2, {}]} for i in range(10_000)]
    body = codec.encode(records)
    assert len(body) > codec.LONG_BODY
    value, size = codec.decoded_size(body)
    assert value == records
    assert size == len(body) + codec.OBJECT_BYTES * counted(records)
    assert scan.scan(body, None) == counted(records)
    with pytest.raises(scan.ObjectsError, match="holds more than 1000 objects"):
        codec.decode(body, 1000)
    assert codec.decoded_size(codec.encode([1] * 100))[1] == 0  # a short body is not counted


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=30)
        | st.dictionaries(st.text(max_size=10) | st.integers(-(2**63), 2**64 - 1), inner, max_size=20)
    ),
    max_leaves=60,
)


@settings(max_examples=60, deadline=None)
@given(value=msgpack_values)
def test_the_scan_agrees_with_msgpack_on_whole_values(value: Any) -> None:
    body = msgpack.packb(value, use_bin_type=True)
    assert scan.scan(body, None) == counted(value)
    assert codec.decode(body) == value


@settings(max_examples=150, deadline=None)
@given(value=msgpack_values, data=st.data())
def test_the_scan_refuses_only_what_msgpack_refuses(value: Any, data: st.DataObject) -> None:
    """Mutated bodies: whenever msgpack decodes one (and nothing follows it), the scan passes
    it and counts as documented; whenever the scan refuses one as incomplete, msgpack
    refuses it too."""
    body = bytearray(msgpack.packb(value, use_bin_type=True))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.integers(0, 2))
        i = data.draw(st.integers(0, len(body)))
        if op == 0 and i < len(body):
            body[i] = data.draw(st.integers(0, 255))
        elif op == 1 and i < len(body):
            del body[i]
        else:
            body.insert(i, data.draw(st.integers(0, 255)))
    raw = bytes(body)
    if not raw:
        return
    try:
        decoded = msgpack.unpackb(raw, strict_map_key=False, ext_hook=lambda code, b: None)
    except Exception:
        decoded = ValueError
    try:
        found: Any = scan.scan(raw, None)
    except scan.BodyError as exc:
        found = exc
    if decoded is not ValueError:
        assert not isinstance(found, Exception), f"msgpack decoded {raw!r} but the scan said {found}"
        assert found >= counted(decoded)  # equal unless a map repeats a key
    elif isinstance(found, scan.BodyError) and not isinstance(found, (scan.ObjectsError, scan.DepthError)):
        assert decoded is ValueError


def test_scanning_a_long_body_is_fast() -> None:
    """The scan's worst case per byte: small objects that are not one byte each."""
    body = codec.encode([[i, "ab", 1.5] for i in range(150_000)])  # 1.8 MB, 750,001 counted
    started = time.perf_counter()
    count = scan.scan(body, None)
    took = time.perf_counter() - started
    assert count == 1 + 150_000 + 150_000 * 4
    assert took < 1.5, f"{took:.2f} s"
