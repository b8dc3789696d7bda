"""msgpack encoding of bodies (protocol v1, "Bodies")."""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Any

import msgpack

from . import scan

__all__ = ["LONG_BODY", "MAX_DEPTH", "MAX_OBJECTS", "OBJECT_BYTES", "SHORT_BODY", "decode", "decoded_size", "encode"]


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
#: more and each map entry two. Half the default ``max_payload`` (1 MiB); a body counts at
#: most twice its length, so a body of up to ``MAX_OBJECTS // 2`` bytes cannot exceed it.
MAX_OBJECTS = 512 * 1024
#: Deepest nesting a body may have (the fixed stack of msgpack's C unpacker).
MAX_DEPTH = scan.MAX_DEPTH
#: Bodies up to this long go straight to msgpack's unpacker. Its only cost beyond the
#: objects a body holds (at most one per byte) is the item slots of arrays announced and not
#: filled (8 bytes each, at most as many as the body is long, in at most a third as many
#: arrays as the body is long): at most ~(8/3)·n² bytes, 170 KiB for 256 bytes.
SHORT_BODY = 256
#: Bodies longer than ``SHORT_BODY`` and up to this long are first proved complete by
#: msgpack's own skip (C, builds nothing): then it allocates at most one item slot per object
#: the body holds, and the body cannot hold more objects than ``MAX_OBJECTS``. A longer body
#: is scanned (``wire.scan``): complete, counted and not too deep before anything is built.
LONG_BODY = 64 * 1024
#: Estimated bytes of one decoded object, as counted (``decoded_size``): an empty map takes
#: 64 + 8 (its slot) and counts 2; a 2-character string takes 56 + 8 and counts 1.
OBJECT_BYTES = 64

_unpackb = msgpack.unpackb
_Unpacker = msgpack.Unpacker


def decode(data: bytes, max_objects: int | None = MAX_OBJECTS) -> Any:
    """Decode one msgpack value; an empty body decodes to ``None``.

    Args:
        data: the body.
        max_objects: most objects it may decode to (see :data:`MAX_OBJECTS`).
            ``None``: no limit, for the SDK's own stored state, never for a peer's body
            (its structure is still checked before it is built).

    Raises:
        ValueError: malformed msgpack (it ends inside a value, or bytes follow it), an
            extension type other than the timestamp (-1), which decodes to a UTC
            ``datetime``, more than ``max_objects`` objects, or nesting deeper than
            :data:`MAX_DEPTH` levels.
    """
    if not data:
        return None
    if len(data) <= SHORT_BODY:  # the hot path: one check
        try:
            return _unpackb(data, strict_map_key=False, timestamp=3, ext_hook=_reject_ext)
        except Exception as exc:
            raise _error(exc) from None
    return decoded_size(data, max_objects)[0]


def decoded_size(data: bytes, max_objects: int | None = MAX_OBJECTS) -> tuple[Any, int]:
    """:func:`decode` ``data`` and estimate the bytes its value takes: for a body longer than
    :data:`LONG_BODY` (scanned and counted anyway) its length + :data:`OBJECT_BYTES` per
    object counted; 0 for a shorter one (not counted: at most ~7 MiB) and for
    ``max_objects=None``.

    Raises:
        ValueError: as :func:`decode`.
    """
    if not data:
        return None, 0
    n = len(data)
    try:
        if n <= SHORT_BODY:
            return _unpackb(data, strict_map_key=False, timestamp=3, ext_hook=_reject_ext), 0
        size = 0
        if max_objects is None or (n <= LONG_BODY and 2 * n <= max_objects):
            _check_complete(data)  # it cannot hold too many objects
        else:
            size = n + OBJECT_BYTES * scan.scan(data, max_objects)
        return _unpackb(data, strict_map_key=False, timestamp=3, ext_hook=_reject_ext), size
    except Exception as exc:
        raise _error(exc) from None


def _check_complete(data: bytes) -> None:
    """Raise unless ``data`` is one complete msgpack value (msgpack's skip: C, builds
    nothing), nested at most :data:`MAX_DEPTH` levels."""
    unpacker = _Unpacker(max_buffer_size=len(data))
    unpacker.feed(data)
    unpacker.skip()  # OutOfData: it ends inside a value
    if unpacker.tell() != len(data):
        raise scan.BodyError(f"{len(data) - unpacker.tell()} bytes follow the msgpack value")


def _error(exc: Exception) -> ValueError:
    """The ``ValueError`` :func:`decode` raises for what decoding ``data`` raised."""
    if isinstance(exc, (scan.ObjectsError, scan.DepthError)):
        return exc
    if isinstance(exc, (msgpack.StackError, RecursionError)):  # RecursionError: the pure-Python fallback
        return scan.DepthError(f"msgpack body nested deeper than {MAX_DEPTH} levels")
    if isinstance(exc, msgpack.OutOfData):
        return ValueError("malformed msgpack body: it ends inside a value")
    if isinstance(exc, (ValueError, TypeError)):  # ExtraData and FormatError are ValueErrors
        return ValueError(f"malformed msgpack body: {exc}")
    return ValueError(f"malformed msgpack body: {exc!r}")  # msgpack raises a few other types on garbage


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")
