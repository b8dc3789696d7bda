"""Directory over a real JetStream KV bucket: single activation, takeover, fencing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from natsagents.cluster.directory import AgentActiveElsewhere, Directory, DirectoryRecord, Status
from natsagents.testing import wait_for
from natsagents.transport import ConnectSettings, Transport
from natsagents.transport.kv import CasConflict


@pytest.fixture
async def directory(nats_url: str, mesh_prefix: str) -> AsyncIterator[Directory]:
    t = await Transport.connect(ConnectSettings(servers=(nats_url,)))
    d = Directory(t, mesh_prefix)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()
        await t.close()


async def test_exactly_one_of_many_concurrent_claims_wins(directory: Directory) -> None:
    results = await asyncio.gather(
        *(directory.claim("Counter", "c-1", f"node-{i}", is_live=lambda n: True) for i in range(10)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, AgentActiveElsewhere)]
    assert len(winners) == 1 and len(losers) == 9
    owner = winners[0].record.node
    assert {e.owner for e in losers} == {owner} and winners[0].record.epoch == 1
    await wait_for(lambda: (r := directory.lookup("Counter", "c-1")) is not None and r.node == owner)


async def test_claims_are_idempotent_and_takeover_needs_a_lapsed_owner(directory: Directory) -> None:
    first = await directory.claim("Counter", "user@example.com", "node-a", is_live=lambda n: True)
    again = await directory.claim("Counter", "user@example.com", "node-a", is_live=lambda n: True)
    assert again == first
    with pytest.raises(AgentActiveElsewhere):
        await directory.claim("Counter", "user@example.com", "node-b", is_live=lambda n: n == "node-a")
    taken = await directory.claim("Counter", "user@example.com", "node-b", is_live=lambda n: n != "node-a")
    assert taken.record.node == "node-b" and taken.record.epoch == 2
    # The old owner is fenced off: its claim no longer verifies, its writes and release fail.
    assert not await directory.verify(first)
    assert await directory.verify(taken)
    assert await directory.release(first) is False
    with pytest.raises(CasConflict):
        await directory.set_status(first, Status.STOPPING)
    await wait_for(lambda: [r.agent_id for r in directory.agents_on("node-b")] == ["user@example.com"])


async def test_status_changes_and_release(directory: Directory) -> None:
    claim = await directory.claim("Counter", "c-2", "node-a", is_live=lambda n: True, status=Status.ACTIVATING)
    claim = await directory.set_status(claim, Status.ACTIVE)
    await wait_for(lambda: (r := directory.lookup("Counter", "c-2")) is not None and r.status is Status.ACTIVE)
    assert await directory.release(claim) is True
    await wait_for(lambda: directory.lookup("Counter", "c-2") is None)
    # After a release the agent can be claimed fresh, from epoch 1 again.
    fresh = await directory.claim("Counter", "c-2", "node-b", is_live=lambda n: True)
    assert fresh.record.epoch == 1


def test_records_reject_garbage() -> None:
    from natsagents.wire import codec

    for bad in (
        b"\xc1",
        codec.encode([]),
        codec.encode({"kind": "K"}),
        codec.encode({"kind": "K", "id": "i", "node": "n", "epoch": 1, "status": "nope"}),
    ):
        with pytest.raises(ValueError):
            DirectoryRecord.from_wire(bad)
