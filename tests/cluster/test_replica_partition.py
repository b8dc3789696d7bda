"""A read replica on the minority side of a real (proxied) partition follows its kind's
``partition_strategy`` as the primary does: ``pause_minority`` answers ``PartitionError``,
``continue_degraded`` serves its last known state flagged ``Na-Degraded: 1``.

Before, a replica did not look at its own node's side: a cut-off replica answered reads
as if nothing had happened (a plain ok reply, stale by the length of the cut) until its
node, seeing every member lapse (itself included), dropped it; then reads on that side went
unanswered (``CallTimeout``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from natsagents import ClusterSettings, DegradedReply, Hints, Mesh, PartitionError
from natsagents.testing import wait_for
from natsagents.testing.proxy import ProxiedCluster, partition
from tests.cluster.test_partition_reads import _lead_from_majority
from tests.cluster.test_partition_strategy import LEASE, _node
from tests.cluster.test_replicas import Board


class Shelf(Board):
    """Session kind, two read replicas, pauses on the minority side (the default)."""

    kind = "Shelf"


class Wall(Board):
    """Session kind, two read replicas, serves degraded on the minority side."""

    kind = "Wall"
    partition_strategy = "continue_degraded"


@pytest.fixture(scope="module")
def proxied() -> Iterator[ProxiedCluster]:
    cluster = ProxiedCluster(3, name="replicacut")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_a_cut_off_replica_pauses_or_serves_degraded_by_its_kinds_strategy(
    proxied: ProxiedCluster, mesh_prefix: str, tmp_path: Path
) -> None:
    urls = [s.url for s in proxied.servers]
    meshes: list[Mesh] = []
    try:
        for i, name in enumerate(("nA", "nB", "nC")):
            settings = ClusterSettings(
                node_id=name, lease=LEASE, rebalance=False, delivery=None, data_dir=tmp_path / name
            )
            mesh = await _node(urls[i], mesh_prefix, name, settings)
            await mesh.host(Shelf, Wall)
            meshes.append(mesh)
        far = await Mesh.connect(urls[0], prefix=mesh_prefix, name="far", default_timeout=10.0)
        # Until server 2 drops its blackholed routes (its route pings: several seconds), it
        # still counts the readers queue group's members on the other side, and about half
        # the requests on this side go into the cut: the caller's resends find nC's replica.
        near = await Mesh.connect(urls[2], prefix=mesh_prefix, name="near", default_timeout=10.0, resend_after=0.1)
        meshes += [far, near]
        node_a, node_c = meshes[0].cluster_node, meshes[2].cluster_node
        assert node_a is not None and node_c is not None and node_c.partition is not None
        for cls in (Shelf, Wall):
            await far.spawn(cls.kind, "x", hints=Hints(pin="nA"))
            assert await far.ref(cls, "x").call("add", by=3) == 3
        held = {"Shelf/x", "Wall/x"}
        await wait_for(lambda: held <= set(node_c.replicas.held()), timeout=10, what="replicas on nC")
        for bucket in (node_a.membership.bucket, node_a.directory.bucket, node_a.state.bucket):
            await _lead_from_majority(far.transport, bucket, proxied)

        with partition(proxied, {2}, clients=False):
            await wait_for(lambda: node_c.partition.state.minority, timeout=4 * LEASE, interval=0.01)
            # Its own lease lapsed and the others look lapsed from here: it keeps its
            # replicas (it used to drop them, and its side's reads went unanswered).
            assert held <= set(node_c.replicas.held())
            # The read goes to the read subject; on this side only nC's replica hears it.
            with pytest.raises(PartitionError) as paused:
                await near.ref(Shelf, "x").call("get", timeout=3 * LEASE + 1)
            with pytest.raises(DegradedReply) as degraded:
                await near.ref(Wall, "x").with_options(allow_degraded=False).call("get", timeout=3 * LEASE + 1)
            assert degraded.value.value == 3  # its last known state
            assert await near.ref(Wall, "x").call("get", timeout=3 * LEASE + 1) == 3  # allowed by default
        print(f"\npaused replica: {paused.value!r}; degraded replica: {degraded.value!r}")
        assert paused.value.remote
    finally:
        for mesh in reversed(meshes):
            await mesh.aclose()
