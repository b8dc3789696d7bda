"""Conflict resolution: deterministic whatever the order the siblings arrive in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natsagents.crdt import CrdtTypeError, Sibling, Timestamp, VersionVector
from natsagents.crdt import resolve as r

A1 = Sibling("a1", VersionVector({"a": 1}), Timestamp(10, 0, "a"))
A2 = Sibling("a2", VersionVector({"a": 2}), Timestamp(11, 0, "a"))  # supersedes A1
B1 = Sibling("b1", VersionVector({"a": 1, "b": 1}), Timestamp(12, 0, "b"))  # concurrent with A2
C1 = Sibling("c1", VersionVector({"c": 1}), Timestamp(9, 0, "c"))  # concurrent, older stamp


def test_frontier_drops_superseded_and_duplicates() -> None:
    assert r.frontier([A1, A2, B1, C1, A2]) == (C1, A2, B1)  # canonical: by timestamp


def test_last_write_wins_reports_what_it_overwrote() -> None:
    res = r.resolve([B1, A1, C1, A2], "last_write_wins")
    assert res.value == "b1" and res.overwritten == (C1, A2)
    assert res.version == VersionVector({"a": 2, "b": 1, "c": 1}) and res.stamp == B1.stamp
    assert all(res.version.dominates(s.version) for s in (A1, A2, B1, C1))


def test_vector_clock_hands_the_siblings_to_the_agent() -> None:
    seen: list[Sequence[Sibling[str]]] = []

    def agent_resolve(siblings: Sequence[Sibling[str]]) -> str:
        seen.append(siblings)
        return "+".join(s.value for s in siblings)

    assert r.resolve([A2, B1], "vector_clock", resolver=agent_resolve).value == "a2+b1"
    assert r.resolve([A1, A2], "vector_clock", resolver=agent_resolve).value == "a2"  # no conflict
    assert len(seen) == 1
    assert r.resolve([B1, A2, C1], agent_resolve).value == "c1+a2+b1"  # any callable


def test_merge_folds_in_canonical_order() -> None:
    res = r.resolve([B1, C1, A2], "merge", merger=lambda x, y: f"({x}|{y})")
    assert res.value == "((c1|a2)|b1)" and res.overwritten == ()


def test_misuse() -> None:
    with pytest.raises(CrdtTypeError):
        r.resolve([], "last_write_wins")
    with pytest.raises(CrdtTypeError):
        r.resolve([A1], "vector_clock")
    with pytest.raises(CrdtTypeError):
        r.resolve([A1], "merge")
    with pytest.raises(CrdtTypeError):
        r.resolve([A1], "coin_flip")  # type: ignore[arg-type]
    with pytest.raises(CrdtTypeError):
        r.resolve(["a1"], "last_write_wins")  # type: ignore[list-item,arg-type]


_siblings = st.lists(
    st.builds(
        Sibling,
        st.integers(0, 5),
        st.dictionaries(st.sampled_from("abc"), st.integers(0, 2), max_size=3).map(VersionVector),
        st.builds(Timestamp, st.integers(0, 3), st.integers(0, 2), st.sampled_from(["a", "b", "c"])),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=80, deadline=None)
@given(_siblings, st.randoms(use_true_random=False))
def test_every_node_resolves_the_same_siblings_the_same_way(siblings: list[Sibling[int]], rnd: Any) -> None:
    shuffled = list(siblings) + list(siblings[:2])
    rnd.shuffle(shuffled)
    for strategy, kwargs in (
        ("last_write_wins", {}),
        ("vector_clock", {"resolver": lambda s: [x.value for x in s]}),
        ("merge", {"merger": lambda x, y: x * 7 + y}),
    ):
        assert r.resolve(siblings, strategy, **kwargs) == r.resolve(shuffled, strategy, **kwargs)  # type: ignore[arg-type]
    kept = r.frontier(siblings)
    assert all(not any(s.version.compare(o.version).value == "before" for o in kept) for s in kept)
