"""Per-kind consistency options and ``@action(read_only=True)``: checked when the class is
defined; the values this version cannot serve are refused when hosted (integration)."""

from __future__ import annotations

from typing import Any

import pytest

from natsagents import ActionDefinitionError, Agent, ConfigurationError, action
from natsagents.runtime.host import Host


class Plain(Agent):
    @action
    async def add(self) -> None: ...

    @action(read_only=True)
    async def get(self) -> int:
        return 0


def test_defaults_are_todays_behaviour() -> None:
    assert Plain.consistency == "strong"
    assert Plain.__actions__["get"].read_only and not Plain.__actions__["add"].read_only
    assert Plain.__readers__ == frozenset({"get"})


def test_readers_only_with_actor_semantics_and_read_only_actions() -> None:
    class Wide(Agent):
        max_concurrency = 4

        @action(read_only=True)
        async def get(self) -> None: ...

    class Writers(Agent):
        @action
        async def put(self) -> None: ...

    assert Wide.__readers__ is None and Writers.__readers__ is None


def test_eventual_needs_per_action_persistence_and_a_bounded_interval() -> None:
    class Ok(Agent):
        consistency = "eventual"
        flush_interval = 0.05

    assert Ok.flush_interval == 0.05
    for options, match in (
        ({"consistency": "eventual", "persistence": "manual"}, "persistence = 'action'"),
        ({"consistency": "eventual", "persistence": "none"}, "persistence = 'action'"),
        ({"consistency": "linearizable"}, "consistency must be one of"),
        ({"flush_interval": 0}, "flush_interval"),
        ({"flush_interval": 61}, "flush_interval"),
        ({"flush_interval": True}, "flush_interval"),
        ({"flush_interval": "1"}, "flush_interval"),
        ({"read_concurrency": 0}, "read_concurrency"),
        ({"read_concurrency": 2.0}, "read_concurrency"),
    ):
        with pytest.raises(ActionDefinitionError, match=match):
            type("Bad", (Agent,), dict(options))
        assert issubclass(ActionDefinitionError, ConfigurationError)


def test_read_only_must_be_a_bool() -> None:
    with pytest.raises(ActionDefinitionError, match="read_only"):
        action(read_only="yes")  # type: ignore[call-overload]


def test_crdt_kinds_are_hosted_and_serve_on_every_side() -> None:
    cls: Any = type("Multi", (Agent,), {"consistency": "crdt"})
    Host.check_kind(cls)
    assert cls.partition_strategy == "split_brain_allowed"  # set: it serves on every side
    sub: Any = type("Sub", (cls,), {})
    assert sub.partition_strategy == "split_brain_allowed"
    explicit: Any = type("Explicit", (Agent,), {"consistency": "crdt", "partition_strategy": "split_brain_allowed"})
    Host.check_kind(explicit)
    with pytest.raises(ActionDefinitionError, match="a crdt kind keeps serving on every side"):
        type("Paused", (Agent,), {"consistency": "crdt", "partition_strategy": "pause_minority"})
    with pytest.raises(ActionDefinitionError, match="persistence = 'action'"):
        type("Manual", (Agent,), {"consistency": "crdt", "persistence": "manual"})
    with pytest.raises(ActionDefinitionError, match="read_replicas"):
        type("Replicated", (Agent,), {"consistency": "crdt", "read_replicas": 1})
    with pytest.raises(ActionDefinitionError, match="reserved"):
        type("Clash", (Agent,), {"consistency": "crdt", "mutate": action(_noop)})
    Host.check_kind(Plain)


async def _noop(self: Any) -> None:
    return None
