"""The directory: one KV record per active agent, claimed by compare-and-set.

A record says which node owns ``kind/id``, under which *epoch*, and in which status.
Claims use create-if-absent; taking over from another owner is a compare-and-set on the
record's revision and is allowed only when the caller says that owner is no longer live
(its membership lease lapsed) and, in a cluster node, confirms it at the stream leader
(``Membership.confirm_lapsed``). Reads that decide (the record a claim is based on,
``verify``) go to the stream leader; ``get`` and the cache may lag. Every takeover
increments the epoch, the fencing token: an owner that was paused or partitioned and
comes back finds a different revision/epoch and must stop its copy (state writes fenced by
the same revision arrive with the state layer).

Records are validated on every read (``DirectoryRecord.from_wire``; the kind and id must
match the key). A record that fails is treated as an orphan: the cache drops it, ``get``
returns ``None`` and ``claim`` replaces it by a compare-and-set on its revision, as over
a lapsed owner. A record whose owner is not a live member is an orphan as well (the
membership view bounds how long any record, forged or not, counts as live).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..agent.base import RESTART_POLICIES
from ..errors import NatsAgentsError
from ..tasks import TaskGroup
from ..transport import Transport
from ..transport.kv import Bucket, CasConflict, Entry, open_bucket
from ..wire import codec
from ..wire.ids import MAX_ID_CHARS, agent_key, encode_id, parse_agent_key, validate_kind
from ..wire.subjects import bucket_name
from . import records
from .placement import Hints, Resources

__all__ = ["AgentActiveElsewhere", "Claim", "Directory", "DirectoryRecord", "Status"]

log = logging.getLogger("natsagents.cluster.directory")


class Status(enum.Enum):
    ACTIVATING = "activating"
    ACTIVE = "active"
    MIGRATING = "migrating"
    STOPPING = "stopping"


class AgentActiveElsewhere(NatsAgentsError):
    """The agent is owned by another live node."""

    def __init__(self, message: str, *, agent: str, owner: str, epoch: int) -> None:
        super().__init__(message)
        self.agent = agent
        self.owner = owner
        self.epoch = epoch


@dataclass(frozen=True, slots=True)
class DirectoryRecord:
    """One active agent: its owner node, the owner's epoch and status, plus what a
    re-placement needs (restart policy, reserved resources and hints, as wire maps)."""

    kind: str
    agent_id: str
    node: str
    epoch: int
    status: Status
    since: float
    restart: str = "transient"
    needs: Mapping[str, Any] = field(default_factory=dict)
    hints: Mapping[str, Any] = field(default_factory=dict)
    #: The epoch at which this line of ownership began (a first claim or a takeover; a
    #: migration keeps it): the owner subscribes the agent's inbox in queue group
    #: ``<prefix>.agents.<group>`` (``<prefix>.agents`` for 0, records of older
    #: versions), so a lapsed owner's subscription that the server still holds (a paused
    #: or cut-off process) never shares a queue group with the new owner's.
    group: int = 0

    @property
    def address(self) -> str:
        return f"{self.kind}/{self.agent_id}"

    def to_wire(self) -> bytes:
        body: dict[str, Any] = {
            "kind": self.kind,
            "id": self.agent_id,
            "node": self.node,
            "epoch": self.epoch,
            "status": self.status.value,
            "since": self.since,
            "restart": self.restart,
        }
        if self.needs:
            body["needs"] = dict(self.needs)
        if self.hints:
            body["hints"] = dict(self.hints)
        if self.group:
            body["group"] = self.group
        return codec.encode(body)

    def with_(self, **changes: Any) -> DirectoryRecord:
        return replace(self, **changes)

    @classmethod
    def from_wire(cls, data: bytes, *, key: str | None = None) -> DirectoryRecord:
        """Parse and validate a directory record (see ``records``): a valid kind, id and
        node id, an epoch in ``[1, 2**53]``, a known status and restart policy, needs and
        hints that parse; with ``key``, the kind and id must be the ones of the key.

        Raises:
            ValueError: anything that is not a valid directory record.
        """
        body = records.mapping(codec.decode(data), "directory record")
        kind = records.checked("kind", validate_kind, body.get("kind"))
        agent_id = body.get("id")
        if key is not None and records.checked("id", agent_key, kind, agent_id) != key:
            raise records.Malformed(f"record of {kind}/{agent_id!r} stored under {key!r}")
        agent_id = records.string(agent_id, "id", max_len=MAX_ID_CHARS)
        records.checked("id", encode_id, agent_id)
        restart = body.get("restart", "transient")
        if restart not in RESTART_POLICIES:
            raise records.Malformed(f"restart must be one of {RESTART_POLICIES}")
        needs = records.mapping(body.get("needs") or {}, "needs")
        records.checked("needs", Resources.from_wire, needs)
        hints = records.mapping(body.get("hints") or {}, "hints")
        records.checked("hints", Hints.from_wire, hints)
        epoch = records.counter(body.get("epoch"), "epoch", lo=1)
        group = records.counter(body.get("group", 0), "group")
        if group > epoch:
            raise records.Malformed(f"group {group} is above the epoch {epoch}")
        return cls(
            kind=kind,
            agent_id=agent_id,
            node=records.node_id(body.get("node")),
            epoch=epoch,
            status=records.checked("status", Status, body.get("status")),
            since=records.number(body.get("since", 0.0), "since"),
            restart=restart,
            needs=dict(needs),
            hints=dict(hints),
            group=group,
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """Proof of ownership: the record as written and its KV revision (the fencing token)."""

    record: DirectoryRecord
    revision: int
    taken_over: bool = False  # this claim replaced a lapsed owner: fence its state writes


class Directory:
    """Claims, releases and a watch-fed cache of the directory bucket.

    Args:
        transport: the mesh's connection.
        prefix: subject prefix of the mesh (names the bucket).
    """

    def __init__(self, transport: Transport, prefix: str) -> None:
        self._t = transport
        self.prefix = prefix
        self._bucket: Bucket | None = None
        self._cache: dict[tuple[str, str], tuple[DirectoryRecord, int]] = {}
        self._per_node: dict[str, int] = {}  # records per owner node, kept with the cache
        self._tasks = TaskGroup("directory", log)
        self._ready = asyncio.Event()
        self._listeners: list[Callable[[tuple[str, str], Claim | None, int], None]] = []

    async def start(self, *, watch: bool = True) -> None:
        self._bucket = await open_bucket(self._t, bucket_name(self.prefix, "directory"), history=1)
        if watch:
            self._tasks.spawn(self._watch(), name="directory watch")
            await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        await self._tasks.aclose()

    @property
    def bucket(self) -> Bucket:
        if self._bucket is None:
            raise NatsAgentsError("the directory is not started")
        return self._bucket

    # -- claims ----------------------------------------------------------------------

    async def claim(
        self,
        kind: str,
        agent_id: str,
        node: str,
        *,
        is_live: Callable[[str], bool],
        status: Status = Status.ACTIVE,
        attempts: int = 5,
        min_epoch: int = 1,
        restart: str = "transient",
        needs: Mapping[str, Any] | None = None,
        hints: Mapping[str, Any] | None = None,
        min_revision: int = 0,
        confirm_lapsed: Callable[[str], Awaitable[bool]] | None = None,
        fresh: bool = False,
    ) -> Claim:
        """Make ``node`` the owner of ``kind/agent_id``.

        Idempotent for the current owner (returns its claim unchanged). Takes over, with
        ``epoch + 1``, only when ``is_live(owner)`` is false and ``confirm_lapsed(owner)``
        (when given) confirms it on fresh evidence (``Membership.confirm_lapsed``: the
        owner's membership record at the stream leader is the one our view saw lapse).
        The record is read from the stream leader, and the compare-and-set is on its
        revision, which a live owner does not change: without the confirmation a node
        whose view is stale (it was cut off) would take agents from live owners as soon
        as it can write again. Or, with ``min_epoch``, when
        the stored record is garbage (an orphan). A new record starts at
        ``min_epoch`` (pass the stored state's epoch + 1 so epochs never go back after a
        record was released). ``min_revision``: a revision the record is known to have
        reached (a migration's handover to ``node``); a read older than that came from a
        lagging replica and is repeated (for up to 2 s). ``fresh``: ``node`` holds no copy
        of the agent and this is no hand-over, so a record naming ``node`` is not a line
        it runs (a process of the same id that stopped without releasing it, or a record
        forged to name it): it is taken over like a lapsed owner's, with ``epoch + 1``
        and a queue group of its own, so that whoever runs that line is fenced and hears
        of it (protocol §14.2).

        Raises:
            AgentActiveElsewhere: a live node owns the agent.
            CasConflict: the record kept changing under us for ``attempts`` rounds.
        """
        key = agent_key(kind, agent_id)
        last: CasConflict | None = None
        for _ in range(attempts):
            entry = await self._read_at_least(key, min_revision)
            try:
                extra: dict[str, Any] = {"restart": restart, "needs": dict(needs or {}), "hints": dict(hints or {})}
                # A new line of ownership (a first claim, a takeover) starts its own
                # queue group: see DirectoryRecord.group.
                if entry is None:
                    epoch = max(1, min_epoch)
                    rec = DirectoryRecord(kind, agent_id, node, epoch, status, time.time(), **extra, group=epoch)
                    return Claim(rec, await self.bucket.create(key, rec.to_wire()))
                current = self._parse(entry)
                if current is None:
                    # Garbage: nobody can be said to own the agent; replace it as an
                    # orphan (CAS on its revision), fencing whoever ran it (adopt).
                    epoch = max(1, min_epoch)
                    rec = DirectoryRecord(kind, agent_id, node, epoch, status, time.time(), **extra, group=epoch)
                    return Claim(rec, await self.bucket.update(key, rec.to_wire(), revision=entry.revision), True)
                if current.node == node and not fresh:
                    return Claim(current, entry.revision)
                if current.node != node and (
                    is_live(current.node) or (confirm_lapsed is not None and not await confirm_lapsed(current.node))
                ):
                    raise AgentActiveElsewhere(
                        f"{kind}/{agent_id} is active on live node {current.node}",
                        agent=f"{kind}/{agent_id}",
                        owner=current.node,
                        epoch=current.epoch,
                    )
                epoch = max(current.epoch + 1, min_epoch)
                rec = DirectoryRecord(kind, agent_id, node, epoch, status, time.time(), **extra, group=epoch)
                return Claim(rec, await self.bucket.update(key, rec.to_wire(), revision=entry.revision), True)
            except CasConflict as exc:
                last = exc  # someone else wrote first: look again
        assert last is not None
        raise last

    async def _read_at_least(self, key: str, revision: int) -> Entry | None:
        """The record as the stream leader holds it (a claim must not act on a replica
        that lags: one that was cut off answers seconds behind), read again while it is
        older than ``revision``; the last read after 2 s."""
        deadline = time.monotonic() + 2.0
        while True:
            entry = await self.bucket.get(key, leader=True)
            if revision <= 0 or (entry is not None and entry.revision >= revision) or time.monotonic() > deadline:
                return entry
            await asyncio.sleep(0.005)

    async def verify(self, claim: Claim) -> bool:
        """Whether ``claim`` still holds (nobody took over since), read from the stream
        leader: a lagging replica would say ``True`` to an owner that was taken over, or
        ``False`` (no record yet) to one that was not. A stale owner that gets ``False``
        must stop its copy of the agent.

        Raises:
            CallTimeout: no leader answered (e.g. from the minority side of a partition).
        """
        entry = await self.bucket.get(agent_key(claim.record.kind, claim.record.agent_id), leader=True)
        return entry is not None and entry.revision == claim.revision

    async def restore(self, mine: Claim, over: int) -> Claim:
        """Write our record ``mine`` back over the revision ``over`` (CAS): a record naming
        another node that does not hold the agent, garbage, or a removal, none of them
        written by a node that runs it (``cluster.successor``).
        Raises: CasConflict when the record changed again."""
        rec = mine.record
        revision = await self.bucket.update(agent_key(rec.kind, rec.agent_id), rec.to_wire(), revision=over)
        return Claim(rec, revision)

    async def set_status(self, claim: Claim, status: Status) -> Claim:
        """Change the status under the claim (CAS). Raises: CasConflict when fenced off."""
        rec = claim.record.with_(status=status, since=time.time())
        revision = await self.bucket.update(agent_key(rec.kind, rec.agent_id), rec.to_wire(), revision=claim.revision)
        return Claim(rec, revision)

    async def handover(self, claim: Claim, node: str, status: Status = Status.ACTIVE) -> Claim:
        """Give the agent to ``node`` under ``epoch + 1`` (CAS on the claim): the
        migration switch. Raises: CasConflict when the claim no longer holds."""
        rec = claim.record.with_(node=node, epoch=claim.record.epoch + 1, status=status, since=time.time())
        revision = await self.bucket.update(agent_key(rec.kind, rec.agent_id), rec.to_wire(), revision=claim.revision)
        return Claim(rec, revision)

    async def get(self, kind: str, agent_id: str, *, leader: bool = False) -> Claim | None:
        """The record as stored (one read), or ``None``. Any replica answers (the fast
        path: placement, routing, where a stale answer costs a retry) unless ``leader``:
        decisions that stop or take over a copy read from the stream leader."""
        entry = await self.bucket.get(agent_key(kind, agent_id), leader=leader)
        if entry is None:
            return None
        record = self._parse(entry)
        return Claim(record, entry.revision) if record is not None else None

    @staticmethod
    def _parse(entry: Entry) -> DirectoryRecord | None:
        """The record, or ``None`` (with a rate-limited warning) when it is garbage."""
        try:
            return DirectoryRecord.from_wire(entry.value, key=entry.key)
        except ValueError as exc:
            records.garbage(log, "directory record", entry.key, exc)
            return None

    async def remove(self, claim: Claim) -> bool:
        """Delete a record someone else owns (a lapsed owner's temporary agent), if it is
        still at ``claim.revision``."""
        return await self.release(claim)

    async def release(self, claim: Claim) -> bool:
        """Remove the record if ``claim`` still holds; ``False`` if another node took over
        (its record is left alone)."""
        try:
            await self.bucket.delete(agent_key(claim.record.kind, claim.record.agent_id), revision=claim.revision)
        except CasConflict:
            return False
        return True

    # -- cache -----------------------------------------------------------------------

    def lookup(self, kind: str, agent_id: str) -> DirectoryRecord | None:
        """O(1) from the watch-fed cache (may lag the bucket by a moment)."""
        hit = self._cache.get((kind, agent_id))
        return hit[0] if hit is not None else None

    def lookup_claim(self, kind: str, agent_id: str) -> Claim | None:
        hit = self._cache.get((kind, agent_id))
        return Claim(hit[0], hit[1]) if hit is not None else None

    def agents_on(self, node: str) -> list[DirectoryRecord]:
        return [rec for rec, _ in self._cache.values() if rec.node == node]

    def count_on(self, node: str) -> int:
        """Agents the cache says ``node`` owns (O(1); as fresh as the watch)."""
        return self._per_node.get(node, 0)

    def _count(self, node: str, delta: int) -> None:
        n = self._per_node.get(node, 0) + delta
        if n > 0:
            self._per_node[node] = n
        else:
            self._per_node.pop(node, None)

    def claims(self) -> list[Claim]:
        """Every cached record with its revision."""
        return [Claim(rec, rev) for rec, rev in self._cache.values()]

    def add_listener(self, listener: Callable[[tuple[str, str], Claim | None, int], None]) -> None:
        """Call ``listener((kind, id), claim or None, revision)`` for every change the watch
        sees (``None``: the record was removed or overwritten with garbage, at
        ``revision``). Runs in the watch task: do not block."""
        self._listeners.append(listener)

    def __len__(self) -> int:
        return len(self._cache)

    async def _watch(self) -> None:
        async with self.bucket.watch() as watch:
            async for entry in watch:
                if entry is None:
                    self._ready.set()
                    continue
                self._apply(entry)

    def _apply(self, entry: Entry) -> None:
        try:
            key = parse_agent_key(entry.key)
        except NatsAgentsError:
            return
        claim: Claim | None = None
        record = self._parse(entry) if entry.operation == "put" else None
        if record is None:
            # Removed, or overwritten with garbage (no owner can be read from it: the
            # agent is an orphan, claimable by the next activation).
            gone = self._cache.pop(key, None)
            if gone is not None:
                self._count(gone[0].node, -1)
        else:
            claim = Claim(record, entry.revision)
            before = self._cache.get(key)
            if before is not None:
                self._count(before[0].node, -1)
            self._cache[key] = (claim.record, claim.revision)
            self._count(claim.record.node, 1)
        for listener in self._listeners:
            try:
                listener(key, claim, entry.revision)
            except Exception:
                log.exception("directory listener failed")
