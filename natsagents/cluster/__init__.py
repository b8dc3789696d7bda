"""Cluster layer: placement (hash ring with bounded loads, resource-aware scoring) and
membership (heartbeats in a KV bucket, leases judged on the observer's clock), the
directory (single activation with epoch fencing), leader election, rebalancing plans,
the node that wires them into activation (``node.py`` composing one module per
responsibility) and the cluster front a mesh delegates to (``view.py``).
"""

from ..errors import ClusterAtCapacity
from .directory import AgentActiveElsewhere, Claim, Directory, DirectoryRecord, Status
from .leader import LeaderLease
from .membership import MemberRecord, Membership
from .node import ClusterNode
from .partition import PartitionEvent, PartitionMonitor, PartitionState
from .placement import Hints, NodeInfo, NodeLoad, Placer, Resources, ScoreWeights
from .ring import HashRing, NoNodes
from .settings import STRATEGIES, ClusterSettings

__all__ = [
    "STRATEGIES",
    "AgentActiveElsewhere",
    "Claim",
    "ClusterAtCapacity",
    "ClusterNode",
    "ClusterSettings",
    "Directory",
    "DirectoryRecord",
    "HashRing",
    "Hints",
    "LeaderLease",
    "MemberRecord",
    "Membership",
    "NoNodes",
    "NodeInfo",
    "NodeLoad",
    "PartitionEvent",
    "PartitionMonitor",
    "PartitionState",
    "Placer",
    "Resources",
    "ScoreWeights",
    "Status",
]
