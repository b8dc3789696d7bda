"""Errors of the CRDT library, inside the natsagents tree::

NatsAgentsError
├── ConfigurationError (ValueError)
│   └── CrdtTypeError (TypeError)      merging different CRDT types, a bad element or replica id
├── ProtocolError
│   └── CrdtDecodeError (ValueError)   a wire value that is not a valid CRDT encoding
└── CrdtError                          a CRDT or clock cannot do what was asked
    └── ClockDriftError (ValueError)   a remote HLC timestamp too far ahead of our clock
"""

from __future__ import annotations

from ..errors import ConfigurationError, NatsAgentsError, ProtocolError

__all__ = ["ClockDriftError", "CrdtDecodeError", "CrdtError", "CrdtTypeError"]


class CrdtError(NatsAgentsError):
    """A CRDT, clock or version vector cannot do what was asked."""


class CrdtTypeError(ConfigurationError, TypeError):
    """Misuse: merging values of different CRDT types, an element or replica id of the wrong
    type, a mutation function that returned something else than a mutation of its value."""


class CrdtDecodeError(ProtocolError, ValueError):
    """Bytes or a decoded msgpack value that are not a valid CRDT encoding
    (``docs/protocol.md`` §17). ``where`` names the part that is wrong."""

    def __init__(self, message: str, *, where: str = "") -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


class ClockDriftError(CrdtError, ValueError):
    """A remote hybrid-logical-clock timestamp is further ahead of the local physical clock
    than ``max_drift`` allows; it is refused and the local clock is unchanged."""

    def __init__(self, message: str, *, remote_ms: int, local_ms: int, max_drift_ms: int) -> None:
        super().__init__(message)
        self.remote_ms = remote_ms
        self.local_ms = local_ms
        self.max_drift_ms = max_drift_ms
