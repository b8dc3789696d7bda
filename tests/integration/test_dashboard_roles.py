"""The dashboard connected as the least-privilege ``operator`` user of ``natsagents auth``
(docs/security.md, "The web dashboard"): it lists nodes and agents and migrates and drains;
what the role may not read (agent state, the dead-letter stream's info) is reported on the
page, and the rest keeps working."""

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
        main(["auth", "--out", str(out), "--node", "n1:Counter", "--node", "n2:Counter", "--operator", "ops"])
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
        for user in ("n1", "n2", "ops"):
            node = user != "ops"
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

        # Not readable by this role: the state and the dead-letter count; said, not hidden.
        state = await http(port, "GET", "/api/agent?agent=Counter/c2")
        assert state.status == 403 and state.json()["error"] == "unauthorized", state

        async def dead_letters_refused() -> bool:
            errors = (await get_json(port, "/api/overview"))["errors"]
            return "dead letters" in errors and "Unauthorized" in errors["dead letters"]

        await wait_for(dead_letters_refused, timeout=10, interval=0.05, what="the refused count is reported")

        async def services_refused() -> bool:
            errors = (await get_json(port, "/api/overview"))["errors"]
            return "services" in errors and "$SRV.STATS.natsagents" in errors["services"]

        await wait_for(services_refused, timeout=10, interval=0.05, what="the refused $SRV.STATS is reported")
        # A refused source is left alone for a minute, not asked in every sample (0.2 s).
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
