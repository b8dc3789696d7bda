"""Leader election with a KV lease: one key, created with a TTL, renewed by CAS.

The key holds the leader's node id. Whoever creates it (create-if-absent) leads until it
fails to renew: every ``interval`` the leader rewrites the key with a compare-and-set on
the revision it last wrote, with a fresh TTL. A leader that cannot renew within the TTL
(paused, partitioned) finds the key gone or taken and steps down; since the key expires
on the server's clock, a new leader can appear only after the old one's TTL ran out.
Leadership is advisory: whatever the leader does must itself be safe under CAS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..errors import ConfigurationError, NatsAgentsError
from ..transport.kv import Bucket, CasConflict
from ..wire import codec

__all__ = ["LeaderLease"]

log = logging.getLogger("natsagents.cluster.leader")


class LeaderLease:
    """Campaigns for ``key`` in ``bucket`` and runs ``lead()`` while this node leads.

    Args:
        bucket: a bucket whose stream allows per-key TTLs (every bucket of ``open_bucket``).
        key: the lease key (one per elected role).
        node_id: this node's id, stored as the value.
        ttl: lease seconds (≥ 1); a dead leader is replaced within about ``ttl + interval``.
        interval: seconds between renewals and campaign attempts (default ``ttl / 3``).
        lead: coroutine run while leading; cancelled when leadership is lost.
    """

    def __init__(
        self,
        bucket: Bucket,
        key: str,
        node_id: str,
        *,
        ttl: float = 3.0,
        interval: float | None = None,
        lead: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if ttl < 1:
            raise ConfigurationError("a leader lease must be at least 1 second")
        self.bucket = bucket
        self.key = key
        self.node_id = node_id
        self.ttl = ttl
        self.interval = interval if interval is not None else ttl / 3
        if not 0 < self.interval < ttl:
            raise ConfigurationError("interval must be > 0 and shorter than the ttl")
        self._lead = lead
        self._lead_failed = False
        self._revision = 0
        self._task: asyncio.Task[None] | None = None
        self._leading: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self._revision > 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._campaign())

    async def stop(self) -> None:
        """Stop campaigning; a leader deletes its key so another node takes over at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._step_down()
        if self._revision:
            with contextlib.suppress(NatsAgentsError):
                await self.bucket.delete(self.key, revision=self._revision, timeout=1.0)
            self._revision = 0

    async def leader(self) -> str | None:
        """The current leader's node id (one read), or ``None``."""
        entry = await self.bucket.get(self.key)
        if entry is None:
            return None
        try:
            value = codec.decode(entry.value)
        except ValueError:
            return None
        return value if isinstance(value, str) else None

    async def _campaign(self) -> None:
        value = codec.encode(self.node_id)
        while True:
            if self._lead_failed and self._revision:
                # The leader task failed: give the role up, so that it starts afresh (here
                # or on another node) instead of being held by a node that does nothing.
                self._lead_failed = False
                revision = self._revision
                await self._step_down()
                with contextlib.suppress(NatsAgentsError):
                    await self.bucket.delete(self.key, revision=revision, timeout=self.interval)
                await asyncio.sleep(self.interval)
                continue
            try:
                if self._revision:
                    self._revision = await self.bucket.update(
                        self.key, value, revision=self._revision, ttl=self.ttl, timeout=self.interval
                    )
                else:
                    self._revision = await self.bucket.create(self.key, value, ttl=self.ttl, timeout=self.interval)
                    log.info("%s leads %s", self.node_id, self.key)
                    self._begin()
            except CasConflict:
                if self._revision:
                    log.warning("%s lost the lease %s", self.node_id, self.key)
                await self._step_down()
            except NatsAgentsError as exc:
                log.debug("lease %s: %s", self.key, exc)
            await asyncio.sleep(self.interval)

    def _begin(self) -> None:
        self.changed.set()
        if self._lead is not None:
            self._leading = asyncio.get_running_loop().create_task(self._run_lead())

    async def _run_lead(self) -> None:
        assert self._lead is not None
        try:
            await self._lead()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("leader task of %s failed; stepping down", self.key)
            self._lead_failed = True

    async def _step_down(self) -> None:
        was = self._revision
        self._revision = 0
        if was:
            self.changed.set()
        task, self._leading = self._leading, None
        if task is not None:
            # Cancel until it is really done: a cancellation can be swallowed by a wait
            # that completes at the same moment (asyncio.wait_for on Python 3.11).
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
