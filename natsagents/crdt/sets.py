"""Grow-only sets and add-wins observed-remove sets."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ._pmap import DELETE, evolve
from ._stores import (
    DotSets,
    alive,
    build_index,
    decode_dot_sets,
    encode_dot_sets,
    join_dot_sets,
    join_small,
    missing_for,
    reindex,
)
from ._wire import Atom, Dot, as_atom, as_list, atom_key, check_atom, envelope, fail, field
from .base import Crdt, Mutation
from .dots import CausalContext, dots_covered

__all__ = ["GSet", "ORSet"]


def _same(dots: frozenset[Dot]) -> frozenset[Dot]:
    return dots


class GSet(Crdt):
    """A grow-only set of atoms (str, int or bytes; ``True`` is not ``1``).

    Wire: ``{"t": "gset", "v": 1, "e": [element, ...]}``.
    """

    TAG = "gset"
    __slots__ = ("_e",)

    _e: frozenset[Atom]

    def __init__(self, elements: Iterable[Atom] = ()) -> None:
        self._e = frozenset(check_atom(e) for e in elements)

    @classmethod
    def _raw(cls, e: frozenset[Atom]) -> GSet:
        new = object.__new__(cls)
        new._e = e
        return new

    @property
    def value(self) -> frozenset[Atom]:
        return self._e

    def __contains__(self, element: object) -> bool:
        return element in self._e and type(element) in (str, int, bytes)

    def __iter__(self) -> Iterator[Atom]:
        return iter(self._e)

    def __len__(self) -> int:
        return len(self._e)

    def add(self, element: Atom) -> Mutation[GSet]:
        e = check_atom(element)
        return Mutation(GSet._raw(self._e | {e}), GSet._raw(frozenset((e,))))

    def merge(self, other: GSet) -> GSet:
        self._same(other)
        if other._e <= self._e:
            return self
        return GSet._raw(self._e | other._e)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._e == other._e

    __hash__ = None  # type: ignore[assignment]

    def to_obj(self) -> dict[str, Any]:
        return {"t": self.TAG, "v": 1, "e": sorted(self._e, key=atom_key)}

    @classmethod
    def _from_obj(cls, obj: Any, depth: int) -> GSet:
        top = envelope(obj, cls.TAG)
        items = as_list(field(top, "e", cls.TAG), "gset.e")
        elements = frozenset(as_atom(e, "gset.e") for e in items)
        if len(elements) != len(items):
            raise fail("an element appears twice", "gset.e")
        return cls._raw(elements)


class ORSet(Crdt):
    """An add-wins observed-remove set of atoms (str, int or bytes).

    Each add is tagged with a fresh dot of the adding replica; a remove drops the dots it has
    seen, so an add concurrent with a remove wins. Removed elements leave no tombstone: the
    causal context remembers them as a version vector entry per replica (plus a small dot
    cloud while deltas arrive out of order).

    ``s, delta = s.add("node-1", "x")``; ``s, delta = s.remove("x")``.

    Wire: ``{"t": "orset", "v": 1, "e": [[element, [dot, ...]], ...], "cc": context}``.
    """

    TAG = "orset"
    CAUSAL = True
    __slots__ = ("_cc", "_idx", "_s")

    _s: DotSets
    _cc: CausalContext
    _idx: Mapping[Dot, Atom] | None  # dot → element, built when a small merge needs it

    def __init__(self) -> None:
        self._s = {}
        self._cc = CausalContext()
        self._idx = None

    @classmethod
    def _raw(cls, s: DotSets, cc: CausalContext, idx: Mapping[Dot, Atom] | None = None) -> ORSet:
        new = object.__new__(cls)
        new._s = s
        new._cc = cc
        new._idx = idx
        return new

    @property
    def value(self) -> frozenset[Atom]:
        return frozenset(self._s)

    @property
    def context(self) -> CausalContext:
        return self._cc

    def __contains__(self, element: object) -> bool:
        return element in self._s and type(element) in (str, int, bytes)

    def __iter__(self) -> Iterator[Atom]:
        return iter(self._s)

    def __len__(self) -> int:
        return len(self._s)

    def add(self, replica: str, element: Atom) -> Mutation[ORSet]:
        """Add ``element`` as ``replica`` (which must be this replica's own id)."""
        e = check_atom(element)
        dot = self._cc.next_dot(replica)
        new = frozenset((dot,))
        old = self._s.get(e, frozenset())
        delta = ORSet._raw({e: new}, CausalContext.of(old | new))
        idx = reindex(self._idx, e, old, new, _same)
        return Mutation(ORSet._raw(evolve(self._s, {e: new}), self._cc.add(new), idx), delta)

    def remove(self, element: Atom) -> Mutation[ORSet]:
        """Remove ``element`` as observed here (a concurrent add elsewhere survives)."""
        e = check_atom(element)
        old = self._s.get(e)
        if not old:
            return Mutation(self, ORSet())
        idx = reindex(self._idx, e, old, None, _same)
        return Mutation(ORSet._raw(evolve(self._s, {e: DELETE}), self._cc, idx), ORSet._raw({}, CausalContext.of(old)))

    def clear(self) -> Mutation[ORSet]:
        """Remove every element observed here."""
        dots = [d for ds in self._s.values() for d in ds]
        return Mutation(ORSet._raw({}, self._cc), ORSet._raw({}, CausalContext.of(dots)))

    def delta_for(self, context: CausalContext) -> ORSet:
        """What a replica whose causal context is ``context`` lacks of this set (see
        :meth:`ORMap.delta_for`): the elements holding a dot it has not seen, under this
        set's context less the dots of the elements left out; the whole set when no smaller
        delta is at hand."""
        part = missing_for(self._s, self._cc, context, _same)
        return self if part is None else ORSet._raw(*part)

    def merge(self, other: ORSet) -> ORSet:
        self._same(other)
        if other is self:
            return self
        cc = self._cc.union(other._cc)
        big, small = (self, other) if len(self._s) >= len(other._s) else (other, self)
        few = small._cc.few()
        if few is not None:
            if big._idx is None:
                big._idx = build_index(big._s, _same)
            c1 = big._cc

            def join_one(d1: frozenset[Dot] | None, d2: frozenset[Dot] | None) -> frozenset[Dot]:
                if d2 is None:
                    return d1 - few if d1 else frozenset()
                if d1 is None:
                    return alive(d2, c1)
                return (d1 & d2) | (d1 - d2 - few) | alive(d2 - d1, c1)

            s, idx = join_small(big._s, big._idx, small._s, few, join_one, _same)
            return ORSet._raw(s, cc, idx)
        return ORSet._raw(join_dot_sets(self._s, self._cc, other._s, other._cc), cc)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return False
        return self._s == other._s and self._cc == other._cc

    __hash__ = None  # type: ignore[assignment]

    def to_obj(self) -> dict[str, Any]:
        return {"t": self.TAG, "v": 1, "e": encode_dot_sets(self._s), "cc": self._cc.to_obj()}

    @classmethod
    def _from_obj(cls, obj: Any, depth: int) -> ORSet:
        top = envelope(obj, cls.TAG)
        cc = CausalContext.from_obj(field(top, "cc", cls.TAG), "orset.cc")
        store = decode_dot_sets(field(top, "e", cls.TAG), "orset.e", as_atom)
        dots_covered((d for ds in store.values() for d in ds), cc, "orset.e")
        return cls._raw(store, cc)
