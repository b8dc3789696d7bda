"""A copy fenced while messages wait in its mailbox runs none of them.

Found by ``test_partition_strategy`` (2 of about 30 runs): at the heal, the paused copy
learned inside one message that it had been taken over (the claim re-verified after its
heartbeat gap), and the mailbox worker took the next message before the copy's stop ran:
``Ownership.serving`` let a handed-over copy through, and a read ran on the old state (the
minority's caller got 3 where the majority had acknowledged 355): the stop drains the
subscription first (a round trip) and the worker goes on meanwhile. Here the copy is fenced
on one server (a save refused because another owner adopted the state); the drain is
usually too quick to show the race end to end, so the test also asks ``serving`` directly.
"""

from __future__ import annotations

import asyncio

import nats

from natsagents import ClusterSettings, Mesh, action
from natsagents.state.store import StateStore
from natsagents.testing import wait_for
from natsagents.wire.subjects import node_subject
from tests.agents import Counter

READS = 5


class SlowCounter(Counter):
    kind = "SlowCounter"

    @action
    async def slow_add(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        self.state["n"] = self.state.get("n", 0) + 1
        return int(self.state["n"])


async def test_a_copy_fenced_by_its_own_save_runs_nothing_left_in_its_mailbox(nats_url: str, mesh_prefix: str) -> None:
    """The copy learns it was fenced inside a message (its save is refused) and the
    worker takes the next message at once, before the copy's stop has run."""
    settings = ClusterSettings(node_id="n1", lease=1.0, rebalance=False, delivery=None)
    async with (
        Mesh.connect(nats_url, prefix=mesh_prefix, cluster=settings) as node,
        Mesh.connect(nats_url, prefix=mesh_prefix, name="caller") as caller,
    ):
        await node.host(SlowCounter)
        ref = caller.ref("SlowCounter/f1")
        assert await ref.call("add", by=3) == 3
        cluster = node.cluster_node
        assert cluster is not None
        act = cluster._host.activations[("SlowCounter", "f1")]
        busy = asyncio.ensure_future(ref.call("slow_add", seconds=0.5, timeout=10))
        await wait_for(lambda: act.busy_since > 0, timeout=5, interval=0.005)
        reads = [asyncio.ensure_future(ref.call("get", timeout=10)) for _ in range(READS)]
        await wait_for(lambda: len(act.mailbox) >= READS, timeout=5, interval=0.005)

        # Another owner, n2, takes the agent over: it claims the directory record (epoch + 1),
        # adopts the state (fencing this copy's next save) and stores 100. A raw connection
        # plays n2 and never answers whether it holds the agent (paused): the copy's check
        # of the claim runs out only after its slow message has tried to save.
        raw = await nats.connect(nats_url)
        await raw.subscribe(node_subject(mesh_prefix, "n2", "holds"))
        await raw.flush()
        current = await cluster.directory.get("SlowCounter", "f1", leader=True)
        assert current is not None
        claimed = await cluster.directory.handover(current, "n2")
        epoch = claimed.record.epoch
        adopted = await cluster.state.adopt("SlowCounter", "f1", epoch)
        await cluster.state.save_encoded(
            "SlowCounter", "f1", StateStore.encode({"n": 100}, epoch), revision=adopted.revision
        )

        outcome = await asyncio.gather(busy, return_exceptions=True)
        values = await asyncio.gather(*reads)
        # Whatever the old copy's mailbox worker still takes (its stop drains the
        # subscription first: a round trip during which the worker goes on) is refused.
        assert act.cluster.handed_over
        check = cluster._ownership.serving(act, None)
        assert check is not None and isinstance(await check, str)
        print(f"slow_add: {outcome[0]!r}; queued reads answered {values} (the fenced copy held 3-4, the store 100)")
        assert all(v >= 100 for v in values), values
        await raw.close()
