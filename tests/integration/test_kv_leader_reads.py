"""A read "from the leader" of a bucket with one replica is a direct get: its only server
stores every write it acknowledged, so the answer is as fresh as the leader's, and a direct
get costs less than ``STREAM.MSG.GET`` (JSON both ways, base64 data). Activations read the
directory and the state this way: spawns on one server went from about 870/s to about
1,150/s (``bench/cluster.py --only activation``). Buckets of three replicas keep the
leader's ``STREAM.MSG.GET`` (``tests/cluster/test_partition_reads.py``)."""

from __future__ import annotations

from natsagents.testing import wait_for
from natsagents.transport import Inbound
from natsagents.transport.kv import open_bucket
from tests.conftest import Connect


async def test_a_leader_read_of_a_one_replica_bucket_is_a_direct_get(
    nats_url: str, connect: Connect, mesh_prefix: str
) -> None:
    transport = await connect(nats_url)
    bucket = await open_bucket(transport, f"{mesh_prefix}_leaderreads", history=1, replicas=1)
    assert bucket.replicas == 1
    revision = await bucket.put("k", b"v1")
    # The spy is a Transport: its flush() sends the SUBs before the PING. A plain nats-py
    # client's flush may not (docs: nats-facts), and the spy then missed the first read.
    spy = await connect(nats_url)
    seen: list[str] = []

    def note(msg: Inbound) -> None:
        seen.append(msg.subject)

    await spy.subscribe("$JS.API.DIRECT.GET.>", note)
    await spy.subscribe("$JS.API.STREAM.MSG.GET.>", note)
    await spy.flush()
    entry = await bucket.get("k", leader=True)
    assert entry is not None and entry.value == b"v1" and entry.revision == revision
    assert await bucket.get("absent", leader=True) is None
    await wait_for(lambda: len(seen) >= 2, timeout=5, what="the spy saw both reads")
    await spy.flush()
    assert [s.split(".")[2] for s in seen] == ["DIRECT", "DIRECT"], seen
