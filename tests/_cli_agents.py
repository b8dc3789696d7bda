"""Agent kinds for the ``natsagents node --module tests._cli_agents`` tests.

The tests host the same classes in-process too, so both sides agree on the kinds.
"""

from __future__ import annotations

import asyncio

from natsagents import Agent, action
from tests import agents as shared


class Tally(shared.Counter):
    """One number per id (persisted after every action, as by default); ``Counter``'s
    actions under this module's own kind."""


class Echo(Agent):
    """Answers pings; keeps nothing."""

    persistence = "none"

    @action
    async def ping(self, text: str = "pong") -> str:
        return text


class Greeter(Agent):
    """A kind whose wire name differs from its class name."""

    kind = "Greeter-v2"

    @action
    async def hello(self, name: str) -> str:
        return f"hello {name}"


class Sticky(Agent):
    """Never finishes stopping: lets a test interrupt a node in the middle of its drain."""

    @action
    async def touch(self) -> bool:
        return True

    async def on_stop(self) -> None:
        await asyncio.Event().wait()


class NotAnAgent:
    """A class that ``node --module`` must ignore."""
