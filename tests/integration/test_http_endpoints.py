"""A node's HTTP endpoints: Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` for
orchestrators' probes (``Mesh.serve_http``, ``natsagents node --http``).

Before: ``natsagents node`` opened no port; metrics sat in a private registry."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from natsagents import ClusterSettings, ConfigurationError, Mesh
from natsagents.delivery.settings import DeliverySettings
from natsagents.testing import wait_for
from tests.agents import Counter
from tests.cli.test_cli_cluster import StartNode, start_node  # noqa: F401  (the fixture)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


async def get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one request, in a thread (urllib blocks)."""

    def fetch() -> tuple[int, str, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
        try:
            with _OPENER.open(req, timeout=5) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Content-Type", ""), err.read().decode()

    return await asyncio.to_thread(fetch)


async def raw_request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def a_node(mesh_factory: Any, name: str = "n1") -> Mesh:
    settings = ClusterSettings(
        node_id=name, lease=1.5, rebalance=False, delivery=DeliverySettings(partitions=2, ack_wait=5.0)
    )
    node: Mesh = await mesh_factory(name=name, cluster=settings)
    await node.host(Counter)
    return node


async def test_metrics_health_and_readiness_of_a_cluster_node(mesh_factory: Any) -> None:
    node = await a_node(mesh_factory)
    port = await node.serve_http()
    assert await node.ref("Counter/c").call("add") == 1
    status, ctype, body = await get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert 'natsagents_handled_total{action="add",kind="Counter",outcome="ok"} 1.0' in body
    assert "natsagents_calls_total" in body
    status, ctype, body = await get(port, "/healthz")
    assert (status, ctype, json.loads(body)["status"]) == (200, "application/json", "ok")

    async def ready() -> bool:
        return (await get(port, "/readyz"))[0] == 200

    await wait_for(ready, timeout=10, what="ready (partitions taken)")
    status, _, body = await get(port, "/readyz")
    info = json.loads(body)
    assert info["node"] == "n1" and info["partitions"] == [0, 1] and info["reasons"] == []
    await node.drain()
    status, _, body = await get(port, "/readyz")
    assert status == 503 and "draining" in json.loads(body)["reasons"]
    assert (await get(port, "/healthz"))[0] == 200  # draining is alive, not ready


async def test_bad_requests_get_a_status_and_the_endpoints_keep_working(mesh_factory: Any) -> None:
    mesh = await mesh_factory()
    port = await mesh.serve_http()
    assert (await get(port, "/nope"))[0] == 404
    assert (await get(port, "/metrics", method="POST"))[0] == 405
    assert (await get(port, "/healthz", method="HEAD"))[0] == 200
    assert (await raw_request(port, b"\xff\xfe garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
    assert (await raw_request(port, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n")).startswith(b"HTTP/1.1 400")
    assert (await get(port, "/healthz"))[0] == 200
    with pytest.raises(ConfigurationError):
        await mesh.serve_http()
    await mesh.aclose()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # closed with the mesh


async def test_the_node_command_serves_them(start_node: StartNode) -> None:  # noqa: F811
    node = await start_node("h1", "--http", "127.0.0.1:0")
    line = await node.ready()
    assert line.startswith("node h1 serves http://127.0.0.1:") and line.endswith("/metrics, /healthz, /readyz")
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    assert (await node.ready()).startswith("node h1 ready")
    status, _, body = await get(port, "/healthz")
    assert status == 200 and json.loads(body)["node"] == "h1"
    assert "natsagents_active_agents" in (await get(port, "/metrics"))[2]
    rc, _ = await node.stop()
    assert rc == 0
