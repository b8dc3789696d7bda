"""Agent caps in placement (pure): a node's ``max_agents`` travels in its membership
record (old records without it mean no cap) and the placer skips nodes that reached it."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from natsagents.cluster import ClusterAtCapacity, NodeInfo, NodeLoad, Placer
from natsagents.cluster.membership import MemberRecord
from natsagents.errors import ConfigurationError


def info(node: str, agents: int, cap: int | None) -> NodeInfo:
    return NodeInfo(node, kinds=frozenset({"K"}), load=NodeLoad(agents=agents), max_agents=cap)


def test_the_member_record_carries_the_cap_and_old_records_have_none() -> None:
    rec = MemberRecord("n1", kinds=("K",), max_agents=5)
    assert MemberRecord.from_wire(rec.to_wire(), key="n1").max_agents == 5
    assert "max_agents" not in msgpack.unpackb(MemberRecord("n1").to_wire())  # no cap: left out
    old: dict[str, Any] = {"node": "n1", "kinds": ["K"], "lease": 3.0}  # a node that never wrote it
    assert MemberRecord.from_wire(msgpack.packb(old), key="n1").max_agents is None
    assert MemberRecord.from_wire(msgpack.packb({**old, "max_agents": None}), key="n1").max_agents is None
    for bad in (0, -1, 1.5, "3", True, 2**60):
        with pytest.raises(ValueError, match="max_agents"):
            MemberRecord.from_wire(msgpack.packb({**old, "max_agents": bad}), key="n1")


def test_full_nodes_are_skipped_and_take_no_share_of_the_load_bound() -> None:
    placer = Placer()
    # n1 is full. Counted in the bound, it would keep n2 from taking more: 3 + 7 + 1 = 11
    # agents, n2's bound ceil(1.25 * 11 / 2) = 7. Left out, n2 takes every agent.
    nodes = [info("n1", 3, 3), info("n2", 7, None)]
    assert {placer.choose("K", f"K/a{i}", nodes) for i in range(20)} == {"n2"}
    with pytest.raises(ClusterAtCapacity) as err:
        placer.choose("K", "K/x", [info("n1", 3, 3), info("n2", 4, 4)])
    assert err.value.rejected == {
        "n1": "at its agent limit (3 agents, max_agents=3)",
        "n2": "at its agent limit (4 agents, max_agents=4)",
    }
    assert placer.choose("K", "K/x", [info("n1", 2, 3), info("n2", 4, 4)]) == "n1"  # room left on n1
    assert info("n1", 9, None).full is False and info("n1", 3, 3).full is True


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_node_info_cap_is_validated(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        NodeInfo("n1", max_agents=bad)
