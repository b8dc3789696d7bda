"""A protocol v1 peer written from docs/protocol.md, checked against the SDK.

The peer side uses only nats-py, msgpack and the standard library. natsagents is imported for
the fixtures and for the SDK side of each test (Mesh, Agent, action, errors).

1. raw caller -> SDK-hosted agents (activation on demand done by the peer, error replies,
   deadlines, sends, encoded ids);
2. SDK caller -> raw-hosted agents (a raw host of RawEcho/r-1 and a raw host of kind RawLazy
   that activates on demand).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import itertools
import re
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

import natsagents
from natsagents import Agent, action

# ---------------------------------------------------------------------------------------------
# The peer: everything below is written from docs/protocol.md alone.
# ---------------------------------------------------------------------------------------------

PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+")
ACTION_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
MSG_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEADLINE_RE = re.compile(r"[0-9]{1,15}")


def encode_id(agent_id: str) -> str:
    """§2: plain ids travel as they are, others as '=' + unpadded base64url of the UTF-8."""
    if PLAIN_ID.fullmatch(agent_id):
        return agent_id
    return "=" + base64.urlsafe_b64encode(agent_id.encode("utf-8")).rstrip(b"=").decode("ascii")


def decode_id(token: str) -> str:
    if PLAIN_ID.fullmatch(token):
        return token
    assert re.fullmatch(r"=[A-Za-z0-9_-]+", token), token
    body = token[1:]
    agent_id = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")
    assert encode_id(agent_id) == token, "non-canonical token"
    return agent_id


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, datetime=True)


def unpack(data: bytes) -> Any:
    if not data:
        return None
    return msgpack.unpackb(data, raw=False, timestamp=3, strict_map_key=False)


def now_ms() -> int:
    return int(time.time() * 1000)


_ids = itertools.count(1)


def new_msg_id() -> str:
    return f"peer-{next(_ids)}-{time.monotonic_ns()}"


def request_headers(act: str, **extra: str) -> dict[str, str]:
    """§4.1: Na-Proto, Na-Action, a fresh Na-Msg-Id and a deadline 5 s ahead."""
    hdrs = {"Na-Proto": "1", "Na-Action": act, "Na-Msg-Id": new_msg_id(), "Na-Deadline": str(now_ms() + 5000)}
    hdrs.update(extra)
    return hdrs


class Reply:
    def __init__(self, msg: Msg) -> None:
        self.headers = msg.headers or {}
        self.status = self.headers.get("Na-Status")
        self.body = unpack(msg.data)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


async def raw_request(nc: Client, subject: str, body: bytes, headers: dict[str, str], timeout: float = 5) -> Reply:
    msg = await nc.request(subject, body, timeout=timeout, headers=headers)
    return Reply(msg)


async def raw_call(
    nc: Client, prefix: str, kind: str, agent_id: str, body: bytes, headers: dict[str, str], timeout: float = 5
) -> Reply:
    """§7.2: request; on no responders ask for activation, then retry with the same headers."""
    deadline = time.monotonic() + timeout
    subject = f"{prefix}.agent.{kind}.{encode_id(agent_id)}"
    delay = 0.005
    while time.monotonic() < deadline:
        try:
            reply = await raw_request(nc, subject, body, headers, deadline - time.monotonic())
        except nats.errors.NoRespondersError:
            try:
                act = await raw_request(
                    nc,
                    f"{prefix}.activate.{kind}",
                    pack({"id": agent_id}),
                    {"Na-Proto": "1"},
                    deadline - time.monotonic(),
                )
            except nats.errors.NoRespondersError:
                act = None
            if act is not None and act.ok:
                continue
            if act is not None and act.status != "unavailable":
                return act
        else:
            if not (reply.status == "unavailable" and (reply.body.get("details") or {}).get("retry")):
                return reply
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)
    raise TimeoutError(f"{kind}/{agent_id}: deadline passed")


def ok_reply(result: Any) -> tuple[bytes, dict[str, str]]:
    return pack(result), {"Na-Proto": "1", "Na-Status": "ok"}


def error_reply(
    code: str, message: str, agent: str | None, act: str | None, **extra: Any
) -> tuple[bytes, dict[str, str]]:
    body: dict[str, Any] = {"code": code, "message": message, "agent": agent, "action": act}
    body.update(extra)
    return pack(body), {"Na-Proto": "1", "Na-Status": code}


async def publish_reply(nc: Client, subject: str, reply: tuple[bytes, dict[str, str]]) -> None:
    body, headers = reply
    await nc.publish(subject, body, headers=headers)


def check_request_headers(hdrs: dict[str, str]) -> str | None:
    """§4.1 validation, in order; returns the problem or None."""
    if hdrs.get("Na-Proto", "1") != "1":
        return "unsupported Na-Proto"
    act = hdrs.get("Na-Action")
    if act is None or not ACTION_RE.fullmatch(act):
        return "missing or malformed Na-Action"
    msg_id = hdrs.get("Na-Msg-Id")
    if msg_id is not None and not MSG_ID_RE.fullmatch(msg_id):
        return "malformed Na-Msg-Id"
    if not MSG_ID_RE.fullmatch(hdrs.get("Na-Corr-Id", msg_id or "x")):
        return "malformed Na-Corr-Id"
    deadline = hdrs.get("Na-Deadline")
    if deadline is not None and not DEADLINE_RE.fullmatch(deadline):
        return "malformed Na-Deadline"
    if hdrs.get("Na-Reply-Mode", "result") not in ("result", "accept"):
        return "malformed Na-Reply-Mode"
    if len(hdrs.get("Na-Caller", "")) > 256:
        return "Na-Caller too long"
    return None


Handler = Callable[[str, dict[str, Any], dict[str, str]], Awaitable[Any]]


class RawAgentHost:
    """§8 for one agent subject: validation, deadline, accept mode, ok and error replies.

    nats-py runs one callback at a time per subscription, which gives one message at a time.
    """

    def __init__(self, nc: Client, address: str, actions: dict[str, Handler]) -> None:
        self.nc = nc
        self.address = address
        self.actions = actions
        self.seen: list[dict[str, str]] = []
        self.ran = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        hdrs = msg.headers or {}
        self.seen.append(hdrs)
        reply_to = msg.reply
        act = hdrs.get("Na-Action")

        async def answer(body: bytes, headers: dict[str, str]) -> None:
            if reply_to:
                await publish_reply(self.nc, reply_to, (body, headers))

        problem = check_request_headers(hdrs)
        if problem is not None:
            await answer(*error_reply("bad_request", problem, self.address, act))
            return
        if "Na-Deadline" in hdrs and now_ms() >= int(hdrs["Na-Deadline"]):
            await answer(*error_reply("timeout", "deadline passed", self.address, act))
            return
        if hdrs.get("Na-Reply-Mode") == "accept":
            await answer(*ok_reply(None))
            reply_to = ""
        handler = self.actions.get(act or "")
        if handler is None:
            await answer(
                *error_reply(
                    "unknown_action", f"no action {act!r}", self.address, act, details={"actions": sorted(self.actions)}
                )
            )
            return
        try:
            params = unpack(msg.data) or {}
            if not isinstance(params, dict):
                raise ValueError("parameters must be a map")
        except ValueError as exc:
            await answer(*error_reply("bad_request", str(exc), self.address, act))
            return
        try:
            result = await handler(act or "", params, hdrs)
        except _CustomError as exc:
            await answer(*error_reply(exc.code, str(exc), self.address, act, details=exc.details))
        except Exception as exc:
            tb = "".join(traceback.format_exception(exc))
            await answer(
                *error_reply(
                    "handler_error",
                    f"{type(exc).__name__}: {exc}",
                    self.address,
                    act,
                    traceback=tb,
                    details={"exception": type(exc).__name__},
                )
            )
        else:
            await answer(*ok_reply(result))
        finally:
            self.ran.set()


class _CustomError(Exception):
    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


# ---------------------------------------------------------------------------------------------
# SDK side: agents hosted by natsagents.
# ---------------------------------------------------------------------------------------------


class PCounter(Agent):
    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action
    async def get(self) -> int:
        return int(self.state.get("n", 0))

    @action
    async def scale(self, factor: float, label: str) -> list[Any]:
        return [factor * 2, label]

    @action
    async def whoami(self) -> dict[str, Any]:
        ctx = self.context
        return {"id": self.id, "kind": self.kind, "caller": ctx.caller, "message_id": ctx.message_id}


class PSpawnOnly(Agent):
    activate_on_demand = False

    @action
    async def ping(self) -> str:
        return "pong"


class PGate(Agent):
    """One slot: a second message while the first runs is refused with overloaded."""

    mailbox_size = 1
    started: asyncio.Event
    release: asyncio.Event

    @action
    async def hold(self) -> str:
        PGate.started.set()
        await PGate.release.wait()
        return "released"


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    conn = await nats.connect(nats_url, name="raw-peer", allow_reconnect=False)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def sdk_host(mesh: natsagents.Mesh) -> natsagents.Mesh:
    await mesh.host(PCounter, PSpawnOnly)
    return mesh


# ---------------------------------------------------------------------------------------------
# 1. Raw caller -> SDK-hosted agent
# ---------------------------------------------------------------------------------------------


def test_id_tokens_match_the_document() -> None:
    assert encode_id("c-1") == "c-1"
    assert encode_id("user@example.com") == "=dXNlckBleGFtcGxlLmNvbQ"
    assert encode_id("José") == "=Sm9zw6k"
    assert encode_id("=x") == "=PXg"
    assert decode_id("=dXNlckBleGFtcGxlLmNvbQ") == "user@example.com"
    assert pack({"by": 2}) == bytes.fromhex("81a2627902")


async def test_raw_call_activates_on_demand(nc: Client, sdk_host: natsagents.Mesh, mesh_prefix: str) -> None:
    subject = f"{mesh_prefix}.agent.PCounter.c-1"
    hdrs = request_headers("add", **{"Na-Caller": "raw-peer"})
    body = pack({"by": 2})

    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(subject, body, timeout=2, headers=hdrs)

    act = await raw_request(nc, f"{mesh_prefix}.activate.PCounter", pack({"id": "c-1"}), {"Na-Proto": "1"})
    assert act.headers["Na-Proto"] == "1"
    assert act.status == "ok"
    assert act.body == {"node": sdk_host.name}

    reply = await raw_request(nc, subject, body, hdrs)  # the retry reuses the same headers (same Na-Msg-Id)
    assert reply.headers["Na-Proto"] == "1"
    assert reply.status == "ok"
    assert reply.body == 2

    # Activation is idempotent, and the agent keeps its state.
    again = await raw_request(nc, f"{mesh_prefix}.activate.PCounter", pack({"id": "c-1"}), {"Na-Proto": "1"})
    assert again.ok
    reply = await raw_call(nc, mesh_prefix, "PCounter", "c-1", pack({"by": 3}), request_headers("add"))
    assert reply.body == 5
    # Minimal request: only Na-Action, empty body (no parameters), no Na-Proto (taken as 1).
    reply = await raw_request(nc, subject, b"", {"Na-Action": "get"})
    assert (reply.status, reply.body) == ("ok", 5)
    # A new message needs a new Na-Msg-Id (a reused one is taken as a resend, §7.3).
    who_hdrs = request_headers("whoami", **{"Na-Caller": "raw-peer"})
    who = await raw_request(nc, subject, b"", who_hdrs)
    assert who.body["caller"] == "raw-peer"
    assert who.body["message_id"] == who_hdrs["Na-Msg-Id"]


async def test_activation_errors(nc: Client, sdk_host: natsagents.Mesh, mesh_prefix: str) -> None:
    # A kind nobody hosts: no responders on the activation subject.
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(f"{mesh_prefix}.activate.Nobody", pack({"id": "x"}), timeout=2, headers={"Na-Proto": "1"})
    # Not a map with a str id (and an optional bool spawn).
    for bad in (b"", pack({"ident": "x"}), pack({"id": 7}), pack(["x"]), pack({"id": "x", "spawn": "yes"})):
        reply = await raw_request(nc, f"{mesh_prefix}.activate.PCounter", bad, {"Na-Proto": "1"})
        assert reply.status == "bad_request"
        assert reply.body["code"] == "bad_request"
    # A kind that is not activated on demand.
    reply = await raw_request(nc, f"{mesh_prefix}.activate.PSpawnOnly", pack({"id": "s"}), {"Na-Proto": "1"})
    assert reply.status == "not_found"
    assert reply.body["agent"] == "PSpawnOnly/s"
    reply = await raw_call(nc, mesh_prefix, "PSpawnOnly", "s", b"", request_headers("ping"))
    assert reply.status == "not_found"
    # Explicit spawn (§4.3) activates it; then calls reach it.
    reply = await raw_request(
        nc, f"{mesh_prefix}.activate.PSpawnOnly", pack({"id": "s", "spawn": True}), {"Na-Proto": "1"}
    )
    assert (reply.status, reply.body) == ("ok", {"node": sdk_host.name})
    reply = await raw_call(nc, mesh_prefix, "PSpawnOnly", "s", b"", request_headers("ping"))
    assert (reply.status, reply.body) == ("ok", "pong")
    # Once active, a plain activation request is ok too.
    reply = await raw_request(nc, f"{mesh_prefix}.activate.PSpawnOnly", pack({"id": "s"}), {"Na-Proto": "1"})
    assert reply.ok


BAD_REQUESTS: list[tuple[str, bytes, dict[str, str | None], dict[str, Any] | None]] = [
    # (case, body, header changes (None = remove), expected details)
    ("wrong type", pack({"by": "two"}), {}, {"param": "by", "problem": "expected int, got str"}),
    ("nil is not absence", pack({"by": None}), {}, {"param": "by", "problem": "expected int, got nil"}),
    ("bool is not int", pack({"by": True}), {}, {"param": "by", "problem": "expected int, got bool"}),
    ("unknown parameter", pack({"by": 1, "extra": 1}), {}, {"param": "extra", "problem": "unknown parameter"}),
    ("body not a map", pack([1]), {}, {"param": "params"}),
    ("missing parameter", pack({"factor": 1.5}), {"Na-Action": "scale"}, {"param": "label", "problem": "missing"}),
    ("malformed msgpack", b"\x81\xa2b", {}, None),
    ("trailing bytes", pack({"by": 1}) + b"\x01", {}, None),
    ("other ext type", pack({"by": msgpack.ExtType(5, b"x")}), {}, None),
    ("missing Na-Action", pack({"by": 1}), {"Na-Action": None}, None),
    ("malformed Na-Action", pack({"by": 1}), {"Na-Action": "do-it"}, None),
    ("Na-Proto 2", pack({"by": 1}), {"Na-Proto": "2"}, None),
    ("malformed Na-Msg-Id", pack({"by": 1}), {"Na-Msg-Id": "has space"}, None),
    ("malformed Na-Deadline", pack({"by": 1}), {"Na-Deadline": "soon"}, None),
    ("malformed Na-Reply-Mode", pack({"by": 1}), {"Na-Reply-Mode": "later"}, None),
]


@pytest.mark.parametrize(
    ("body", "changes", "details"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
async def test_bad_requests_do_not_run(
    nc: Client,
    sdk_host: natsagents.Mesh,
    mesh_prefix: str,
    body: bytes,
    changes: dict[str, str | None],
    details: dict[str, Any] | None,
) -> None:
    # Activate through the protocol (a local spawn's subscription may not have reached the server yet).
    assert (await raw_call(nc, mesh_prefix, "PCounter", "b", b"", request_headers("get"))).body == 0
    hdrs = request_headers("add")
    for key, value in changes.items():
        if value is None:
            del hdrs[key]
        else:
            hdrs[key] = value
    reply = await raw_request(nc, f"{mesh_prefix}.agent.PCounter.b", body, hdrs)
    assert reply.headers["Na-Proto"] == "1"
    assert reply.status == "bad_request"
    assert reply.body["code"] == "bad_request"
    assert isinstance(reply.body["message"], str) and reply.body["message"]
    assert reply.body["agent"] == "PCounter/b"
    if details is not None:
        assert details.items() <= reply.body["details"].items()
    get = await raw_request(nc, f"{mesh_prefix}.agent.PCounter.b", b"", request_headers("get"))
    assert get.body == 0  # the handler did not run


async def test_unknown_action_and_int_for_float(nc: Client, sdk_host: natsagents.Mesh, mesh_prefix: str) -> None:
    reply = await raw_call(nc, mesh_prefix, "PCounter", "u", pack({"by": 2}), request_headers("sub"))
    assert reply.status == "unknown_action"
    assert reply.body["code"] == "unknown_action"
    assert reply.body["agent"] == "PCounter/u"
    assert reply.body["action"] == "sub"
    assert set(reply.body["details"]["actions"]) == {"add", "get", "scale", "whoami"}
    # An int is accepted for a float parameter.
    body = pack({"factor": 3, "label": "x"})
    reply = await raw_call(nc, mesh_prefix, "PCounter", "u", body, request_headers("scale"))
    assert (reply.status, reply.body) == ("ok", [6.0, "x"])


async def test_expired_deadline_is_not_run(nc: Client, sdk_host: natsagents.Mesh, mesh_prefix: str) -> None:
    assert (await raw_call(nc, mesh_prefix, "PCounter", "d", b"", request_headers("get"))).body == 0
    subject = f"{mesh_prefix}.agent.PCounter.d"
    expired = request_headers("add", **{"Na-Deadline": str(now_ms() - 1000)})
    reply = await raw_request(nc, subject, pack({"by": 7}), expired)
    assert reply.status == "timeout"
    assert reply.body["code"] == "timeout"
    assert reply.body["action"] == "add"
    assert (await raw_request(nc, subject, b"", request_headers("get"))).body == 0
    agent = sdk_host.local_agent("PCounter/d")
    assert agent is not None and agent.state.get("n", 0) == 0


async def test_sends(nc: Client, sdk_host: natsagents.Mesh, mesh_prefix: str) -> None:
    # Acknowledged send: ok with a nil body once queued (activation on demand works too).
    reply = await raw_call(
        nc, mesh_prefix, "PCounter", "s", pack({"by": 5}), request_headers("add", **{"Na-Reply-Mode": "accept"})
    )
    assert reply.status == "ok"
    assert reply.body is None
    # One message at a time, in order: a later request sees the effect of the send.
    subject = f"{mesh_prefix}.agent.PCounter.s"
    assert (await raw_request(nc, subject, b"", request_headers("get"))).body == 5
    # Fire-and-forget: no reply subject, the host runs it and never replies.
    await nc.publish(subject, pack({"by": 10}), headers=request_headers("add"))
    assert (await raw_request(nc, subject, b"", request_headers("get"))).body == 15


async def test_non_ascii_id(nc: Client, sdk_host: natsagents.Mesh, mesh_prefix: str) -> None:
    agent_id = "José/ü@example.com 名前"
    token = encode_id(agent_id)
    assert token.startswith("=")
    reply = await raw_call(nc, mesh_prefix, "PCounter", agent_id, b"", request_headers("whoami"))
    assert reply.status == "ok"
    assert reply.body["id"] == agent_id
    assert reply.body["kind"] == "PCounter"
    # The SDK reaches the same agent by its id.
    assert await sdk_host.ref("PCounter", agent_id).call("get") == 0
    assert sdk_host.local_agents() == [f"PCounter/{agent_id}"]


async def test_full_mailbox_is_overloaded(nc: Client, mesh: natsagents.Mesh, mesh_prefix: str) -> None:
    PGate.started, PGate.release = asyncio.Event(), asyncio.Event()
    await mesh.host(PGate)
    subject = f"{mesh_prefix}.agent.PGate.g"
    first = asyncio.ensure_future(raw_call(nc, mesh_prefix, "PGate", "g", b"", request_headers("hold")))
    try:
        await asyncio.wait_for(PGate.started.wait(), 5)
        reply = await raw_request(nc, subject, b"", request_headers("hold"))
        assert reply.status == "overloaded"
        assert reply.body["agent"] == "PGate/g"
    finally:
        PGate.release.set()
        done = await first
    assert (done.status, done.body) == ("ok", "released")


# ---------------------------------------------------------------------------------------------
# 2. SDK caller -> raw-hosted agent
# ---------------------------------------------------------------------------------------------


async def _echo(act: str, params: dict[str, Any], hdrs: dict[str, str]) -> Any:
    return params.get("value")


async def _add(act: str, params: dict[str, Any], hdrs: dict[str, str]) -> Any:
    return params["a"] + params["b"]


async def _boom(act: str, params: dict[str, Any], hdrs: dict[str, str]) -> Any:
    return 1 / 0


async def _future_code(act: str, params: dict[str, Any], hdrs: dict[str, str]) -> Any:
    raise _CustomError("quota_exceeded", "a code from a newer peer", {"limit": 3})


@pytest.fixture
async def raw_echo(nc: Client, mesh_prefix: str) -> RawAgentHost:
    host = RawAgentHost(nc, "RawEcho/r-1", {"echo": _echo, "add": _add, "boom": _boom, "future": _future_code})
    await nc.subscribe(f"{mesh_prefix}.agent.RawEcho.r-1", cb=host.on_msg)
    await nc.flush()
    return host


async def test_sdk_calls_raw_host(raw_echo: RawAgentHost, mesh: natsagents.Mesh) -> None:
    ref = mesh.ref("RawEcho/r-1")
    value = {
        "n": 1,
        "f": 1.5,
        "s": "héllo",
        "b": b"\x00\xff",
        "l": [1, "two", None],
        "t": True,
        "when": datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC),
        "nested": {"k": [{}]},
    }
    started = now_ms()
    assert await ref.call("echo", value=value, timeout=5) == value
    assert await ref.call("add", a=2, b=3) == 5

    hdrs = raw_echo.seen[0]
    assert check_request_headers(hdrs) is None
    assert hdrs["Na-Proto"] == "1"
    assert hdrs["Na-Action"] == "echo"
    assert hdrs["Na-Caller"] == mesh.name
    assert started + 4000 <= int(hdrs["Na-Deadline"]) <= now_ms() + 5000
    assert hdrs["Na-Msg-Id"] != raw_echo.seen[1]["Na-Msg-Id"]
    assert "Na-Reply-Mode" not in hdrs


async def test_sdk_send_to_raw_host(raw_echo: RawAgentHost, mesh: natsagents.Mesh) -> None:
    assert await mesh.ref("RawEcho/r-1").send("echo", value=1) is None  # type: ignore[func-returns-value]
    await asyncio.wait_for(raw_echo.ran.wait(), 5)
    assert raw_echo.seen[0]["Na-Reply-Mode"] == "accept"


async def test_sdk_gets_raw_errors(raw_echo: RawAgentHost, mesh: natsagents.Mesh) -> None:
    ref = mesh.ref("RawEcho/r-1")
    with pytest.raises(natsagents.HandlerError) as err:
        await ref.call("boom")
    assert err.value.code == "handler_error"
    assert err.value.remote
    assert err.value.agent == "RawEcho/r-1"
    assert err.value.action == "boom"
    assert "ZeroDivisionError" in (err.value.remote_traceback or "")
    assert err.value.details == {"exception": "ZeroDivisionError"}

    with pytest.raises(natsagents.UnknownAction) as unknown:
        await ref.call("nope")
    assert unknown.value.details["actions"] == ["add", "boom", "echo", "future"]

    with pytest.raises(natsagents.AgentError) as future:
        await ref.call("future")
    assert type(future.value) is natsagents.AgentError
    assert future.value.code == "quota_exceeded"
    assert future.value.details == {"limit": 3}


async def test_sdk_retries_unavailable_with_retry(nc: Client, mesh: natsagents.Mesh, mesh_prefix: str) -> None:
    attempts: list[dict[str, str]] = []

    async def on_msg(msg: Msg) -> None:
        attempts.append(msg.headers or {})
        if len(attempts) == 1:
            reply = error_reply("unavailable", "stopping", "RawFlaky/f", "get", details={"retry": True})
        else:
            reply = ok_reply(len(attempts))
        await publish_reply(nc, msg.reply, reply)

    await nc.subscribe(f"{mesh_prefix}.agent.RawFlaky.f", cb=on_msg)
    await nc.flush()
    assert await mesh.ref("RawFlaky/f").call("get", timeout=5) == 2
    assert attempts[0]["Na-Msg-Id"] == attempts[1]["Na-Msg-Id"]


async def test_sdk_activates_raw_lazy_host(nc: Client, mesh: natsagents.Mesh, mesh_prefix: str) -> None:
    activations: list[Any] = []
    hosts: dict[str, RawAgentHost] = {}

    async def whoami(act: str, params: dict[str, Any], hdrs: dict[str, str]) -> Any:
        return "unused"

    async def on_activate(msg: Msg) -> None:
        body = unpack(msg.data)
        activations.append(body)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            await publish_reply(nc, msg.reply, error_reply("bad_request", "need {id: str}", "RawLazy", None))
            return
        agent_id = body["id"]
        if agent_id not in hosts:
            address = f"RawLazy/{agent_id}"

            async def hello(act: str, params: dict[str, Any], hdrs: dict[str, str], agent_id: str = agent_id) -> Any:
                return f"hello {params.get('name', 'stranger')} from {agent_id}"

            hosts[agent_id] = host = RawAgentHost(nc, address, {"hello": hello})
            await nc.subscribe(f"{mesh_prefix}.agent.RawLazy.{encode_id(agent_id)}", cb=host.on_msg)
            await nc.flush()  # subscribed before saying ok
        await publish_reply(nc, msg.reply, ok_reply({"node": "raw-node"}))

    await nc.subscribe(f"{mesh_prefix}.activate.RawLazy", queue=f"{mesh_prefix}.hosts.RawLazy", cb=on_activate)
    await nc.flush()

    assert await mesh.ref("RawLazy/x").call("hello", name="sdk", timeout=5) == "hello sdk from x"
    assert [sorted(a) for a in activations] == [["deadline", "id"]]
    assert activations[0]["id"] == "x"
    # The deadline travels as absolute unix milliseconds, within the call's 5 s.
    assert 0 < activations[0]["deadline"] / 1000 - time.time() <= 5
    assert await mesh.ref("RawLazy/x").call("hello") == "hello stranger from x"
    assert len(activations) == 1  # active now: no second activation

    # The SDK's id tokens are the document's: a non-ASCII id reaches the raw subscription.
    odd = "ü/1 ☃"
    assert await mesh.ref("RawLazy", odd).call("hello", timeout=5) == f"hello stranger from {odd}"
    assert activations[-1]["id"] == odd
    assert len(hosts[odd].seen) == 1

    # Explicit spawn sends the activation request with "spawn": true.
    await mesh.spawn("RawLazy/y")
    assert {k: v for k, v in activations[-1].items() if k != "deadline"} == {"id": "y", "spawn": True}
    assert "y" in hosts


async def test_sdk_unavailable_without_host(mesh: natsagents.Mesh) -> None:
    started = time.monotonic()
    with pytest.raises(natsagents.Unavailable):
        await mesh.ref("Nobody/x").call("ping", timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 2
