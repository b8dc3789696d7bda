"""Membership: every node heartbeats a record into a KV bucket; everyone watches it.

A node is *live* while heartbeats keep arriving. Liveness is judged on the observer's own
monotonic clock (when did I last see this node's record change?), never by comparing
wall clocks across machines; only records already present when the watch starts fall
back to their age, the larger of the server's store time and the record's own
``heartbeat_at`` (bounded by clock skew). A graceful stop deletes the record, so others
see the node leave within :data:`LEAVE_GRACE` of our lease; a crashed node's lease lapses
after ``lease`` seconds.

Records are not trusted (``records``): a malformed one, or one stored under another
node's key, is ignored (the node's last valid record keeps ageing), and the lease a record
claims counts for at least this node's own lease and at most ``MAX_LEASE_FACTOR`` (2) times
it, so a record written once and never again (a forged "phantom" member) lapses within
twice our lease whatever it claims, and a live node's record rewritten with a lease of 0
does not lapse it at once. Honest nodes heartbeat every ``lease / 3``, so a cluster whose
nodes use leases up to about 5 times ours still sees them live. A deletion is not trusted
at once either (anyone with write access to the bucket can delete a live node's record,
and its agents would be taken over while it still runs them): the node counts as live
for :data:`LEAVE_GRACE` of our lease more, unless a heartbeat comes. A node that sees its
own record deleted, garbled or rewritten by someone else writes a heartbeat at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError, NatsAgentsError
from ..tasks import TaskGroup
from ..transport import Transport
from ..transport.kv import Bucket, Entry, open_bucket, validate_key
from ..wire import codec
from ..wire.ids import validate_kind
from ..wire.subjects import bucket_name
from . import records
from .placement import Resources

__all__ = ["MemberRecord", "Membership"]

log = logging.getLogger("natsagents.cluster.membership")

#: Fraction of our lease a node whose record was deleted still counts as live (a node that
#: left released its agents first; a live node's record deleted by someone else is written
#: again by its next heartbeat, at once when it sees the deletion).
LEAVE_GRACE = 0.5


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """What a node says about itself in each heartbeat."""

    node_id: str
    kinds: tuple[str, ...] = ()
    capacity: Mapping[str, Any] = field(default_factory=dict)
    load: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    version: str = ""
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    lease: float = 3.0
    draining: bool = False
    weight: float = 1.0
    #: Most agents the node hosts at once (``Mesh.connect(max_agents=)``); ``None``: no cap.
    max_agents: int | None = None

    def to_wire(self) -> bytes:
        body: dict[str, Any] = {
            "node": self.node_id,
            "kinds": list(self.kinds),
            "capacity": dict(self.capacity),
            "load": dict(self.load),
            "tags": list(self.tags),
            "version": self.version,
            "started_at": self.started_at,
            "heartbeat_at": self.heartbeat_at,
            "lease": self.lease,
            "draining": self.draining,
            "weight": self.weight,
        }
        if self.max_agents is not None:
            body["max_agents"] = self.max_agents
        return codec.encode(body)

    @classmethod
    def from_wire(cls, data: bytes, *, key: str | None = None) -> MemberRecord:
        """Parse and validate a heartbeat record (see ``records``): every field of the
        right type and range, and, with ``key``, the node id equal to the key it is
        stored under.

        Raises:
            ValueError: anything that is not a valid membership record.
        """
        body = records.mapping(codec.decode(data), "membership record")
        node = records.node_id(body.get("node"))
        if key is not None and node != key:
            raise records.Malformed(f"record of node {node!r} stored under {key!r}")
        capacity = records.mapping(body.get("capacity") or {}, "capacity")
        records.checked("capacity", Resources.from_wire, capacity)
        load = records.mapping(body.get("load") or {}, "load")
        for name in ("agents", "mailbox_backlog", "queued"):
            if name in load:
                records.counter(load[name], f"load.{name}")
        for name in ("cpu", "memory", "network"):
            if name in load:
                records.number(load[name], f"load.{name}", hi=1.0)
        records.checked("load.reserved", Resources.from_wire, load.get("reserved"))
        max_agents = body.get("max_agents")
        return cls(
            node_id=node,
            kinds=tuple(
                records.checked("kinds", validate_kind, k) for k in records.strings(body.get("kinds", ()), "kinds")
            ),
            capacity=dict(capacity),
            load=dict(load),
            tags=records.strings(body.get("tags", ()), "tags"),
            version=records.string(body.get("version", ""), "version"),
            started_at=records.number(body.get("started_at", 0.0), "started_at"),
            heartbeat_at=records.number(body.get("heartbeat_at", 0.0), "heartbeat_at"),
            lease=records.number(body.get("lease", 3.0), "lease", open_lo=True),
            draining=records.flag(body.get("draining", False), "draining"),
            weight=records.number(body.get("weight", 1.0), "weight", hi=records.MAX_WEIGHT, open_lo=True),
            # Absent or nil (records of older nodes): no cap.
            max_agents=None if max_agents is None else records.counter(max_agents, "max_agents", lo=1),
        )


class Membership:
    """This node's heartbeat plus a live view of every member.

    Args:
        transport: the mesh's connection.
        prefix: subject prefix of the mesh (names the bucket).
        node_id: this node's id (a KV key: ``[-_=A-Za-z0-9]``…).
        describe: returns this node's current record fields (kinds, load …); called for
            every heartbeat so the load it reports is fresh.
        lease: seconds without a heartbeat after which a node counts as gone.
        interval: seconds between heartbeats (default ``lease / 3``).
    """

    def __init__(
        self,
        transport: Transport,
        prefix: str,
        node_id: str,
        *,
        describe: Callable[[], Mapping[str, Any]] | None = None,
        lease: float = 3.0,
        interval: float | None = None,
    ) -> None:
        validate_key(node_id)
        if lease <= 0:
            raise ConfigurationError("lease must be > 0")
        self._t = transport
        self.prefix = prefix
        self.node_id = node_id
        self.lease = lease
        self.interval = interval if interval is not None else lease / 3
        if not 0 < self.interval < lease:
            raise ConfigurationError("interval must be > 0 and shorter than the lease")
        self._describe = describe or dict
        self._started_at = time.time()
        self._bucket: Bucket | None = None
        self._records: dict[str, MemberRecord] = {}
        self._seen: dict[str, float] = {}  # node -> loop.time() of the last change seen
        self._revs: dict[str, int] = {}  # node -> KV revision of the last record seen
        self._left: dict[str, float] = {}  # node -> loop.time() its deleted record stops counting
        self._restoring: asyncio.Task[None] | None = None  # a heartbeat over a foreign write of ours
        # node -> (revision, loop time) of a lapse confirmed at the stream leader
        self._confirmed: dict[str, tuple[int | None, float]] = {}
        self._confirming: dict[str, tuple[int | None, asyncio.Future[bool]]] = {}
        self._tasks = TaskGroup(f"membership of {node_id}", log)
        self._changed = asyncio.Condition()
        self._ready = asyncio.Event()
        self._last_ok = 0.0
        # Our own lease, judged as conservatively as the others judge it: from the moment
        # the last heartbeat the server accepted was *sent* (they see it change later).
        self._ok_sent = 0.0
        self._gap_ended = float("-inf")
        self._gaps = 0
        self._failed_at = float("-inf")  # loop.time() of our last failed heartbeat
        self._failed_sent = float("-inf")  # loop.time() that heartbeat was sent

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the bucket, write the first heartbeat and start watching."""
        self._bucket = await open_bucket(self._t, bucket_name(self.prefix, "members"), history=1)
        # The first heartbeat gets the start's budget, not one interval: a bucket another node
        # created a moment before, or whose stream leader is still being elected, may not
        # serve its subjects yet ("no responders").
        await self._beat(timeout=max(5.0, self.lease))
        self._tasks.spawn(self._heartbeats(), name="heartbeats")
        self._tasks.spawn(self._watch(), name="membership watch")
        await asyncio.wait_for(self._ready.wait(), max(5.0, self.lease))

    async def stop(self, *, leave: bool = True) -> None:
        """Stop heartbeating; with ``leave`` delete the record so others see us go at once."""
        await self._tasks.aclose()
        if leave and self._bucket is not None:
            with contextlib.suppress(NatsAgentsError):
                await self._bucket.delete(self.node_id)

    # -- view ------------------------------------------------------------------------

    def members(self) -> dict[str, MemberRecord]:
        """Live members (this node included while it heartbeats), by node id."""
        now = asyncio.get_running_loop().time()
        return {
            node: rec
            for node, rec in self._records.items()
            if now - self._seen.get(node, float("-inf")) <= self._lease_of(rec)
        }

    def _lease_of(self, rec: MemberRecord) -> float:
        """The lease a record counts for: what it claims, within [our lease, twice it]."""
        return min(max(rec.lease, self.lease), records.MAX_LEASE_FACTOR * self.lease)

    def is_live(self, node_id: str) -> bool:
        return node_id in self.members()

    def known(self) -> set[str]:
        """Every node with a valid record in our view, live or lapsed (a node that left
        deleted its record)."""
        return set(self._records) - set(self._left)

    async def wait_until(self, predicate: Callable[[dict[str, MemberRecord]], bool], timeout: float) -> None:
        """Wait until ``predicate(members())`` holds (re-checked on every change and every
        ``interval``, so lapsed leases are noticed). Raises: TimeoutError."""
        async with asyncio.timeout(timeout):
            while not predicate(self.members()):
                await self.changed(self.interval)

    def own_record(self) -> MemberRecord:
        """This node's record as its next heartbeat would write it."""
        return self._record()

    async def changed(self, timeout: float) -> None:
        """Wait until the next membership event (a heartbeat, join or leave) or ``timeout``."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
        # arrives as the inner wait completes, and the cancelled task would loop on.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait()

    async def beat_now(self) -> None:
        """Publish a heartbeat at once (after a change others must see soon: draining,
        new kinds)."""
        await self._beat()

    @property
    def last_beat_ok(self) -> float:
        """``loop.time()`` of the last heartbeat the server accepted."""
        return self._last_ok

    @property
    def last_beat_failed(self) -> bool:
        """Whether our latest heartbeat attempt to end failed (none stored since)."""
        return self._failed_at > self._last_ok

    @property
    def failed_sent(self) -> float:
        """``loop.time()`` when the latest heartbeat that failed was sent (``-inf``: none)."""
        return self._failed_sent

    # -- our own lease ---------------------------------------------------------------

    def own_lease_left(self) -> float:
        """Seconds our lease still holds in every observer's view: from the sending of
        the last heartbeat the server accepted (observers see it change later, so they
        count from later). At or below 0 others may judge us lapsed and take our agents
        over: a node must not serve them then (a paused or cut-off process)."""
        return self._ok_sent + self.lease - asyncio.get_running_loop().time()

    @property
    def gaps(self) -> int:
        """How many times our lease lapsed: an accepted heartbeat acknowledged more than a
        lease after the sending of the one before (the others may have seen none for that
        long). A node re-verifies every claim it held before a gap."""
        return self._gaps

    def view_trusted(self) -> bool:
        """Whether our view of the others' liveness can be acted on: our lease holds, a
        whole lease passed since our last gap ended (one where we sent no heartbeat for a
        lease) and since our last heartbeat failed.
        After a pause or a cut, the others' records look old until their next
        heartbeats reach us; while the KV refuses writes (a leader election, the
        step-downs after a partition heals) the others' heartbeats fail as ours do.
        Judging them lapsed then would take agents from live owners."""
        now = asyncio.get_running_loop().time()
        return (
            self._ok_sent + self.lease > now
            and now - self._gap_ended >= self.lease
            and now - self._failed_at >= self.lease
        )

    async def confirm_lapsed(self, node_id: str, *, timeout: float | None = None) -> bool:
        """Whether ``node_id``'s lease has lapsed, on fresh evidence: it is not live in
        our view, our view is trusted, and the stream leader holds the very record
        (revision) our view last saw of it (or none). Our view judges the lease on our
        own clock from when we saw that record; a newer revision at the leader is a
        heartbeat our watch has not delivered yet (we were cut off, it lags): the node
        is live. Any failure to read the leader (we are on a minority side, no leader
        yet) is no evidence: ``False``. A takeover must hold this (``Directory.claim``).

        Concurrent checks of one node share one read, and a confirmation holds for that
        revision for a lease (a node failing takes its agents over in one read, not one
        per agent): an owner that lapsed stopped serving, and whatever it writes next
        makes it re-verify its claims first (``gaps``)."""
        if node_id == self.node_id or self.is_live(node_id) or not self.view_trusted():
            return False
        seen = self._revs.get(node_id)
        now = asyncio.get_running_loop().time()
        confirmed = self._confirmed.get(node_id)
        if confirmed is not None and confirmed[0] == seen and now - confirmed[1] < self.lease:
            return True
        check = self._confirming.get(node_id)
        if check is None or check[0] != seen:
            task = asyncio.ensure_future(self._read_lapse(node_id, seen, timeout))
            check = self._confirming[node_id] = (seen, task)
            task.add_done_callback(lambda done: self._forget_check(node_id, done))
        if not await asyncio.shield(check[1]):
            return False
        self._confirmed[node_id] = (seen, now)
        return not self.is_live(node_id) and self.view_trusted()

    def _forget_check(self, node_id: str, done: asyncio.Future[bool]) -> None:
        check = self._confirming.get(node_id)
        if check is not None and check[1] is done:
            del self._confirming[node_id]

    async def _read_lapse(self, node_id: str, seen: int | None, timeout: float | None) -> bool:
        try:
            entry = await self.bucket.get(node_id, leader=True, timeout=timeout or self.lease)
        except NatsAgentsError as exc:
            log.info("cannot confirm that %s lapsed: %s", node_id, exc)
            return False
        if entry is None:
            return True  # left (its record deleted) or never joined
        if seen is None or entry.revision != seen:
            log.info("%s is not lapsed: the leader holds revision %d, our view %s", node_id, entry.revision, seen)
            return False
        return True

    @property
    def bucket(self) -> Bucket:
        if self._bucket is None:
            raise NatsAgentsError("membership is not started")
        return self._bucket

    async def wait_own_lease(self, timeout: float) -> bool:
        """Wait until our lease holds again (a heartbeat accepted); ``False`` on timeout."""
        end = asyncio.get_running_loop().time() + max(0.0, timeout)
        while self.own_lease_left() <= 0:
            left = end - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            await asyncio.sleep(min(0.01, left))
        return True

    # -- internals -------------------------------------------------------------------

    def _record(self) -> MemberRecord:
        fields = dict(self._describe())
        return MemberRecord(
            node_id=self.node_id,
            kinds=tuple(fields.get("kinds", ())),
            capacity=fields.get("capacity", {}),
            load=fields.get("load", {}),
            tags=tuple(fields.get("tags", ())),
            version=str(fields.get("version", "")),
            started_at=self._started_at,
            heartbeat_at=time.time(),
            lease=self.lease,
            draining=bool(fields.get("draining", False)),
            weight=float(fields.get("weight", 1.0)),
            max_agents=fields.get("max_agents"),
        )

    async def _beat(self, timeout: float | None = None) -> None:
        assert self._bucket is not None
        loop = asyncio.get_running_loop()
        sent = loop.time()
        await self._bucket.put(self.node_id, self._record().to_wire(), timeout=timeout or self.interval)
        now = self._last_ok = loop.time()
        if self._ok_sent and sent > self._ok_sent and now - self._ok_sent > self.lease:
            # Our lease lapsed in between (paused, cut off, KV unavailable): others may
            # have taken our agents; their owners re-verify before serving (ownership.py).
            # Judged by when the server had it at the latest (now), not when it was sent:
            # heartbeats held by a cut reach the server together when it heals, each
            # sent less than a lease after the last, while the others saw none for longer.
            # (A slow acknowledgement also counts: one re-read per agent, never a stale copy.)
            self._gaps += 1
            if sent - self._ok_sent > self.lease:
                # Surely a gap (we sent nothing for a lease): our view of the others is
                # stale too, not to be trusted for a lease (view_trusted).
                self._gap_ended = now
            gap = now - self._ok_sent
            log.warning("%s: no heartbeat stored for %.1f s (lease %.1f s)", self.node_id, gap, self.lease)
        self._ok_sent = max(self._ok_sent, sent)

    async def _heartbeats(self) -> None:
        # One beat every interval, whatever the previous one's fate: a put slowed down by a
        # loaded server may take longer than an interval and still land (it then counts
        # from when it was sent), and must not delay the next one. At most 3 in flight.
        inflight: set[asyncio.Task[None]] = set()
        while True:
            await asyncio.sleep(self.interval)
            if len(inflight) >= 3:
                continue
            task = self._tasks.spawn(self._beat_once(), name="heartbeat")
            inflight.add(task)
            task.add_done_callback(inflight.discard)

    async def _beat_once(self) -> None:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            await self._beat(timeout=self.lease)
        except NatsAgentsError as exc:  # keep trying: a lapse is the others' call
            self._failed_at = loop.time()
            self._failed_sent = max(self._failed_sent, sent)
            log.warning("heartbeat of %s failed: %s", self.node_id, exc)

    def _restore_own(self) -> None:
        """Our record was deleted, garbled or rewritten by someone else: heartbeat now."""
        if self._restoring is None or self._restoring.done():
            log.warning("%s: its membership record was changed by someone else: heartbeat at once", self.node_id)
            self._restoring = self._tasks.spawn(self._beat_once(), name="heartbeat over a foreign write")

    async def _watch(self) -> None:
        assert self._bucket is not None
        loop = asyncio.get_running_loop()
        async with self._bucket.watch() as watch:
            async for entry in watch:
                if entry is None:
                    self._ready.set()
                else:
                    self._apply(entry, loop.time(), initial=not self._ready.is_set())
                async with self._changed:
                    self._changed.notify_all()

    def _apply(self, entry: Entry, now: float, *, initial: bool) -> None:
        key = entry.key
        for gone in [k for k, until in self._left.items() if until < now]:
            del self._left[gone]
            self._records.pop(gone, None)
            self._seen.pop(gone, None)
        if entry.operation != "put":
            self._revs.pop(key, None)
            if key == self.node_id and not initial:
                self._restore_own()
            before = self._records.get(key)
            if before is not None and key not in self._left:
                # Left, or deleted by someone else while it runs: live for a grace more.
                grace = LEAVE_GRACE * self.lease
                self._left[key] = now + grace
                lease = self._lease_of(before)
                self._seen[key] = min(self._seen.get(key, now), now - lease + grace)
            return
        self._revs[key] = entry.revision  # garbage too: a takeover compares revisions
        try:
            rec = MemberRecord.from_wire(entry.value, key=key)
        except ValueError as exc:
            # Not a heartbeat: the node's last valid record (if any) keeps ageing.
            records.garbage(log, "membership record", key, exc)
            if key == self.node_id and not initial:
                self._restore_own()
            return
        if key == self.node_id and not initial and (rec.started_at != self._started_at or rec.lease != self.lease):
            self._restore_own()  # not a heartbeat of ours: what others read of us is ours again at once
        self._left.pop(key, None)
        self._records[key] = rec
        if not initial:
            self._seen[entry.key] = now
            return
        # Records present before we started: trust their age, by the server's clock when
        # it is known and by the record's own claim, whichever is older (wall clocks,
        # bounded skew); a claim from the future is not used.
        wall = time.time()
        age = 0.0
        if entry.created is not None:
            age = wall - entry.created
        if rec.heartbeat_at > wall + records.CLOCK_SKEW:
            records.garbage(log, "heartbeat time", entry.key, f"{rec.heartbeat_at - wall:.0f} s in the future")
        else:
            age = max(age, wall - rec.heartbeat_at)
        self._seen[entry.key] = now - max(0.0, age)
