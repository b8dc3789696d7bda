"""The CRDT encoding (protocol §17): exact bytes of a few values, and hostile input — every
malformed value raises CrdtDecodeError (a ValueError), nothing else, and decoding is bounded."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natsagents.crdt import (
    CrdtDecodeError,
    GCounter,
    GSet,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    Timestamp,
    VersionVector,
    decode,
)
from natsagents.errors import ProtocolError

from .test_crdt_laws import TYPES, run

CLASSES = [GCounter, PNCounter, GSet, ORSet, LWWRegister, MVRegister, ORMap]


def test_documented_bytes() -> None:
    """The examples of protocol §17.6, byte for byte."""
    g, _ = GCounter().increment("a", 2)
    assert g.to_wire().hex() == "83a174a867636f756e746572a17601a16381a16102"
    s, _ = ORSet().add("a", "x")
    assert msgpack.unpackb(s.to_wire()) == {
        "t": "orset",
        "v": 1,
        "e": [["x", [["a", 1]]]],
        "cc": {"vv": {"a": 1}, "dc": []},
    }
    assert s.to_wire().hex() == ("84a174a56f72736574a17601a1659192a1789192a16101a2636382a2767681a16101a2646390")


def test_decoding_accepts_any_key_order_and_ignores_unknown_keys() -> None:
    data = msgpack.packb({"zz": [1, 2], "c": {"b": 4, "a": 0}, "v": 1, "t": "gcounter"})
    g = GCounter.from_wire(data)
    assert g.counts == {"b": 4}  # zero entries dropped
    cc = {"vv": {"a": 2}, "dc": [["a", 4], ["a", 3], ["a", 1]]}  # non-canonical: compacted
    s = ORSet.from_wire(msgpack.packb({"t": "orset", "v": 1, "e": [], "cc": cc}))
    assert dict(s.context.vv) == {"a": 4} and s.context.cloud == frozenset()


def _obj(value: Any) -> dict[str, Any]:
    return msgpack.unpackb(value.to_wire())


def _bad(cls: Any, obj: Any) -> CrdtDecodeError:
    with pytest.raises(CrdtDecodeError) as info:
        cls.from_wire(msgpack.packb(obj))
    assert isinstance(info.value, ValueError) and isinstance(info.value, ProtocolError)
    return info.value


def test_hostile_values_are_refused() -> None:
    g = _obj(GCounter().increment("a", 1).state)
    _bad(GCounter, {**g, "v": 2})
    _bad(GCounter, {**g, "t": "pncounter"})
    _bad(GCounter, {**g, "c": {"a": -1}})
    _bad(GCounter, {**g, "c": {"a": True}})
    _bad(GCounter, {**g, "c": {"a": 1.0}})
    _bad(GCounter, {**g, "c": {1: 1}})
    _bad(GCounter, {**g, "c": {"x" * 257: 1}})
    _bad(GCounter, {**g, "c": {"": 1}})
    _bad(GCounter, {**g, "c": [["a", 1]]})
    _bad(GCounter, {"t": "gcounter", "v": 1})
    _bad(GCounter, [1, 2, 3])
    s = _obj(ORSet().add("a", "x").state)
    _bad(ORSet, {**s, "e": [["x", [["b", 1]]]]})  # a dot outside the causal context
    _bad(ORSet, {**s, "e": [["x", [["a", 1]]], ["x", [["a", 1]]]]})  # an element twice
    _bad(ORSet, {**s, "e": [[True, [["a", 1]]]]})  # bool is not an element
    _bad(ORSet, {**s, "e": [[1.5, [["a", 1]]]]})
    _bad(ORSet, {**s, "e": [["x", [["a", 0]]]]})  # dot counters start at 1
    _bad(ORSet, {**s, "e": [["x", [["a", 1, 2]]]]})
    _bad(ORSet, {**s, "cc": {"vv": {"a": -1}, "dc": []}})
    _bad(ORSet, {**s, "cc": {"vv": {}}})
    _bad(GSet, {"t": "gset", "v": 1, "e": ["a", "a"]})
    _bad(MVRegister, {"t": "mvreg", "v": 1, "e": [[["a", 1], 1], [["a", 1], 2]], "cc": {"vv": {"a": 1}, "dc": []}})
    _bad(LWWRegister, {"t": "lww", "v": 1, "x": 1, "ts": [1, 2]})
    _bad(LWWRegister, {"t": "lww", "v": 1, "x": 1, "ts": [-1, 0, "a"]})
    _bad(LWWRegister, {"t": "lww", "v": 1, "x": 1, "ts": [2**63, 0, "a"]})
    _bad(LWWRegister, {"t": "lww", "v": 1, "x": 1, "ts": [1, 2**32, "a"]})
    m = _obj(ORMap(GCounter).update("a", "k", lambda v: v.increment("a")).state)
    _bad(ORMap, {**m, "vt": ["ormap"] * 9 + ["gcounter"]})  # nested too deep
    _bad(ORMap, {**m, "vt": ["ormap"]})
    _bad(ORMap, {**m, "vt": ["gcounter", "ormap"]})
    _bad(ORMap, {**m, "vt": ["vv"]})
    _bad(ORMap, {**m, "vt": []})
    _bad(ORMap, {**m, "vt": ["orset"]})  # the store does not match the value type
    _bad(ORMap, {**m, "e": [["k", [[["a", 1], {"t": "pncounter", "v": 1, "p": {}, "n": {}}]]]]})
    _bad(ORMap, {**m, "e": [["k", []], ["k", []]]})
    with pytest.raises(CrdtDecodeError):
        decode(msgpack.packb({"t": "nope", "v": 1}))
    with pytest.raises(CrdtDecodeError):
        VersionVector.from_wire(msgpack.packb({"t": "vv", "v": 1, "c": {"a": "1"}}))
    with pytest.raises(CrdtDecodeError):
        Timestamp.from_wire(msgpack.packb([1, 2, 3]))


def test_hostile_bytes_are_refused() -> None:
    for data in (b"", b"\xc1", b"\x91", b"\x81\xa1t", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\x80\x80"):
        with pytest.raises(CrdtDecodeError):
            decode(data)
    with pytest.raises(CrdtDecodeError):
        decode(b"\x91" * 5000 + b"\xc0")  # nested deeper than the codec allows
    with pytest.raises(CrdtDecodeError):
        decode(msgpack.packb({"t": "gset", "v": 1, "e": [msgpack.ExtType(5, b"x")]}))
    with pytest.raises(CrdtDecodeError):
        decode("not bytes")  # type: ignore[arg-type]


def test_a_large_body_is_bounded() -> None:
    """A body of 1 MiB of tiny items decodes within the codec's object limit or is refused."""
    body = msgpack.packb({"t": "gset", "v": 1, "e": list(range(600_000))})
    assert len(body) > 1_000_000
    with pytest.raises(CrdtDecodeError, match="objects"):
        GSet.from_wire(body)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3) | st.integers(0, 3), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_decode_errors(data: bytes) -> None:
    try:
        decode(data)
    except CrdtDecodeError:
        pass


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(CLASSES), st.sampled_from(["t", "v", "c", "p", "n", "e", "cc", "x", "ts", "vt"]), _msgpack_values
)
def test_one_field_replaced_by_anything(cls: Any, key: str, junk: Any) -> None:
    """Take a valid encoding and replace one field with random msgpack data."""
    samples = {
        GCounter: GCounter().increment("a", 2).state,
        PNCounter: PNCounter().decrement("a", 2).state,
        GSet: GSet().add("x").state,
        ORSet: ORSet().add("a", "x").state,
        LWWRegister: LWWRegister().set(1, Timestamp(1, 0, "a")).state,
        MVRegister: MVRegister().set("a", [1]).state,
        ORMap: ORMap(ORMap(ORSet)).update("a", "k", lambda m: m.update("a", 1, lambda s: s.add("a", "x"))).state,
    }
    obj = _obj(samples[cls])
    obj[key] = junk
    try:
        value = cls.from_wire(msgpack.packb(obj))
    except CrdtDecodeError:
        return
    assert type(value).from_wire(value.to_wire()) == value  # whatever is accepted is a valid state


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(TYPES)), st.data())
def test_mutated_bytes_raise_only_decode_errors(name: str, data: st.DataObject) -> None:
    history = run(name, [(0, 0, 1), (1, 0, 2), (1, 99, 0), (0, 1, 1)])
    wire = bytearray(history.states[0].to_wire())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    try:
        value = decode(bytes(wire))
    except CrdtDecodeError:
        return
    assert decode(value.to_wire()) == value


def test_a_dot_held_twice_is_refused() -> None:
    cc = {"vv": {"a": 2}, "dc": []}
    _bad(ORSet, {"t": "orset", "v": 1, "e": [["x", [["a", 1]]], ["y", [["a", 1]]]], "cc": cc})
    frag = {"t": "gcounter", "v": 1, "c": {"a": 1}}
    _bad(
        ORMap,
        {
            "t": "ormap",
            "v": 1,
            "vt": ["gcounter"],
            "e": [["k", [[["a", 1], frag]]], ["j", [[["a", 1], frag]]]],
            "cc": cc,
        },
    )
    ok = ORSet.from_wire(msgpack.packb({"t": "orset", "v": 1, "e": [["x", [["a", 1], ["a", 1]]]], "cc": cc}))
    assert ok.value == {"x"}  # the same dot twice in one list is folded
