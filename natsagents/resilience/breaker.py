"""Circuit breakers per destination: fail fast while a destination keeps failing.

::

    closed ──(failure_threshold failures in a row)──▶ open ──(reset_timeout)──▶ half-open
      ▲                                                  ▲                         │
      └──────────────(a trial call succeeds)─────────────┼──(a trial call fails)───┘

While open, calls fail at once with :class:`~natsagents.CircuitOpen` (no message is
sent). Half-open lets ``half_open_calls`` trial calls through at a time. A destination is
an agent (``scope="agent"``) or a whole kind (``scope="kind"``). Only failures that say
the destination is in trouble count (``failure_codes``: no reply, ``unavailable``,
``overloaded``, ``at_capacity`` by default); a ``bad_request`` or ``handler_error`` is the
caller's or the handler's problem, not the destination's availability.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import AT_CAPACITY, OVERLOADED, TIMEOUT, UNAVAILABLE, CircuitOpen, ConfigurationError

__all__ = ["BreakerSettings", "Breakers", "CircuitState"]


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Circuit breaker configuration.

    Args:
        failure_threshold: consecutive counted failures that open the circuit.
        reset_timeout: seconds an open circuit fails fast before trying again.
        half_open_calls: trial calls allowed at once while half-open.
        scope: ``"agent"`` (one breaker per ``Kind/id``) or ``"kind"``.
        failure_codes: error codes that count as failures.
        max_destinations: breakers kept (least recently used dropped; a dropped one is closed).
    """

    failure_threshold: int = 5
    reset_timeout: float = 5.0
    half_open_calls: int = 1
    scope: str = "agent"
    failure_codes: frozenset[str] = field(default=frozenset({TIMEOUT, UNAVAILABLE, OVERLOADED, AT_CAPACITY}))
    max_destinations: int = 10_000

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "half_open_calls", "max_destinations"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, not {value!r}")
        if (
            isinstance(self.reset_timeout, bool)
            or not isinstance(self.reset_timeout, (int, float))
            or not self.reset_timeout > 0
        ):
            raise ConfigurationError(f"reset_timeout must be > 0, not {self.reset_timeout!r}")
        if self.scope not in ("agent", "kind"):
            raise ConfigurationError(f"scope must be 'agent' or 'kind', not {self.scope!r}")


class _Breaker:
    __slots__ = ("failures", "opened_at", "state", "trials")

    def __init__(self) -> None:
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.trials = 0


class Breakers:
    """The breakers of one mesh's calls.

    Args:
        settings: thresholds and scope.
        on_change: called ``(kind, destination, new state)`` on every transition (metrics).
    """

    def __init__(
        self, settings: BreakerSettings, on_change: Callable[[str, str, CircuitState], None] | None = None
    ) -> None:
        self.settings = settings
        self._on_change = on_change
        self._all: OrderedDict[str, _Breaker] = OrderedDict()

    def _key(self, kind: str, address: str) -> str:
        return kind if self.settings.scope == "kind" else address

    def state(self, kind: str, address: str) -> CircuitState:
        b = self._all.get(self._key(kind, address))
        return CircuitState.CLOSED if b is None else b.state

    def before(self, kind: str, address: str) -> None:
        """Admit a call or raise :class:`CircuitOpen`."""
        key = self._key(kind, address)
        b = self._all.get(key)
        if b is None or b.state is CircuitState.CLOSED:
            return
        if b.state is CircuitState.OPEN:
            left = b.opened_at + self.settings.reset_timeout - time.monotonic()
            if left > 0:
                raise CircuitOpen(
                    f"circuit to {key} is open after {b.failures} failures; next try in {left:.2f} s",
                    agent=address,
                    details={"destination": key, "retry_after": round(left, 3)},
                )
            self._set(kind, key, b, CircuitState.HALF_OPEN)
        if b.trials >= self.settings.half_open_calls:
            raise CircuitOpen(
                f"circuit to {key} is half-open and its trial calls are in flight",
                agent=address,
                details={"destination": key, "retry_after": 0.0},
            )
        b.trials += 1

    def after(self, kind: str, address: str, code: str | None) -> None:
        """Record the outcome of an admitted call (``code`` None: success)."""
        key = self._key(kind, address)
        failed = code is not None and code in self.settings.failure_codes
        b = self._all.get(key)
        if b is None:
            if not failed:
                return
            b = self._all[key] = _Breaker()
            if len(self._all) > self.settings.max_destinations:
                self._all.popitem(last=False)
        else:
            self._all.move_to_end(key)
        if b.state is CircuitState.HALF_OPEN:
            b.trials = max(0, b.trials - 1)
            if failed:
                b.opened_at = time.monotonic()
                self._set(kind, key, b, CircuitState.OPEN)
            elif code is None:
                b.failures = 0
                self._set(kind, key, b, CircuitState.CLOSED)
            return
        if failed:
            b.failures += 1
            if b.state is CircuitState.CLOSED and b.failures >= self.settings.failure_threshold:
                b.opened_at = time.monotonic()
                self._set(kind, key, b, CircuitState.OPEN)
        elif code is None:
            b.failures = 0

    def _set(self, kind: str, key: str, b: _Breaker, state: CircuitState) -> None:
        b.state = state
        if state is not CircuitState.HALF_OPEN:
            b.trials = 0
        if self._on_change is not None:
            self._on_change(kind, key, state)

    def open_count(self, kind: str | None = None) -> int:
        """Breakers open or half-open now (of ``kind`` when given, for scope ``agent``)."""
        return sum(
            1
            for key, b in self._all.items()
            if b.state is not CircuitState.CLOSED and (kind is None or key.split("/", 1)[0] == kind)
        )
