"""The dashboard's JSON API and HTTP server against a real nats-server and cluster nodes
(no browser): routes, pagination over 2,000 directory records, hostile parameters and
requests, cross-origin writes, actions (migrate, drain, dead letters), and the sampler's
``$SRV.STATS`` figures from a services-API peer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from natsagents import Mesh
from natsagents.cluster.directory import DirectoryRecord, Status
from natsagents.dashboard import Dashboard
from natsagents.testing import wait_for
from natsagents.testing.plugin import MeshFactory
from natsagents.transport import Inbound
from natsagents.transport.kv import open_bucket
from natsagents.wire.ids import agent_key
from natsagents.wire.subjects import bucket_name
from tests.dashboard_helpers import Ledger, cluster, get_json, http


@pytest.fixture
async def dashboard(mesh_factory: MeshFactory) -> AsyncIterator[Dashboard]:
    client = await mesh_factory(name="dashboard")
    async with Dashboard(client, port=0, interval=0.2) as d:
        yield d


@pytest.fixture(autouse=True)
def _ledger_broken() -> Any:
    Ledger.broken = True
    yield
    Ledger.broken = True


async def overview_nodes(port: int) -> dict[str, Any]:
    return {n["node"]: n for n in (await get_json(port, "/api/overview"))["nodes"]}


# -- reads ----------------------------------------------------------------------------


async def test_overview_nodes_agents_and_state(mesh_factory: MeshFactory, dashboard: Dashboard) -> None:
    n1, _ = await cluster(mesh_factory, "n1", "n2")
    for i in range(6):
        assert await n1.ref(f"Counter/c{i}").call("add", by=i + 1) == i + 1
    port = dashboard.port

    async def both_listed() -> bool:
        nodes = await overview_nodes(port)
        return set(nodes) == {"n1", "n2"} and all(n["live"] and "Counter" in n["kinds"] for n in nodes.values())

    await wait_for(both_listed, timeout=10, interval=0.05, what="both nodes in the overview")
    overview = await get_json(port, "/api/overview")
    assert overview["prefix"] == n1.prefix
    assert overview["features"]["strategies"] == ["checkpoint_restore", "state_transfer", "cold_start"]
    assert overview["dead_letters"] == 0 and overview["errors"] == {}
    assert (await get_json(port, "/api/nodes"))["nodes"] == overview["nodes"]

    async def six_agents() -> bool:
        return (await get_json(port, "/api/agents"))["total"] == 6

    await wait_for(six_agents, timeout=10, interval=0.05, what="six agents listed")
    page = await get_json(port, "/api/agents?kind=Counter&limit=4")
    assert page["total"] == 6 and [a["agent"] for a in page["items"]] == [f"Counter/c{i}" for i in range(4)]
    assert all(a["status"] == "active" and a["node"] in ("n1", "n2") and a["epoch"] >= 1 for a in page["items"])
    searched = await get_json(port, "/api/agents?q=c5")
    assert [a["agent"] for a in searched["items"]] == ["Counter/c5"]
    owner = searched["items"][0]["node"]
    assert (await get_json(port, f"/api/agents?node={owner}&q=c5"))["total"] == 1
    assert (await get_json(port, "/api/agents?status=migrating"))["total"] == 0

    info = await get_json(port, "/api/agent?agent=Counter/c5")
    assert info["record"]["node"] == owner
    assert info["state"]["data"] == {"value": {"n": 6}, "truncated": False}
    assert info["state"]["epoch"] >= 1 and info["state"]["revision"] > 0 and info["state"]["bytes"] > 0
    absent = await get_json(port, "/api/agent?agent=Counter/nobody")
    assert absent == {"agent": "Counter/nobody", "record": None, "state": None}

    async def plotted() -> bool:  # the members are read before the sample's point is added
        points = (await get_json(port, "/api/series"))["points"]
        return bool(points) and set(points[-1]["nodes"]) == {"n1", "n2"}

    await wait_for(plotted, timeout=10, interval=0.05, what="both nodes in the series")
    series = await get_json(port, "/api/series")
    assert series["interval"] == 0.2
    last = series["points"][-1]
    assert last["nodes"]["n1"]["live"] is True and last["nodes"]["n1"]["agents"] is not None

    page_html = await http(port, "GET", "/")
    assert page_html.status == 200 and page_html.headers["content-type"].startswith("text/html")
    assert b'<script src="/static/app.js" defer></script>' in page_html.body
    csp = page_html.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert page_html.headers["x-content-type-options"] == "nosniff"
    assets = (("app.js", "text/javascript"), ("charts.js", "text/javascript"), ("style.css", "text/css"))
    for asset, kind in (*assets, ("favicon.svg", "image/svg+xml")):
        response = await http(port, "GET", f"/static/{asset}")
        assert response.status == 200 and response.headers["content-type"].startswith(kind), asset
    head = await http(port, "HEAD", "/static/app.js")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 1000


async def test_pagination_over_2000_agents(mesh_factory: MeshFactory, mesh_prefix: str) -> None:
    """2,000 directory records written straight into the bucket (no node runs under this
    prefix): every page, in order, searched and filtered."""
    client = await mesh_factory(name="writer")
    bucket = await open_bucket(client.transport, bucket_name(mesh_prefix, "directory"), history=1)
    records = [
        DirectoryRecord(
            kind="Counter" if i % 2 else "Session",
            agent_id=f"a-{i:04d}",
            node=f"node-{i % 5}",
            epoch=1 + i % 3,
            status=Status.ACTIVE,
            since=time.time(),
        )
        for i in range(2000)
    ]
    for start in range(0, 2000, 200):
        await asyncio.gather(
            *(bucket.put(agent_key(r.kind, r.agent_id), r.to_wire()) for r in records[start : start + 200])
        )
    # Garbage anyone with write access could put there: skipped and counted, never shown.
    await bucket.put("Counter.garbage", b"\xc1\xc1")
    await bucket.put("Counter.other", records[1].to_wire())  # a record stored under another key
    await bucket.put("1kind.x", records[1].to_wire())  # not an agent key
    async with Dashboard(client, port=0, interval=0.5) as d:
        await d.catalog.wait_ready(10)

        async def all_loaded() -> bool:
            return (await get_json(d.port, "/api/agents?limit=1"))["total"] == 2000

        await wait_for(all_loaded, timeout=10, interval=0.05, what="2,000 agents listed")
        expected = sorted(f"{r.kind}/{r.agent_id}" for r in records)
        seen: list[str] = []
        started = time.perf_counter()
        for offset in range(0, 2000, 200):
            page = await get_json(d.port, f"/api/agents?offset={offset}&limit=200")
            assert page["total"] == 2000 and page["offset"] == offset and page["limit"] == 200
            seen.extend(a["agent"] for a in page["items"])
        per_page_ms = (time.perf_counter() - started) * 1000 / 10
        assert seen == expected
        assert (await get_json(d.port, "/api/agents?offset=2000"))["items"] == []
        search = await get_json(d.port, "/api/agents?q=A-01&kind=Counter&limit=200")
        assert search["total"] == 50 and all(a["kind"] == "Counter" and "a-01" in a["id"] for a in search["items"])
        node = await get_json(d.port, "/api/agents?node=node-3&offset=390&limit=50")
        assert node["total"] == 400 and len(node["items"]) == 10
        overview = await get_json(d.port, "/api/overview")
        assert overview["counts"]["kind"] == {"Counter": 1000, "Session": 1000}
        assert overview["catalog"] == {"ready": True, "agents": 2000, "rejected": 3}
        print(f"2,000 agents: {per_page_ms:.1f} ms per 200-agent page over HTTP")


# -- hostile requests -----------------------------------------------------------------


async def test_bad_parameters_are_refused_with_400(dashboard: Dashboard) -> None:
    port = dashboard.port
    bad_gets = [
        "/api/agents?limit=0",
        "/api/agents?limit=201",
        "/api/agents?limit=-1",
        "/api/agents?offset=abc",
        "/api/agents?offset=99999999999999",
        "/api/agents?kind=bad%20kind",
        "/api/agents?node=no.dots",
        "/api/agents?status=sleeping",
        "/api/agents?q=" + "x" * 201,
        "/api/agents?nope=1",
        "/api/agents?limit=1&limit=2",
        "/api/agents?" + "&".join(f"p{i}=1" for i in range(17)),
        "/api/agent",
        "/api/agent?agent=no-slash",
        "/api/agent?agent=Counter/",
        "/api/dead-letters?limit=1000",
        "/api/overview?x=1",
    ]
    answers = await asyncio.gather(*(http(port, "GET", path) for path in bad_gets))
    for path, response in zip(bad_gets, answers, strict=True):
        assert response.status == 400, (path, response)
        body = response.json()
        assert body["error"] == "bad_request" and body["message"], path

    async def post(path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        response = await http(port, "POST", path, body=body, **kw)
        return response.status, response.json()

    assert (await post("/api/migrate", b"{not json"))[0] == 400
    assert (await post("/api/migrate", [1, 2]))[0] == 400
    assert (await post("/api/migrate", {"agent": "Counter/a", "to": "n1", "extra": 1}))[1]["message"] == (
        "unknown field 'extra'"
    )
    assert (await post("/api/migrate", {"agent": 5, "to": "n1"}))[1]["message"] == "agent must be a string"
    assert (await post("/api/migrate", {"to": "n1"}))[1]["message"] == "missing field 'agent'"
    assert (await post("/api/migrate", {"agent": "Counter/a", "to": "n1", "strategy": "teleport"}))[0] == 400
    assert (await post("/api/migrate", {"agent": "Counter/a", "to": "bad node"}))[0] == 400
    assert (await post("/api/dead-letters/replay", {"seq": True}))[1]["message"] == "seq must be an integer"
    assert (await post("/api/dead-letters/delete", {"seq": 0}))[0] == 400
    assert (await post("/api/drain", {"node": "ghost"}))[0] == 404  # not a member
    assert (await post("/api/drain", {"node": "../etc"}))[0] == 400
    assert (await post("/api/migrate", b"x" * 20_000))[0] == 413

    # Routes and methods.
    assert (await http(port, "GET", "/api/nothing")).status == 404
    assert (await http(port, "GET", "/api/migrate")).status == 405
    assert (await post("/api/overview", {}))[0] == 405
    assert (await http(port, "DELETE", "/api/agents")).status == 405
    assert (await http(port, "GET", "/static/../../etc/passwd")).status == 404
    assert (await http(port, "GET", "/static/nothing.js")).status == 404

    # Malformed HTTP: the server answers (or closes) and keeps serving.
    for raw in (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET /\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
        b"POST /api/drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /api/drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999\r\n\r\n",
        b"POST /api/drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
    ):
        response = await http(port, "GET", "/", raw=raw)
        assert 400 <= response.status < 500, (raw[:40], response)
    assert (await http(port, "GET", "/api/overview")).status == 200


async def test_cross_origin_and_rebinding_requests_are_refused(mesh_factory: MeshFactory, dashboard: Dashboard) -> None:
    (n1,) = await cluster(mesh_factory, "n1")
    port = dashboard.port

    async def listed() -> bool:
        return "n1" in await overview_nodes(port)

    await wait_for(listed, timeout=10, interval=0.05, what="n1 listed")
    drain = {"node": "n1"}
    refused = [
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": f"http://127.0.0.1:{port + 1}"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Content-Type": "text/plain"}, 415),  # what a cross-site form or no-preflight fetch can send
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Host": "evil.example"}, 403),  # DNS rebinding: a loopback dashboard answers loopback names only
    ]
    for headers, status in refused:
        response = await http(port, "POST", "/api/drain", body=drain, headers=headers)
        assert response.status == status, (headers, response)
    rebinding = await http(port, "GET", "/api/overview", headers={"Host": f"evil.example:{port}"})
    assert rebinding.status == 403
    assert n1.cluster_node is not None and not n1.cluster_node.draining
    assert (await get_json(port, "/api/overview"))["actions"] == []
    # The same request from the page itself is accepted.
    ok = await http(port, "POST", "/api/drain", body=drain, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert ok.status == 200 and ok.json()["action"]["status"] == "running"
    localhost = await http(port, "GET", "/api/nodes", headers={"Host": f"localhost:{port}"})
    assert localhost.status == 200


# -- actions --------------------------------------------------------------------------


async def test_migrate_and_drain_through_the_api(mesh_factory: MeshFactory, dashboard: Dashboard) -> None:
    n1, _ = await cluster(mesh_factory, "n1", "n2")
    port = dashboard.port
    for i in range(4):
        await n1.ref(f"Counter/m{i}").call("add", by=10 + i)

    async def listed() -> bool:
        nodes = await overview_nodes(port)
        agents = await get_json(port, "/api/agents?q=Counter/m")
        return {"n1", "n2"} <= set(nodes) and agents["total"] == 4

    await wait_for(listed, timeout=10, interval=0.05, what="nodes and agents listed")
    record = (await get_json(port, "/api/agent?agent=Counter/m0"))["record"]
    target = "n2" if record["node"] == "n1" else "n1"
    response = await http(port, "POST", "/api/migrate", body={"agent": "Counter/m0", "to": target})
    assert response.status == 200, response
    action = response.json()["action"]
    assert action["action"] == "migrate" and action["status"] == "ok" and action["result"]["to"] == target
    assert await n1.ref("Counter/m0").call("get") == 10  # state travelled
    assert (await n1.agents()) and {r.address: r.node for r in await n1.agents()}["Counter/m0"] == target

    async def moved_in_catalog() -> bool:
        return (await get_json(port, "/api/agent?agent=Counter/m0"))["record"]["node"] == target

    await wait_for(moved_in_catalog, timeout=5, interval=0.05, what="the catalog sees the move")
    gone = await http(port, "POST", "/api/migrate", body={"agent": "Counter/ghost", "to": target})
    assert gone.status == 404 and gone.json()["error"] == "not_found"

    # Drain the node that holds the most; it runs in the background and shows in the actions.
    response = await http(port, "POST", "/api/drain", body={"node": target})
    assert response.status == 200 and response.json()["action"]["status"] == "running"

    async def drained() -> bool:
        overview = await get_json(port, "/api/overview")
        node = {n["node"]: n for n in overview["nodes"]}[target]
        drain = next(a for a in overview["actions"] if a["action"] == "drain")
        return node["draining"] and drain["status"] == "ok" and node["load"]["agents"] == 0

    await wait_for(drained, timeout=15, interval=0.05, what="the drain ended and shows")
    overview = await get_json(port, "/api/overview")
    actions = overview["actions"]
    assert [a["action"] for a in actions] == ["drain", "migrate", "migrate"]
    assert actions[0]["result"]["node"] == target and actions[1]["status"] == "failed"
    assert actions[1]["error"]["code"] == "not_found"
    assert all(r.node != target for r in await n1.agents())


@pytest.mark.skipif(not hasattr(Mesh, "undrain"), reason="this SDK has no Mesh.undrain: the page offers no undrain")
async def test_undrain_through_the_api(mesh_factory: MeshFactory, dashboard: Dashboard) -> None:
    n1, _ = await cluster(mesh_factory, "n1", "n2")
    port = dashboard.port
    overview = await get_json(port, "/api/overview")
    assert overview["features"]["undrain"] is True

    async def listed() -> bool:
        return {"n1", "n2"} <= set(await overview_nodes(port))

    await wait_for(listed, timeout=10, interval=0.05, what="both nodes listed")
    assert (await http(port, "POST", "/api/drain", body={"node": "n1"})).status == 200

    async def draining(flag: bool) -> bool:
        return bool((await overview_nodes(port))["n1"]["draining"]) is flag

    await wait_for(lambda: draining(True), timeout=15, interval=0.05, what="n1 draining")
    response = await http(port, "POST", "/api/undrain", body={"node": "n1"})
    assert response.status == 200 and response.json()["action"]["status"] == "ok", response
    await wait_for(lambda: draining(False), timeout=15, interval=0.05, what="n1 taking agents again")
    assert n1.cluster_node is not None and not n1.cluster_node.draining


async def test_dead_letters_listed_replayed_and_deleted(mesh_factory: MeshFactory, dashboard: Dashboard) -> None:
    (node,) = await cluster(mesh_factory, "n1", durable=True)
    port = dashboard.port
    for i in range(3):
        await (
            node.ref(f"Ledger/l{i}")
            .with_options(delivery="at_least_once")
            .send("poison", params={"note": f"<b>{i}</b>"})
        )
    zipper = await mesh_factory(name="zipper", compress_above=64)  # its body goes deflated
    await zipper.ref("Ledger/z").with_options(delivery="at_least_once").send("poison", params={"note": "z" * 500})

    async def four() -> bool:
        overview = await get_json(port, "/api/overview")
        return overview["dead_letters"] == 4

    await wait_for(four, timeout=15, interval=0.05, what="four dead letters counted")
    page = await get_json(port, "/api/dead-letters?limit=2")
    assert page["total"] == 4 and len(page["items"]) == 2
    listed = (await get_json(port, "/api/dead-letters"))["items"]
    assert [d["seq"] for d in listed] == sorted(d["seq"] for d in listed)  # oldest first
    letters = sorted(listed, key=lambda d: d["agent"])  # partitions dead-letter in any order
    assert [d["agent"] for d in letters] == ["Ledger/l0", "Ledger/l1", "Ledger/l2", "Ledger/z"]
    first = letters[0]
    assert first["action"] == "poison" and first["error"] == "handler_error" and first["deliveries"] == 2
    assert "cannot digest this" in first["reason"]
    assert first["body"] == {"value": {"note": "<b>0</b>"}, "truncated": False}
    assert first["headers"]["Na-Action"] == "poison"
    zipped = letters[3]
    assert zipped["headers"]["Na-Encoding"] == "deflate" and zipped["bytes"] < 100
    assert zipped["body"] == {"value": {"note": "z" * 500}, "truncated": False}

    Ledger.broken = False
    replayed = await http(port, "POST", "/api/dead-letters/replay", body={"seq": first["seq"]})
    assert replayed.status == 200 and replayed.json()["action"]["result"]["inbox_seq"] > 0
    deleted = await http(port, "POST", "/api/dead-letters/delete", body={"seq": letters[1]["seq"]})
    assert deleted.status == 200
    again = await http(port, "POST", "/api/dead-letters/delete", body={"seq": letters[1]["seq"]})
    assert again.status == 404 and again.json()["error"] == "not_found"
    missing = await http(port, "POST", "/api/dead-letters/replay", body={"seq": 999})
    assert missing.status == 404

    async def two_left() -> bool:
        items = (await get_json(port, "/api/dead-letters"))["items"]
        return sorted(d["agent"] for d in items) == ["Ledger/l2", "Ledger/z"]

    await wait_for(two_left, timeout=10, interval=0.05, what="two dead letters left")

    async def replay_applied() -> bool:
        info = await get_json(port, "/api/agent?agent=Ledger/l0")
        state = info["state"]
        return state is not None and state["data"]["value"] == {"entries": ["digested <b>0</b>"]}

    await wait_for(replay_applied, timeout=10, interval=0.05, what="the replayed message was applied")


# -- per-kind figures from the services API --------------------------------------------


async def test_sampler_turns_services_stats_into_rates(mesh: Mesh, mesh_factory: MeshFactory) -> None:
    """A services-API peer (as a node's micro service answers ``$SRV.STATS``) whose
    counters grow by 50 requests and 100 ms per sample; another mesh's peer and a garbage
    reply are ignored."""
    prefix = mesh.prefix
    requests = {"n": 0}

    def stats_reply(service: str, subject: str, n: int) -> bytes:
        return json.dumps(
            {
                "type": "io.nats.micro.v1.stats_response",
                "name": "natsagents",
                "id": service,
                "endpoints": [
                    {
                        "name": "Counter",
                        "subject": subject,
                        "num_requests": n,
                        "num_errors": n // 50,
                        "processing_time": n * 2_000_000,
                    }
                ],
            }
        ).encode()

    async def answer(msg: Inbound) -> None:
        requests["n"] += 50
        await mesh.transport.publish(msg.reply, stats_reply("peer-1", f"{prefix}.agent.Counter.>", requests["n"]))
        await mesh.transport.publish(msg.reply, stats_reply("peer-2", "other.agent.Counter.>", 10**6))
        await mesh.transport.publish(msg.reply, b"\x00garbage")

    tasks: set[asyncio.Task[None]] = set()

    def on_stats(msg: Inbound) -> None:
        task = asyncio.get_running_loop().create_task(answer(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    sub = await mesh.transport.subscribe("$SRV.STATS.natsagents", on_stats)
    try:
        client = await mesh_factory(name="dashboard")
        async with Dashboard(client, port=0, interval=0.25) as d:

            async def rates() -> bool:
                series = await get_json(d.port, "/api/series")
                return any(p["kinds"].get("Counter") for p in series["points"])

            await wait_for(rates, timeout=10, interval=0.05, what="Counter rates in the series")
            points = [p for p in (await get_json(d.port, "/api/series"))["points"] if p["kinds"]]
            counter = points[-1]["kinds"]["Counter"]
            assert set(points[-1]["kinds"]) == {"Counter"}
            assert counter["latency_ms"] == pytest.approx(2.0)
            assert 50 <= counter["rate"] <= 50 / 0.2  # 50 requests per sample, one every ~0.25 s
            assert counter["errors"] == pytest.approx(counter["rate"] / 50, rel=0.01)
            assert (await get_json(d.port, "/api/overview"))["kinds"]["Counter"]["rate"] > 0
    finally:
        await sub.unsubscribe()
