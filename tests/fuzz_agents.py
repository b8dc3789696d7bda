"""The agent kinds of the fuzz tests (``tests/integration/test_fuzz.py``, harness
``tests/fuzz.py``); their nodes run as ``tests.node_process`` processes."""

from __future__ import annotations

import asyncio
from typing import Any

from natsagents import Agent, action
from natsagents.crdt import PNCounter

#: Kinds the fuzzer targets (Canary excluded). The last three are the consistency modes
#: other than strong: eventual (write-behind), session (with a read replica on the other
#: node, reached on ``<prefix>.read.…``) and crdt (a copy on every node, deltas, digests
#: and hellos on ``<prefix>.crdt.…``).
FUZZ_KINDS = ("Tally", "Wide", "Typed", "OnlySpawn", "Ephemeral", "Lazy", "Reader", "Merged")


class Canary(Agent):
    """A counter the fuzzer never addresses: only the test's probes change it."""

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action
    async def get(self) -> int:
        return int(self.state.get("n", 0))


class Probes(Agent):
    """The actions every fuzz kind answers alike, whatever its state and mode."""

    @action
    async def echo(self, value: Any = None) -> Any:
        return value

    @action
    async def fail(self, message: str = "kaboom") -> None:
        raise RuntimeError(message[:200])

    @action
    async def slow(self, ms: int = 1) -> int:
        await asyncio.sleep(min(max(ms, 0), 50) / 1000)
        return ms

    @action(idempotent=True)
    async def whoami(self) -> dict[str, Any]:
        ctx = self.context
        return {"id": self.id, "message_id": ctx.message_id, "caller": ctx.caller, "deadline": ctx.deadline}


class Tally(Probes):
    """The fuzzer's main target: a persisted counter with a few more actions."""

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action
    async def get(self) -> int:
        n = self.state.get("n", 0)
        return n if isinstance(n, int) else 0

    @action
    async def big(self, size: int = 0) -> bytes:
        return b"x" * min(max(size, 0), 2 * 1024 * 1024)  # beyond max_payload: payload_too_large

    @action
    async def keep(self, value: Any = None) -> None:
        self.state["kept"] = value  # anything: the state write may fail (too large, unencodable)

    @action
    async def relay(self, target: str, by: int = 1) -> Any:
        """Call another fuzz agent (never a canary), deadline and correlation inherited."""
        kind = target.partition("/")[0]
        if kind not in FUZZ_KINDS:
            raise ValueError(f"relay only to fuzz kinds, not {kind!r}")
        return await self.ref(target).call("add", by=by, timeout=3.0)


class Wide(Tally):
    """Several handlers at once, a small mailbox (overloaded), a throttle."""

    max_concurrency = 4
    mailbox_size = 16
    throttle_backlog = 8


class OnlySpawn(Tally):
    """Activated by explicit spawns only (``not_found`` otherwise)."""

    activate_on_demand = False
    persistence = "manual"


class Ephemeral(Tally):
    """No persisted state; its directory record goes with its node."""

    persistence = "none"
    restart = "temporary"


class Lazy(Tally):
    """Eventual: answers before its state is stored (write-behind every 0.2 s)."""

    consistency = "eventual"
    flush_interval = 0.2


class Reader(Tally):
    """Session: writes as strong; ``get`` is read-only and served by a replica too."""

    consistency = "session"
    read_replicas = 1
    session_wait = 0.1

    @action(read_only=True)
    async def get(self) -> int:
        n = self.state.get("n", 0)
        return n if isinstance(n, int) else 0

    @action(read_only=True)
    async def peek(self, key: str = "n") -> Any:
        return self.state.get(key) if isinstance(key, str) else None


class Merged(Probes):
    """Crdt: a counter with a copy on every node that is asked for it."""

    consistency = "crdt"
    flush_interval = 0.2

    def initial_state(self) -> PNCounter:
        return PNCounter()

    @action
    async def add(self, by: int = 1) -> int:
        self.mutate(self.state.increment(self.replica, by))  # a negative one decrements
        return self.state.value

    @action(read_only=True)
    async def get(self) -> int:
        return self.state.value
