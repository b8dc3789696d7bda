"""Joins of dot stores under causal contexts (Almeida, Shoker, Baquero: "Delta state replicated
data types", 2018). A causal CRDT is a store plus the context of dots it has seen; a dot
present on one side survives a join unless the other side has seen it (and dropped it).

- dot sets per element (ORSet): ``dict[element, frozenset[Dot]]``
- dot functions (MVRegister, ORMap fragments): ``dict[Dot, value]``
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from ._pmap import DELETE, SMALL, PMap, evolve
from ._wire import MAX_REPLICA_CHARS, UINT64_MAX, Atom, Dot, as_dot, as_list, atom_key, fail
from .dots import CausalContext

V = TypeVar("V")
K = TypeVar("K")

DotSets = Mapping[Any, frozenset[Dot]]


def seen(dot: Dot, cc: CausalContext) -> bool:
    return dot[1] <= cc._vv.get(dot[0], 0) or dot in cc._cloud


def alive(dots: frozenset[Dot], cc: CausalContext) -> frozenset[Dot]:
    """The dots ``cc`` has not seen (the same object when none was)."""
    vv, cloud = cc._vv, cc._cloud
    if not vv and not cloud:
        return dots
    for d in dots:
        if d[1] <= vv.get(d[0], 0) or d in cloud:
            return frozenset(x for x in dots if not (x[1] <= vv.get(x[0], 0) or x in cloud))
    return dots


def join_dot_sets(s1: DotSets, c1: CausalContext, s2: DotSets, c2: CausalContext) -> dict[Any, frozenset[Dot]]:
    if len(s2) > len(s1):  # iterate the larger side with the fast paths
        s1, c1, s2, c2 = s2, c2, s1, c1
    out: dict[Any, frozenset[Dot]] = {}
    few = c2.few()
    for e, d1 in s1.items():
        d2 = s2.get(e)
        if d2 is None:
            if few is not None:
                kept = d1 if few.isdisjoint(d1) else d1 - few
            else:
                kept = alive(d1, c2)
        elif d1 == d2:
            kept = d1
        else:
            kept = (d1 & d2) | alive(d1 - d2, c2) | alive(d2 - d1, c1)
        if kept:
            out[e] = kept
    for e, d2 in s2.items():
        if e not in s1:
            kept = alive(d2, c1)
            if kept:
                out[e] = kept
    return out


def join_dot_fun(
    s1: Mapping[Dot, V], c1: CausalContext, s2: Mapping[Dot, V], c2: CausalContext, pick: Callable[[V, V], V]
) -> dict[Dot, V]:
    out: dict[Dot, V] = {}
    few = c2.few()
    for d, v in s1.items():
        if d in s2:
            w = s2[d]
            out[d] = v if v is w else pick(v, w)
        elif (d not in few) if few is not None else not seen(d, c2):
            out[d] = v
    for d, v in s2.items():
        if d not in s1 and not seen(d, c1):
            out[d] = v
    return out


# -- wire forms of the stores ---------------------------------------------------------------


def dot_list(dots: Iterable[Dot]) -> list[list[Any]]:
    return [[r, n] for r, n in sorted(dots)]


def encode_dot_sets(store: DotSets) -> list[Any]:
    return [[e, dot_list(store[e])] for e in sorted(store, key=atom_key)]


def decode_dot_sets(obj: Any, where: str, as_key: Callable[[Any, str], Atom]) -> dict[Any, frozenset[Dot]]:
    out: dict[Any, frozenset[Dot]] = {}
    seen_keys: set[Atom] = set()
    for item in as_list(obj, where):
        pair = as_list(item, where, 2)
        e = as_key(pair[0], where)
        if e in seen_keys:
            raise fail(f"element {e!r:.40} appears twice", where)
        seen_keys.add(e)
        dots = frozenset(as_dot(d, where) for d in as_list(pair[1], where))
        if dots:
            out[e] = dots
    return out


def encode_dot_fun(store: Mapping[Dot, V], value: Callable[[V], Any]) -> list[Any]:
    return [[[r, n], value(store[(r, n)])] for r, n in sorted(store)]


def decode_dot_fun(obj: Any, where: str, value: Callable[[Any], V]) -> dict[Dot, V]:
    out: dict[Dot, V] = {}
    for item in as_list(obj, where):
        # The common case checked inline (a map holds thousands): [[replica, n ≥ 1], value].
        d = item[0] if type(item) is list and len(item) == 2 else None
        if (
            type(d) is list
            and len(d) == 2
            and type(d[0]) is str
            and type(d[1]) is int
            and 0 < len(d[0]) <= MAX_REPLICA_CHARS
            and 1 <= d[1] <= UINT64_MAX
        ):
            dot: Dot = (d[0], d[1])
        else:
            dot = as_dot(as_list(item, where, 2)[0], where)
        if dot in out:
            raise fail(f"dot {list(dot)!r} appears twice", where)
        out[dot] = value(item[1])
    return out


# -- joins with a small side (applying a delta) in O(size of the delta) ----------------------


def build_index(store: Mapping[K, V], dots_of: Callable[[V], Iterable[Dot]]) -> Mapping[Dot, K]:
    """dot → the key of ``store`` holding it."""
    index = {d: k for k, v in store.items() for d in dots_of(v)}
    return PMap(index) if len(index) > SMALL else index


def reindex(
    index: Mapping[Dot, K] | None, key: K, old: V | None, new: V | None, dots_of: Callable[[V], Iterable[Dot]]
) -> Mapping[Dot, K] | None:
    """``index`` with ``key``'s dots changed from ``old`` to ``new`` (``None`` stays ``None``:
    the index is then built when first needed)."""
    if index is None:
        return None
    changes: dict[Dot, Any] = {}
    if old is not None:
        for d in dots_of(old):
            changes[d] = DELETE
    if new is not None:
        for d in dots_of(new):
            changes[d] = key
    return evolve(index, changes)


def join_small(
    s1: Mapping[K, V],
    index1: Mapping[Dot, K],
    s2: Mapping[K, V],
    few2: frozenset[Dot],
    join_one: Callable[[V | None, V | None], V | None],
    dots_of: Callable[[V], Iterable[Dot]],
) -> tuple[Mapping[K, V], Mapping[Dot, K]]:
    """The join of a large store with a small one whose context is ``few2``: only the keys
    of the small store and the keys holding a dot of ``few2`` can change, so only those are
    joined, and the large store is updated persistently (:func:`evolve`)."""
    touched = {index1[d] for d in few2 if d in index1}
    touched.update(s2)
    changes: dict[K, Any] = {}
    gone: set[Dot] = set()
    placed: dict[Dot, Any] = {}
    for k in touched:
        v1 = s1.get(k)
        joined = join_one(v1, s2.get(k))
        if v1 is not None:
            gone.update(dots_of(v1))
        if joined:
            changes[k] = joined
            for d in dots_of(joined):
                placed[d] = k
        elif v1 is not None:
            changes[k] = DELETE
    index_changes: dict[Dot, Any] = {d: DELETE for d in gone if d not in placed}
    index_changes.update(placed)
    return evolve(s1, changes), evolve(index1, index_changes)


def missing_for(
    store: Mapping[K, V], cc: CausalContext, context: CausalContext, dots: Callable[[V], Iterable[Dot]]
) -> tuple[dict[K, V], CausalContext] | None:
    """What a replica whose causal context is ``context`` lacks of the causal state
    ``(store, cc)``: the entries holding a dot it has not seen, and ``cc`` less the dots of
    the entries left out (so that it drops what this state removed, and keeps what both
    hold). Merged there it gives what the whole state gives. ``None``: nothing would be
    left out, or ``cc`` less those dots is not compact (the whole state is the answer)."""
    shipped: dict[K, V] = {}
    left: list[Dot] = []
    vv, cloud = context._vv, context._cloud
    for key, value in store.items():
        held = list(dots(value))
        if all(d[1] <= vv.get(d[0], 0) or d in cloud for d in held):
            left.extend(held)
        else:
            shipped[key] = value
    if not left:
        return None
    rest = cc.without(left, limit=max(64, 4 * len(shipped)))
    return None if rest is None else (shipped, rest)
