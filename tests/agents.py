"""Agent classes shared by the tests (also imported by host subprocesses)."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from typing import Any, Literal

from natsagents import Agent, action


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


class Counter(Agent):
    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action
    async def get(self) -> int:
        return int(self.state.get("n", 0))

    @action(idempotent=True)
    async def whoami(self) -> dict[str, Any]:
        ctx = self.context
        return {
            "id": self.id,
            "kind": self.kind,
            "message_id": ctx.message_id,
            "correlation_id": ctx.correlation_id,
            "caller": ctx.caller,
            "deadline": ctx.deadline,
        }

    @action
    async def fail(self, message: str = "kaboom") -> None:
        raise RuntimeError(message)

    @action
    async def sleep(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        self.state["slept"] = self.state.get("slept", 0) + 1
        return seconds

    @action
    async def echo(self, value: Any) -> Any:
        return value

    @action
    async def big(self, size: int) -> bytes:
        return b"x" * size

    @action
    async def forward(self, target: str, by: int = 1) -> int:
        """Call another agent (correlation and deadline propagate)."""
        result: int = await self.ref(target).call("add", by=by)
        return result

    @action
    async def ask_whoami(self, target: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.ref(target).call("whoami")
        return result


class Typed(Agent):
    @action
    async def shapes(
        self,
        point: Point,
        color: Color,
        tags: list[str],
        mode: Literal["a", "b"] = "a",
        scale: float = 1.0,
        maybe: int | None = None,
        pair: tuple[int, str] = (0, ""),
        meta: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        return {
            "x": point.x,
            "y": point.y,
            "color": color.value,
            "tags": tags,
            "mode": mode,
            "scale": scale,
            "scale_type": type(scale).__name__,
            "maybe": maybe,
            "pair": list(pair),
            "meta": meta,
        }


class Gate(Agent):
    """Blocks in ``wait`` until ``open`` is called; records concurrency."""

    mailbox_size = 3

    def initial_state(self) -> dict[str, Any]:
        return {"running": 0, "max_running": 0, "done": 0}

    async def on_start(self) -> None:
        self.event = asyncio.Event()

    @action
    async def wait(self) -> int:
        self.state["running"] += 1
        self.state["max_running"] = max(self.state["max_running"], self.state["running"])
        try:
            await self.event.wait()
        finally:
            self.state["running"] -= 1
        self.state["done"] += 1
        return int(self.state["done"])

    @action
    async def open(self) -> None:
        self.event.set()


class WideGate(Gate):
    kind = "WideGate"
    mailbox_size = 50
    max_concurrency = 4


class Lifecycle(Agent):
    events: list[str] = []

    async def on_start(self) -> None:
        Lifecycle.events.append(f"start:{self.id}")

    async def on_stop(self) -> None:
        Lifecycle.events.append(f"stop:{self.id}")

    @action
    async def ping(self) -> str:
        return "pong"


class SpawnOnly(Agent):
    activate_on_demand = False

    @action
    async def ping(self) -> str:
        return "pong"


class BrokenStart(Agent):
    async def on_start(self) -> None:
        raise ValueError("cannot start")

    @action
    async def ping(self) -> str:
        return "pong"


class Keeper(Agent):
    """A permanent agent: re-placed at once when its node dies."""

    restart = "permanent"

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action
    async def get(self) -> int:
        return int(self.state.get("n", 0))
