"""The crdt part of ``bench/state.py``: the agents it hosts and the convergence after a heal.

``convergence``: a 3-server cluster whose routes pass through proxies (started for the
run), node ``X`` on server 0 and node ``Y`` on server 2, each
with a copy of one ``ORMap`` of ``GCounter`` agent. Server 2 is cut off (its routes
closed, new ones refused); a caller on each side writes 5,000 keys of its own into the copy on its side (the
deltas cannot cross). Then the cut heals and the clock runs until both copies read the
same 10,000 keys (``convergence_10k_s``). Reported beside it: how long the servers took
to route again (a probe crossing after the heal), so that the CRDT part shows, and when the
first digest of the catch-up exchange (protocol §21.4) was received.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from natsagents import Agent, ClusterSettings, Mesh, NatsAgentsError, action
from natsagents.crdt import GCounter, ORMap, PNCounter

FLUSH_INTERVAL = 0.2
KEYS = 10_000


class CrdtCounter(Agent):
    """The counter of ``writes`` as a crdt kind: every copy answers at once, ships its delta
    over core NATS and merges into the record within ``flush_interval``."""

    consistency = "crdt"
    flush_interval = FLUSH_INTERVAL

    def initial_state(self) -> PNCounter:
        return PNCounter()

    @action
    async def add(self, by: int = 1) -> int:
        return int(self.mutate(self.state.increment(self.replica, by)).value)

    @action(read_only=True)
    async def get(self) -> int:
        return int(self.state.value)


class Keys(Agent):
    """A map of counters (a per-key tally)."""

    consistency = "crdt"
    flush_interval = FLUSH_INTERVAL
    mailbox_size = 64

    def initial_state(self) -> ORMap[GCounter]:
        return ORMap(GCounter)

    @action
    async def put_many(self, start: int, count: int) -> int:
        me = self.replica
        for i in range(start, start + count):
            self.mutate(self.state.update(me, f"k{i}", lambda c: c.increment(me, 1)))
            if i % 100 == 0:
                await asyncio.sleep(0)  # both nodes share this process: let the other run
        return len(self.state.value)

    @action(read_only=True)
    async def size(self) -> int:
        return len(self.state.value)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _node(url: str, prefix: str, node: str) -> Mesh:
    settings = ClusterSettings(node_id=node, lease=1.0, rebalance=False, delivery=None)
    end = time.monotonic() + 30
    while True:
        try:
            return await Mesh.connect(url, prefix=prefix, name=node, cluster=settings)
        except NatsAgentsError:  # a fresh cluster's streams may have no leader yet
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.5)


def _state(mesh: Mesh) -> Any:
    agent = mesh._host.agent_instance("Keys", "k")
    return None if agent is None else agent.state


async def _wait(check: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(what)
        await asyncio.sleep(0.002)


async def _lead_from(transport: Any, stream: str, minority: str) -> None:
    """Move the state stream's leader off the server to be cut."""
    from natsagents.transport.jetstream import api_request

    end = time.monotonic() + 20
    while time.monotonic() < end:
        info = await api_request(transport, f"$JS.API.STREAM.INFO.{stream}", None, 2.0)
        leader = (info.get("cluster") or {}).get("leader")
        if leader and leader != minority:
            return
        if leader == minority:
            try:
                await api_request(transport, f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", None, 2.0)
            except NatsAgentsError:
                pass
        await asyncio.sleep(0.2)


async def bench_convergence(cfg: Any) -> dict[str, Any]:
    from natsagents.testing.proxy import ProxiedCluster, partition

    cluster = ProxiedCluster(3, name="crdtbench")
    cluster.start()
    prefix = "bc" + hex(time.time_ns())[-6:]
    try:
        major, minor = cluster.servers[0].url, cluster.servers[2].url
        async with (
            await _node(major, prefix, "X") as x,
            await _node(minor, prefix, "Y") as y,
            Mesh.connect(major, prefix=prefix, name="west", default_timeout=60.0) as west,
            Mesh.connect(minor, prefix=prefix, name="east", default_timeout=60.0) as east,
        ):
            await x.host(Keys)
            await y.host(Keys)
            for _ in range(20):  # a delta sent before Y's interest reached server 0 is lost
                await west.ref("Keys/k").call("put_many", start=-1, count=1)
                try:
                    await _wait(lambda: _state(x) is not None and _state(y) is not None, 0.5, "Y follows")
                    break
                except TimeoutError:
                    continue
            node = x.cluster_node
            assert node is not None
            await _lead_from(west.transport, node.state.bucket.stream, cluster.servers[2].name)
            half = KEYS // 2
            heals: list[float] = []
            yn = y.cluster_node
            assert yn is not None
            yn.partition.subscribe(lambda e: heals.append(time.monotonic()) if e.kind == "heal" else None)
            # "cut": the routes close and new ones are refused (a blackhole would hold the
            # bytes of the cut and deliver them at the heal, a backlog to work through first).
            with partition(cluster, {2}, clients=False, mode="cut") as cut:
                yc = y.cluster_node
                assert yc is not None
                await _wait(lambda: yc.partition.state.minority, 15, "Y sees the minority side")
                started = time.monotonic()
                await asyncio.gather(
                    west.ref("Keys/k").call("put_many", start=0, count=half),
                    east.ref("Keys/k").call("put_many", start=half, count=half),
                )
                wrote = time.monotonic() - started
                sx, sy = _state(x), _state(y)
                diverged = (len(sx.value), len(sy.value))
                log(f"crdt convergence: diverged {diverged} keys (written in {wrote:.1f} s)")
                crossed: list[float] = []
                probe = f"{prefix}.probe"
                listener = await east.transport.subscribe(probe, lambda _msg: crossed.append(time.monotonic()))
                await east.transport.flush()
                healed = time.monotonic()
                cut.heal()
            # When the servers route again: a probe published every 10 ms crosses.
            while not crossed and time.monotonic() - healed < 30:
                await west.transport.publish(probe, b"")
                await asyncio.sleep(0.01)
            await listener.unsubscribe()
            routed = crossed[0] - healed if crossed else None
            want = KEYS + 1
            seen: tuple[int, int] = (0, 0)

            def digests() -> float:
                labels = {"kind": "Keys", "outcome": "digest"}
                return sum(m.metrics.value("natsagents_crdt_deltas_total", labels) or 0 for m in (x, y))

            digests_at_heal = digests()
            first_digest: float | None = None
            while True:
                if first_digest is None and digests() > digests_at_heal:
                    first_digest = time.monotonic() - healed
                sx, sy = _state(x), _state(y)
                # Compared only when a copy's state changed (comparing two 10,000-key maps
                # costs CPU the copies need).
                if (id(sx), id(sy)) != seen:
                    seen = (id(sx), id(sy))
                    if sx is not None and sy is not None and sx == sy and len(sx.value) == want:
                        break
                if time.monotonic() - healed > 60:
                    raise TimeoutError(f"not converged: {len(sx.value)} / {len(sy.value)}")
                await asyncio.sleep(0.005)
            took = time.monotonic() - healed
            y_ok = heals[0] - healed if heals else None
            log(
                f"crdt convergence: both copies hold {want} keys {took:.2f} s after the heal, the servers "
                f"routed again after {routed if routed is None else round(routed, 2)} s "
                f"(Y's partition state back to ok after {y_ok if y_ok is None else round(y_ok, 2)} s)"
            )

            def count(metric: str, outcome: str) -> float:
                return sum(m.metrics.value(metric, {"kind": "Keys", "outcome": outcome}) or 0 for m in (x, y))

            return {
                "keys": KEYS,
                "diverged": list(diverged),
                "write_s": round(wrote, 2),
                "convergence_s": round(took, 3),
                "routed_s": None if routed is None else round(routed, 3),
                # The first digest (protocol §21.4) received after the heal, as seen here.
                "first_digest_s": None if first_digest is None else round(first_digest, 3),
                "y_heal_event_s": None if y_ok is None else round(y_ok, 3),
                "state_bytes": len(sx.to_wire()),
                "record_merges_stored": count("natsagents_crdt_merges_total", "stored"),
                "deltas_applied": count("natsagents_crdt_deltas_total", "applied"),
            }
    finally:
        cluster.stop()


async def bench_kill(url: str, cfg: Any, start_host: Any) -> dict[str, Any]:
    """SIGKILL a node process holding crdt counters under load; count the acknowledged
    increments missing afterwards: with one copy (the node's own; the record is all that
    is left) and with two (a second copy in this process, which received the deltas and
    merges them into the record when it stops)."""
    from natsagents.state import StateStore

    out: dict[str, Any] = {}
    agents = 20
    for copies in (1, 2):
        prefix = "bq" + hex(time.time_ns())[-6:]
        host = start_host(url, prefix, "kc")
        survivor: Mesh | None = None
        try:
            async with Mesh.connect(url, prefix=prefix, name="load") as client:
                if copies == 2:
                    settings = ClusterSettings(node_id="ks", lease=1.5, rebalance=False, delivery=None)
                    survivor = await Mesh.connect(url, prefix=prefix, name="ks", cluster=settings)
                    await survivor.host(CrdtCounter)
                refs = [client.ref("CrdtCounter", f"q{i}") for i in range(agents)]
                acked = [0] * agents
                for i, ref in enumerate(refs):  # activated, and followed by the second copy
                    await ref.call("add", timeout=30)
                    acked[i] += 1
                if survivor is not None:
                    end = time.monotonic() + 10
                    while len(survivor.local_agents()) < agents and time.monotonic() < end:
                        for i, ref in enumerate(refs):
                            await ref.call("add", timeout=30)
                            acked[i] += 1
                        await asyncio.sleep(0.05)

                failed: list[int] = []

                async def loop(ref: Any, i: int, acked: list[int] = acked, failed: list[int] = failed) -> None:
                    while True:  # until cancelled after the kill
                        try:
                            await ref.call("add", timeout=2.0)
                        except NatsAgentsError:
                            failed.append(i)
                            return
                        acked[i] += 1

                load = asyncio.ensure_future(asyncio.gather(*(loop(ref, i) for i, ref in enumerate(refs))))
                await asyncio.sleep(cfg.kill_after)
                host.proc.kill()
                host.proc.wait()
                if survivor is not None:
                    await asyncio.sleep(0.5)  # calls keep going to the surviving copy for a moment
                load.cancel()  # a call in flight now may have run: counted in "over", not "lost"
                await asyncio.gather(load, return_exceptions=True)
                unknown = len(failed)
                if survivor is not None:
                    await survivor.aclose()  # its copies merge into the records as they stop
                    survivor = None
                store = StateStore(client._transport, prefix)
                await store.start()
                lost = over = 0
                for i in range(agents):
                    stored = await store.load("CrdtCounter", f"q{i}")
                    n = PNCounter.from_wire(stored.data).value if isinstance(stored.data, bytes) else 0
                    lost += max(0, acked[i] - n)
                    over += max(0, n - acked[i])
                total = sum(acked)
                out[f"copies_{copies}"] = {"acked": total, "lost": lost, "unknown_outcome": unknown, "over": over}
                log(f"crdt kill, {copies} copies: {total} acked, {lost} lost, {unknown} unknown, {over} over")
        finally:
            if survivor is not None:
                await survivor.aclose()
            host.stop()
    return out


async def bench_lag(url: str, samples: int) -> dict[str, Any]:
    """Replication lag of a crdt counter: two nodes (in this process) hold a copy; after
    each acknowledged ``add`` (one caller, sequential), the time until both copies read
    the acknowledged total (the delta over core NATS, merged by the other copy). The copy
    publishes the delta before the reply, on the same connection: the other copy usually
    has it before the caller has the reply (then the lag counts as ~0). Everything runs in
    one process here, so this shows the ordering more than a network's latency."""
    from _common import percentile

    prefix = "bl" + hex(time.time_ns())[-6:]
    settings = [ClusterSettings(node_id=n, lease=1.5, rebalance=False, delivery=None) for n in ("la", "lb")]
    nodes = [await Mesh.connect(url, prefix=prefix, name=s.node_id, cluster=s) for s in settings]
    try:
        for node in nodes:
            await node.host(CrdtCounter)
        async with Mesh.connect(url, prefix=prefix, name="load") as client:
            ref = client.ref("CrdtCounter", "lag")

            def values() -> list[Any]:
                out = []
                for node in nodes:
                    agent = node._host.agent_instance("CrdtCounter", "lag")
                    out.append(None if agent is None else agent.state.value)
                return out

            total = 0
            end = time.monotonic() + 10
            while None in values() and time.monotonic() < end:  # the second copy follows
                await ref.call("add", timeout=30)
                total += 1
                await asyncio.sleep(0.01)
            lags: list[float] = []
            for _ in range(samples):
                await ref.call("add", timeout=30)
                total += 1
                acked = time.perf_counter()
                while values() != [total, total]:  # noqa: ASYNC110 (polling two agents' state)
                    await asyncio.sleep(0)
                lags.append((time.perf_counter() - acked) * 1000)
            lags.sort()
            p50, p99 = round(percentile(lags, 50), 3), round(percentile(lags, 99), 3)
            log(f"crdt replication lag (reply → both copies), p50 {p50} ms, p99 {p99} ms, {samples} samples")
            return {"samples": samples, "p50_ms": p50, "p99_ms": p99, "max_ms": round(lags[-1], 3)}
    finally:
        for node in nodes:
            await node.aclose()
