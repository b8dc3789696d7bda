"""A cluster node process for tests: hosts Counter and Keeper, prints READY, exits on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

from natsagents import ClusterSettings, Mesh
from tests.agents import Counter, Keeper


async def main(url: str, prefix: str, node: str, lease: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    settings = ClusterSettings(node_id=node, lease=float(lease), rebalance=False, delivery=None)
    async with Mesh.connect(url, prefix=prefix, name=node, cluster=settings) as mesh:
        await mesh.host(Counter, Keeper)
        print("READY", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
