"""``partition_strategy = "pause_minority"`` across a real (proxied) partition.

Server 2 of a :class:`~natsagents.testing.proxy.ProxiedCluster` is isolated from the other
two (its routes blackholed: sockets open, nothing flows). Node ``nC`` is connected to
server 2 and owns the counters; node ``nA`` is on server 0. A caller on server 2 reads
(``get``), a caller on server 0 writes (``add``). Asserted, with the counts printed:

* ``nC`` reports the minority side (``quorum_lost``) within about a lease (+ one
  heartbeat's timeout) of the cut, and its events come in order (start ... heal);
* its counters answer ``PartitionError`` there (counted), never a value once it knows:
  0 ok reads from the minority after detection, and no read older than a write the
  majority acknowledged before the read began;
* the majority serves them after the lease, and the counters end at exactly the
  acknowledged increments;
* at the heal the paused copies stop (never a second writer) and the minority's caller
  reaches the new owner.

The stream leaders of the buckets are moved to the majority first (a cut-off Raft leader
answers as leader until it notices: ``test_partition_reads``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from natsagents import ClusterSettings, Hints, Mesh, PartitionError, PartitionEvent
from natsagents.errors import NatsAgentsError
from natsagents.testing import wait_for
from natsagents.testing.proxy import ProxiedCluster, partition
from tests.agents import Counter
from tests.cluster.fresh import node_on_fresh_cluster
from tests.cluster.test_partition_reads import _lead_from_majority

LEASE = 1.0
AGENTS = 3


@pytest.fixture(scope="module")
def proxied() -> Iterator[ProxiedCluster]:
    cluster = ProxiedCluster(3, name="strategy")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _settings(node: str) -> ClusterSettings:
    return ClusterSettings(node_id=node, lease=LEASE, rebalance=False, delivery=None)


async def _node(url: str, prefix: str, node: str, settings: ClusterSettings | None = None) -> Mesh:
    """A node on a freshly made cluster (``fresh.node_on_fresh_cluster``)."""
    return await node_on_fresh_cluster(url, prefix, settings or _settings(node))


@dataclass
class Tally:
    acked: dict[str, int] = field(default_factory=dict)  # acknowledged increments
    top: dict[str, int] = field(default_factory=dict)  # highest value acknowledged
    unknown: int = 0
    reads_ok: int = 0
    reads_ok_after_detection: int = 0  # began after detection, answered before the heal
    partition_errors: int = 0
    other_errors: dict[str, int] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)


async def _writer(client: Mesh, name: str, tally: Tally, stop: asyncio.Event) -> None:
    ref = client.ref(f"Counter/{name}")
    while not stop.is_set():
        try:
            value = int(await ref.call("add", by=1, timeout=6.0))
        except NatsAgentsError as exc:
            tally.unknown += 1
            print(f"add to {name}: {exc!r}")
            await asyncio.sleep(0.02)
            continue
        tally.acked[name] = tally.acked.get(name, 0) + 1
        tally.top[name] = max(tally.top.get(name, 0), value)


async def _reader(
    client: Mesh, name: str, tally: Tally, stop: asyncio.Event, detected: asyncio.Event, healed: asyncio.Event
) -> None:
    ref = client.ref(f"Counter/{name}")
    while not stop.is_set():
        floor, knew = tally.top.get(name, 0), detected.is_set() and not healed.is_set()
        began = time.time()
        try:
            value = int(await ref.call("get", timeout=3.0))
        except PartitionError:
            tally.partition_errors += 1
            await asyncio.sleep(0.02)  # pacing the reads, not a synchronisation
            continue
        except NatsAgentsError as exc:
            kind = type(exc).__name__
            tally.other_errors[kind] = tally.other_errors.get(kind, 0) + 1
            await asyncio.sleep(0.02)
            continue
        tally.reads_ok += 1
        tally.reads_ok_after_detection += knew and not healed.is_set()  # answered by the minority
        if value < floor:
            tally.stale.append(f"{name} = {value} < {floor} (asked at {began:.3f}, answered at {time.time():.3f})")


async def test_the_minority_pauses_the_majority_takes_over_and_the_heal_stops_the_paused_copies(
    proxied: ProxiedCluster, mesh_prefix: str
) -> None:
    major, minor = proxied.servers[0].url, proxied.servers[2].url
    async with (
        await _node(minor, mesh_prefix, "nC") as node_c,
        await _node(major, mesh_prefix, "nA") as node_a,
        Mesh.connect(major, prefix=mesh_prefix, name="far", default_timeout=10.0) as far,
        Mesh.connect(minor, prefix=mesh_prefix, name="near", default_timeout=10.0) as near,
    ):
        await node_c.host(Counter)
        await node_a.host(Counter)
        names = [f"c{i}" for i in range(AGENTS)]
        for name in names:
            await node_c.spawn("Counter", name, hints=Hints(pin="nC"))
        tally = Tally()
        for name in names:
            for _ in range(3):
                await far.ref(f"Counter/{name}").call("add", by=1)
            tally.acked[name] = tally.top[name] = 3
        a, c = node_a.cluster_node, node_c.cluster_node
        assert a is not None and c is not None and c.partition is not None
        await wait_for(lambda: a.membership.is_live("nC") and c.membership.is_live("nA"), timeout=5)
        for bucket in (a.membership.bucket, a.directory.bucket, a.state.bucket):
            await _lead_from_majority(far.transport, bucket, proxied)
        events: list[PartitionEvent] = []
        c.partition.subscribe(events.append)

        stop, detected, healed_ = asyncio.Event(), asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        with partition(proxied, {2}, clients=False) as cut:
            began = loop.time()
            tasks = [asyncio.ensure_future(_reader(near, n, tally, stop, detected, healed_)) for n in names]
            await wait_for(lambda: c.partition.state.minority, timeout=4 * LEASE, interval=0.01)
            detected.set()
            detection = loop.time() - began
            tasks += [asyncio.ensure_future(_writer(far, n, tally, stop)) for n in names]
            await wait_for(lambda: all(tally.acked[n] > 3 for n in names), timeout=15, interval=0.05)
            takeover = loop.time() - began
            await asyncio.sleep(0.5)  # keep reading from the minority a little longer (the fault's length)
            healed_.set()
            cut.heal()
        healed = loop.time()
        await wait_for(lambda: not set(node_c.local_agents()) & {f"Counter/{n}" for n in names}, timeout=15)
        stopped = loop.time() - healed
        await wait_for(lambda: c.partition.state.status == "ok", timeout=15)  # type: ignore[union-attr]
        stop.set()
        await asyncio.gather(*tasks)

        finals = {n: int(await far.ref(f"Counter/{n}").call("get", timeout=15)) for n in names}
        via_minority = {n: int(await near.ref(f"Counter/{n}").call("get", timeout=15)) for n in names}
        owners = {r.address: r.node for r in await far.agents()}
        print(
            f"\nminority detected {detection:.2f} s after the cut; majority answered all after {takeover:.2f} s; "
            f"paused copies stopped {stopped:.2f} s after the heal"
        )
        print(
            f"minority reads: {tally.reads_ok} ok ({tally.reads_ok_after_detection} after detection), "
            f"{tally.partition_errors} PartitionError, other errors {tally.other_errors}, stale {len(tally.stale)}"
        )
        print(f"acknowledged {tally.acked}, unknown {tally.unknown}, final {finals}, owners {owners}")
        print("events:", [(e.kind, e.current.status) for e in events])
        assert tally.partition_errors > 0
        assert tally.reads_ok_after_detection == 0
        assert tally.stale == [], tally.stale
        assert detection <= 3 * LEASE
        if tally.unknown == 0:
            assert finals == tally.acked
        else:  # an add whose reply was lost may have applied
            assert all(tally.acked[n] <= finals[n] <= tally.acked[n] + tally.unknown for n in names)
        assert via_minority == finals
        assert all(owners[f"Counter/{n}"] == "nA" for n in names)
        kinds = [(e.kind, e.current.status) for e in events]
        # nC may see nA lapse (peers_lapsed) before its own heartbeat fails (quorum_lost).
        assert kinds[0][0] == "start" and kinds[-1] == ("heal", "ok")
        assert ("start", "quorum_lost") in kinds or ("change", "quorum_lost") in kinds
