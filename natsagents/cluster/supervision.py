"""Supervision of the agents this node runs: restarts (hung handlers, consecutive errors,
agents unhealthy for too long) within each kind's ``max_restarts`` per ``restart_window``,
and, after a heartbeat gap longer than the lease, a check of every claim.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from ..errors import Unavailable
from ..observability import Metrics
from ..runtime.activation import Activation, ActivationState
from ..runtime.host import Host
from ..tasks import TaskGroup
from .directory import Directory
from .local import LocalNode
from .membership import Membership
from .ownership import Owned, Ownership

__all__ = ["Supervisor"]

log = logging.getLogger("natsagents.cluster.node")


class Supervisor:
    """Restarts agents and verifies claims (``run`` is the node's supervisor task).

    Args:
        local: this node's own state (agents moving away are left alone).
        host: the host the agents run on.
        ownership: stops copies whose claim is gone (``fenced``).
        directory: the directory (claims are re-read after a gap).
        membership: this node's heartbeats (a gap is judged by them).
        lease: the cluster lease (seconds).
        metrics: where restarts are counted.
        tasks: the node's task group (restarts run there).
    """

    def __init__(
        self,
        local: LocalNode,
        host: Host,
        ownership: Ownership,
        directory: Directory,
        membership: Membership,
        *,
        lease: float,
        metrics: Metrics,
        tasks: TaskGroup,
    ) -> None:
        self._local = local
        self._host = host
        self._ownership = ownership
        self._directory = directory
        self._membership = membership
        self._lease = lease
        self._metrics = metrics
        self._tasks = tasks
        self._restarts: dict[tuple[str, str], deque[float]] = {}
        self._failed: dict[tuple[str, str], float] = {}  # stopped until (monotonic)
        self._verified_gaps = 0  # Membership.gaps after which every claim was verified

    # -- what activations report -----------------------------------------------------

    def succeeded(self, act: Activation) -> None:
        """An action of ``act`` succeeded: its errors in a row start again from zero."""
        act.errors_in_row = 0

    def failed(self, act: Activation) -> None:
        """An action of ``act`` raised: restart it after ``restart_after_errors`` in a row."""
        act.errors_in_row += 1
        limit = type(act.agent).restart_after_errors
        if limit and act.errors_in_row >= limit:
            act.errors_in_row = 0
            self._tasks.spawn(self.restart(act, "errors"))

    def check_not_failed(self, key: tuple[str, str], address: str) -> None:
        """Raises: Unavailable while the agent is stopped for exceeding ``max_restarts``."""
        until = self._failed.get(key)
        if until is None:
            return
        if time.monotonic() < until:
            raise Unavailable(
                f"{address} failed too often and is stopped for {until - time.monotonic():.0f} s more",
                agent=address,
                details={"failed": True},
            )
        del self._failed[key]

    # -- the supervisor task ---------------------------------------------------------

    async def run(self) -> None:
        """Every tick: restart hung handlers; after a heartbeat gap longer than the lease
        (paused process, lost connection), verify every claim and stop stale copies."""
        tick = min(0.25, self._membership.interval)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            kinds = self._host.kinds.values()
            if any(cls.handler_timeout or cls.unhealthy == "restart" for cls in kinds):
                for act in list(self._host.activations.values()):
                    if act.state is not ActivationState.ACTIVE:
                        continue
                    cls = type(act.agent)
                    limit = cls.handler_timeout
                    if limit and act.busy_since and now - act.busy_since > limit:
                        self._tasks.spawn(self.restart(act, "hung"))
                        continue
                    health = act.health
                    if (
                        cls.unhealthy == "restart"
                        and health is not None
                        and health.unhealthy_since
                        and now - health.unhealthy_since > cls.unhealthy_grace
                    ):
                        health.unhealthy_since = now  # once per grace period, while it restarts
                        self._tasks.spawn(self.restart(act, "unhealthy"))
            gaps = self._membership.gaps
            if gaps != self._verified_gaps:
                # Our lease lapsed and came back: re-read every claim (messages wait for
                # theirs anyway, Ownership.serving; this stops idle stale copies too).
                if await self._verify_claims():
                    self._verified_gaps = gaps

    async def _verify_claims(self) -> bool:
        """Verify every claim (8 at a time); ``False`` if the directory could not be read."""
        gate = asyncio.Semaphore(8)
        unread = False

        async def one(act: Activation) -> None:
            nonlocal unread
            async with gate:
                if act.state is ActivationState.ACTIVE and await self._ownership.verify_claim(act) is None:
                    unread = True

        acts = [
            act
            for key, act in list(self._host.activations.items())
            if isinstance(act.cluster, Owned) and key not in self._local.moving
        ]
        await asyncio.gather(*(one(a) for a in acts))
        return not unread

    async def restart(self, act: Activation, reason: str) -> None:
        """Stop ``act`` and activate it again from its stored state (``hung``: its workers
        are cancelled first), unless its kind is ``temporary`` or it restarted
        ``max_restarts`` times within ``restart_window`` (then it stays stopped that long)."""
        cls = type(act.agent)
        key = (act.kind, act.agent_id)
        if act.state is not ActivationState.ACTIVE:
            return
        log.warning("restarting %s (%s)", act.address, reason)
        if reason == "hung":
            for task in list(act.workers):
                task.cancel()
        await self._host.stop_activation(act)
        if cls.restart == "temporary":
            return
        now = time.monotonic()
        history = self._restarts.setdefault(key, deque())
        while history and now - history[0] > cls.restart_window:
            history.popleft()
        if len(history) >= cls.max_restarts:
            self._failed[key] = now + cls.restart_window
            log.error("%s exceeded %d restarts in %.0f s: stopped", act.address, cls.max_restarts, cls.restart_window)
            return
        history.append(now)
        self._metrics.restarts.labels(act.kind, reason).inc()
        try:
            await self._host.activate(act.kind, act.agent_id)
        except Exception as exc:
            log.warning("restart of %s failed: %s", act.address, exc)
