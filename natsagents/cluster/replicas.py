"""Read replicas and state versions (``read_replicas``, ``consistency = "session"``;
docs/consistency.md, protocol §19).

* **Versions.** An ok reply of a kind with ``consistency = "session"`` or read replicas
  carries ``Na-State-Version``: the KV revision of the agent's state record its answer
  reflects (the primary: the revision it last wrote or loaded; a replica: the one it holds).
* **Read subject.** The primary of such a kind also subscribes
  ``<prefix>.read.<kind>.<token>`` in the queue group ``<prefix>.readers`` (from its
  ``starting`` hook until it stops); callers send read-only actions there, so reads
  spread over the primary and the replicas while writes go to the agent subject.
* **Replicas.** Every node decides alone, from the directory and the membership, whether
  it holds a replica of an agent: the first ``read_replicas`` live nodes of the kind, in
  the hash ring's preference order for the agent's key, leaving out the owner. It
  re-decides on every directory change of the agent (activation, migration, takeover,
  release) and every second (members come and go), so replicas follow the primary and
  stop when the agent deactivates. While the owner's lease lapses (a crash, before a
  takeover) replicas keep serving reads of what they hold. A replica is an agent instance (``on_start`` is not
  called) restored from a watch of the agent's state record; it subscribes the read
  subject once the watch delivered the current value, and runs read-only actions only:
  anything else is forwarded unchanged to the agent subject (the primary answers the
  caller). A read whose ``Na-Min-Version`` is above the version the replica holds waits
  up to the kind's ``session_wait`` for the watch, then is forwarded to the primary (at
  once when the replica has known for ``session_wait`` already that it is behind).
* **Lag.** A replica knows the newest version it has heard of (from its watch and from
  ``Na-Min-Version`` of reads) and since when it has known of one newer than it holds:
  ``Na-Replica-Lag`` (ms) on its replies, ``natsagents_replica_lag_seconds{kind}``, and
  :meth:`Replicas.lag`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..agent.base import Agent
from ..errors import BAD_REQUEST, NatsAgentsError, PartitionError
from ..observability import Metrics
from ..runtime.activation import Activation, ActivationState, Outcome
from ..runtime.hooks import DEGRADED, Degraded
from ..runtime.host import Host
from ..state.store import StateStore
from ..tasks import TaskGroup
from ..transport import Transport
from ..transport.connection import Inbound, Subscription
from ..wire import envelope
from ..wire import headers as h
from ..wire.ids import agent_key
from ..wire.subjects import agent_subject, read_queue, read_subject
from .directory import Claim, Directory
from .membership import Membership
from .minority import minority_answer
from .partition import PartitionMonitor
from .ring import HashRing

__all__ = ["Replicas", "versioned_block"]

log = logging.getLogger("natsagents.cluster.replicas")

_MAX_DIGITS = 19
_SWEEP_INTERVAL = 1.0


def versioned_block(block: bytes, version: int, extra: Mapping[str, str] | None = None) -> bytes:
    """An ok reply header block with ``Na-State-Version`` (and ``extra``) added."""
    lines = f"{h.STATE_VERSION}: {version}\r\n"
    if extra:
        lines += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
    return block[:-2] + lines.encode("ascii") + b"\r\n"


def min_version(headers: Mapping[str, str] | None) -> int | None:
    """``Na-Min-Version`` of a request: 0 when absent, ``None`` when malformed."""
    text = headers.get(h.MIN_VERSION) if headers is not None else None
    if text is None:
        return 0
    if not 0 < len(text) <= _MAX_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)


#: A read refused before it ran (the refusal is sent).
_NOT_RUN = Outcome(None, False, None)


@dataclass(slots=True)
class _Renamed:
    """A message received on a read subject, handed on as if received on the agent
    subject (caller signatures cover the agent subject, protocol §19)."""

    subject: str
    reply: str
    data: bytes
    headers: dict[str, str] | None


class _ReplicaServices:
    """What a replica's activation asks of its host: the host's, except that nothing is
    ever stored, ok replies carry the replica's version and lag, and on the minority side
    of a partition the kind's ``partition_strategy`` applies as on its primary
    (``cluster.minority``: ``PartitionError``, or reads flagged ``Na-Degraded: 1``)."""

    def __init__(
        self,
        host: Host,
        copy: _Replica,
        node_id: str,
        minority: Callable[[Activation], PartitionError | Degraded | None],
    ) -> None:
        self._host = host
        self._copy = copy
        self._node_id = node_id
        self._minority = minority
        self.dedup = host.dedup
        self.guard = host.guard

    @property
    def owner_key(self) -> bytes | None:
        return self._host.owner_key

    @property
    def replies(self) -> Any:
        return self._host.replies

    async def dispatch(self, act: Activation, msg: Any) -> Outcome:
        answer = self._minority(act)
        if isinstance(answer, PartitionError):  # pause_minority: as the primary answers there
            self._host.replies.refuse(act, msg, answer.code, answer.message, details=answer.details)
            return _NOT_RUN
        outcome = await self._host.dispatch(act, msg)
        reply = outcome.reply
        if reply is not None and reply[0] in (envelope.OK_HEADER_BLOCK, envelope.OK_DEFLATE_BLOCK):
            copy = self._copy
            extra = {h.REPLICA: self._node_id, h.REPLICA_LAG: str(int(copy.lag() * 1000))}
            if answer is DEGRADED:  # continue_degraded: its last known state, flagged
                extra[h.DEGRADED] = "1"
            block = versioned_block(reply[0], copy.version, extra)
            outcome = outcome._replace(reply=(block, reply[1]))
        return outcome

    def replay(self, act: Activation, msg: Inbound) -> None:
        """A replay question that reached this replica (the read subject is one queue group
        with the primary's): answered from what this copy ran (protocol §7.5: an id it
        never ran is ``unavailable`` + retry, "unknown"). A replica has no lease to wait for."""
        self._host.replies.replay(act, msg)

    def hold(self, act: Activation, msg: Inbound) -> None:
        """Never asked: a replica holds no claim whose ownership is checked."""
        self._host.replies.refuse_waiting(act, msg, f"{act.address}: this read replica cannot hold messages")

    async def save_state(self, act: Activation) -> None:
        return None  # a replica never stores


class _Replica:
    """One read replica on this node."""

    def __init__(self, cls: type[Agent], agent_id: str, owner: str) -> None:
        self.cls = cls
        self.kind = cls.kind
        self.agent_id = agent_id
        self.owner = owner
        self.act: Activation | None = None
        self.subscription: Subscription | None = None
        self.task: asyncio.Task[None] | None = None
        self.version = 0  # the state revision this replica holds
        self.latest = 0  # the newest revision it has heard of
        self.behind_since: float | None = None  # monotonic: when it first heard of a newer one
        self.updated_at = 0.0
        self.changed = asyncio.Event()
        self.held = False  # updates held back (``Replicas.hold``)
        self.held_entries: list[Any] = []

    def lag(self) -> float:
        """Seconds since this replica first knew of a newer version than it holds (0: current)."""
        since = self.behind_since
        return 0.0 if since is None else time.monotonic() - since

    def heard_of(self, version: int) -> None:
        if version > self.latest:
            self.latest = version
        if self.latest > self.version and self.behind_since is None:
            self.behind_since = time.monotonic()

    def applied(self, version: int) -> None:
        self.version = max(self.version, version)
        self.updated_at = time.monotonic()
        if self.version >= self.latest:
            self.latest = self.version
            self.behind_since = None
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class Replicas:
    """Read replicas held by this node, the read subjects of its primaries, and state
    versions on replies (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        host: Host,
        directory: Directory,
        state: StateStore,
        membership: Membership,
        *,
        prefix: str,
        node_id: str,
        metrics: Metrics,
        tasks: TaskGroup,
        partition: PartitionMonitor | None = None,
    ) -> None:
        self._t = transport
        self._partition = partition
        self._host = host
        self._directory = directory
        self._state = state
        self._membership = membership
        self._prefix = prefix
        self._node_id = node_id
        self._metrics = metrics
        self._tasks = tasks
        self._replicas: dict[tuple[str, str], _Replica] = {}
        self._primary_subs: dict[tuple[str, str], tuple[Activation, Subscription]] = {}
        self._ring: tuple[frozenset[str], HashRing] | None = None  # the last ring built
        self._dirty: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._closing = False

    # -- versions on replies ------------------------------------------------------------

    @staticmethod
    def versioned(cls: type[Agent]) -> bool:
        return cls.consistency == "session" or cls.read_replicas > 0

    def reply_block(self, act: Activation, block: bytes) -> bytes:
        """The ok reply block of a primary: with ``Na-State-Version`` for versioned kinds."""
        own = act.cluster
        if own is None or not self.versioned(type(act.agent)):
            return block
        return versioned_block(block, own.revision)

    # -- the primary's read subject -------------------------------------------------------

    async def primary_starting(self, act: Activation) -> None:
        """Subscribe the read subject of a new primary of a kind with read replicas."""
        cls = type(act.agent)
        key = (act.kind, act.agent_id)
        if cls.read_replicas <= 0:
            return
        stale = self._primary_subs.pop(key, None)
        if stale is not None:  # an earlier activation's, not unsubscribed yet
            with contextlib.suppress(NatsAgentsError):
                await stale[1].unsubscribe()
        subject = read_subject(self._prefix, act.kind, act.agent_id)
        inbox = agent_subject(self._prefix, act.kind, act.agent_id)

        def on_read(msg: Inbound) -> None:
            if min_version(msg.headers) is None:
                self._host.replies.refuse(act, msg, BAD_REQUEST, f"{h.MIN_VERSION} must be 1-19 digits")
                return
            act.deliver(_Renamed(inbox, msg.reply, msg.data, msg.headers))  # the primary has every version

        sub = await self._t.subscribe(subject, on_read, queue=read_queue(self._prefix), service=True)
        self._primary_subs[key] = (act, sub)

    async def primary_stopped(self, act: Activation) -> None:
        key = (act.kind, act.agent_id)
        held = self._primary_subs.get(key)
        if held is None or held[0] is not act:
            return  # not this activation's (a newer one of the same agent subscribed)
        del self._primary_subs[key]
        with contextlib.suppress(NatsAgentsError):
            await held[1].unsubscribe()

    # -- which replicas this node holds ---------------------------------------------------

    def on_directory_change(self, key: tuple[str, str], claim: Claim | None, revision: int = 0) -> None:
        cls = self._host.kinds.get(key[0])
        if cls is None or cls.read_replicas <= 0:
            return
        self._dirty.add(key)
        self._wake.set()

    async def run(self) -> None:
        """Keep the replicas this node should hold (the node's task group runs it)."""
        next_sweep = 0.0
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SWEEP_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            keys = self._dirty
            self._dirty = set()
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + _SWEEP_INTERVAL
                kinds = {k for k, cls in self._host.kinds.items() if cls.read_replicas > 0}
                if kinds:
                    keys |= {
                        (c.record.kind, c.record.agent_id) for c in self._directory.claims() if c.record.kind in kinds
                    }
                keys |= set(self._replicas)
            for key in keys:
                try:
                    await self._reconcile(key)
                except Exception as exc:  # one agent's trouble never stops the others'
                    log.warning("replica of %s/%s: %s", key[0], key[1], exc)
            self._gauges()

    def _wanted(self, cls: type[Agent], agent_id: str, owner: str) -> bool:
        members = self._membership.members()
        live = [n for n, rec in members.items() if cls.kind in rec.kinds and n != owner]
        if self._node_id not in live:
            return False
        names = frozenset(live)
        if self._ring is None or self._ring[0] != names:
            self._ring = (names, HashRing(sorted(names)))
        ring = self._ring[1]
        return self._node_id in ring.preference(agent_key(cls.kind, agent_id))[: cls.read_replicas]

    def _cut_off(self) -> bool:
        """Whether this node is on the minority side or its view of the members is not to
        be trusted: it keeps the replicas it holds (their reads follow the kind's
        ``partition_strategy``, ``cluster.minority``) instead of dropping them because
        the others, or itself, look lapsed from here."""
        partition = self._partition
        if partition is not None and partition.state.minority:
            return True
        return not self._membership.view_trusted()

    async def _reconcile(self, key: tuple[str, str]) -> None:
        kind, agent_id = key
        cls = self._host.kinds.get(kind)
        record = self._directory.lookup(kind, agent_id)
        current = self._replicas.get(key)
        wanted = (
            not self._closing
            and cls is not None
            and cls.read_replicas > 0
            and record is not None
            and record.node != self._node_id
            and self._wanted(cls, agent_id, record.node)
        )
        if not wanted:
            if current is not None and not (record is not None and record.node != self._node_id and self._cut_off()):
                await self._stop(current)
            return
        assert cls is not None and record is not None
        if current is not None:
            current.owner = record.node
            return
        copy = self._replicas[key] = _Replica(cls, agent_id, record.node)
        copy.task = self._tasks.spawn(self._follow(copy), name=f"replica {kind}/{agent_id}")

    async def _follow(self, copy: _Replica) -> None:
        """Watch the agent's state record; serve the read subject once it is loaded. A
        watch that fails while this node is cut off (``_cut_off``) is started again, with
        backoff, and the replica keeps serving what it holds meanwhile (its reads follow
        the kind's ``partition_strategy``); otherwise the replica stops."""
        delay = 0.1
        while True:
            try:
                async with self._state.bucket.watch(agent_key(copy.kind, copy.agent_id)) as watch:
                    async for entry in watch:
                        delay = 0.1
                        if entry is None:  # the current value is loaded (or there is none)
                            if copy.subscription is None:
                                await self._serve(copy)
                            continue
                        copy.heard_of(entry.revision)
                        if copy.held:
                            copy.held_entries.append(entry)
                            continue
                        self._apply(copy, entry)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if copy.subscription is not None and self._cut_off():
                    log.info("replica of %s/%s: state watch lost while cut off (%s)", copy.kind, copy.agent_id, exc)
                    await asyncio.sleep(delay)  # backoff before watching again
                    delay = min(delay * 2, 2.0)
                    continue
                log.warning("replica of %s/%s stopped: %s", copy.kind, copy.agent_id, exc)
                self._replicas.pop((copy.kind, copy.agent_id), None)
                await self._unsubscribe(copy)
                return

    def _apply(self, copy: _Replica, entry: Any) -> None:
        agent = self._activation(copy).agent
        if entry.operation == "put":
            try:
                stored = StateStore.parse(entry.value)
            except NatsAgentsError as exc:
                # Not applied: the replica stays behind (its lag shows), sessions go to the primary.
                log.warning("replica of %s/%s: ignoring revision %d: %s", copy.kind, copy.agent_id, entry.revision, exc)
                return
            try:
                if stored.empty:
                    agent.state = agent.initial_state()
                else:
                    agent.restore(stored.data)
            except Exception as exc:
                log.warning("replica of %s/%s: restore failed: %s", copy.kind, copy.agent_id, exc)
                return  # as above: behind, not wrong
        copy.applied(entry.revision)

    def _activation(self, copy: _Replica) -> Activation:
        """The replica's agent instance and mailbox (made on its first state)."""
        if copy.act is None:
            agent = copy.cls()
            services = _ReplicaServices(self._host, copy, self._node_id, self._minority)
            copy.act = Activation(services, agent, copy.agent_id)
            agent._bind(copy.agent_id, self._host.refs_for, copy.act)
        return copy.act

    def _minority(self, act: Activation) -> PartitionError | Degraded | None:
        return minority_answer(self._partition, act, self._node_id, self._membership.lease)

    async def _serve(self, copy: _Replica) -> None:
        act = self._activation(copy)
        act.state = ActivationState.ACTIVE
        subject = read_subject(self._prefix, copy.kind, copy.agent_id)
        copy.subscription = await self._t.subscribe(
            subject, lambda msg: self._on_read(copy, msg), queue=read_queue(self._prefix), service=True
        )
        self._gauges()

    def _on_read(self, copy: _Replica, msg: Inbound) -> None:
        act = copy.act
        if act is None or act.state is not ActivationState.ACTIVE:
            self._forward(copy, msg, "forwarded")
            return
        floor = min_version(msg.headers)
        if floor is None:
            self._metrics.replica_reads.labels(copy.kind, "refused").inc()
            self._host.replies.refuse(act, msg, BAD_REQUEST, f"{h.MIN_VERSION} must be 1-19 digits")
            return
        action = msg.headers.get(h.ACTION) if msg.headers is not None else None
        spec = copy.cls.__actions__.get(action) if action is not None else None
        if spec is None or not spec.read_only:
            self._forward(copy, msg, "forwarded")  # a write (or nonsense): the primary answers
            return
        inbox = agent_subject(self._prefix, copy.kind, copy.agent_id)
        renamed = _Renamed(inbox, msg.reply, msg.data, msg.headers)
        if floor > copy.version:
            copy.heard_of(floor)
            if copy.lag() >= copy.cls.session_wait:  # behind for a while already: do not wait
                self._forward(copy, msg, "forwarded")
            else:
                self._tasks.spawn(self._wait_then_serve(copy, renamed, floor))
            return
        self._metrics.replica_reads.labels(copy.kind, "served").inc()
        act.deliver(renamed)

    async def _wait_then_serve(self, copy: _Replica, msg: _Renamed, floor: int) -> None:
        deadline = time.monotonic() + copy.cls.session_wait
        while copy.version < floor:
            left = deadline - time.monotonic()
            if left <= 0:
                self._forward(copy, msg, "forwarded")
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await copy.changed.wait()
        act = copy.act
        if act is None or act.state is not ActivationState.ACTIVE:
            self._forward(copy, msg, "forwarded")
            return
        self._metrics.replica_reads.labels(copy.kind, "waited").inc()
        act.deliver(msg)

    def _forward(self, copy: _Replica, msg: Inbound, outcome: str) -> None:
        """Hand ``msg`` to the primary unchanged (same reply subject: it answers the caller)."""
        self._metrics.replica_reads.labels(copy.kind, outcome).inc()
        subject = agent_subject(self._prefix, copy.kind, copy.agent_id)

        async def forward() -> None:
            try:
                await self._t.publish(subject, msg.data, headers=msg.headers or {}, reply=msg.reply)
            except (NatsAgentsError, ValueError, TypeError) as exc:
                log.debug("forwarding a read of %s/%s failed: %s", copy.kind, copy.agent_id, exc)

        self._tasks.spawn(forward())

    async def _unsubscribe(self, copy: _Replica) -> None:
        sub, copy.subscription = copy.subscription, None
        if sub is not None:
            with contextlib.suppress(NatsAgentsError):
                await sub.unsubscribe()

    async def _stop(self, copy: _Replica) -> None:
        self._replicas.pop((copy.kind, copy.agent_id), None)
        await self._unsubscribe(copy)
        task = copy.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        act = copy.act
        if act is not None:
            act.state = ActivationState.STOPPING
            with contextlib.suppress(Exception):
                await asyncio.wait_for(act.wait_idle(), 5.0)
            act.state = ActivationState.STOPPED
        self._gauges()

    def _gauges(self) -> None:
        counts: dict[str, int] = {}
        lags: dict[str, float] = {}
        for copy in self._replicas.values():
            if copy.subscription is not None:
                counts[copy.kind] = counts.get(copy.kind, 0) + 1
            lags[copy.kind] = max(lags.get(copy.kind, 0.0), copy.lag())
        for kind, cls in self._host.kinds.items():
            if cls.read_replicas > 0:
                self._metrics.read_replicas.labels(kind).set(counts.get(kind, 0))
                self._metrics.replica_lag.labels(kind).set(lags.get(kind, 0.0))

    # -- inspection and control -----------------------------------------------------------

    def held(self) -> list[str]:
        """``Kind/id`` of the replicas this node serves."""
        return sorted(f"{k}/{i}" for (k, i), c in self._replicas.items() if c.subscription is not None)

    def lag(self, kind: str, agent_id: str) -> dict[str, Any] | None:
        """The replica of ``kind/agent_id`` here: the version it holds, the newest it has
        heard of, seconds it has known of a newer one, seconds since its last update;
        ``None`` when this node holds none."""
        copy = self._replicas.get((kind, agent_id))
        if copy is None:
            return None
        return {
            "version": copy.version,
            "latest": copy.latest,
            "lag": copy.lag(),
            "since_update": time.monotonic() - copy.updated_at if copy.updated_at else None,
            "owner": copy.owner,
            "serving": copy.subscription is not None,
        }

    def hold(self, kind: str, agent_id: str, held: bool) -> None:
        """Hold back (``True``) or release the state updates of the replica of
        ``kind/agent_id`` here: it keeps serving what it holds, and its lag shows. For
        tests and for an operator who wants a frozen copy.

        Raises:
            KeyError: no replica of that agent here."""
        copy = self._replicas[(kind, agent_id)]
        copy.held = held
        if not held:
            entries, copy.held_entries = copy.held_entries, []
            for entry in entries:
                self._apply(copy, entry)

    async def close(self) -> None:
        """Stop every replica and primary read subscription of this node."""
        self._closing = True
        self._wake.set()
        for copy in list(self._replicas.values()):
            await self._stop(copy)
        for _, sub in list(self._primary_subs.values()):
            with contextlib.suppress(NatsAgentsError):
                await sub.unsubscribe()
        self._primary_subs.clear()
