"""Interop with the TypeScript client (``clients/typescript``), over a real nats-server.

1. TS calls Python-hosted agents: call, request with a deadline, acknowledged and
   fire-and-forget sends, typed errors, a timeout, no host, resends (§7.4), trace context
   through a Python hop and through a TS-hosted hop;
2. TS sends exactly-once durable messages through the inbox stream to a Python cluster
   node: a message published twice under one id runs once;
3. Python calls a TS-hosted kind: activation on demand, typed errors, sends, resends of a
   slow request answered once, forged owner-only headers and non-inbox reply subjects;
4. TS calls a Python cluster node whose copy answers ``partition``: resent with the same
   message id for ``details.retry_for`` (§6.4), then ``PartitionError`` or the deadline;
5. TS reads a Python session kind through a lagging read replica (§19): read-your-writes
   with a session token made in Python, and Python keeps it with a token made in TS.

The TS side is ``clients/typescript/test/interop.ts`` built by ``npm run build``. Skipped
when ``node`` or ``clients/typescript/node_modules`` is missing (``.ci/run`` installs both).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest

from natsagents import (
    Agent,
    AgentNotFound,
    Auth,
    BadRequest,
    CallTimeout,
    ClusterSettings,
    HandlerError,
    Mesh,
    PartitionError,
    UnknownAction,
    action,
)
from natsagents.delivery.settings import DeliverySettings
from natsagents.server import NatsServer
from natsagents.testing import wait_for
from tests.agents import Counter
from tests.cluster.test_cluster_node import node_of, nodes

ROOT = Path(__file__).resolve().parents[2]
TS = ROOT / "clients" / "typescript"
SCRIPT = TS / "dist" / "test" / "interop.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not (TS / "node_modules").is_dir(),
    reason="the TypeScript client needs node and clients/typescript/node_modules (cd clients/typescript && npm ci)",
)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _trace_id(traceparent: Any) -> str | None:
    return traceparent.split("-")[1] if isinstance(traceparent, str) and traceparent.count("-") == 3 else None


@pytest.fixture(scope="module")
def ts_built() -> Path:
    """The compiled client, rebuilt when a source is newer than the build."""
    sources = [*TS.glob("src/*.ts"), *TS.glob("test/*.ts"), TS / "tsconfig.json"]
    if not SCRIPT.exists() or max(p.stat().st_mtime for p in sources) > SCRIPT.stat().st_mtime:
        assert NODE is not None
        subprocess.run(["npm", "run", "build"], cwd=TS, check=True, capture_output=True, timeout=120)
    return SCRIPT


async def run_ts(
    scenario: str, url: str, prefix: str, timeout: float = 25, env: dict[str, str] | None = None
) -> dict[str, Any]:
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(SCRIPT),
        scenario,
        url,
        prefix,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode().strip().splitlines()
    assert lines, err.decode()
    result: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in result, (result, err.decode())
    return result


class PyCounter(Agent):
    """Counts; its actions show what a TS caller sent."""

    runs: dict[str, int] = {}  # agent id -> add runs
    slow_runs = 0

    @action
    async def add(self, by: int = 1) -> int:
        PyCounter.runs[self.id] = PyCounter.runs.get(self.id, 0) + 1
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action
    async def get(self) -> int:
        return int(self.state.get("n", 0))

    @action
    async def fail(self) -> None:
        raise RuntimeError("boom")

    @action
    async def slow(self, ms: int) -> int:
        PyCounter.slow_runs += 1
        await asyncio.sleep(ms / 1000)
        return PyCounter.slow_runs

    @action
    async def whoami(self) -> dict[str, Any]:
        ctx = self.context
        return {
            "id": self.id,
            "caller": ctx.caller,
            "deadline": ctx.deadline,
            "traceparent": ctx.traceparent,
            "tracestate": ctx.tracestate,
        }

    @action
    async def echo(self, value: Any) -> Any:
        return value

    @action
    async def relay(self, kind: str, id: str, action: str) -> Any:
        return await self.ref(kind, id).call(action)


class PySmall(Agent):
    """A mailbox of one: a second message while one runs is ``overloaded``."""

    mailbox_size = 1

    @action
    async def slow(self, ms: int) -> int:
        await asyncio.sleep(ms / 1000)
        return ms


class PyVault(Agent):
    """Only the verified caller ``ops`` may call it: an unsigned TS call is ``unauthorized``."""

    allow = ["ops"]

    @action
    async def get(self) -> int:
        return 1


class PyLazy(Agent):
    activate_on_demand = False

    @action
    async def get(self) -> int:
        return 1


async def test_ts_calls_python_agents(mesh_factory: Any, nats_url: str, mesh_prefix: str, ts_built: Path) -> None:
    PyCounter.runs, PyCounter.slow_runs = {}, 0
    host = await mesh_factory(name="py-host")
    await host.host(PyCounter)
    await host.host(PyLazy)
    await host.host(PySmall)
    await host.host(PyVault)
    r = await run_ts("call", nats_url, mesh_prefix)
    assert r["add"] == 2
    assert r["request"] == 5
    assert r["seen_deadline"] is True  # Na-Deadline is the absolute deadline the TS caller gave
    assert r["after_sends"] == 115  # an acknowledged send and a fire-and-forget one both ran
    assert r["unknown_action"]["class"] == "UnknownAction"
    assert "add" in r["unknown_action"]["details"]["actions"]
    assert r["bad_param"]["class"] == "BadRequest"
    assert r["bad_param"]["details"] == {"param": "by", "problem": "expected int, got str"}
    assert r["handler_error"]["class"] == "HandlerError"
    assert r["handler_error"]["message"] == "RuntimeError: boom"
    assert r["handler_error"]["has_traceback"] is True
    assert r["timeout"]["class"] == "CallTimeout" and r["timeout"]["remote"] is False
    assert r["no_host"]["class"] == "Unavailable"
    assert r["not_found"]["class"] == "AgentNotFound"
    assert r["overloaded"]["class"] == "Overloaded" and r["overloaded_first"] == 400
    assert r["unauthorized"]["class"] == "Unauthorized" and r["unauthorized"]["details"]["reason"] == "unsigned"
    assert r["big"] == 100_000  # compressed both ways (§9.1)
    assert r["connect_refused"]["class"] == "ConnectError"
    who = r["whoami"]
    assert who["id"] == "user@example.com/1"  # an id that travels encoded
    assert who["caller"] == "ts-interop"
    assert who["traceparent"] == TRACEPARENT and who["tracestate"] == "k=v"
    # Trace context survives a Python hop (passed through, or a child span of the same trace)
    # and a TS hop (passed through unchanged, with the deadline and the calling agent's name).
    assert _trace_id(r["via_python"]["traceparent"]) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert r["via_python"]["caller"] == "PyCounter/p-1"
    assert r["via_ts"]["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert r["via_ts"]["caller"] == "TsEcho/e-2"
    assert r["via_ts"]["deadline"] == r["trace_deadline"] / 1000
    assert r["local_errors"]["bad_kind"]["class"] == "InvalidAddress"
    assert r["local_errors"]["instance_of"]["unknown"] is True
    # A request unanswered for resendAfter (100 ms) was published again, and ran once.
    assert r["resends"] >= 3
    assert r["resend_result"] == PyCounter.slow_runs == 2  # the timed-out call ran too
    assert PyCounter.runs["c-1"] == 4


async def test_ts_durable_exactly_once_runs_once(
    mesh_factory: Any, nats_url: str, mesh_prefix: str, ts_built: Path
) -> None:
    PyCounter.runs = {}
    delivery = DeliverySettings(partitions=1, max_deliver=3, backoff=(0.05,), ack_wait=5.0, attempt_timeout=5.0)
    node = await mesh_factory(
        name="n1", cluster=ClusterSettings(node_id="n1", lease=1.5, rebalance=False, delivery=delivery)
    )
    await node.host(PyCounter)
    owners = node._owners
    assert owners is not None
    await wait_for(lambda: owners.owned() == [0], timeout=10, what="n1 owns the partition")
    r = await run_ts("durable", nats_url, mesh_prefix)
    # The same message id published twice: stored once, the second publish answered with
    # the first's result (a replay); a new id is a new message.
    assert (r["first"], r["again"], r["second"], r["total"]) == (1, 1, 2, 3)
    assert PyCounter.runs["d-1"] == 3

    def handled(outcome: str) -> float:
        return node.metrics.value("natsagents_durable_messages_total", {"kind": "PyCounter", "outcome": outcome})

    # Stored once: the stream dropped the repeat (Nats-Msg-Id), so the owner never saw it.
    await wait_for(lambda: handled("ok") >= 3, timeout=10, what="three durable messages handled")
    assert (handled("ok"), handled("already_applied")) == (3, 0)
    # No inbox stream: refused (Unavailable) at the deadline when the client may not create
    # it; created as §15 says (16 partitions, work queue, 2 min dedup) when it may.
    assert r["no_stream"]["class"] == "Unavailable" and r["no_stream_ms"] < 3000
    assert r["created"] == {"ok": None}
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(f"{mesh_prefix}x_inbox")
        assert info.state.messages == 1
        assert (info.config.metadata or {}).get("natsagents_partitions") == "16"
        assert info.config.duplicate_window == 120
        assert getattr(info.config.retention, "value", info.config.retention) == "workqueue"
        assert (await js.stream_info(f"{mesh_prefix}x_dlq")).config.subjects == [f"{mesh_prefix}x.dlq.>"]
        for stream in ("inbox", "dlq"):
            await js.delete_stream(f"{mesh_prefix}x_{stream}")
    finally:
        await nc.close()


@pytest.fixture
async def ts_host(nats_url: str, mesh_prefix: str, ts_built: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(ts_built),
        "host",
        nats_url,
        mesh_prefix,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert json.loads(line) == {"ready": True}, line
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _stop(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    out = await asyncio.wait_for(proc.stdout.read(), 15)
    await asyncio.wait_for(proc.wait(), 15)
    stats: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return stats


async def test_python_calls_a_ts_hosted_kind(
    mesh_factory: Any, mesh: Mesh, nats_url: str, ts_host: asyncio.subprocess.Process
) -> None:
    counter = mesh.ref("TsCounter", "t-1")
    assert await counter.call("add", by=2) == 2  # activated on demand by the TS host
    await counter.send("add", by=5)
    assert await counter.call("get") == 7
    with pytest.raises(UnknownAction) as unknown:
        await counter.call("nope")
    assert "add" in unknown.value.details["actions"]
    with pytest.raises(BadRequest) as bad:
        await counter.call("add", by="x")
    assert bad.value.details == {"param": "by", "problem": "expected int, got str"}
    with pytest.raises(HandlerError) as failed:
        await counter.call("fail")
    assert failed.value.message == "RangeError: boom" and "boom" in (failed.value.remote_traceback or "")
    with pytest.raises(CallTimeout):
        await counter.call("slow_add", ms=1500, timeout=0.3)
    with pytest.raises(AgentNotFound):
        await mesh.ref("TsLazy", "x").call("get", timeout=5)
    big = "x" * 100_000  # over compress_above (64 KiB): sent and answered compressed (§9.1)
    assert await mesh.ref("TsCounter", "big").call("echo", value=big, timeout=5) == big
    who = await mesh.ref("TsCounter", "user@example.com").call("whoami", timeout=5)
    assert who["id"] == "user@example.com" and who["agent"] == "TsCounter/user@example.com"
    assert who["caller"] == "mesh-0" and isinstance(who["deadline"], int)
    # A TS handler's call carries the trace context it received on to a Python agent.
    py = await mesh_factory(name="py-host")
    await py.host(PyCounter)
    relayed = await mesh.ref("PyCounter", "p-1").call("relay", kind="TsCounter", id="t-3", action="whoami")
    assert relayed["caller"] == "PyCounter/p-1"
    # §7.4 against the TS host: a slow request resent every 100 ms runs once.
    resending = await mesh_factory(name="resender", resend_after=0.1)
    assert await resending.ref("TsCounter", "r-1").call("slow_add", ms=700, timeout=5) == 1
    assert resending.metrics.value("natsagents_resends_total", {}) >= 3
    # Hostile input: owner-only headers without an owner proof, and a non-inbox reply subject.
    before = await counter.call("get")
    assert before == 8  # the timed-out slow_add ran after its caller gave up
    nc = await nats.connect(nats_url)
    try:
        subject = f"{mesh.prefix}.agent.TsCounter.t-1"
        forged = await nc.request(
            subject,
            msgpack.packb({"by": 1000}),
            headers={"Na-Proto": "1", "Na-Action": "add", "Na-Stream-Seq": "99", "Na-Delivery": "exactly_once"},
            timeout=5,
        )
        assert forged.headers is not None and forged.headers["Na-Status"] == "unauthorized"
        heard: list[Any] = []

        async def listen(msg: Any) -> None:
            heard.append(msg)

        # Each bad request gets its typed refusal and runs nothing (§4.1, §5.4, §7.5, §8, §9.1).
        base = {"Na-Proto": "1", "Na-Action": "echo"}
        bad_requests: list[tuple[dict[str, str], bytes, str, str]] = [
            ({"Na-Proto": "2", "Na-Action": "add"}, b"", "bad_request", "unsupported protocol version"),
            ({"Na-Action": "a-b"}, b"", "bad_request", "malformed Na-Action header"),
            ({**base, "Na-Deadline": "soon"}, b"", "bad_request", "malformed Na-Deadline header"),
            ({**base, "Na-Priority": "urgent"}, b"", "bad_request", "Na-Priority must be one of"),
            ({**base, "Na-Deadline": "1"}, b"", "timeout", "deadline passed"),
            (base, b"\xc1", "bad_request", "malformed msgpack body"),
            (base, b"\x81\xa5value" + b"\x91" * 1100 + b"\xc0", "bad_request", "nested deeper than 1024 levels"),
            (base, b"\x81\xa5value\xd4\x05\x00", "bad_request", "extension type 5 is not allowed"),
            (
                {**base, "Na-Encoding": "deflate"},
                zlib.compress(b"\0" * 5_000_000),
                "bad_request",
                "compressed body expands beyond 4194304 bytes",
            ),
            ({**base, "Na-Reply-Mode": "replay", "Na-Msg-Id": "never-seen"}, b"", "unavailable", "not known here"),
        ]
        for headers, body, status, text in bad_requests:
            answer = await nc.request(subject, body, headers=headers, timeout=5)
            assert answer.headers is not None and answer.headers["Na-Status"] == status, (headers, answer.headers)
            assert text in msgpack.unpackb(answer.data)["message"], (headers, answer.data)
        packed = await nc.request(
            f"{mesh.prefix}.agent.TsCounter.big",
            zlib.compress(msgpack.packb({"value": big})),
            headers={**base, "Na-Encoding": "deflate", "Na-Accept-Encoding": "deflate"},
            timeout=5,
        )
        assert packed.headers is not None and packed.headers.get("Na-Encoding") == "deflate"
        assert len(packed.data) < 1000 and msgpack.unpackb(zlib.decompress(packed.data)) == big
        garbage = await nc.request(f"{mesh.prefix}.activate.TsCounter", b"\x01", timeout=5)
        assert garbage.headers is not None and garbage.headers["Na-Status"] == "bad_request"
        assert msgpack.unpackb(garbage.data)["agent"] == "TsCounter"
        await nc.subscribe("evil.reply", cb=listen)
        await nc.publish(
            subject, msgpack.packb({"by": 1000}), reply="evil.reply", headers={"Na-Proto": "1", "Na-Action": "add"}
        )
        await nc.flush()
    finally:
        await nc.close()
    assert await counter.call("get") == before  # neither ran
    assert heard == []
    stats = await _stop(ts_host)
    assert stats["slow"] == 2  # the timed-out call and the resent one, each run once
    assert stats["dropped_replies"] == 1
    assert stats["stops"] == stats["starts"] >= 5  # every agent stopped gracefully on close


def test_the_ts_host_checks_pass(nats_url: str, ts_built: Path) -> None:
    """``test/host.test.ts`` against this suite's server: a full mailbox, priorities, copies
    and replays, one activation for concurrent asks, concurrency, graceful stop, spawn,
    the agent limit."""
    assert NODE is not None
    proc = subprocess.run(
        [NODE, "--test", str(TS / "dist" / "test" / "host.test.js")],
        capture_output=True,
        timeout=60,
        env={**os.environ, "NATS_URL": nats_url},
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0 and "# pass 5" in out, out[-4000:]


def test_the_ts_client_unit_checks_pass(ts_built: Path) -> None:
    """The client's own checks of its pure parts (``npm test``): ids, header blocks, codec
    limits, compression, error mapping, parameters, against the protocol's examples; session
    tokens (byte for byte against Python's), the partition resend and the read subject."""
    assert NODE is not None
    files = [str(TS / "dist" / "test" / name) for name in ("unit.test.js", "session.test.js")]
    proc = subprocess.run([NODE, "--test", *files], capture_output=True, timeout=60)
    out = proc.stdout.decode()
    assert proc.returncode == 0 and "# fail 0" in out, out[-4000:]


PERM_USERS = """
authorization {
  users = [
    {user: host, password: host-pw}
    {user: caller, password: caller-pw, permissions: {
      publish: {allow: ["perm.agent.Counter.>", "perm.activate.Counter", "perm.agent.Quiet.>"]}
      subscribe: {allow: ["_INBOX.caller.>"]}
    }}
  ]
}
"""


class Quiet(Counter):
    """A kind the caller may message but not activate."""


async def test_a_publish_the_server_refuses_ends_a_ts_call_at_once(ts_built: Path) -> None:
    """A TS call whose publish the server refuses (permissions) ends with ``Unauthorized`` at
    once, as a Python call does (tests/integration/test_unauthorized.py), not at its timeout."""
    with NatsServer(config_extra=PERM_USERS) as server:
        async with await Mesh.connect(server.url, prefix="perm", auth=Auth(user="host", password="host-pw")) as host:
            await host.host(Counter, Quiet)
            r = await run_ts("perm", server.url, "perm", env={"NA_USER": "caller", "NA_PASS": "caller-pw"})
    assert r["allowed"] == 1
    assert r["refused"]["class"] == "Unauthorized" and "perm.agent.Ledger.x" in r["refused"]["message"]
    assert r["refused"]["agent"] == "Ledger/x" and r["refused"]["action"] == "add"
    assert (
        r["refused_activation"]["class"] == "Unauthorized"
        and "perm.activate.Quiet" in r["refused_activation"]["message"]
    )
    assert r["refused_ms"] < 2000


class PyPaused(Agent):
    """Counts its runs; the test makes its node answer ``partition`` for some copies."""

    runs: dict[str, int] = {}

    @action
    async def add(self) -> int:
        PyPaused.runs[self.id] = PyPaused.runs.get(self.id, 0) + 1
        return PyPaused.runs[self.id]


async def test_ts_resends_partition_answers_for_retry_for(
    mesh_factory: Any, nats_url: str, mesh_prefix: str, ts_built: Path
) -> None:
    """A copy on the minority side answers ``partition`` (its node's real refusal path,
    ``NodeHooks.serving``, made to say so here instead of cutting a real cluster: that is
    tests/cluster/test_partition_strategy.py). The TS caller resends the same message for
    ``details.retry_for`` seconds, as the Python caller does: ``recover`` (paused for its
    first 3 copies) runs once and answers; ``stuck`` (always paused, 0.3 s) ends with
    ``PartitionError`` after 0.3 s; ``deadline`` (30 s) ends with the call's deadline."""
    PyPaused.runs = {}
    node = await mesh_factory(
        name="n1", cluster=ClusterSettings(node_id="n1", lease=1.5, rebalance=False, delivery=None)
    )
    await node.host(PyPaused)
    cluster = node_of(node)
    real_serving = cluster.hooks.serving
    pause = {"recover": (3, 5.0), "stuck": (None, 0.3), "deadline": (None, 30.0)}
    refused: dict[str, int] = {}
    seen_ids: dict[str, set[str | None]] = {}

    async def answer(err: PartitionError) -> PartitionError:
        return err

    def serving(act: Any, deadline_ms: int | None) -> Any:
        times, retry_for = pause.get(act.agent_id, (0, 0.0))
        if times is None or refused.get(act.agent_id, 0) < times:
            refused[act.agent_id] = refused.get(act.agent_id, 0) + 1
            details = {"node": "n1", "state": "quorum_lost", "retry_for": retry_for}
            return answer(PartitionError("n1 is cut off (test)", agent=act.address, details=details))
        return real_serving(act, deadline_ms)

    real_dispatch = node._host.dispatch

    async def dispatch(act: Any, msg: Any, **options: Any) -> Any:
        if not options.get("checked"):  # counted once per message, not again after its checks
            seen_ids.setdefault(act.agent_id, set()).add((msg.headers or {}).get("Na-Msg-Id"))
        return await real_dispatch(act, msg, **options)

    cluster.hooks.serving = serving  # type: ignore[method-assign]
    node._host.dispatch = dispatch  # type: ignore[method-assign]
    r = await run_ts("partition", nats_url, mesh_prefix)
    assert r["recover"] == {"ok": 1}
    assert refused["recover"] == 3 and PyPaused.runs["recover"] == 1
    assert len(seen_ids["recover"]) == 1  # every copy was the same message
    assert r["stuck"]["class"] == "PartitionError" and r["stuck"]["code"] == "partition"
    assert r["stuck"]["details"] == {"node": "n1", "state": "quorum_lost", "retry_for": 0.3}
    assert r["stuck"]["agent"] == "PyPaused/stuck" and r["stuck"]["action"] == "add"
    assert 300 <= r["stuck_ms"] < 5000 and refused["stuck"] >= 3 and len(seen_ids["stuck"]) == 1
    assert r["deadline"]["class"] == "CallTimeout" and r["deadline"]["remote"] is False
    assert "partition" in r["deadline"]["message"] and r["deadline_ms"] < 5000
    assert "stuck" not in PyPaused.runs and "deadline" not in PyPaused.runs


class PyBoard(Agent):
    """A session kind with one read replica; ``get`` is read-only (the TS side declares it
    with ``connect({ readActions: { PyBoard: ["get"] } })``)."""

    consistency = "session"
    read_replicas = 1
    session_wait = 0.1

    def initial_state(self) -> dict[str, Any]:
        return {"n": 0}

    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] += by
        return int(self.state["n"])

    @action(read_only=True)
    async def get(self) -> int:
        return int(self.state["n"])


async def test_session_tokens_keep_read_your_writes_between_python_and_ts(
    mesh_factory: Any, nats_url: str, mesh_prefix: str, ts_built: Path
) -> None:
    """Two Python nodes, ``PyBoard/b`` with its one replica held at version 1 (it stops
    following the state). A Python session writes (n = 2) and hands its token to TS: every
    TS read with it sees 2, while TS reads with new sessions see the replica's stale 1 (so
    the replica was reached). TS writes (n = 3) with its own session and hands that token
    back: every Python read with it sees 3."""
    meshes = await nodes(mesh_factory, "n1", "n2", kinds=(PyBoard,))
    client = await mesh_factory(name="client")
    assert await client.ref(PyBoard, "b").call("add") == 1
    await wait_for(
        lambda: any("PyBoard/b" in node_of(m).replicas.held() for m in meshes), timeout=10, what="a replica of b"
    )
    (replica,) = [m for m in meshes if "PyBoard/b" in node_of(m).replicas.held()]
    await wait_for(
        lambda: (node_of(replica).replicas.lag("PyBoard", "b") or {}).get("version", 0) > 0,
        timeout=10,
        what="the replica loaded b",
    )
    node_of(replica).replicas.hold("PyBoard", "b", True)
    session = client.session()
    assert await client.ref(PyBoard, "b", session=session).call("add") == 2
    token = session.token()
    r = await run_ts("session", nats_url, mesh_prefix, env={"NA_TOKEN": token})
    assert r["python_token_again"] == token  # read and written in one format
    assert int(r["python_version"]) == session.version("PyBoard", "b") > 0
    assert r["with_python_token"] == [2] * 20  # read-your-writes, wherever the reads went
    assert 1 in r["fresh_sessions"], "no TS read reached the held replica"
    assert set(r["fresh_sessions"]) <= {1, 2}
    assert r["ts_write"] == 3 and int(r["ts_version"]) > int(r["python_version"])
    assert r["with_ts_session"] == [3] * 20
    assert r["primary_read"] == 3
    assert r["inactive_read"] == {"ok": 0}
    assert r["bad_tokens"] == ["InvalidSessionToken"] * 3

    def reads(outcome: str) -> float:
        return sum(
            m.metrics.value("natsagents_replica_reads_total", {"kind": "PyBoard", "outcome": outcome}) for m in meshes
        )

    assert reads("served") > 0 and reads("forwarded") > 0  # the replica served some, forwarded the sessions'
    other = await mesh_factory(name="other")
    resumed = other.session(token=r["ts_token"])
    assert resumed.version("PyBoard", "b") == int(r["ts_version"])
    for _ in range(20):
        assert await other.ref(PyBoard, "b", session=resumed).call("get") == 3
