"""Whether a copy may run a message now: the gate every message of a cluster agent
passes (``Ownership.serving``, the host's ``NodeHooks.serving``).

A copy runs nothing while its node's last stored heartbeat is older than its lease
(others may be taking the agent over); after such a gap it re-reads its claim from the
stream leader first (a paused or cut-off node that wakes up stops its stale copies before
it touches their backlog). While another node's newer claim is being checked
(``cluster.successor``) its messages wait for the answer. On the minority side of a
partition a ``pause_minority`` kind answers ``partition`` (``continue_degraded``: served
degraded), unless a quick leader read shows another node owns the agent now.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..errors import AgentError, NatsAgentsError, PartitionError
from ..runtime.activation import Activation
from ..runtime.hooks import Degraded
from .directory import Claim, Directory
from .membership import Membership
from .minority import minority_answer
from .owned import Owned
from .partition import PartitionMonitor

__all__ = ["LeaseGate"]

log = logging.getLogger("natsagents.cluster.node")

#: Seconds a message on the minority side waits for a leader read of its claim before it is
#: answered ``partition`` (``LeaseGate._paused_or_superseded``).
_PAUSE_CHECK = 0.25


async def _refuse(why: str) -> str:
    return why


class LeaseGate:
    """Whether the copies of this node may run a message now (see the module).

    Args:
        node_id: this node.
        directory: claims, re-read from the stream leader after a gap.
        membership: this node's own lease and its gaps.
        partition: the node's partition side (``None``: never paused).
        fenced: stops a copy another node owns (``Ownership.fenced``), with the claim that
            superseded it when known.
    """

    def __init__(
        self,
        node_id: str,
        directory: Directory,
        membership: Membership,
        partition: PartitionMonitor | None,
        fenced: Callable[[Activation, Claim | None], None],
    ) -> None:
        self._node_id = node_id
        self._directory = directory
        self._membership = membership
        self._partition = partition
        self._fenced = fenced

    def serving(self, act: Activation, deadline_ms: int | None) -> Awaitable[str | AgentError | Degraded | None] | None:
        """Whether ``act`` may run a message now: ``None`` when our lease holds and no gap
        happened since its claim was last verified (the fast path: two comparisons).
        Otherwise an awaitable giving ``None`` (run it) or why it must be refused: a
        reason (``unavailable`` + retry: the lease did not come back before the message's
        deadline, or another node owns the agent now, this copy stops), or a
        ``PartitionError`` (the node is on the minority side and the kind pauses there)."""
        own: Owned | None = act.cluster
        if own is None:
            return None
        if own.handed_over:
            # Fenced or handed over, being stopped: a message still taken from its mailbox
            # must not run on this copy's old state (its writes are not stored either).
            return _refuse(f"{act.address} is owned by another node now; this copy stopped")
        if own.doubt is not None:  # another node's claim is being checked: wait for it
            return self._after_doubt(act, own.doubt, deadline_ms)
        membership = self._membership
        if own.gaps == membership.gaps and membership.own_lease_left() > 0:
            return None
        if own.versions is not None and own.versions.split and membership.own_lease_left() <= 0:
            return None  # split_brain_allowed: serves while cut off; the heal reconciles
        return self._recheck(act, own, deadline_ms)

    async def _after_doubt(
        self, act: Activation, doubt: asyncio.Task[None], deadline_ms: int | None
    ) -> str | AgentError | Degraded | None:
        await asyncio.shield(doubt)  # bounded: successor.CHECK_TIMEOUT and one write
        again = self.serving(act, deadline_ms)
        return None if again is None else await again

    async def _recheck(
        self, act: Activation, own: Owned, deadline_ms: int | None
    ) -> str | AgentError | Degraded | None:
        membership = self._membership
        loop = asyncio.get_running_loop()
        end = loop.time() + (10.0 if deadline_ms is None else deadline_ms / 1000 - time.time())
        while membership.own_lease_left() <= 0:
            paused = minority_answer(self._partition, act, self._node_id, membership.lease)
            if paused is not None:
                return await self._paused_or_superseded(act, paused)
            left = end - loop.time()
            if left <= 0:
                return f"node {self._node_id} lost its lease; {act.address} waits for it"
            await asyncio.sleep(min(0.01, left))  # a lease check, as Membership.wait_own_lease
        if own.gaps == membership.gaps:
            return None
        verified = await self.verify_claim(act)
        if verified is None:
            return f"node {self._node_id} cannot read the directory to verify {act.address}"
        if not verified:
            return f"{act.address} is owned by another node now; this copy stopped"
        return None

    async def _paused_or_superseded(
        self, act: Activation, paused: PartitionError | Degraded
    ) -> str | PartitionError | Degraded:
        """On the minority side: ``paused`` (answered ``partition``, or served degraded), unless a quick leader
        read of the claim (:data:`_PAUSE_CHECK` s; shared by concurrent messages) shows
        another node owns the agent now. That happens at the heal, when messages held by
        the cut reach this copy before it hears of its successor: it then stops and drops
        them (``Activation.superseded``, protocol §8.8), and only the new owner answers."""
        try:
            verified = await asyncio.wait_for(asyncio.shield(self.verify_claim(act)), _PAUSE_CHECK)
        except TimeoutError:  # still cut off
            return paused
        if verified is False:
            return f"{act.address} is owned by another node now; this copy stopped"
        return paused

    async def still_cut_off(self, act: Activation) -> bool:
        """Before a degraded write is queued: a fresh leader read of the claim (at most
        :data:`_PAUSE_CHECK` s, never shared with a read started before). ``True``: no
        answer, still cut off (queue it). ``False``: the directory answers, so the cut is
        over (a copy held by the cut, delivered at the heal, may have run on the majority
        under the same id: never queue it); a claim of another node fences this copy."""
        own: Owned = act.cluster
        try:
            current = await asyncio.wait_for(self._directory.get(act.kind, act.agent_id, leader=True), _PAUSE_CHECK)
        except (TimeoutError, NatsAgentsError):
            return True
        if current is None or (current.revision > own.claim.revision and current.record.node != self._node_id):
            self._fenced(act, current)
        return False

    async def verify_claim(self, act: Activation) -> bool | None:
        """Re-read the claim of ``act`` after a gap in our heartbeats: ``True`` if it still
        holds (the agent may run again), ``False`` if another node took it over (this
        copy is stopped), ``None`` if the directory could not be read. Concurrent checks
        of one activation share one read."""
        own: Owned = act.cluster
        if own.checking is None:
            own.checking = asyncio.ensure_future(self._verify(act, own))
            own.checking.add_done_callback(lambda _: setattr(own, "checking", None))
        return await asyncio.shield(own.checking)

    async def _verify(self, act: Activation, own: Owned) -> bool | None:
        gaps = self._membership.gaps
        for attempt in range(5):
            if own.handed_over:
                return False
            try:
                # From the leader: a replica that lagged (a server that just rejoined) would
                # have this live copy stopped over a record it does not hold yet.
                current = await self._directory.get(act.kind, act.agent_id, leader=True)
            except NatsAgentsError:
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            if current is not None and current.revision < own.claim.revision:
                await asyncio.sleep(0.01 * (attempt + 1))  # a replica behind our own write
                continue
            if current is not None and (
                current.revision == own.claim.revision
                or (current.record.node == self._node_id and current.record.epoch == own.claim.record.epoch)
            ):
                own.claim = current
                own.gaps = gaps
                return True
            owner = "nobody" if current is None else f"{current.record.node} (epoch {current.record.epoch})"
            log.warning("%s is owned by %s now: stopping this copy after a heartbeat gap", act.address, owner)
            self._fenced(act, current)
            return False
        return None
