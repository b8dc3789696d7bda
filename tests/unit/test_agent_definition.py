"""Malformed agent classes fail when they are defined; validators follow type hints."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Literal

import pytest

import natsagents as na
from natsagents import Agent, action
from natsagents.agent.schema import ParamError, validator_for


def define(body: dict[str, Any], **class_attrs: Any) -> type[Agent]:
    return type("Bad", (Agent,), {**body, **class_attrs})


def test_sync_action_is_rejected() -> None:
    def add(self, by: int) -> int:  # type: ignore[no-untyped-def]
        return by

    with pytest.raises(na.ActionDefinitionError, match="async def") as info:
        define({"add": action(add)})
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("async def a(self, x): pass", "needs a type annotation"),
        ("async def a(self, *xs: int): pass", r"\*args"),
        ("async def a(self, **kw: int): pass", r"\*\*kwargs"),
        ("async def a(self, x: int, /): pass", "positional-only"),
        ("async def a(self, _x: int): pass", "must not start"),
        ("async def a(self, x: set[object] | socket.socket): pass", "unsupported"),
        ("async def a(x: int): pass", "'self'"),
        ("async def a(self, x: 'Undefined'): pass", "cannot resolve"),
    ],
)
def test_malformed_actions(source: str, match: str) -> None:
    namespace: dict[str, Any] = {}
    exec("import socket\n" + source, namespace)
    with pytest.raises(na.ActionDefinitionError, match=match):
        define({"a": action(namespace["a"])})


def test_reserved_action_names_and_bad_options() -> None:
    async def on_start(self) -> None:  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(na.ActionDefinitionError, match="reserved"):
        define({"on_start": action(on_start)})
    with pytest.raises(na.ActionDefinitionError):
        define({}, mailbox_size=0)
    with pytest.raises(na.ActionDefinitionError):
        define({}, max_concurrency="2")
    with pytest.raises(na.ActionDefinitionError):
        define({}, kind="bad kind")
    with pytest.raises(na.ActionDefinitionError):
        action(42)  # type: ignore[call-overload]


def test_actions_are_collected_and_inherited() -> None:
    class Base(Agent):
        @action
        async def ping(self) -> str:
            return "pong"

    class Child(Base):
        kind = "ChildKind"

        @action(name="renamed", idempotent=True)
        async def other(self, n: int = 3) -> int:
            return n

    assert Base.kind == "Base"
    assert set(Child.__actions__) == {"ping", "renamed"}
    spec = Child.__actions__["renamed"]
    assert spec.idempotent and spec.params[0].name == "n" and not spec.params[0].required
    assert spec.bind({}) == {}
    assert spec.bind({"n": 5}) == {"n": 5}
    with pytest.raises(ParamError):
        spec.bind({"n": 1.5})
    with pytest.raises(ParamError):
        spec.bind([1])


@dataclasses.dataclass
class Inner:
    a: int


@dataclasses.dataclass
class Outer:
    inner: Inner
    items: list[Inner] = dataclasses.field(default_factory=list)


@pytest.mark.parametrize(
    ("hint", "value", "expected"),
    [
        (int, 3, 3),
        (float, 3, 3.0),
        (bool, True, True),
        (str, "s", "s"),
        (bytes, b"b", b"b"),
        (None, None, None),
        (int | None, None, None),
        (list[int], [1, 2], [1, 2]),
        (tuple[int, ...], [1, 2], (1, 2)),
        (tuple[int, str], [1, "x"], (1, "x")),
        (set[int], [1, 1, 2], {1, 2}),
        (frozenset[str], ["a"], frozenset({"a"})),
        (dict[str, list[int]], {"k": [1]}, {"k": [1]}),
        (Literal["a", 1], 1, 1),
        (Any, {"x": object}, {"x": object}),
        (Outer, {"inner": {"a": 1}, "items": [{"a": 2}]}, Outer(Inner(1), [Inner(2)])),
        (
            datetime.datetime,
            datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
            datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        ),
    ],
)
def test_validators_accept_and_convert(hint: Any, value: Any, expected: Any) -> None:
    assert validator_for(hint)(value, "p") == expected


@pytest.mark.parametrize(
    ("hint", "value", "path"),
    [
        (int, True, "p"),
        (int, 1.0, "p"),
        (float, "1", "p"),
        (str, b"x", "p"),
        (list[int], [1, "2"], "p[1]"),
        (dict[str, int], {"a": "b"}, "p.a"),
        (tuple[int, str], [1], "p"),
        (Literal["a"], "b", "p"),
        (Literal[1], True, "p"),
        (Outer, {"inner": {}}, "p.inner.a"),
        (Outer, {"inner": {"a": 1}, "x": 1}, "p"),
        (int | None, "x", "p"),
    ],
)
def test_validators_reject_with_a_path(hint: Any, value: Any, path: str) -> None:
    with pytest.raises(ParamError) as info:
        validator_for(hint)(value, "p")
    assert info.value.path == path


def test_action_names_must_fit_the_wire() -> None:
    async def f(self) -> None:  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(na.ActionDefinitionError, match="Na-Action"):
        define({"f": action(name="do-it")(f)})
