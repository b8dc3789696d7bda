"""Grow-only and positive-negative counters."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Self

from ._wire import (
    MAX_REPLICA_CHARS,
    UINT64_MAX,
    VERSION,
    as_map,
    as_replica,
    as_uint,
    check_replica,
    envelope,
    field,
)
from .base import Crdt, Mutation
from .errors import CrdtError, CrdtTypeError

__all__ = ["GCounter", "PNCounter"]


def _max_merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    if not b:
        return a
    out = dict(a)
    for r, n in b.items():
        if n > out.get(r, 0):
            out[r] = n
    return out


def _counts_obj(counts: dict[str, int]) -> dict[str, int]:
    return dict(counts) if len(counts) < 2 else dict(sorted(counts.items()))


def _counts_from(obj: Any, where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r, n in as_map(obj, where).items():
        if as_uint(n, where):
            out[as_replica(r, where)] = n
    return out


def _fast_counts(obj: Any, tag: str, key: str) -> dict[str, int] | None:
    """The counts of a well-formed ``{"t": tag, "v": 1, key: {replica: uint}}`` at the cost of
    one pass; ``None`` for anything else (the checked path then says what is wrong)."""
    if type(obj) is not dict or obj.get("t") != tag or obj.get("v") != VERSION:
        return None
    counts = obj.get(key)
    if type(counts) is not dict:
        return None
    out: dict[str, int] = {}
    for r, n in counts.items():
        if type(r) is not str or type(n) is not int or not 0 < len(r) <= MAX_REPLICA_CHARS or not 0 <= n <= UINT64_MAX:
            return None
        if n:
            out[r] = n
    return out


def _amount(amount: Any) -> int:
    if type(amount) is not int or amount < 0:
        raise CrdtTypeError(f"a counter moves by a non-negative int, got {amount!r}")
    return amount


class GCounter(Crdt):
    """A grow-only counter: one monotonic count per replica; the value is their sum.

    ``c, delta = c.increment("node-1", 5)``. Wire: ``{"t": "gcounter", "v": 1, "c": {replica: uint}}``.
    """

    TAG = "gcounter"
    __slots__ = ("_c",)

    _c: dict[str, int]

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        c = {}
        for r, n in (counts or {}).items():
            check_replica(r)
            if _amount(n) > UINT64_MAX:
                raise CrdtTypeError("a replica's count is at most 2^64-1")
            if n:
                c[r] = n
        self._c = c

    @classmethod
    def _raw(cls, c: dict[str, int]) -> Self:
        new = object.__new__(cls)
        new._c = c
        return new

    @property
    def value(self) -> int:
        return sum(self._c.values())

    @property
    def counts(self) -> Mapping[str, int]:
        """Each replica's own count."""
        return MappingProxyType(self._c)

    def increment(self, replica: str, amount: int = 1) -> Mutation[GCounter]:
        check_replica(replica)
        n = self._c.get(replica, 0) + _amount(amount)
        if n == 0:
            return Mutation(self, GCounter())
        if n > UINT64_MAX:
            raise CrdtError(f"the count of {replica!r} would exceed 2^64-1")
        delta = GCounter._raw({replica: n})
        return Mutation(GCounter._raw({**self._c, replica: n}), delta)

    def merge(self, other: GCounter) -> GCounter:
        self._same(other)
        return GCounter._raw(_max_merge(self._c, other._c))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._c == other._c

    __hash__ = None  # type: ignore[assignment]

    def to_obj(self) -> dict[str, Any]:
        return {"t": self.TAG, "v": 1, "c": _counts_obj(self._c)}

    @classmethod
    def _from_obj(cls, obj: Any, depth: int) -> GCounter:
        fast = _fast_counts(obj, cls.TAG, "c")  # a map's fragments: thousands per state
        if fast is not None:
            return cls._raw(fast)
        top = envelope(obj, cls.TAG)
        return cls._raw(_counts_from(field(top, "c", cls.TAG), "gcounter.c"))


class PNCounter(Crdt):
    """A counter that goes up and down: two grow-only counts per replica, the value is
    increments minus decrements.

    Wire: ``{"t": "pncounter", "v": 1, "p": {replica: uint}, "n": {replica: uint}}``.
    """

    TAG = "pncounter"
    __slots__ = ("_n", "_p")

    _p: dict[str, int]
    _n: dict[str, int]

    def __init__(self) -> None:
        self._p = {}
        self._n = {}

    @classmethod
    def _raw(cls, p: dict[str, int], n: dict[str, int]) -> PNCounter:
        new = object.__new__(cls)
        new._p = p
        new._n = n
        return new

    @property
    def value(self) -> int:
        return sum(self._p.values()) - sum(self._n.values())

    @property
    def increments(self) -> Mapping[str, int]:
        return MappingProxyType(self._p)

    @property
    def decrements(self) -> Mapping[str, int]:
        return MappingProxyType(self._n)

    def increment(self, replica: str, amount: int = 1) -> Mutation[PNCounter]:
        """Add ``amount`` (negative: subtract)."""
        check_replica(replica)
        if type(amount) is not int:
            raise CrdtTypeError(f"a counter moves by an int, got {amount!r}")
        if amount < 0:
            return self.decrement(replica, -amount)
        n = self._p.get(replica, 0) + amount
        if n == 0:
            return Mutation(self, PNCounter())
        if n > UINT64_MAX:
            raise CrdtError(f"the increments of {replica!r} would exceed 2^64-1")
        return Mutation(PNCounter._raw({**self._p, replica: n}, self._n), PNCounter._raw({replica: n}, {}))

    def decrement(self, replica: str, amount: int = 1) -> Mutation[PNCounter]:
        check_replica(replica)
        if type(amount) is not int:
            raise CrdtTypeError(f"a counter moves by an int, got {amount!r}")
        if amount < 0:
            return self.increment(replica, -amount)
        n = self._n.get(replica, 0) + amount
        if n == 0:
            return Mutation(self, PNCounter())
        if n > UINT64_MAX:
            raise CrdtError(f"the decrements of {replica!r} would exceed 2^64-1")
        return Mutation(PNCounter._raw(self._p, {**self._n, replica: n}), PNCounter._raw({}, {replica: n}))

    def merge(self, other: PNCounter) -> PNCounter:
        self._same(other)
        return PNCounter._raw(_max_merge(self._p, other._p), _max_merge(self._n, other._n))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return False
        return self._p == other._p and self._n == other._n

    __hash__ = None  # type: ignore[assignment]

    def to_obj(self) -> dict[str, Any]:
        return {"t": self.TAG, "v": 1, "p": _counts_obj(self._p), "n": _counts_obj(self._n)}

    @classmethod
    def _from_obj(cls, obj: Any, depth: int) -> PNCounter:
        top = envelope(obj, cls.TAG)
        return cls._raw(
            _counts_from(field(top, "p", cls.TAG), "pncounter.p"),
            _counts_from(field(top, "n", cls.TAG), "pncounter.n"),
        )
