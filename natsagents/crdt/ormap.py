"""An observed-remove map whose values are CRDTs, all sharing the map's causal context.

Keys are add-wins: a key is present while it holds something a remove has not seen. Values:

- *causal* types (ORSet, MVRegister, ORMap) are stored as their dot stores, minted from the
  map's own dot counter. Removing a key drops exactly the dots it has seen: an element added
  to a nested set concurrently with the removal survives, everything observed is gone. A key
  whose nested value becomes empty (a set with no element) disappears.
- other types (GCounter, PNCounter, GSet, LWWRegister) are stored as one *fragment* per
  replica, each under a dot: that replica's contributions to the key. The value is the merge
  of the fragments. A remove drops the fragments it has seen; a replica updating the key
  concurrently keeps its fragment, so its own earlier contributions come back with it
  ("observed reset", as in Riak maps). An update never loses a concurrent update.

A fully merged map costs its live entries plus one context entry per replica: removed keys
leave nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, Final, Generic, TypeVar, cast, overload

from ._pmap import DELETE, evolve
from ._stores import (
    build_index,
    decode_dot_fun,
    decode_dot_sets,
    encode_dot_fun,
    encode_dot_sets,
    join_dot_fun,
    join_dot_sets,
    join_small,
    missing_for,
    reindex,
)
from ._wire import (
    MAX_NESTING,
    Atom,
    Dot,
    as_atom,
    as_list,
    atom_key,
    check_atom,
    check_replica,
    envelope,
    fail,
    field,
)
from .base import Crdt, Mutation, crdt_class
from .counters import GCounter, PNCounter
from .dots import CausalContext, dots_covered
from .errors import CrdtTypeError
from .registers import LWWRegister, MVRegister, _pick, encode_mv
from .sets import GSet, ORSet

__all__ = ["ORMap"]

V = TypeVar("V", bound=Crdt)

#: Value types stored as per-replica fragments.
FRAGMENT_TYPES: Final[dict[str, type[Crdt]]] = {c.TAG: c for c in (GCounter, PNCounter, GSet, LWWRegister)}


class _Ops:
    """How the map handles the stores of one value type."""

    causal: bool = True

    def join(self, s1: Any, c1: CausalContext, s2: Any, c2: CausalContext) -> Any:
        raise NotImplementedError

    def dots(self, store: Any) -> Iterator[Dot]:
        raise NotImplementedError

    def view(self, store: Any, cc: CausalContext) -> Crdt:
        raise NotImplementedError

    def store_of(self, value: Crdt) -> Any:
        raise NotImplementedError

    def encode(self, store: Any) -> Any:
        raise NotImplementedError

    def decode(self, obj: Any, where: str) -> Any:
        raise NotImplementedError

    def same(self, a: Any, b: Any) -> bool:
        return bool(a == b)


class _SetOps(_Ops):
    def join(self, s1: Any, c1: CausalContext, s2: Any, c2: CausalContext) -> Any:
        return join_dot_sets(s1, c1, s2, c2)

    def dots(self, store: Any) -> Iterator[Dot]:
        for ds in store.values():
            yield from ds

    def view(self, store: Any, cc: CausalContext) -> Crdt:
        return ORSet._raw(store, cc)

    def store_of(self, value: Crdt) -> Any:
        return cast(ORSet, value)._s

    def encode(self, store: Any) -> Any:
        return encode_dot_sets(store)

    def decode(self, obj: Any, where: str) -> Any:
        return decode_dot_sets(obj, where, as_atom)


def _identity(x: Any) -> Any:
    return x


class _MVOps(_Ops):
    def join(self, s1: Any, c1: CausalContext, s2: Any, c2: CausalContext) -> Any:
        return join_dot_fun(s1, c1, s2, c2, _pick)

    def dots(self, store: Any) -> Iterator[Dot]:
        return iter(store)

    def view(self, store: Any, cc: CausalContext) -> Crdt:
        return MVRegister._raw(store, cc)

    def store_of(self, value: Crdt) -> Any:
        return cast(MVRegister, value)._s

    def encode(self, store: Any) -> Any:
        return encode_dot_fun(store, _identity)

    def decode(self, obj: Any, where: str) -> Any:
        return decode_dot_fun(obj, where, _identity)

    def same(self, a: Any, b: Any) -> bool:
        return encode_mv(a) == encode_mv(b)


class _FragmentOps(_Ops):
    causal = False

    def __init__(self, cls: type[Crdt]) -> None:
        self.cls = cls

    def join(self, s1: Any, c1: CausalContext, s2: Any, c2: CausalContext) -> Any:
        return join_dot_fun(s1, c1, s2, c2, _merge_values)

    def dots(self, store: Any) -> Iterator[Dot]:
        return iter(store)

    def view(self, store: Any, cc: CausalContext) -> Crdt:
        out = self.cls()
        for d in sorted(store):
            out = out.merge(store[d])
        return out

    def encode(self, store: Any) -> Any:
        if len(store) == 1:  # one replica's fragment (the common case): nothing to sort
            for (r, n), value in store.items():
                return [[[r, n], value.to_obj()]]
        return encode_dot_fun(store, _to_obj)

    def decode(self, obj: Any, where: str) -> Any:
        return decode_dot_fun(obj, where, self.cls.from_obj)


class _MapOps(_Ops):
    def __init__(self, spec: tuple[str, ...]) -> None:
        self.spec = spec
        self.inner = _ops(spec)

    def join(self, s1: Any, c1: CausalContext, s2: Any, c2: CausalContext) -> Any:
        return _join_map(self.inner, s1, c1, s2, c2)

    def dots(self, store: Any) -> Iterator[Dot]:
        for inner in store.values():
            yield from self.inner.dots(inner)

    def view(self, store: Any, cc: CausalContext) -> Crdt:
        return ORMap._raw(self.spec, self.inner, store, cc)

    def store_of(self, value: Crdt) -> Any:
        return cast(ORMap[Any], value)._s

    def encode(self, store: Any) -> Any:
        encode = self.inner.encode
        return [[k, encode(store[k])] for k in _sorted_atoms(store)]

    def decode(self, obj: Any, where: str) -> Any:
        return _decode_entries(self.inner, obj, where)

    def same(self, a: Any, b: Any) -> bool:
        return a.keys() == b.keys() and all(self.inner.same(a[k], b[k]) for k in a)


def _sorted_atoms(keys: Collection[Atom]) -> list[Atom]:
    """``keys`` in the canonical order of atoms (``atom_key``): keys of one type (the common
    case) sort by their natural order, which is the same; mixed types by ``atom_key``."""
    try:
        return sorted(keys)
    except TypeError:  # an int beside a str, a str beside bytes
        return sorted(keys, key=atom_key)


def _merge_values(a: Crdt, b: Crdt) -> Crdt:
    return a.merge(b)


def _to_obj(value: Crdt) -> Any:
    return value.to_obj()


def _ops(spec: tuple[str, ...]) -> _Ops:
    head = spec[0]
    if head == "ormap":
        return _MapOps(spec[1:])
    if head == "orset":
        return _SetOps()
    if head == "mvreg":
        return _MVOps()
    return _FragmentOps(FRAGMENT_TYPES[head])


def _join_map(inner: _Ops, s1: Mapping[Any, Any], c1: CausalContext, s2: Mapping[Any, Any], c2: CausalContext) -> Any:
    out: dict[Any, Any] = {}
    empty: dict[Any, Any] = {}
    few1, few2 = c1.few(), c2.few()
    for k, v1 in s1.items():
        v2 = s2.get(k)
        if v2 is None and few2 is not None and few2.isdisjoint(inner.dots(v1)):
            out[k] = v1  # untouched by a small context (a delta): no nested join
            continue
        joined = inner.join(v1, c1, empty if v2 is None else v2, c2)
        if joined:
            out[k] = joined
    for k, v2 in s2.items():
        if k not in s1:
            if few1 is not None and few1.isdisjoint(inner.dots(v2)):
                out[k] = v2
                continue
            joined = inner.join(empty, c1, v2, c2)
            if joined:
                out[k] = joined
    return out


def _decode_entries(inner: _Ops, obj: Any, where: str) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    seen: set[Atom] = set()
    for item in as_list(obj, where):
        pair = as_list(item, where, 2)
        key = pair[0]
        if type(key) is not str:  # str keys (the common case) need no other check
            key = as_atom(key, where)
        if key in seen:
            raise fail(f"key {key!r:.40} appears twice", where)
        seen.add(key)
        store = inner.decode(pair[1], where)
        if store:
            out[key] = store
    return out


def _spec_of(value_type: type[Crdt] | ORMap[Any]) -> tuple[str, ...]:
    if isinstance(value_type, ORMap):
        return ("ormap", *value_type._vt)
    if isinstance(value_type, type) and value_type is not ORMap:
        tag = getattr(value_type, "TAG", None)
        if tag in FRAGMENT_TYPES or tag in ("orset", "mvreg"):
            return (tag,)
    raise CrdtTypeError(
        "an ORMap's values are GCounter, PNCounter, GSet, LWWRegister, ORSet, MVRegister, "
        f"or ORMaps given as a template such as ORMap(ORSet); got {value_type!r}"
    )


class ORMap(Crdt, Generic[V]):
    """A map from atoms (str, int or bytes) to CRDT values of one type.

    ``ORMap(GCounter)``, ``ORMap(ORSet)``, ``ORMap(ORMap(LWWRegister))`` (a map of maps: give an
    empty ORMap as the value template). Update a key with a function of its current value
    that returns that value's mutation::

        m, delta = m.update("node-1", "cart-7", lambda v: v.add("node-1", "apple"))
        m, delta = m.remove("cart-7")

    Wire: ``{"t": "ormap", "v": 1, "vt": [tag, ...], "e": [[key, store], ...], "cc": context}``.
    """

    TAG = "ormap"
    CAUSAL = True
    __slots__ = ("_cc", "_idx", "_ops", "_s", "_vt")

    _vt: tuple[str, ...]
    _ops: _Ops
    _s: Mapping[Any, Any]
    _cc: CausalContext
    _idx: Mapping[Dot, Any] | None  # dot → key, built when a small merge needs it

    @overload
    def __init__(self: ORMap[V], value_type: type[V]) -> None: ...
    @overload
    def __init__(self: ORMap[ORMap[Any]], value_type: ORMap[Any]) -> None: ...
    def __init__(self, value_type: type[V] | ORMap[Any]) -> None:
        self._vt = _spec_of(value_type)
        if len(self._vt) > MAX_NESTING:
            raise CrdtTypeError(f"at most {MAX_NESTING - 1} levels of ORMap inside ORMap")
        self._ops = _ops(self._vt)
        self._s = {}
        self._cc = CausalContext()
        self._idx = None

    @classmethod
    def _raw(
        cls,
        vt: tuple[str, ...],
        ops: _Ops,
        s: Mapping[Any, Any],
        cc: CausalContext,
        idx: Mapping[Dot, Any] | None = None,
    ) -> ORMap[Any]:
        new = object.__new__(cls)
        new._vt = vt
        new._ops = ops
        new._s = s
        new._cc = cc
        new._idx = idx
        return new

    def _new(self, s: Mapping[Any, Any], cc: CausalContext, idx: Mapping[Dot, Any] | None = None) -> ORMap[V]:
        return cast(ORMap[V], ORMap._raw(self._vt, self._ops, s, cc, idx))

    @property
    def value_spec(self) -> tuple[str, ...]:
        """The value type as tags, e.g. ``("ormap", "orset")`` for a map of maps of sets."""
        return self._vt

    @property
    def value(self) -> dict[Atom, Any]:
        """Plain values: ``{key: value.value}``."""
        return {k: self._ops.view(s, self._cc).value for k, s in self._s.items()}

    @property
    def context(self) -> CausalContext:
        return self._cc

    def get(self, key: Atom) -> V | None:
        """The CRDT value of ``key`` (``None`` if absent)."""
        store = self._s.get(key)
        return None if store is None else cast(V, self._ops.view(store, self._cc))

    def __getitem__(self, key: Atom) -> V:
        store = self._s[key]
        return cast(V, self._ops.view(store, self._cc))

    def __contains__(self, key: object) -> bool:
        return key in self._s and type(key) in (str, int, bytes)

    def __iter__(self) -> Iterator[Atom]:
        return iter(self._s)

    def __len__(self) -> int:
        return len(self._s)

    def keys(self) -> Iterable[Atom]:
        keys: Iterable[Atom] = self._s.keys()
        return keys

    def update(self, replica: str, key: Atom, fn: Callable[[V], Mutation[V]]) -> Mutation[ORMap[V]]:
        """Mutate the value of ``key`` as ``replica`` (this replica's own id).

        ``fn`` gets the current value (an empty one if the key is absent) and returns the
        :class:`Mutation` of one of its mutators; nested mutators take ``replica`` too.
        """
        check_replica(replica)
        k = check_atom(key)
        ops = self._ops
        current = self._s.get(k)
        if ops.causal:
            view = ops.view(current if current is not None else {}, self._cc)
            delta_value = self._check(fn(cast(V, view)), view).delta
            dstore = ops.store_of(delta_value)
            dcc = delta_value._cc  # type: ignore[attr-defined]
            delta = self._new({k: dstore} if dstore else {}, dcc)
            joined = ops.join(current if current is not None else {}, self._cc, dstore, dcc)
            cc = self._cc.union(dcc)
        else:
            frags: dict[Dot, Crdt] = current or {}
            view = ops.view(frags, self._cc)
            delta_value = self._check(fn(cast(V, view)), view).delta
            own = [d for d in frags if d[0] == replica]
            mine = cast(_FragmentOps, ops).cls()
            for d in own:
                mine = mine.merge(frags[d])
            dot = self._cc.next_dot(replica)
            delta = self._new({k: {dot: mine.merge(delta_value)}}, CausalContext.of([*own, dot]))
            joined = {d: v for d, v in frags.items() if d[0] != replica}
            joined[dot] = mine.merge(delta_value)
            cc = self._cc.add((dot,))
        s = evolve(self._s, {k: joined if joined else DELETE})
        idx = reindex(self._idx, k, current, joined or None, ops.dots)
        return Mutation(self._new(s, cc, idx), delta)

    def _check(self, result: Any, view: Crdt) -> Mutation[V]:
        if not isinstance(result, tuple) or len(result) != 2 or type(result[1]) is not type(view):
            raise CrdtTypeError(
                f"an ORMap update function returns the Mutation of the {type(view).__name__} it is given, "
                f"got {result!r:.80}"
            )
        if isinstance(view, ORMap) and isinstance(result[1], ORMap) and result[1]._vt != view._vt:
            raise CrdtTypeError("an ORMap update function returned a map of another value type")
        return cast(Mutation[V], result)

    def remove(self, key: Atom) -> Mutation[ORMap[V]]:
        """Remove ``key`` as observed here (see the module docs for concurrent updates)."""
        k = check_atom(key)
        store = self._s.get(k)
        if store is None:
            return Mutation(self, self._new({}, CausalContext()))
        rest = evolve(self._s, {k: DELETE})
        idx = reindex(self._idx, k, store, None, self._ops.dots)
        return Mutation(self._new(rest, self._cc, idx), self._new({}, CausalContext.of(self._ops.dots(store))))

    def merge(self, other: ORMap[V]) -> ORMap[V]:
        self._same(other)
        if other._vt != self._vt:
            raise CrdtTypeError(f"cannot merge an ORMap of {self._vt} with one of {other._vt}")
        if other is self:
            return self
        cc = self._cc.union(other._cc)
        big, small = (self, other) if len(self._s) >= len(other._s) else (other, self)
        few = small._cc.few()
        if few is None:
            return self._new(_join_map(self._ops, self._s, self._cc, other._s, other._cc), cc)
        ops, c1, c2 = self._ops, big._cc, small._cc
        if big._idx is None:
            big._idx = build_index(big._s, ops.dots)

        def join_one(v1: Any, v2: Any) -> Any:
            return ops.join({} if v1 is None else v1, c1, {} if v2 is None else v2, c2)

        s, idx = join_small(big._s, big._idx, small._s, few, join_one, ops.dots)
        return self._new(s, cc, idx)

    def delta_for(self, context: CausalContext) -> ORMap[V]:
        """What a replica whose causal context is ``context`` lacks of this map: the keys
        holding an update it has not seen, and this map's context less the dots of the keys
        left out. Merging it there gives what merging the whole map gives (removals
        included); the whole map when no key would be left out or the context left would
        not be compact."""
        part = missing_for(self._s, self._cc, context, self._ops.dots)
        return self if part is None else self._new(*part)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return False
        o = cast(ORMap[Any], other)
        if self._vt != o._vt or self._cc != o._cc or self._s.keys() != o._s.keys():
            return False
        return all(self._ops.same(v, o._s[k]) for k, v in self._s.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ORMap[{'/'.join(self._vt)}]({self.value!r})"

    def to_obj(self) -> dict[str, Any]:
        encode, s = self._ops.encode, self._s
        entries = [[k, encode(s[k])] for k in _sorted_atoms(s)]
        return {"t": self.TAG, "v": 1, "vt": list(self._vt), "e": entries, "cc": self._cc.to_obj()}

    @classmethod
    def _from_obj(cls, obj: Any, depth: int) -> ORMap[Any]:
        top = envelope(obj, cls.TAG)
        vt = tuple(as_list(field(top, "vt", "ormap"), "ormap.vt"))
        if not 1 <= len(vt) <= MAX_NESTING:
            raise fail(f"value type must have 1..{MAX_NESTING} tags", "ormap.vt")
        if any(t != "ormap" for t in vt[:-1]) or vt[-1] == "ormap":
            raise fail(f"value type {list(vt)!r} is not ormap…, then one leaf type", "ormap.vt")
        leaf = crdt_class(vt[-1], "ormap.vt")
        if leaf.TAG not in FRAGMENT_TYPES and leaf.TAG not in ("orset", "mvreg"):
            raise fail(f"{leaf.TAG!r} cannot be a map value", "ormap.vt")
        ops = _ops(cast(tuple[str, ...], vt))
        cc = CausalContext.from_obj(field(top, "cc", "ormap"), "ormap.cc")
        store = _decode_entries(ops, field(top, "e", "ormap"), "ormap.e")
        dots_covered((d for s in store.values() for d in ops.dots(s)), cc, "ormap.e")
        return cls._raw(cast(tuple[str, ...], vt), ops, store, cc)
