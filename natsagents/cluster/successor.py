"""Whether a newer claim by another node is real before a live copy stops for it.

Anyone who can write the directory bucket can name another live node as the owner of an
agent active here. A copy that stopped at once for such a record (fenced, and superseded:
protocol §8.8, it drops what it has not run) would leave the agent answering nobody: the
node named holds nothing, and callers that do not resend lose their requests.

A real successor holds the agent: it claimed the record while starting it (a takeover
bases its claim on the record it replaces, epoch above ours; an orphan taken over after a
garbage record, any epoch), and it keeps it active, starting or stopping. So before it
stops for any claim of another node, the copy asks that node (control operation
``holds``, signed with the owner key, §14.4): it holds the agent, or is starting it, or
does not answer within :data:`CHECK_TIMEOUT` (paused, cut off): the copy stops. It does
not, or no such node listens ("no responders"): nobody legitimately wrote the record (the
100k fuzz's forged records of epoch 2 naming a live node silenced live copies, and the
messages only they had received went unanswered); the copy writes its own record back
(compare-and-set on the forged revision), counts it (``natsagents_forged_claims_total``)
and goes on.

While the question is open the copy runs nothing and answers nothing, replay questions
included: its messages wait for the answer (``Ownership.serving``), so a real successor
never has a second writer (or a second answerer) beside it. The state store's
compare-and-set fences a real successor's takeover in any case; this check only keeps a
forgery from silencing a live agent.

A live copy's record removed or overwritten with garbage (no owner can be read from it)
makes the agent an orphan: the next activation anywhere claims it afresh, and this copy,
superseded by that claim, drops what only it had received. No node that runs the agent
writes such a record (a takeover writes a claim; a release or a migration happens on
this node, which stops its copy first). So the copy writes its record back at once
(:meth:`Successors.reclaim`, compare-and-set on the revision that replaced it), unless it
had a gap in its heartbeats since its claim was verified (a node that saw it lapse may
have removed it: the claim is verified first, ``Ownership.serving``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import NatsAgentsError
from ..observability.metrics import Metrics
from ..runtime.activation import Activation, ActivationState
from ..tasks import TaskGroup
from ..transport.connection import NoResponders
from .asks import NodeClient
from .directory import Claim, Directory

__all__ = ["CHECK_TIMEOUT", "Successors"]

log = logging.getLogger("natsagents.cluster.node")

#: Seconds the node named by a newer claim has to say whether it holds the agent.
CHECK_TIMEOUT = 1.0


class Successors:
    """Checks the newer claims of other nodes on agents active here (see the module)."""

    def __init__(self, client: NodeClient, directory: Directory, metrics: Metrics, tasks: TaskGroup) -> None:
        self._client = client
        self._directory = directory
        self._metrics = metrics
        self._tasks = tasks

    def check(self, act: Activation, mine: Claim, claim: Claim, fence: Callable[[Activation, Claim], None]) -> None:
        """Ask ``claim``'s node about ``act`` (one question at a time per copy; a newer
        claim while one is open is judged when it ends) and ``fence`` the copy unless it
        answers that it does not hold it."""
        own = act.cluster
        if own.doubt is not None:
            own.doubted = claim
            return
        act.hold = own.doubt = self._tasks.spawn(
            self._check(act, mine, claim, fence), name=f"successor of {act.address}"
        )

    async def _check(
        self, act: Activation, mine: Claim, claim: Claim, fence: Callable[[Activation, Claim], None]
    ) -> None:
        own = act.cluster
        try:
            while True:
                if await self._forged(act, mine, claim):
                    newer = own.doubted
                    own.doubted = None
                    if newer is None or newer.revision <= own.claim.revision:
                        return
                    mine, claim = own.claim, newer  # another record came meanwhile
                    continue
                fence(act, claim)
                return
        finally:
            act.hold = own.doubt = None

    async def _forged(self, act: Activation, mine: Claim, claim: Claim) -> bool:
        """Whether ``claim`` was forged (its node does not hold the agent) and our record
        is back."""
        node = claim.record.node
        try:
            reply = await self._client.request(
                node, "holds", {"kind": act.kind, "id": act.agent_id}, timeout=CHECK_TIMEOUT
            )
        except NoResponders:
            reply = {"holds": False}  # no such node listens (the fuzz's "ghost"): it holds nothing
        except NatsAgentsError:
            return False  # no answer in time: assume it does (the stop is the safe side)
        if not isinstance(reply, dict) or reply.get("holds") is not False:
            return False
        own = act.cluster
        if own.handed_over:
            return False
        try:
            own.claim = await self._directory.restore(mine, claim.revision)
        except NatsAgentsError as exc:  # changed again (CasConflict), or unreachable
            log.warning("%s: could not write back the claim of %s: %s", act.address, node, exc)
            return False
        self._metrics.forged_claims.labels(act.kind).inc()
        log.warning(
            "%s: a directory record named %s (epoch %d) as its owner, which does not hold it: "
            "this copy goes on and its claim is written back",
            act.address,
            node,
            claim.record.epoch,
        )
        return True

    def reclaim(self, act: Activation, revision: int) -> None:
        """Write the claim of live ``act`` back over ``revision``: its record was removed or
        overwritten with garbage by someone who does not run it (see the module)."""
        self._tasks.spawn(self._reclaim(act, revision), name=f"reclaim of {act.address}")

    async def _reclaim(self, act: Activation, revision: int) -> None:
        own = act.cluster
        if own.handed_over or own.doubt is not None or act.state is not ActivationState.ACTIVE:
            return
        try:
            own.claim = await self._directory.restore(own.claim, revision)
        except NatsAgentsError as exc:  # written again meanwhile (the watch reports it), or unreachable
            log.warning("%s: could not write back its removed directory record: %s", act.address, exc)
            return
        self._metrics.forged_claims.labels(act.kind).inc()
        log.warning("%s: its directory record was removed or garbled while active here: written back", act.address)
