"""Connecting: URLs, auth methods, unreachable servers, the embedded server."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import nkeys
import pytest

import natsagents as na
from natsagents import Auth, Mesh
from natsagents.server import NatsServer
from tests.agents import Counter


def _nkey_pair() -> tuple[str, str]:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    return seed, nkeys.from_seed(seed.encode()).public_key.decode()


NKEY_SEED, NKEY_PUBLIC = _nkey_pair()


@pytest.fixture(scope="module")
def secured() -> Iterator[NatsServer]:
    config = f"""
authorization {{
  users = [
    {{ user: alice, password: s3cret }}
    {{ nkey: {NKEY_PUBLIC} }}
  ]
}}
"""
    server = NatsServer(config_extra=config).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def token_server() -> Iterator[NatsServer]:
    server = NatsServer(config_extra="authorization { token: t0ken }").start()
    try:
        yield server
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _roundtrip(mesh: Mesh) -> None:
    await mesh.host(Counter)
    assert await mesh.ref("Counter/auth").call("add", by=2) == 2


async def test_user_password(secured: NatsServer) -> None:
    async with Mesh.connect(secured.url, auth=Auth(user="alice", password="s3cret")) as mesh:
        await _roundtrip(mesh)


async def test_nkey_seed(secured: NatsServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with Mesh.connect(secured.url, auth=Auth(nkey_seed=NKEY_SEED)) as mesh:
        await _roundtrip(mesh)
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(NKEY_SEED)
    async with Mesh.connect(secured.url, auth=Auth(nkey_seed=str(seed_file))) as mesh:
        await _roundtrip(mesh)


async def test_token(token_server: NatsServer) -> None:
    async with Mesh.connect(token_server.url, auth=Auth(token="t0ken")) as mesh:
        await _roundtrip(mesh)


@pytest.mark.parametrize(
    "auth", [None, Auth(user="alice", password="wrong"), Auth(token="nope"), Auth(nkey_seed=_nkey_pair()[0])]
)
async def test_refused_credentials_fail_fast(secured: NatsServer, auth: Auth | None) -> None:
    started = time.perf_counter()
    with pytest.raises(na.ConnectError) as info:
        await Mesh.connect(secured.url, auth=auth, connect_timeout=5)
    assert time.perf_counter() - started < 3
    assert isinstance(info.value, ConnectionError)
    assert "refused the credentials" in str(info.value) or "Authorization" in str(info.value)


async def test_unreachable_server() -> None:
    url = f"nats://127.0.0.1:{_free_port()}"
    started = time.perf_counter()
    with pytest.raises(na.ConnectError) as info:
        await Mesh.connect(url, connect_timeout=0.5)
    assert time.perf_counter() - started < 2.0
    assert url in str(info.value)


async def test_fail_fast_gives_up_at_once_when_every_server_refuses() -> None:
    urls = [f"nats://127.0.0.1:{_free_port()}" for _ in range(2)]
    started = time.perf_counter()
    with pytest.raises(na.ConnectError) as info:
        await Mesh.connect(urls, connect_timeout=30, fail_fast=True)
    assert time.perf_counter() - started < 3.0
    assert info.value.reason == "refused"
    assert (
        str(info.value)
        == f"could not connect to NATS at {', '.join(urls)}: the connection was refused: no server listens there"
    )
    with pytest.raises(na.ConnectError) as info:  # an unknown host cannot heal by waiting either
        await Mesh.connect("nats://no-such-host.invalid:4222", connect_timeout=30, fail_fast=True)
    assert info.value.reason == "unknown_host" and "unknown host" in str(info.value)
    assert time.perf_counter() - started < 6.0


def test_auth_validation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(na.ConfigurationError):
        Auth()
    with pytest.raises(na.ConfigurationError):
        Auth(user="a")
    with pytest.raises(na.ConfigurationError):
        Auth(user="a", password="b", token="c")
    with pytest.raises(na.ConfigurationError):
        Auth(creds_file=tmp_path / "missing.creds")
    assert "s3cret" not in repr(Auth(user="alice", password="s3cret"))


async def test_servers_from_list_and_env(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"nats://127.0.0.1:{_free_port()}"
    async with Mesh.connect([dead, nats_url], connect_timeout=5) as mesh:
        assert mesh.server_url is not None and mesh.server_url.endswith(nats_url.rsplit(":", 1)[1])
    monkeypatch.setenv("NATS_URL", nats_url)
    async with Mesh.connect() as mesh:
        assert mesh.server_url is not None


async def test_embedded_mesh_starts_and_stops_its_server() -> None:
    async with Mesh.embedded(name="embedded-test") as mesh:
        server = mesh.embedded_server
        assert server is not None and server.running
        await _roundtrip(mesh)
    assert not server.running
    with pytest.raises(na.ConfigurationError):
        Mesh.embedded(servers="nats://x:1")


async def test_agents_keep_working_after_the_server_restarts() -> None:
    """Direct subscriptions and the reply mux are re-established by nats-py's reconnect."""
    import anyio

    from natsagents.testing import wait_for

    server = NatsServer().start()
    try:
        async with Mesh.connect(server.url, name="host") as host, Mesh.connect(server.url, name="caller") as caller:
            await host.host(Counter)
            ref = caller.ref("Counter/survivor")
            assert await ref.call("add") == 1
            await anyio.to_thread.run_sync(server.kill)
            await wait_for(lambda: not caller.transport.is_connected, timeout=10)
            await anyio.to_thread.run_sync(server.restart)
            await wait_for(lambda: caller.transport.is_connected and host.transport.is_connected, timeout=15)
            # Same agent instance, same subscription: in-memory state survived the outage.
            assert await ref.call("add", timeout=10) == 2
    finally:
        server.stop()


async def test_close_is_bounded_when_the_server_dies_while_closing() -> None:
    server = NatsServer().start()
    try:
        mesh = await Mesh.connect(server.url, name="doomed", drain_timeout=1.0)
        await mesh.host(Counter)
        await mesh.ref("Counter/x").call("add")
        server.pause()  # the server stops answering: drain cannot complete
        started = time.perf_counter()
        await mesh.aclose()
        assert time.perf_counter() - started < 4
        assert mesh.state is na.MeshState.CLOSED
    finally:
        server.resume()
        server.stop()
