"""``natsagents dashboard`` as a subprocess against a real nats-server: it prints its URL,
serves the page and the API for the mesh it was pointed at, stops cleanly on SIGTERM, and
refuses bad usage."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path

import nkeys
import pytest

from natsagents import ClusterSettings
from natsagents.testing.plugin import MeshFactory
from tests.agents import Counter
from tests.cli.test_cli import CLI, background, free_port, read_until, run_cli
from tests.dashboard_helpers import cluster, get_json, http


async def test_dashboard_serves_until_sigterm(mesh_factory: MeshFactory, nats_url: str, mesh_prefix: str) -> None:
    await cluster(mesh_factory, "n1")
    argv = (*CLI, "dashboard", "--http", "127.0.0.1:0", "--interval", "0.2", "--servers", nats_url)
    async with background(*argv, "--prefix", mesh_prefix) as proc:
        line = (await read_until(proc, "dashboard on "))[-1]
        url = line.removeprefix("dashboard on ")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        port = int(url.rsplit(":", 1)[1].rstrip("/"))
        page = await http(port, "GET", "/")
        assert page.status == 200 and b"natsagents dashboard" in page.body
        for _ in range(100):
            overview = await get_json(port, "/api/overview")
            if overview["nodes"]:
                break
            await asyncio.sleep(0.05)
        assert overview["prefix"] == mesh_prefix
        assert [n["node"] for n in overview["nodes"]] == ["n1"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_dashboard_usage_errors(nats_url: str) -> None:
    port = free_port()
    blocker = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    taken = blocker.sockets[0].getsockname()[1]
    try:
        bad_http, bad_prefix, no_seed, refused, busy = await asyncio.gather(
            run_cli("dashboard", "--http", "nowhere", "--servers", nats_url),
            run_cli("dashboard", "--prefix", "a b", "--servers", nats_url),
            run_cli("dashboard", "--identity", "/nonexistent/ops.nk", "--servers", nats_url),
            run_cli("dashboard", "--servers", f"nats://127.0.0.1:{port}", "--connect-timeout", "1"),
            run_cli("dashboard", "--http", f"127.0.0.1:{taken}", "--servers", nats_url),  # the address is taken
        )
    finally:
        blocker.close()
        await blocker.wait_closed()
    assert bad_http[0] == 2 and "expected HOST:PORT" in bad_http[2]
    assert bad_prefix[0] == 2
    assert no_seed[0] == 2 and "nkey seed" in no_seed[2]
    assert refused[0] == 3
    assert busy[0] == 2 and f"cannot listen on 127.0.0.1:{taken}" in busy[2]


@pytest.mark.skipif(
    "trusted_operators" not in {f.name for f in dataclasses.fields(ClusterSettings)},
    reason="this SDK's nodes do not check operator signatures",
)
async def test_dashboard_signs_control_requests_with_its_identity(
    mesh_factory: MeshFactory, nats_url: str, mesh_prefix: str, tmp_path: Path
) -> None:
    """A node that obeys only a trusted operator: the dashboard started with that
    operator's seed drains it; one without an identity is refused (403, unauthorized)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    public = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
    (tmp_path / "ops.nk").write_text(seed + "\n")
    settings = ClusterSettings(node_id="n1", lease=1.5, rebalance=False, trusted_operators=[public])  # type: ignore[call-arg]
    node = await mesh_factory(name="n1", cluster=settings)
    await node.host(Counter)
    base = (*CLI, "dashboard", "--http", "127.0.0.1:0", "--interval", "0.2", "--servers", nats_url)

    async def drain_with(*extra: str) -> tuple[int, dict[str, object]]:
        async with background(*base, "--prefix", mesh_prefix, *extra) as proc:
            url = (await read_until(proc, "dashboard on "))[-1].removeprefix("dashboard on ")
            port = int(url.rsplit(":", 1)[1].rstrip("/"))
            for _ in range(100):
                if (await get_json(port, "/api/overview"))["nodes"]:
                    break
                await asyncio.sleep(0.05)
            drained = await http(port, "POST", "/api/drain", body={"node": "n1"})
            assert drained.status == 200
            for _ in range(200):
                actions = (await get_json(port, "/api/overview"))["actions"]
                if actions and actions[0]["status"] != "running":
                    break
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            return drained.status, actions[0]

    _, unsigned = await drain_with()
    assert unsigned["status"] == "failed" and unsigned["error"]["code"] == "unauthorized"  # type: ignore[index]
    assert node.cluster_node is not None and not node.cluster_node.draining
    _, signed = await drain_with("--identity", str(tmp_path / "ops.nk"))
    assert signed["status"] == "ok", signed
    assert node.cluster_node.draining
