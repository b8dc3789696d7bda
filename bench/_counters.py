"""Native JetStream counter (``mesh.counter``, ADR-49) beside the CRDT PNCounter replicated
over NATS, on one 3-server cluster started for the run. Used by ``bench/crdt.py``.

What each variant does per increment, and what it guarantees when the call returns:

* ``native``: ``await counter.add(1)``: a JetStream publish with ``Nats-Incr: +1`` to the
  R3 counters stream, awaiting the PubAck (which carries the new total). The add is stored
  by a quorum of the 3 servers; the total is exact; it needs the stream's quorum (a
  minority side of a partition cannot add).
* ``raw``: the same request from bare nats-py (no SDK): the baseline for the SDK's cost.
* ``crdt``: the writer mutates its own PNCounter replica (``increment``) and publishes the
  delta (msgpack, protocol §17) over core NATS without waiting; 3 replicas (one connection
  per server) merge every delta they get. Nothing is stored: a replica that misses a delta
  is repaired by the writer's next one (a PNCounter delta carries the writer's whole
  count), otherwise only by anti-entropy. Writes never wait for any server.
* ``crdt_durable``: the same delta published to an R3 JetStream stream awaiting the PubAck
  (the replicas still read it live on the same subject): the delta is stored on a quorum
  before the writer goes on, so a replica can replay what it missed.

Convergence: from the moment the last writer finished (its last add acknowledged; for
``crdt``, its last publish flushed) until all 3 replicas read the final total (native:
direct gets through a connection to each server, answered by any stream replica).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from _common import percentile

from natsagents import Mesh
from natsagents.crdt import PNCounter
from natsagents.server import NatsCluster
from natsagents.transport import ConnectSettings, Inbound, Transport
from natsagents.transport.jetstream import StreamConfig, ensure_stream, publish

PREFIX = "bench"
Add = Callable[[], Awaitable[None]]


class _Replica:
    """A PNCounter replica merging the deltas it receives on one subject."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self.state = PNCounter()

    def on_delta(self, msg: Inbound) -> None:
        self.state = self.state.apply_delta(PNCounter.from_wire(msg.data))


async def _run(adds: list[Add], per_client: int) -> tuple[float, list[float], float]:
    """Each client does ``per_client`` adds in sequence, all clients at once. Returns
    (the moment they started, latencies in µs, the moment the last one finished)."""
    latencies: list[float] = []

    async def client(add: Add) -> None:
        for _ in range(per_client):
            t = time.perf_counter()
            await add()
            latencies.append((time.perf_counter() - t) * 1e6)

    start = time.perf_counter()
    await asyncio.gather(*(client(a) for a in adds))
    end = time.perf_counter()
    return start, sorted(latencies), end


async def _converge(read: Callable[[], Awaitable[bool]], since: float, limit: float = 10.0) -> float | None:
    """Milliseconds from ``since`` until ``read()`` is true (``None``: not within ``limit`` s)."""
    while not await read():
        if time.perf_counter() - since > limit:
            return None
        await asyncio.sleep(0.0005)
    return (time.perf_counter() - since) * 1e3


async def _native(cluster: NatsCluster, clients: int, per_client: int, name: str) -> dict[str, Any]:
    urls = cluster.urls
    meshes = [await Mesh.connect(urls[i % 3], name=f"w{i}", prefix=PREFIX) for i in range(clients)]
    readers = [await Mesh.connect(urls[i], name=f"r{i}", prefix=PREFIX) for i in range(3)]
    try:
        counters = [await m.counter(name) for m in meshes]
        views = [await m.counter(name) for m in readers]
        adds: list[Add] = [lambda c=c: c.add(1) for c in counters]  # type: ignore[misc]
        start, lat, end = await _run(adds, per_client)
        total = clients * per_client
        rate = total / (end - start)

        async def all_read() -> bool:
            return all(v == total for v in await asyncio.gather(*(c.value() for c in views)))

        converge = await _converge(all_read, end)
        assert await counters[0].value(consistent=True) == total, "the native counter lost or doubled an add"
        return {"rate": rate, "lat": lat, "converge": converge}
    finally:
        for m in [*meshes, *readers]:
            await m.aclose()


async def _raw(cluster: NatsCluster, clients: int, per_client: int, name: str) -> dict[str, Any]:
    ncs = [await nats.connect(cluster.urls[i % 3]) for i in range(clients)]
    subject = f"{PREFIX}.counter.{name}"
    try:

        def add_for(nc: Any) -> Add:
            async def add() -> None:
                await nc.request(subject, b"", headers={"Nats-Incr": "+1"}, timeout=10)

            return add

        start, lat, end = await _run([add_for(nc) for nc in ncs], per_client)
        return {"rate": clients * per_client / (end - start), "lat": lat, "converge": None}
    finally:
        for nc in ncs:
            await nc.close()


async def _crdt(cluster: NatsCluster, clients: int, per_client: int, durable: bool, tag: str) -> dict[str, Any]:
    urls = cluster.urls

    async def connect(url: str) -> Transport:
        return await Transport.connect(ConnectSettings(servers=(url,), name="crdt"))

    subject = f"{PREFIX}.{'crdtd' if durable else 'crdt'}.{tag}"
    replicas = [_Replica(await connect(urls[i])) for i in range(3)]
    writers = [await connect(urls[i % 3]) for i in range(clients)]
    try:
        if durable:
            stream = StreamConfig(name=f"{PREFIX}_deltas_{tag}", subjects=[subject], replicas=3)
            await ensure_stream(writers[0], stream, timeout=15.0)
        for r in replicas:
            await r.t.subscribe(subject, r.on_delta)
            await r.t.flush()

        def add_for(i: int, t: Transport) -> Add:
            state = PNCounter()
            me = f"w{i}"

            async def add() -> None:
                nonlocal state
                state, delta = state.increment(me, 1)
                if durable:
                    await publish(t, subject, delta.to_wire(), msg_id=os.urandom(12).hex(), timeout=10.0)
                else:
                    await t.publish(subject, delta.to_wire())

            return add

        adds = [add_for(i, t) for i, t in enumerate(writers)]
        start, lat, end = await _run(adds, per_client)
        if not durable:  # done when on the server: count the flush in the time
            await asyncio.gather(*(t.flush() for t in writers))
            end = time.perf_counter()
        total = clients * per_client
        rate = total / (end - start)

        async def all_read() -> bool:
            return all(r.state.value == total for r in replicas)

        converge = await _converge(all_read, end)
        return {"rate": rate, "lat": lat, "converge": converge}
    finally:
        for t in [*writers, *(r.t for r in replicas)]:
            await t.close()


async def _all(quick: bool) -> tuple[list[list[str]], dict[str, Any]]:
    single, each = (300, 100) if quick else (2000, 750)
    cluster = await asyncio.to_thread(NatsCluster(3).start)
    rows: list[list[str]] = []
    out: dict[str, Any] = {"counter_servers": 3, "counter_replicas": 3, "counter_adds_1": single}
    out["counter_adds_8"] = 8 * each
    try:
        variants: list[tuple[str, Callable[[int, int, str], Awaitable[dict[str, Any]]]]] = [
            ("native", lambda c, n, tag: _native(cluster, c, n, tag)),
            ("raw", lambda c, n, tag: _raw(cluster, c, n, tag)),
            ("crdt", lambda c, n, tag: _crdt(cluster, c, n, False, tag)),
            ("crdt_durable", lambda c, n, tag: _crdt(cluster, c, n, True, tag)),
        ]
        for name, run in variants:
            await run(1, 20, f"warm{name}")  # connections, stream creation, JIT-less warm-up
            for clients, n in ((1, single), (8, each)):
                r = await run(clients, n, f"{name}{clients}")
                p50, p99 = percentile(r["lat"], 50), percentile(r["lat"], 99)
                conv = r["converge"]
                out[f"{name}_incr_s_{clients}"] = round(r["rate"])
                out[f"{name}_p50_us_{clients}"] = round(p50)
                out[f"{name}_p99_us_{clients}"] = round(p99)
                if name != "raw":
                    out[f"{name}_converge_ms_{clients}"] = None if conv is None else round(conv, 2)
                shown = "-" if name == "raw" else ("never (10 s)" if conv is None else f"{conv:.2f}")
                rows.append([name, str(clients), f"{r['rate']:,.0f}", f"{p50:,.0f}", f"{p99:,.0f}", shown])
    finally:
        await asyncio.to_thread(cluster.stop)
    for c in (1, 8):
        out[f"ratio_native_crdt_incr_{c}"] = round(out[f"native_incr_s_{c}"] / out[f"crdt_incr_s_{c}"], 4)
        out[f"ratio_native_crdt_durable_incr_{c}"] = round(
            out[f"native_incr_s_{c}"] / out[f"crdt_durable_incr_s_{c}"], 4
        )
        out[f"ratio_native_raw_incr_{c}"] = round(out[f"native_incr_s_{c}"] / out[f"raw_incr_s_{c}"], 4)
    out["ratio_native_crdt_incr"] = out["ratio_native_crdt_incr_8"]
    out["ratio_native_crdt_durable_incr"] = out["ratio_native_crdt_durable_incr_8"]
    out["ratio_native_raw_incr"] = out["ratio_native_raw_incr_8"]
    return rows, out


def run_counters(quick: bool) -> tuple[list[list[str]], dict[str, Any]]:
    """Table rows (variant, clients, incr/s, p50 µs, p99 µs, convergence ms) and JSON keys."""
    return asyncio.run(_all(quick))
