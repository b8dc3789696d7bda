"""msgpack encoding of bodies (protocol v1, "Bodies")."""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Any

import msgpack

__all__ = ["MAX_DEPTH", "MAX_OBJECTS", "decode", "encode"]


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if isinstance(obj, datetime.datetime):
        raise TypeError("cannot encode a naive datetime: give it a timezone")
    if isinstance(obj, int):
        raise ValueError(f"integer {obj} is outside msgpack's 64-bit range")
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


_packer_opts: dict[str, Any] = {"use_bin_type": True, "default": _default, "datetime": True}


def encode(value: Any) -> bytes:
    """Encode a value as msgpack.

    Dataclasses become maps, enums their value, sets arrays, timezone-aware datetimes
    the msgpack timestamp extension (-1).

    Raises:
        TypeError: the value (or something inside it) cannot be encoded.
        ValueError: an integer is out of msgpack's range.
    """
    try:
        return msgpack.packb(value, **_packer_opts)  # type: ignore[no-any-return]
    except OverflowError as exc:
        raise ValueError(str(exc)) from exc


#: Most objects a body may decode to: each array and map counts one, each array item one
#: more and each map entry two. Half the default ``max_payload`` (1 MiB), and ~36 MiB of the
#: costliest objects (empty maps). A body of up to ``MAX_OBJECTS // 2`` bytes cannot hold
#: more and is decoded without counting.
MAX_OBJECTS = 512 * 1024
#: Deepest nesting a body may have (the fixed stack of msgpack's C unpacker).
MAX_DEPTH = 1024

# Every object takes at least one byte of the body and is counted at most twice (once as a
# container, once as an item), so a body this short is decoded without counting.
_SHORT_BODY = MAX_OBJECTS // 2

_unpackb = msgpack.unpackb


class _TooManyObjects(ValueError):
    pass


def decode(data: bytes, max_objects: int | None = MAX_OBJECTS) -> Any:
    """Decode one msgpack value; an empty body decodes to ``None``.

    Args:
        data: the body.
        max_objects: most objects a body longer than ``MAX_OBJECTS // 2`` bytes may decode
            to (see :data:`MAX_OBJECTS`; a shorter body cannot exceed ``MAX_OBJECTS``).
            ``None``: no limit, for the SDK's own stored state, never for a peer's body.

    Raises:
        ValueError: malformed msgpack, trailing bytes, an extension type other than
            the timestamp (-1), which decodes to a UTC ``datetime``, more than
            ``max_objects`` objects, or nesting deeper than :data:`MAX_DEPTH` levels.
    """
    if not data:
        return None
    try:
        if len(data) <= _SHORT_BODY:  # the hot path: one check
            return _unpackb(data, strict_map_key=False, timestamp=3, ext_hook=_reject_ext)
        if max_objects is None or len(data) <= max_objects // 2:
            return _unpackb(data, strict_map_key=False, timestamp=3, ext_hook=_reject_ext)
        return _decode_counted(data, max_objects)
    except _TooManyObjects:
        raise
    except (msgpack.StackError, RecursionError):  # RecursionError: msgpack's pure-Python fallback
        raise ValueError(f"msgpack body nested deeper than {MAX_DEPTH} levels") from None
    except (msgpack.ExtraData, msgpack.FormatError, ValueError, TypeError) as exc:
        raise ValueError(f"malformed msgpack body: {exc}") from exc
    except Exception as exc:  # msgpack raises a few other types on garbage input
        raise ValueError(f"malformed msgpack body: {exc!r}") from exc


def _decode_counted(data: bytes, max_objects: int) -> Any:
    """:func:`decode` of a long body. The hooks count each array and map as it completes
    (with its items), and no single one may be longer than the limit, so decoding stops near
    the limit. Not counted yet at any moment: the items of the arrays and maps still open;
    there are fewer of them than bytes in the body."""
    left = max_objects

    def on_list(items: list[Any]) -> list[Any]:
        nonlocal left
        left -= 1 + len(items)
        if left < 0:
            raise _TooManyObjects(f"msgpack body holds more than {max_objects} objects")
        return items

    def on_map(entries: dict[Any, Any]) -> dict[Any, Any]:
        nonlocal left
        left -= 1 + 2 * len(entries)
        if left < 0:
            raise _TooManyObjects(f"msgpack body holds more than {max_objects} objects")
        return entries

    try:
        return _unpackb(
            data,
            strict_map_key=False,
            timestamp=3,
            ext_hook=_reject_ext,
            list_hook=on_list,
            object_hook=on_map,
            max_array_len=max_objects,
            max_map_len=max_objects // 2,
        )
    except ValueError as exc:
        if "exceeds max_" in str(exc):  # msgpack: one array or map announces more items than that
            raise _TooManyObjects(f"msgpack body holds more than {max_objects} objects") from None
        raise


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")
