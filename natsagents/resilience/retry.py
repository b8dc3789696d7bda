"""Retry policy for calls: exponential backoff with jitter, bounded attempts, deadline-aware.

A retry repeats the *same* logical message (same ``Na-Msg-Id``), so a host that already
ran it answers the copy from its reply cache instead of running it again (see
``runtime.dedup``). Which failures are retried:

* errors that prove the message did **not** run (``overloaded``, ``unavailable``,
  ``circuit_open``, ``at_capacity``, a ``timeout`` *reply*): for any action;
* failures after which it **may** have run (no reply before the attempt's timeout,
  ``handler_error``): only for actions marked ``idempotent`` (``@action(idempotent=True)``
  when the ref knows the class, or ``ref.with_options(idempotent=True)``). A
  ``handler_error`` retry uses a new message id, since the copy would only get the stored
  error again.

Every attempt keeps the call's deadline; the policy never sleeps past it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..errors import AT_CAPACITY, CIRCUIT_OPEN, OVERLOADED, TIMEOUT, UNAVAILABLE, ConfigurationError

__all__ = ["NOT_RUN", "RetryPolicy"]

#: Error codes that mean the message did not run (safe to repeat for any action).
NOT_RUN: frozenset[str] = frozenset({OVERLOADED, UNAVAILABLE, CIRCUIT_OPEN, AT_CAPACITY, TIMEOUT})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a call is retried.

    Args:
        max_attempts: attempts in all (1: no retry).
        backoff_initial: seconds before the first retry.
        backoff_max: longest wait between attempts.
        multiplier: growth of the wait per attempt.
        jitter: the wait is drawn uniformly from ``[wait * (1 - jitter), wait]``, so that
            many callers failing together do not retry together.
        attempt_timeout: seconds one attempt waits for its reply (``None``: the whole
            remaining deadline); needed for retrying a silent destination.
        retry_on: error codes retried (see the module docstring for the idempotency rule).
    """

    max_attempts: int = 3
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5
    attempt_timeout: float | None = None
    retry_on: frozenset[str] = field(default=frozenset({OVERLOADED, UNAVAILABLE, TIMEOUT, CIRCUIT_OPEN}))

    def __post_init__(self) -> None:
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int >= 1, not {self.max_attempts!r}")
        for name in ("backoff_initial", "backoff_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"{name} must be a number >= 0, not {value!r}")
        if isinstance(self.multiplier, bool) or not isinstance(self.multiplier, (int, float)) or self.multiplier < 1:
            raise ConfigurationError(f"multiplier must be >= 1, not {self.multiplier!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be within 0..1, not {self.jitter!r}")
        if self.attempt_timeout is not None and not (
            isinstance(self.attempt_timeout, (int, float)) and self.attempt_timeout > 0
        ):
            raise ConfigurationError(f"attempt_timeout must be > 0 or None, not {self.attempt_timeout!r}")
        if not isinstance(self.retry_on, frozenset) or not all(isinstance(c, str) for c in self.retry_on):
            raise ConfigurationError("retry_on must be a frozenset of error codes")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry)."""
        wait = min(self.backoff_max, self.backoff_initial * self.multiplier ** (retry - 1))
        return random.uniform(wait * (1 - self.jitter), wait)

    def allows(self, code: str, *, idempotent: bool, answered: bool) -> bool:
        """Whether an attempt that failed with ``code`` may be repeated.

        ``answered``: the failure came as a reply (else: no reply within the attempt)."""
        if code not in self.retry_on:
            return False
        if answered and code in NOT_RUN:
            return True
        return idempotent
