"""Rebalancing plans: which agents to move so every node holds its weighted share.

Pure functions; the leader-elected controller in ``node.py`` executes the moves.

The plan moves the fewest agents that bring every node to its integer target (largest
remainder of ``total * weight / Σ weight``), and only when some node is out of its band
(``imbalance``) so small fluctuations cause no churn. Donors give away the agents whose
consistent-hash home (over the new node set) is a recipient first, so agents keep their
ring affinity; when a node joins a cluster of N, about ``1/(N+1)`` of the agents move,
all to it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ..errors import ConfigurationError
from .ring import HashRing, hash64

__all__ = ["Move", "plan_moves", "targets"]


@dataclass(frozen=True, slots=True)
class Move:
    agent: str  # "Kind/id"
    source: str
    target: str


def targets(total: int, weights: Mapping[str, float], current: Mapping[str, int] | None = None) -> dict[str, int]:
    """Integer shares of ``total`` proportional to ``weights`` (largest remainder).

    Ties among remainders go to nodes that hold more now (fewer moves), then by name.

    Raises:
        ConfigurationError: no nodes, or a weight that is not > 0.
    """
    if not weights:
        raise ConfigurationError("targets need at least one node")
    if any(not w > 0 for w in weights.values()):
        raise ConfigurationError("node weights must be > 0")
    current = current or {}
    whole = sum(weights.values())
    quota = {n: total * w / whole for n, w in weights.items()}
    out = {n: math.floor(q) for n, q in quota.items()}
    left = total - sum(out.values())
    order = sorted(weights, key=lambda n: (-(quota[n] - out[n]), -current.get(n, 0), n))
    for n in order[:left]:
        out[n] += 1
    return out


def plan_moves(
    assignment: Mapping[str, str],
    weights: Mapping[str, float],
    *,
    pinned: Collection[str] = (),
    imbalance: float = 0.1,
    vnodes: int = 160,
    limits: Mapping[str, int] | None = None,
) -> list[Move]:
    """Moves that rebalance ``assignment`` (agent → node) over the nodes in ``weights``.

    Agents on nodes not in ``weights`` (dead, draining, not hosting the kind) are not
    counted and not moved here: re-placing them is the caller's job. ``pinned`` agents
    stay where they are but count toward their node's load.

    Args:
        assignment: where each agent is now.
        weights: live nodes that may hold these agents, with their weights.
        pinned: agents that must not move.
        imbalance: nothing moves unless a node holds more than ``(1 + imbalance)`` x its
            quota + 1 or less than ``(1 - imbalance)`` x quota - 1.
        limits: most agents a node may still receive (its ``max_agents`` less what it
            holds of every kind); a node left out has no limit. Donors keep what no
            recipient has room for.

    Returns:
        Moves in a deterministic order (by source, then agent hash).
    """
    if not weights:
        return []
    placed = {a: n for a, n in assignment.items() if n in weights}
    total = len(placed)
    if total == 0:
        return []
    counts = dict.fromkeys(weights, 0)
    for node in placed.values():
        counts[node] += 1
    whole = sum(weights.values())
    out_of_band = False
    for n, w in weights.items():
        quota = total * w / whole
        if counts[n] > quota * (1 + imbalance) + 1 or counts[n] < quota * (1 - imbalance) - 1:
            out_of_band = True
            break
    if not out_of_band:
        return []
    want = targets(total, weights, counts)
    room = {n: want[n] - counts[n] for n in weights}  # > 0: recipient
    for n, limit in (limits or {}).items():
        if room.get(n, 0) > 0:
            room[n] = min(room[n], max(0, limit))
    ring = HashRing(dict(weights), vnodes=vnodes)
    moves: list[Move] = []
    pinned_set = set(pinned)
    by_node: dict[str, list[str]] = {n: [] for n in weights}
    for agent, node in placed.items():
        if agent not in pinned_set:
            by_node[node].append(agent)
    for source in sorted(weights):
        excess = -room[source]
        if excess <= 0:
            continue
        candidates = sorted(by_node[source], key=lambda a: (hash64(a), a))
        homed = [a for a in candidates if room.get(ring.owner(a), 0) > 0 and ring.owner(a) != source]
        homed_set = set(homed)
        rest = [a for a in candidates if a not in homed_set]
        for agent in homed + rest:
            if excess <= 0:
                break
            target = next((n for n in ring.preference(agent) if room[n] > 0 and n != source), None)
            if target is None:
                break
            moves.append(Move(agent, source, target))
            room[target] -= 1
            room[source] += 1
            excess -= 1
    return moves
