"""A host process for the two-process tests: hosts tests.agents kinds, prints READY."""

from __future__ import annotations

import asyncio
import signal
import sys

from natsagents import Mesh
from tests.agents import Counter, Typed


async def main(url: str, prefix: str, name: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with Mesh.connect(url, prefix=prefix, name=name) as mesh:
        await mesh.host(Counter, Typed)
        print("READY", flush=True)
        await stop.wait()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
