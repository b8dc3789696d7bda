"""Leader election with a KV lease: one key, created with a TTL, renewed by CAS.

The key holds the leader's node id (a msgpack string). Whoever creates it
(create-if-absent) leads until it fails to renew: every ``interval`` the leader rewrites
the key with a compare-and-set on the revision it last wrote, with a fresh TTL. A leader
that cannot renew within the TTL (paused, partitioned) finds the key gone or taken and
steps down; since the key expires on the server's clock, a new leader can appear only
after the old one's TTL ran out. Leadership is advisory: whatever the leader does must
itself be safe under CAS.

**A key nobody renews is dead, whatever it holds.** The key is not trusted to expire: a
hostile writer may put garbage, a value that is not a node id, another node's id, or any
value without a TTL, and create-if-absent would then fail forever. So a candidate that
finds the key taken remembers its revision and when it first saw it (its own monotonic
clock); once the same revision has stood for ``ttl`` seconds, the candidate takes the key
over with a compare-and-set on that revision (with a TTL). An honest leader renews every
``interval < ttl``, so its key never stands that long, and one that stopped renewing has
lost it on the server's clock already (its TTL, counted from a write no later than the
first sighting, ran out). Two honest nodes never both lead: of the candidates that judge
one revision dead, the CAS lets exactly one win, and a leader whose key was overwritten
finds out at its next renewal (CAS conflict) and steps down, within ``interval``, before
any candidate's ``ttl`` on the new revision is over. A garbage value is logged (rate
limited) and is otherwise treated like any other holder: it blocks election for at most
``ttl + interval``.

**A leader that cannot renew steps down by itself.** A candidate may take over ``ttl``
after it first saw the leader's last revision, so a leader whose renewals time out
(an overloaded server, a slow connection) must stop leading before then, whatever its
renewals' fate: its lead is valid until ``interval / 2`` before ``ttl`` has passed since
it sent its last successful write, and renewals wait no longer than that. Whatever the
leader does in its role checks :attr:`LeaderLease.holds` before it counts (a partition
owner's answers and acks): false once that time has passed or the lease was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..errors import ConfigurationError, NatsAgentsError
from ..tasks import TaskGroup
from ..transport.kv import Bucket, CasConflict
from ..wire import codec
from . import records

__all__ = ["LeaderLease", "holder"]

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
        self._valid_until = 0.0  # loop time: lead no longer unless renewed (see the docstring)
        self._standing: tuple[int, float] | None = None  # a holder's revision, first seen at
        self._tasks = TaskGroup(f"lease {key}", log)
        self._campaigning: asyncio.Task[None] | None = None
        self._leading: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self._revision > 0

    @property
    def holds(self) -> bool:
        """Whether what the leader does still counts: until its lease can have run out
        (it may be handing over gracefully). ``False`` at once when the lease was lost:
        another node may hold it already."""
        return asyncio.get_running_loop().time() < self._valid_until

    def start(self) -> None:
        self._campaigning = self._tasks.spawn(self._campaign(), name=f"campaign {self.key}")

    async def stop(self) -> None:
        """Stop campaigning; a leader deletes its key so another node takes over at once."""
        campaign, self._campaigning = self._campaigning, None
        if campaign is not None:
            await _cancel(campaign)
        revision = self._revision  # read first: stepping down forgets it
        await self._step_down()  # the lead task has ended: nothing runs under the lease
        self._valid_until = 0.0  # another node may lead the moment the key is gone
        if revision:
            # By revision: a key that changed since our last write is a successor's.
            with contextlib.suppress(NatsAgentsError):
                await self.bucket.delete(self.key, revision=revision, timeout=1.0)
        await self._tasks.aclose()

    async def leader(self) -> str | None:
        """The current leader's node id (one read), or ``None`` (no key, or garbage)."""
        entry = await self.bucket.get(self.key)
        return None if entry is None else holder(entry.value)

    async def _campaign(self) -> None:
        value = codec.encode(self.node_id)
        while True:
            if self._lead_failed and self._revision:
                # The leader task failed: give the role up, so that it starts afresh (here
                # or on another node) instead of being held by a node that does nothing.
                self._lead_failed = False
                revision = self._revision
                self._valid_until = 0.0
                await self._step_down()
                with contextlib.suppress(NatsAgentsError):
                    await self.bucket.delete(self.key, revision=revision, timeout=self.interval)
                await asyncio.sleep(self.interval)
                continue
            loop = asyncio.get_running_loop()
            if self._revision and loop.time() >= self._valid_until:
                log.warning("%s could not renew the lease %s in time: stepping down", self.node_id, self.key)
                await self._step_down()
            sent = loop.time()
            try:
                if self._revision:
                    timeout = min(self.interval, max(0.001, self._valid_until - sent))
                    revision = await self.bucket.update(
                        self.key, value, revision=self._revision, ttl=self.ttl, timeout=timeout
                    )
                    if self._revision:  # not stepped down meanwhile
                        self._revision = revision
                        self._renewed(sent)
                else:
                    self._revision = await self.bucket.create(self.key, value, ttl=self.ttl, timeout=self.interval)
                    self._renewed(sent)
                    log.info("%s leads %s", self.node_id, self.key)
                    self._begin()
            except CasConflict as exc:
                if self._revision:
                    log.warning("%s lost the lease %s", self.node_id, self.key)
                    self._valid_until = 0.0
                    await self._step_down()
                else:
                    await self._judge(exc.current_revision)
            except NatsAgentsError as exc:
                log.debug("lease %s: %s", self.key, exc)
            pause = self.interval
            if self._revision:  # wake up in time to step down if this renewal was the last
                pause = min(pause, max(0.0, self._valid_until - loop.time()))
            await asyncio.sleep(pause)

    def _renewed(self, sent: float) -> None:
        """A write sent at loop time ``sent`` holds the key: a candidate can take over no
        sooner than ``ttl`` after it (it sees the revision once it is written)."""
        self._valid_until = sent + self.ttl - self.interval / 2

    async def _judge(self, revision: int | None) -> None:
        """The key is held at ``revision``: take it over (CAS) once that revision has
        stood for ``ttl`` seconds on our clock (see the module docstring)."""
        now = asyncio.get_running_loop().time()
        if revision is None or self._standing is None or self._standing[0] != revision:
            self._standing = None if revision is None else (revision, now)
            return
        if now - self._standing[1] < self.ttl:
            return
        self._standing = None
        try:
            entry = await self.bucket.get(self.key, timeout=self.interval)
            if entry is None or entry.revision != revision:
                return  # gone or renewed meanwhile: campaign on
            held = holder(entry.value)
            if held is None:
                records.garbage(log, "lease", f"{self.bucket.name}/{self.key}", "not a node id")
            sent = asyncio.get_running_loop().time()
            self._revision = await self.bucket.update(
                self.key, codec.encode(self.node_id), revision=revision, ttl=self.ttl, timeout=self.interval
            )
        except NatsAgentsError as exc:  # CasConflict: renewed, taken by another candidate, or gone
            log.debug("lease %s: no takeover: %s", self.key, exc)
            return
        self._renewed(sent)
        log.warning(
            "%s took over the lease %s from %s: revision %d stood unrenewed for %s s",
            self.node_id,
            self.key,
            held or "a malformed value",
            revision,
            self.ttl,
        )
        self._begin()

    def _begin(self) -> None:
        self.changed.set()
        if self._lead is not None:
            self._leading = self._tasks.spawn(self._run_lead(), name=f"lead {self.key}")

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
            await _cancel(task)


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` until it is really done: a cancellation can be swallowed by a wait
    that completes at the same moment (asyncio.wait_for on Python 3.11). Its outcome is
    the task group's (logged there if it failed); a cancellation of the caller propagates."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)


def holder(value: bytes) -> str | None:
    """The node id a lease value names, or ``None`` when it is not one."""
    try:
        return records.node_id(codec.decode(value))
    except ValueError:
        return None
