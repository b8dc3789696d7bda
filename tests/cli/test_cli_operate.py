"""``natsagents drain`` (with its progress), ``undrain`` and ``--identity``, run as
subprocesses against in-test cluster nodes; on nodes with trusted operators only signed
requests are obeyed."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import nkeys
import pytest

from natsagents import ClusterSettings, Hints, Identity, Mesh
from natsagents.testing import wait_for
from natsagents.testing.plugin import MeshFactory
from tests._cli_agents import Tally
from tests.cli.test_cli_cluster import StartNode, run_cli, start_node  # noqa: F401  (the fixture)

OPS = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


@pytest.fixture
def conn(nats_url: str, mesh_prefix: str) -> tuple[str, ...]:
    """The connection options of the test's mesh."""
    return ("--servers", nats_url, "--prefix", mesh_prefix)


async def _nodes(mesh_factory: MeshFactory, *names: str, **extra: Any) -> list[Mesh]:
    out = []
    for name in names:
        settings = ClusterSettings(node_id=name, lease=1.5, rebalance=False, delivery=None, **extra)
        node = await mesh_factory(name=name, cluster=settings)
        await node.host(Tally)
        out.append(node)

    def seen() -> bool:
        return all(
            m.cluster_node is not None and set(names) <= {n.node_id for n in m.cluster_node.nodes() if n.live}
            for m in out
        )

    await wait_for(seen, timeout=10, what="the nodes see each other")
    return out


def _seed_file(tmp_path: Path) -> str:
    path = tmp_path / "ops.nk"
    path.write_text(OPS + "\n")
    path.chmod(0o600)
    return str(path)


async def test_drain_shows_progress_and_undrain_lets_the_node_take_agents_again(
    mesh: Mesh, mesh_factory: MeshFactory, conn: tuple[str, ...]
) -> None:
    a, b = await _nodes(mesh_factory, "a", "b")
    for i in range(3):
        await mesh.spawn(f"Tally/p{i}", hints=Hints(pin="a"))
    rc, out, err = await run_cli("drain", "a", "--progress", *conn)
    assert (rc, out) == (0, "drained a: moved 3, stopped 0\n"), err
    assert "draining a" in err and "3/3" in err and "0 agents left" in err, err  # the progress, on stderr
    assert a.local_agents() == [] and sorted(b.local_agents()) == ["Tally/p0", "Tally/p1", "Tally/p2"]
    assert a.cluster_node is not None and a.cluster_node.draining

    rc, out, err = await run_cli("undrain", "a", *conn)
    assert (rc, out, err) == (0, "undrained a: it takes new agents again\n", "")
    assert not a.cluster_node.draining
    (rc, out, err), unknown = await asyncio.gather(
        run_cli("undrain", "a", "--json", *conn), run_cli("undrain", "zzz", "--timeout", "2", *conn)
    )
    assert (rc, json.loads(out), err) == (0, {"node": "a", "undrained": False}, "")
    assert unknown == (1, "", "error: unavailable: node zzz is not running\n")


async def test_nodes_with_trusted_operators_obey_only_signed_requests(
    mesh: Mesh,
    mesh_factory: MeshFactory,
    conn: tuple[str, ...],
    tmp_path: Path,
    start_node: StartNode,  # noqa: F811
) -> None:
    key = Identity.from_seed(OPS).public_key
    a = await start_node("a", "--no-rebalance", "--trusted-operator", key, module="tests._cli_agents:Tally")
    assert await a.ready() == "node a ready: kinds Tally"
    (b,) = await _nodes(mesh_factory, "b")

    async def both() -> bool:
        return {s.record.node_id for s in await mesh.nodes() if s.live} == {"a", "b"}

    await wait_for(both, timeout=10, what="a and b listed")
    await mesh.spawn("Tally/s", hints=Hints(pin="a"))
    seed = _seed_file(tmp_path)

    drain, migrate, undrain, no_seed = await asyncio.gather(
        run_cli("drain", "a", *conn),
        run_cli("migrate", "Tally/s", "b", *conn),
        run_cli("undrain", "a", *conn),
        run_cli("undrain", "a", "--identity", str(tmp_path / "missing.nk"), *conn),
    )
    for rc, out, err in (drain, migrate, undrain):
        assert (rc, out) == (1, "") and err.startswith("error: unauthorized: "), err
    assert (no_seed[0], no_seed[1]) == (2, "") and "seed" in no_seed[2], no_seed
    assert [(r.address, r.node) for r in await mesh.agents()] == [("Tally/s", "a")]

    rc, out, err = await run_cli("drain", "a", "--identity", seed, *conn)  # signed: obeyed
    assert (rc, out, err) == (0, "drained a: moved 1, stopped 0\n", "")
    assert b.local_agents() == ["Tally/s"]
    rc, out, err = await run_cli("undrain", "a", "--identity", seed, *conn)
    assert (rc, out, err) == (0, "undrained a: it takes new agents again\n", "")
    rc, out = await a.stop()
    assert (rc, out) == (0, "node a drained: moved 0, stopped 0\n"), a.stderr()
