"""The CRDT laws, for every type (hypothesis): merge is commutative, associative and
idempotent; deltas applied in any order, duplicated, or dropped and then repaired by a full
merge, converge to the state full merges reach; every mutation's state is the old state
merged with its delta; wire round trips keep states equal (and bytes canonical)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natsagents.crdt import (
    HLC,
    CausalContext,
    Crdt,
    GCounter,
    GSet,
    LWWRegister,
    Mutation,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    decode,
)

# -- random histories of mutations and syncs over three replicas ----------------------------------

REPLICAS = ("r0", "r1", "r2")
SYNC = 99  # op code: replica `arg % 3` merges the full state of the acting replica


class FakeClock:
    """A wall clock that jumps around (backwards too), driven by the history."""

    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


@dataclass
class World:
    clocks: list[FakeClock] = field(default_factory=lambda: [FakeClock() for _ in REPLICAS])
    hlcs: list[HLC] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hlcs = [HLC(r, clock=c) for r, c in zip(REPLICAS, self.clocks, strict=True)]


Op = Callable[[Any, int, int, int, World], Mutation[Any]]


def _gcounter(s: GCounter, rep: int, code: int, arg: int, w: World) -> Mutation[GCounter]:
    return s.increment(REPLICAS[rep], arg % 4)


def _pncounter(s: PNCounter, rep: int, code: int, arg: int, w: World) -> Mutation[PNCounter]:
    if code % 2:
        return s.decrement(REPLICAS[rep], arg % 4)
    return s.increment(REPLICAS[rep], arg % 4)


def _gset(s: GSet, rep: int, code: int, arg: int, w: World) -> Mutation[GSet]:
    return s.add(_elem(arg))


def _elem(arg: int) -> Any:
    return (arg % 4, f"e{arg % 4}", bytes([arg % 4]))[arg % 3]


def _orset(s: ORSet, rep: int, code: int, arg: int, w: World) -> Mutation[ORSet]:
    if code % 5 == 4:
        return s.clear()
    if code % 2:
        return s.remove(_elem(arg))
    return s.add(REPLICAS[rep], _elem(arg))


def _lww(s: LWWRegister, rep: int, code: int, arg: int, w: World) -> Mutation[LWWRegister]:
    w.clocks[rep].now += (code % 7) - 3  # the wall clock may go backwards
    return s.set(arg % 5, w.hlcs[rep])


def _mvreg(s: MVRegister, rep: int, code: int, arg: int, w: World) -> Mutation[MVRegister]:
    return s.set(REPLICAS[rep], [arg % 3, "v"])


def _map_counter(s: ORMap[Any], rep: int, code: int, arg: int, w: World) -> Mutation[Any]:
    key = f"k{arg % 3}"
    if code % 3 == 2:
        return s.remove(key)
    return s.update(REPLICAS[rep], key, lambda v: v.increment(REPLICAS[rep], 1 + arg % 2))


def _map_set(s: ORMap[Any], rep: int, code: int, arg: int, w: World) -> Mutation[Any]:
    key = arg % 3
    if code % 4 == 3:
        return s.remove(key)
    if code % 4 == 2:
        return s.update(REPLICAS[rep], key, lambda v: v.remove(_elem(code)))
    return s.update(REPLICAS[rep], key, lambda v: v.add(REPLICAS[rep], _elem(code)))


def _map_lww(s: ORMap[Any], rep: int, code: int, arg: int, w: World) -> Mutation[Any]:
    key = f"k{arg % 2}"
    if code % 3 == 2:
        return s.remove(key)
    w.clocks[rep].now += 1
    return s.update(REPLICAS[rep], key, lambda v: v.set(code % 4, w.hlcs[rep]))


def _map_map(s: ORMap[Any], rep: int, code: int, arg: int, w: World) -> Mutation[Any]:
    outer, inner = f"o{arg % 2}", code % 3
    if code % 5 == 4:
        return s.remove(outer)
    if code % 5 == 3:
        return s.update(REPLICAS[rep], outer, lambda m: m.remove(inner))
    return s.update(REPLICAS[rep], outer, lambda m: m.update(REPLICAS[rep], inner, lambda r: r.set(REPLICAS[rep], arg)))


def _map_pn(s: ORMap[Any], rep: int, code: int, arg: int, w: World) -> Mutation[Any]:
    key = arg % 2
    if code % 3 == 2:
        return s.remove(key)
    return s.update(REPLICAS[rep], key, lambda v: v.increment(REPLICAS[rep], (code % 5) - 2))


def _map_gset(s: ORMap[Any], rep: int, code: int, arg: int, w: World) -> Mutation[Any]:
    key = arg % 2
    if code % 3 == 2:
        return s.remove(key)
    return s.update(REPLICAS[rep], key, lambda v: v.add(_elem(code)))


#: name → (empty value, operation)
TYPES: dict[str, tuple[Callable[[], Crdt], Op]] = {
    "gcounter": (GCounter, _gcounter),
    "pncounter": (PNCounter, _pncounter),
    "gset": (GSet, _gset),
    "orset": (ORSet, _orset),
    "lww": (LWWRegister, _lww),
    "mvreg": (MVRegister, _mvreg),
    "ormap_gcounter": (lambda: ORMap(GCounter), _map_counter),
    "ormap_orset": (lambda: ORMap(ORSet), _map_set),
    "ormap_lww": (lambda: ORMap(LWWRegister), _map_lww),
    "ormap_ormap_mvreg": (lambda: ORMap(ORMap(MVRegister)), _map_map),
    "ormap_pncounter": (lambda: ORMap(PNCounter), _map_pn),
    "ormap_gset": (lambda: ORMap(GSet), _map_gset),
}

ops_strategy = st.lists(
    st.tuples(st.integers(0, 2), st.one_of(st.integers(0, 20), st.just(SYNC)), st.integers(0, 30)),
    max_size=25,
)


@dataclass
class History:
    states: list[Crdt]
    deltas: list[Crdt]


def run(name: str, ops: list[tuple[int, int, int]]) -> History:
    """Apply ``ops`` to three replicas; check on the way that every mutation's state is the
    old state merged with its delta."""
    empty, op = TYPES[name]
    world = World()
    states = [empty() for _ in REPLICAS]
    deltas: list[Crdt] = []
    for rep, code, arg in ops:
        if code == SYNC:
            target = arg % 3
            states[target] = states[target].merge(states[rep])
            continue
        mutation = op(states[rep], rep, code, arg, world)
        assert mutation.state == states[rep].merge(mutation.delta), (name, rep, code, arg)
        states[rep] = mutation.state
        deltas.append(mutation.delta)
    return History(states, deltas)


def merge_all(values: list[Crdt], start: Crdt) -> Crdt:
    out = start
    for v in values:
        out = out.merge(v)
    return out


NAMES = sorted(TYPES)
LAWS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", NAMES)
@LAWS
@given(ops=ops_strategy)
def test_merge_is_commutative_associative_idempotent(name: str, ops: list[tuple[int, int, int]]) -> None:
    a, b, c = run(name, ops).states
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    ab = a.merge(b)
    assert ab.merge(a) == ab and ab.merge(b) == ab  # the join is an upper bound of both
    assert ab.to_wire() == b.merge(a).to_wire()  # canonical bytes


@pytest.mark.parametrize("name", NAMES)
@LAWS
@given(ops=ops_strategy, data=st.data())
def test_deltas_in_any_order_duplicated_or_dropped_converge(
    name: str, ops: list[tuple[int, int, int]], data: st.DataObject
) -> None:
    history = run(name, ops)
    empty = TYPES[name][0]()
    full = merge_all(history.states, empty)

    shuffled = data.draw(st.permutations(history.deltas))
    extra = data.draw(st.lists(st.sampled_from(history.deltas), max_size=5)) if history.deltas else []
    by_deltas = empty
    for d in [*shuffled, *extra]:
        by_deltas = by_deltas.apply_delta(d)
    assert by_deltas == full

    kept = data.draw(st.lists(st.booleans(), min_size=len(shuffled), max_size=len(shuffled)))
    partial = empty
    for d, keep in zip(shuffled, kept, strict=True):
        if keep:
            partial = partial.apply_delta(d)
    for state in history.states:  # anti-entropy: full merges repair what was dropped
        partial = partial.merge(state)
    assert partial == full
    assert partial.value == full.value


@pytest.mark.parametrize("name", NAMES)
@FEWER
@given(ops=ops_strategy)
def test_wire_round_trip(name: str, ops: list[tuple[int, int, int]]) -> None:
    history = run(name, ops)
    for value in [*history.states, *history.deltas[:5]]:
        data = value.to_wire()
        back = type(value).from_wire(data)
        assert back == value
        assert back.value == value.value or name in ("mvreg", "ormap_ormap_mvreg")  # lists stay lists
        assert decode(data) == value
        assert back.to_wire() == data


def _reference_merge(a: Any, b: Any) -> Any:
    """The plain join over every entry (no index, no small-side shortcut)."""
    from natsagents.crdt._stores import join_dot_sets
    from natsagents.crdt.ormap import _join_map

    cc = a.context.union(b.context)
    if isinstance(a, ORSet):
        return ORSet._raw(join_dot_sets(a._s, a._cc, b._s, b._cc), cc)
    return a._new(_join_map(a._ops, a._s, a._cc, b._s, b._cc), cc)


@pytest.mark.parametrize("name", ["orset", "ormap_gcounter", "ormap_orset", "ormap_ormap_mvreg"])
@FEWER
@given(ops=ops_strategy)
def test_indexed_merge_of_a_small_side_equals_the_plain_join(name: str, ops: list[tuple[int, int, int]]) -> None:
    history = run(name, ops)
    values = [*history.states, *history.deltas[-6:]]
    for a in values:
        for b in values:
            assert a.merge(b) == _reference_merge(a, b)
    # a chain of deltas keeps its index up to date
    chained = reference = TYPES[name][0]()
    for d in history.deltas:
        chained = chained.apply_delta(d)
        reference = _reference_merge(reference, d)
        assert chained == reference


@pytest.mark.parametrize("name", ["orset", "ormap_gcounter", "ormap_orset", "ormap_lww", "ormap_ormap_mvreg"])
@LAWS
@given(ops=ops_strategy)
def test_the_delta_for_a_context_merges_as_the_whole_state(name: str, ops: list[tuple[int, int, int]]) -> None:
    # What a copy answers a digest with (protocol §21.4): merged into the replica whose
    # context it was made for it gives what the whole state gives, removals included;
    # it is a valid value (decodes), and no more than the state.
    states = run(name, ops).states
    for a in states:
        for b in states:
            delta = a.delta_for(b.context)  # type: ignore[attr-defined]
            assert b.merge(delta) == b.merge(a)
            assert a.merge(delta) == a
            assert type(a).from_wire(delta.to_wire()) == delta
            assert len(delta) <= len(a)  # type: ignore[arg-type]
    # A replica that has seen everything of ``a`` gets nothing but ``a``'s context.
    a = states[0]
    known = a.delta_for(a.context)  # type: ignore[attr-defined]
    assert len(known) == 0 or known is a


def test_the_delta_for_a_context_is_the_whole_state_when_its_context_would_not_be_compact() -> None:
    m: ORMap[GCounter] = ORMap(GCounter)
    m = m.update("r", "a", lambda c: c.increment("r", 1)).state  # dot r:1
    for _ in range(1000):  # dots r:2 .. r:1001; only the last is held
        m = m.update("r", "b", lambda c: c.increment("r", 1)).state
    saw_a = CausalContext({"r": 1})
    # Leaving key a out would leave a context of 1,000 single dots (r:2 .. r:1001): whole.
    assert m.delta_for(saw_a) is m
    # Keys written by another replica, whose every dot the other side saw, leave out
    # that replica's whole prefix: compact (the common case of a cut: each side its own keys).
    q = m.update("q", "c", lambda c: c.increment("q", 1)).state
    fresh = q.delta_for(CausalContext({"q": 1}))
    assert set(fresh.value) == {"a", "b"} and fresh.context == CausalContext({"r": 1001})
    other: ORMap[GCounter] = ORMap(GCounter).update("q", "c", lambda c: c.increment("q", 1)).state
    assert other.merge(fresh) == other.merge(q) == q
    assert CausalContext({"r": 5}).without([("r", 2)], limit=2) is None
    assert CausalContext({"r": 5}).without([("r", 4)], limit=2) == CausalContext({"r": 3}, [("r", 5)])
