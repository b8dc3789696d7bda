"""The fault-injecting TCP proxy (``natsagents.testing.proxy``): each mode, heal, and
partitions of a real 3-server cluster whose routes pass through proxies."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.msg import Msg

from natsagents.errors import ConfigurationError
from natsagents.server import NatsServer
from natsagents.testing import wait_for
from natsagents.testing.proxy import ProxiedCluster, Proxy, one_way, partition


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    """A TCP echo server on a free loopback port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            await _close(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _read(reader: asyncio.StreamReader, n: int, timeout: float) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), timeout)


async def _nothing(reader: asyncio.StreamReader, within: float = 0.3) -> bool:
    """Whether nothing arrives within ``within`` seconds."""
    try:
        await asyncio.wait_for(reader.read(1), within)
    except TimeoutError:
        return True
    return False


async def test_forwards_and_blackhole_holds_bytes_until_heal(echo: int) -> None:
    with Proxy(echo) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await _read(reader, 4, 2) == b"ping"
        assert proxy.connections == 1 and proxy.state == "pass"

        proxy.blackhole()
        writer.write(b"held")
        await writer.drain()
        assert await _nothing(reader)
        assert proxy.connections == 1  # the sockets stay open
        proxy.heal()
        assert await _read(reader, 4, 2) == b"held"  # delivered, in order, on heal
        await _close(writer)


async def test_block_one_direction(echo: int) -> None:
    with Proxy(echo) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.block("down")  # the echo comes back through "down"
        writer.write(b"abc")
        await writer.drain()
        assert await _nothing(reader)
        forwarded = proxy.forwarded
        assert forwarded >= 3  # "up" still flowed: the echo server got the bytes
        proxy.heal()
        assert await _read(reader, 3, 2) == b"abc"
        with pytest.raises(ConfigurationError):
            proxy.block("both")  # type: ignore[arg-type]
        await _close(writer)


async def test_drop_forgets_bytes_and_delay_delays_them(echo: int) -> None:
    with Proxy(echo) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.drop("up")
        writer.write(b"lost")
        await writer.drain()
        assert await _nothing(reader)
        assert proxy.dropped == 4
        proxy.heal()
        assert await _nothing(reader, 0.1)  # gone for good
        proxy.delay(0.3)
        started = time.monotonic()
        writer.write(b"late")
        assert await _read(reader, 4, 3) == b"late"
        took = time.monotonic() - started
        assert took >= 0.55, took  # 0.3 s up and 0.3 s down (timer granularity aside)
        proxy.heal()
        await _close(writer)


async def test_cut_closes_and_refuses_until_heal(echo: int) -> None:
    with Proxy(echo) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await _read(reader, 1, 2) == b"x"
        proxy.cut()
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed
        assert proxy.state == "cut"
        await _close(writer)
        again, refused = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(again.read(), 2) == b""  # refused: closed at once
        await _close(refused)
        proxy.heal()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"y")
        assert await _read(reader, 1, 2) == b"y"
        await _close(writer)
    assert proxy.state == "closed"
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", proxy.port)


async def test_a_nats_client_behind_a_blackholed_proxy_is_alive_but_deaf() -> None:
    with NatsServer(jetstream=False) as server, Proxy(server.port) as proxy:
        direct = await nats.connect(server.url)
        behind = await nats.connect(f"nats://{proxy.address}", allow_reconnect=False)
        try:

            async def pong(msg: Msg) -> None:
                await behind.publish(msg.reply, b"pong")

            await behind.subscribe("svc", cb=pong)
            await behind.flush()  # nats-py may PING before its pending SUB is written (nats-facts.md)

            async def answers() -> bool:
                try:
                    return (await direct.request("svc", b"", timeout=2)).data == b"pong"
                except nats.errors.NoRespondersError:
                    return False

            await wait_for(answers, timeout=5, what="the subscription behind the proxy")
            proxy.blackhole()
            with pytest.raises(nats.errors.TimeoutError):  # its subscription stays: no "no responders"
                await direct.request("svc", b"", timeout=0.5)
            assert behind.is_connected
            proxy.heal()
            assert (await direct.request("svc", b"", timeout=2)).data == b"pong"
        finally:
            await behind.close()
            await direct.close()


async def test_partition_and_one_way_on_a_proxied_cluster() -> None:
    cluster = ProxiedCluster(3, jetstream=False)
    await asyncio.to_thread(cluster.start)
    try:
        a = await nats.connect(cluster.servers[0].url)
        c = await nats.connect(cluster.servers[2].url)
        got: list[bytes] = []
        try:

            async def seen(msg: Msg) -> None:
                got.append(msg.data)

            await c.subscribe("news", cb=seen)
            await c.flush()

            async def delivered(payload: bytes) -> bool:
                await a.publish("news", payload)
                await a.flush()
                return payload in got

            await wait_for(lambda: delivered(b"warm"), timeout=5, interval=0.05, what="interest propagated")
            with partition(cluster, {2}) as cut:
                await a.publish("news", b"during")
                await a.flush()
                await asyncio.sleep(0.5)
                assert b"during" not in got
            assert cut.ended > cut.started
            await wait_for(lambda: b"during" in got, timeout=5, what="held bytes delivered on heal")

            async with one_way(cluster, 0, 2):  # server 0's bytes never reach server 2
                await a.publish("news", b"one-way")
                await a.flush()
                await asyncio.sleep(0.5)
                assert b"one-way" not in got
            await wait_for(lambda: b"one-way" in got, timeout=5, what="held bytes delivered on heal")
            with pytest.raises(ConfigurationError):
                partition(cluster, {5})
        finally:
            await a.close()
            await c.close()
    finally:
        await asyncio.to_thread(cluster.stop)
    assert all(p.state == "closed" for p in cluster.proxies())
