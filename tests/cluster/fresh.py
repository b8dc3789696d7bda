"""Starting a node on a freshly made NATS cluster (shared by the partition tests)."""

from __future__ import annotations

import asyncio

from natsagents import ClusterSettings, Mesh
from natsagents.errors import NatsAgentsError


async def node_on_fresh_cluster(url: str, prefix: str, settings: ClusterSettings, timeout: float = 30.0) -> Mesh:
    """A cluster node on a freshly made cluster: its first heartbeat may find the new members
    stream without a leader yet on a loaded machine (no responders), or a server not yet in
    the JetStream group (no suitable peers, seen in CI three files at a time): try again for
    up to ``timeout`` s."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            return await Mesh.connect(url, prefix=prefix, name=settings.node_id, cluster=settings)
        except NatsAgentsError:
            if loop.time() > end:
                raise
            await asyncio.sleep(0.5)  # a retry's pacing, not a synchronisation
