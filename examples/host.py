"""Serve the ``Counter`` kind from this process until Ctrl-C.

    python examples/host.py --servers nats://127.0.0.1:4222

Start as many hosts as you like: each ``Counter/<id>`` is activated on one of them
when it is first called. See ``caller.py`` for the other side.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from agents import Counter

from natsagents import Mesh


async def serve(servers: str | None, prefix: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Mesh.connect(servers, prefix=prefix) as mesh:
        await mesh.host(Counter)
        print(f"hosting Counter on {mesh.server_url} (prefix {mesh.prefix!r}); Ctrl-C to stop", flush=True)
        await stop.wait()
        print(f"stopping; active here: {', '.join(mesh.local_agents()) or 'none'}", flush=True)
    # Leaving the block ran on_stop for every active Counter and closed the connection.


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", help="NATS URLs (default: $NATS_URL or nats://127.0.0.1:4222)")
    parser.add_argument("--prefix", default="na", help="subject prefix shared with the callers")
    args = parser.parse_args()
    asyncio.run(serve(args.servers, args.prefix))
