"""Last-writer-wins and multi-value registers."""

from __future__ import annotations

from typing import Any

from ._stores import decode_dot_fun, encode_dot_fun, join_dot_fun
from ._wire import Dot, check_replica, check_value, encode, envelope, field
from .base import Crdt, Mutation
from .dots import CausalContext, dots_covered
from .errors import CrdtTypeError
from .hlc import HLC, Timestamp

__all__ = ["LWWRegister", "MVRegister"]


class LWWRegister(Crdt):
    """A register whose latest write wins, ordered by hybrid-logical-clock timestamps
    (ties between replicas broken by replica id, inside :class:`Timestamp`'s order; equal
    timestamps with different values, which an honest clock never issues, by the larger
    msgpack encoding). The value is any msgpack-encodable data (protocol §5.1).

    ``r, delta = r.set("blue", clock)`` with an :class:`HLC` (or a :class:`Timestamp`).

    Wire: ``{"t": "lww", "v": 1, "x": value, "ts": [wall, logical, replica] or nil}``.
    """

    TAG = "lww"
    __slots__ = ("_enc", "_ts", "_x")

    _x: Any
    _ts: Timestamp | None
    _enc: bytes

    def __init__(self) -> None:
        self._x = None
        self._ts = None
        self._enc = b"\xc0"

    @classmethod
    def _raw(cls, x: Any, ts: Timestamp | None, enc: bytes) -> LWWRegister:
        new = object.__new__(cls)
        new._x = x
        new._ts = ts
        new._enc = enc
        return new

    @property
    def value(self) -> Any:
        return self._x

    @property
    def stamp(self) -> Timestamp | None:
        """The timestamp of the winning write (``None``: never written)."""
        return self._ts

    def set(self, value: Any, clock: HLC | Timestamp) -> Mutation[LWWRegister]:
        """Write ``value`` at ``clock.now()`` (or at the given timestamp). A write older than
        the current one changes nothing (its delta still merges harmlessly)."""
        stamp = clock.now() if isinstance(clock, HLC) else clock
        if not isinstance(stamp, Timestamp):
            raise CrdtTypeError(f"expected an HLC or a Timestamp, got {type(clock).__name__}")
        delta = LWWRegister._raw(value, stamp, check_value(value))
        return Mutation(self.merge(delta), delta)

    def _wins_over(self, other: LWWRegister) -> bool:
        if self._ts is None or other._ts is None:
            return other._ts is None
        if self._ts != other._ts:
            return self._ts > other._ts
        return self._enc >= other._enc

    def merge(self, other: LWWRegister) -> LWWRegister:
        self._same(other)
        return self if self._wins_over(other) else other

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return False
        return self._ts == other._ts and self._enc == other._enc

    __hash__ = None  # type: ignore[assignment]

    def to_obj(self) -> dict[str, Any]:
        return {"t": self.TAG, "v": 1, "x": self._x, "ts": None if self._ts is None else self._ts.to_obj()}

    @classmethod
    def _from_obj(cls, obj: Any, depth: int) -> LWWRegister:
        top = envelope(obj, cls.TAG)
        raw_ts = field(top, "ts", cls.TAG)
        x = field(top, "x", cls.TAG)
        if raw_ts is None:
            return cls()  # never written: the value is nil whatever "x" says
        return cls._raw(x, Timestamp.from_obj(raw_ts, "lww.ts"), encode(x))


def _pick(a: Any, b: Any) -> Any:
    """Two values under one dot (never from honest replicas): the smaller encoding, so every
    replica picks the same."""
    return a if encode(a) <= encode(b) else b


class MVRegister(Crdt):
    """A multi-value register: a write replaces every value it has seen; concurrent writes
    are all kept until a later write (which saw them) replaces them. ``value`` is the tuple
    of current values in dot order (replica id, then counter), the same on every replica.

    ``r, delta = r.set("node-1", "blue")``.

    Wire: ``{"t": "mvreg", "v": 1, "e": [[dot, value], ...], "cc": context}``.
    """

    TAG = "mvreg"
    CAUSAL = True
    __slots__ = ("_cc", "_s")

    _s: dict[Dot, Any]
    _cc: CausalContext

    def __init__(self) -> None:
        self._s = {}
        self._cc = CausalContext()

    @classmethod
    def _raw(cls, s: dict[Dot, Any], cc: CausalContext) -> MVRegister:
        new = object.__new__(cls)
        new._s = s
        new._cc = cc
        return new

    @property
    def value(self) -> tuple[Any, ...]:
        return tuple(self._s[d] for d in sorted(self._s))

    @property
    def entries(self) -> tuple[tuple[Dot, Any], ...]:
        """``(dot, value)`` pairs in dot order: which replica wrote each sibling."""
        return tuple((d, self._s[d]) for d in sorted(self._s))

    @property
    def context(self) -> CausalContext:
        return self._cc

    def set(self, replica: str, value: Any) -> Mutation[MVRegister]:
        check_replica(replica)
        check_value(value)
        dot = self._cc.next_dot(replica)
        delta = MVRegister._raw({dot: value}, CausalContext.of([*self._s, dot]))
        return Mutation(MVRegister._raw({dot: value}, self._cc.add((dot,))), delta)

    def merge(self, other: MVRegister) -> MVRegister:
        self._same(other)
        if other is self:
            return self
        return MVRegister._raw(join_dot_fun(self._s, self._cc, other._s, other._cc, _pick), self._cc.union(other._cc))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return False
        return self._cc == other._cc and encode_mv(self._s) == encode_mv(other._s)

    __hash__ = None  # type: ignore[assignment]

    def to_obj(self) -> dict[str, Any]:
        return {"t": self.TAG, "v": 1, "e": encode_dot_fun(self._s, _same_value), "cc": self._cc.to_obj()}

    @classmethod
    def _from_obj(cls, obj: Any, depth: int) -> MVRegister:
        top = envelope(obj, cls.TAG)
        cc = CausalContext.from_obj(field(top, "cc", cls.TAG), "mvreg.cc")
        store = decode_dot_fun(field(top, "e", cls.TAG), "mvreg.e", _same_value)
        dots_covered(store, cc, "mvreg.e")
        return cls._raw(store, cc)


def _same_value(x: Any) -> Any:
    return x


def encode_mv(store: dict[Dot, Any]) -> bytes:
    """Values compared by encoding (``1 == True`` in Python, not on the wire)."""
    return encode(encode_dot_fun(store, _same_value))
