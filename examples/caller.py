"""Talk to ``Counter/<id>`` served by ``host.py`` in another process.

    python examples/caller.py --servers nats://127.0.0.1:4222 --id c-1

The caller does not import the agent class: it addresses the agent by ``Kind/id`` and
NATS delivers to whichever host has it (activating it on demand).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from natsagents import AgentError, ConnectError, Mesh, all_of


async def talk(servers: str | None, prefix: str, agent_id: str) -> None:
    async with Mesh.connect(servers, prefix=prefix, default_timeout=5.0) as mesh:
        counter = mesh.ref(f"Counter/{agent_id}")
        print("add(by=2) ->", await counter.call("add", by=2))

        await counter.send("add", by=10)  # fire-and-forget: returns once the mailbox has it
        print("get()     ->", await counter.call("get"))  # the send ran first: one mailbox, in order

        # Several requests at once, one per counter, awaited together.
        others = [mesh.ref("Counter", f"{agent_id}-{i}").request("add", by=i) for i in range(1, 4)]
        print("all_of    ->", await all_of(*others))

        try:
            await counter.call("add", by="ten")
        except AgentError as exc:  # BadRequest: the parameter is not an int
            print(f"add(by='ten') -> {type(exc).__name__}: {exc.message}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", help="NATS URLs (default: $NATS_URL or nats://127.0.0.1:4222)")
    parser.add_argument("--prefix", default="na", help="subject prefix shared with the hosts")
    parser.add_argument("--id", default="c-1", help="which counter to use (default: c-1)")
    args = parser.parse_args()
    try:
        asyncio.run(talk(args.servers, args.prefix, args.id))
    except ConnectError as exc:
        sys.exit(f"cannot reach NATS: {exc}")
