"""The durable-delivery commands (``send``/``call --delivery``, ``send --wait``, ``dlq ls``,
``dlq replay``, ``dlq rm``), run as subprocesses against a real nats-server; the cluster
node that consumes the durable inbox is an in-test mesh."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from natsagents import Agent, ClusterSettings, DeliverySettings, Mesh, action
from natsagents.cli import main
from natsagents.cli.delivery import format_age
from natsagents.testing import wait_for
from natsagents.testing.plugin import MeshFactory
from tests.cli.test_cli import free_port, run_cli

WAIT = ("--timeout", "20")  # durable calls wait for the node; generous on a loaded machine
FAST = DeliverySettings(partitions=4, max_deliver=3, backoff=(0.02,), ack_wait=5.0, attempt_timeout=5.0)


class Journal(Agent):
    """Appends what it is given; ``poison`` fails while ``Journal.broken`` is true.

    Defined here rather than in ``tests/_cli_agents`` because ``node --module
    tests._cli_agents`` hosts every kind of that module and the cluster CLI tests check
    the list."""

    broken = True

    def initial_state(self) -> dict[str, Any]:
        return {"items": []}

    @action
    async def add(self, value: int) -> list[Any]:
        self.state["items"].append(value)
        return list(self.state["items"])

    @action
    async def get(self) -> list[Any]:
        return list(self.state["items"])

    @action
    async def poison(self) -> str:
        if Journal.broken:
            raise ValueError("cannot digest this")
        self.state["items"].append("digested")
        return "digested"


@pytest.fixture
def conn(nats_url: str, mesh_prefix: str) -> tuple[str, ...]:
    return ("--servers", nats_url, "--prefix", mesh_prefix)


@pytest.fixture
async def node(mesh_factory: MeshFactory) -> Mesh:
    """A cluster node hosting ``Journal``: it consumes the durable inbox."""
    settings = ClusterSettings(node_id="n1", lease=1.5, rebalance=False, delivery=FAST)
    mesh = await mesh_factory(name="n1", cluster=settings)
    await mesh.host(Journal)
    return mesh


@pytest.fixture(autouse=True)
def _journal_broken() -> Any:
    Journal.broken = True
    yield
    Journal.broken = True


async def _items(mesh: Mesh, agent: str) -> list[Any]:
    return list(await mesh.ref(agent).call("get", timeout=10))


# -- send / call ----------------------------------------------------------------------


async def test_durable_send_is_stored_then_applied_and_wait_prints_the_result(
    node: Mesh, conn: tuple[str, ...]
) -> None:
    stored, waited, called, plain = await asyncio.gather(
        run_cli("send", "Journal/j-1", "add", "-p", "value=5", "--delivery", "exactly_once", *conn),
        run_cli(
            "send", "Journal/j-2", "add", "--json", '{"value": 7}', "--delivery", "exactly_once", "--wait", *WAIT, *conn
        ),
        run_cli("call", "Journal/j-3", "add", "-p", "value=1", "--delivery", "at_least_once", *WAIT, *conn),
        run_cli("send", "Journal/j-4", "add", "-p", "value=2", "--wait", *conn),
    )
    assert stored == (0, "stored\n", "")
    assert (waited[0], json.loads(waited[1]), waited[2]) == (0, [7], "")
    assert (called[0], json.loads(called[1]), called[2]) == (0, [1], "")
    assert (plain[0], json.loads(plain[1]), plain[2]) == (0, [2], "")

    async def applied() -> bool:
        return await _items(node, "Journal/j-1") == [5]

    await wait_for(applied, timeout=10, interval=0.05, what="the stored message was applied")
    # A durable call's error reply exits 1 with its code; the message was dead-lettered.
    rc, out, err = await run_cli("send", "Journal/p-0", "poison", "--delivery", "at_least_once", "--wait", *WAIT, *conn)
    assert (rc, out) == (1, "")
    assert "error: handler_error: ValueError: cannot digest this" in err


# -- dlq ------------------------------------------------------------------------------


async def test_dlq_commands_before_any_dead_letter_stream(conn: tuple[str, ...]) -> None:
    (ls, ls_json, replay, replay_all, rm) = await asyncio.gather(
        run_cli("dlq", "ls", *conn),
        run_cli("dlq", "ls", "--json", *conn),
        run_cli("dlq", "replay", "1", *conn),
        run_cli("dlq", "replay", "--all", *conn),
        run_cli("dlq", "rm", "1", *conn),
    )
    assert ls == (0, "no dead letters\n", "")
    assert (ls_json[0], json.loads(ls_json[1]), ls_json[2]) == (0, [], "")
    assert replay == (1, "", "error: not_found: no dead letter 1\n")
    assert replay_all == (0, "no dead letters\n", "")
    assert rm == (1, "", "error: not_found: no dead letter 1\n")


async def test_poison_messages_are_listed_replayed_and_removed(node: Mesh, conn: tuple[str, ...]) -> None:
    rc, out, err = await run_cli("dlq", "ls", *conn)  # the node made the (empty) stream
    assert (rc, out, err) == (0, "no dead letters\n", "")

    agents = ("Journal/p-1", "Journal/p-2", "Journal/p-3")
    sends = await asyncio.gather(
        *(run_cli("send", agent, "poison", "--delivery", "at_least_once", *conn) for agent in agents)
    )
    assert sends == [(0, "stored\n", "")] * 3

    async def three_letters() -> bool:
        return len(await node.dead_letters()) == 3

    await wait_for(three_letters, timeout=15, interval=0.05, what="three dead letters")
    seq = {letter.agent: letter.seq for letter in await node.dead_letters()}

    (rc, table, err), (rc_json, out_json, err_json), (rc_lim, out_lim, err_lim) = await asyncio.gather(
        run_cli("dlq", "ls", *conn),
        run_cli("dlq", "ls", "--json", *conn),
        run_cli("dlq", "ls", "--limit", "1", *conn),
    )
    assert (rc, err) == (0, "")
    lines = table.splitlines()
    assert lines[0].split() == ["SEQ", "AGENT", "ACTION", "ERROR", "DELIVERIES", "AGE", "REASON"]
    assert len(lines) == 4
    for line in lines[1:]:
        cells = line.split()
        assert cells[1] in agents and cells[2:5] == ["poison", "handler_error", "3"]
        assert cells[0] == str(seq[cells[1]]) and cells[5].endswith("s")
        assert "ValueError: cannot digest this" in line
    assert (rc_json, err_json) == (0, "")
    letters = json.loads(out_json)
    assert [(d["agent"], d["action"], d["error"], d["deliveries"]) for d in letters] == sorted(
        ((a, "poison", "handler_error", 3) for a in agents), key=lambda t: seq[t[0]]
    )
    assert all("cannot digest" in d["reason"] and d["message_id"] and d["time_ms"] > 0 for d in letters)
    assert rc_lim == 0 and len(out_lim.splitlines()) == 2
    assert err_lim == "note: showing the oldest 1; --limit N shows more\n"

    # rm: one of them; unknown and already-deleted sequences fail the command.
    rc, out, err = await run_cli("dlq", "rm", str(seq["Journal/p-3"]), *conn)
    assert (rc, out, err) == (0, f"deleted {seq['Journal/p-3']}\n", "")
    rc, out, err = await run_cli("dlq", "rm", str(seq["Journal/p-3"]), "999", "--json", *conn)
    assert rc == 1
    assert json.loads(out) == [
        {
            "seq": seq["Journal/p-3"],
            "deleted": False,
            "error": "not_found",
            "message": f"no dead letter {seq['Journal/p-3']}",
        },
        {"seq": 999, "deleted": False, "error": "not_found", "message": "no dead letter 999"},
    ]
    assert err.count("error: not_found: no dead letter") == 2

    # The agent is fixed: a replay applies the message; the unknown sequence still fails.
    Journal.broken = False
    rc, out, err = await run_cli("dlq", "replay", str(seq["Journal/p-1"]), "999", *conn)
    assert rc == 1
    assert out.startswith(f"replayed {seq['Journal/p-1']} (inbox seq ")
    assert err == "error: not_found: no dead letter 999\n"
    rc, out, err = await run_cli("dlq", "replay", "--all", "--json", *conn)
    assert (rc, err) == (0, "")
    replayed = json.loads(out)
    assert [(r["seq"], r["replayed"]) for r in replayed] == [(seq["Journal/p-2"], True)]
    assert replayed[0]["inbox_seq"] > 0

    for agent in ("Journal/p-1", "Journal/p-2"):

        async def digested(agent: str = agent) -> bool:
            return await _items(node, agent) == ["digested"]

        await wait_for(digested, timeout=10, interval=0.05, what=f"{agent}'s replayed message was applied")
    assert await _items(node, "Journal/p-3") == []  # removed, never replayed
    rc, out, err = await run_cli("dlq", "ls", *conn)
    assert (rc, out, err) == (0, "no dead letters\n", "")


# -- usage, unreachable ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dlq"], "required: SUBCOMMAND"),
        (["dlq", "replay"], "give the dead letter sequences to replay"),
        (["dlq", "replay", "1", "--all"], "give dead letter sequences or --all, not both"),
        (["dlq", "replay", "x"], "not an integer: 'x'"),
        (["dlq", "rm"], "required: SEQ"),
        (["dlq", "rm", "0"], "must be >= 1"),
        (["dlq", "ls", "--limit", "0"], "must be >= 1"),
        (["dlq", "ls", "--prefix", "a b"], "invalid subject prefix"),
        (["send", "Journal/x"], "required: ACTION"),
        (["send", "Journal/x", "add", "--delivery", "twice"], "invalid choice: 'twice'"),
        (["call", "Journal/x", "add", "--delivery", "sometimes"], "invalid choice: 'sometimes'"),
        (
            ["send", "Journal/x", "add", "--delivery", "exactly_once", "--json", "{value: 1}"],
            "--json is not valid JSON",
        ),
        (["send", "Journal/x", "add", "--wait", "-p", "value"], "--param must look like KEY=VALUE"),
    ],
)
def test_usage_errors_exit_2_before_connecting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = [] if argv == ["dlq"] else ["--servers", "nats://127.0.0.1:1"]
    assert main([*argv, *servers]) == 2
    assert message in capsys.readouterr().err


async def test_unreachable_server_exits_3() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    options = ("--servers", url, "--connect-timeout", "1")
    started = time.monotonic()
    results = await asyncio.gather(
        run_cli("dlq", "ls", *options),
        run_cli("dlq", "replay", "--all", *options),
        run_cli("send", "Journal/x", "add", "-p", "value=1", "--delivery", "exactly_once", *options),
    )
    for rc, out, err in results:
        assert (rc, out) == (3, "")
        assert f"could not connect to NATS at {url}" in err
    assert time.monotonic() - started < 10


def test_format_age() -> None:
    assert [format_age(s) for s in (-1, 0, 59.9, 60, 3599, 3600, 86399, 86400 * 3)] == [
        "0s",
        "0s",
        "59s",
        "1m",
        "59m",
        "1h",
        "23h",
        "3d",
    ]
