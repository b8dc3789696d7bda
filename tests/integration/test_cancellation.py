"""Cancelled calls leave no pending replies, tasks or subscriptions behind."""

from __future__ import annotations

import asyncio

import pytest

import natsagents as na
from natsagents import Mesh
from natsagents.testing import wait_for
from tests.agents import Counter


def _tasks_named(fragment: str) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if fragment in repr(t.get_coro())]


async def test_cancelled_call_leaves_nothing_behind(mesh: Mesh) -> None:
    await mesh.host(Counter)
    ref = mesh.ref("Counter/cx")
    await ref.call("get")
    transport = mesh.transport
    subs_before = transport.subscription_count
    task = asyncio.ensure_future(ref.call("sleep", seconds=0.5))
    await wait_for(lambda: transport.pending_requests == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert transport.pending_requests == 0
    assert transport.subscription_count == subs_before
    assert _tasks_named("Caller.invoke") == []
    # The agent still finishes the message it had and stays usable.
    assert await ref.call("get") == 0
    assert mesh.local_agent("Counter/cx").state["slept"] == 1  # type: ignore[union-attr]


async def test_cancelled_request_future(mesh: Mesh) -> None:
    await mesh.host(Counter)
    ref = mesh.ref("Counter/cf")
    fut = ref.request("sleep", seconds=0.5)
    await wait_for(lambda: mesh.transport.pending_requests == 1)
    assert fut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fut
    assert fut.cancelled()
    assert mesh.transport.pending_requests == 0
    assert not mesh._tasks


async def test_cancelled_while_waiting_for_a_host(mesh: Mesh) -> None:
    """A call retrying "no host" with backoff is cancelled cleanly."""
    task = asyncio.ensure_future(mesh.ref("Nobody/x").call("ping", timeout=10))
    await wait_for(
        lambda: mesh.metrics.value("natsagents_call_retries_total", {"kind": "Nobody", "reason": "no_host"}) >= 1
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert mesh.transport.pending_requests == 0


async def test_timeouts_clean_up_too(mesh: Mesh) -> None:
    await mesh.host(Counter)
    ref = mesh.ref("Counter/tm")
    for _ in range(5):
        with pytest.raises(na.CallTimeout):
            await ref.call("sleep", seconds=0.05, timeout=0.01)
    assert mesh.transport.pending_requests == 0


async def test_close_fails_pending_calls_with_mesh_closed(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    host = await mesh_factory(name="host")
    caller = await mesh_factory(name="caller")
    await host.host(Counter)
    fut = caller.ref("Counter/z").request("sleep", seconds=0.5)
    await wait_for(lambda: caller.transport.pending_requests == 1)
    await caller.aclose()
    with pytest.raises(na.MeshClosed):
        await fut
    assert not caller._tasks


async def test_close_from_a_cancelled_task_still_completes(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    mesh = await mesh_factory()
    await mesh.host(Counter)
    await mesh.ref("Counter/a").call("add")
    closer = asyncio.ensure_future(mesh.aclose())
    await asyncio.sleep(0)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    await wait_for(lambda: mesh.state is na.MeshState.CLOSED)
    assert mesh.transport.is_closed


async def test_close_lets_agents_finish_their_mailbox(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    host = await mesh_factory(name="host")
    caller = await mesh_factory(name="caller")
    await host.host(Counter)
    ref = caller.ref("Counter/drain")
    await ref.call("get")
    futs = [ref.request("sleep", seconds=0.05) for _ in range(3)]
    await wait_for(lambda: host._host.activations[("Counter", "drain")].busy == 1)
    await host.aclose()
    assert await na.all_of(*futs) == [0.05, 0.05, 0.05]
