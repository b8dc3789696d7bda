"""Resource-aware placement: each rule of ``Placer.choose``, and properties over random clusters."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import natsagents as na
from natsagents.cluster import ClusterAtCapacity, Hints, NodeInfo, NodeLoad, Placer, Resources, ScoreWeights

GiB = 1 << 30


def node(
    node_id: str,
    *,
    kinds: frozenset[str] = frozenset({"Counter"}),
    cpu: float = 4.0,
    memory: int = 8 * GiB,
    reserved: Resources = Resources(),
    agents: int = 0,
    load: tuple[float, float, float] = (0.0, 0.0, 0.0),
    tags: frozenset[str] = frozenset(),
    weight: float = 1.0,
    live: bool = True,
    custom: dict[str, float] | None = None,
) -> NodeInfo:
    return NodeInfo(
        node_id,
        kinds=kinds,
        capacity=Resources(cpu=cpu, memory=memory, custom=custom or {}),
        reserved=reserved,
        load=NodeLoad(agents=agents, cpu=load[0], memory=load[1], network=load[2]),
        tags=tags,
        weight=weight,
        live=live,
    )


PLACER = Placer()
THREE = [node("a"), node("b"), node("c")]


# -- value types --------------------------------------------------------------------------


def test_resources_arithmetic() -> None:
    a = Resources(cpu=1.5, memory=GiB, custom={"gpu": 1})
    b = Resources(cpu=0.5, memory=GiB, custom={"ssd": 2})
    total = a + b
    assert total == Resources(cpu=2.0, memory=2 * GiB, custom={"gpu": 1, "ssd": 2})
    assert total - b == a
    assert a.within(total) and b.within(total) and not total.within(a)
    assert not Resources(custom={"gpu": 1}).within(Resources(cpu=64, memory=GiB))  # absent = 0
    assert Resources(custom={"gpu": 0}) == Resources()  # zero amounts are dropped
    assert Resources(cpu=0.1) + Resources(cpu=0.2) - Resources(cpu=0.3) == Resources()  # float slack
    assert Resources(cpu=0.3).within(Resources(cpu=0.1) + Resources(cpu=0.2))
    assert a.remaining(total) == Resources()  # floored at zero
    assert hash(Resources(custom={"x": 1, "y": 2})) == hash(Resources(custom={"y": 2, "x": 1}))
    assert "gpu" in repr(a)
    with pytest.raises(na.ConfigurationError):
        a - total  # releasing more than was reserved


@pytest.mark.parametrize(
    "build",
    [
        lambda: Resources(cpu=-1),
        lambda: Resources(cpu=float("nan")),
        lambda: Resources(memory=-1),
        lambda: Resources(memory=1.5),  # type: ignore[arg-type]
        lambda: Resources(custom={"gpu": -1}),
        lambda: Resources(custom={"": 1}),
        lambda: Resources(custom=[("gpu", 1)]),  # type: ignore[arg-type]
        lambda: NodeLoad(agents=-1),
        lambda: NodeLoad(cpu=1.5),
        lambda: NodeLoad(network=-0.1),
        lambda: NodeInfo(""),
        lambda: NodeInfo("a", weight=0),
        lambda: NodeInfo("a", kinds="Counter"),  # type: ignore[arg-type]
        lambda: Hints(pin="a", avoid=("a",)),
        lambda: Hints(prefer=("",)),
        lambda: Hints(pin=""),
        lambda: ScoreWeights(cpu=-0.1),
        lambda: Placer(tolerance=-1),
        lambda: Placer(vnodes=0),
        lambda: PLACER.choose("Counter", "Counter/x", [node("a"), node("a")]),
        lambda: PLACER.choose("Counter", "Counter/x", THREE, load_factor=0.5),
    ],
)
def test_invalid_values_raise_configuration_error(build: object) -> None:
    with pytest.raises(na.ConfigurationError):
        build()  # type: ignore[operator]


def test_value_types_normalise_collections() -> None:
    info = NodeInfo("a", kinds={"Counter"}, tags=["ssd"])  # type: ignore[arg-type]
    assert info.kinds == frozenset({"Counter"}) and info.tags == frozenset({"ssd"})
    assert Hints(prefer=["a"], avoid=["b"]).prefer == ("a",)  # type: ignore[arg-type]
    assert ScoreWeights(cpu=0, memory=0, network=0).score(NodeLoad(cpu=1.0)) == 0.0
    assert ScoreWeights().score(NodeLoad(cpu=1.0, memory=0.5, network=0.0)) == pytest.approx(0.6)


# -- rule 1: eligibility --------------------------------------------------------------------


def test_only_live_nodes_hosting_the_kind_are_candidates() -> None:
    nodes = [node("dead", live=False), node("other", kinds=frozenset({"Chat"})), node("ok")]
    for i in range(50):
        assert PLACER.choose("Counter", f"Counter/{i}", nodes) == "ok"
    with pytest.raises(ClusterAtCapacity) as info:
        PLACER.choose("Billing", "Billing/1", nodes)
    err = info.value
    assert isinstance(err, na.NatsAgentsError)
    assert (err.kind, err.agent, err.needs) == ("Billing", "Billing/1", Resources())
    assert set(err.rejected) == {"dead", "other", "ok"}
    assert err.rejected["dead"] == "not live"


def test_resources_must_fit_in_capacity_minus_reserved() -> None:
    nodes = [
        node("small", cpu=1.0),
        node("busy", cpu=8.0, reserved=Resources(cpu=7.5)),
        node("big", cpu=8.0, reserved=Resources(cpu=4.0)),
        node("gpu", cpu=8.0, custom={"gpu": 1}),
    ]
    needs = Resources(cpu=2.0, memory=GiB)
    chosen = {PLACER.choose("Counter", f"Counter/{i}", nodes, needs=needs) for i in range(60)}
    assert chosen == {"big", "gpu"}
    gpu_needs = Resources(cpu=1.0, custom={"gpu": 1})
    assert {PLACER.choose("Counter", f"Counter/{i}", nodes, needs=gpu_needs) for i in range(20)} == {"gpu"}
    with pytest.raises(ClusterAtCapacity) as info:
        PLACER.choose("Counter", "Counter/x", nodes, needs=Resources(memory=64 * GiB))
    assert "not enough free resources" in info.value.rejected["big"]


def test_required_tags() -> None:
    nodes = [node("a", tags=frozenset({"ssd"})), node("b", tags=frozenset({"ssd", "eu"})), node("c")]
    hints = Hints(tags=frozenset({"ssd", "eu"}))
    assert {PLACER.choose("Counter", f"Counter/{i}", nodes, hints=hints) for i in range(40)} == {"b"}
    with pytest.raises(ClusterAtCapacity) as info:
        PLACER.choose("Counter", "Counter/x", nodes, hints=Hints(tags=frozenset({"us"})))
    assert "missing tags" in info.value.rejected["a"]


# -- rule 2: pin ----------------------------------------------------------------------------


def test_pin_chooses_the_pinned_node_even_when_loaded() -> None:
    nodes = [node("a", agents=100, load=(0.9, 0.9, 0.9)), node("b"), node("c")]
    assert PLACER.choose("Counter", "Counter/x", nodes, hints=Hints(pin="a")) == "a"


@pytest.mark.parametrize("pin", ["dead", "nope", "small"])
def test_pin_to_an_unsuitable_node_fails(pin: str) -> None:
    nodes = [node("dead", live=False), node("small", cpu=0.5), node("ok")]
    with pytest.raises(ClusterAtCapacity) as info:
        PLACER.choose("Counter", "Counter/x", nodes, needs=Resources(cpu=1), hints=Hints(pin=pin))
    assert repr(pin) in str(info.value) and pin in info.value.rejected


# -- rule 3: avoid --------------------------------------------------------------------------


def test_avoid_removes_nodes_and_is_hard() -> None:
    hints = Hints(avoid=("a", "b"))
    assert {PLACER.choose("Counter", f"Counter/{i}", THREE, hints=hints) for i in range(30)} == {"c"}
    nodes = [node("a"), node("b", cpu=0.5)]
    with pytest.raises(ClusterAtCapacity) as info:  # only the avoided node fits: still avoided
        PLACER.choose("Counter", "Counter/x", nodes, needs=Resources(cpu=1), hints=Hints(avoid=("a",)))
    assert info.value.rejected["a"] == "avoided by hints"


# -- rule 4: bounded load -------------------------------------------------------------------


def test_nodes_at_the_load_bound_are_skipped() -> None:
    # 29 agents + 1 new over 3 nodes: bound ceil(1.25 * 30 / 3) = 13; "a" holds 13.
    nodes = [node("a", agents=13), node("b", agents=8, load=(0.9, 0.9, 0.9)), node("c", agents=8, load=(0.9, 0.9, 0.9))]
    for i in range(40):
        assert PLACER.choose("Counter", f"Counter/{i}", nodes) != "a"
    nodes[0] = node("a", agents=12)  # one below the bound: the idle node wins again
    assert PLACER.choose("Counter", "Counter/0", nodes) == "a"


def test_weight_scales_the_load_bound() -> None:
    # 40 + 1 agents, weights 3:1 -> bounds ceil(1.25*41*3/4) = 39 and ceil(1.25*41/4) = 13.
    nodes = [node("big", agents=30, weight=3.0), node("small", agents=10, load=(1, 1, 1))]
    assert PLACER.choose("Counter", "Counter/x", nodes) == "big"
    nodes = [node("big", agents=39, weight=3.0), node("small", agents=1, load=(1, 1, 1))]
    assert PLACER.choose("Counter", "Counter/x", nodes) == "small"


# -- rule 5: colocate -----------------------------------------------------------------------


def test_colocate_with_an_active_agent() -> None:
    where = {"Session/s-1": "b"}
    hints = Hints(colocate_with="Session/s-1")
    for i in range(20):
        assert PLACER.choose("Counter", f"Counter/{i}", THREE, hints=hints, locate=where.get) == "b"
    # unknown agent, no locate function, or the agent's node not a candidate: hint ignored
    spread = {
        PLACER.choose("Counter", f"Counter/{i}", THREE, hints=Hints(colocate_with="Nope/1"), locate=where.get)
        for i in range(60)
    }
    assert spread == {"a", "b", "c"}
    assert PLACER.choose("Counter", "Counter/x", THREE, hints=hints) == PLACER.choose("Counter", "Counter/x", THREE)
    avoided = Hints(colocate_with="Session/s-1", avoid=("b",))
    assert PLACER.choose("Counter", "Counter/x", THREE, hints=avoided, locate=where.get) != "b"


def test_colocate_yields_to_the_load_bound() -> None:
    nodes = [node("a", agents=2), node("b", agents=13), node("c", agents=14)]  # bound 13
    hints = Hints(colocate_with="Session/s-1")
    assert PLACER.choose("Counter", "Counter/x", nodes, hints=hints, locate=lambda _: "b") != "b"


# -- rule 6: scoring, prefer, ring order ----------------------------------------------------


def test_lowest_score_wins_and_weights_change_the_choice() -> None:
    nodes = [
        node("cpu-busy", load=(0.9, 0.1, 0.1)),
        node("mem-busy", load=(0.1, 0.9, 0.1)),
        node("net-busy", load=(0.3, 0.3, 0.9)),
    ]
    # under the defaults (0.4/0.4/0.2) all three score 0.42
    scores = {n.node_id: ScoreWeights().score(n.load) for n in nodes}
    assert scores == pytest.approx({"cpu-busy": 0.42, "mem-busy": 0.42, "net-busy": 0.42})
    cpu_only = Placer(weights=ScoreWeights(cpu=1, memory=0, network=0))
    mem_only = Placer(weights=ScoreWeights(cpu=0, memory=1, network=0))
    net_heavy = Placer(weights=ScoreWeights(cpu=0.1, memory=0.1, network=0.8))
    for i in range(20):
        key = f"Counter/{i}"
        assert cpu_only.choose("Counter", key, nodes) == "mem-busy"
        assert mem_only.choose("Counter", key, nodes) == "cpu-busy"
        assert net_heavy.choose("Counter", key, nodes) in {"cpu-busy", "mem-busy"}
    # equal scores under the defaults: the consistent-hash order spreads agents over all three
    assert {PLACER.choose("Counter", f"Counter/{i}", nodes) for i in range(60)} == {"cpu-busy", "mem-busy", "net-busy"}


def test_scores_within_tolerance_tie_and_ring_order_decides() -> None:
    nodes = [node("a", load=(0.50, 0.50, 0.5)), node("b", load=(0.52, 0.52, 0.5)), node("c", load=(0.9, 0.9, 0.9))]
    picks = Counter(PLACER.choose("Counter", f"Counter/{i}", nodes) for i in range(200))
    assert set(picks) == {"a", "b"}  # c is far worse; a and b split by hashing
    strict = Placer(tolerance=0.0)
    assert {strict.choose("Counter", f"Counter/{i}", nodes) for i in range(50)} == {"a"}


def test_prefer_gives_a_bonus() -> None:
    # a scores 0.2 - 0.25 = -0.05 with the bonus, b and c 0.1: a wins by 0.15 > tolerance
    nodes = [node("a", load=(0.2, 0.2, 0.2)), node("b", load=(0.1, 0.1, 0.1)), node("c", load=(0.1, 0.1, 0.1))]
    hints = Hints(prefer=("a",))
    assert {PLACER.choose("Counter", f"Counter/{i}", nodes, hints=hints) for i in range(30)} == {"a"}
    assert "a" not in {PLACER.choose("Counter", f"Counter/{i}", nodes) for i in range(30)}
    far = [node("a", load=(0.9, 0.9, 0.9)), node("b")]  # bonus 0.25 is not enough to win
    assert PLACER.choose("Counter", "Counter/x", far, hints=hints) == "b"


def test_choice_is_deterministic_and_order_independent() -> None:
    nodes = [node(f"n{i}", agents=i % 3, load=(0.1 * (i % 4), 0.05 * i, 0.0)) for i in range(8)]
    placers = [Placer(), Placer()]
    for i in range(100):
        key = f"Counter/{i}"
        first = placers[0].choose("Counter", key, nodes)
        assert placers[1].choose("Counter", key, list(reversed(nodes))) == first
        assert placers[0].choose("Counter", key, nodes) == first


# -- properties over random clusters ----------------------------------------------------------

KINDS = ["Counter", "Chat", "Billing"]
TAGS = ["ssd", "eu", "gpu"]
fractions01 = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeInfo]:
    count = draw(st.integers(1, 8))
    out = []
    for i in range(count):
        cpu = draw(st.sampled_from([0.0, 1.0, 2.0, 4.0, 8.0]))
        out.append(
            NodeInfo(
                f"n{i}",
                kinds=frozenset(draw(st.sets(st.sampled_from(KINDS), max_size=3))),
                capacity=Resources(cpu=cpu, memory=draw(st.sampled_from([0, GiB, 4 * GiB]))),
                reserved=Resources(cpu=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))),
                load=NodeLoad(
                    agents=draw(st.integers(0, 30)),
                    cpu=draw(fractions01),
                    memory=draw(fractions01),
                    network=draw(fractions01),
                ),
                tags=frozenset(draw(st.sets(st.sampled_from(TAGS), max_size=3))),
                weight=draw(st.sampled_from([0.5, 1.0, 2.0])),
                live=draw(st.booleans()) or i == 0,
            )
        )
    return out


@settings(deadline=None, max_examples=300)
@given(
    clusters(),
    st.sampled_from(KINDS),
    st.integers(0, 10**6),
    st.sampled_from([Resources(), Resources(cpu=0.5), Resources(cpu=1.0, memory=GiB), Resources(memory=2 * GiB)]),
    st.sets(st.sampled_from(TAGS), max_size=2),
    st.sets(st.sampled_from([f"n{i}" for i in range(8)]), max_size=3),
    st.sets(st.sampled_from([f"n{i}" for i in range(8)]), max_size=3),
    st.sampled_from([1.0, 1.1, 1.25, 2.0]),
    st.sampled_from([None, "n0", "n1", "n2", "n9"]),
)
def test_chosen_node_satisfies_every_hard_rule_and_the_bound(
    nodes: list[NodeInfo],
    kind: str,
    n: int,
    needs: Resources,
    tags: set[str],
    avoid: set[str],
    prefer: set[str],
    c: float,
    peer_node: str | None,
) -> None:
    address = f"{kind}/a-{n}"
    hints = Hints(
        tags=frozenset(tags), avoid=tuple(sorted(avoid)), prefer=tuple(sorted(prefer)), colocate_with="Peer/p-1"
    )

    def fits(info: NodeInfo) -> bool:
        return (
            info.live
            and kind in info.kinds
            and needs.within(info.capacity.remaining(info.reserved))
            and hints.tags <= info.tags
            and info.node_id not in avoid
        )

    candidates = [info for info in nodes if fits(info)]
    try:
        chosen = PLACER.choose(
            kind, address, nodes, needs=needs, hints=hints, locate=lambda _: peer_node, load_factor=c
        )
    except ClusterAtCapacity as err:
        assert candidates == []  # fails only when no node passes the hard rules
        assert set(err.rejected) == {info.node_id for info in nodes}
        return
    info = next(i for i in nodes if i.node_id == chosen)
    assert fits(info)
    total = sum(i.load.agents for i in candidates) + 1
    whole = sum(Fraction(i.weight) for i in candidates)
    assert info.load.agents + 1 <= math.ceil(Fraction(c) * total * Fraction(info.weight) / whole)
    again = PLACER.choose(
        kind, address, list(reversed(nodes)), needs=needs, hints=hints, locate=lambda _: peer_node, load_factor=c
    )
    assert again == chosen
    if peer_node is not None and info.node_id != peer_node:  # colocation declined only for a reason
        peer = next((i for i in candidates if i.node_id == peer_node), None)
        assert peer is None or peer.load.agents + 1 > math.ceil(Fraction(c) * total * Fraction(peer.weight) / whole)


@settings(deadline=None)
@given(st.integers(2, 6), st.integers(0, 10**6))
def test_sequential_placement_of_many_agents_stays_bounded(count: int, salt: int) -> None:
    """Placing agents one by one (updating the agent counts) never takes a node above the bound."""
    agents = dict.fromkeys((f"n{i}" for i in range(count)), 0)
    for j in range(120):
        nodes = [node(nid, agents=k) for nid, k in agents.items()]
        chosen = PLACER.choose("Counter", f"Counter/{salt}-{j}", nodes)
        agents[chosen] += 1
        assert agents[chosen] <= math.ceil(Fraction(1.25) * (j + 1) / count)
