"""A partition whose lease is lost while it hands its messages back still closes its pull
consumer (found by the long fuzz: a host kept every forged-away partition's consumer
subscribed, with the deliveries that reached it afterwards: 5,940 stream messages, 56 MiB,
after 50,000 fuzz messages)."""

from __future__ import annotations

import gc
from typing import Any

import msgpack

from natsagents import ClusterSettings, DeliverySettings, Mesh
from natsagents.testing import wait_for
from natsagents.transport.jetstream._pull import PullConsumer
from tests.agents import Counter
from tests.cluster.test_registry_garbage import bucket

SLOW = DeliverySettings(partitions=1, max_deliver=3, backoff=(0.02,), ack_wait=5.0, attempt_timeout=1.5)


def open_consumers() -> list[PullConsumer]:
    return [o for o in gc.get_objects() if isinstance(o, PullConsumer) and not o._closed]


async def test_a_lease_lost_during_the_hand_back_still_closes_the_consumer(mesh_factory: Any, mesh_prefix: str) -> None:
    node: Mesh = await mesh_factory(name="p1", cluster=ClusterSettings(node_id="p1", lease=1.0, delivery=SLOW))
    await node.host(Counter)
    owners = node._owners
    assert owners is not None
    await wait_for(lambda: 0 in owners.running, timeout=10, what="partition 0 consumed")
    first = owners.running[0]
    before = len(open_consumers())
    assert before >= 1
    # A handler that outlasts the lease: the hand-back waits for it (attempt_timeout).
    await node.send_many([("Counter/s", "sleep", {"seconds": 1.4})], delivery="at_least_once")
    await wait_for(lambda: bool(first.running), timeout=10, what="the message running")
    control = await bucket(node, mesh_prefix, "control")
    await control.put("partition.0", msgpack.packb("ghost"))  # the lease is lost
    await wait_for(lambda: owners.running.get(0) not in (None, first), timeout=15, what="partition 0 taken again")
    await wait_for(lambda: len(open_consumers()) <= before, timeout=10, what="the old consumer closed")
