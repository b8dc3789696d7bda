"""The agent kinds shared by ``host.py`` (which serves them) and ``caller.py`` (which calls them).

Only the host needs this module: a caller talks to ``Counter/<id>`` by name.
"""

from __future__ import annotations

from natsagents import Agent, action


class Counter(Agent):
    """One number per id. Each ``Counter/<id>`` handles its messages one at a time."""

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action
    async def get(self) -> int:
        return int(self.state.get("n", 0))

    @action
    async def reset(self) -> None:
        self.state["n"] = 0
