"""The placement view of the cluster: the live members as ``NodeInfo``s, this node's own
figures fresh, the others' from their heartbeats plus the placements this node made since.
"""

from __future__ import annotations

import logging
import math

from ..errors import ConfigurationError
from ..runtime.host import Host
from .directory import Directory
from .local import LocalNode
from .membership import MemberRecord, Membership
from .placement import NodeInfo, NodeLoad, Resources
from .settings import capacity_from_wire

__all__ = ["Roster"]

log = logging.getLogger("natsagents.cluster.node")


class Roster:
    """Who is live and how loaded, as placement sees it."""

    def __init__(self, local: LocalNode, host: Host, membership: Membership, directory: Directory) -> None:
        self._local = local
        self._host = host
        self._membership = membership
        self._directory = directory
        self._placed: dict[str, tuple[float, int]] = {}  # node -> (its heartbeat_at, placed since)
        # node -> (the record, its capacity, its reservations): parsed once per heartbeat,
        # not once per placement (records are immutable; a heartbeat brings a new one).
        self._parsed: dict[str, tuple[MemberRecord, Resources, Resources]] = {}

    def is_live(self, node: str) -> bool:
        return node == self._local.node_id or self._membership.is_live(node)

    def nodes(self) -> list[NodeInfo]:
        """The placement view of the live members (this node with fresh local figures)."""
        out: list[NodeInfo] = []
        local = self._local
        members = self._membership.members()
        if local.node_id not in members and not local.closing:
            # Our own record lapsed in our view (a long stall): we are still here.
            members = {**members, local.node_id: self._membership.own_record()}
        for rec in members.values():
            try:
                out.append(self._node_info(rec))
            except (ConfigurationError, TypeError, ValueError) as exc:
                log.warning("ignoring member %s: %s", rec.node_id, exc)
        return out

    def _node_info(self, rec: MemberRecord) -> NodeInfo:
        load = rec.load
        local = self._local
        directory = self._directory
        # The directory watch counts owners within milliseconds; heartbeats lag by up to
        # an interval (the placements this node made since count on top of the heartbeat,
        # not of the directory, which already holds them): take whichever is higher.
        heartbeat = int(load.get("agents", 0))
        agents = directory.count_on(rec.node_id)
        parsed = self._parsed.get(rec.node_id)
        if parsed is None or parsed[0] is not rec:
            parsed = (rec, capacity_from_wire(rec.capacity), Resources.from_wire(load.get("reserved")))
            if len(self._parsed) > 4 * len(self._membership.known()) + 16:
                self._parsed.clear()  # members that left
            self._parsed[rec.node_id] = parsed
        capacity, reserved = parsed[1], parsed[2]
        max_agents = rec.max_agents
        if rec.node_id == local.node_id:
            agents = max(local.agent_count(), directory.count_on(local.node_id))
            reserved = local.reserved
            draining = local.draining
            max_agents = local.max_agents
        else:
            seen, placed = self._placed.get(rec.node_id, (0.0, 0))
            if seen == rec.heartbeat_at:
                heartbeat += placed  # placements since its last heartbeat
            agents = max(agents, heartbeat)
            draining = rec.draining
        # This node's own kinds as hosted now: its record comes back through the watch a
        # moment after host() announced a new kind ("no node serves kind" meanwhile).
        kinds = frozenset(self._host.kinds) if rec.node_id == local.node_id else frozenset(rec.kinds)
        return NodeInfo(
            node_id=rec.node_id,
            kinds=kinds,
            capacity=capacity,
            reserved=reserved,
            load=NodeLoad(
                agents=agents,
                mailbox_backlog=int(load.get("mailbox_backlog", 0)),
                cpu=_fraction(load.get("cpu")),
                memory=_fraction(load.get("memory")),
                network=_fraction(load.get("network")),
            ),
            tags=frozenset(rec.tags),
            weight=rec.weight if rec.weight > 0 else 1.0,
            live=not draining,
            max_agents=max_agents,
        )

    def note_placed(self, node: str) -> None:
        """Count an agent this node placed on ``node`` until ``node``'s next heartbeat."""
        rec = self._membership.members().get(node)
        if rec is None:
            return
        seen, placed = self._placed.get(node, (0.0, 0))
        self._placed[node] = (rec.heartbeat_at, placed + 1 if seen == rec.heartbeat_at else 1)

    def locate(self, address: str) -> str | None:
        """The node the directory cache names for ``address``."""
        kind, _, agent_id = address.partition("/")
        rec = self._directory.lookup(kind, agent_id)
        return rec.node if rec is not None else None


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return min(1.0, max(0.0, float(value)))
