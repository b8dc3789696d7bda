"""Validation of registry records read from KV: nothing read is trusted.

Anyone with write access to the control buckets can put any bytes under any key, so the
cluster layer reads every record through these checks (shape, types, ranges) and treats a
record that fails them as absent, with a rate-limited warning; it never raises into a watch
loop. The bounds:

* numbers are finite; counters (epochs, sequences, agent counts) are integers in
  ``[0, MAX_COUNTER]`` (2**53: honest counters never get near it, and every value stays
  exact as a float and encodable after ``+ 1``);
* node ids are ``[A-Za-z0-9_-]{1,64}`` and a record's own ids match the key it is stored
  under (a record cannot speak for another node or agent);
* lists (kinds, tags) hold at most :data:`MAX_ITEMS` strings; weights are within
  ``(0, MAX_WEIGHT]`` (what the hash ring accepts);
* durations a record claims for itself are not believed beyond a bound of the reader's
  own settings (see ``Membership``: a member's lease counts for at most
  :data:`MAX_LEASE_FACTOR` times the reader's lease), and a wall-clock timestamp further
  than :data:`CLOCK_SKEW` in the future is not used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ..errors import NatsAgentsError
from ..observability.logging import warn_ignored
from .ring import DEFAULT_VNODES, MAX_VNODES_PER_NODE

__all__ = [
    "CLOCK_SKEW",
    "MAX_COUNTER",
    "MAX_ITEMS",
    "MAX_LEASE_FACTOR",
    "MAX_WEIGHT",
    "Malformed",
    "checked",
    "counter",
    "flag",
    "garbage",
    "mapping",
    "node_id",
    "number",
    "string",
    "strings",
]

#: Largest epoch, sequence or count a record may hold.
MAX_COUNTER = 2**53
#: Most kinds or tags one record may list.
MAX_ITEMS = 1024
#: Largest node weight (the hash ring's limit on virtual nodes per node).
MAX_WEIGHT = MAX_VNODES_PER_NODE / DEFAULT_VNODES
#: A member's claimed lease counts for at most this many times the reader's own lease.
MAX_LEASE_FACTOR = 2.0
#: Seconds two machines' wall clocks may differ; a timestamp further in the future is not used.
CLOCK_SKEW = 5.0
_NODE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Malformed(ValueError):
    """A record read from KV fails validation (it is ignored, never trusted)."""


#: Log that a record is ignored (a warning at most once a minute per key).
garbage = warn_ignored


def mapping(value: object, what: str) -> Mapping[str, Any]:
    """``value`` if it is a map with string keys. Raises: Malformed."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise Malformed(f"{what} must be a map with string keys")
    return value


def string(value: object, what: str, *, max_len: int = 256) -> str:
    """``value`` if it is a string of at most ``max_len`` characters. Raises: Malformed."""
    if not isinstance(value, str) or len(value) > max_len:
        raise Malformed(f"{what} must be a string of at most {max_len} characters")
    return value


def strings(value: object, what: str) -> tuple[str, ...]:
    """A list of at most :data:`MAX_ITEMS` non-empty strings. Raises: Malformed."""
    if not isinstance(value, list | tuple) or len(value) > MAX_ITEMS:
        raise Malformed(f"{what} must be a list of at most {MAX_ITEMS} strings")
    if not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value):
        raise Malformed(f"{what} must hold non-empty strings")
    return tuple(value)


def number(value: object, what: str, *, lo: float = 0.0, hi: float = math.inf, open_lo: bool = False) -> float:
    """A finite int or float within ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``). Raises: Malformed."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Malformed(f"{what} must be a number")
    result = float(value)
    if not math.isfinite(result) or result > hi or result < lo or (open_lo and result == lo):
        raise Malformed(f"{what} out of range: {value!r}")
    return result


def counter(value: object, what: str, *, lo: int = 0) -> int:
    """An integer within ``[lo, MAX_COUNTER]``. Raises: Malformed."""
    if type(value) is not int or not lo <= value <= MAX_COUNTER:
        raise Malformed(f"{what} must be an integer within [{lo}, 2**53]")
    return value


def flag(value: object, what: str) -> bool:
    """A bool. Raises: Malformed."""
    if not isinstance(value, bool):
        raise Malformed(f"{what} must be a bool")
    return value


def node_id(value: object, what: str = "node") -> str:
    """A node id: 1-64 characters ``[A-Za-z0-9_-]``. Raises: Malformed."""
    if not isinstance(value, str) or not _NODE_ID_RE.fullmatch(value):
        raise Malformed(f"{what} must be a node id ([A-Za-z0-9_-]{{1,64}})")
    return value


def checked(what: str, check: Any, *args: Any) -> Any:
    """``check(*args)``, with any validation error (ours, ``ConfigurationError``, a
    ``TypeError`` from a malformed shape) raised as :class:`Malformed`."""
    try:
        return check(*args)
    except Malformed:
        raise
    except (NatsAgentsError, TypeError, ValueError, ArithmeticError) as exc:
        raise Malformed(f"{what}: {exc}") from None
