"""JetStream KV (transport/kv/) against real servers: one node and a 3-node cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest

from natsagents.errors import CallTimeout, ConfigurationError, MeshClosed, PayloadTooLarge, TransportError
from natsagents.server import NatsCluster, NatsServer
from natsagents.testing import wait_for
from natsagents.transport import Transport
from natsagents.transport.jetstream import StreamConfig, api_request, ensure_stream
from natsagents.transport.kv import (
    Bucket,
    CasConflict,
    Entry,
    KeyNotFound,
    KvError,
    Watch,
    open_bucket,
)
from tests.conftest import Connect


@pytest.fixture
async def bucket(connect: Connect, nats_url: str, mesh_prefix: str) -> Bucket:
    return await open_bucket(await connect(nats_url), mesh_prefix, history=5, limit_marker_ttl=1)


async def _next(watch: Watch, timeout: float = 5.0) -> Entry | None:
    async with asyncio.timeout(timeout):
        return await anext(watch)


async def _consumers(transport: Transport, bucket: Bucket) -> int:
    info = await api_request(transport, f"$JS.API.STREAM.INFO.{bucket.stream}", None, 2.0)
    return int(info["state"]["consumer_count"])


# -- single node: values and CAS ---------------------------------------------------------


async def test_get_create_update_put(bucket: Bucket) -> None:
    assert await bucket.get("a") is None
    rev1 = await bucket.create("a", b"one")
    entry = await bucket.get("a")
    assert entry is not None
    assert (entry.key, entry.value, entry.revision, entry.operation) == ("a", b"one", rev1, "put")
    assert entry.created == pytest.approx(time.time(), abs=5)
    rev2 = await bucket.update("a", b"two", revision=rev1)
    assert rev2 > rev1
    rev3 = await bucket.put("a", b"three")
    assert rev3 > rev2
    latest = await bucket.get("a")
    assert latest is not None and (latest.value, latest.revision) == (b"three", rev3)
    assert await bucket.put("dir/x=1_y-z.w", b"") > rev3  # every key character, empty value


async def test_cas_conflicts_are_typed(bucket: Bucket) -> None:
    rev1 = await bucket.create("k", b"1")
    with pytest.raises(CasConflict) as created:
        await bucket.create("k", b"again")
    assert (created.value.key, created.value.expected_revision, created.value.current_revision) == ("k", 0, rev1)
    assert isinstance(created.value, KvError) and isinstance(created.value, TransportError)
    assert not isinstance(created.value, KeyNotFound)

    rev2 = await bucket.update("k", b"2", revision=rev1)
    with pytest.raises(CasConflict) as stale:
        await bucket.update("k", b"3", revision=rev1)
    assert not isinstance(stale.value, KeyNotFound)
    assert (stale.value.expected_revision, stale.value.current_revision) == (rev1, rev2)

    with pytest.raises(CasConflict):
        await bucket.delete("k", revision=rev1)
    await bucket.delete("k", revision=rev2)
    assert await bucket.get("k") is None
    with pytest.raises(KeyNotFound):  # deleted: a KeyNotFound, which is a CasConflict
        await bucket.update("k", b"4", revision=rev2)
    with pytest.raises(KeyNotFound):
        await bucket.update("never-written", b"x", revision=1)
    with pytest.raises(ConfigurationError):
        await bucket.update("k", b"x", revision=0)


async def test_create_over_deleted_and_purged_keys(bucket: Bucket) -> None:
    await bucket.create("d", b"1")
    await bucket.delete("d")
    assert await bucket.get("d") is None
    rev = await bucket.create("d", b"2")
    again = await bucket.get("d")
    assert again is not None and (again.value, again.revision) == (b"2", rev)

    await bucket.put("p", b"1")
    await bucket.put("p", b"2")
    await bucket.purge("p")
    assert await bucket.get("p") is None
    await bucket.create("p", b"3")
    async with bucket.watch("p", include_history=True) as watch:  # the purge dropped the history
        seen = [await _next(watch), await _next(watch), await _next(watch)]
    assert [(e.operation, e.value) if e else None for e in seen] == [("purge", b""), ("put", b"3"), None]

    await bucket.delete("never")  # deleting an absent key is allowed
    assert await bucket.get("never") is None


async def test_ttl_create_expires_and_the_marker_reads_as_absent(
    connect: Connect, nats_url: str, mesh_prefix: str
) -> None:
    transport = await connect(nats_url)
    bucket = await open_bucket(transport, mesh_prefix, limit_marker_ttl=30)  # the marker outlives the test
    async with bucket.watch("ttl") as watch:
        assert await _next(watch) is None
        rev = await bucket.create("ttl", b"short", ttl=1)
        assert (await _next(watch)) == Entry("ttl", b"short", rev, pytest.approx(time.time(), abs=5))  # type: ignore[arg-type]
        await wait_for(lambda: _is_absent(bucket, "ttl"), timeout=5, interval=0.05, what="ttl key expired")
        expired = await _next(watch)  # limit_marker_ttl: the server placed a marker
        assert expired is not None and expired.operation == "purge" and expired.revision > rev
    # The marker is the key's last message (nats-py's get() returns it with value=None and
    # its create() fails); here get() says absent and create() writes over it.
    raw = await transport.request(f"$JS.API.DIRECT.GET.{bucket.stream}.{bucket.prefix}ttl", b"", timeout=2)
    assert raw.headers is not None and raw.headers["Nats-Marker-Reason"] == "MaxAge"
    assert int(raw.headers["Nats-Sequence"]) == expired.revision
    assert await bucket.get("ttl") is None
    rev2 = await bucket.create("ttl", b"back")
    assert (await bucket.get("ttl")).value == b"back"  # type: ignore[union-attr]
    assert rev2 > expired.revision
    with pytest.raises(ConfigurationError):
        await bucket.create("sub-second", b"x", ttl=0.5)


async def _is_absent(bucket: Bucket, key: str) -> bool:
    return await bucket.get(key) is None


async def test_ttl_without_markers(connect: Connect, nats_url: str, mesh_prefix: str) -> None:
    plain = await open_bucket(await connect(nats_url), mesh_prefix + "-plain")
    await plain.create("t", b"x", ttl=1.5)
    await wait_for(lambda: _is_absent(plain, "t"), timeout=5, interval=0.05, what="ttl key expired")
    await plain.create("t", b"y")


@pytest.mark.parametrize("key", ["", ".a", "a.", "a..b", "a b", "a*", "a>", "ü", 7])
async def test_invalid_keys_are_configuration_errors(bucket: Bucket, key: object) -> None:
    with pytest.raises(ConfigurationError):
        await bucket.put(key, b"x")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        await bucket.get(key)  # type: ignore[arg-type]


async def test_invalid_configuration(connect: Connect, nats_url: str, bucket: Bucket) -> None:
    transport = await connect(nats_url)
    for kwargs in ({"history": 0}, {"history": 65}, {"ttl": 0.5}, {"limit_marker_ttl": 0}, {"replicas": 0}):
        with pytest.raises(ConfigurationError):
            await open_bucket(transport, "ok", **kwargs)  # type: ignore[arg-type]
    for name in ("", "a.b", "a b", "a*"):
        with pytest.raises(ConfigurationError):
            await open_bucket(transport, name)
    for pattern in ("", "a.>.b", "a*", "a..b"):
        with pytest.raises(ConfigurationError):
            bucket.watch(pattern)
    with pytest.raises(ConfigurationError):
        await bucket.put("k", "text")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        await bucket.get("k", timeout=0)


async def test_oversized_values_raise_and_the_connection_survives(
    connect: Connect, nats_url: str, mesh_prefix: str
) -> None:
    transport = await connect(nats_url)
    bucket = await open_bucket(transport, mesh_prefix)
    limit = transport.max_payload
    with pytest.raises(PayloadTooLarge):
        await bucket.put("big", b"x" * (limit + 1))
    with pytest.raises(PayloadTooLarge):  # the value fits, its headers push it over
        await bucket.create("big", b"x" * (limit - 10))
    assert transport.is_connected
    await bucket.put("small", b"ok")
    assert (await bucket.get("small")).value == b"ok"  # type: ignore[union-attr]

    capped = await open_bucket(transport, mesh_prefix + "-capped", max_value_size=100)
    assert capped.max_value_size == 100
    with pytest.raises(PayloadTooLarge):
        await capped.put("k", b"x" * 101)
    await capped.create("k", b"x" * 100, ttl=60)  # headers do not count against the value limit
    assert (await open_bucket(transport, capped.name)).max_value_size == 100


async def test_open_binds_to_an_existing_bucket(connect: Connect, nats_url: str, bucket: Bucket) -> None:
    again = await open_bucket(await connect(nats_url), bucket.name, history=1)  # its own config wins
    assert (again.history, again.replicas, again.limit_marker_ttl) == (5, 1, 1.0)
    await bucket.put("shared", b"1")
    assert (await again.get("shared")).value == b"1"  # type: ignore[union-attr]


async def test_replicas_default_to_one_on_a_single_server(bucket: Bucket) -> None:
    assert bucket.replicas == 1


async def test_keys(bucket: Bucket) -> None:
    assert await bucket.keys() == []
    await bucket.put("a.1", b"x")
    await bucket.put("a.2", b"x")
    await bucket.put("b", b"x")
    await bucket.put("gone", b"x")
    await bucket.delete("gone")
    assert await bucket.keys() == ["a.1", "a.2", "b"]
    assert await bucket.keys("a.*") == ["a.1", "a.2"]


# -- watches -----------------------------------------------------------------------------


async def test_watch_initial_values_marker_live_updates_and_deletes(bucket: Bucket, connect: Connect) -> None:
    await bucket.put("a", b"1")
    await bucket.put("a", b"2")
    await bucket.put("b", b"1")
    await bucket.put("c", b"1")
    await bucket.delete("c")  # a tombstone: not part of the current values
    async with bucket.watch() as watch:
        initial = [await _next(watch), await _next(watch), await _next(watch)]
        assert [(e.key, e.value) if e else None for e in initial] == [("a", b"2"), ("b", b"1"), None]
        rev = await bucket.put("d", b"new")
        assert await _next(watch) == Entry("d", b"new", rev, pytest.approx(time.time(), abs=5))  # type: ignore[arg-type]
        await bucket.delete("a")
        await bucket.purge("b")
        deleted, purged = await _next(watch), await _next(watch)
        assert (deleted.key, deleted.operation, deleted.value) == ("a", "delete", b"")  # type: ignore[union-attr]
        assert (purged.key, purged.operation) == ("b", "purge")  # type: ignore[union-attr]
        assert watch.restarts == 0 and watch.last_revision == purged.revision  # type: ignore[union-attr]

    async with bucket.watch("x.*") as filtered:  # nothing matches yet: the marker comes first
        assert await _next(filtered) is None
        await bucket.put("y", b"other")
        await bucket.put("x.1", b"mine")
        assert (await _next(filtered)).key == "x.1"  # type: ignore[union-attr]

    async with bucket.watch("a", include_history=True) as history:
        seen = [await _next(history) for _ in range(4)]
        assert [(e.operation, e.value) if e else None for e in seen] == [
            ("put", b"1"),
            ("put", b"2"),
            ("delete", b""),
            None,
        ]


async def test_cancelling_a_watch_deletes_its_consumer(bucket: Bucket, connect: Connect, nats_url: str) -> None:
    transport = await connect(nats_url)
    started = asyncio.Event()

    async def consume() -> None:
        async for entry in bucket.watch():
            if entry is None:
                started.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(5):
        await started.wait()
    assert await _consumers(transport, bucket) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: _no_consumers(transport, bucket), timeout=5, interval=0.02, what="consumer deleted")

    watch = bucket.watch()
    assert await _next(watch) is None
    await watch.aclose()
    await watch.aclose()  # idempotent
    with pytest.raises(StopAsyncIteration):
        await anext(watch)
    await wait_for(lambda: _no_consumers(transport, bucket), timeout=5, interval=0.02, what="consumer deleted")


async def _no_consumers(transport: Transport, bucket: Bucket) -> bool:
    return await _consumers(transport, bucket) == 0


async def test_watch_survives_a_server_restart_and_reads_time_out_while_down(
    connect: Connect, mesh_prefix: str
) -> None:
    with NatsServer() as server:
        transport = await connect(server.url)
        bucket = await open_bucket(transport, mesh_prefix)
        for i in range(3):
            await bucket.put(f"k{i}", b"before")
        async with bucket.watch(heartbeat=0.5) as watch:
            before = [await _next(watch) for _ in range(4)]
            assert before[-1] is None
            await bucket.put("k0", b"live")
            assert (await _next(watch)).value == b"live"  # type: ignore[union-attr]

            server.pause()
            try:
                with pytest.raises(CallTimeout):
                    await bucket.get("k0", timeout=0.3)
                with pytest.raises(CallTimeout):
                    await bucket.put("k0", b"unknown outcome", timeout=0.3)
            finally:
                server.resume()

            await asyncio.to_thread(server.restart)
            started = time.monotonic()
            rev = await bucket.put("k1", b"after", timeout=10)  # retried until JetStream is back
            entry = await _next(watch, timeout=10)
            resumed = time.monotonic() - started
            # whatever landed while paused comes first (at most once), then the new write
            if entry is not None and entry.value == b"unknown outcome":
                entry = await _next(watch, timeout=10)
            assert entry == Entry("k1", b"after", rev, entry.created)  # type: ignore[union-attr]
            assert watch.restarts >= 1
            assert resumed < 8, f"watch resumed {resumed:.1f} s after the restart"
            await bucket.delete("k2")
            deleted = await _next(watch)
            assert (deleted.key, deleted.operation) == ("k2", "delete")  # type: ignore[union-attr]
        await transport.close()


async def _across_a_pause(server: NatsServer, transport: Transport, write: Awaitable[int]) -> int:
    """Run ``write`` while the server is paused until a second attempt has been sent."""
    sent = transport._nc.stats["out_msgs"]
    server.pause()
    try:
        task = asyncio.ensure_future(write)
        # the first attempt times out (2 s) and a second is sent; the paused server holds both
        await wait_for(lambda: transport._nc.stats["out_msgs"] >= sent + 2, timeout=5, interval=0.02)
    finally:
        server.resume()
    return await task


async def test_timed_out_write_attempts_are_retried_without_duplicates(connect: Connect, mesh_prefix: str) -> None:
    with NatsServer() as server:
        transport = await connect(server.url)
        bucket = await open_bucket(transport, mesh_prefix, history=10)
        rev0 = await bucket.create("k", b"0")
        # the retry conflicts with the first attempt, recognised by its Nats-Msg-Id
        rev1 = await _across_a_pause(server, transport, bucket.update("k", b"cas", revision=rev0, timeout=8))
        # the retry of a plain write is deduplicated by the server
        rev2 = await _across_a_pause(server, transport, bucket.put("k", b"plain", timeout=8))
        async with bucket.watch("k", include_history=True) as watch:
            history = [await _next(watch) for _ in range(4)]
        assert [(e.value, e.revision) if e else None for e in history] == [
            (b"0", rev0),
            (b"cas", rev1),
            (b"plain", rev2),
            None,
        ]


async def test_a_watch_ends_when_the_connection_closes(connect: Connect, nats_url: str, mesh_prefix: str) -> None:
    transport = await connect(nats_url)
    bucket = await open_bucket(transport, mesh_prefix)
    watch = bucket.watch(heartbeat=0.1)
    assert await _next(watch) is None
    await transport.close()
    with pytest.raises(MeshClosed):
        await _next(watch, timeout=2)
    with pytest.raises(StopAsyncIteration):
        await anext(watch)
    with pytest.raises(MeshClosed):
        await bucket.get("k")


# -- a 3-node cluster --------------------------------------------------------------------


async def test_replicas_default_to_three_on_a_cluster(
    nats_cluster: NatsCluster, connect: Connect, mesh_prefix: str
) -> None:
    transport = await connect(*nats_cluster.urls)
    bucket = await open_bucket(transport, mesh_prefix)
    assert bucket.replicas == 3
    info = await api_request(transport, f"$JS.API.STREAM.INFO.{bucket.stream}", None, 5.0)
    assert len(info["cluster"]["replicas"]) == 2 and info["config"]["allow_direct"]
    one = await open_bucket(transport, mesh_prefix + "-r1", replicas=1)
    assert one.replicas == 1


async def test_r3_writes_survive_killing_a_follower(
    nats_cluster: NatsCluster, connect: Connect, mesh_prefix: str
) -> None:
    transport = await connect(*nats_cluster.urls)
    bucket = await open_bucket(transport, mesh_prefix, replicas=3, history=32)  # the watch sees every revision
    info = await api_request(transport, f"$JS.API.STREAM.INFO.{bucket.stream}", None, 5.0)
    leader = info["cluster"]["leader"]
    rev = await bucket.create("lease", b"0")
    async with bucket.watch("lease") as watch:
        assert (await _next(watch)).value == b"0"  # type: ignore[union-attr]
        assert await _next(watch) is None
        # Kill the node that holds the watch's consumer when it is a follower (the watch
        # must then notice the missing heartbeats), else any follower.
        consumer = await api_request(transport, f"$JS.API.CONSUMER.INFO.{bucket.stream}.{watch._consumer}", None, 5)
        names = [s.name for s in nats_cluster.servers]
        victim = consumer["cluster"]["leader"]
        if victim == leader:
            victim = next(name for name in names if name != leader)
        follower = names.index(victim)
        nats_cluster.kill(follower)
        try:
            for i in range(1, 21):
                rev = await bucket.update("lease", str(i).encode(), revision=rev, timeout=10)
            entry = await bucket.get("lease")
            assert entry is not None and entry.value == b"20"
            values = [(await _next(watch, timeout=10)).value for _ in range(20)]  # type: ignore[union-attr]
            assert values == [str(i).encode() for i in range(1, 21)]
        finally:
            await asyncio.to_thread(nats_cluster.restart, follower)
    assert (await bucket.get("lease")).value == b"20"  # type: ignore[union-attr]


async def test_cluster_reads_retry_until_the_timeout(
    nats_cluster: NatsCluster, connect: Connect, mesh_prefix: str
) -> None:
    missing = await open_bucket(await connect(*nats_cluster.urls), mesh_prefix + "-gone")
    await api_request(missing._t, f"$JS.API.STREAM.DELETE.{missing.stream}", None, 5.0)
    started = time.monotonic()
    with pytest.raises(CallTimeout):  # no stream answers: retried, then a timeout
        await missing.get("k", timeout=0.5)
    assert 0.4 < time.monotonic() - started < 2


async def test_replicas_default_to_three_when_servers_do_not_advertise(connect: Connect, mesh_prefix: str) -> None:
    """With ``cluster { no_advertise: true }`` a client is told no other server's URL
    (``connect_urls`` is empty): buckets and streams must still be R3 on 3 servers."""
    with NatsCluster(3, name=f"noadv{mesh_prefix[-6:]}", no_advertise=True) as cluster:
        transport = await connect(cluster.urls[0])
        assert not (transport._nc._server_info or {}).get("connect_urls")
        bucket = await open_bucket(transport, mesh_prefix)
        stream = await ensure_stream(transport, StreamConfig(name=f"S{mesh_prefix}", subjects=[f"{mesh_prefix}.s.>"]))
        print(f"no_advertise: bucket R{bucket.replicas}, stream R{stream['num_replicas']}")
        assert bucket.replicas == 3 and stream["num_replicas"] == 3
        await transport.close()


async def test_replicas_fall_back_to_one_on_a_cluster_of_two(connect: Connect, mesh_prefix: str) -> None:
    with NatsCluster(2, name=f"two{mesh_prefix[-6:]}", no_advertise=True) as cluster:
        transport = await connect(cluster.urls[0])
        bucket = await open_bucket(transport, mesh_prefix)
        assert bucket.replicas == 1
        await transport.close()
