"""Rebalancing plans (pure): fair integer targets, minimal movement, ring affinity."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natsagents.cluster.rebalance import Move, plan_moves, targets
from natsagents.cluster.ring import HashRing
from natsagents.errors import ConfigurationError


def apply(assignment: dict[str, str], moves: list[Move]) -> dict[str, str]:
    out = dict(assignment)
    for m in moves:
        assert out[m.agent] == m.source
        out[m.agent] = m.target
    return out


def test_targets_split_by_weight_and_sum_to_total() -> None:
    assert targets(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert targets(9, {"a": 2, "b": 1}) == {"a": 6, "b": 3}
    # Ties go to the node that holds more now (fewer moves).
    assert targets(10, {"a": 1, "b": 1, "c": 1}, {"c": 5}) == {"a": 3, "b": 3, "c": 4}
    with pytest.raises(ConfigurationError):
        targets(3, {})
    with pytest.raises(ConfigurationError):
        targets(3, {"a": 0})


def test_a_joining_node_gets_a_quarter_from_the_others() -> None:
    ring = HashRing(["n1", "n2", "n3"])
    agents = [f"Counter/c{i}" for i in range(300)]
    assignment = ring.assign(agents)
    moves = plan_moves(assignment, {"n1": 1, "n2": 1, "n3": 1, "n4": 1})
    assert len(moves) == 75
    assert {m.target for m in moves} == {"n4"}
    after = Counter(apply(assignment, moves).values())
    assert sorted(after.values()) == [75, 75, 75, 75]


def test_no_moves_inside_the_band_and_pinned_agents_stay() -> None:
    balanced = {f"a{i}": f"n{i % 3}" for i in range(30)}
    assert plan_moves(balanced, {"n0": 1, "n1": 1, "n2": 1}) == []
    skewed = {f"a{i}": "n0" for i in range(30)}
    pinned = {f"a{i}" for i in range(15)}
    moves = plan_moves(skewed, {"n0": 1, "n1": 1}, pinned=pinned)
    assert len(moves) == 15 and not {m.agent for m in moves} & pinned


def test_agents_on_unknown_nodes_are_neither_counted_nor_moved() -> None:
    assignment = {"a": "dead", "b": "n1", "c": "n1", "d": "n1", "e": "n1"}
    moves = plan_moves(assignment, {"n1": 1, "n2": 1}, imbalance=0.0)
    assert all(m.agent != "a" for m in moves)
    assert len(moves) == 2  # 4 counted agents: 2 each


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.sampled_from([f"n{i}" for i in range(6)]), st.integers(1, 3), min_size=1),
    st.lists(st.integers(0, 5), max_size=200),
)
def test_plans_reach_the_targets_with_the_fewest_moves(weights: dict[str, int], homes: list[int]) -> None:
    nodes = sorted(weights)
    assignment = {f"Kind/a{i}": nodes[h % len(nodes)] for i, h in enumerate(homes)}
    moves = plan_moves(assignment, weights, imbalance=0.0)
    after = apply(assignment, moves)
    counts = Counter(after.values())
    want = targets(len(assignment), weights, Counter(assignment.values()))
    before = Counter(assignment.values())
    if moves:
        assert {n: counts.get(n, 0) for n in nodes} == want
        # Minimal movement: exactly the surplus of the over-target nodes moves.
        assert len(moves) == sum(max(0, before.get(n, 0) - want[n]) for n in nodes)
    # Every agent moves at most once, never to its own node.
    assert len({m.agent for m in moves}) == len(moves)
    assert all(m.source != m.target for m in moves)
    # Plans are deterministic.
    assert plan_moves(assignment, weights, imbalance=0.0) == moves


def test_limits_cap_what_a_node_receives() -> None:
    """A node at its agent cap (``max_agents``) receives no more than its room: the donor
    keeps the rest rather than the move being refused and taken back."""
    skewed = {f"a{i}": "n0" for i in range(30)}
    moves = plan_moves(skewed, {"n0": 1, "n1": 1, "n2": 1}, limits={"n1": 3})
    received = Counter(m.target for m in moves)
    assert received == {"n1": 3, "n2": 10}
    assert plan_moves(skewed, {"n0": 1, "n1": 1}, limits={"n1": 0}) == []
    assert len(plan_moves(skewed, {"n0": 1, "n1": 1}, limits={"n1": -2})) == 0  # over its cap already
    assert len(plan_moves(skewed, {"n0": 1, "n1": 1}, limits={"n0": 0})) == 15  # a donor's limit is moot
