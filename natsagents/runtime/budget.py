"""The decode budget: how many bytes of decoded large request bodies a host holds at once.

A host inflates and decodes a body synchronously, one at a time, and each body is bounded on
its own (``wire.codec``: at most ~40 MiB however it is built). What can pile up is the values
of large bodies held by handlers that are still running (awaiting another agent, a timer, a
state write): N bombs of 36 MiB each, sent to N agents whose handlers wait, would cost N times
that. The dispatcher therefore holds the estimated size of each decoded body longer than
``codec.LONG_BODY`` against this budget until its handler returns, and refuses a body that
does not fit with ``overloaded`` (``details.reason = "decode_budget"``). One body is always
admitted when nothing else is held, so a single legitimate large body never waits on an
empty host.
"""

from __future__ import annotations

__all__ = ["DecodeBudget"]


class DecodeBudget:
    """A byte count with a limit (see the module docstring).

    Args:
        limit: most bytes held at once (``None``: no limit, only counted).
    """

    __slots__ = ("held", "limit", "peak")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.held = 0
        #: The most ever held at once (for tests and figures).
        self.peak = 0

    def try_take(self, size: int) -> bool:
        """Hold ``size`` more bytes if they fit (or nothing is held); ``False`` otherwise."""
        held = self.held
        if self.limit is not None and held and held + size > self.limit:
            return False
        held += size
        self.held = held
        if held > self.peak:
            self.peak = held
        return True

    def release(self, size: int) -> None:
        """Give back ``size`` bytes taken by :meth:`try_take`."""
        self.held -= size
