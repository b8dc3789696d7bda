"""Write-behind for ``consistency = "eventual"`` kinds: the reply does not wait for the
state write; changes are coalesced and stored within the kind's ``flush_interval``.

The owner of the agents (the cluster node's ``Ownership``) keeps, per activation, the
latest acknowledged value that is not stored yet and gives this scheduler a ``flush``
coroutine that stores it (the same compare-and-set as a strong write, so fencing holds).
The scheduler only decides *when*:

```
 action acknowledged ──▶ mark(key, interval)   first change since the last store:
                                               a timer at now + interval (later changes
                                               of the window ride on it: coalesced)
 timer fires ──▶ one flush task per key        flush(key) stores the newest value
   failure   ──▶ again after a backoff          (0.1 s doubling to 5 s; logged, counted)
 graceful stop / migration ──▶ flush_now(key)  waits for a flush in flight, stores the rest
 stale copy discarded     ──▶ forget(key)      the unstored window is dropped (logged)
 the store answers again  ──▶ hurry(key)       a retry waiting out its backoff runs soon
```

A flush never runs inside an agent's mailbox: a store that keeps failing leaves the agent
answering (its state stays in memory, and the window of what a crash would lose grows;
the failures are logged and counted in ``natsagents_state_saves{outcome="failed"}``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from ..tasks import TaskGroup

__all__ = ["WriteBehind"]

log = logging.getLogger("natsagents.state")

K = TypeVar("K", bound=Hashable)

_FIRST_RETRY = 0.1
_MAX_RETRY = 5.0


class WriteBehind(Generic[K]):
    """When to store the unflushed state of eventual agents (see the module docstring).

    Args:
        flush: stores the newest unflushed value of a key (a no-op when there is none);
            raises when it could not.
        tasks: the owner's task group (flush tasks run there).
        dirty: whether a key has an unflushed value (changes made while a flush ran are
            stored by the next one).
        stale: whether a key's copy was discarded (no retry then).
    """

    def __init__(
        self,
        flush: Callable[[K], Awaitable[None]],
        tasks: TaskGroup,
        *,
        dirty: Callable[[K], bool],
        stale: Callable[[K], bool],
    ) -> None:
        self._flush = flush
        self._tasks = tasks
        self._dirty = dirty
        self._stale = stale
        self._intervals: dict[K, float] = {}
        # When the oldest change not taken by a flush yet was acknowledged (monotonic): a
        # change made while a flush runs is due ``interval`` after it, not after the flush.
        self._since: dict[K, float] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._running: dict[K, asyncio.Task[None]] = {}
        self._retry: dict[K, float] = {}

    def mark(self, key: K, interval: float) -> None:
        """``key`` has an acknowledged change that is not stored: store it within
        ``interval`` seconds (a timer starts with the first change of a window)."""
        self._intervals[key] = interval
        loop = asyncio.get_running_loop()
        self._since.setdefault(key, loop.time())
        if key in self._timers or key in self._running:
            return  # a flush is due (it takes the newest value) or running (it re-arms)
        self._timers[key] = loop.call_later(interval, self._fire, key)

    def hurry(self, key: K, interval: float) -> None:
        """A sign that the store answers again (a crdt copy's record watch delivered): a
        retry of ``key`` due later than ``interval`` from now runs then instead of waiting
        out its backoff (a timer of an ordinary window, or no retry, is left alone)."""
        timer = self._timers.get(key)
        if timer is None or key not in self._retry:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + interval
        if timer.when() > due:
            timer.cancel()
            self._timers[key] = loop.call_at(due, self._fire, key)

    def pending(self, key: K) -> bool:
        """Whether a flush of ``key`` is due or running."""
        return key in self._timers or key in self._running

    def __len__(self) -> int:
        return len(set(self._timers) | set(self._running))

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        if key in self._running or self._tasks.closed:
            return
        self._running[key] = self._tasks.spawn(self._run(key), name="flush")

    async def _run(self, key: K) -> None:
        since = self._since.pop(key, None)  # the flush takes every change made until now
        try:
            await self._flush(key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._stale(key):
                self._retry.pop(key, None)
                return
            delay = self._retry.get(key, _FIRST_RETRY / 2) * 2
            delay = min(delay, _MAX_RETRY)
            self._retry[key] = delay
            if since is not None:
                self._since[key] = min(since, self._since.get(key, since))
            name = getattr(key, "address", key)
            log.warning("storing the state of %s behind failed (%s): again in %.1f s", name, exc, delay)
            self._running.pop(key, None)
            if not self._tasks.closed:
                self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)
            return
        else:
            self._retry.pop(key, None)
        finally:
            if self._running.get(key) is asyncio.current_task():
                del self._running[key]
        if self._dirty(key) and not self._stale(key) and key not in self._timers and not self._tasks.closed:
            loop = asyncio.get_running_loop()
            due = self._since.get(key, loop.time()) + self._intervals.get(key, _FIRST_RETRY)
            self._timers[key] = loop.call_at(due, self._fire, key)
        elif key not in self._timers:
            self._intervals.pop(key, None)
            self._since.pop(key, None)

    async def flush_now(self, key: K) -> None:
        """Store ``key``'s unflushed value now: cancel its timer, wait for a flush in
        flight, then flush what is left (a graceful stop, a migration, ``save_state``).

        Raises:
            Exception: whatever the flush raised.
        """
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        running = self._running.get(key)
        if running is not None:
            # Shielded: a cancelled stop must not cancel the write under way.
            await asyncio.wait([running])
        timer = self._timers.pop(key, None)  # a failed flush in flight re-armed its timer
        if timer is not None:
            timer.cancel()
        self._retry.pop(key, None)
        self._since.pop(key, None)
        await self._flush(key)

    def forget(self, key: K) -> None:
        """Drop ``key``: no flush will run for it any more (a flush in flight finishes,
        and is fenced off when the copy is stale)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._retry.pop(key, None)
        self._intervals.pop(key, None)
        self._since.pop(key, None)
