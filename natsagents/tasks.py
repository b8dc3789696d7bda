"""One owner for background tasks (STYLE.md §6, §8).

Every object that starts work in the background (the mesh, the host, the caller, a cluster
node, the partition owners) holds a :class:`TaskGroup` and spawns through it: the group
keeps a reference to each task (no task is garbage-collected mid-flight), logs a task that
failed exactly once (no "exception was never retrieved"), and :meth:`TaskGroup.aclose`
cancels what is left and waits for it — without ever swallowing the cancellation of the
task that calls it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["TaskGroup"]

T = TypeVar("T")

log = logging.getLogger("natsagents")


class TaskGroup:
    """Background tasks of one owner.

    Args:
        name: the owner's name, in log lines.
        logger: where a failed task is logged (default ``natsagents``).
    """

    __slots__ = ("_closed", "_log", "_tasks", "name")

    def __init__(self, name: str, logger: logging.Logger | None = None) -> None:
        self.name = name
        self._log = logger or log
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task owned by this group.

        Raises:
            RuntimeError: the group is closed (the coroutine is closed, not run).
        """
        if self._closed:
            coro.close()
            raise RuntimeError(f"task group {self.name} is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, once
        if exc is not None:
            self._log.error("%s: background task %s failed", self.name, task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task: object) -> bool:
        return task in self._tasks

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self, *, grace: float = 0.0) -> None:
        """Stop every task: after ``grace`` seconds of letting them finish (0: at once),
        cancel the rest and wait until they ended. No new tasks are taken afterwards.
        Idempotent. A cancellation of the caller itself propagates (the tasks are
        cancelled first)."""
        self._closed = True
        if not self._tasks:
            return
        if grace > 0:
            me = asyncio.current_task()
            waiting = {t for t in self._tasks if t is not me}
            if waiting:
                await asyncio.wait(waiting, timeout=grace)
        await self.cancel_all()

    async def cancel_all(self) -> None:
        """Cancel the running tasks and wait until they ended; the group stays open.
        (A task of the group that calls this is left alone: it cannot wait for itself.)"""
        me = asyncio.current_task()
        tasks = {t for t in self._tasks if t is not me}
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise
