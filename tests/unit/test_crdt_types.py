"""Semantics of each CRDT type: what the value is after concurrent operations, and that the
causal context stays bounded (no tombstones)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natsagents.crdt import (
    HLC,
    CausalContext,
    CrdtTypeError,
    GCounter,
    GSet,
    LWWRegister,
    Mutation,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    Timestamp,
)


def test_counters() -> None:
    a, d1 = GCounter().increment("a", 3)
    b, _ = GCounter().increment("b", 4)
    assert a.merge(b).value == 7 and a.merge(b).counts == {"a": 3, "b": 4}
    assert d1.counts == {"a": 3}  # a delta carries only the replica's entry
    with pytest.raises(CrdtTypeError):
        a.increment("a", -1)
    p, _ = PNCounter().increment("a", 5)
    p, _ = p.decrement("a", 7)
    q, _ = PNCounter().increment("b", -2)  # a negative increment is a decrement
    assert p.merge(q).value == -4
    with pytest.raises(CrdtTypeError):
        a.merge(p)  # type: ignore[arg-type]


def test_values_are_immutable() -> None:
    s = ORSet()
    s2, _ = s.add("a", "x")
    assert s.value == frozenset() and s2.value == {"x"}
    g = GCounter()
    g.increment("a")
    assert g.value == 0


def test_gset_and_atoms() -> None:
    s, _ = GSet().add(1)
    s, _ = s.add("1")
    s, _ = s.add(b"1")
    assert len(s) == 3 and 1 in s and True not in s
    for bad in (True, 1.5, None, ("t",), 2**64):
        with pytest.raises(CrdtTypeError):
            s.add(bad)  # type: ignore[arg-type]


def test_orset_add_wins_over_a_concurrent_remove() -> None:
    base, _ = ORSet().add("a", "x")
    a, remove = base.remove("x")  # a saw the add and removes it
    b, readd = base.add("b", "x")  # b adds it again, concurrently
    assert "x" not in a and "x" in b
    assert "x" in a.merge(b) and "x" in b.merge(a)
    assert "x" in a.apply_delta(readd) and "x" in b.apply_delta(remove)
    # a remove that has seen both adds wins over both
    c, _ = a.merge(b).remove("x")
    assert "x" not in c.merge(a).merge(b)


def test_orset_remove_before_add_arrives() -> None:
    base, add = ORSet().add("a", "x")
    _, remove = base.remove("x")
    late = ORSet().apply_delta(remove).apply_delta(add)  # the remove overtook the add
    assert "x" not in late and late == base.apply_delta(remove)


def test_mvregister_keeps_concurrent_values_until_overwritten() -> None:
    a, _ = MVRegister().set("a", "red")
    b, _ = MVRegister().set("b", "blue")
    both = a.merge(b)
    assert both.value == ("red", "blue")  # dot order: replica a before b
    assert b.merge(a).value == ("red", "blue")
    c, delta = both.set("c", "green")
    assert c.value == ("green",)
    assert b.apply_delta(delta).merge(a).value == ("green",)


def test_lww_register_orders_by_hlc_then_replica() -> None:
    clock = [100]
    ha, hb = HLC("a", clock=lambda: clock[0]), HLC("b", clock=lambda: clock[0])
    ra, _ = LWWRegister().set("from a", ha)
    rb, _ = LWWRegister().set("from b", hb)  # same wall ms and counter: replica b wins the tie
    assert ra.merge(rb).value == "from b" == rb.merge(ra).value
    clock[0] = 50  # a's wall clock goes back; its HLC does not
    ra2, _ = ra.set("later from a", ha)
    assert ra2.stamp is not None and ra2.stamp > ra.stamp  # type: ignore[operator]
    old, _ = LWWRegister().set("stale", Timestamp(1, 0, "z"))
    assert ra2.merge(old).value == "later from a"
    assert LWWRegister().value is None and LWWRegister().stamp is None


def test_ormap_counters_observed_reset() -> None:
    m0 = ORMap(GCounter)
    a, _ = m0.update("a", "k", lambda v: v.increment("a", 5))
    b = m0.merge(a)
    b, _ = b.update("b", "k", lambda v: v.increment("b", 2))
    a = a.merge(b)
    assert a.value == {"k": 7} == b.value
    removed, _ = a.remove("k")  # a saw both contributions and removes the key
    b2, _ = b.update("b", "k", lambda v: v.increment("b", 1))  # concurrently b adds one
    merged = removed.merge(b2)
    # observed reset: a's 5 is gone; b keeps its own contributions (2 + 1)
    assert merged.value == {"k": 3} == b2.merge(removed).value
    gone, _ = merged.remove("k")
    assert gone.value == {} and "k" not in gone


def test_ormap_nested_set_add_wins_over_key_removal() -> None:
    m, _ = ORMap(ORSet).update("a", "cart", lambda s: s.add("a", "apple"))
    other = ORMap(ORSet).merge(m)
    removed, _ = m.remove("cart")
    added, _ = other.update("b", "cart", lambda s: s.add("b", "pear"))
    merged = removed.merge(added)
    assert merged.value == {"cart": frozenset({"pear"})}  # observed apple removed, pear survives
    emptied, _ = merged.update("a", "cart", lambda s: s.remove("pear"))
    assert "cart" not in emptied  # a key whose set became empty is gone


def test_ormap_of_maps() -> None:
    m, d = ORMap(ORMap(LWWRegister)).update(
        "a", "user-1", lambda inner: inner.update("a", "name", lambda r: r.set("Ada", Timestamp(5, 0, "a")))
    )
    assert m.value == {"user-1": {"name": "Ada"}}
    assert ORMap(ORMap(LWWRegister)).apply_delta(d) == m
    inner = m["user-1"]
    assert isinstance(inner, ORMap) and inner.get("name") is not None
    with pytest.raises(CrdtTypeError):
        m.merge(ORMap(ORMap(GCounter)))
    with pytest.raises(CrdtTypeError):
        m.update("a", "x", lambda inner: 42)  # type: ignore[arg-type,return-value]
    with pytest.raises(CrdtTypeError):
        ORMap(int)  # type: ignore[arg-type,type-var]


def test_mutation_is_a_named_pair() -> None:
    mutation = GCounter().increment("a")
    assert isinstance(mutation, Mutation) and mutation.state.value == 1 and mutation.delta.value == 1


def _cycles(empty, add, remove, cycles: int, rng: random.Random):  # type: ignore[no-untyped-def]
    """Three replicas run ``cycles`` add/remove cycles; deltas are shipped shuffled, some
    dropped; a final full merge repairs the rest."""
    replicas = ["node-a", "node-b", "node-c"]
    states = [empty, empty, empty]
    in_flight: list[tuple[int, object]] = []
    for i in range(cycles):
        r = i % 3
        states[r], d_add = add(states[r], replicas[r], f"e{i % 50}")
        remover = rng.randrange(3)
        states[remover] = states[remover].merge(states[r])
        states[remover], d_rem = remove(states[remover], f"e{i % 50}")
        in_flight += [(r, d_add), (remover, d_rem)]
        if len(in_flight) > 60:
            rng.shuffle(in_flight)
            for origin, delta in in_flight:
                for t in range(3):
                    if t != origin and rng.random() > 0.1:  # 10 % of deltas are lost
                        states[t] = states[t].apply_delta(delta)
            in_flight.clear()
    for live in range(10):  # ten elements stay
        states[live % 3], _ = add(states[live % 3], replicas[live % 3], f"live{live}")
    merged = states[0].merge(states[1]).merge(states[2])
    return merged, states


def test_orset_context_stays_bounded_after_10000_cycles() -> None:
    merged, states = _cycles(ORSet(), lambda s, r, e: s.add(r, e), lambda s, e: s.remove(e), 10_000, random.Random(7))
    assert merged.value == {f"live{i}" for i in range(10)}
    cc: CausalContext = merged.context
    assert len(cc.vv) == 3 and cc.cloud == frozenset()  # one entry per replica, no dot cloud
    size = len(merged.to_wire())
    # 10 live elements of ~20 bytes + 3 vector entries of ~11 bytes + envelope: about 250 bytes
    assert size <= 330, size
    assert all(len(s.to_wire()) < 2_000 for s in states)  # even unmerged replicas stay small


def test_ormap_context_stays_bounded_after_10000_cycles() -> None:
    merged, _ = _cycles(
        ORMap(ORSet),
        lambda m, r, e: m.update(r, e, lambda s: s.add(r, "x")),
        lambda m, e: m.remove(e),
        10_000,
        random.Random(11),
    )
    assert set(merged.value) == {f"live{i}" for i in range(10)}
    assert len(merged.context.vv) == 3 and merged.context.cloud == frozenset()
    size = len(merged.to_wire())
    assert size <= 420, size


def test_ormap_of_counters_stays_bounded_after_10000_cycles() -> None:
    merged, _ = _cycles(
        ORMap(GCounter),
        lambda m, r, e: m.update(r, e, lambda c: c.increment(r, 1)),
        lambda m, e: m.remove(e),
        10_000,
        random.Random(11),
    )
    assert merged.value == {f"live{i}": 1 for i in range(10)}
    assert len(merged.context.vv) == 3 and merged.context.cloud == frozenset()
    assert len(merged.to_wire()) <= 600  # 530 bytes: fragments carry a full gcounter object


def test_public_names() -> None:
    import natsagents.crdt as crdt

    public = {n for n in vars(crdt) if not n.startswith("_") and n != "annotations"}
    modules = {n for n in public if type(getattr(crdt, n)).__name__ == "module"}
    assert public - modules == set(crdt.__all__) - {"resolve"}
    assert len(set(crdt.__all__)) == len(crdt.__all__)
    assert isinstance(crdt.resolve.resolve, type(test_public_names))


_changes = st.lists(st.tuples(st.integers(0, 300), st.integers() | st.none()))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(0, 300), st.integers()), _changes)
def test_persistent_map_behaves_like_a_dict(start: dict[int, int], changes: list[tuple[int, int | None]]) -> None:
    from natsagents.crdt._pmap import DELETE, PMap, evolve

    model = dict(start)
    m: Any = PMap(start)
    small: Any = dict(start)
    for k, v in changes:
        old, snapshot = m, dict(m.items())
        step = {k: DELETE if v is None else v}
        m = m.evolve(step)
        small = evolve(small, step)
        if v is None:
            model.pop(k, None)
        else:
            model[k] = v
        assert old == snapshot  # persistent: the earlier map is unchanged
        assert m == model and model == m and small == model and len(m) == len(model)
        assert set(m) == set(model) and dict(m.items()) == model
        assert all(m.get(key) == model[key] and key in m for key in model)


def _adder(element: int) -> Callable[[ORSet], Mutation[ORSet]]:
    return lambda s: s.add("a", element)


@pytest.mark.parametrize("size", [300])
def test_large_sets_and_maps_by_deltas_equal_full_joins(size: int) -> None:
    """Beyond 128 entries stores and indexes are persistent maps: deltas, removals and
    merges there give what the plain join gives."""
    from natsagents.crdt._stores import join_dot_sets
    from natsagents.crdt.ormap import _join_map

    rng = random.Random(3)
    a, b = ORSet(), ORSet()
    ma, mb = ORMap(ORSet), ORMap(ORSet)
    for i in range(3 * size):
        e = rng.randrange(size)
        if rng.random() < 0.25 and e in a:
            a, d = a.remove(e)
        else:
            a, d = a.add("a", e)
        b = b.apply_delta(d) if rng.random() < 0.9 else b  # some deltas lost
        k = rng.randrange(size)
        if rng.random() < 0.2 and k in ma:
            ma, dm = ma.remove(k)
        else:
            ma, dm = ma.update("a", k, _adder(e))
        mb = mb.apply_delta(dm) if rng.random() < 0.9 else mb
        if i % 97 == 0:
            b, _ = b.add("b", -i)  # b writes too
            mb, _ = mb.update("b", -i, lambda s: s.add("b", 0))
    assert len(a) > 128 and len(ma) > 128
    full = a.merge(b)
    assert full == ORSet._raw(join_dot_sets(a._s, a._cc, b._s, b._cc), a.context.union(b.context))
    assert full == b.merge(a) and a.merge(full) == full
    mfull = ma.merge(mb)
    assert mfull == ma._new(_join_map(ma._ops, ma._s, ma._cc, mb._s, mb._cc), ma.context.union(mb.context))
    assert ORSet.from_wire(full.to_wire()) == full and ORMap.from_wire(mfull.to_wire()) == mfull
