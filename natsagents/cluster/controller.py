"""The leader's controller: while this node holds the rebalancer lease (``leader.py``) it
re-places the ``permanent`` agents of dead nodes at once, drops the records of their
``temporary`` ones, and, once the topology changed and settled, moves agents per kind
(``rebalance.plan_moves``) at ``rebalance_rate`` per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping

from ..errors import AgentError, ConfigurationError, NatsAgentsError
from .asks import ActivationAsk, NodeClient
from .directory import Claim, Directory
from .local import LocalNode
from .membership import MemberRecord, Membership
from .placement import Hints, Resources
from .placing import Placing
from .rebalance import Move, plan_moves
from .settings import ClusterSettings

__all__ = ["Controller"]

log = logging.getLogger("natsagents.cluster.node")

# Seconds between the leader's drift checks when nothing changes.
_RECHECK = 30.0


class Controller:
    """What the leader does (``lead`` runs while this node leads).

    Args:
        local: this node's own state.
        settings: rebalancing settings (on/off, rate, strategy, imbalance).
        membership: the live members.
        directory: every agent's owner (the watch-fed cache).
        placing: re-places orphans.
        client: asks owners to migrate agents.
    """

    def __init__(
        self,
        local: LocalNode,
        settings: ClusterSettings,
        membership: Membership,
        directory: Directory,
        placing: Placing,
        client: NodeClient,
    ) -> None:
        self._local = local
        self._settings = settings
        self._membership = membership
        self._directory = directory
        self._placing = placing
        self._client = client
        self.moves_in_flight = 0  # rebalancing moves asked for and not seen end

    async def lead(self) -> None:
        """While leading: re-place permanent agents of dead nodes at once, drop temporary
        ones, and rebalance when the topology changes (at ``rebalance_rate``)."""
        # Scans are O(agents): run them when membership changes, after moves, and every
        # `_RECHECK` seconds for drift, not on every tick.
        tick = min(0.25, self._membership.interval)
        last_live: frozenset[str] | None = None
        last_topology: frozenset[str] | None = None
        orphans_at = settled_at = rebalance_at = size_checked_at = 0.0
        last_size = -1
        pending = True
        loop = asyncio.get_running_loop()
        while True:
            if not self._membership.view_trusted():
                # Our own lease lapsed lately (paused, cut off): the others' records look
                # old until their heartbeats reach us; re-placing or moving on that view
                # would take agents from live nodes.
                await self._membership.changed(tick)
                continue
            live = self._membership.members()
            now = loop.time()
            live_ids = frozenset(live)
            if live_ids != last_live or now >= orphans_at:
                last_live = live_ids
                found = await self._replace_orphans(live)
                orphans_at = now + (2.0 if found else _RECHECK)
            topology = frozenset(n for n, r in live.items() if not r.draining)
            if topology != last_topology:
                last_topology = topology
                settled_at = now + self._membership.interval  # let heartbeats settle
                pending = True
            size = len(self._directory)
            if now >= rebalance_at or (size != last_size and now >= size_checked_at):
                # Periodically, and (at most once a second) when agents came or went.
                pending = True
                last_size, size_checked_at = size, now + 1.0
                if now >= rebalance_at:
                    rebalance_at = now + _RECHECK
            if self._settings.rebalance and pending and now >= settled_at:
                pending = await self._rebalance_round(live) > 0
            await self._membership.changed(tick)

    async def _replace_orphans(self, live: Mapping[str, MemberRecord]) -> int:
        work = []
        for claim in self._directory.claims():
            rec = claim.record
            if rec.node in live or rec.node == self._local.node_id:
                continue
            if rec.restart == "permanent":
                work.append(self._respawn(claim))
            elif rec.restart == "temporary":
                work.append(self._drop(claim))
        if work:
            await asyncio.gather(*work)
        return len(work)

    async def _respawn(self, claim: Claim) -> None:
        rec = claim.record
        ask = ActivationAsk(rec.agent_id, spawn=True, deadline=time.time() + 10.0)
        with contextlib.suppress(ConfigurationError):
            ask.needs = Resources.from_wire(rec.needs) if rec.needs else None
            ask.hints = Hints.from_wire(rec.hints)
        try:
            node = await self._placing.place_and_activate(rec.kind, ask)
            log.info("re-placed permanent %s on %s", rec.address, node)
        except (AgentError, NatsAgentsError) as exc:
            log.warning("could not re-place %s: %s", rec.address, exc)

    async def _drop(self, claim: Claim) -> None:
        if not await self._membership.confirm_lapsed(claim.record.node):
            return  # not on fresh evidence (see Directory.claim): the next scan looks again
        with contextlib.suppress(NatsAgentsError):
            await self._directory.remove(claim)

    async def _rebalance_round(self, live: Mapping[str, MemberRecord]) -> int:
        """One batch of moves (at most ``rebalance_rate`` per second); returns how many."""
        by_kind: dict[str, dict[str, str]] = {}
        pinned: set[str] = set()
        for claim in self._directory.claims():
            rec = claim.record
            by_kind.setdefault(rec.kind, {})[rec.address] = rec.node
            if rec.hints.get("pin"):
                pinned.add(rec.address)
        budget = max(1, math.ceil(self._settings.rebalance_rate * min(0.25, self._membership.interval)))
        # Room under each node's agent cap, shared by the kinds: a move to a full node
        # would only be refused and taken back (a pause for nothing).
        limits = {
            n: r.max_agents - max(self._directory.count_on(n), _count(r.load.get("agents")))
            for n, r in live.items()
            if r.max_agents is not None
        }
        moves: list[Move] = []
        for kind, assignment in sorted(by_kind.items()):
            weights = {n: r.weight for n, r in live.items() if kind in r.kinds and not r.draining and r.weight > 0}
            planned = plan_moves(assignment, weights, pinned=pinned, imbalance=self._settings.imbalance, limits=limits)
            for move in planned:
                if move.target in limits:
                    limits[move.target] -= 1
            moves.extend(planned)
        if not moves:
            return 0
        gate = asyncio.Semaphore(4)

        async def one(move: Move) -> None:
            kind, _, agent_id = move.agent.partition("/")
            body = {"kind": kind, "id": agent_id, "to": move.target, "strategy": self._settings.rebalance_strategy}
            async with gate:
                try:
                    await self._client.request(move.source, "migrate", body, 15.0)
                except (AgentError, NatsAgentsError) as exc:
                    log.info("rebalance move %s %s→%s skipped: %s", move.agent, move.source, move.target, exc)
                finally:
                    self.moves_in_flight -= 1

        started = asyncio.get_running_loop().time()
        self.moves_in_flight += len(moves[:budget])
        await asyncio.gather(*(one(m) for m in moves[:budget]))
        # At most `rebalance_rate` moves per second.
        spent = asyncio.get_running_loop().time() - started
        await asyncio.sleep(max(0.0, budget / self._settings.rebalance_rate - spent))
        return len(moves[:budget])


def _count(value: object) -> int:
    """A heartbeat's agent count (validated there: an int ≥ 0, or absent)."""
    return value if type(value) is int else 0
