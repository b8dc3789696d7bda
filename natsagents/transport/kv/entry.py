"""KV values: keys, one revision of a key, and how a stored message reads as one.

Shared by reads (``bucket.py``) and watches (``watch.py``): a stored message is a put, a
delete or a purge (``KV-Operation``), and the server's TTL markers (``Nats-Marker-Reason``)
count as deletes or purges, so expired keys read as absent.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ...errors import ConfigurationError

__all__ = ["Entry", "Operation", "operation_of", "parse_time", "validate_key"]

Operation = Literal["put", "delete", "purge"]

_KEY_RE = re.compile(r"[-/_=.a-zA-Z0-9]+")


@dataclass(frozen=True, slots=True)
class Entry:
    """One revision of a key.

    Attributes:
        key: the key.
        value: the value (``b""`` for deletes and purges).
        revision: the stream sequence of this revision; pass it to :meth:`Bucket.update`.
        created: when the server stored it (Unix seconds), when known.
        operation: ``"put"``, or ``"delete"`` / ``"purge"`` (only seen in watches).
    """

    key: str
    value: bytes
    revision: int
    created: float | None
    operation: Operation = "put"


def validate_key(key: object) -> str:
    """Return ``key`` if it is a valid KV key.

    Raises:
        ConfigurationError: not a string of ``[-/_=.a-zA-Z0-9]``, or it starts or ends with
            ``.``, or has an empty token (``a..b``).
    """
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or key[0] == "." or key[-1] == "." or ".." in key:
        raise ConfigurationError(f"invalid KV key {key!r}: use [-/_=.a-zA-Z0-9], no leading, trailing or double '.'")
    return key


def operation_of(headers: Mapping[str, str]) -> Operation:
    """The KV operation a stored message stands for; server TTL markers count as purges/deletes."""
    op = headers.get("KV-Operation")
    if op == "DEL":
        return "delete"
    if op == "PURGE":
        return "purge"
    reason = headers.get("Nats-Marker-Reason")
    if reason is not None:
        return "delete" if reason == "Remove" else "purge"
    return "put"


def parse_time(text: str | None) -> float | None:
    """RFC 3339 with nanoseconds (``2026-01-02T03:04:05.123456789Z``) → Unix seconds."""
    if not text:
        return None
    try:
        base, _, rest = text.partition(".")
        frac = rest.rstrip("Z") if rest else ""
        stamp = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.UTC).timestamp()
        return stamp + (int(frac) / 10 ** len(frac) if frac.isdigit() else 0.0)
    except ValueError:
        return None
