"""Attempts of durable messages counted across partition owners (docs/delivery.md).

A takeover's fresh consumer restarts JetStream's delivery count, so a message that kills
every node running it would go round the cluster for ever. A partition's owner therefore
keeps ``attempts.<n>`` in the control bucket: a msgpack map stream sequence → attempts so
far (CAS, TTL 24 h, merged on conflict, pruned below the ack floor). A takeover learns which
messages an earlier owner was handed (the *suspects*, up to the earlier consumer's last
delivery) and records each attempt of those before running it; a leaving owner records what
it hands back (0: never started).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import NatsAgentsError
from ..observability.logging import warn_ignored
from ..transport import Transport
from ..transport import jetstream as js
from ..transport.kv import Bucket, CasConflict, KeyNotFound
from ..wire import codec

__all__ = ["AttemptCounts"]

log = logging.getLogger("natsagents.delivery")

#: How long an attempt count is kept.
_ATTEMPTS_TTL = 24 * 3600.0
#: Largest stream sequence an attempt count may name (as ``cluster.records`` bounds counters).
_MAX_COUNTER = 2**53


class AttemptCounts:
    """The attempt counts of one partition.

    Args:
        control: the control bucket.
        n: the partition.
    """

    def __init__(self, control: Bucket, n: int) -> None:
        self._control = control
        self.n = n
        self.key = f"attempts.{n}"
        self.counts: dict[int, int] = {}  # stream seq → attempts so far
        self.revision = 0
        self.dirty = False
        # Writes of the counts are serialised and coalesced: a change waits for one write
        # that started after it (``_changes`` counts changes, ``_stored`` what was written).
        self._lock: asyncio.Lock | None = None
        self._changes = 0
        self._stored = 0
        self.suspect_upto = 0
        self.unstarted: set[int] = set()  # handed back by a leaving owner without an attempt

    def get(self, seq: int, default: int) -> int:
        return self.counts.get(seq, default)

    def record(self, counts: dict[int, int]) -> None:
        """Set the counts of several messages (a hand-back)."""
        self.counts.update(counts)

    def __bool__(self) -> bool:
        return bool(self.counts)

    async def learn(self, transport: Transport, stream: str, durable: str) -> None:
        """Before a takeover's fresh consumer: which messages an earlier owner may have been
        running when it went away (up to its consumer's last delivered sequence), and the
        attempts earlier owners recorded for them (``attempts.<n>`` in the control bucket).
        JetStream's delivery count starts again with the fresh consumer; these carry on."""
        known = True  # whether we know the earlier consumer's last delivery
        try:
            info = await js.consumer_info(transport, stream, durable, timeout=5.0)
        except js.ConsumerNotFound:
            info = {}
        except NatsAgentsError as exc:
            log.warning("partition %d: reading the earlier consumer failed (%s): counting afresh", self.n, exc)
            info, known = {}, False
        floor = _stream_seq(info.get("ack_floor"))
        self.suspect_upto = _stream_seq(info.get("delivered"))
        try:
            entry = await self._control.get(self.key, timeout=5.0)
        except NatsAgentsError as exc:
            log.warning("partition %d: reading attempt counts failed (%s)", self.n, exc)
            entry = None
        counts: dict[int, int] = {}
        self.revision = 0
        if entry is not None:
            self.revision = entry.revision
            counts = {seq: n for seq, n in _counts(entry.value, self.key).items() if seq > floor}
            # A count for a message no earlier consumer delivered is impossible (garbage):
            # believing it would dead-letter that message before it ever ran.
            beyond = [seq for seq in counts if known and seq > self.suspect_upto]
            if beyond:
                warn_ignored(log, "attempt count", self.key, f"{len(beyond)} messages never delivered")
                for seq in beyond:
                    del counts[seq]
        if counts:
            self.suspect_upto = max(self.suspect_upto, max(counts))
        # 0: a leaving owner handed the message back without trying it. This owner is the
        # first to try it: not a suspect. The zeros go, so that if this owner dies while
        # trying, the next one counts that attempt (as it would for any suspect).
        self.unstarted = {seq for seq, n in counts.items() if n == 0}
        self.counts = {seq: n for seq, n in counts.items() if n > 0}
        if self.unstarted:
            await self.store()

    def is_suspect(self, msg: js.JsMsg) -> bool:
        """Delivered before this owner's consumer existed: an earlier owner may have run it."""
        seq = msg.stream_seq
        return seq <= self.suspect_upto and seq not in self.unstarted

    async def count(self, msg: js.JsMsg, before: int) -> None:
        """Record, before running it, that a suspect message gets attempt ``before + 1``: if
        this node dies during it, the next owner counts it."""
        self.counts[msg.stream_seq] = before + 1
        await self.store()

    def forget(self, msg: js.JsMsg) -> None:
        if self.counts.pop(msg.stream_seq, None) is not None:
            self.dirty = True

    async def store(self) -> None:
        """Write the attempt counts, including every change made before this call. Callers
        that come while a write is on its way share the next one (after a takeover many
        agents' suspects are counted at once: one write per round trip, not per message)."""
        self._changes += 1
        wanted = self._changes
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._stored >= wanted:
                return  # a write that started after our change carried it
            covered = self._changes
            await self._write()
            self._stored = covered

    async def _write(self) -> None:
        """One write of the counts (CAS on the key's revision). A conflict (an earlier
        owner still wrote after this one read) merges the two, keeping the higher count."""
        control = self._control
        for _ in range(3):
            value = codec.encode(self.counts)
            try:
                if self.revision:
                    self.revision = await control.update(
                        self.key, value, revision=self.revision, ttl=_ATTEMPTS_TTL, timeout=5.0
                    )
                else:
                    self.revision = await control.create(self.key, value, ttl=_ATTEMPTS_TTL, timeout=5.0)
                self.dirty = False
                return
            except KeyNotFound:
                self.revision = 0  # expired or deleted: create it again
            except CasConflict:
                try:
                    entry = await control.get(self.key, timeout=5.0)
                except NatsAgentsError:
                    break
                self.revision = 0 if entry is None else entry.revision
                other = _counts(entry.value) if entry is not None else {}
                for seq, count in other.items():
                    if seq in self.counts:
                        self.counts[seq] = max(self.counts[seq], count)
            except NatsAgentsError as exc:
                log.warning("partition %d: storing attempt counts failed: %s", self.n, exc)
                break
        # Not stored: a count may be one short; the message's handling is not held up for it.
        self.dirty = True


def _counts(value: bytes, key: str = "") -> dict[int, int]:
    """The stored attempt counts (``{stream seq: attempts}``, 0: handed back untried);
    malformed entries are skipped (with ``key``, garbage is logged)."""
    try:
        raw = codec.decode(value)
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        if key:
            warn_ignored(log, "attempt counts", key, "not a map")
        return {}
    return {k: v for k, v in raw.items() if type(k) is int and type(v) is int and 0 < k <= _MAX_COUNTER and v >= 0}


def _stream_seq(position: Any) -> int:
    """``stream_seq`` of a consumer info's ``delivered`` or ``ack_floor`` (0 if absent)."""
    seq = position.get("stream_seq") if isinstance(position, dict) else None
    return seq if type(seq) is int and seq > 0 else 0
