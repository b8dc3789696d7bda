"""msgpack encoding of bodies (protocol v1, "Bodies")."""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Any

import msgpack

__all__ = ["decode", "encode"]


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


def decode(data: bytes) -> Any:
    """Decode one msgpack value; an empty body decodes to ``None``.

    Raises:
        ValueError: malformed msgpack, trailing bytes, or an extension type other than
            the timestamp (-1), which decodes to a UTC ``datetime``.
    """
    if not data:
        return None
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=3, ext_hook=_reject_ext)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise ValueError(f"malformed msgpack body: {exc}") from exc
    except Exception as exc:  # msgpack raises a few other types on garbage input
        raise ValueError(f"malformed msgpack body: {exc!r}") from exc


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")
