"""The cluster commands (``node``, ``ls``, ``nodes``, ``migrate``, ``drain``), run as
subprocesses against a real nats-server; the other nodes are in-test cluster meshes."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from natsagents import ClusterSettings, Mesh
from natsagents.cli import main
from natsagents.cli.cluster import (
    format_resources,
    format_size,
    load_agent_classes,
    parse_resources,
    parse_size,
    render_table,
)
from natsagents.errors import ConfigurationError
from natsagents.testing import wait_for
from natsagents.testing.plugin import MeshFactory
from tests._cli_agents import Echo, Greeter, Sticky, Tally
from tests.cli.test_cli import _env
from tests.cli.test_cli import run_cli as _run_cli

ROOT = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "natsagents")
LEASE = "1.5"


async def run_cli(*args: str, within: float = 20.0) -> tuple[int, str, str]:
    """Run one CLI command to its end, from the repository root; (exit code, stdout, stderr)."""
    return await _run_cli(*args, within=within, cwd=ROOT)


@dataclass
class NodeProc:
    """A ``natsagents node`` subprocess; its stderr goes to a file for diagnostics."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, within: float = 20.0) -> str:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        except TimeoutError:
            raise AssertionError(f"node {self.name} not ready in {within} s; stderr:\n{self.stderr()}") from None
        assert line, f"node {self.name} exited ({await self.proc.wait()}); stderr:\n{self.stderr()}"
        return line.decode().rstrip("\n")

    async def stop(self, sig: signal.Signals = signal.SIGTERM, within: float = 20.0) -> tuple[int, str]:
        """Send ``sig`` and wait for the exit; returns (exit code, the rest of stdout)."""
        assert self.proc.stdout is not None
        self.proc.send_signal(sig)
        try:
            out = await asyncio.wait_for(self.proc.stdout.read(), within)
            rc = await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            raise AssertionError(f"node {self.name} did not stop in {within} s; stderr:\n{self.stderr()}") from None
        return rc, out.decode()


StartNode = Callable[..., Awaitable[NodeProc]]


@pytest.fixture
async def start_node(nats_url: str, mesh_prefix: str, tmp_path: Path) -> AsyncIterator[StartNode]:
    """Starts ``natsagents node --name NAME ...`` on the test's server and prefix and waits
    for its ready line; every node still running at the end is killed."""
    started: list[NodeProc] = []

    async def start(name: str, *options: str, module: str = "tests._cli_agents") -> NodeProc:
        log = tmp_path / f"node-{name}.stderr"
        argv = ("node", "--name", name, "--module", module, "--lease", LEASE, "--servers", nats_url)
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *CLI, *argv, "--prefix", mesh_prefix, *options,
                stdout=asyncio.subprocess.PIPE, stderr=err, env=_env(), cwd=ROOT,
            )  # fmt: skip
        node = NodeProc(name, proc, log)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            if node.proc.returncode is None:
                node.proc.kill()
            await node.proc.wait()


@pytest.fixture
def conn(nats_url: str, mesh_prefix: str) -> tuple[str, ...]:
    """The connection options of the test's mesh."""
    return ("--servers", nats_url, "--prefix", mesh_prefix)


async def _cluster_node(mesh_factory: MeshFactory, name: str) -> Mesh:
    node = await mesh_factory(
        name=name, cluster=ClusterSettings(node_id=name, lease=1.5, rebalance=False, delivery=None)
    )
    await node.host(Tally, Echo, Greeter)
    return node


async def _owners(mesh: Mesh) -> dict[str, str]:
    return {rec.address: rec.node for rec in await mesh.agents()}


async def _wait_member(mesh: Mesh, node: str, kind: str = "Tally") -> None:
    async def seen() -> bool:
        return any(s.record.node_id == node and kind in s.record.kinds and s.live for s in await mesh.nodes())

    await wait_for(seen, timeout=10, interval=0.02, what=f"node {node} listed with {kind}")


# -- node, nodes, ls ------------------------------------------------------------------


async def test_node_is_listed_by_nodes_and_its_agents_by_ls(
    mesh: Mesh, start_node: StartNode, conn: tuple[str, ...]
) -> None:
    node = await start_node("a", "--resources", "cpu=4,memory=8G,gpu=1", "--tags", "ssd,fast")
    (rc, out, err), ready = await asyncio.gather(run_cli("ls", *conn), node.ready())
    assert ready == "node a ready: kinds Echo, Greeter-v2, Sticky, Tally"
    assert (rc, out, err) == (0, "no active agents\n", "")

    assert await mesh.ref("Tally/t-2").call("add", by=5) == 5
    assert await mesh.ref("Tally/t-1").call("add", by=2) == 2
    assert await mesh.ref("Greeter-v2/g-1").call("hello", name="x") == "hello x"

    async def counted() -> bool:
        return [s.record.load.get("agents") for s in await mesh.nodes()] == [3]

    await wait_for(counted, timeout=10, interval=0.02, what="the heartbeat counts 3 agents")

    results = await asyncio.gather(
        run_cli("nodes", *conn),
        run_cli("nodes", "--json", *conn),
        run_cli("ls", *conn),
        run_cli("ls", "--json", *conn),
        run_cli("ls", "--kind", "Tally", "--json", *conn),
        run_cli("ls", "--node", "elsewhere", *conn),
    )
    for rc, _, err in results:
        assert (rc, err) == (0, "")
    nodes_table, nodes_json, ls_table, ls_json, ls_kind, ls_elsewhere = (out for _, out, _ in results)

    header, row = nodes_table.splitlines()
    assert header.split() == ["NODE", "LIVE", "AGENTS", "KINDS", "CPU%", "MEM%", "CAPACITY", "TAGS", "DRAINING", "AGE"]
    cells = row.split()
    assert cells[:4] == ["a", "yes", "3", "Echo,Greeter-v2,Sticky,Tally"]
    assert cells[4].endswith("%") and cells[5].endswith("%")
    assert cells[6:9] == ["cpu=4,memory=8G,gpu=1", "ssd,fast", "no"]
    assert re.fullmatch(r"\d+\.\ds", cells[9]) and float(cells[9][:-1]) <= 1.5
    [listed] = json.loads(nodes_json)
    assert listed["node"] == "a" and listed["live"] is True and listed["draining"] is False
    assert listed["stale"] is False and listed["agents"] == 3
    assert listed["capacity"] == {"cpu": 4.0, "memory": 8_000_000_000, "custom": {"gpu": 1.0}}
    assert listed["kinds"] == ["Echo", "Greeter-v2", "Sticky", "Tally"] and listed["tags"] == ["ssd", "fast"]
    assert listed["load"]["agents"] == 3 and listed["lease"] == 1.5

    assert [line.split() for line in ls_table.splitlines()] == [
        ["KIND/ID", "NODE", "STATUS", "EPOCH"],
        ["Greeter-v2/g-1", "a", "active", "1"],
        ["Tally/t-1", "a", "active", "1"],
        ["Tally/t-2", "a", "active", "1"],
    ]
    agents = json.loads(ls_json)
    assert [(a["agent"], a["kind"], a["id"], a["node"], a["status"], a["epoch"]) for a in agents] == [
        ("Greeter-v2/g-1", "Greeter-v2", "g-1", "a", "active", 1),
        ("Tally/t-1", "Tally", "t-1", "a", "active", 1),
        ("Tally/t-2", "Tally", "t-2", "a", "active", 1),
    ]
    assert [a["agent"] for a in json.loads(ls_kind)] == ["Tally/t-1", "Tally/t-2"]
    assert ls_elsewhere == "no active agents\n"

    # SIGINT drains like SIGTERM; with no other node the agents stop (state saved).
    rc, out = await node.stop(signal.SIGINT)
    assert (rc, out) == (0, "node a drained: moved 0, stopped 3\n"), node.stderr()
    assert await mesh.nodes() == []  # a graceful stop leaves the membership at once


# -- migrate, drain -------------------------------------------------------------------


async def test_migrate_and_drain_between_nodes(
    mesh: Mesh, mesh_factory: MeshFactory, start_node: StartNode, conn: tuple[str, ...]
) -> None:
    a = await start_node("a", "--no-rebalance")
    assert await a.ready() == "node a ready: kinds Echo, Greeter-v2, Sticky, Tally"
    for i, by in enumerate((10, 20, 30), 1):
        assert await mesh.ref(f"Tally/t-{i}").call("add", by=by) == by  # only a exists: all land there
    b = await _cluster_node(mesh_factory, "b")
    await _wait_member(mesh, "b")

    rc, out, err = await run_cli("migrate", "Tally/t-1", "b", *conn)
    assert (rc, err) == (0, "")
    assert re.fullmatch(r"moved Tally/t-1 from a to b \(pause \d+\.\d ms\)\n", out), out
    assert b.local_agents() == ["Tally/t-1"]
    assert await mesh.ref("Tally/t-1").call("add") == 11  # the state came along

    rc, out, err = await run_cli("migrate", "Tally/t-1", "a", "--strategy", "state_transfer", "--json", *conn)
    assert (rc, err) == (0, "")
    result = json.loads(out)
    assert (result["agent"], result["from"], result["to"], result["moved"]) == ("Tally/t-1", "b", "a", True)
    assert result["pause_ms"] >= 0
    assert b.local_agents() == []
    assert await mesh.ref("Tally/t-1").call("get") == 11

    rc, out, _ = await run_cli("migrate", "Tally/t-2", "a", *conn)
    assert (rc, out) == (0, "Tally/t-2 is already on a\n")

    rc, out, err = await run_cli("drain", "a", *conn)
    assert (rc, out, err) == (0, "drained a: moved 3, stopped 0\n", "")
    assert await _owners(mesh) == {"Tally/t-1": "b", "Tally/t-2": "b", "Tally/t-3": "b"}
    assert sorted(b.local_agents()) == ["Tally/t-1", "Tally/t-2", "Tally/t-3"]
    assert [await mesh.ref(f"Tally/t-{i}").call("add") for i in (1, 2, 3)] == [12, 21, 31]

    # a is draining: listed as such, and new agents go to b.
    rc, out, _ = await run_cli("nodes", "--json", *conn)
    assert rc == 0 and {n["node"]: n["draining"] for n in json.loads(out)} == {"a": True, "b": False}
    assert await mesh.ref("Tally/t-4").call("add") == 1
    assert (await _owners(mesh))["Tally/t-4"] == "b"

    rc, out, _ = await run_cli("drain", "a", "--json", *conn)
    assert (rc, json.loads(out)) == (0, {"node": "a", "moved": 0, "stopped": 0})


async def test_an_idle_node_stops_on_sigterm(start_node: StartNode, conn: tuple[str, ...]) -> None:
    """No agents to hand off: the drain is instant and the node closes right after it."""
    a = await start_node("a")
    assert await a.ready() == "node a ready: kinds Echo, Greeter-v2, Sticky, Tally"
    rc, out, _ = await run_cli("drain", "a", *conn)
    assert (rc, out) == (0, "drained a: moved 0, stopped 0\n")
    rc, out = await a.stop(within=10)
    assert (rc, out) == (0, "node a drained: moved 0, stopped 0\n"), a.stderr()


async def test_sigterm_hands_the_agents_to_another_node(
    mesh: Mesh, mesh_factory: MeshFactory, start_node: StartNode, conn: tuple[str, ...]
) -> None:
    a = await start_node("a", "--no-rebalance", module="tests._cli_agents:Tally")
    assert await a.ready() == "node a ready: kinds Tally"
    assert [await mesh.ref(f"Tally/s-{i}").call("add", by=i) for i in (1, 2, 3)] == [1, 2, 3]
    b = await _cluster_node(mesh_factory, "b")
    await _wait_member(mesh, "b")
    assert b.local_agents() == []

    rc, out = await a.stop(signal.SIGTERM)
    assert (rc, out) == (0, "node a drained: moved 3, stopped 0\n"), a.stderr()
    assert sorted(b.local_agents()) == ["Tally/s-1", "Tally/s-2", "Tally/s-3"]
    assert [await mesh.ref(f"Tally/s-{i}").call("add", by=10) for i in (1, 2, 3)] == [11, 12, 13]
    rc, out, _ = await run_cli("ls", "--json", *conn)
    assert rc == 0 and {x["agent"]: x["node"] for x in json.loads(out)} == {f"Tally/s-{i}": "b" for i in (1, 2, 3)}
    assert [s.record.node_id for s in await mesh.nodes()] == ["b"]


async def test_migrate_and_drain_failures_exit_1(mesh_factory: MeshFactory, mesh: Mesh, conn: tuple[str, ...]) -> None:
    await _cluster_node(mesh_factory, "b")
    assert await mesh.ref("Tally/x").call("add") == 1
    unknown, to_nowhere, wrong_kind, no_node = await asyncio.gather(
        run_cli("migrate", "Tally/nope", "b", *conn),
        run_cli("migrate", "Tally/x", "zzz", *conn),
        run_cli("migrate", "Tally/x", "b", "--strategy", "cold_start", *conn),  # already there: fine
        run_cli("drain", "zzz", "--timeout", "2", *conn),
    )
    assert unknown == (1, "", "error: not_found: Tally/nope is not active\n")
    assert to_nowhere == (1, "", "error: unavailable: node zzz is not a live member\n")
    assert wrong_kind == (0, "Tally/x is already on b\n", "")
    assert no_node == (1, "", "error: unavailable: node zzz is not running\n")


async def test_a_second_signal_exits_without_finishing_the_drain(mesh: Mesh, start_node: StartNode) -> None:
    node = await start_node("a", module="tests._cli_agents:Sticky")
    assert await node.ready() == "node a ready: kinds Sticky"
    assert await mesh.ref("Sticky/s-1").call("touch") is True
    node.proc.send_signal(signal.SIGTERM)

    async def draining() -> bool:
        return [s.record.draining for s in await mesh.nodes()] == [True]

    await wait_for(draining, timeout=10, interval=0.02, what="node a announces it is draining")
    rc, out = await node.stop(signal.SIGINT)  # Sticky never stops: the drain cannot finish
    assert (rc, out) == (130, "")
    assert "error: node a interrupted again: exiting without finishing the drain" in node.stderr()


# -- bad input ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_server_exits_3() -> None:
    url = f"nats://127.0.0.1:{_free_port()}"
    opts = ("--servers", url, "--connect-timeout", "1")
    started = time.monotonic()
    results = await asyncio.gather(
        run_cli("node", "--module", "tests._cli_agents", "--name", "n", *opts),
        run_cli("ls", *opts),
        run_cli("nodes", *opts),
        run_cli("migrate", "Tally/x", "b", *opts),
        run_cli("drain", "b", *opts),
    )
    for rc, out, err in results:
        assert (rc, out) == (3, ""), err
        assert f"could not connect to NATS at {url}" in err
    assert time.monotonic() - started < 10


async def test_node_with_an_unknown_module_exits_2(nats_url: str) -> None:
    rc, out, err = await run_cli("node", "--module", "no_such_agents_module", "--servers", nats_url)
    assert (rc, out) == (2, "")
    assert err == "error: no module named 'no_such_agents_module'\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["node", "--module", "no_such_module"], "no module named 'no_such_module'"),
        (["node", "--module", "agents.py"], "not a file path"),
        (["node", "--module", "tests._cli_agents:Nope"], "has no agent kind 'Nope' (its agent kinds: Echo, Greeter-v2"),
        (["node", "--module", "json"], "module 'json' defines no Agent subclasses"),
        (["node", "--module", "tests._cli_agents:NotAnAgent"], "has no agent kind 'NotAnAgent'"),
        (["node", "--module", "tests._cli_agents", "--resources", "cpu"], "must look like NAME=AMOUNT"),
        (["node", "--module", "tests._cli_agents", "--resources", "cpu=four"], "cpu must be a number of cores"),
        (["node", "--module", "tests._cli_agents", "--resources", "memory=8X"], "memory: invalid size '8X'"),
        (["node", "--module", "tests._cli_agents", "--resources", "gpu=-1"], "gpu must be a number >= 0"),
        (["node", "--module", "tests._cli_agents", "--resources", "cpu=1,cpu=2"], "'cpu' is given twice"),
        (["node", "--module", "tests._cli_agents", "--resources", "g p u=1"], "invalid resource name"),
        (["node", "--module", "tests._cli_agents", "--name", "a b"], "invalid node id 'a b'"),
        (["node", "--module", "tests._cli_agents", "--lease", "0.5"], "lease must be at least 1 second"),
        (["node", "--module", "tests._cli_agents", "--prefix", "a b"], "invalid subject prefix"),
        (["ls", "--kind", "9x"], "invalid agent kind"),
        (["migrate", "Tally", "b"], "agent address must look like 'Kind/id'"),
        (["migrate", "Tally/x", "b.c"], "invalid node id 'b.c'"),
        (["drain", "*"], "invalid node id '*'"),
    ],
)
def test_usage_errors_exit_2_before_connecting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))  # node --module adds the current directory
    assert main([*argv, "--servers", "nats://127.0.0.1:1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err, captured.err


def test_argparse_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node", "--servers", "nats://127.0.0.1:1"]) == 2
    assert "--module" in capsys.readouterr().err
    assert main(["migrate", "Tally/x", "b", "--strategy", "teleport"]) == 2
    assert "invalid choice: 'teleport'" in capsys.readouterr().err
    assert main(["node", "--module", "m", "--weight", "0"]) == 2
    assert main(["drain"]) == 2


def test_node_takes_a_data_dir_for_its_degraded_write_queue() -> None:
    from natsagents.cli.main import build_parser

    args = build_parser().parse_args(["node", "--module", "m", "--data-dir", "/var/lib/na"])
    assert args.data_dir == "/var/lib/na"
    assert build_parser().parse_args(["node", "--module", "m"]).data_dir is None


# -- helpers --------------------------------------------------------------------------


def test_load_agent_classes_from_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fleet_agents.py").write_text(
        "from natsagents import Agent, action\n"
        "from tests._cli_agents import Tally\n"  # imported, not defined here: only taken by name
        "class Pump(Agent):\n"
        "    @action\n"
        "    async def run(self) -> int:\n"
        "        return 1\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "fleet_agents", raising=False)
    try:
        [pump] = load_agent_classes(["fleet_agents"])
        assert pump.kind == "Pump" and sys.path[0] == str(tmp_path)
        assert [c.kind for c in load_agent_classes(["fleet_agents:Tally,Pump"])] == ["Pump", "Tally"]
    finally:
        sys.modules.pop("fleet_agents", None)
    # By wire name or by class name; one module given twice is fine.
    assert load_agent_classes(["tests._cli_agents:Greeter-v2", "tests._cli_agents:Greeter"]) == [Greeter]
    assert load_agent_classes(["tests._cli_agents"]) == [Echo, Greeter, Sticky, Tally]
    with pytest.raises(ConfigurationError, match="needs a module name"):
        load_agent_classes([":Tally"])


def test_parse_and_format_resources() -> None:
    assert parse_resources("cpu=4,memory=8G,gpu=1") == {"cpu": 4.0, "memory": 8_000_000_000, "custom": {"gpu": 1.0}}
    assert parse_resources(" cpu = 0.5 , mem=512Mi, ") == {"cpu": 0.5, "memory": 512 * 2**20}
    assert parse_resources("") == {}
    sizes = {"123": 123, "1K": 1000, "1Ki": 1024, "1.5G": 1_500_000_000, "2GiB": 2 * 2**30, "3tb": 3 * 10**12}
    assert {text: parse_size(text) for text in sizes} == sizes
    for bad in ("", "G", "1.2.3", "-1", "1 X", "1e3"):
        with pytest.raises(ConfigurationError, match="invalid size"):
            parse_size(bad)
    for n, text in [(0, "0"), (999, "999"), (8 * 10**9, "8G"), (8 * 2**30, "8Gi"), (1536, "1.54K"), (10**15, "1000T")]:
        assert format_size(n) == text
        assert text == "1.54K" or parse_size(text) == n
    assert format_resources({"cpu": 4.0, "memory": 512 * 2**20, "custom": {"tpu": 2.0, "gpu": 0.5}}) == (
        "cpu=4,memory=512Mi,gpu=0.5,tpu=2"
    )
    assert format_resources({}) == "unlimited"
    assert render_table(("A", "BB"), [("xyz", "1"), ("", "")]) == "A    BB\nxyz  1\n"
