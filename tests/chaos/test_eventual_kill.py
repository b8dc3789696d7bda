"""What a SIGKILL costs an eventual kind: a node process hosting ``EventualCounter``
(``consistency = "eventual"``, ``flush_interval = 0.2``) under continuous ``add`` calls is
killed; the acknowledged increments missing from the stored state are counted, and every
one of them must have been acknowledged within the unflushed window before the kill
(``flush_interval`` + the time a write takes). A successor then goes on from what was
stored. docs/consistency.md quotes the figures."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from natsagents import Mesh
from natsagents.errors import NatsAgentsError
from natsagents.state import StateStore
from natsagents.testing import wait_for
from tests.chaos.test_cluster_chaos import host_processes

AGENTS = 16
FLUSH_INTERVAL = 0.2  # tests.node_process.EventualCounter
SLACK = 1.0  # a flush's own write, and scheduling on a loaded machine


async def test_sigkill_loses_at_most_the_unflushed_window(nats_url: str, mesh_prefix: str, tmp_path: Path) -> None:
    spec = {"kinds": ["EventualCounter"], "cluster": {"delivery": None}}
    async with host_processes(nats_url, mesh_prefix, tmp_path) as launch:
        victim = await launch("e1", spec)
        client = await Mesh.connect(nats_url, prefix=mesh_prefix, name="load", default_timeout=2.0)
        try:
            acks: dict[str, list[tuple[int, float]]] = {f"k{i}": [] for i in range(AGENTS)}
            stop = asyncio.Event()

            async def drive(agent_id: str) -> None:
                ref = client.ref("EventualCounter", agent_id)
                while not stop.is_set():
                    try:
                        total = await ref.call("add", timeout=1.0)
                    except NatsAgentsError:
                        return  # the node is gone: this call's outcome is unknown
                    acks[agent_id].append((total, time.monotonic()))

            drivers = [asyncio.ensure_future(drive(a)) for a in acks]
            await wait_for(lambda: all(len(v) >= 30 for v in acks.values()), timeout=20, what="load")
            victim.kill()
            killed = time.monotonic()
            await victim.proc.wait()
            stop.set()
            await asyncio.gather(*drivers)

            store = StateStore(client._transport, mesh_prefix)
            await store.start()
            lost = 0
            acked = 0
            oldest_lost = 0.0
            for agent_id, seen in acks.items():
                stored = (await store.load("EventualCounter", agent_id)).data or {}
                n = int(stored.get("n", 0))
                acked += len(seen)
                missing = [(total, at) for total, at in seen if total > n]
                lost += len(missing)
                if missing:
                    oldest_lost = max(oldest_lost, killed - min(at for _, at in missing))
            print(
                f"eventual SIGKILL: {acked} acknowledged, {lost} lost; "
                f"oldest lost ack {oldest_lost * 1000:.0f} ms before the kill"
            )
            assert oldest_lost <= FLUSH_INTERVAL + SLACK, "a write older than the window was lost"

            # A successor takes over (after the dead owner's lease) from the stored state.
            await launch("e2", spec)
            stored_k0 = int(((await store.load("EventualCounter", "k0")).data or {}).get("n", 0))
            assert await client.ref("EventualCounter/k0").call("add", timeout=15) == stored_k0 + 1
        finally:
            await client.aclose()
