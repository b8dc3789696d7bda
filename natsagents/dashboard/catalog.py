"""The agent catalog: the directory bucket kept in memory by one watch, queried by page.

``ClusterView.agents()`` reads every key with its own request, which is right for a
one-off ``natsagents ls`` but not for a page that searches 100,000 agents every few
seconds. The catalog watches the directory (current values, then live changes), keeps one
validated :class:`DirectoryRecord` per key and answers filtered, paginated queries from a
sorted snapshot rebuilt at most once per ``resort`` seconds while records change.

Records are untrusted (anyone who can write the bucket can write anything): each is
validated by ``DirectoryRecord.from_wire``; one that fails is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..cluster.directory import DirectoryRecord
from ..errors import NatsAgentsError, Unauthorized
from ..tasks import TaskGroup
from ..transport import Transport
from ..transport.kv import Entry, open_bucket
from ..wire.ids import agent_key
from ..wire.subjects import bucket_name

__all__ = ["AgentCatalog", "AgentPage"]

log = logging.getLogger("natsagents.dashboard")

_RETRY = (0.5, 1.0, 2.0, 5.0)  # seconds before re-opening a failed watch
#: Seconds a source the server refused us is left alone (permissions do not change within
#: seconds, and each ask is a violation in the server's log); the sampler's sources too.
HOLD_REFUSED = 60.0


@dataclass(frozen=True, slots=True)
class AgentPage:
    """One page of a query: ``total`` records matched, ``items`` from ``offset``."""

    total: int
    offset: int
    items: tuple[DirectoryRecord, ...]


class _Row:
    """One record with what queries compare, flattened (a query scans 100,000 of these)."""

    __slots__ = ("folded", "key", "kind", "node", "record", "sort_key", "status")

    def __init__(self, key: str, record: DirectoryRecord) -> None:
        self.key = key
        self.record = record
        self.kind = record.kind
        self.node = record.node
        self.status = record.status.value
        self.sort_key = (record.kind, record.agent_id)
        self.folded = record.address.casefold()


def _sort_key(row: _Row) -> tuple[str, str]:
    return row.sort_key


class AgentCatalog:
    """Every directory record of one mesh prefix, in memory, fed by a KV watch.

    Args:
        transport: an open connection.
        prefix: the mesh's subject prefix (names the bucket).
        resort: seconds a sorted snapshot may lag the records while they change.
    """

    def __init__(self, transport: Transport, prefix: str, *, resort: float = 1.0) -> None:
        self._t = transport
        self._prefix = prefix
        self._resort = resort
        self._rows: dict[str, _Row] = {}
        self._sorted: list[_Row] = []  # the snapshot: rows sorted by (kind, id), maybe stale
        self._added: list[_Row] = []  # rows put since the snapshot
        self._dirty = False
        self._sorted_at = 0.0
        self._counts: dict[str, Counter[str]] = {"kind": Counter(), "node": Counter(), "status": Counter()}
        self._tasks = TaskGroup("dashboard catalog", log)
        self._ready = asyncio.Event()
        self.rejected = 0  # records that failed validation
        self.restarts = 0  # watches re-opened after a failure
        self.error: str | None = None  # why the last watch failed, until one delivers again

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start watching (the first load continues in the background; see :attr:`ready`)."""
        self._tasks.spawn(self._run(), name="dashboard directory watch")

    async def aclose(self) -> None:
        await self._tasks.aclose()

    @property
    def ready(self) -> bool:
        """Whether the records present when the watch started are all loaded."""
        return self._ready.is_set()

    async def wait_ready(self, timeout: float) -> None:
        """Wait for the first load. Raises: TimeoutError."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                bucket = await open_bucket(self._t, bucket_name(self._prefix, "directory"), history=1)
                async with bucket.watch() as watch:
                    # Keys present now; after a re-opened watch, rows of keys deleted in
                    # between (a fresh watch shows no tombstones) are dropped at the marker.
                    seen: set[str] | None = set()
                    async for entry in watch:
                        if entry is None:
                            if seen is not None:
                                self._keep_only(seen)
                                seen = None
                                self._ready.set()
                            continue
                        failures = 0
                        self.error = None
                        if seen is not None:
                            seen.add(entry.key)
                        self.apply(entry)
            except Exception as exc:  # the watch is re-opened, whatever ended it
                self.restarts += 1
                delay = HOLD_REFUSED if isinstance(exc, Unauthorized) else _RETRY[min(failures, len(_RETRY) - 1)]
                failures += 1
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("dashboard: the directory watch failed (%s); again in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    # -- records ---------------------------------------------------------------------

    def apply(self, entry: Entry) -> None:
        """Take one watched revision: a valid put replaces the key's record; a delete,
        a purge or a record that fails validation removes it."""
        record: DirectoryRecord | None = None
        if entry.operation == "put":
            try:  # with the key: the record's kind and id must be the key's
                record = DirectoryRecord.from_wire(entry.value, key=entry.key)
            except (NatsAgentsError, ValueError):
                self.rejected += 1
        if record is None:
            self._remove(entry.key)
        else:
            self._put(entry.key, record)

    def _put(self, key: str, record: DirectoryRecord) -> None:
        old = self._rows.get(key)
        if old is not None:
            self._count(old, -1)
        row = self._rows[key] = _Row(key, record)
        self._count(row, 1)
        if len(self._added) <= len(self._rows):
            self._added.append(row)
        self._dirty = True

    def _remove(self, key: str) -> None:
        old = self._rows.pop(key, None)
        if old is not None:
            self._count(old, -1)
            self._dirty = True

    def _count(self, row: _Row, delta: int) -> None:
        for name, value in (("kind", row.kind), ("node", row.node), ("status", row.status)):
            counter = self._counts[name]
            counter[value] += delta
            if counter[value] <= 0:
                del counter[value]

    def _keep_only(self, keys: set[str]) -> None:
        for key in [key for key in self._rows if key not in keys]:
            self._remove(key)

    def load(self, records: Iterable[DirectoryRecord]) -> None:
        """Add records directly (tests and benchmarks of the query path)."""
        for record in records:
            self._put(agent_key(record.kind, record.agent_id), record)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._rows)

    def _snapshot(self) -> list[_Row]:
        """The rows sorted by (kind, id), rebuilt at most every ``resort`` seconds while
        records change. The rebuild keeps the previous order's rows still current and
        appends those put since, so the sort mostly merges one long sorted run with a
        short one (timsort: about linear) instead of sorting from scratch."""
        now = time.monotonic()
        if self._dirty and (now - self._sorted_at >= self._resort or not self._sorted):
            rows = self._rows
            if len(self._added) > len(rows):  # too many changes to track: start over
                merged = list(rows.values())
            else:
                merged = [r for r in self._sorted if rows.get(r.key) is r]
                merged.extend(r for r in self._added if rows.get(r.key) is r)
            merged.sort(key=_sort_key)
            # A key put twice since the snapshot is in ``_added`` once per put, but only
            # its current row passes the identity check, so ``merged`` has no duplicates.
            self._sorted = merged
            self._added = []
            self._dirty = False
            self._sorted_at = now
        return self._sorted

    def query(
        self,
        *,
        text: str = "",
        kind: str | None = None,
        node: str | None = None,
        status: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> AgentPage:
        """Records sorted by kind and id that match every filter given: ``text`` is a
        case-insensitive substring of ``Kind/id``; ``kind``, ``node`` and ``status`` must
        be equal. Returns the page ``[offset, offset + limit)`` and the total."""
        rows = self._snapshot()
        if kind is not None:
            rows = [r for r in rows if r.kind == kind]
        if node is not None:
            rows = [r for r in rows if r.node == node]
        if status is not None:
            rows = [r for r in rows if r.status == status]
        needle = text.casefold()
        if needle:
            rows = [r for r in rows if needle in r.folded]
        return AgentPage(len(rows), offset, tuple(r.record for r in rows[offset : offset + limit]))

    def get(self, key: str) -> DirectoryRecord | None:
        row = self._rows.get(key)
        return row.record if row is not None else None

    def counts(self) -> dict[str, dict[str, int]]:
        """Agents by kind, by node and by status (current, not the snapshot's)."""
        return {name: dict(counter) for name, counter in self._counts.items()}
