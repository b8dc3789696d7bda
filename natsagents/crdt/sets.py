"""Grow-only sets and add-wins observed-remove sets."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ._stores import DotSets, decode_dot_sets, encode_dot_sets, join_dot_sets
from ._wire import Atom, as_atom, as_list, atom_key, check_atom, envelope, fail, field
from .base import Crdt, Mutation
from .dots import CausalContext, dots_covered

__all__ = ["GSet", "ORSet"]


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
        return type(other) is type(self) and self._e == other._e  # type: ignore[attr-defined]

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
    __slots__ = ("_cc", "_s")

    _s: DotSets
    _cc: CausalContext

    def __init__(self) -> None:
        self._s = {}
        self._cc = CausalContext()

    @classmethod
    def _raw(cls, s: DotSets, cc: CausalContext) -> ORSet:
        new = object.__new__(cls)
        new._s = s
        new._cc = cc
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
        return Mutation(ORSet._raw({**self._s, e: new}, self._cc.add(new)), delta)

    def remove(self, element: Atom) -> Mutation[ORSet]:
        """Remove ``element`` as observed here (a concurrent add elsewhere survives)."""
        e = check_atom(element)
        old = self._s.get(e)
        if not old:
            return Mutation(self, ORSet())
        rest = dict(self._s)
        del rest[e]
        return Mutation(ORSet._raw(rest, self._cc), ORSet._raw({}, CausalContext.of(old)))

    def clear(self) -> Mutation[ORSet]:
        """Remove every element observed here."""
        dots = [d for ds in self._s.values() for d in ds]
        return Mutation(ORSet._raw({}, self._cc), ORSet._raw({}, CausalContext.of(dots)))

    def merge(self, other: ORSet) -> ORSet:
        self._same(other)
        if other is self:
            return self
        return ORSet._raw(join_dot_sets(self._s, self._cc, other._s, other._cc), self._cc.union(other._cc))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return False
        return self._s == other._s and self._cc == other._cc  # type: ignore[attr-defined]

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
