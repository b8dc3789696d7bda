"""The shortcuts that make a 10,000-key map cheap to ship after a heal keep every rule of
the checked paths: ``CausalContext.covers`` is set inclusion, ``context_of`` reads a causal
value's context without its entries, the inline decode of map fragments accepts and refuses
exactly what the checked decode does, and keys of mixed types keep the canonical order."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsagents.crdt import CausalContext, CrdtDecodeError, GCounter, MVRegister, ORMap, ORSet
from natsagents.crdt._wire import atom_key
from natsagents.crdt.dots import context_of
from natsagents.wire import codec

dots = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 8)), max_size=12)


@given(dots, dots)
def test_covers_is_set_inclusion(xs: list[Any], ys: list[Any]) -> None:
    x, y = CausalContext.of(xs), CausalContext.of(ys)
    assert x.covers(y) == set(ys).issubset(xs)
    assert x.covers(x)
    assert x.covers(CausalContext())


def test_covers_with_a_vector_and_a_cloud() -> None:
    big = CausalContext({"a": 5}, [("a", 7), ("b", 2)])
    assert big.covers(CausalContext({"a": 5}))
    assert big.covers(CausalContext.of([("a", 7), ("b", 2), ("a", 1)]))
    assert not big.covers(CausalContext({"a": 6}))  # (a, 6) is the gap
    assert not big.covers(CausalContext({"b": 2}))  # (b, 1) never seen
    assert not big.covers(CausalContext({"a": 10**6}))  # far beyond: no dot by dot check


def test_context_of_reads_the_context_alone() -> None:
    m = ORMap(ORSet).update("r1", "k", lambda s: s.add("r1", "x")).state
    s = ORSet().add("r2", "y").state
    v = MVRegister().set("r3", "z").state
    for value in (m, s, v):
        obj = codec.decode(value.to_wire())
        assert context_of(obj, value.TAG) == value.context
    obj = codec.decode(m.to_wire())
    obj["e"] = "not even a list"  # the entries are not looked at
    assert context_of(obj, "ormap") == m.context
    bad: Any
    for bad in (None, [], {"t": "ormap", "v": 1}, {"t": "orset", "v": 1, "cc": {}}, {"t": "ormap", "v": 2, "cc": {}}):
        with pytest.raises(CrdtDecodeError):
            context_of(bad, "ormap")


def _fragment_map(counts: Any) -> dict[str, Any]:
    return {
        "t": "ormap",
        "v": 1,
        "vt": ["gcounter"],
        "e": [["k", [[["r", 1], {"t": "gcounter", "v": 1, "c": counts}]]]],
        "cc": {"vv": {"r": 1}, "dc": []},
    }


@pytest.mark.parametrize(
    "counts",
    [{"r": -1}, {"r": True}, {"": 1}, {"r": 2**64}, {"r": 1.5}, {1: 1}, {"r" * 257: 1}, [["r", 1]]],
)
def test_fragments_the_inline_decode_refuses(counts: Any) -> None:
    with pytest.raises(CrdtDecodeError):
        ORMap.from_obj(_fragment_map(counts))


def test_fragments_decode_as_before() -> None:
    m: ORMap[GCounter] = ORMap.from_obj(_fragment_map({"r": 3, "q": 0}))
    assert m.value == {"k": 3}
    assert m.get("k") == GCounter({"r": 3})  # a zero count is not kept
    bad_dot = _fragment_map({"r": 1})
    bad_dot["e"][0][1][0][0] = ["r", 0]
    with pytest.raises(CrdtDecodeError):
        ORMap.from_obj(bad_dot)


def test_keys_of_mixed_types_keep_the_canonical_order() -> None:
    m = ORMap(GCounter)
    for key in ("b", 2, b"z", "a", -1, b"a"):
        m = m.update("r", key, lambda c: c.increment("r", 1)).state
    keys = [k for k, _ in m.to_obj()["e"]]
    assert keys == sorted(keys, key=atom_key) == [-1, 2, "a", "b", b"a", b"z"]
    assert ORMap.from_wire(m.to_wire()) == m
    one_type = ORMap(GCounter)
    for key in ("b", "a", "c"):
        one_type = one_type.update("r", key, lambda c: c.increment("r", 1)).state
    assert [k for k, _ in one_type.to_obj()["e"]] == ["a", "b", "c"]
