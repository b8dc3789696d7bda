"""Conflict resolution between sibling versions of one record (eventual mode, split brain).

A *sibling* is a value with the version vector and HLC timestamp of the write that made it.
:func:`frontier` keeps the siblings no other sibling supersedes and puts them in a canonical
order (timestamp, then encoded version, then encoded value), so that every node hands the
same siblings in the same order to the rule and reaches the same state:

- ``"last_write_wins"``: the sibling with the greatest timestamp; the others are reported in
  ``Resolution.overwritten`` (count them: they are writes the rule discarded);
- ``"vector_clock"``: the agent's ``resolve(siblings)`` gets every concurrent sibling;
- ``"merge"``: the agent's ``merge_states(a, b)`` folded over the siblings in canonical order;
- any callable: called like ``resolve``.

The resolution's version merges every sibling's version (it supersedes all of them); the
writer then increments its own entry and stamps the write with a fresh ``HLC.now()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from ._wire import encode
from .errors import CrdtTypeError
from .hlc import Timestamp
from .vclock import Order, VersionVector

__all__ = ["Resolution", "Sibling", "Strategy", "frontier", "last_write_wins", "merge", "resolve", "vector_clock"]

T = TypeVar("T")

Strategy = Literal["last_write_wins", "vector_clock", "merge"] | Callable[[Sequence["Sibling[Any]"]], Any]


@dataclass(frozen=True, slots=True)
class Sibling(Generic[T]):
    """One version of a record: its value, version vector and HLC timestamp."""

    value: T
    version: VersionVector
    stamp: Timestamp


@dataclass(frozen=True, slots=True)
class Resolution(Generic[T]):
    """The outcome of resolving siblings."""

    value: T
    #: Merge of every sibling's version: the resolved state supersedes each of them.
    version: VersionVector
    #: The greatest sibling timestamp.
    stamp: Timestamp
    #: The concurrent siblings the rule saw, in canonical order.
    siblings: tuple[Sibling[T], ...]
    #: Siblings whose value the rule discarded (last-write-wins losers); empty for the others.
    overwritten: tuple[Sibling[T], ...] = field(default=())


def _encoded(value: Any) -> bytes:
    try:
        return encode(value)
    except (TypeError, ValueError) as exc:
        raise CrdtTypeError(f"a sibling's value must be msgpack-encodable to be ordered: {exc}") from exc


def _key(s: Sibling[Any]) -> tuple[Timestamp, bytes, bytes]:
    return s.stamp, s.version.to_wire(), _encoded(s.value)


def frontier(siblings: Iterable[Sibling[T]]) -> tuple[Sibling[T], ...]:
    """The siblings that no other sibling supersedes (a version strictly before another is
    dropped; exact duplicates are kept once), in canonical order."""
    items = list(siblings)
    for s in items:
        if not isinstance(s, Sibling):
            raise CrdtTypeError(f"expected Sibling values, got {type(s).__name__}")
    if not items:
        raise CrdtTypeError("nothing to resolve: no siblings")
    keyed = sorted({_key(s): s for s in items}.items(), key=lambda kv: kv[0])
    unique = [s for _, s in keyed]
    return tuple(s for s in unique if not any(s.version.compare(o.version) is Order.BEFORE for o in unique))


def _resolution(value: T, kept: tuple[Sibling[T], ...], overwritten: tuple[Sibling[T], ...] = ()) -> Resolution[T]:
    return Resolution(
        value=value,
        version=VersionVector.merge_all(s.version for s in kept),
        stamp=max(s.stamp for s in kept),
        siblings=kept,
        overwritten=overwritten,
    )


def last_write_wins(siblings: Iterable[Sibling[T]]) -> Resolution[T]:
    """The sibling with the greatest HLC timestamp wins (timestamps embed the replica id, so
    there is no tie between writers)."""
    kept = frontier(siblings)
    winner = kept[-1]
    return _resolution(winner.value, kept, kept[:-1])


def vector_clock(siblings: Iterable[Sibling[T]], resolver: Callable[[Sequence[Sibling[T]]], T]) -> Resolution[T]:
    """Hand the concurrent siblings (canonical order) to ``resolver``; a single survivor is
    taken as it is, without calling it."""
    kept = frontier(siblings)
    if len(kept) == 1:
        return _resolution(kept[0].value, kept)
    return _resolution(resolver(kept), kept)


def merge(siblings: Iterable[Sibling[T]], merger: Callable[[T, T], T]) -> Resolution[T]:
    """Fold ``merger(a, b)`` over the concurrent siblings' values in canonical order."""
    kept = frontier(siblings)
    value = kept[0].value
    for s in kept[1:]:
        value = merger(value, s.value)
    return _resolution(value, kept)


def resolve(
    siblings: Iterable[Sibling[T]],
    strategy: Strategy = "last_write_wins",
    *,
    resolver: Callable[[Sequence[Sibling[T]]], T] | None = None,
    merger: Callable[[T, T], T] | None = None,
) -> Resolution[T]:
    """Resolve siblings by a kind's ``conflict_resolution``.

    Args:
        siblings: the versions found (any order, duplicates and superseded ones allowed).
        strategy: ``"last_write_wins"``, ``"vector_clock"`` (needs ``resolver``), ``"merge"``
            (needs ``merger``), or a callable taking the canonical siblings.
    Raises:
        CrdtTypeError: an unknown strategy, a missing function, no siblings.
    """
    if callable(strategy):
        return vector_clock(siblings, strategy)
    if strategy == "last_write_wins":
        return last_write_wins(siblings)
    if strategy == "vector_clock":
        if resolver is None:
            raise CrdtTypeError('conflict_resolution "vector_clock" needs a resolver (the agent\'s resolve)')
        return vector_clock(siblings, resolver)
    if strategy == "merge":
        if merger is None:
            raise CrdtTypeError('conflict_resolution "merge" needs a merger (the agent\'s merge_states)')
        return merge(siblings, merger)
    raise CrdtTypeError(f"unknown conflict_resolution {strategy!r}")
