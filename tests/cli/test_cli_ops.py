"""The operator's commands: ``top``, ``dlq ls --body``, ``nodes`` with stale members, and
usage errors per subcommand. Commands run as subprocesses against a real nats-server; the
cluster nodes are in-test meshes."""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from typing import Any

import msgpack
import pytest

from natsagents import ClusterSettings, Mesh
from natsagents.cli import main
from natsagents.cli.delivery import render_body
from natsagents.cli.main import build_parser
from natsagents.cli.top import parse_stats
from natsagents.cluster.membership import MemberRecord
from natsagents.delivery.settings import DeliverySettings, ensure_delivery_streams
from natsagents.testing import wait_for
from natsagents.testing.plugin import MeshFactory
from natsagents.transport import jetstream as js
from natsagents.transport.kv import open_bucket
from natsagents.wire.subjects import bucket_name
from tests._cli_agents import Echo, Tally
from tests.cli.test_cli import run_cli


@pytest.fixture
def conn(nats_url: str, mesh_prefix: str) -> tuple[str, ...]:
    return ("--servers", nats_url, "--prefix", mesh_prefix)


async def a_node(mesh_factory: MeshFactory, name: str, *, lease: float = 1.5) -> Mesh:
    node = await mesh_factory(
        name=name, cluster=ClusterSettings(node_id=name, lease=lease, rebalance=False, delivery=None)
    )
    await node.host(Tally, Echo)
    return node


# -- usage ----------------------------------------------------------------------------


def _commands() -> list[list[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = []
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        nested = [a for a in p._actions if a.dest == "dlq_command"]
        out.extend([[name, s] for s in nested[0].choices] if nested else [[name]])  # type: ignore[union-attr]
    return out


def test_every_subcommand_reports_an_unknown_option_with_its_own_usage(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands()
    assert ["top"] in commands and ["dlq", "ls"] in commands and ["nodes"] in commands
    for argv in commands:
        assert main([*argv, "--no-such-option"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"usage: natsagents {' '.join(argv)} "), (argv, err)
        assert "error:" in err


# -- nodes: stale counts --------------------------------------------------------------


async def test_nodes_shows_a_lapsed_nodes_figures_as_stale(
    mesh_factory: MeshFactory, mesh_prefix: str, conn: tuple[str, ...]
) -> None:
    """A member whose heartbeats stopped keeps its last record: 974 agents that may be
    gone. The issue saw exactly that count listed for a node that had drained to 0."""
    mesh = await a_node(mesh_factory, "live")
    members = await open_bucket(mesh.transport, bucket_name(mesh_prefix, "members"), history=1)
    ghost = MemberRecord(
        node_id="ghost", kinds=("Tally",), load={"agents": 974, "cpu": 0.5, "memory": 0.25}, lease=1.0,
        heartbeat_at=time.time(),
    )  # fmt: skip
    await members.put("ghost", ghost.to_wire())

    async def lapsed() -> bool:
        return [(s.record.node_id, s.live) for s in await mesh.nodes()] == [("ghost", False), ("live", True)]

    await wait_for(lapsed, timeout=10, interval=0.05, what="the ghost's lease lapsed")
    (rc, table, err), (rc_json, out, err_json) = await asyncio.gather(
        run_cli("nodes", *conn), run_cli("nodes", "--json", *conn)
    )
    assert (rc, err, rc_json, err_json) == (0, "", 0, "")
    header, ghost_row, live_row = (line.split() for line in table.splitlines())
    assert header[:6] == ["NODE", "LIVE", "AGENTS", "KINDS", "CPU%", "MEM%"] and header[-1] == "AGE"
    assert ghost_row[:6] == ["ghost", "no", "stale", "Tally", "-", "-"]
    assert live_row[:4] == ["live", "yes", "0", "Echo,Tally"]
    ghost_json, live_json = json.loads(out)
    assert (ghost_json["stale"], ghost_json["agents"], ghost_json["load"]["agents"]) == (True, None, 974)
    assert (live_json["stale"], live_json["agents"]) == (False, 0)


async def test_a_drained_node_reports_no_agents_at_once(mesh_factory: MeshFactory, mesh: Mesh) -> None:
    """A drain ends with a heartbeat: ``nodes`` right after it says 0 agents, not the count
    of the heartbeat sent when the drain began (heartbeats here are 20 s apart)."""
    node = await a_node(mesh_factory, "d", lease=60.0)
    for i in range(3):
        assert await mesh.ref(f"Tally/t-{i}").call("add", by=1) == 1
    assert await mesh.drain("d") == {"node": "d", "moved": 0, "stopped": 3}
    [status] = await mesh.nodes()
    assert (status.live, status.record.draining, status.record.load["agents"]) == (True, True, 0)
    assert node.local_agents() == []


# -- dlq ls --body --------------------------------------------------------------------


def test_render_body_forms() -> None:
    packed = msgpack.packb({"by": 2, "note": "héllo", "raw": b"\x00\x01"})
    assert render_body(packed, {}) == ('{"by": 2, "note": "héllo", "raw": "AAE="}', "msgpack", False)
    assert render_body(zlib.compress(packed), {"Na-Encoding": "deflate"})[:2] == (
        '{"by": 2, "note": "héllo", "raw": "AAE="}',
        "deflate+msgpack",
    )
    assert render_body(b"", {}) == ("", "empty", False)
    assert render_body(b"\xc1\xff\xfe", {}) == ("c1fffe", "hex", False)  # 0xc1 is never msgpack
    # Terminal escape sequences never reach the terminal, from text or from msgpack strings.
    text, form, _ = render_body(b"plain \x1b[31mred\x1b[0m text", {})
    assert form == "text" and "\x1b" not in text and "\\u001b[31mred" in text
    text, form, _ = render_body(msgpack.packb("\x9b2J\u2028x"), {})
    assert form == "msgpack" and text == '"\\u009b2J\\u2028x"'
    # Bounded: long bodies are cut; a bomb is not inflated past the protocol's bound.
    text, form, cut = render_body(msgpack.packb(list(range(1000))), {}, limit=50)
    assert (len(text), form, cut) == (50, "msgpack", True) and text.endswith("...")
    text, form, cut = render_body(bytes(range(256)) * 4, {}, limit=40)
    assert (len(text), form, cut) == (40, "hex", True)
    bomb = zlib.compress(b"\x00" * (8 * 1024 * 1024))
    text, form, cut = render_body(bomb, {"Na-Encoding": "deflate"}, limit=30)
    assert (form, cut, len(text)) == ("hex", True, 30)  # refused by inflate: shown as the bytes it is
    deep = b"\x91" * 5000 + b"\xc0"  # arrays nested 5000 deep: beyond the codec's bound
    assert render_body(deep, {}, limit=20)[1:] == ("hex", True)


async def test_dlq_ls_shows_bodies(mesh: Mesh, mesh_prefix: str, conn: tuple[str, ...]) -> None:
    await ensure_delivery_streams(mesh.transport, mesh_prefix, DeliverySettings(partitions=2))
    letters: list[tuple[bytes, dict[str, str]]] = [
        (msgpack.packb({"value": 7}), {}),
        (zlib.compress(msgpack.packb({"big": "x" * 500})), {"Na-Encoding": "deflate"}),
        (b"\x1b]0;pwned\x07\xc1\xff", {}),
    ]
    for i, (body, extra) in enumerate(letters, 1):
        headers = {
            "Na-Proto": "1", "Na-Action": "add", "Na-Msg-Id": f"m{i}", "Na-Dlq-Error": "handler_error",
            "Na-Dlq-Reason": "ValueError: no", "Na-Dlq-Deliveries": "3", "Na-Dlq-Stream-Seq": str(i),
            "Na-Dlq-Subject": f"{mesh_prefix}.inbox.Journal.j-{i}", "Na-Dlq-Time": str(int(time.time() * 1000)),
            **extra,
        }  # fmt: skip
        await js.publish(
            mesh.transport, f"{mesh_prefix}.dlq.Journal.j-{i}", body, msg_id=f"dlq-{i}", headers=headers, timeout=5
        )
    (rc, table, err), (rc_json, out, err_json) = await asyncio.gather(
        run_cli("dlq", "ls", "--body", "--body-max", "40", *conn),
        run_cli("dlq", "ls", "--body", "--json", *conn),
    )
    assert (rc, rc_json, err_json) == (0, 0, "")
    assert err == "note: bodies cut after 40 characters; --body-max N shows more\n"
    header, *rows = table.splitlines()
    assert header.split()[-2:] == ["REASON", "BODY"] and len(rows) == 3
    assert rows[0].endswith('msgpack: {"value": 7}')
    assert rows[1].endswith('deflate+msgpack: {"big": "' + "x" * 28 + "...")  # 40 characters
    assert rows[2].endswith("hex: 1b5d303b70776e656407c1ff") and "\x1b" not in table
    first, second, third = json.loads(out)
    assert (first["body"], first["body_form"], first["body_truncated"]) == ('{"value": 7}', "msgpack", False)
    assert second["body_form"] == "deflate+msgpack" and second["body_truncated"] is True
    assert third["body"] == "1b5d303b70776e656407c1ff" and third["body_form"] == "hex"


# -- top ------------------------------------------------------------------------------


def test_parse_stats_ignores_what_is_not_a_stats_answer_of_this_mesh() -> None:
    good: dict[str, Any] = {
        "type": "io.nats.micro.v1.stats_response", "name": "natsagents", "id": "n1", "version": "0.1.0",
        "metadata": {"prefix": "na"}, "started": "2026-01-01T00:00:00.000Z",
        "endpoints": [{
            "name": "Tally", "subject": "na.agent.Tally.*", "queue_group": "na.agents", "num_requests": 5,
            "num_errors": 1, "last_error": "handler_error (add)\x1b[2J", "processing_time": 5000,
            "average_processing_time": 1000,
            "data": {"agents": 2, "backlog": 0, "busy": 1, "hot": [{"agent": "Tally/a", "recent": 4}, "junk"]},
        }, {"name": "Bad", "num_requests": -1, "num_errors": 0, "processing_time": 0}],
    }  # fmt: skip
    node, kinds = parse_stats(json.dumps(good).encode(), "na") or ("", [])
    assert node == "n1" and [k.kind for k in kinds] == ["Tally"]
    assert kinds[0].hot == (("Tally/a", 4, 0, 0),) and kinds[0].last_error == "handler_error (add) [2J"
    assert parse_stats(json.dumps(good).encode(), "other") is None
    for junk in (b"", b"\xff", b"[]", b'{"type": "io.nats.micro.v1.stats_response"}', b"9" * 5000, b"[" * 100_000):
        assert parse_stats(junk, "na") is None


async def test_top_once_shows_nodes_kinds_and_the_hottest_agents(
    mesh_factory: MeshFactory, mesh: Mesh, conn: tuple[str, ...]
) -> None:
    await a_node(mesh_factory, "t1")
    await a_node(mesh_factory, "t2")
    for _ in range(5):
        await mesh.ref("Tally/hot").call("add", by=1)
    await mesh.ref("Tally/cold").call("add", by=1)
    (rc, out, err), (rc_text, text, err_text) = await asyncio.gather(
        run_cli("top", "--once", "--json", "--interval", "0.3", *conn),
        run_cli("top", "--once", "--interval", "0.3", *conn),
    )
    assert (rc, err, rc_text, err_text) == (0, "", 0, "")
    frame = json.loads(out)
    assert [n["node"] for n in frame["nodes"]] == ["t1", "t2"]
    assert all(n["live"] and n["services_api"] and isinstance(n["requests_per_s"], float) for n in frame["nodes"])
    assert sum(n["agents"] for n in frame["nodes"]) == 2
    (tally,) = [k for k in frame["kinds"] if k["kind"] == "Tally"]
    assert (tally["nodes"], tally["agents"], tally["requests"], tally["errors"]) == (2, 2, 6, 0)
    assert tally["average_ms"] > 0
    assert [h["agent"] for h in frame["hot"]] == ["Tally/hot", "Tally/cold"]
    assert frame["hot"][0]["recent"] == 5
    for word in ("nodes", "kinds", "hottest agents", "t1", "t2", "Tally/hot", "Tally/cold"):
        assert word in text, text
