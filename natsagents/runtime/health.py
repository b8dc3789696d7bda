"""Health of one agent and throttling by it.

Two signals, both per activation and both off unless the kind sets them:

* **backlog** (``throttle_backlog``): messages waiting in the mailbox. At the limit the
  agent is *congested*: new messages are refused at once with ``overloaded`` (reason
  ``backlog``) until the backlog is down to half the limit (hysteresis, so the agent does
  not flap). A soft limit below ``mailbox_size`` that sheds load early instead of letting
  callers wait behind a long queue.
* **latency** (``throttle_latency``): a moving average of handler run time (each new
  sample weighs 1/5). Above the limit the agent is *slow*: it admits a message only when a
  worker is free, so callers fail fast with ``overloaded`` (reason ``latency``) rather than
  queue behind slow handlers. It is healthy again when the average falls below 80 % of the
  limit.

Refusals carry ``details = {"reason", "retry_after"}`` (seconds: the expected time to drain
what is waiting). ``unhealthy_since`` tells supervision how long the agent has been
congested or slow; a cluster node restarts it after ``unhealthy_grace`` seconds when the
kind says ``unhealthy = "restart"``.
"""

from __future__ import annotations

import time

__all__ = ["Health"]

_WEIGHT = 0.2  # of each new latency sample in the moving average
_RECOVER = 0.8  # slow until the average is below this share of the limit


class Health:
    """Throttling state of one activation (made only for kinds that throttle)."""

    __slots__ = ("backlog_limit", "congested", "latency", "latency_limit", "slow", "unhealthy_since")

    def __init__(self, backlog_limit: int | None, latency_limit: float | None) -> None:
        self.backlog_limit = backlog_limit
        self.latency_limit = latency_limit
        self.latency = 0.0  # moving average of handler seconds
        self.congested = False
        self.slow = False
        self.unhealthy_since = 0.0  # monotonic; 0 while healthy

    def admit(self, waiting: int, running: int, workers: int) -> str | None:
        """Why a new message must be refused now (``"backlog"``, ``"latency"``), or None."""
        limit = self.backlog_limit
        if limit is not None:
            if self.congested:
                if waiting > limit // 2:
                    return "backlog"
                self.congested = False
                self._update()
            elif waiting >= limit:
                self.congested = True
                self._update()
                return "backlog"
        if self.slow and waiting + running >= workers:
            return "latency"
        return None

    def handled(self, seconds: float, waiting: int) -> None:
        """A handler ran for ``seconds``; ``waiting`` messages are still in the mailbox."""
        self.latency += (seconds - self.latency) * _WEIGHT
        limit = self.latency_limit
        changed = False
        if limit is not None:
            if not self.slow and self.latency > limit:
                self.slow = changed = True
            elif self.slow and self.latency < limit * _RECOVER:
                self.slow = False
                changed = True
        if self.congested and self.backlog_limit is not None and waiting <= self.backlog_limit // 2:
            self.congested = False
            changed = True
        if changed:
            self._update()

    def retry_after(self, waiting: int, workers: int) -> float:
        """Seconds until what waits now has likely run (at least 10 ms)."""
        return max(0.01, self.latency * (waiting + 1) / max(1, workers))

    def _update(self) -> None:
        if self.congested or self.slow:
            if not self.unhealthy_since:
                self.unhealthy_since = time.monotonic()
        else:
            self.unhealthy_since = 0.0

    @property
    def reason(self) -> str | None:
        """``"backlog"``, ``"latency"`` or None (healthy)."""
        return "backlog" if self.congested else "latency" if self.slow else None
