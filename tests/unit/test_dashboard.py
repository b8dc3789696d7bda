"""The dashboard's pure parts: ``$SRV.STATS`` parsing and rates, the agent catalog's
queries (and their speed over 100,000 agents), bounded previews, the ``--http`` parser."""

from __future__ import annotations

import argparse
import datetime
import json
import time

import pytest

from natsagents.cli.dashboard import parse_http
from natsagents.cluster.directory import DirectoryRecord, Status
from natsagents.dashboard import Dashboard
from natsagents.dashboard.catalog import AgentCatalog
from natsagents.dashboard.micro import EndpointTotals, RateTracker, kind_details, node_partitions, parse_stats
from natsagents.dashboard.preview import preview
from natsagents.dashboard.server import _host_name, _is_loopback
from natsagents.errors import ConfigurationError
from natsagents.transport.kv import Entry
from natsagents.wire.ids import agent_key


def stats(service_id: str, endpoints: list[object], **extra: object) -> bytes:
    body: dict[str, object] = {
        "type": "io.nats.micro.v1.stats_response",
        "name": "natsagents",
        "id": service_id,
        "endpoints": endpoints,
    }
    body.update(extra)
    return json.dumps(body).encode()


def endpoint(subject: str, requests: int, errors: int = 0, ns: int = 0, name: str = "e") -> dict[str, object]:
    return {"name": name, "subject": subject, "num_requests": requests, "num_errors": errors, "processing_time": ns}


# -- $SRV.STATS -----------------------------------------------------------------------


def test_parse_stats_keeps_this_meshs_kinds_and_drops_everything_else() -> None:
    replies = [
        stats("s1", [endpoint("na.agent.Counter.>", 10, 1, 5_000_000, "Counter"), endpoint("na.activate.Keeper", 4)]),
        stats("s2", [endpoint("other.agent.Counter.>", 99)]),  # another mesh
        stats("s3", [{"name": "Counter", "num_requests": 7}], metadata={"prefix": "na"}),  # named by the service
        stats("s4", [{"name": "Counter", "num_requests": 7}], metadata={"prefix": "zz"}),  # named, not ours
        b"not json",
        b"[1, 2]",
        json.dumps({"type": "io.nats.micro.v1.info_response", "id": "x", "endpoints": []}).encode(),
        stats("s5", [endpoint("na.agent.Counter.x", -1), endpoint("na.agent.Counter.x", True), "junk", None]),
        stats("s6", [endpoint("na.agent.bad kind.x", 3), endpoint("na.agent.1bad.x", 3)]),
        stats("s7", "not a list"),  # type: ignore[arg-type]
        json.dumps({"type": "io.nats.micro.v1.stats_response", "id": 7, "endpoints": []}).encode(),
    ]
    got = parse_stats(replies, "na")
    assert [(t.instance, t.kind, t.requests, t.errors, t.processing_ns) for t in got] == [
        ("s1/Counter", "Counter", 10, 1, 5_000_000),
        ("s1/e", "Keeper", 4, 0, 0),
        ("s3/Counter", "Counter", 7, 0, 0),
    ]
    dotted = [stats("d", [endpoint("acme.prod.agent.Twin.>", 3), endpoint("acme.agent.Twin.>", 9)])]
    assert [(t.kind, t.requests) for t in parse_stats(dotted, "acme.prod")] == [("Twin", 3)]


def test_endpoint_data_gives_backlog_and_hottest_agents() -> None:
    def with_data(subject: str, data: object) -> dict[str, object]:
        return {**endpoint(subject, 1), "data": data}

    hot_n1 = [
        {"agent": "Counter/a", "recent": 9, "backlog": 1, "busy": 1},
        {"agent": "Counter/b", "recent": 2},
        {"agent": "", "recent": 5},  # no name: dropped
        {"agent": "Counter/c", "recent": -1},  # bad count: dropped
        "junk",
    ]
    replies = [
        stats("n1", [with_data("na.agent.Counter.*", {"agents": 3, "backlog": 2, "busy": 1, "hot": hot_n1})]),
        stats(
            "n2",
            [
                with_data(
                    "na.agent.Counter.*",
                    {"backlog": 5, "hot": [{"agent": "Counter/z", "recent": 4}, {"agent": "Counter/a", "recent": 1}]},
                )
            ],
        ),
        stats("n3", [with_data("na.agent.Keeper.*", "not a map")]),
        stats("n4", [with_data("na.agent.Keeper.*", {"hot": [{"agent": "x" * 301}] * 50})]),
    ]
    details = kind_details(parse_stats(replies, "na"))
    assert details["Counter"] == {
        "nodes": ["n1", "n2"],
        "backlog": 7,
        "busy": 1,
        "hot": [
            {"agent": "Counter/a", "node": "n1", "recent": 9, "backlog": 1, "busy": 1},
            {"agent": "Counter/z", "node": "n2", "recent": 4, "backlog": 0, "busy": 0},
            {"agent": "Counter/b", "node": "n1", "recent": 2, "backlog": 0, "busy": 0},
        ],
        "settings": {},
    }
    assert details["Keeper"] == {"nodes": ["n3", "n4"], "backlog": None, "busy": None, "hot": [], "settings": {}}


def test_node_partitions_come_from_this_meshs_metadata_checked() -> None:
    replies = [
        stats("n1", [], metadata={"prefix": "na", "partition": "ok"}),
        stats("n2", [], metadata={"prefix": "na", "partition": "quorum_lost"}),
        stats("n3", [], metadata={"prefix": "na", "partition": "<b>owned</b>"}),  # not a status
        stats("n4", [], metadata={"prefix": "na", "partition": 1}),
        stats("n5", [], metadata={"prefix": "zz", "partition": "peers_lapsed"}),  # another mesh
        stats("n6", [], metadata={"prefix": "na"}),  # an older node: says nothing
        b"{",
    ]
    assert node_partitions(replies, "na") == {"n1": "ok", "n2": "quorum_lost"}


def test_endpoint_data_gives_the_kinds_settings_checked_and_merged() -> None:
    """``data.settings`` (a kind's consistency, persistence, ...): strings only, bounded;
    nodes that disagree (a rolling upgrade) show ``mixed``."""

    def with_settings(node: str, kind: str, settings: object) -> bytes:
        return stats(node, [{**endpoint(f"na.agent.{kind}.*", 1), "data": {"settings": settings}}])

    replies = [
        with_settings("n1", "Counter", {"consistency": "strong", "persistence": "action", "read_only": "get"}),
        with_settings("n2", "Counter", {"consistency": "eventual", "persistence": "action", "n": 3, "": "x"}),
        with_settings("n3", "Keeper", {f"k{i}": "v" * 1000 for i in range(40)}),
        with_settings("n4", "Tally", ["not", "a", "map"]),
    ]
    details = kind_details(parse_stats(replies, "na"))
    assert details["Counter"]["settings"] == {"consistency": "mixed", "persistence": "action", "read_only": "get"}
    keeper = details["Keeper"]["settings"]
    assert len(keeper) == 16 and all(len(v) == 256 for v in keeper.values())
    assert details["Tally"]["settings"] == {}


def test_rates_per_kind_from_successive_samples() -> None:
    tracker = RateTracker(forget=10.0)
    first = [
        EndpointTotals("a/x", "Counter", 100, 1, 100_000_000),
        EndpointTotals("b/x", "Counter", 50, 0, 50_000_000),
        EndpointTotals("c/x", "Keeper", 500, 0, 0),
    ]
    assert tracker.update(first, 10.0) == {}  # baselines only
    rates = tracker.update(
        [
            EndpointTotals("a/x", "Counter", 300, 3, 300_000_000),  # +200 requests, +200 ms in 2 s
            EndpointTotals("b/x", "Counter", 250, 0, 850_000_000),  # +200 requests, +800 ms
            EndpointTotals("c/x", "Keeper", 10, 0, 10_000_000),  # restarted: a new baseline
            EndpointTotals("d/x", "Other", 4_000, 0, 0),  # first seen: a baseline, no spike
        ],
        12.0,
    )
    assert set(rates) == {"Counter"}
    assert rates["Counter"].rate == 200.0 and rates["Counter"].errors == 1.0
    assert rates["Counter"].latency_ms == pytest.approx(2.5)  # 1000 ms over 400 requests
    # b/x misses a sample: compared over its own 4 s when it is back; d/x counts now.
    rates = tracker.update(
        [EndpointTotals("a/x", "Counter", 300, 3, 300_000_000), EndpointTotals("d/x", "Other", 4_010, 0, 20_000_000)],
        14.0,
    )
    assert rates["Counter"].rate == 0.0 and rates["Counter"].latency_ms is None
    assert rates["Other"].rate == 5.0 and rates["Other"].latency_ms == pytest.approx(2.0)
    rates = tracker.update([EndpointTotals("b/x", "Counter", 650, 0, 1_250_000_000)], 16.0)
    assert rates["Counter"].rate == 100.0 and rates["Counter"].latency_ms == pytest.approx(1.0)
    # Instances silent for longer than ``forget`` are dropped: they start over as baselines.
    assert tracker.update([EndpointTotals("a/x", "Counter", 900, 3, 300_000_000)], 30.0) == {}


# -- the catalog ----------------------------------------------------------------------


def record(kind: str, agent_id: str, node: str, status: Status = Status.ACTIVE, epoch: int = 1) -> DirectoryRecord:
    return DirectoryRecord(kind=kind, agent_id=agent_id, node=node, epoch=epoch, status=status, since=1.0)


def test_catalog_filters_sorts_and_pages() -> None:
    catalog = AgentCatalog(None, "na", resort=0.0)  # type: ignore[arg-type]  # no watch: records loaded directly
    catalog.load(record("Counter", f"c-{i:03d}", f"n{i % 3}") for i in range(250))
    catalog.load([record("Keeper", "k-1", "n1", Status.MIGRATING), record("Keeper", "ÜNÏ-ä", "n2")])
    page = catalog.query(limit=10)
    assert page.total == 252 and [r.agent_id for r in page.items] == [f"c-{i:03d}" for i in range(10)]
    assert [r.agent_id for r in catalog.query(offset=245, limit=10).items] == [
        *(f"c-{i:03d}" for i in range(245, 250)),
        "k-1",
        "ÜNÏ-ä",
    ]
    assert catalog.query(offset=1000).items == ()
    assert catalog.query(kind="Keeper").total == 2
    assert catalog.query(node="n0").total == 84
    assert catalog.query(status="migrating").items == (record("Keeper", "k-1", "n1", Status.MIGRATING),)
    assert catalog.query(text="C-01").total == 10  # case-insensitive, over Kind/id
    assert catalog.query(text="keeper/ünï").total == 1
    assert catalog.query(text="c-1", node="n1", offset=2, limit=3).total == 34
    assert catalog.counts()["kind"] == {"Counter": 250, "Keeper": 2}
    assert catalog.counts()["status"] == {"active": 251, "migrating": 1}
    assert catalog.counts()["node"] == {"n0": 84, "n1": 84, "n2": 84}


def test_catalog_applies_watched_revisions_and_drops_garbage() -> None:
    catalog = AgentCatalog(None, "na", resort=0.0)  # type: ignore[arg-type]
    good = record("Counter", "a", "n1")
    key = agent_key("Counter", "a")
    catalog.apply(Entry(key, good.to_wire(), 1, None))
    assert catalog.get(key) == good and len(catalog) == 1
    moved = good.with_(node="n2", epoch=2)
    catalog.apply(Entry(key, moved.to_wire(), 2, None))
    assert catalog.query().items == (moved,)
    catalog.apply(Entry(agent_key("Counter", "b"), good.to_wire(), 3, None))  # stored under another key
    catalog.apply(Entry(agent_key("Counter", "c"), b"\xc1garbage", 4, None))
    catalog.apply(Entry("not-a-key", good.to_wire(), 5, None))
    assert catalog.rejected == 3 and len(catalog) == 1
    catalog.apply(Entry(key, b"\x00", 6, None))  # overwritten with garbage: gone
    assert len(catalog) == 0 and catalog.rejected == 4
    catalog.apply(Entry(key, moved.to_wire(), 7, None))
    catalog.apply(Entry(key, b"", 8, None, "delete"))
    assert len(catalog) == 0 and catalog.query().total == 0


def test_catalog_snapshot_follows_changes_without_duplicates() -> None:
    catalog = AgentCatalog(None, "na", resort=0.0)  # type: ignore[arg-type]
    catalog.load(record("K", f"a{i:02d}", "n1") for i in range(0, 40, 2))
    assert catalog.query(limit=3).items[0].agent_id == "a00"
    for i in range(1, 40, 2):  # new keys land between the old ones
        catalog.apply(Entry(agent_key("K", f"a{i:02d}"), record("K", f"a{i:02d}", "n2").to_wire(), i, None))
    for epoch in (2, 3):  # one key put twice since the snapshot
        moved = record("K", "a10", "n3", epoch=epoch)
        catalog.apply(Entry(agent_key("K", "a10"), moved.to_wire(), 100 + epoch, None))
    catalog.apply(Entry(agent_key("K", "a20"), b"", 200, None, "delete"))
    page = catalog.query(limit=200)
    assert [r.agent_id for r in page.items] == [f"a{i:02d}" for i in range(40) if i != 20]
    assert page.items[10] == record("K", "a10", "n3", epoch=3)
    assert catalog.counts()["node"] == {"n1": 18, "n2": 20, "n3": 1}
    assert catalog.query(node="n3").total == 1 and catalog.query(node="n1").total == 18


def test_catalog_queries_100k_agents_quickly() -> None:
    catalog = AgentCatalog(None, "na", resort=0.0)  # type: ignore[arg-type]
    kinds = ("Counter", "Session", "Twin", "Order")
    catalog.load(record(kinds[i % 4], f"agent-{i:06d}", f"node-{i % 7}") for i in range(100_000))
    started = time.perf_counter()
    catalog.query(limit=50)  # the first query sorts
    sort_s = time.perf_counter() - started
    timings = {}
    for name, query in {
        "page": {"offset": 60_000, "limit": 50},
        "search": {"text": "agent-0999", "limit": 50},
        "kind+node": {"kind": "Twin", "node": "node-3", "offset": 100, "limit": 50},
        "no match": {"text": "nothing-like-this"},
    }.items():
        started = time.perf_counter()
        page = catalog.query(**query)  # type: ignore[arg-type]
        timings[name] = time.perf_counter() - started
        assert page.total >= 0
    for i in range(0, 100_000, 100):  # 1,000 agents move, then the snapshot follows
        catalog.load([record(kinds[i % 4], f"agent-{i:06d}", "node-moved", epoch=2)])
    started = time.perf_counter()
    assert catalog.query(node="node-moved").total == 1000
    timings["resort after 1,000 changes"] = time.perf_counter() - started
    assert catalog.query(text="agent-0999").total == 100
    assert catalog.query(kind="Twin", node="node-3").total == len(
        [i for i in range(100_000) if i % 4 == 2 and i % 7 == 3]
    )
    print(
        f"100k agents: first sort {sort_s * 1000:.0f} ms; "
        + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in timings.items())
    )
    # Generous bounds for a loaded 2-core machine; measured ~10-40 ms each.
    assert sort_s < 2.0
    assert max(timings.values()) < 0.5, timings


# -- previews -------------------------------------------------------------------------


def test_preview_is_bounded_and_json_safe() -> None:
    value = {
        "n": 1,
        "big": 2**64,
        "nan": float("nan"),
        "raw": b"\x00\x01\x02",
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        (1, 2): "tuple key",
        "nested": [[[[{"x": None}]]]],
    }
    out = preview(value)
    assert out["truncated"] is False
    v = out["value"]
    assert v["n"] == 1 and v["big"] == str(2**64) and v["nan"] == "nan"
    assert v["raw"] == {"$bytes": "AAEC", "length": 3}
    assert v["when"] == "2026-01-02T03:04:05+00:00"
    assert v["[1, 2]"] == "tuple key"
    json.dumps(v, allow_nan=False)  # encodable as strict JSON
    cut = preview({"items": list(range(100_000)), "text": "x" * 100_000}, budget=1000)
    assert cut["truncated"] is True
    assert len(json.dumps(cut["value"])) < 10_000
    deep: object = None
    for _ in range(100):
        deep = [deep]
    assert preview(deep)["truncated"] is True


def test_parse_http() -> None:
    assert parse_http("127.0.0.1:8470") == ("127.0.0.1", 8470)
    assert parse_http(":0") == ("127.0.0.1", 0)
    assert parse_http("[::1]:9000") == ("::1", 9000)
    for bad in ("8470", "host:", "host:99999", "host:-1", "host:http"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_http(bad)


def test_loopback_host_names() -> None:
    """A dashboard on loopback answers only Host headers naming loopback (DNS rebinding)."""
    for host in ("127.0.0.1:8470", "localhost:8470", "localhost", "[::1]:8470", "127.8.9.10", "app.localhost:1"):
        assert _is_loopback(_host_name(host)), host
    for host in ("evil.example:8470", "10.0.0.1:8470", "[2001:db8::1]:80", "localhost.evil.example", "", "[::1"):
        assert not _is_loopback(_host_name(host)), host


def test_dashboard_settings_are_checked() -> None:
    for bad in ({"interval": 0}, {"interval": float("nan")}, {"history": -1}, {"port": 70000}):
        with pytest.raises(ConfigurationError):
            Dashboard(None, **bad)  # type: ignore[arg-type]  # refused before the mesh is used
