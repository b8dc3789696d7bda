"""Hybrid logical clocks (Kulkarni et al., 2014): timestamps that follow physical time,
never go backwards, and order causally related events even when wall clocks disagree.

A :class:`Timestamp` is ``(wall_ms, logical, replica)``, ordered as that tuple: the
replica id breaks ties between replicas deterministically, so every node orders the same
timestamps the same way. Never order writes by a bare wall clock; take ``HLC.now()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ._wire import INT64_MAX, as_list, as_replica, as_uint, check_replica, decode_bytes, encode, fail
from .errors import ClockDriftError, CrdtError, CrdtTypeError

__all__ = ["DEFAULT_MAX_DRIFT", "HLC", "Timestamp"]

#: Default bound (seconds) on how far a remote timestamp may be ahead of our clock.
DEFAULT_MAX_DRIFT: Final = 60.0
#: Largest logical counter; reached only if the wall clock stalls for ~4 billion events.
MAX_LOGICAL: Final = 2**32 - 1


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, order=True, slots=True)
class Timestamp:
    """A hybrid-logical-clock timestamp, totally ordered by ``(wall, logical, replica)``.

    Wire form (protocol §17.2): the msgpack array ``[wall, logical, replica]``.
    """

    wall: int
    logical: int
    replica: str

    def __post_init__(self) -> None:
        if type(self.wall) is not int or not 0 <= self.wall <= INT64_MAX:
            raise CrdtTypeError(f"wall must be an int of 0..2^63-1 ms, got {self.wall!r}")
        if type(self.logical) is not int or not 0 <= self.logical <= MAX_LOGICAL:
            raise CrdtTypeError(f"logical must be an int of 0..2^32-1, got {self.logical!r}")
        check_replica(self.replica)

    def to_obj(self) -> list[Any]:
        return [self.wall, self.logical, self.replica]

    @classmethod
    def from_obj(cls, obj: Any, where: str = "timestamp") -> Timestamp:
        items = as_list(obj, where, 3)
        return cls(
            as_uint(items[0], where, high=INT64_MAX),
            as_uint(items[1], where, high=MAX_LOGICAL),
            as_replica(items[2], where),
        )

    def to_wire(self) -> bytes:
        return encode(self.to_obj())

    @classmethod
    def from_wire(cls, data: bytes) -> Timestamp:
        return cls.from_obj(decode_bytes(data))

    def __str__(self) -> str:
        """Text form for headers and logs: ``<wall>:<logical>:<replica>``."""
        return f"{self.wall}:{self.logical}:{self.replica}"

    @classmethod
    def parse(cls, text: str) -> Timestamp:
        """The inverse of ``str()``; raises :class:`CrdtDecodeError` on anything else."""
        parts = text.split(":", 2) if isinstance(text, str) else []
        numeric = all(p.isascii() and p.isdigit() and len(p) <= 20 for p in parts[:2])
        if len(parts) != 3 or not numeric:
            raise fail(f"not a timestamp: {text!r:.80}", "timestamp")
        return cls.from_obj([int(parts[0]), int(parts[1]), parts[2]])


class HLC:
    """A hybrid logical clock owned by one replica. Thread-safe.

    Args:
        replica: this replica's id (node id or session id), the tiebreak of its timestamps.
        max_drift: seconds a remote timestamp may be ahead of our physical clock before
            :meth:`update` refuses it with :class:`ClockDriftError` (a peer with a broken
            clock must not drag every clock of the mesh into the future).
        clock: the physical clock in Unix ms (tests pass a fake).
    """

    def __init__(
        self,
        replica: str,
        *,
        max_drift: float = DEFAULT_MAX_DRIFT,
        clock: Callable[[], int] = _wall_ms,
    ) -> None:
        self.replica = check_replica(replica)
        if not max_drift >= 0:
            raise CrdtTypeError(f"max_drift must be >= 0 seconds, got {max_drift!r}")
        self.max_drift_ms = int(max_drift * 1000)
        self._clock = clock
        self._wall = 0
        self._logical = 0
        self._lock = threading.Lock()

    @property
    def last(self) -> Timestamp:
        """The last timestamp issued or observed (``(0, 0, replica)`` before any)."""
        with self._lock:
            return Timestamp(self._wall, self._logical, self.replica)

    def _issue(self, wall: int, logical: int) -> Timestamp:
        if logical > MAX_LOGICAL:
            raise CrdtError("hybrid logical clock: logical counter exhausted (wall clock stalled)")
        self._wall, self._logical = wall, logical
        return Timestamp(wall, logical, self.replica)

    def now(self) -> Timestamp:
        """A timestamp for a local event (a write): greater than every timestamp issued or
        observed before, whatever the wall clock did (it may go backwards)."""
        with self._lock:
            physical = self._clock()
            if physical > self._wall:
                return self._issue(physical, 0)
            return self._issue(self._wall, self._logical + 1)

    def update(self, remote: Timestamp) -> Timestamp:
        """Observe a timestamp received from another replica and return one for the receive
        event, greater than both ``remote`` and everything before.

        Raises:
            ClockDriftError: ``remote.wall`` is more than ``max_drift`` ahead of our physical
                clock; the clock is unchanged.
        """
        if not isinstance(remote, Timestamp):
            raise CrdtTypeError(f"expected a Timestamp, got {type(remote).__name__}")
        with self._lock:
            physical = self._clock()
            if remote.wall - physical > self.max_drift_ms:
                raise ClockDriftError(
                    f"remote timestamp {remote} is {remote.wall - physical} ms ahead of the local clock "
                    f"(max drift {self.max_drift_ms} ms)",
                    remote_ms=remote.wall,
                    local_ms=physical,
                    max_drift_ms=self.max_drift_ms,
                )
            wall = max(self._wall, remote.wall, physical)
            if wall == self._wall and wall == remote.wall:
                logical = max(self._logical, remote.logical) + 1
            elif wall == self._wall:
                logical = self._logical + 1
            elif wall == remote.wall:
                logical = remote.logical + 1
            else:
                logical = 0
            return self._issue(wall, logical)
