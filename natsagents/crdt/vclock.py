"""Version vectors: which writes of which replica a version has seen. Eventual-mode state
records carry one; comparing two tells whether one version supersedes the other or they are
concurrent siblings (``resolve.py`` then decides)."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from ._wire import UINT64_MAX, as_map, as_replica, as_uint, check_replica, decode_bytes, encode, envelope, field
from .errors import CrdtError, CrdtTypeError

__all__ = ["Order", "VersionVector"]


class Order(enum.Enum):
    """How one version relates to another."""

    BEFORE = "before"  # the other has seen everything this one has, and more
    AFTER = "after"  # this one has seen everything the other has, and more
    EQUAL = "equal"
    CONCURRENT = "concurrent"  # each has seen a write the other has not


class VersionVector:
    """An immutable map replica → count of that replica's writes seen (absent = 0).

    Wire form (protocol §17.3): ``{"t": "vv", "v": 1, "c": {replica: uint}}``.
    """

    __slots__ = ("_c",)

    _c: dict[str, int]

    def __init__(self, counters: Mapping[str, int] | None = None) -> None:
        c: dict[str, int] = {}
        for r, n in (counters or {}).items():
            check_replica(r)
            if type(n) is not int or not 0 <= n <= UINT64_MAX:
                raise CrdtTypeError(f"a version vector counter is an int of 0..2^64-1, got {n!r}")
            if n:
                c[r] = n
        self._c = c

    @classmethod
    def _raw(cls, c: dict[str, int]) -> VersionVector:
        new = object.__new__(cls)
        new._c = c
        return new

    def increment(self, replica: str) -> VersionVector:
        """This version plus one write by ``replica``."""
        check_replica(replica)
        n = self._c.get(replica, 0) + 1
        if n > UINT64_MAX:
            raise CrdtError(f"version vector counter of {replica!r} overflows")
        return VersionVector._raw({**self._c, replica: n})

    def merge(self, other: VersionVector) -> VersionVector:
        """The least vector that dominates both (pointwise maximum)."""
        c = dict(self._c)
        for r, n in other._c.items():
            if n > c.get(r, 0):
                c[r] = n
        return VersionVector._raw(c)

    @classmethod
    def merge_all(cls, vectors: Iterable[VersionVector]) -> VersionVector:
        out = cls()
        for v in vectors:
            out = out.merge(v)
        return out

    def compare(self, other: VersionVector) -> Order:
        less = greater = False
        for r in self._c.keys() | other._c.keys():
            a, b = self._c.get(r, 0), other._c.get(r, 0)
            if a < b:
                less = True
            elif a > b:
                greater = True
            if less and greater:
                return Order.CONCURRENT
        if less:
            return Order.BEFORE
        return Order.AFTER if greater else Order.EQUAL

    def dominates(self, other: VersionVector) -> bool:
        """True if this version has seen every write ``other`` has (equal included)."""
        return all(self._c.get(r, 0) >= n for r, n in other._c.items())

    def concurrent(self, other: VersionVector) -> bool:
        return self.compare(other) is Order.CONCURRENT

    def __getitem__(self, replica: str) -> int:
        return self._c.get(replica, 0)

    def __iter__(self) -> Iterator[str]:
        return iter(self._c)

    def __len__(self) -> int:
        return len(self._c)

    def as_dict(self) -> Mapping[str, int]:
        return MappingProxyType(self._c)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionVector):
            return NotImplemented
        return self._c == other._c

    def __hash__(self) -> int:
        return hash(frozenset(self._c.items()))

    def __repr__(self) -> str:
        return f"VersionVector({dict(sorted(self._c.items()))!r})"

    def to_obj(self) -> dict[str, Any]:
        return {"t": "vv", "v": 1, "c": dict(sorted(self._c.items()))}

    @classmethod
    def from_obj(cls, obj: Any) -> VersionVector:
        top = envelope(obj, "vv")
        c: dict[str, int] = {}
        for r, n in as_map(field(top, "c", "vv"), "vv.c").items():
            if as_uint(n, "vv.c"):
                c[as_replica(r, "vv.c")] = n
        return cls._raw(c)

    def to_wire(self) -> bytes:
        return encode(self.to_obj())

    @classmethod
    def from_wire(cls, data: bytes) -> VersionVector:
        return cls.from_obj(decode_bytes(data))
