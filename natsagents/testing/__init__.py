"""Testing helpers: real nats-server processes and pytest fixtures.

``natsagents.testing.plugin`` holds the pytest fixtures; this module re-exports the
server harness, the fault-injecting proxy (``natsagents.testing.proxy``: real partitions)
and a few helpers for waiting on conditions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ..server import NatsCluster, NatsServer
from .proxy import ProxiedCluster, Proxy, one_way, partition

__all__ = ["NatsCluster", "NatsServer", "ProxiedCluster", "Proxy", "one_way", "partition", "wait_for"]


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], *, timeout: float = 5.0, interval: float = 0.005, what: str = ""
) -> None:
    """Wait until ``condition()`` is true (polling a condition, not sleeping blindly).

    Raises:
        TimeoutError: still false after ``timeout`` seconds.
    """
    end = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= end:
            raise TimeoutError(f"condition not met within {timeout} s{': ' + what if what else ''}")
        await asyncio.sleep(interval)
