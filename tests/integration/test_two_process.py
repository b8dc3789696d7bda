"""Location transparency: the agent lives in another process; the caller only knows kind/id."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable

import pytest

import natsagents as na
from natsagents import Mesh
from tests import node_process


async def _start_host(url: str, prefix: str, name: str) -> asyncio.subprocess.Process:
    return await node_process.start(url, prefix, name, {"kinds": ["Counter", "Typed"]})


@pytest.fixture
async def hosts(nats_url: str, mesh_prefix: str) -> AsyncIterator[Callable[[str], object]]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(name: str) -> asyncio.subprocess.Process:
        proc = await _start_host(nats_url, mesh_prefix, name)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def test_call_an_agent_in_another_process(mesh: Mesh, hosts) -> None:  # type: ignore[no-untyped-def]
    proc = await hosts("host-a")
    counter = mesh.ref("Counter/remote-1")
    assert await counter.call("add", by=2) == 2
    await counter.send("add", by=3)
    assert await counter.request("get") == 5
    info = await counter.call("whoami")
    assert info["caller"] == mesh.name and info["id"] == "remote-1"
    with pytest.raises(na.HandlerError) as err:
        await counter.call("fail", message="remote boom")
    assert "remote boom" in (err.value.remote_traceback or "")
    assert mesh.local_agents() == []  # nothing runs here
    # Graceful stop (SIGTERM): the host's agents run on_stop and the process exits 0.
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_agent_reactivates_on_another_host_after_a_crash(mesh: Mesh, hosts) -> None:  # type: ignore[no-untyped-def]
    first = await hosts("host-a")
    ref = mesh.ref("Counter/moving")
    assert await ref.call("add") == 1
    first.kill()
    await first.wait()
    # No host now: the call keeps retrying inside its deadline, then says why.
    with pytest.raises(na.Unavailable):
        await ref.call("add", timeout=0.3)
    await hosts("host-b")
    # Same address, new process: activated on demand there (in-memory state restarts at 0).
    assert await ref.call("add", timeout=5) == 1
    assert (await ref.call("whoami"))["id"] == "moving"
