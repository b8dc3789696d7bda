"""A host does not start a request with too little of its deadline left to answer in time
(``HostSettings.min_time_left``, 20 ms): it answers ``timeout`` unrun, so a caller that
gives up at its deadline never misses an effect that happened."""

from __future__ import annotations

import pytest

from natsagents.errors import CallTimeout
from natsagents.testing.plugin import MeshFactory
from tests.agents import Counter


async def test_a_request_with_too_little_time_left_is_not_started(mesh_factory: MeshFactory) -> None:
    host = await mesh_factory(name="host")
    await host.host(Counter)
    caller = await mesh_factory(name="caller")
    ref = caller.ref("Counter", "m1")
    assert await ref.call("get", timeout=5) == 0  # active
    refused = 0
    for _ in range(5):
        try:
            await ref.call("add", by=1, timeout=0.012)  # ~11 ms left on arrival: under 20 ms
        except CallTimeout as exc:
            refused += exc.remote  # answered "timeout" by the host, not a local timeout
    assert refused >= 4, refused  # a reply may lose the race with the caller's own timer
    assert await ref.call("get", timeout=5) == 0  # none of them ran
    assert await ref.call("add", by=1, timeout=5) == 1  # with time to spare, it runs
    with pytest.raises(CallTimeout):
        await ref.call("add", by=1, timeout=0.012)
    assert await ref.call("get", timeout=5) == 1
