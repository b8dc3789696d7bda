"""Reads that decisions rest on, across a real (proxied) partition of one server.

A client connected to the cut-off server reads through that server: a direct get is
answered by its local replica, which misses every write the majority made since the cut
(and, right after the heal, until it caught up). Decisions that must be linearizable
(verifying a claim, taking an agent over, restoring state) read from the stream leader:
from the minority they fail (no leader reachable) and never return the old value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from natsagents.cluster.directory import AgentActiveElsewhere, Directory
from natsagents.cluster.membership import Membership
from natsagents.errors import CallTimeout, NatsAgentsError
from natsagents.testing import wait_for
from natsagents.testing.proxy import ProxiedCluster, partition
from natsagents.transport import Transport
from natsagents.transport.jetstream import api_request
from natsagents.transport.kv import Bucket, open_bucket
from natsagents.wire.ids import agent_key
from tests.conftest import Connect

MINORITY = 2


@pytest.fixture(scope="module")
def proxied() -> Iterator[ProxiedCluster]:
    cluster = ProxiedCluster(3, name="reads")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
async def _three_replicas_placeable(proxied: ProxiedCluster, connect: Connect) -> None:
    """Each test starts once the cluster places an R3 stream: a fresh cluster's meta leader
    may not have every peer's stats yet (or lost them in the previous test's cut) and refuse
    "no suitable peers for placement, peer offline" (seen in CI with three files at a time)."""
    transport = await connect(proxied.servers[0].url)
    probe = {"name": "R3PROBE", "subjects": ["r3probe.>"], "num_replicas": 3, "storage": "memory"}

    async def placed() -> bool:
        try:
            await api_request(transport, "$JS.API.STREAM.CREATE.R3PROBE", probe, 2.0)
        except NatsAgentsError as exc:
            if "peer offline" in str(exc) or isinstance(exc, CallTimeout):
                return False
            if "already in use" not in str(exc):
                raise
        return True

    await wait_for(placed, timeout=30, interval=0.5, what="an R3 stream placeable")
    await api_request(transport, "$JS.API.STREAM.DELETE.R3PROBE", None, 5.0)


async def _lead_from_majority(transport: Transport, bucket: Bucket, proxied: ProxiedCluster) -> None:
    """Move the stream's leader off the server to be cut (an isolated Raft leader keeps
    answering as leader until it notices it lost its quorum: see docs/architecture.md)."""
    minority = proxied.servers[MINORITY].name

    async def leader_elsewhere() -> bool:
        info = await api_request(transport, f"$JS.API.STREAM.INFO.{bucket.stream}", None, 2.0)
        leader = (info.get("cluster") or {}).get("leader")
        if leader == minority:
            try:
                await api_request(transport, f"$JS.API.STREAM.LEADER.STEPDOWN.{bucket.stream}", None, 2.0)
            except NatsAgentsError:
                pass
            return False
        return bool(leader)

    await wait_for(leader_elsewhere, timeout=20, interval=0.2, what="a stream leader on the majority")


async def test_leader_reads_never_go_back_in_time_through_a_cut_off_server(
    proxied: ProxiedCluster, connect: Connect, mesh_prefix: str
) -> None:
    major = await connect(proxied.servers[0].url)
    minor = await connect(proxied.servers[MINORITY].url)
    bucket = await open_bucket(major, mesh_prefix, replicas=3)
    cut_bucket = await open_bucket(minor, mesh_prefix)
    await bucket.put("k", b"1")
    await wait_for(lambda: _value(cut_bucket.get("k")), what="the write on every replica")
    await _lead_from_majority(major, bucket, proxied)
    with partition(proxied, {MINORITY}, clients=False):
        rev2 = await bucket.put("k", b"2", timeout=15)
        try:
            stale = await cut_bucket.get("k")
        except CallTimeout:  # the cut-off replica may also leave a direct get unanswered (seen once)
            print("direct get through the cut-off server: no answer")
        else:
            assert stale is not None
            print(f"direct get through the cut-off server: {stale.value!r} (revision {stale.revision} < {rev2})")
            assert stale.value == b"1"  # the fast path may be stale: the test sees the stale replica
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(CallTimeout):
            await cut_bucket.get("k", leader=True, timeout=1.0)
        print(f"leader get through the cut-off server: CallTimeout after {loop.time() - began:.2f} s")
    fresh = await bucket.get("k", leader=True)
    assert fresh is not None and (fresh.value, fresh.revision) == (b"2", rev2)
    # After the heal the leader read through the rejoined server is current at once.
    healed = await cut_bucket.get("k", leader=True, timeout=10)
    assert healed is not None and healed.revision == rev2


async def test_a_claim_taken_over_on_the_majority_does_not_verify_on_the_minority(
    proxied: ProxiedCluster, connect: Connect, mesh_prefix: str
) -> None:
    """The old owner behind the cut must not conclude it still owns the agent."""
    major = await connect(proxied.servers[0].url)
    minor = await connect(proxied.servers[MINORITY].url)
    there, here = Directory(major, mesh_prefix), Directory(minor, mesh_prefix)
    await there.start(watch=False)
    await here.start(watch=False)
    old = await here.claim("Counter", "c1", "nC", is_live=lambda node: True)
    await wait_for(lambda: _verified(here, old), what="the claim on every replica")
    await _lead_from_majority(major, there.bucket, proxied)
    with partition(proxied, {MINORITY}, clients=False):
        new = await there.claim("Counter", "c1", "nA", is_live=lambda node: node != "nC", attempts=1)
        assert new.taken_over and new.record.epoch == old.record.epoch + 1
        # The fast path (a cache-like read) may answer from the minority's replica, stale,
        # or not at all (a replica cut off from its leader may stop answering direct gets,
        # and a request the server routes to a replica across the cut is lost).
        try:
            stale = await asyncio.wait_for(here.get("Counter", "c1"), 2.0)
            print(f"direct get on the minority: owner {stale.record.node if stale else None}")
        except (NatsAgentsError, TimeoutError) as exc:
            print(f"direct get on the minority: {type(exc).__name__}")
        with pytest.raises(NatsAgentsError):
            await here.bucket.get(agent_key("Counter", "c1"), leader=True, timeout=1.0)
        verdict: bool | str
        try:
            verdict = await asyncio.wait_for(here.verify(old), 3.0)
        except (NatsAgentsError, TimeoutError) as exc:
            verdict = type(exc).__name__
        print(f"verify of the old claim on the minority: {verdict}")
        assert verdict is not True
    await wait_for(lambda: _not_verified(here, old), timeout=10, what="the heal")
    await here.stop()
    await there.stop()


async def _value(read: object) -> bool:
    entry = await read  # type: ignore[misc]
    return entry is not None


async def _verified(directory: Directory, claim: object) -> bool:
    return await directory.verify(claim)  # type: ignore[arg-type]


async def _not_verified(directory: Directory, claim: object) -> bool:
    try:
        return not await directory.verify(claim)  # type: ignore[arg-type]
    except NatsAgentsError:
        return False


async def test_a_cut_off_node_takes_nothing_from_a_live_owner_when_the_cut_heals(
    proxied: ProxiedCluster, connect: Connect, mesh_prefix: str
) -> None:
    """Bug: at the heal the cut-off node judged the owner lapsed from its own stale view
    and its compare-and-set on the directory record (a revision a live owner never
    changes) succeeded as soon as routes returned. A takeover needs fresh evidence:
    the owner's membership record at the stream leader is the one the view saw lapse."""
    major = await connect(proxied.servers[0].url)
    minor = await connect(proxied.servers[MINORITY].url)
    lease = 1.0
    a = Membership(major, mesh_prefix, "nA", lease=lease)
    c = Membership(minor, mesh_prefix, "nC", lease=lease)
    there, here = Directory(major, mesh_prefix), Directory(minor, mesh_prefix)
    await a.start()
    await c.start()
    await there.start(watch=False)
    await here.start(watch=False)
    try:
        await wait_for(lambda: c.is_live("nA") and a.is_live("nC"), timeout=5, what="both members seen")
        owned = await there.claim("Counter", "live", "nA", is_live=a.is_live)
        await _lead_from_majority(major, a.bucket, proxied)
        await _lead_from_majority(major, there.bucket, proxied)
        with partition(proxied, {MINORITY}, clients=False):
            await wait_for(lambda: not c.is_live("nA"), timeout=5 * lease, what="nA lapsed in nC's stale view")
            assert not await c.confirm_lapsed("nA", timeout=0.5)
        # Right after the heal nC's view of nA is old: it must not conclude nA lapsed.
        loop = asyncio.get_running_loop()
        end, checks, stale_views = loop.time() + 3 * lease, 0, 0
        while loop.time() < end:
            stale_views += not c.is_live("nA")
            assert not await c.confirm_lapsed("nA")
            with pytest.raises(AgentActiveElsewhere):
                await here.claim("Counter", "live", "nC", is_live=c.is_live, confirm_lapsed=c.confirm_lapsed)
            checks += 1
            await asyncio.sleep(0.05)  # pacing the probes, not a synchronisation
        print(f"after the heal: {checks} claims refused, {stale_views} of them while nC's view had nA lapsed")
        current = await there.get("Counter", "live", leader=True)
        assert current is not None and (current.record.node, current.revision) == ("nA", owned.revision)
        # A real lapse is still confirmed: nA crashes (no goodbye), nC takes over.
        await a.stop(leave=False)
        await wait_for(lambda: c.confirm_lapsed("nA"), timeout=5 * lease, interval=0.1, what="nA's lapse confirmed")
        taken = await here.claim("Counter", "live", "nC", is_live=c.is_live, confirm_lapsed=c.confirm_lapsed)
        assert taken.taken_over and taken.record.epoch == owned.record.epoch + 1
    finally:
        await a.stop()
        await c.stop()
        await there.stop()
        await here.stop()
