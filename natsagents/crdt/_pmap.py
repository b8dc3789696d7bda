"""A persistent (immutable) mapping with cheap updates: the entries are spread over a fixed
number of buckets by hash, and an update copies only the buckets it touches plus the tuple
of bucket references. ORSet and ORMap keep their entries and their dot index in one, so a
mutation or a small delta costs a bucket (entries / 64), not the whole state.

Bucketing uses ``hash()``, which varies between processes; it never reaches the wire and
equality compares entries, not buckets.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping
from typing import Any, Final, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

BUCKETS: Final = 64
_MASK: Final = BUCKETS - 1
_MISSING: Any = object()
#: A value in :meth:`PMap.evolve` changes that deletes the key.
DELETE: Any = object()


class _Items(ItemsView[K, V]):
    _mapping: PMap[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        for bucket in self._mapping._b:
            yield from bucket.items()


class PMap(Mapping[K, V], Generic[K, V]):
    __slots__ = ("_b", "_n")

    _b: tuple[dict[K, V], ...]
    _n: int

    def __init__(self, entries: Mapping[K, V] | None = None) -> None:
        buckets: list[dict[K, V]] = [{} for _ in range(BUCKETS)]
        if entries:
            for k, v in entries.items():
                buckets[hash(k) & _MASK][k] = v
        self._b = tuple(buckets)
        self._n = sum(len(b) for b in buckets)

    @classmethod
    def of(cls, entries: Mapping[K, V]) -> PMap[K, V]:
        return entries if isinstance(entries, PMap) else cls(entries)

    def __getitem__(self, key: K) -> V:
        return self._b[hash(key) & _MASK][key]

    def get(self, key: K, default: Any = None) -> Any:
        return self._b[hash(key) & _MASK].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._b[hash(key) & _MASK]

    def __iter__(self) -> Iterator[K]:
        for bucket in self._b:
            yield from bucket

    def __len__(self) -> int:
        return self._n

    def items(self) -> _Items[K, V]:
        return _Items(self)

    def evolve(self, changes: Mapping[K, V]) -> PMap[K, V]:
        """A new map with ``changes`` applied (a value :data:`DELETE` removes its key)."""
        if not changes:
            return self
        buckets = list(self._b)
        copied: set[int] = set()
        n = self._n
        for k, v in changes.items():
            i = hash(k) & _MASK
            if i not in copied:
                buckets[i] = dict(buckets[i])
                copied.add(i)
            bucket = buckets[i]
            if v is DELETE:
                if bucket.pop(k, _MISSING) is not _MISSING:
                    n -= 1
            else:
                if k not in bucket:
                    n += 1
                bucket[k] = v
        new = object.__new__(PMap)
        new._b = tuple(buckets)
        new._n = n
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping) or len(other) != self._n:
            return False
        for k, v in self.items():
            w = other.get(k, _MISSING)
            if w is _MISSING or not (w is v or w == v):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PMap({dict(self.items())!r})"


#: Mappings up to this size stay plain dicts (copying them is cheaper than bucketing).
SMALL: Final = 128


def evolve(entries: Mapping[K, V], changes: Mapping[K, V]) -> Mapping[K, V]:
    """``entries`` with ``changes`` applied, as a new mapping (the input is never modified):
    a plain dict while small, a :class:`PMap` beyond :data:`SMALL` entries."""
    if isinstance(entries, PMap):
        return entries.evolve(changes)
    out = dict(entries)
    for k, v in changes.items():
        if v is DELETE:
            out.pop(k, None)
        else:
            out[k] = v
    return PMap(out) if len(out) > SMALL else out
