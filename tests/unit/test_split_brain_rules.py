"""Split brain without a server: ``conflict_resolution`` and ``split_brain_allowed`` are
checked when the class is defined; the version fields of a state record round-trip (old
records still load, garbage is refused); the node's resolution counts what last-write-wins
overwrote and reaches the same state whatever the order the siblings arrive in."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest

from natsagents import ActionDefinitionError, Agent, action
from natsagents.cluster.conflicts import Conflicts, overwritten_changes
from natsagents.crdt import HLC, Sibling, Timestamp, VersionVector
from natsagents.crdt.resolve import last_write_wins
from natsagents.errors import NatsAgentsError
from natsagents.observability import Metrics
from natsagents.runtime.activation import Activation
from natsagents.state.store import NO_STAMP, StateStore
from natsagents.tasks import TaskGroup
from natsagents.wire import codec


class LwwCounter(Agent):
    consistency = "eventual"
    partition_strategy = "split_brain_allowed"

    @action
    async def add(self, by: int) -> None:
        self.state["n"] = self.state.get("n", 0) + by


class UnionSet(LwwCounter):
    conflict_resolution = "merge"

    def merge_states(self, a: Any, b: Any) -> Any:
        return {"items": sorted(set(a.get("items", [])) | set(b.get("items", [])))}


class Smallest(LwwCounter):
    conflict_resolution = "vector_clock"
    seen: list[list[Any]] = []

    def resolve(self, siblings: Sequence[Sibling[Any]]) -> Any:
        Smallest.seen.append([s.value for s in siblings])
        return min((s.value for s in siblings), key=lambda v: v.get("n", 0))


def _max(siblings: Sequence[Sibling[Any]]) -> Any:
    return max((s.value for s in siblings), key=lambda v: v.get("n", 0))


class ByCallable(LwwCounter):
    conflict_resolution = _max


class Broken(LwwCounter):
    conflict_resolution = "merge"

    def merge_states(self, a: Any, b: Any) -> Any:
        raise RuntimeError("bug in merge_states")


# -- definition ---------------------------------------------------------------------------


def test_split_brain_allowed_is_refused_on_strong_and_session_kinds() -> None:
    for mode in ("strong", "session"):
        with pytest.raises(ActionDefinitionError, match=r"split_brain_allowed.*needs consistency 'eventual'"):
            type(f"Bad{mode}", (Agent,), {"consistency": mode, "partition_strategy": "split_brain_allowed"})
    assert LwwCounter.conflict_resolution == "last_write_wins"


def test_conflict_resolution_is_checked_at_class_definition() -> None:
    with pytest.raises(ActionDefinitionError, match="conflict_resolution must be one of"):
        type("Unknown", (Agent,), {"consistency": "eventual", "conflict_resolution": "newest"})
    with pytest.raises(ActionDefinitionError, match="needs the agent to define resolve"):
        type("NoResolve", (Agent,), {"consistency": "eventual", "conflict_resolution": "vector_clock"})
    with pytest.raises(ActionDefinitionError, match="needs the agent to define merge_states"):
        type("NoMerge", (Agent,), {"consistency": "eventual", "conflict_resolution": "merge"})
    assert callable(ByCallable.conflict_resolution)
    for name in ("resolve", "merge_states"):  # reserved: agent methods, not wire actions
        with pytest.raises(ActionDefinitionError, match="reserved"):
            type("Reserved", (Agent,), {"x": action(name=name)(_async_noop)})


async def _async_noop(self: Any) -> None: ...


# -- the stored record ----------------------------------------------------------------------


def test_a_record_carries_its_version_and_siblings_and_old_records_still_load() -> None:
    vv = VersionVector({"nA": 3, "nC": 7})
    stamp = Timestamp(1_700_000_000_000, 2, "nC")
    sibling = Sibling({"n": 9}, VersionVector({"nC": 9}), Timestamp(1_700_000_000_500, 0, "nC"))
    value = StateStore.with_extras(
        StateStore.encode({"n": 5}, 4), [("m1", 10**13, None)], 12, vv=vv, stamp=stamp, siblings=[sibling]
    )
    body = codec.decode(value)
    assert body["vv"] == {"t": "vv", "v": 1, "c": {"nA": 3, "nC": 7}}
    assert body["hlc"] == [1_700_000_000_000, 2, "nC"]
    vv9 = {"t": "vv", "v": 1, "c": {"nC": 9}}
    assert body["siblings"] == [{"data": {"n": 9}, "vv": vv9, "hlc": sibling.stamp.to_obj()}]
    got = StateStore.parse(value, 7)
    assert (got.data, got.epoch, got.revision, got.seq) == ({"n": 5}, 4, 7, 12)
    assert got.vv == vv and got.stamp == stamp and got.siblings == (sibling,)
    old = StateStore.parse(StateStore.encode({"n": 1}, 1), 3)
    assert old.vv is None and old.stamp is None and old.siblings == ()
    assert old.sibling() == Sibling({"n": 1}, VersionVector(), NO_STAMP)


@pytest.mark.parametrize(
    "extra",
    [
        {"vv": {"t": "vv", "v": 1, "c": {"nA": -1}}},
        {"vv": "garbage"},
        {"hlc": [1, 2]},
        {"hlc": [1, 2, ""]},
        {"siblings": "x"},
        {"siblings": [{"data": 1}]},
        {"siblings": [{"data": 1, "vv": {"t": "vv", "v": 1, "c": {}}, "hlc": [0, 0, "n"]}] * 17},
    ],
)
def test_a_record_with_garbage_versions_is_refused(extra: dict[str, Any]) -> None:
    with pytest.raises(NatsAgentsError, match="not a state record"):
        StateStore.parse(codec.encode({"epoch": 1, "data": {}, **extra}))


# -- resolution on a node -------------------------------------------------------------------


def _conflicts(node: str = "nA") -> Conflicts:
    return Conflicts(node, cast(Any, None), Metrics(), TaskGroup("test"), lambda *_: None)


def _act(cls: type[Agent]) -> Activation:
    return cast(Activation, SimpleNamespace(agent=cls(), kind=cls.kind, address=f"{cls.kind}/x"))


def _siblings() -> list[Sibling[Any]]:
    base = {"nA": 4}
    a = Sibling({"n": 10, "items": ["a", "b"]}, VersionVector({**base, "nB": 3}), Timestamp(1000, 0, "nB"))
    c = Sibling({"n": 12, "items": ["a", "c"]}, VersionVector({**base, "nC": 5}), Timestamp(1000, 0, "nC"))
    d = Sibling({"n": 7, "items": ["d"]}, VersionVector({**base, "nD": 2}), Timestamp(999, 5, "nD"))
    old = Sibling({"n": 4, "items": ["a"]}, VersionVector(base), Timestamp(900, 0, "nA"))  # superseded
    return [a, c, d, old]


def test_last_write_wins_counts_the_changes_it_overwrote() -> None:
    conflicts = _conflicts()
    res = conflicts.resolve(_act(LwwCounter), _siblings())
    # Equal wall and logical: the node id breaks the tie (nC > nB), deterministically.
    assert res.value["n"] == 12 and res.stamp == Timestamp(1000, 0, "nC")
    assert res.version == VersionVector({"nA": 4, "nB": 3, "nC": 5, "nD": 2})
    assert overwritten_changes(res) == 3 + 2  # nB's 3 and nD's 2; the superseded base is not a loss
    assert conflicts.total("overwritten") == 5 and conflicts.total("resolved") == 1
    # No conflict (one survives the frontier): nothing counted.
    conflicts.resolve(_act(LwwCounter), _siblings()[3:])
    assert conflicts.total("resolved") == 1


def test_every_rule_reaches_the_same_state_whatever_the_arrival_order() -> None:
    for cls in (LwwCounter, UnionSet, Smallest, ByCallable, Broken):
        outcomes = set()
        for order in itertools.permutations(_siblings()):
            res = _conflicts().resolve(_act(cls), list(order))
            outcomes.add((codec.encode(res.value), res.version, res.stamp))
        assert len(outcomes) == 1, cls
    union = _conflicts().resolve(_act(UnionSet), _siblings())
    assert union.value == {"items": ["a", "b", "c", "d"]} and overwritten_changes(union) == 0
    assert _conflicts().resolve(_act(Smallest), _siblings()).value["n"] == 7
    assert all(len(seen) == 3 for seen in Smallest.seen)  # the concurrent ones only
    assert _conflicts().resolve(_act(ByCallable), _siblings()).value["n"] == 12
    broken = _conflicts().resolve(_act(Broken), _siblings())  # falls back to last_write_wins
    assert broken.value == last_write_wins(_siblings()).value


def test_stamps_follow_the_clock_of_the_versions_seen() -> None:
    clock = HLC("nA", clock=lambda: 5)
    assert clock.now() < Timestamp(10_000, 0, "nB")
    conflicts = _conflicts()
    conflicts._observe(Timestamp(10_000, 3, "nB"))
    assert conflicts.hlc.now() > Timestamp(10_000, 3, "nB")
    conflicts._observe(NO_STAMP)  # a record without a stamp moves nothing
