"""A leader that stops gracefully hands its role over at once: ``LeaderLease.stop()``
deletes its key (by revision, so never a successor's) instead of leaving it to expire.

Before: ``stop()`` zeroed its revision before the delete, so the key stayed and the other
candidate led only once the TTL ran out (about 6 s here instead of one campaign interval)."""

from __future__ import annotations

import time
from typing import Any

from natsagents import Mesh
from natsagents.cluster.leader import LeaderLease, holder
from natsagents.testing import wait_for
from natsagents.transport.kv import Bucket, open_bucket
from natsagents.wire import codec
from natsagents.wire.subjects import bucket_name

TTL = 6.0


async def _control(mesh_factory: Any, prefix: str) -> Bucket:
    client: Mesh = await mesh_factory(name="lease-client")
    return await open_bucket(client.transport, bucket_name(prefix, "control"), history=1)


async def test_a_stopped_leader_hands_over_well_before_the_ttl(mesh_factory: Any, mesh_prefix: str) -> None:
    control = await _control(mesh_factory, mesh_prefix)
    a = LeaderLease(control, "stop-role", "a", ttl=TTL, interval=0.2)
    b = LeaderLease(control, "stop-role", "b", ttl=TTL, interval=0.2)
    a.start()
    try:
        await wait_for(lambda: a.is_leader, timeout=5, what="a leads")
        b.start()
        entry = await control.get("stop-role")
        assert entry is not None and holder(entry.value) == "a"
        started = time.monotonic()
        await a.stop()
        assert not a.is_leader
        await wait_for(lambda: b.is_leader, timeout=TTL + 2, what="b leads")
        took = time.monotonic() - started
        print(f"b leads {took:.2f} s after a stopped (ttl {TTL} s)")
        assert took < TTL / 3  # one campaign interval (0.2 s) plus load, not the TTL
        entry = await control.get("stop-role")
        assert entry is not None and holder(entry.value) == "b"
    finally:
        await b.stop()
        await a.stop()
    assert await control.get("stop-role") is None  # b's stop deleted its key too


async def test_a_stopping_leader_never_deletes_a_successors_key(mesh_factory: Any, mesh_prefix: str) -> None:
    """The delete is a compare-and-set on the revision the leader last wrote: a key that
    changed meanwhile (a successor took it over) stays."""
    control = await _control(mesh_factory, mesh_prefix)
    a = LeaderLease(control, "taken-role", "a", ttl=TTL, interval=TTL / 3)
    a.start()
    try:
        await wait_for(lambda: a.is_leader, timeout=5, what="a leads")
        entry = await control.get("taken-role")
        assert entry is not None
        # Another node's write lands before a's next renewal (2 s away) notices it.
        successor = await control.update("taken-role", codec.encode("b"), revision=entry.revision)
    finally:
        await a.stop()
    entry = await control.get("taken-role")
    assert entry is not None and entry.revision == successor and holder(entry.value) == "b"
