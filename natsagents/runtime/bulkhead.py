"""Bulkheads: at most N handlers of one kind (or one action) run at once on a host.

A hot kind then cannot take every worker and every byte of memory of a node, and other
kinds keep their latency. A message over the limit is refused at once with
``overloaded`` (``details.reason = "bulkhead"``), or, when the kind sets
``bulkhead_wait``, waits for a free slot in arrival order until its deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

__all__ = ["Bulkhead"]


class Bulkhead:
    """A counting limit with a FIFO of waiters."""

    __slots__ = ("_waiters", "in_use", "limit", "name")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return True
        return False

    async def acquire(self, deadline: float | None) -> bool:
        """Wait for a slot until ``deadline`` (``time.time()``; ``None``: forever).
        ``False`` when the deadline passed first."""
        if self.try_acquire():
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            if deadline is None:
                await fut
            else:
                async with asyncio.timeout(max(0.0, deadline - time.time())):
                    await fut
        except TimeoutError:
            return False
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us as we were cancelled
            raise
        finally:
            if not fut.done():
                fut.cancel()
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass
        return True

    def release(self) -> None:
        """Free a slot: hand it to the oldest waiter, if any."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes over: in_use stays
                return
        self.in_use -= 1
