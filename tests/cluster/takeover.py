"""A takeover as a node does it, step by step, for tests that fence a live copy by hand."""

from __future__ import annotations

from natsagents.cluster.directory import Claim
from natsagents.cluster.node import ClusterNode


async def claim_as_successor(node: ClusterNode, kind: str, agent_id: str) -> Claim:
    """Claim ``kind/agent_id`` for ``node`` as if its owner's lease had lapsed (the first
    step of a takeover in ``Ownership.starting``), without activating it there.

    A real successor holds the agent from its claim on (it is starting it), and the old
    copy asks it ``holds`` before it stops (protocol §14.2): so from now on ``node``
    answers that it holds this agent."""
    control = node._control_server
    before = control._holds

    def holds(k: str, i: str) -> bool:
        return (k, i) == (kind, agent_id) or before(k, i)

    control._holds = holds
    return await node.directory.claim(kind, agent_id, node.node_id, is_live=lambda _: False)
