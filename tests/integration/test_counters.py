"""Native distributed counters (``mesh.counter``, ADR-49) against a real nats-server.

Every assumption about the server is checked here: the PubAck carries the new total as a
decimal string (``val``), totals are arbitrary-precision, the server refuses a malformed
``Nats-Incr`` without touching the total, a retried add with the same ``Nats-Msg-Id`` is
not counted twice, and a file-backed counter survives a restart.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from natsagents import ConfigurationError, CountersUnsupported, DistributedCounter, Mesh, MeshClosed, ProtocolError
from natsagents.counters import (
    DUPLICATE_WINDOW,
    MAX_DELTA_DIGITS,
    _body_total,
    _supports_counters,
    counter_subject,
    counters_stream,
)
from natsagents.errors import JetStreamError
from natsagents.server import NatsServer
from natsagents.testing import wait_for
from natsagents.testing.plugin import MeshFactory
from natsagents.transport.jetstream import StreamConfig, ensure_stream, publish, stream_info
from tests.conftest import Connect


async def test_add_returns_the_new_total_and_value_reads_it(mesh: Mesh, mesh_factory: MeshFactory) -> None:
    hits = await mesh.counter("hits")
    assert isinstance(hits, DistributedCounter) and hits.subject == f"{mesh.prefix}.counter.hits"
    assert await hits.value() == 0  # never added to
    assert await hits.add(5) == 5
    assert await hits.add() == 6
    assert await hits.add(-10) == -4
    assert await hits.add(0) == -4
    assert await hits.value() == -4
    assert await hits.value(consistent=True) == -4
    other = await (await mesh_factory(name="other")).counter("hits")  # another connection, same counter
    assert await other.add(4) == 0
    assert await (await mesh.counter("orders.eu")).add(2) == 2  # dotted names are counters of their own
    assert await hits.value() == 0
    config = (await stream_info(mesh.transport, counters_stream(mesh.prefix)))["config"]
    assert config["allow_msg_counter"] is True and config["allow_direct"] is True
    assert config["num_replicas"] == 1 and config["subjects"] == [f"{mesh.prefix}.counter.>"]


async def test_concurrent_adds_from_several_connections_lose_nothing(mesh_factory: MeshFactory) -> None:
    meshes = [await mesh_factory(name=f"m{i}") for i in range(4)]
    counters = [await m.counter("race") for m in meshes]
    totals = await asyncio.gather(*(c.add(1) for c in counters for _ in range(50)))
    # The leader applies them one at a time: every add saw a distinct total, none was lost.
    assert sorted(totals) == list(range(1, 201))
    assert await counters[0].value(consistent=True) == 200


async def test_big_integers_beyond_64_bits(mesh: Mesh) -> None:
    big = await mesh.counter("big")
    assert await big.add(2**63 - 1) == 2**63 - 1
    assert await big.add(2**63 - 1) == 2**64 - 2  # past int64: the server counts in big.Int
    assert await big.add(2**200) == 2**200 + 2**64 - 2
    assert await big.add(-(2**201)) == -(2**200) + 2**64 - 2
    assert await big.value() == -(2**200) + 2**64 - 2
    largest = 10**MAX_DELTA_DIGITS - 1
    assert await big.add(largest) == largest - 2**200 + 2**64 - 2


@pytest.mark.parametrize("name", ["", "a b", "a.*", ">", "a..b", ".a", "a.", "x" * 65, "é", "a\r\nb", 7, None])
async def test_bad_names_are_refused(mesh: Mesh, name: object) -> None:
    with pytest.raises(ConfigurationError):
        await mesh.counter(name)  # type: ignore[arg-type]


async def test_bad_deltas_and_timeouts_are_refused_before_anything_is_sent(mesh: Mesh) -> None:
    c = await mesh.counter("strict")
    _, sent = mesh.transport.message_counts()
    for delta in (1.0, "1", "+1", True, None, 10**MAX_DELTA_DIGITS, -(10**MAX_DELTA_DIGITS)):
        with pytest.raises(ConfigurationError):
            await c.add(delta)  # type: ignore[arg-type]
    for timeout in (0, -1, DUPLICATE_WINDOW + 1, "5"):
        with pytest.raises(ConfigurationError):
            await c.add(1, timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            await c.value(timeout=timeout if timeout != DUPLICATE_WINDOW + 1 else 0)  # type: ignore[arg-type]
    assert mesh.transport.message_counts()[1] == sent
    assert await c.value() == 0


async def test_forged_increments_do_not_corrupt_the_total(mesh: Mesh, connect: Connect, nats_url: str) -> None:
    c = await mesh.counter("forged")
    assert await c.add(10) == 10
    raw = await connect(nats_url)  # a peer of its own, no SDK checks
    bogus: list[tuple[dict[str, str], bytes, int]] = [  # headers, body, the server's err_code
        ({}, b"", 10169),  # no Nats-Incr
        ({"Nats-Incr": ""}, b"", 10169),
        ({"Nats-Incr": "abc"}, b"", 10171),
        ({"Nats-Incr": "1.5"}, b"", 10171),
        ({"Nats-Incr": "+-1"}, b"", 10171),
        ({"Nats-Incr": "+\u0661"}, b"", 10171),  # an Arabic-Indic digit one
        ({"Nats-Incr": "1e9"}, b"", 10171),
        ({"Nats-Incr": "+1"}, b'{"val":"999"}', 10170),  # a body: refused, the server writes the body
        ({"Nats-Incr": "+1", "Nats-Expected-Last-Subject-Sequence": "1"}, b"", 10171),
        ({"Nats-Incr": "+1", "Nats-Rollup": "sub"}, b"", 10171),
        ({"Nats-Incr": "+1", "Nats-TTL": "5"}, b"", 10166),
        ({"Nats-Incr": "9" * 70_000}, b"", 10097),  # over the server's 64 KiB header limit
    ]
    for i, (headers, body, code) in enumerate(bogus):
        with pytest.raises(JetStreamError) as refused:
            await publish(raw, c.subject, body, msg_id=f"forged-{i}", headers=headers)
        assert refused.value.err_code == code, (headers, refused.value)
        await raw.publish(c.subject, body, headers=headers)  # and fire-and-forget, no reply to see
    await raw.flush()
    assert await c.value(consistent=True) == 10
    assert await c.add(1) == 11  # still counting
    assert raw.is_connected and mesh.transport.is_connected


async def test_a_closed_mesh_hands_out_no_counter(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(name="closing")
    await mesh.aclose()
    with pytest.raises(MeshClosed):
        await mesh.counter("hits")


def test_hostile_totals_are_protocol_errors() -> None:
    for data in (b"", b"x", b"[]", b'{"val":5}', b'{"val":"1e5"}', b'{"val":" 5"}', b'{"val":"+5"}', b"{}"):
        with pytest.raises(ProtocolError):
            _body_total("read", data)
    with pytest.raises(ProtocolError):
        _body_total("read", json.dumps({"val": "9" * 5000}).encode())  # beyond MAX_VALUE_DIGITS
    assert _body_total("read", b'{"val":"-12"}') == -12


def test_servers_older_than_2_12_have_no_counters() -> None:
    assert not _supports_counters("2.11.9") and not _supports_counters("2.10.29") and not _supports_counters("1.4.1")
    assert _supports_counters("2.12.0") and _supports_counters("v2.15.1") and _supports_counters("3.0.0")


async def test_an_old_server_gets_a_typed_error_at_counter_time(mesh: Mesh) -> None:
    # A real connection whose server says it is 2.11 (as one would in its INFO).
    mesh.transport._nc._server_info["version"] = "2.11.4"
    with pytest.raises(CountersUnsupported) as caught:
        await mesh.counter("hits")
    assert caught.value.server_version == "2.11.4" and "2.12" in str(caught.value)
    with pytest.raises(JetStreamError):  # nothing was created
        await stream_info(mesh.transport, counters_stream(mesh.prefix))


async def test_a_stream_of_that_name_that_is_not_a_counter_stream_is_refused(mesh: Mesh) -> None:
    name = counters_stream(mesh.prefix)
    await ensure_stream(mesh.transport, StreamConfig(name=name, subjects=[counter_subject(mesh.prefix, "x")]))
    with pytest.raises(ConfigurationError, match="not a counter stream"):
        await mesh.counter("x")


async def test_a_retried_add_is_counted_once(mesh: Mesh) -> None:
    c = await mesh.counter("retry")
    first = await publish(mesh.transport, c.subject, b"", msg_id="same", headers={"Nats-Incr": "+3"})
    again = await publish(mesh.transport, c.subject, b"", msg_id="same", headers={"Nats-Incr": "+3"})
    assert first.value == "3" and again.duplicate and again.value is None and again.seq == first.seq
    assert await c.value(consistent=True) == 3


async def test_delete_purges_the_counter(mesh: Mesh) -> None:
    c = await mesh.counter("gone")
    assert not await c.delete()
    await c.add(7)
    assert await c.delete()
    assert await c.value() == 0 and await c.value(consistent=True) == 0
    assert await c.add(1) == 1


@pytest.fixture
def own_server() -> Iterator[NatsServer]:
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_counter_survives_a_server_restart(own_server: NatsServer) -> None:
    async with Mesh.connect(own_server.url, name="restart", default_timeout=5.0) as mesh:
        c = await mesh.counter("durable")
        assert await c.add(2**70) == 2**70
        await asyncio.to_thread(own_server.restart)
        await wait_for(lambda: mesh.transport.is_connected, timeout=10.0, what="reconnected")
        assert await c.value(consistent=True, timeout=10.0) == 2**70
        assert await c.add(1, timeout=10.0) == 2**70 + 1
