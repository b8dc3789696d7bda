"""Migration: moving agents off this node (``migrate_out``, ``drain``, hand-off on close),
taking new agents again (``undrain``) and restoring agents handed to it (``adopt``).

```
 source                                   directory (CAS)              target
 quiesce (the inbox stays subscribed, answering "unavailable, retry"), on_stop
 checkpoint per strategy (save / keep in memory / nothing)
 handover ─────────────────────────────▶ node=target, epoch+1
 request <prefix>.node.<target>.adopt ───────────────────────────────────▶ claim, load or take
 ◀──────────────────────────────────────────────────────────────────────── ok {"node"}
 (failure: handover back, restart here)
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ..errors import AgentError, AgentNotFound, BadRequest, ClusterAtCapacity, NatsAgentsError, Unavailable
from ..observability import Metrics
from ..runtime.activation import Activation, ActivationState
from ..runtime.host import Host
from ..state.store import StateStore
from ..transport.kv import CasConflict
from .asks import ADOPT_WAIT, ActivationAsk, NodeClient, Transfer, adopt_request, parse_adopt
from .directory import Claim, Directory
from .local import LocalNode
from .membership import Membership
from .ownership import Owned, Ownership
from .placement import Placer
from .roster import Roster
from .settings import STRATEGIES, ClusterSettings

__all__ = ["Migration"]

log = logging.getLogger("natsagents.cluster.node")
_MOVES_AT_ONCE = 8  # agents a drain moves concurrently


class Migration:
    """Moves agents between this node and others.

    Args:
        local: this node's own state (draining, agents moving away).
        settings: the cluster settings (load factor, the drain's strategy).
        host: the host agents run on here.
        ownership: saves, releases and hands over what this node owns.
        roster: the placement view (where a drained agent goes).
        placer: chooses that node.
        membership: the live members (a target must be one).
        directory: the handover (CAS).
        client: control requests to the target.
        metrics: migrations and their pauses.
    """

    def __init__(
        self,
        local: LocalNode,
        settings: ClusterSettings,
        host: Host,
        ownership: Ownership,
        roster: Roster,
        placer: Placer,
        membership: Membership,
        directory: Directory,
        client: NodeClient,
        metrics: Metrics,
    ) -> None:
        self._local = local
        self._settings = settings
        self._host = host
        self._ownership = ownership
        self._roster = roster
        self._placer = placer
        self._membership = membership
        self._directory = directory
        self._client = client
        self._metrics = metrics
        self._leaving = False  # handing off on close: no undrain

    async def migrate_out(self, kind: str, agent_id: str, target: str, strategy: str) -> dict[str, Any]:
        """Move one agent from this node to ``target``; return ``{from, to, pause_ms}``.

        The agent stops taking messages (callers get "no responders", ask for activation
        and are answered once the move is done), finishes its mailbox, runs ``on_stop``,
        is checkpointed per ``strategy``, the directory switches to ``target`` (CAS,
        ``epoch + 1``) and ``target`` restores and subscribes. If the target fails, the
        switch is undone and the agent restarts here.

        Raises:
            AgentNotFound: not active here. Unavailable: target not live, does not host
            the kind, or the move failed (the agent stays here). BadRequest: strategy.
        """
        address = f"{kind}/{agent_id}"
        node_id = self._local.node_id
        if strategy not in STRATEGIES:
            raise BadRequest(f"unknown migration strategy {strategy!r}; use one of {STRATEGIES}", agent=address)
        key = (kind, agent_id)
        act = self._host.activations.get(key)
        if act is None or act.state is not ActivationState.ACTIVE or act.cluster is None:
            raise AgentNotFound(f"{address} is not active on {node_id}", agent=address)
        if not isinstance(act.cluster, Owned):  # a crdt copy: other nodes hold their own
            raise BadRequest(
                f"{address} is a crdt copy: it is stopped (merged into its record), not moved", agent=address
            )
        if target == node_id:
            return {"agent": address, "from": node_id, "to": target, "pause_ms": 0.0, "moved": False}
        rec = self._membership.members().get(target)
        if rec is None:
            raise Unavailable(f"node {target} is not a live member", agent=address)
        if kind not in rec.kinds:
            raise Unavailable(f"node {target} does not host kind {kind}", agent=address)
        if key in self._local.moving:
            raise Unavailable(f"{address} is already migrating", agent=address, details={"retry": True})
        done = asyncio.Event()
        self._local.moving[key] = done
        own: Owned = act.cluster
        agent = act.agent
        # The inbox stays subscribed until the target subscribed (the stopping copy
        # answers "unavailable, retry"): a queue subscription that goes away while a
        # request is on its way over a route loses that request unless another member
        # of the group exists to take it; the target's reply to "adopt" comes after its
        # subscription, so once it is here the servers know the target.
        inbox, act.subscription = act.subscription, None
        try:
            started = time.perf_counter()
            await self._host.quiesce(act)
            await self._ownership.flush_behind(act)  # an eventual agent's unstored changes
            transfer: Transfer | None = None
            if strategy == "state_transfer" or (strategy == "checkpoint_restore" and own.persistence == "none"):
                transfer = Transfer(agent.checkpoint(), own.revision, own.epoch)
            elif strategy == "checkpoint_restore":
                value = StateStore.encode(agent.checkpoint(), own.epoch)
                if value != own.saved:
                    await self._ownership.save(act, value)
            try:
                new_claim = await self._directory.handover(own.claim, target)
            except CasConflict:
                own.handed_over = True
                self._ownership.release(own)
                raise Unavailable(f"{address} was taken over by another node during the move", agent=address) from None
            own.handed_over = True
            body = adopt_request(
                kind,
                agent_id,
                strategy=strategy,
                min_revision=own.revision,
                claim_revision=new_claim.revision,
                needs=own.needs,
                recent=self._host.dedup.export(act),
                applied=own.applied_now() if own.applied else None,
                seq=own.seq,
                transfer=transfer,
            )
            try:
                await self._client.request(target, "adopt", body, ADOPT_WAIT)
            except Exception as exc:
                await self._take_back(act, new_claim, own, exc)
                self._metrics.migrations.labels(kind, strategy, "failed").inc()
                raise Unavailable(f"migration of {address} to {target} failed: {exc}", agent=address) from None
            pause = time.perf_counter() - started
            self._ownership.release(own)
            self._metrics.migrations.labels(kind, strategy, "ok").inc()
            self._metrics.migration_pause.labels(kind).observe(pause)
            return {"agent": address, "from": node_id, "to": target, "pause_ms": pause * 1000, "moved": True}
        finally:
            if inbox is not None:
                with contextlib.suppress(NatsAgentsError):
                    await inbox.drain()
            done.set()
            self._local.moving.pop(key, None)

    async def _take_back(self, act: Activation, handed: Claim, own: Owned, why: BaseException) -> None:
        log.warning("migration of %s failed (%s): taking it back", act.address, why)
        needs = own.needs
        self._ownership.release(own)
        try:
            back = await self._directory.handover(handed, self._local.node_id)
        except CasConflict:
            return  # the target did take it (its answer was lost)
        ask = ActivationAsk(act.agent_id, spawn=True, needs=needs)
        ask.transfer = Transfer(act.agent.checkpoint(), own.revision, back.record.epoch)
        ask.claim_revision = back.revision
        ask.recent = self._host.dedup.export(act)
        ask.applied = tuple(own.applied_now())
        ask.seq = own.seq
        await self._host.activate(act.kind, act.agent_id, ask)

    async def adopt(self, body: object) -> dict[str, Any]:
        """Migration target: restore the agent handed over to this node."""
        kind, ask = parse_adopt(body)
        if kind not in self._host.kinds:
            raise Unavailable(f"node {self._local.node_id} does not host {kind}")
        await self._host.activate(kind, ask.agent_id, ask)
        return {"node": self._local.node_id}

    async def drain(self) -> dict[str, Any]:
        """Stop taking new agents and move every agent here to other nodes (stop those
        no node can take). Returns counts."""
        self._local.draining = True
        with contextlib.suppress(NatsAgentsError):
            await self._membership.beat_now()
        acts = [a for a in self._host.activations.values() if a.state is ActivationState.ACTIVE]
        moved, stopped = await self.move_all(acts, self._settings.rebalance_strategy)
        with contextlib.suppress(NatsAgentsError):
            await self._membership.beat_now()  # the record says 0 agents now, not the count before
        return {"node": self._local.node_id, "moved": moved, "stopped": stopped}

    async def undrain(self) -> dict[str, Any]:
        """Take new agents again after a drain (a drain under way moves no more agents).
        Returns ``{"node", "undrained"}`` (``undrained``: it was draining).

        Raises:
            Unavailable: the node is closing (handing its agents off).
        """
        node_id = self._local.node_id
        if self._leaving or self._local.closing:
            raise Unavailable(f"node {node_id} is closing")
        was = self._local.draining
        self._local.draining = False
        if was:
            log.info("node %s takes new agents again (undrained)", node_id)
            with contextlib.suppress(NatsAgentsError):
                await self._membership.beat_now()
        return {"node": node_id, "undrained": was}

    async def hand_off(self, acts: list[Activation], strategy: str) -> tuple[int, int]:
        """On close: drain ``acts`` for good (an ``undrain`` is refused from now on)."""
        self._leaving = True
        self._local.draining = True
        with contextlib.suppress(NatsAgentsError):
            await self._membership.beat_now()
        return await self.move_all(acts, strategy)

    async def move_all(self, acts: list[Activation], strategy: str) -> tuple[int, int]:
        """Move each of ``acts`` to the node placement picks (a few at a time), stop those
        no node can take; returns ``(moved, stopped)``. Once the node is undrained, the
        agents not moved yet stay."""
        moved = stopped = 0
        gate = asyncio.Semaphore(_MOVES_AT_ONCE)

        async def one(act: Activation) -> None:
            nonlocal moved, stopped
            async with gate:
                if act.state is not ActivationState.ACTIVE or not self._local.draining:
                    return
                target = None
                with contextlib.suppress(ClusterAtCapacity):
                    target = self._placer.choose(
                        act.kind,
                        act.address,
                        [n for n in self._roster.nodes() if n.node_id != self._local.node_id],
                        needs=act.cluster.needs if act.cluster is not None else self._local.needs(act.kind),
                        load_factor=self._settings.load_factor,
                    )
                if target is not None:
                    try:
                        await self.migrate_out(act.kind, act.agent_id, target, strategy)
                        moved += 1
                        return
                    except AgentError as exc:
                        log.warning("could not move %s to %s: %s", act.address, target, exc)
                if act.state is ActivationState.ACTIVE:
                    await self._host.stop_activation(act)
                    stopped += 1

        await asyncio.gather(*(one(a) for a in acts))
        return moved, stopped
