"""Validation helpers shared by the CRDT codecs (protocol §17). Every decode goes through
these: a value of the wrong msgpack type or out of range raises :class:`CrdtDecodeError`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from ..wire import codec
from .errors import CrdtDecodeError, CrdtTypeError

#: Version of the CRDT encoding (the ``"v"`` key of every top-level object).
VERSION: Final = 1
#: Longest replica id, in characters.
MAX_REPLICA_CHARS: Final = 256
#: Largest counter, dot counter or HLC wall time on the wire (msgpack uint 64 / int 64).
UINT64_MAX: Final = 2**64 - 1
INT64_MAX: Final = 2**63 - 1
#: Most levels of ORMap inside ORMap.
MAX_NESTING: Final = 8

#: A set element or map key: str, int (not bool) or bytes.
Atom = str | int | bytes
Dot = tuple[str, int]


def fail(message: str, where: str) -> CrdtDecodeError:
    return CrdtDecodeError(message, where=where)


def decode_bytes(data: bytes | bytearray | memoryview) -> Any:
    """One bounded msgpack value (the codec's object and depth limits, protocol §5.4)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CrdtDecodeError(f"expected bytes, got {type(data).__name__}")
    if not data:
        raise CrdtDecodeError("empty body")
    try:
        return codec.decode(bytes(data))
    except ValueError as exc:
        raise CrdtDecodeError(str(exc)) from None


def encode(obj: Any) -> bytes:
    return codec.encode(obj)


def as_map(obj: Any, where: str) -> dict[Any, Any]:
    if not isinstance(obj, dict):
        raise fail(f"expected a map, got {type(obj).__name__}", where)
    return obj


def as_list(obj: Any, where: str, size: int | None = None) -> list[Any]:
    if not isinstance(obj, list):
        raise fail(f"expected an array, got {type(obj).__name__}", where)
    if size is not None and len(obj) != size:
        raise fail(f"expected an array of {size} items, got {len(obj)}", where)
    return obj


def as_uint(obj: Any, where: str, *, low: int = 0, high: int = UINT64_MAX) -> int:
    if type(obj) is not int:
        raise fail(f"expected an integer, got {type(obj).__name__}", where)
    if not low <= obj <= high:
        raise fail(f"integer {obj} outside {low}..{high}", where)
    return obj


def as_replica(obj: Any, where: str) -> str:
    if type(obj) is not str:
        raise fail(f"replica id must be a str, got {type(obj).__name__}", where)
    if not 0 < len(obj) <= MAX_REPLICA_CHARS:
        raise fail(f"replica id must have 1..{MAX_REPLICA_CHARS} characters", where)
    return obj


def as_atom(obj: Any, where: str) -> Atom:
    if type(obj) is int:
        if not -(2**63) <= obj <= UINT64_MAX:
            raise fail("integer out of msgpack range", where)
        return obj
    if type(obj) in (str, bytes):
        return obj  # type: ignore[no-any-return]
    raise fail(f"element must be str, int or bin, got {type(obj).__name__}", where)


def as_dot(obj: Any, where: str) -> Dot:
    pair = as_list(obj, where, 2)
    return as_replica(pair[0], where), as_uint(pair[1], where, low=1)


def envelope(obj: Any, tag: str) -> dict[Any, Any]:
    """The top-level map of a ``tag`` value, its ``t`` and ``v`` checked."""
    top = as_map(obj, tag)
    if top.get("t") != tag:
        raise fail(f"type tag {top.get('t')!r}, expected {tag!r}", tag)
    if top.get("v") != VERSION:
        raise fail(f"unsupported encoding version {top.get('v')!r}", tag)
    return top


def field(top: Mapping[Any, Any], key: str, where: str) -> Any:
    if key not in top:
        raise fail(f"missing key {key!r}", where)
    return top[key]


def unique(keys: Iterable[Any], where: str) -> None:
    seen: set[Any] = set()
    for key in keys:
        if key in seen:
            raise fail(f"{key!r} appears twice", where)
        seen.add(key)


# -- checks of arguments given by the program (misuse, not wire) -------------------------------


def check_replica(replica: Any) -> str:
    if type(replica) is not str or not 0 < len(replica) <= MAX_REPLICA_CHARS:
        raise CrdtTypeError(f"a replica id is a str of 1..{MAX_REPLICA_CHARS} characters, got {replica!r}")
    return replica


def check_atom(value: Any) -> Atom:
    if type(value) is int:
        if not -(2**63) <= value <= UINT64_MAX:
            raise CrdtTypeError(f"integer {value} is outside msgpack's range")
        return value
    if type(value) in (str, bytes):
        return value  # type: ignore[no-any-return]
    raise CrdtTypeError(f"set elements and map keys are str, int or bytes, got {type(value).__name__}")


def check_value(value: Any) -> bytes:
    """A register value must be msgpack-encodable (protocol §5.1); returns its encoding."""
    try:
        return codec.encode(value)
    except (TypeError, ValueError) as exc:
        raise CrdtTypeError(f"register value cannot be encoded: {exc}") from exc


_RANK = {int: 0, str: 1, bytes: 2}


def atom_key(value: Atom) -> tuple[int, Any]:
    """Canonical order of atoms: ints, then strs, then bytes, each in natural order."""
    return _RANK[type(value)], value
