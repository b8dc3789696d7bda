"""Dots and causal contexts: the bookkeeping of the causal CRDTs (ORSet, MVRegister, ORMap).

A *dot* ``(replica, n)`` names the ``n``-th event of a replica (n ≥ 1). A *causal context*
is the set of dots a state has seen, stored compactly as a version vector (every dot
``(r, 1..vv[r])``) plus a *dot cloud* of the dots seen beyond a gap. The representation is
canonical: ``vv[r]`` is the longest gap-free prefix, the cloud holds only dots above it.
Once every replica's dots have all been seen the cloud is empty, so a fully merged context
costs one entry per replica, whatever happened before (no tombstones).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from ._wire import UINT64_MAX, Dot, as_dot, as_list, as_map, as_replica, as_uint, envelope, fail, field
from .errors import CrdtError

__all__ = ["CausalContext", "Dot", "context_of"]

_EMPTY: frozenset[Dot] = frozenset()
#: Largest number of dots :meth:`CausalContext.few` spells out.
FEW = 64


def _compact(vv: dict[str, int], cloud: Iterable[Dot]) -> tuple[dict[str, int], frozenset[Dot]]:
    """Fold cloud dots that extend a replica's gap-free prefix into the vector (in place)."""
    rest: list[Dot] = []
    for dot in sorted(set(cloud)):  # by replica, then counter: one pass absorbs each chain
        replica, n = dot
        have = vv.get(replica, 0)
        if n == have + 1:
            vv[replica] = n
        elif n > have:
            rest.append(dot)
    return vv, frozenset(rest) if rest else _EMPTY


class CausalContext:
    """An immutable set of dots: a version vector plus a dot cloud."""

    __slots__ = ("_cloud", "_few", "_vv")

    _vv: dict[str, int]
    _cloud: frozenset[Dot]
    _few: frozenset[Dot] | bool | None

    def __init__(self, vv: Mapping[str, int] | None = None, cloud: Iterable[Dot] = ()) -> None:
        base = {r: n for r, n in (vv or {}).items() if n > 0}
        self._vv, self._cloud = _compact(base, cloud)
        self._few = False

    @classmethod
    def _raw(cls, vv: dict[str, int], cloud: frozenset[Dot]) -> CausalContext:
        new = object.__new__(cls)
        new._vv = vv
        new._cloud = cloud
        new._few = False
        return new

    @classmethod
    def of(cls, dots: Iterable[Dot]) -> CausalContext:
        """The context holding exactly ``dots``."""
        return cls(None, dots)

    @property
    def vv(self) -> Mapping[str, int]:
        """The gap-free prefix per replica."""
        return MappingProxyType(self._vv)

    @property
    def cloud(self) -> frozenset[Dot]:
        """Dots seen beyond a gap."""
        return self._cloud

    def __contains__(self, dot: object) -> bool:
        if not isinstance(dot, tuple) or len(dot) != 2:
            return False
        replica: str = dot[0]
        n: int = dot[1]
        return n <= self._vv.get(replica, 0) or dot in self._cloud

    def __iter__(self) -> Iterator[Dot]:
        raise TypeError("a causal context is not iterated (it may stand for billions of dots)")

    def __len__(self) -> int:
        """Entries stored: replicas in the vector plus dots in the cloud (not dots stood for)."""
        return len(self._vv) + len(self._cloud)

    def few(self) -> frozenset[Dot] | None:
        """Every dot as a set when the context stands for at most :data:`FEW` dots (a delta's
        context, typically), else ``None``. Computed once: joins then test membership in C."""
        if self._few is False:
            total = len(self._cloud) + sum(self._vv.values())
            if total > FEW:
                self._few = None
            else:
                dots = set(self._cloud)
                for r, n in self._vv.items():
                    dots.update((r, i) for i in range(1, n + 1))
                self._few = frozenset(dots)
        return self._few  # type: ignore[return-value]

    def max(self, replica: str) -> int:
        """The highest counter of ``replica`` seen (0 if none)."""
        top = self._vv.get(replica, 0)
        for r, n in self._cloud:
            if r == replica and n > top:
                top = n
        return top

    def next_dot(self, replica: str) -> Dot:
        """The dot of ``replica``'s next event."""
        n = self.max(replica) + 1
        if n > UINT64_MAX:
            raise CrdtError(f"replica {replica!r} has used every dot counter")
        return replica, n

    def union(self, other: CausalContext) -> CausalContext:
        if other is self or (not other._cloud and not other._vv):
            return self
        if not self._vv and not self._cloud:
            return other
        vv = dict(self._vv)
        for r, n in other._vv.items():
            if n > vv.get(r, 0):
                vv[r] = n
        if not self._cloud and not other._cloud:
            return CausalContext._raw(vv, _EMPTY)
        return CausalContext._raw(*_compact(vv, self._cloud | other._cloud))

    def add(self, dots: Iterable[Dot]) -> CausalContext:
        vv = dict(self._vv)
        return CausalContext._raw(*_compact(vv, self._cloud.union(dots)))

    def without(self, dots: Iterable[Dot], limit: int) -> CausalContext | None:
        """This context less ``dots`` (``None`` when the result would hold more than
        ``limit`` dots in its cloud: what was a version vector entry may become a list)."""
        by: dict[str, set[int]] = {}
        for r, n in dots:
            by.setdefault(r, set()).add(n)
        vv = dict(self._vv)
        cloud = set(self._cloud)
        added = 0
        for r, ns in by.items():
            top = vv.get(r, 0)
            low = [n for n in ns if n <= top]
            if low:
                cut = min(low) - 1
                added += (top - cut) - len(low)  # the prefix above the cut, less ``dots``
                if added > limit:
                    return None
                cloud.update((r, i) for i in range(cut + 1, top + 1) if i not in ns)
                if cut:
                    vv[r] = cut
                else:
                    del vv[r]
            cloud.difference_update((r, n) for n in ns if n > top)
        return CausalContext._raw(vv, frozenset(cloud) if cloud else _EMPTY)

    def covers(self, other: CausalContext) -> bool:
        """Whether every dot of ``other`` is in this context (``other`` ⊆ ``self``)."""
        if other is self:
            return True
        mine, cloud = self._vv, self._cloud
        for r, n in other._vv.items():
            have = mine.get(r, 0)
            if n > have:
                if n - have > len(cloud):
                    return False  # not that many dots beyond our prefix
                if any((r, i) not in cloud for i in range(have + 1, n + 1)):
                    return False
        return all(d[1] <= mine.get(d[0], 0) or d in cloud for d in other._cloud)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalContext):
            return NotImplemented
        return self._vv == other._vv and self._cloud == other._cloud

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CausalContext({self._vv!r}, cloud={sorted(self._cloud)!r})"

    # -- wire: {"vv": {replica: uint}, "dc": [[replica, uint], ...]} ---------------------------

    def to_obj(self) -> dict[str, Any]:
        return {"vv": dict(sorted(self._vv.items())), "dc": [list(d) for d in sorted(self._cloud)]}

    @classmethod
    def from_obj(cls, obj: Any, where: str = "cc") -> CausalContext:
        top = as_map(obj, where)
        vv: dict[str, int] = {}
        for r, n in as_map(field(top, "vv", where), where + ".vv").items():
            vv[as_replica(r, where + ".vv")] = as_uint(n, where + ".vv")
        cloud = [as_dot(d, where + ".dc") for d in as_list(field(top, "dc", where), where + ".dc")]
        return cls(vv, cloud)


def dots_covered(dots: Iterable[Dot], cc: CausalContext, where: str) -> None:
    """Decoding: every dot a store holds must be in its causal context, and held once (a dot
    names one event: one element added, one value written, one key updated)."""
    held: set[Dot] = set()
    for dot in dots:
        if dot not in cc:
            raise fail(f"dot {list(dot)!r} is not in the causal context", where)
        if dot in held:
            raise fail(f"dot {list(dot)!r} is held twice", where)
        held.add(dot)


def context_of(obj: Any, tag: str) -> CausalContext:
    """The causal context of a decoded causal value (``tag``: ``orset``, ``mvreg`` or
    ``ormap``; its ``cc`` field, protocol §17) without decoding the rest: a receiver whose
    own context covers it has every dot the value holds or removed (and learns nothing).

    Raises:
        CrdtDecodeError: not a ``tag`` value, or a malformed context.
    """
    return CausalContext.from_obj(field(envelope(obj, tag), "cc", tag), tag + ".cc")
