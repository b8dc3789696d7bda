"""Chaos tests of durable delivery: host processes on a real 3-node JetStream cluster.

Three hosts (``tests/node_process.py``) consume the partitioned inbox stream; a client
mesh in the test process sends ``Counter.add(by=1)`` with ``send`` at a steady rate,
through ``with_options(delivery="exactly_once")`` to some counters and
``delivery="at_least_once"`` to others, many sends in flight. Meanwhile, in each round of
chaos, a host hangs (SIGSTOP) holding delivered but unacknowledged messages, is SIGKILLed
and started again under the same node id; then the NATS server leading the inbox stream
is SIGKILLed and restarted.

Accounting, per counter: a ``send`` that returned is *acknowledged* (the message is
stored: it must be applied); a ``send`` that raised is *unknown* (it may or may not be
stored, and the SDK offers no way to publish the same logical message again, so it is
counted, not retried). At the end, once the inbox stream is empty:

* exactly-once: every counter lies in ``[acknowledged, acknowledged + unknown]``; the
  tests also assert that no send failed, so that is exactly the acknowledged count;
* at-least-once: every counter is at least its acknowledged count; the surplus (the
  duplicates) is reported;
* nothing is in the dead-letter stream.

"Processed after a kill" is the time until every message stored before the kill has
been acknowledged (the work-queue stream no longer holds it). The figures are printed
(run with ``-s``); the soak (``-m slow``) runs 10,000 exactly-once increments over 100
counters through two rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from natsagents import Mesh
from natsagents.delivery.settings import inbox_stream
from natsagents.errors import NatsAgentsError
from natsagents.server import NatsCluster
from natsagents.testing import wait_for
from natsagents.transport.jetstream import consumer_info, stream_info
from natsagents.transport.kv import open_bucket
from natsagents.wire import codec
from natsagents.wire.subjects import bucket_name
from tests.chaos.test_cluster_chaos import HostProc, host_processes, percentile

ROOT = Path(__file__).resolve().parents[2]
KIND = "Counter"
EXACTLY_ONCE, AT_LEAST_ONCE = "exactly_once", "at_least_once"
LEASE = 1.5  # the hosts' cluster lease (tests/node_process.py)
#: The hosts' delivery settings: a short ``ack_wait`` (what a hung owner holds comes back
#: after it at the latest) and enough attempts (``attempt_timeout`` each, with backoff) to
#: ride out a stream leader election, so that the chaos itself dead-letters nothing.
PARTITIONS = 16
DELIVERY: dict[str, Any] = {
    "partitions": PARTITIONS,
    "max_deliver": 10,
    "backoff": [0.1, 0.5, 1.0, 2.0],
    "ack_wait": 3.0,
    "attempt_timeout": 5.0,
}
SEND_TIMEOUT = 30.0  # generous: a send retries the publish (same Nats-Msg-Id) within it


# -- host processes ----------------------------------------------------------------------


StartHost = Callable[..., Awaitable[HostProc]]


@pytest.fixture
async def start_host(nats_cluster: NatsCluster, mesh_prefix: str, tmp_path: Path) -> AsyncIterator[StartHost]:
    """Starts ``tests.node_process`` nodes (Counter and Crasher, consuming the durable inbox)
    under the test's prefix; stops them all."""
    async with host_processes(nats_cluster.url, mesh_prefix, tmp_path) as launch:

        async def start(node_id: str, delivery: dict[str, Any] | None = None) -> HostProc:
            cluster = {"delivery": delivery or DELIVERY}
            return await launch(node_id, {"kinds": ["Counter", "Crasher"], "cluster": cluster, "stats": "before_close"})

        yield start


@pytest.fixture
async def client(nats_cluster: NatsCluster, mesh_prefix: str) -> AsyncIterator[Mesh]:
    async with Mesh.connect(nats_cluster.urls, prefix=mesh_prefix, name="load", default_timeout=10.0) as mesh:
        yield mesh


@pytest.fixture
def cluster(nats_cluster: NatsCluster) -> Iterator[NatsCluster]:
    """The module's cluster; a node a test killed is started again, whatever happened."""
    try:
        yield nats_cluster
    finally:
        for i, server in enumerate(nats_cluster.servers):
            if not server.running:
                nats_cluster.restart(i)


# -- load ------------------------------------------------------------------------------


@dataclass
class Account:
    """One counter's sends: stored (``acked``) and raised (``unknown``: stored or not)."""

    delivery: str
    acked: int = 0
    unknown: int = 0


class Sends:
    """Durable ``add(by=1)`` sends at ``rate`` per second, at most ``in_flight`` at once.

    ``plan`` maps a delivery mode to (increments, counters): counters ``<mode>-<i>`` get
    the increments round-robin, the modes interleaved evenly. Every outcome is booked on
    its counter's account.
    """

    def __init__(self, mesh: Mesh, plan: dict[str, tuple[int, int]], rate: float, in_flight: int = 64) -> None:
        self.mesh = mesh
        self.rate = rate
        self.in_flight = in_flight
        self.accounts: dict[str, Account] = {}
        slots: list[tuple[float, str]] = []
        for delivery, (increments, counters) in plan.items():
            ids = [f"{delivery}-{i}" for i in range(counters)]
            self.accounts.update((i, Account(delivery)) for i in ids)
            slots += [(n / increments, ids[n % counters]) for n in range(increments)]
        self.order = [agent_id for _, agent_id in sorted(slots)]
        self.errors: Tally[str] = Tally()
        self.latencies: list[float] = []
        self.started = self.finished = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Sends:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        gate = asyncio.Semaphore(self.in_flight)
        refs = {i: self.mesh.ref(KIND, i).with_options(delivery=a.delivery) for i, a in self.accounts.items()}
        self.started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for n, agent_id in enumerate(self.order):
                due = self.started + n / self.rate
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())  # pacing, not synchronisation
                await gate.acquire()
                group.create_task(self._send(refs[agent_id], self.accounts[agent_id], gate))
        self.finished = time.monotonic()

    async def _send(self, ref: Any, account: Account, gate: asyncio.Semaphore) -> None:
        began = time.monotonic()
        try:
            await ref.send("add", by=1, timeout=SEND_TIMEOUT)
        except NatsAgentsError as exc:
            account.unknown += 1
            self.errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
        else:
            account.acked += 1
            self.latencies.append(time.monotonic() - began)
        finally:
            gate.release()

    async def wait(self, timeout: float) -> None:
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), timeout)

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def acked(self) -> int:
        return sum(a.acked for a in self.accounts.values())

    @property
    def unknown(self) -> int:
        return sum(a.unknown for a in self.accounts.values())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait_acked(self, more: int, timeout: float = 30.0) -> None:
        target = self.acked + more
        await wait_for(lambda: self.acked >= target, timeout=timeout, interval=0.02, what=f"{target} sends stored")


async def values(mesh: Mesh, ids: list[str], timeout: float = 2.0) -> dict[str, int | None]:
    """Every counter's value now (``None``: no answer in time)."""
    gate = asyncio.Semaphore(20)

    async def one(agent_id: str) -> int | None:
        async with gate:
            try:
                return int(await mesh.ref(KIND, agent_id).call("get", timeout=timeout))
            except NatsAgentsError:
                return None

    return dict(zip(ids, await asyncio.gather(*(one(i) for i in ids)), strict=True))


# -- the inbox as the server sees it ---------------------------------------------------------


async def inbox_state(mesh: Mesh) -> dict[str, Any]:
    info = await stream_info(mesh.transport, inbox_stream(mesh.prefix), timeout=1.0)
    return dict(info["state"])


async def processed(mesh: Mesh, last_seq: int, since: float, limit: float) -> float:
    """Seconds from ``since`` until every message up to inbox sequence ``last_seq`` was
    processed (acknowledged: the work-queue stream no longer holds it)."""

    async def done() -> bool:
        try:
            state = await inbox_state(mesh)
        except NatsAgentsError:
            return False  # during a leader election
        return bool(state["messages"] == 0 or state["first_seq"] > last_seq)

    await wait_for(done, timeout=limit, interval=0.05, what=f"inbox messages up to {last_seq} processed")
    return time.monotonic() - since


async def inbox_leader(mesh: Mesh, cluster: NatsCluster) -> int:
    info = await stream_info(mesh.transport, inbox_stream(mesh.prefix))
    return [s.name for s in cluster.servers].index(info["cluster"]["leader"])


async def partitions_of(mesh: Mesh, node_id: str) -> list[int]:
    """The inbox partitions whose lease ``node_id`` holds (key ``partition.<n>`` of the
    control bucket; see natsagents/delivery/owners.py)."""
    control = await open_bucket(mesh.transport, bucket_name(mesh.prefix, "control"))
    owned = []
    for n in range(PARTITIONS):
        entry = await control.get(f"partition.{n}")
        if entry is not None and codec.decode(entry.value) == node_id:
            owned.append(n)
    return owned


async def held(mesh: Mesh, partitions: list[int]) -> int:
    """Messages of ``partitions`` delivered and not yet acknowledged (partition ``n`` is
    consumed through the durable consumer ``p<n>``)."""
    total = 0
    for n in partitions:
        with contextlib.suppress(NatsAgentsError):
            info = await consumer_info(mesh.transport, inbox_stream(mesh.prefix), f"p{n}", timeout=1.0)
            total += int(info["num_ack_pending"])
    return total


# -- the chaos run -------------------------------------------------------------------------


@dataclass
class Round:
    """What one round of chaos measured (seconds from each kill)."""

    host: str
    held_at_kill: int = 0
    host_processed: float = 0.0
    host_back: float = 0.0
    server: str = ""
    sends_resumed: float = 0.0
    server_processed: float = 0.0
    server_back: float = 0.0

    def __str__(self) -> str:
        return (
            f"  {self.host} SIGSTOP then SIGKILL while holding {self.held_at_kill} unacknowledged messages: "
            f"everything stored before the kill processed after {self.host_processed:.2f} s "
            f"(ack_wait {DELIVERY['ack_wait']} s, lease {LEASE} s); {self.host} up again after "
            f"{self.host_back:.2f} s\n"
            f"  {self.server} (inbox stream leader) SIGKILL: sends stored again after {self.sends_resumed:.2f} s, "
            f"everything stored until then processed after {self.server_processed:.2f} s; "
            f"server up again after {self.server_back:.2f} s"
        )


async def chaos_round(
    cluster: NatsCluster, start_host: StartHost, client: Mesh, hosts: list[HostProc], index: int, sends: Sends
) -> Round:
    """Kill (and restart) host ``index``, then the NATS server leading the inbox stream."""
    # 1. The host hangs (SIGSTOP) with messages delivered and not yet acknowledged, then
    #    dies (SIGKILL). Its partitions move to the others, its agents are activated
    #    elsewhere and what it held is delivered again; then it starts again, same id.
    victim = hosts[index]
    got = Round(host=victim.node_id)
    owned = await partitions_of(client, victim.node_id)
    assert owned, f"{victim.node_id} owns no partition"
    assert sends.running, "the load ended before the host kill: more increments or a lower rate"
    victim.pause()
    try:
        await wait_for(lambda: _at_least(held(client, owned), 10), timeout=5, interval=0.02, what="messages held")
        got.held_at_kill = await held(client, owned)
        stored = int((await inbox_state(client))["last_seq"])
    finally:
        victim.kill()
    killed = time.monotonic()
    got.host_processed = await processed(client, stored, killed, 30)
    hosts[index] = await start_host(victim.node_id)
    got.host_back = time.monotonic() - killed
    await sends.wait_acked(int(sends.rate))

    # 2. SIGKILL the NATS server leading the inbox stream; restart it once sends are
    #    stored again and everything stored until then was processed.
    server = await inbox_leader(client, cluster)
    got.server = cluster.servers[server].name
    assert sends.running, "the load ended before the server kill: more increments or a lower rate"
    cluster.kill(server)
    killed = time.monotonic()
    try:
        await sends.wait_acked(int(sends.rate), timeout=60)
        got.sends_resumed = time.monotonic() - killed
        stored = int((await inbox_state(client))["last_seq"])
        got.server_processed = await processed(client, stored, killed, 60)
    finally:
        await asyncio.to_thread(cluster.restart, server)
    got.server_back = time.monotonic() - killed
    return got


async def _at_least(value: Awaitable[int], n: int) -> bool:
    return await value >= n


@dataclass
class Outcome:
    sends: Sends
    rounds: list[Round]
    final: dict[str, int | None]
    drained: float
    dead_letters: int
    stats: list[dict[str, float]]

    def counters(self, delivery: str) -> dict[str, Account]:
        return {i: a for i, a in self.sends.accounts.items() if a.delivery == delivery}

    def violations(self, delivery: str) -> list[str]:
        """Counters outside ``[acked, acked + unknown]`` (exactly-once) or below ``acked``."""
        out = []
        for agent_id, a in self.counters(delivery).items():
            value = self.final[agent_id]
            high = a.acked + a.unknown if delivery == EXACTLY_ONCE else None
            if value is None or value < a.acked or (high is not None and value > high):
                what = "no answer" if value is None else "lost" if value < a.acked else "applied twice"
                out.append(f"{agent_id}: {value}, acknowledged {a.acked}, unknown {a.unknown} ({what})")
        return out

    def duplicates(self, delivery: str) -> int:
        return sum((self.final[i] or 0) - a.acked for i, a in self.counters(delivery).items())

    def summed(self, name: str) -> dict[str, int]:
        """Metric ``name`` summed over the hosts' STATS, by its labels but ``kind``."""
        out: Tally[str] = Tally()
        for one in self.stats:
            for key, value in one.items():
                if key.startswith(name + "{"):
                    labels = [pair for pair in key[len(name) + 1 : -1].split(",") if not pair.startswith("kind=")]
                    out[",".join(labels) or "all"] += int(value)
        return dict(out)

    def report(self) -> str:
        s = self.sends
        took = s.finished - s.started
        lat = s.latencies
        lines = [
            f"{s.acked} sends stored in {took:.1f} s ({s.acked / took:.0f}/s), {s.unknown} failed "
            f"{dict(s.errors)}; send latency p50 {statistics.median(lat) * 1000:.0f} ms, "
            f"p99 {percentile(lat, 99) * 1000:.0f} ms, max {max(lat):.2f} s",
            *(str(r) for r in self.rounds),
        ]
        for delivery in (EXACTLY_ONCE, AT_LEAST_ONCE):
            counters = self.counters(delivery)
            if counters:
                acked = sum(a.acked for a in counters.values())
                applied = sum(self.final[i] or 0 for i in counters)
                lines.append(
                    f"  {delivery}: {len(counters)} counters, {acked} increments acknowledged, "
                    f"{sum(a.unknown for a in counters.values())} unknown, {applied} applied "
                    f"(duplicates {self.duplicates(delivery)}), {len(self.violations(delivery))} counters wrong"
                )
        lines.append(
            f"  inbox drained {self.drained:.2f} s after the last send; dead letters {self.dead_letters}; "
            f"durable outcomes on the surviving hosts {self.summed('natsagents_durable_messages_total')}, "
            f"duplicates refused {self.summed('natsagents_duplicates_total')}"
        )
        return "\n".join(lines)


async def chaos_run(
    cluster: NatsCluster,
    start_host: StartHost,
    client: Mesh,
    plan: dict[str, tuple[int, int]],
    *,
    rate: float,
    rounds: int = 1,
) -> Outcome:
    """Send the ``plan`` while ``rounds`` rounds of chaos run (round ``r`` kills host
    ``h<r>``, then the inbox leader); wait until the inbox is drained; read every counter,
    then stop the hosts (each reports its counters)."""
    hosts = [await start_host(f"h{i}") for i in range(3)]
    sends = Sends(client, plan, rate).start()
    try:
        done = [await chaos_round(cluster, start_host, client, hosts, r % len(hosts), sends) for r in range(rounds)]
        await sends.wait(timeout=len(sends.order) / rate + 120)

        await wait_for(lambda: _drained(client), timeout=60, interval=0.1, what="inbox drained")
        drained = time.monotonic() - sends.finished
        # The inbox is empty, so every message was applied and acknowledged: the values
        # are final (reading them again shows a lost increment as lost, not as late).
        ids = list(sends.accounts)
        final = await values(client, ids)
        if None in final.values():  # an agent being activated again: ask once more
            final.update(await values(client, [i for i, v in final.items() if v is None], timeout=10))
        dead = len(await client.dead_letters())
        stats = []
        for host in hosts:
            await host.terminate()
            stats.append(host.reported("STATS"))
        return Outcome(sends, done, final, drained, dead, stats)
    finally:
        await sends.cancel()


async def _drained(mesh: Mesh) -> bool:
    try:
        return int((await inbox_state(mesh))["messages"]) == 0
    except NatsAgentsError:
        return False


def check(outcome: Outcome) -> None:
    print("\n" + outcome.report())
    for delivery in (EXACTLY_ONCE, AT_LEAST_ONCE):
        wrong = outcome.violations(delivery)
        assert not wrong, f"{delivery}: {len(wrong)} counters wrong, e.g. {wrong[:8]}"
    assert outcome.dead_letters == 0
    # With a 30 s send timeout (the publish is retried with the same id within it) no send
    # should fail; a failed one could not be resent as the same message anyway.
    assert outcome.sends.unknown == 0, dict(outcome.sends.errors)
    exact = outcome.counters(EXACTLY_ONCE)
    assert sum(outcome.final[i] or 0 for i in exact) == sum(a.acked for a in exact.values())


# -- tests -------------------------------------------------------------------------------


async def test_delivery_survives_killed_hosts_and_servers(
    cluster: NatsCluster, start_host: StartHost, client: Mesh
) -> None:
    """2,000 exactly-once increments over 30 counters and 2,000 at-least-once ones over
    30 others, under one round of chaos: exactly-once counters end exact, at-least-once
    ones lose nothing."""
    plan = {EXACTLY_ONCE: (2000, 30), AT_LEAST_ONCE: (2000, 30)}
    check(await chaos_run(cluster, start_host, client, plan, rate=160))


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_exactly_once_soak(cluster: NatsCluster, start_host: StartHost, client: Mesh) -> None:
    """10,000 exactly-once increments over 100 counters (and 2,000 at-least-once ones
    beside them) under two rounds of chaos."""
    plan = {EXACTLY_ONCE: (10_000, 100), AT_LEAST_ONCE: (2000, 30)}
    check(await chaos_run(cluster, start_host, client, plan, rate=150, rounds=2))


async def test_a_message_that_kills_its_host_is_dead_lettered_after_max_deliver(
    cluster: NatsCluster, start_host: StartHost, client: Mesh
) -> None:
    """A poison message whose handler kills the process running it. With one node, the
    node that dies is also the partition owner each time, so JetStream's delivery count
    starts again with every new owner's consumer; the owners' own counts (recorded before
    each attempt of a message an earlier owner had) still stop it after ``max_deliver``."""
    delivery = {"partitions": 4, "max_deliver": 3, "backoff": [0.05], "ack_wait": 3.0, "attempt_timeout": 5.0}
    host = await start_host("k0", delivery)
    await client.ref("Crasher/x").with_options(delivery="at_least_once").send("boom")
    deaths = 0
    while True:

        async def died_or_dead_lettered(host: HostProc = host) -> bool:
            return host.proc.returncode is not None or bool(await client.dead_letters())

        await wait_for(died_or_dead_lettered, timeout=30, what="the host died or the message was dead-lettered")
        if host.proc.returncode is None:
            break  # dead-lettered by the owner that did not run it
        assert host.proc.returncode == 3, host.log_tail()
        deaths += 1
        assert deaths <= 3, "the message kept killing its hosts beyond max_deliver"
        host = await start_host(f"k{deaths}", delivery)
    letters = await client.dead_letters()
    assert [(letter.agent, letter.action, letter.error) for letter in letters] == [("Crasher/x", "boom", "unavailable")]
    assert letters[0].deliveries == 3 and "crashing its host" in letters[0].reason
    assert deaths == 3

    async def inbox_empty() -> bool:
        # The owner acknowledges the message after storing its dead letter (a plain ack,
        # no round trip): the inbox may hold it a moment after the letter is listed.
        info = await stream_info(client.transport, inbox_stream(client.prefix))
        return bool(info["state"]["messages"] == 0)

    await wait_for(inbox_empty, timeout=10, what="the dead-lettered message leaves the inbox")
