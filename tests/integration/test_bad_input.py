"""Bad input thrown at a live agent subject: every message is answered, nothing breaks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgpack
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import natsagents as na
from natsagents import Mesh
from natsagents.wire import headers as h
from tests.agents import Counter, Typed

HEADER_NAMES = [h.PROTO, h.ACTION, h.MESSAGE_ID, h.CORRELATION_ID, h.DEADLINE, h.CALLER, h.REPLY_MODE, "X-Other"]
header_values = st.one_of(
    st.text(min_size=1, max_size=40).map(lambda s: s.replace("\r", "").replace("\n", "").strip() or "x"),
    st.sampled_from(["1", "2", "add", "get", "shapes", "result", "accept", "-1", "99999999999999999999", "", "ok"]),
)
headers_strategy = st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=6)
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=200),
    msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.dictionaries(st.sampled_from(["by", "point", "color", "tags", "value", "x"]), msgpack_values, max_size=4).map(
        lambda v: msgpack.packb(v, use_bin_type=True)
    ),
)


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


async def _answered(nc: Any, subject: str, body: bytes, headers: dict[str, str] | None) -> dict[str, str]:
    msg = await nc.request(subject, body, headers=headers or None, timeout=5)
    assert msg.headers is not None and h.STATUS in msg.headers, msg
    assert msg.headers[h.PROTO] == "1"
    status = msg.headers[h.STATUS]
    if status != "ok":
        err = msgpack.unpackb(msg.data, raw=False)
        assert err["code"] == status and isinstance(err["message"], str)
    return dict(msg.headers)


@pytest.fixture
async def victim(mesh: Mesh) -> Mesh:
    await mesh.host(Counter, Typed)
    assert await mesh.ref("Counter/victim").call("add") == 1
    await mesh.spawn(Typed, "t")
    return mesh


STATUSES: dict[str, int] = {}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(target=st.sampled_from(["Counter.victim", "Typed.t"]), body=bodies, headers=headers_strategy)
async def test_random_bytes_and_headers_are_all_answered(
    victim: Mesh, raw: Any, mesh_prefix: str, target: str, body: bytes, headers: dict[str, str]
) -> None:
    hdrs = await _answered(raw, f"{mesh_prefix}.agent.{target}", body, headers)
    STATUSES[hdrs[h.STATUS]] = STATUSES.get(hdrs[h.STATUS], 0) + 1
    # The agent is intact after every message: it answers, its state is an int.
    n = await victim.ref("Counter/victim").call("get")
    assert isinstance(n, int) and n >= 1


def test_fuzzing_reached_the_error_paths() -> None:
    """Runs after the fuzz test (file order): the inputs hit errors and successes."""
    if not STATUSES:
        pytest.skip("fuzz test not run in this session")
    assert STATUSES.get("bad_request", 0) > 0
    assert sum(STATUSES.values()) >= 200


@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        (b"\xc1", {h.ACTION: "add"}, "bad_request"),  # never-used msgpack byte
        (b"\x92\x01", {h.ACTION: "add"}, "bad_request"),  # truncated array
        (b"\x01\x02", {h.ACTION: "add"}, "bad_request"),  # trailing bytes
        (b"\xd4\x05\x00", {h.ACTION: "add"}, "bad_request"),  # extension type
        (msgpack.packb([1, 2]), {h.ACTION: "add"}, "bad_request"),  # params not a map
        (msgpack.packb({"by": "x"}), {h.ACTION: "add"}, "bad_request"),
        (msgpack.packb({"by": 1, "zz": 2}), {h.ACTION: "add"}, "bad_request"),
        (b"", {}, "bad_request"),  # no action header
        (b"", {h.ACTION: "add", h.PROTO: "2"}, "bad_request"),
        (b"", {h.ACTION: "a.b"}, "bad_request"),
        (b"", {h.ACTION: "add", h.DEADLINE: "soon"}, "bad_request"),
        (b"", {h.ACTION: "add", h.MESSAGE_ID: "has space"}, "bad_request"),
        (b"", {h.ACTION: "add", h.REPLY_MODE: "maybe"}, "bad_request"),
        (b"", {h.ACTION: "add", h.DEADLINE: "1"}, "timeout"),  # 1 ms after the epoch
        (b"", {h.ACTION: "nope"}, "unknown_action"),
        (b"", {h.ACTION: "add"}, "ok"),
    ],
)
async def test_each_bad_input_gets_its_error_code(
    mesh: Mesh, raw: Any, mesh_prefix: str, body: bytes, headers: dict[str, str], code: str
) -> None:
    await mesh.host(Counter)
    await mesh.spawn(Counter, "c")
    hdrs = await _answered(raw, f"{mesh_prefix}.agent.Counter.c", body, headers)
    assert hdrs[h.STATUS] == code
    assert await mesh.ref("Counter/c").call("get") == (1 if code == "ok" else 0)


async def test_bad_activation_requests(mesh: Mesh, raw: Any, mesh_prefix: str) -> None:
    await mesh.host(Counter)
    subject = f"{mesh_prefix}.activate.Counter"
    for body in (
        b"\xc1",
        msgpack.packb([1]),
        msgpack.packb({"id": 5}),
        msgpack.packb({"id": ""}),
        msgpack.packb({"id": "ok", "spawn": "yes"}),
    ):
        hdrs = await _answered(raw, subject, body, None)
        assert hdrs[h.STATUS] == "bad_request"
    assert mesh.local_agents() == []
    hdrs = await _answered(raw, subject, msgpack.packb({"id": "fine"}), None)
    assert hdrs[h.STATUS] == "ok" and mesh.local_agents() == ["Counter/fine"]


async def test_sends_without_reply_subject_are_handled_silently(mesh: Mesh, raw: Any, mesh_prefix: str) -> None:
    """A publish without a reply subject runs the handler; a bad one is dropped (and counted)."""
    await mesh.host(Counter)
    ref = mesh.ref("Counter/fire")
    await ref.call("get")
    await raw.publish(f"{mesh_prefix}.agent.Counter.fire", msgpack.packb({"by": 5}), headers={h.ACTION: "add"})
    await raw.publish(f"{mesh_prefix}.agent.Counter.fire", b"\xc1", headers={h.ACTION: "add"})
    await raw.flush()
    from natsagents.testing import wait_for

    await wait_for(
        lambda: mesh.metrics.value("natsagents_rejected_total", {"kind": "Counter", "reason": "bad_request"}) == 1
    )
    assert await ref.call("get") == 5


async def test_errors_are_typed_locally_too(mesh: Mesh) -> None:
    with pytest.raises(na.ConfigurationError):
        await Mesh.connect("http://127.0.0.1:1")
    with pytest.raises(na.ConfigurationError):
        await Mesh.connect([])
    with pytest.raises(na.ConfigurationError):
        await Mesh.connect(prefix="bad prefix")
    with pytest.raises(na.ConfigurationError):
        mesh.ref(42)  # type: ignore[arg-type]
    with pytest.raises(na.ConfigurationError):
        await mesh.ref("Counter/x").call("")


async def test_failed_sends_are_logged_not_lost_silently(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    await mesh.host(Counter)
    with caplog.at_level("WARNING", logger="natsagents.runtime"):
        await mesh.ref("Counter/s").send("nope")  # accepted by the mailbox, then unknown
        await mesh.ref("Counter/s").call("get")  # FIFO: the send was handled before this
    assert any("dropped a send to Counter/s (action nope): unknown_action" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({h.ACTION: "add", h.REPLY_MODE: "accept", h.PROTO: "9"}, "bad_request"),
        ({h.ACTION: "add", h.REPLY_MODE: "accept", h.DEADLINE: "1"}, "timeout"),
    ],
)
async def test_accept_mode_sends_get_exactly_one_reply(
    mesh: Mesh, raw: Any, mesh_prefix: str, headers: dict[str, str], code: str
) -> None:
    await mesh.host(Counter)
    await mesh.spawn(Counter, "once")
    inbox = raw.new_inbox()
    sub = await raw.subscribe(inbox)
    for _ in range(50):
        await raw.publish(f"{mesh_prefix}.agent.Counter.once", b"", reply=inbox, headers=headers)
        first = await sub.next_msg(timeout=5)
        # Right after a subscription, another connection's publish may still get the
        # server's "no responders" (503) for a moment; a peer retries it (protocol §7.2).
        if first.headers.get("Status") != "503":
            break
    assert first.headers.get(h.STATUS) == code, first.headers
    # FIFO: once this call returns, any second reply to the send would already be here.
    assert await mesh.ref("Counter/once").call("get") == 0
    await raw.flush()
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=0.05)
    await sub.unsubscribe()
