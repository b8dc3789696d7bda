"""Hybrid logical clocks and version vectors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natsagents.crdt import HLC, ClockDriftError, CrdtDecodeError, CrdtTypeError, Order, Timestamp, VersionVector


class Clock:
    def __init__(self, now: int = 1_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_now_follows_the_wall_clock_and_never_goes_back() -> None:
    wall = Clock()
    hlc = HLC("a", clock=wall)
    t1 = hlc.now()
    assert (t1.wall, t1.logical) == (1_000, 0)
    t2 = hlc.now()  # same millisecond: the logical counter moves
    assert (t2.wall, t2.logical) == (1_000, 1)
    wall.now = 400  # the wall clock jumps back 600 ms (NTP step)
    t3 = hlc.now()
    assert (t3.wall, t3.logical) == (1_000, 2) and t3 > t2
    wall.now = 1_001
    t4 = hlc.now()
    assert (t4.wall, t4.logical) == (1_001, 0) and t4 > t3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-50, 50), st.booleans(), st.integers(-30, 30), st.integers(0, 3)), max_size=40))
def test_monotonic_whatever_the_clocks_do(steps: list[tuple[int, bool, int, int]]) -> None:
    wall = Clock(10_000)
    hlc = HLC("a", clock=wall, max_drift=1.0)
    last = hlc.last
    for jump, receive, remote_offset, remote_logical in steps:
        wall.now += jump
        if receive:
            remote = Timestamp(max(0, wall.now + remote_offset), remote_logical, "b")
            t = hlc.update(remote)
            assert t > remote
        else:
            t = hlc.now()
        assert t > last and t.wall >= wall.now
        last = t


def test_update_rules() -> None:
    wall = Clock(1_000)
    hlc = HLC("a", clock=wall)
    hlc.now()  # (1000, 0)
    # remote ahead of both: take its wall, its counter + 1
    t = hlc.update(Timestamp(1_500, 7, "b"))
    assert (t.wall, t.logical, t.replica) == (1_500, 8, "a")
    # remote at the same wall as ours: max counter + 1
    t = hlc.update(Timestamp(1_500, 3, "b"))
    assert (t.wall, t.logical) == (1_500, 9)
    # remote behind: ours + 1
    t = hlc.update(Timestamp(10, 99, "b"))
    assert (t.wall, t.logical) == (1_500, 10)
    # physical clock ahead of everything: counter resets
    wall.now = 2_000
    t = hlc.update(Timestamp(1_900, 5, "b"))
    assert (t.wall, t.logical) == (2_000, 0)


def test_a_remote_timestamp_too_far_ahead_is_refused() -> None:
    wall = Clock(1_000)
    hlc = HLC("a", clock=wall, max_drift=2.0)
    before = hlc.now()
    hlc.update(Timestamp(3_000, 0, "b"))  # exactly 2 s ahead: accepted
    with pytest.raises(ClockDriftError) as info:
        hlc.update(Timestamp(3_002, 0, "b"))
    assert isinstance(info.value, ValueError)
    assert (info.value.remote_ms, info.value.local_ms, info.value.max_drift_ms) == (3_002, 1_000, 2_000)
    assert hlc.last == Timestamp(3_000, 1, "a") and hlc.last > before  # unchanged by the refusal
    with pytest.raises(CrdtTypeError):
        HLC("a", max_drift=-1)
    with pytest.raises(CrdtTypeError):
        HLC("")


def test_real_clock() -> None:
    hlc = HLC("node-1")
    stamps = [hlc.now() for _ in range(1000)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 1000


def test_timestamp_order_encoding_and_text() -> None:
    a, b, c = Timestamp(5, 0, "b"), Timestamp(5, 0, "c"), Timestamp(5, 1, "a")
    assert a < b < c and sorted([c, b, a]) == [a, b, c]
    assert Timestamp.from_wire(a.to_wire()) == a
    assert str(Timestamp(1733150000000, 2, "node:1")) == "1733150000000:2:node:1"
    assert Timestamp.parse("1733150000000:2:node:1") == Timestamp(1733150000000, 2, "node:1")
    for bad in ("", "1:2", "a:1:x", "1:-2:x", "1:2:", "1" * 30 + ":0:x", "\u0661:0:x"):
        with pytest.raises(CrdtDecodeError):
            Timestamp.parse(bad)
    with pytest.raises(CrdtTypeError):
        Timestamp(-1, 0, "a")
    with pytest.raises(CrdtTypeError):
        Timestamp(1, 0, 5)  # type: ignore[arg-type]


def test_version_vector_compare() -> None:
    empty = VersionVector()
    a = empty.increment("a")
    ab = a.increment("b")
    b = empty.increment("b")
    assert a.compare(ab) is Order.BEFORE and ab.compare(a) is Order.AFTER
    assert a.compare(b) is Order.CONCURRENT and a.concurrent(b)
    assert a.compare(VersionVector({"a": 1})) is Order.EQUAL
    assert ab.dominates(a) and ab.dominates(b) and not a.dominates(b) and a.dominates(a)
    assert a.merge(b) == ab and ab["a"] == 1 and ab["z"] == 0 and len(ab) == 2
    assert VersionVector.from_wire(ab.to_wire()) == ab
    assert VersionVector({"a": 0}) == empty
    with pytest.raises(CrdtTypeError):
        VersionVector({"a": -1})


_vectors = st.dictionaries(st.sampled_from("abcd"), st.integers(0, 3), max_size=4).map(VersionVector)


@settings(max_examples=100, deadline=None)
@given(_vectors, _vectors, _vectors)
def test_version_vector_laws(x: VersionVector, y: VersionVector, z: VersionVector) -> None:
    assert x.merge(y) == y.merge(x) and x.merge(y).merge(z) == x.merge(y.merge(z)) and x.merge(x) == x
    assert x.merge(y).dominates(x) and x.merge(y).dominates(y)
    flipped = {Order.BEFORE: Order.AFTER, Order.AFTER: Order.BEFORE}
    assert y.compare(x) is flipped.get(x.compare(y), x.compare(y))
    assert (x.compare(y) in (Order.AFTER, Order.EQUAL)) == x.dominates(y)
