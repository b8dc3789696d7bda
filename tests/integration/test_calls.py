"""Calls, sends, futures, context, typed errors, mailboxes: one real nats-server."""

from __future__ import annotations

import os
import time

import pytest

import natsagents as na
from natsagents import Mesh, all_of, any_of
from natsagents.testing import wait_for
from tests.agents import BrokenStart, Counter, Gate, Lifecycle, SpawnOnly, Typed, WideGate


async def test_call_send_request(mesh: Mesh) -> None:
    await mesh.host(Counter)
    ref = mesh.ref("Counter/c-1")
    assert await ref.call("add", by=2) == 2
    await ref.send("add", by=3)
    # The send was accepted into the mailbox; FIFO per agent means the next call sees it.
    assert await ref.call("get") == 5
    fut = ref.request("add")
    assert isinstance(fut, na.AgentFuture)
    assert await fut == 6
    assert await ref.request("add", by=4).then(lambda n: n * 10) == 100


async def test_then_accepts_async_functions_and_passes_errors(mesh: Mesh) -> None:
    await mesh.host(Counter)
    ref = mesh.ref(Counter, "c-then")

    async def double(n: int) -> int:
        return n * 2

    assert await ref.request("add", by=21).then(double) == 42
    with pytest.raises(na.HandlerError):
        await ref.request("fail").then(double)


async def test_all_of_and_any_of(mesh: Mesh) -> None:
    await mesh.host(Counter)
    refs = [mesh.ref("Counter", f"c-{i}") for i in range(10)]
    assert await all_of(*(r.request("add", by=i) for i, r in enumerate(refs))) == list(range(10))
    results = await all_of(refs[0].request("fail"), refs[1].request("get"), return_exceptions=True)
    assert isinstance(results[0], na.HandlerError) and results[1] == 1
    with pytest.raises(na.HandlerError):
        await all_of(refs[0].request("fail"), refs[1].request("get"))
    # any_of: the fast one wins, the slow one is cancelled on our side.
    winner = await any_of(refs[2].request("sleep", seconds=0.3), refs[3].request("get"))
    assert winner == 3
    with pytest.raises(na.HandlerError):
        await any_of(refs[0].request("fail"), refs[1].request("fail"))


async def test_ref_is_a_frozen_hashable_value(mesh: Mesh) -> None:
    a = mesh.ref("Counter/c-1")
    b = mesh.ref(Counter, "c-1")
    c = mesh.ref("Counter", "c-1")
    assert a == b == c and hash(a) == hash(b) and len({a, b, c}) == 1
    assert str(a) == "Counter/c-1" and a.address == "Counter/c-1"
    assert mesh.ref("Counter/a/b").id == "a/b"
    with pytest.raises(AttributeError):
        a.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("bad", ["", "x" * 201, 12, b"bytes"])
async def test_invalid_ids_raise(mesh: Mesh, bad: object) -> None:
    with pytest.raises(na.InvalidAgentId):
        mesh.ref("Counter", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["Counter", "1Counter/x", "Coun ter/x", "Co.unter/x", "*/x", "/x"])
async def test_invalid_addresses_raise(mesh: Mesh, bad: str) -> None:
    with pytest.raises(na.InvalidAddress) as info:
        mesh.ref(bad)
    assert isinstance(info.value, ValueError)


async def test_encoded_ids_reach_the_agent_unchanged(mesh: Mesh) -> None:
    await mesh.host(Counter)
    for agent_id in ["user@example.com", "a.b.c", "with space", "ünïcødé/ключ", "=looks-encoded", "*", ">"]:
        info = await mesh.ref("Counter", agent_id).call("whoami")
        assert info["id"] == agent_id
    assert "Counter/user@example.com" in mesh.local_agents()


async def test_typed_parameters(mesh: Mesh) -> None:
    await mesh.host(Typed)
    ref = mesh.ref("Typed/t")
    out = await ref.call(
        "shapes", point={"x": 1, "y": 2}, color="blue", tags=["a"], mode="b", scale=3, pair=[1, "z"], meta={"k": 1}
    )
    assert out == {
        "x": 1,
        "y": 2,
        "color": "blue",
        "tags": ["a"],
        "mode": "b",
        "scale": 3.0,
        "scale_type": "float",
        "maybe": None,
        "pair": [1, "z"],
        "meta": {"k": 1},
    }
    bad_calls = [
        ({"point": {"x": 1}, "color": "green", "tags": []}, "color"),
        ({"point": {"x": "1"}, "color": "red", "tags": []}, "point.x"),
        ({"point": {"x": 1, "z": 2}, "color": "red", "tags": []}, "point"),
        ({"point": {"x": 1}, "color": "red", "tags": [1]}, "tags[0]"),
        ({"point": {"x": 1}, "color": "red", "tags": [], "mode": "c"}, "mode"),
        ({"point": {"x": 1}, "color": "red", "tags": [], "scale": True}, "scale"),
        ({"point": {"x": 1}, "color": "red", "tags": [], "pair": [1]}, "pair"),
        ({"point": {"x": 1}, "color": "red"}, "tags"),
        ({"point": {"x": 1}, "color": "red", "tags": [], "extra": 1}, "extra"),
    ]
    for params, path in bad_calls:
        with pytest.raises(na.BadRequest) as info:
            await ref.call("shapes", params=params)  # type: ignore[arg-type]
        assert info.value.details["param"] == path, params
        assert info.value.code == "bad_request" and info.value.remote


async def test_params_mapping_allows_reserved_names(mesh: Mesh) -> None:
    await mesh.host(Counter)
    ref = mesh.ref("Counter/p")
    assert await ref.call("echo", params={"value": {"timeout": 1}}) == {"timeout": 1}
    with pytest.raises(na.ConfigurationError):
        await ref.call("echo", params={"value": 1}, value=2)


async def test_context_and_correlation_propagate(mesh: Mesh) -> None:
    await mesh.host(Counter)
    direct = await mesh.ref("Counter/ctx").call("whoami", timeout=5)
    assert direct["correlation_id"] == direct["message_id"]
    assert direct["caller"] == mesh.name
    assert direct["deadline"] == pytest.approx(time.time() + 5, abs=1.0)
    nested = await mesh.ref("Counter/outer").call("ask_whoami", target="Counter/inner", timeout=3)
    assert nested["caller"] == "Counter/outer"
    assert nested["message_id"] != nested["correlation_id"]
    # the nested deadline is the outer one (not the longer default)
    assert nested["deadline"] == pytest.approx(time.time() + 3, abs=1.0)


async def test_agent_to_agent_calls(mesh: Mesh) -> None:
    await mesh.host(Counter)
    assert await mesh.ref("Counter/a").call("forward", target="Counter/b", by=7) == 7
    assert await mesh.ref("Counter/b").call("get") == 7


async def test_handler_error_carries_remote_traceback(mesh: Mesh) -> None:
    await mesh.host(Counter)
    with pytest.raises(na.HandlerError) as info:
        await mesh.ref("Counter/e").call("fail", message="broken thing")
    err = info.value
    assert err.code == "handler_error" and err.agent == "Counter/e" and err.action == "fail"
    assert "broken thing" in str(err)
    assert err.remote_traceback is not None and "RuntimeError: broken thing" in err.remote_traceback
    assert err.details["exception"] == "RuntimeError"
    # the agent keeps working
    assert await mesh.ref("Counter/e").call("add") == 1


async def test_tracebacks_can_be_hidden(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    mesh = await mesh_factory(expose_tracebacks=False)
    await mesh.host(Counter)
    with pytest.raises(na.HandlerError) as info:
        await mesh.ref("Counter/e").call("fail")
    assert info.value.remote_traceback is None


async def test_unknown_action(mesh: Mesh) -> None:
    await mesh.host(Counter)
    with pytest.raises(na.UnknownAction) as info:
        await mesh.ref("Counter/u").call("nope")
    assert "add" in info.value.details["actions"]


async def test_call_timeout_is_a_timeout_error(mesh: Mesh) -> None:
    await mesh.host(Counter)
    ref = mesh.ref("Counter/slow")
    started = time.perf_counter()
    with pytest.raises(na.CallTimeout) as info:
        await ref.call("sleep", seconds=1.0, timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert 0.15 < time.perf_counter() - started < 0.8


async def test_expired_messages_are_not_executed(mesh: Mesh) -> None:
    await mesh.host(Counter)
    ref = mesh.ref("Counter/busy")
    await ref.call("get")
    busy = ref.request("sleep", seconds=0.5)
    await wait_for(lambda: mesh._host.activations[("Counter", "busy")].busy == 1)
    # Queued behind the sleep with a deadline that passes while it waits.
    with pytest.raises(na.CallTimeout):
        await ref.call("add", by=1, timeout=0.1)
    await busy
    assert await ref.call("get") == 0
    await wait_for(
        lambda: mesh.metrics.value("natsagents_rejected_total", {"kind": "Counter", "reason": "expired"}) == 1.0
    )


async def test_mailbox_full_gives_overloaded(mesh: Mesh) -> None:
    await mesh.host(Gate)
    ref = mesh.ref("Gate/g")
    first = ref.request("wait")
    await wait_for(lambda: (a := mesh.local_agent("Gate/g")) is not None and a.state["running"] == 1)
    queued = [ref.request("wait") for _ in range(2)]  # mailbox_size 3 = 1 running + 2 waiting
    await wait_for(lambda: len(mesh._host.activations[("Gate", "g")].mailbox) == 2)
    with pytest.raises(na.Overloaded):
        await ref.call("wait")
    with pytest.raises(na.Overloaded):
        await ref.send("wait")
    # The refused messages changed nothing: exactly the three accepted ones run.
    mesh.local_agent("Gate/g").event.set()  # type: ignore[union-attr]
    assert sorted(await all_of(first, *queued)) == [1, 2, 3]
    assert mesh.local_agent("Gate/g").state["done"] == 3  # type: ignore[union-attr]


async def test_actor_semantics_and_opt_in_concurrency(mesh: Mesh) -> None:
    await mesh.host(Gate, WideGate)
    serial, wide = mesh.ref("Gate/s"), mesh.ref("WideGate/w")
    s_futs = [serial.request("wait") for _ in range(3)]
    w_futs = [wide.request("wait") for _ in range(6)]
    await wait_for(lambda: (a := mesh.local_agent("WideGate/w")) is not None and a.state["running"] == 4)
    await wait_for(lambda: (a := mesh.local_agent("Gate/s")) is not None and a.state["running"] == 1)
    mesh.local_agent("Gate/s").event.set()  # type: ignore[union-attr]
    mesh.local_agent("WideGate/w").event.set()  # type: ignore[union-attr]
    await all_of(*s_futs, *w_futs)
    assert mesh.local_agent("Gate/s").state["max_running"] == 1  # type: ignore[union-attr]
    assert mesh.local_agent("WideGate/w").state["max_running"] == 4  # type: ignore[union-attr]


async def test_lifecycle_hooks(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    Lifecycle.events.clear()
    mesh = await mesh_factory()
    await mesh.host(Lifecycle)
    assert await mesh.ref("Lifecycle/a").call("ping") == "pong"
    await mesh.spawn(Lifecycle, "b")
    assert Lifecycle.events == ["start:a", "start:b"]
    assert await mesh.deactivate("Lifecycle/a") is True
    assert await mesh.deactivate("Lifecycle/a") is False
    assert Lifecycle.events[-1] == "stop:a"
    await mesh.aclose()
    assert sorted(Lifecycle.events) == ["start:a", "start:b", "stop:a", "stop:b"]
    assert mesh.state is na.MeshState.CLOSED


async def test_spawn_only_kinds(mesh: Mesh) -> None:
    await mesh.host(SpawnOnly)
    with pytest.raises(na.AgentNotFound):
        await mesh.ref("SpawnOnly/x").call("ping", timeout=2)
    ref = await mesh.spawn(SpawnOnly, "x")
    assert await ref.call("ping") == "pong"


async def test_spawn_on_a_remote_host(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    host = await mesh_factory(name="host")
    client = await mesh_factory(name="client")
    await host.host(SpawnOnly)
    ref = await client.spawn("SpawnOnly/remote")
    assert "SpawnOnly/remote" in host.local_agents()
    assert await ref.call("ping") == "pong"


async def test_failing_on_start(mesh: Mesh) -> None:
    await mesh.host(BrokenStart)
    with pytest.raises(na.HandlerError) as info:
        await mesh.ref("BrokenStart/x").call("ping", timeout=2)
    assert "cannot start" in str(info.value)
    assert mesh.local_agents() == []


async def test_unhosted_kind_is_unavailable(mesh: Mesh) -> None:
    started = time.perf_counter()
    with pytest.raises(na.Unavailable) as info:
        await mesh.ref("Nobody/x").call("ping", timeout=0.3)
    assert "no host serves kind 'Nobody'" in str(info.value)
    assert time.perf_counter() - started < 1.0


async def test_activation_waits_for_a_host_that_appears(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    caller = await mesh_factory(name="caller")
    host = await mesh_factory(name="late-host")
    pending = caller.ref("Counter/late").request("add", by=5, timeout=5)
    await wait_for(
        lambda: caller.metrics.value("natsagents_call_retries_total", {"kind": "Counter", "reason": "no_host"}) >= 2
    )
    assert not pending.done()
    await host.host(Counter)
    assert await pending == 5


async def test_payload_too_large_is_checked_locally(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    mesh = await mesh_factory()
    await mesh.host(Counter)
    ref = mesh.ref("Counter/big")
    # Random bytes: compression (above 64 KiB by default) cannot shrink them.
    with pytest.raises(na.PayloadTooLarge) as info:
        await ref.call("echo", value=os.urandom(mesh.max_payload))
    assert not info.value.remote and isinstance(info.value, ValueError)
    # A message whose body fits but whose headers push it over is refused too.
    body_only = mesh.max_payload - 40
    with pytest.raises(na.PayloadTooLarge):
        await ref.call("echo", value=os.urandom(body_only))
    # The connection survived (nats-py would have closed it for good).
    assert await ref.call("add") == 1


async def test_reply_too_large_becomes_an_error_reply(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    mesh = await mesh_factory(compress_above=None)  # a compressed reply of x's would fit
    await mesh.host(Counter)
    with pytest.raises(na.PayloadTooLarge) as info:
        await mesh.ref("Counter/big").call("big", size=mesh.max_payload)
    assert info.value.remote
    assert await mesh.ref("Counter/big").call("add") == 1


async def test_unencodable_params_and_results(mesh: Mesh) -> None:
    await mesh.host(Counter)
    with pytest.raises(na.BadRequest) as info:
        await mesh.ref("Counter/enc").call("echo", value=object())
    assert not info.value.remote
    assert await mesh.ref("Counter/enc").call("echo", value={1, 2}) in ([1, 2], [2, 1])  # sets travel as arrays


async def test_bad_timeouts_are_rejected(mesh: Mesh) -> None:
    await mesh.host(Counter)
    for bad in (0, -1, "1"):
        with pytest.raises(na.ConfigurationError):
            await mesh.ref("Counter/t").call("get", timeout=bad)  # type: ignore[arg-type]


async def test_hosting_errors(mesh: Mesh) -> None:
    with pytest.raises(na.ConfigurationError):
        await mesh.host(object)  # type: ignore[arg-type]
    await mesh.host(Counter)
    await mesh.host(Counter)  # idempotent

    class Other(na.Agent):
        kind = "Counter"

    with pytest.raises(na.ConfigurationError):
        await mesh.host(Other)


async def test_closed_mesh_refuses_work(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    mesh = await mesh_factory()
    ref = mesh.ref("Counter/x")
    await mesh.aclose()
    await mesh.aclose()  # idempotent
    with pytest.raises(na.MeshClosed):
        await ref.call("get")
    with pytest.raises(na.MeshClosed):
        await mesh.host(Counter)


async def test_metrics_count_calls_and_handling(mesh: Mesh) -> None:
    await mesh.host(Counter)
    ref = mesh.ref("Counter/m")
    for _ in range(3):
        await ref.call("add")
    with pytest.raises(na.UnknownAction):
        await ref.call("nope")
    m = mesh.metrics
    assert m.value("natsagents_calls_total", {"kind": "Counter", "action": "add", "outcome": "ok"}) == 3
    assert m.value("natsagents_calls_total", {"kind": "Counter", "action": "nope", "outcome": "unknown_action"}) == 1
    assert m.value("natsagents_handled_total", {"kind": "Counter", "action": "add", "outcome": "ok"}) == 3
    assert m.value("natsagents_handler_seconds_count", {"kind": "Counter", "action": "add"}) == 3
    assert m.value("natsagents_rejected_total", {"kind": "Counter", "reason": "unknown_action"}) == 1
    assert m.value("natsagents_active_agents", {"kind": "Counter"}) == 1


async def test_caller_header_cannot_be_injected_through_an_id(mesh: Mesh) -> None:
    await mesh.host(Counter)
    evil = "x\r\nNa-Action: fail"
    info = await mesh.ref("Counter", evil).call("ask_whoami", target="Counter/peer")
    assert info["caller"] == "Counter/" + na.wire.ids.encode_id(evil)
    assert await mesh.ref("Counter/peer").call("get") == 0


async def test_invalid_action_names_are_refused_locally(mesh: Mesh) -> None:
    for bad in ("a\r\nb", "has space", "", 5, "x" * 65):
        with pytest.raises(na.ConfigurationError):
            await mesh.ref("Counter/x").call(bad)  # type: ignore[arg-type]
