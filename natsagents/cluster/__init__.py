"""Cluster layer: placement (hash ring with bounded loads, resource-aware scoring).

Pure placement code lives in :mod:`.ring` and :mod:`.placement`; membership, the
directory, migration and rebalancing build on it.
"""

from .placement import ClusterAtCapacity, Hints, NodeInfo, NodeLoad, Placer, Resources, ScoreWeights
from .ring import HashRing, NoNodes

__all__ = [
    "ClusterAtCapacity",
    "HashRing",
    "Hints",
    "NoNodes",
    "NodeInfo",
    "NodeLoad",
    "Placer",
    "Resources",
    "ScoreWeights",
]
