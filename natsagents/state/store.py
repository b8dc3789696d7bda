"""Strongly consistent agent state in a KV bucket, fenced by compare-and-set.

Each agent's state is one key, ``<kind>.<id token>``, holding ``{"epoch", "data"}`` and,
optionally, ``"applied"``: ``[[message id, expires ms(, reply body)], …]``, the requests whose
effect is in ``data`` and that a requester may still send again (so a successor never
applies them twice; see runtime.dedup; the reply body is kept for exactly-once messages),
and ``"seq"``: the inbox stream sequence of the last exactly-once message applied. The
owner remembers the revision it last wrote and every save is a compare-and-set on it, so
exactly one writer can win. Fencing: a node that takes an agent over first *adopts* the
state — rewrites it unchanged under its new epoch with a CAS — which moves the revision on;
the previous owner's next save then fails with :class:`FencedOff` and that owner must stop
its copy. A paused or partitioned owner can therefore never overwrite newer state.

A stored record is validated when it is loaded: a map whose ``epoch`` and ``seq`` are
integers within ``[0, 2**53]``; anything else is corrupt and that agent cannot activate
(``NatsAgentsError``, which the cluster node answers as ``unavailable``) until the record
is fixed or removed. Other agents are not affected.

Strong and session kinds save before each reply; eventual kinds save through the same CAS,
later (``state.behind``), and their records carry ``"vv"`` (the version vector: acknowledged
changes stored per writer node), ``"hlc"`` (the hybrid-logical-clock timestamp of the
newest change) and, after a split brain (``partition_strategy = "split_brain_allowed"``),
``"siblings"``: concurrent versions the owner has not resolved yet
(``[{"data", "vv", "hlc"}, …]``; docs/protocol.md §14.5). Records without them load as an
empty vector and no timestamp. Crdt kinds merge into their record by read-merge-CAS
(``cluster.crdts``: ``data`` is the CRDT's encoding, ``epoch`` 0). Event sourcing is to come.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..crdt.hlc import Timestamp
from ..crdt.resolve import Sibling
from ..crdt.vclock import VersionVector
from ..errors import NatsAgentsError, PayloadTooLarge
from ..observability.logging import warn_ignored
from ..transport import Transport
from ..transport.kv import Bucket, CasConflict, open_bucket
from ..wire import codec
from ..wire.ids import agent_key
from ..wire.subjects import bucket_name

__all__ = [
    "MAX_SIBLINGS",
    "NO_STAMP",
    "Applied",
    "FencedOff",
    "StateStore",
    "StoredState",
    "applied_wire",
    "parse_applied",
    "sibling_of",
    "sibling_wire",
]

#: An applied message: id, expiry (Unix ms) and, for exactly-once messages, the ok reply body.
Applied = tuple[str, int, bytes | None]

log = logging.getLogger("natsagents.state")

#: Largest epoch or stream sequence a stored record may hold (a record beyond is corrupt).
_MAX_COUNTER = 2**53
#: Most objects a state record may decode to (``codec``'s count; a peer's body: half of it).
_MAX_OBJECTS = 2 * codec.MAX_OBJECTS
#: Most unresolved siblings a record holds (a writer beyond folds them into one).
MAX_SIBLINGS = 16
#: The timestamp of a version stored without one (older records): before every other.
NO_STAMP = Timestamp(0, 0, "-")


class FencedOff(NatsAgentsError):
    """Another owner wrote this agent's state since we last did: stop serving it."""

    def __init__(self, message: str, *, agent: str, expected_revision: int | None) -> None:
        super().__init__(message)
        self.agent = agent
        self.expected_revision = expected_revision


@dataclass(frozen=True, slots=True)
class StoredState:
    """A loaded or saved state: the data, the writer's epoch, the KV revision (0 = none)
    the recently applied messages and the last exactly-once stream sequence applied."""

    data: Any
    epoch: int
    revision: int
    applied: tuple[Applied, ...] = ()
    seq: int = 0
    empty: bool = False  # a record only fencing a takeover: no agent state was ever saved
    #: Eventual kinds: the version vector and timestamp of ``data`` (``None``: not stored)
    #: and the concurrent versions stored beside it, not resolved yet (split brain).
    vv: VersionVector | None = None
    stamp: Timestamp | None = None
    siblings: tuple[Sibling[Any], ...] = ()

    def sibling(self) -> Sibling[Any]:
        """``data`` as a sibling (an empty vector and :data:`NO_STAMP` when not stored)."""
        return Sibling(self.data, self.vv or VersionVector(), self.stamp or NO_STAMP)


class StateStore:
    """Loads and saves agent state with CAS fencing.

    Args:
        transport: the mesh's connection.
        prefix: subject prefix of the mesh (names the bucket).
        max_size: largest encoded state accepted, in bytes (default: what the server
            allows for one message, minus headroom for headers).
    """

    def __init__(self, transport: Transport, prefix: str, *, max_size: int | None = None) -> None:
        self._t = transport
        self.prefix = prefix
        self._max_size = max_size
        self._bucket: Bucket | None = None

    async def start(self) -> None:
        self._bucket = await open_bucket(self._t, bucket_name(self.prefix, "state"), history=1)

    @property
    def bucket(self) -> Bucket:
        if self._bucket is None:
            raise NatsAgentsError("the state store is not started")
        return self._bucket

    @property
    def max_size(self) -> int:
        return self._max_size if self._max_size is not None else self._t.max_payload - 1024

    async def load(self, kind: str, agent_id: str, *, leader: bool = False) -> StoredState:
        """The stored state, or ``StoredState(None, 0, 0)`` when there is none.

        ``leader``: read from the stream leader (what an activation restores, what an
        adoption rewrites: never older than an acknowledged save); otherwise any replica
        answers, possibly behind (a server that was cut off answers seconds behind).

        Raises:
            NatsAgentsError: the stored bytes are not a state record.
        """
        entry = await self.bucket.get(agent_key(kind, agent_id), leader=leader)
        if entry is None:
            return StoredState(None, 0, 0)
        problem: str | None = None
        try:
            return _stored(entry.value, entry.revision, applied=True)
        except ValueError as exc:
            problem = str(exc)
        # Raised here, with no decoded garbage in scope: an error someone keeps (a failed
        # activation, retried) must not keep a record's objects alive (tens of MiB).
        warn_ignored(log, "state record", f"{kind}/{agent_id}", problem)
        raise NatsAgentsError(f"state of {kind}/{agent_id} is corrupt: {problem}")

    @staticmethod
    def parse(value: bytes, revision: int = 0) -> StoredState:
        """A state record's bytes as a :class:`StoredState` (a read replica's watch).

        Raises:
            NatsAgentsError: the bytes are not a state record."""
        try:
            return _stored(value, revision)
        except ValueError as exc:
            raise NatsAgentsError(f"not a state record: {exc}") from None

    async def adopt(self, kind: str, agent_id: str, epoch: int) -> StoredState:
        """Take the state over for a new owner ``epoch``: rewrite it unchanged under the
        new epoch, moving the revision on so the previous owner's saves are fenced off.

        Raises:
            FencedOff: an owner with a higher epoch adopted it first.
        """
        current = await self.load(kind, agent_id, leader=True)
        if current.epoch > epoch:
            raise FencedOff(
                f"state of {kind}/{agent_id} belongs to epoch {current.epoch} > {epoch}",
                agent=f"{kind}/{agent_id}",
                expected_revision=current.revision,
            )
        if current.revision == 0 or current.empty:
            # Nothing was ever saved: fence with a record that says so, so that the new
            # owner starts from the agent's initial state, not from ``None``.
            value = codec.encode({"epoch": epoch, "data": None, "empty": True})
            revision = await self.save_encoded(kind, agent_id, value, revision=current.revision)
            return StoredState(None, epoch, revision, (), 0, True)
        value = self.with_extras(
            self.encode(current.data, epoch),
            current.applied,
            current.seq,
            vv=current.vv,
            stamp=current.stamp,
            siblings=current.siblings,
        )
        revision = await self.save_encoded(kind, agent_id, value, revision=current.revision)
        return StoredState(
            current.data,
            epoch,
            revision,
            current.applied,
            current.seq,
            vv=current.vv,
            stamp=current.stamp,
            siblings=current.siblings,
        )

    @staticmethod
    def encode(data: Any, epoch: int) -> bytes:
        """The stored form of ``data`` under ``epoch``. Raises: TypeError, ValueError."""
        return codec.encode({"epoch": epoch, "data": data})

    @staticmethod
    def with_extras(
        value: bytes,
        applied: Sequence[Applied],
        seq: int = 0,
        *,
        vv: VersionVector | None = None,
        stamp: Timestamp | None = None,
        siblings: Sequence[Sibling[Any]] = (),
    ) -> bytes:
        """``value`` (from :meth:`encode`) with the ``applied`` messages, ``seq`` and an
        eventual kind's version (``vv``, ``stamp``, unresolved ``siblings``) added."""
        if not applied and not seq and vv is None and stamp is None and not siblings:
            return value
        if value[0] != 0x82:  # a msgpack map of two entries, as encode() makes it
            raise ValueError("not a value made by StateStore.encode")
        extra = b""
        entries = 2
        if applied:
            entries += 1
            extra += codec.encode("applied") + codec.encode([applied_wire(a) for a in applied])
        if seq:
            entries += 1
            extra += codec.encode("seq") + codec.encode(seq)
        if vv is not None:
            entries += 1
            extra += codec.encode("vv") + codec.encode(vv.to_obj())
        if stamp is not None:
            entries += 1
            extra += codec.encode("hlc") + codec.encode(stamp.to_obj())
        if siblings:
            entries += 1
            extra += codec.encode("siblings") + codec.encode([sibling_wire(s) for s in siblings])
        return bytes([0x80 | entries]) + value[1:] + extra

    async def save(self, kind: str, agent_id: str, data: Any, *, epoch: int, revision: int) -> StoredState:
        """Write ``data`` if the stored revision is still ``revision`` (0: no state yet).

        Raises:
            FencedOff: someone else wrote since (the caller must stop its copy).
            PayloadTooLarge: the encoded state exceeds ``max_size``.
            TypeError, ValueError: ``data`` cannot be encoded as msgpack.
        """
        value = self.encode(data, epoch)
        return StoredState(data, epoch, await self.save_encoded(kind, agent_id, value, revision=revision))

    async def save_encoded(
        self, kind: str, agent_id: str, value: bytes, *, revision: int, max_size: int | None = None
    ) -> int:
        """Write a value made by :meth:`encode` if the stored revision is still
        ``revision``; return the new revision. Raises: as :meth:`save`."""
        limit = self.max_size if max_size is None else min(max_size, self.max_size)
        if len(value) > limit:
            raise PayloadTooLarge(
                f"state of {kind}/{agent_id} is {len(value)} bytes; the limit is {limit}",
                agent=f"{kind}/{agent_id}",
                details={"size": len(value), "max_size": limit},
            )
        key = agent_key(kind, agent_id)
        try:
            if revision == 0:
                new_revision = await self.bucket.create(key, value)
            else:
                new_revision = await self.bucket.update(key, value, revision=revision)
        except CasConflict as exc:
            raise FencedOff(
                f"state of {kind}/{agent_id} changed since revision {revision}: another owner wrote it",
                agent=f"{kind}/{agent_id}",
                expected_revision=revision,
            ) from exc
        return new_revision


def applied_wire(a: Applied) -> list[Any]:
    """The stored/wire form of one applied message: ``[id, expires_ms]`` or with the reply."""
    return [a[0], a[1]] if a[2] is None else [a[0], a[1], a[2]]


def parse_applied(raw: object) -> tuple[Applied, ...]:
    """``[[id, expires_ms(, reply body)], …]`` from the wire or the store; malformed items
    are skipped."""
    if not isinstance(raw, list):
        return ()
    out: list[Applied] = []
    for item in raw:
        if not (isinstance(item, list) and 2 <= len(item) <= 3):
            continue
        if not (isinstance(item[0], str) and type(item[1]) is int):
            continue
        body = item[2] if len(item) == 3 else None
        if body is not None and not isinstance(body, bytes):
            continue
        out.append((item[0], item[1], body))
    return tuple(out)


def sibling_wire(s: Sibling[Any]) -> dict[str, Any]:
    """A sibling's stored form: ``{"data", "vv", "hlc"}``."""
    return {"data": s.value, "vv": s.version.to_obj(), "hlc": s.stamp.to_obj()}


def sibling_of(obj: Any) -> Sibling[Any]:
    """The inverse of :func:`sibling_wire`. Raises: ValueError."""
    if not isinstance(obj, dict) or "vv" not in obj or "hlc" not in obj:
        raise ValueError("a sibling is a map with data, vv and hlc")
    try:
        return Sibling(obj.get("data"), VersionVector.from_obj(obj["vv"]), Timestamp.from_obj(obj["hlc"]))
    except (NatsAgentsError, TypeError, ValueError) as exc:
        raise ValueError(f"sibling: {exc}") from None


def _stored(value: bytes, revision: int, *, applied: bool = False) -> StoredState:
    """A record's bytes as a :class:`StoredState`. Raises: ValueError (not a record)."""
    body, epoch, seq = _parse_record(value)
    vv = stamp = None
    siblings: tuple[Sibling[Any], ...] = ()
    try:
        if "vv" in body:
            vv = VersionVector.from_obj(body["vv"])
        if "hlc" in body:
            stamp = Timestamp.from_obj(body["hlc"])
    except (NatsAgentsError, TypeError, ValueError) as exc:
        raise ValueError(f"version: {exc}") from None
    raw = body.get("siblings", [])
    if not isinstance(raw, list) or len(raw) > MAX_SIBLINGS:
        raise ValueError(f"siblings must be a list of at most {MAX_SIBLINGS}")
    siblings = tuple(sibling_of(s) for s in raw)
    return StoredState(
        body.get("data"),
        epoch,
        revision,
        parse_applied(body.get("applied")) if applied else (),
        seq,
        body.get("empty") is True,
        vv,
        stamp,
        siblings,
    )


def _parse_record(value: bytes) -> tuple[dict[str, Any], int, int]:
    """A state record's map, epoch and sequence.

    Raises:
        ValueError: not a state record. Anyone who may write the bucket may put garbage
            there: it is decoded within :data:`_MAX_OBJECTS`, like a peer's body.
    """
    body = codec.decode(value, _MAX_OBJECTS)
    if not isinstance(body, dict):
        raise ValueError("not a state record")
    epoch, seq = body.get("epoch"), body.get("seq", 0)
    if type(epoch) is not int or not 0 <= epoch <= _MAX_COUNTER:
        raise ValueError(f"epoch {epoch!r} is not an integer within [0, 2**53]")
    if type(seq) is not int or not 0 <= seq <= _MAX_COUNTER:
        raise ValueError(f"seq {seq!r} is not an integer within [0, 2**53]")
    return body, epoch, seq
