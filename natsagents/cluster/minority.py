"""What a copy's messages get while its node is on the minority side of a partition
(``partition.PartitionMonitor``: ``quorum_lost``), by the kind's ``partition_strategy``:
``pause_minority`` answers ``PartitionError``, ``continue_degraded`` serves degraded
(``runtime.hooks.DEGRADED``: reads on the last known state, writes queued by
``cluster.degraded``). ``Ownership`` asks before each message and when a save fails."""

from __future__ import annotations

from ..errors import PartitionError, Unavailable
from ..runtime.activation import Activation
from ..runtime.hooks import DEGRADED, Degraded
from .partition import PartitionMonitor

__all__ = ["cut_off_while_storing", "minority_answer"]


def minority_answer(
    partition: PartitionMonitor | None, act: Activation, node_id: str, lease: float
) -> PartitionError | Degraded | None:
    """``PartitionError`` (the kind pauses there), :data:`DEGRADED` (it continues
    degraded), or ``None``: the node is not on the minority side, or the kind does
    neither."""
    if partition is None:
        return None
    strategy = type(act.agent).partition_strategy
    if strategy not in ("pause_minority", "continue_degraded"):
        return None
    state = partition.state
    if not state.minority:
        return None
    if strategy == "continue_degraded":
        return DEGRADED
    return PartitionError(
        f"node {node_id} is cut off from the cluster's majority ({state.status}): "
        f"{act.address} pauses here (pause_minority) until the partition heals",
        agent=act.address,
        # Callers resend for this long (same id): the majority may own it by then.
        details={"node": node_id, "state": state.status, "retry_for": lease},
    )


def cut_off_while_storing(act: Activation) -> Unavailable:
    """A save that failed because the node was cut off, for a kind that continues
    degraded: not stored (rolled back); the caller's resend (same id) is queued."""
    return Unavailable(
        f"{act.address} was cut off from the majority while storing: not stored; send it again to queue it",
        agent=act.address,
        details={"retry": True},
    )
