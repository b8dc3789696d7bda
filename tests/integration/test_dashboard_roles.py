"""The dashboard connected as the least-privilege ``operator`` user of ``natsagents auth``
(docs/security.md, "The web dashboard"): it lists nodes and agents and migrates and drains;
reads the dead-letter count and the per-kind figures of the services API; what the role may
not read (agent state) is reported on the page, and the rest keeps working."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from natsagents import Auth, ClusterSettings, Mesh
from natsagents.cli import Exit, main
from natsagents.cli.auth import CONFIG_NAME
from natsagents.dashboard import Dashboard
from natsagents.server import NatsServer
from natsagents.testing import wait_for
from tests.agents import Counter
from tests.dashboard_helpers import get_json, http


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("auth")
    assert (
        main(
            [
                "auth",
                "--out",
                str(out),
                "--node",
                "n1:Counter",
                "--node",
                "n2:Counter",
                "--operator",
                "ops",
                "--caller",
                "carol:Counter",
            ]
        )
        == Exit.OK
    )
    return out


@pytest.fixture(scope="module")
def server(creds: Path) -> Iterator[NatsServer]:
    srv = NatsServer(include=creds / CONFIG_NAME).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def meshes(server: NatsServer, creds: Path) -> AsyncIterator[dict[str, Mesh]]:
    opened: dict[str, Mesh] = {}
    try:
        for user in ("n1", "n2", "ops", "carol"):
            node = user in ("n1", "n2")
            opened[user] = await Mesh.connect(
                server.url,
                name=user,
                auth=Auth(nkey_seed=str(creds / f"{user}.nk")),
                inbox_prefix=f"_INBOX.{user}",
                cluster=ClusterSettings(node_id=user, lease=1.5, rebalance=False) if node else None,
            )
            if node:
                await opened[user].host(Counter)
        yield opened
    finally:
        for mesh in reversed(opened.values()):
            await mesh.aclose()


async def test_dashboard_as_the_operator_role(meshes: dict[str, Mesh]) -> None:
    n1 = meshes["n1"]
    for i in range(4):
        await n1.ref(f"Counter/c{i}").call("add", by=i + 1)
    async with Dashboard(meshes["ops"], port=0, interval=0.2) as d:
        port = d.port

        async def listed() -> bool:
            overview = await get_json(port, "/api/overview")
            return {n["node"] for n in overview["nodes"]} == {"n1", "n2"} and overview["catalog"]["agents"] == 4

        await wait_for(listed, timeout=10, interval=0.05, what="nodes and agents listed as the operator")
        assert (await get_json(port, "/api/agents?q=c2"))["items"][0]["agent"] == "Counter/c2"

        # Not readable by this role: agent state; said, not hidden.
        state = await http(port, "GET", "/api/agent?agent=Counter/c2")
        assert state.status == 403 and state.json()["error"] == "unauthorized", state

        # Readable: the dead-letter count and the per-kind figures of the services API.
        async def sampled() -> bool:
            overview = await get_json(port, "/api/overview")
            series = await get_json(port, "/api/series")
            return overview["dead_letters"] == 0 and any(p["kinds"].get("Counter") for p in series["points"])

        await wait_for(sampled, timeout=10, interval=0.05, what="the dead-letter count and $SRV.STATS figures")
        assert (await get_json(port, "/api/overview"))["errors"] == {}
        # Sampling asks nothing the role may not read: no permission violation in eight samples.
        transport = meshes["ops"].transport
        refused = transport.permission_errors
        samples = len(d.sampler.points)
        await wait_for(lambda: len(d.sampler.points) >= samples + 8, timeout=10, what="eight more samples")
        assert transport.permission_errors == refused

        # Allowed: migrate and drain.
        owner = (await get_json(port, "/api/agents?q=c2"))["items"][0]["node"]
        target = "n2" if owner == "n1" else "n1"
        moved = await http(port, "POST", "/api/migrate", body={"agent": "Counter/c2", "to": target})
        assert moved.status == 200 and moved.json()["action"]["status"] == "ok", moved
        assert await n1.ref("Counter/c2").call("add", by=0) == 3
        drained = await http(port, "POST", "/api/drain", body={"node": target})
        assert drained.status == 200

        async def drain_done() -> bool:
            actions = (await get_json(port, "/api/overview"))["actions"]
            return actions[0]["action"] == "drain" and actions[0]["status"] == "ok"

        await wait_for(drain_done, timeout=15, interval=0.05, what="the drain ended")
        assert {r.node for r in await n1.agents()} == {owner}


async def test_sources_the_user_may_not_read_are_reported_and_left_alone(meshes: dict[str, Mesh]) -> None:
    """Run as a caller, which may read none of the sampled sources: each refusal is reported
    once on the page and the source is not asked again in every sample (each ask would be a
    violation in the server's log)."""
    async with Dashboard(meshes["carol"], port=0, interval=0.2) as d:
        port = d.port

        async def refused() -> bool:
            errors = (await get_json(port, "/api/overview"))["errors"]
            return all(
                "Unauthorized" in errors.get(source, "")
                for source in ("directory", "members", "services", "dead letters")
            )

        await wait_for(refused, timeout=10, interval=0.05, what="the refused sources are reported")
        transport = meshes["carol"].transport
        before = transport.permission_errors
        samples = len(d.sampler.points)
        await wait_for(lambda: len(d.sampler.points) >= samples + 8, timeout=10, what="eight more samples")
        assert transport.permission_errors == before
