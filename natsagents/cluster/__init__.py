"""Cluster layer: placement (hash ring with bounded loads, resource-aware scoring) and
membership (heartbeats in a KV bucket, leases judged on the observer's clock).

The directory, single activation, migration and rebalancing build on these.
"""

from .directory import AgentActiveElsewhere, Claim, Directory, DirectoryRecord, Status
from .membership import MemberRecord, Membership
from .placement import ClusterAtCapacity, Hints, NodeInfo, NodeLoad, Placer, Resources, ScoreWeights
from .ring import HashRing, NoNodes

__all__ = [
    "AgentActiveElsewhere",
    "Claim",
    "ClusterAtCapacity",
    "Directory",
    "DirectoryRecord",
    "HashRing",
    "Hints",
    "MemberRecord",
    "Membership",
    "NoNodes",
    "NodeInfo",
    "NodeLoad",
    "Placer",
    "Resources",
    "ScoreWeights",
    "Status",
]
