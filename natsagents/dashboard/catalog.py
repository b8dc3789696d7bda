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
from ..errors import NatsAgentsError
from ..tasks import TaskGroup
from ..transport import Transport
from ..transport.kv import Entry, open_bucket
from ..wire.ids import agent_key, parse_agent_key
from ..wire.subjects import bucket_name

__all__ = ["AgentCatalog", "AgentPage"]

log = logging.getLogger("natsagents.dashboard")

_RETRY = (0.5, 1.0, 2.0, 5.0)  # seconds before re-opening a failed watch


@dataclass(frozen=True, slots=True)
class AgentPage:
    """One page of a query: ``total`` records matched, ``items`` from ``offset``."""

    total: int
    offset: int
    items: tuple[DirectoryRecord, ...]


class _Row:
    __slots__ = ("folded", "record", "sort_key")

    def __init__(self, record: DirectoryRecord) -> None:
        self.record = record
        self.sort_key = (record.kind, record.agent_id)
        self.folded = record.address.casefold()


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
        self._sorted: list[_Row] = []
        self._dirty = False
        self._sorted_at = 0.0
        self._counts: dict[str, dict[str, int]] = {"kind": {}, "node": {}, "status": {}}
        self._tasks = TaskGroup("dashboard catalog", log)
        self._ready = asyncio.Event()
        self.rejected = 0  # records that failed validation
        self.restarts = 0  # watches re-opened after a failure

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
                        if seen is not None:
                            seen.add(entry.key)
                        self.apply(entry)
            except Exception as exc:  # the watch is re-opened, whatever ended it
                self.restarts += 1
                delay = _RETRY[min(failures, len(_RETRY) - 1)]
                failures += 1
                log.warning("dashboard: the directory watch failed (%s); again in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    # -- records ---------------------------------------------------------------------

    def apply(self, entry: Entry) -> None:
        """Take one watched revision: a valid put replaces the key's record; a delete,
        a purge or a record that fails validation removes it."""
        record: DirectoryRecord | None = None
        if entry.operation == "put":
            try:
                parse_agent_key(entry.key)
                record = DirectoryRecord.from_wire(entry.value, key=entry.key)
            except (NatsAgentsError, ValueError):
                self.rejected += 1
        if record is None:
            if self._rows.pop(entry.key, None) is not None:
                self._dirty = True
            return
        self._rows[entry.key] = _Row(record)
        self._dirty = True

    def _keep_only(self, keys: set[str]) -> None:
        gone = [key for key in self._rows if key not in keys]
        for key in gone:
            del self._rows[key]
        if gone:
            self._dirty = True

    def load(self, records: Iterable[DirectoryRecord]) -> None:
        """Add records directly (tests and benchmarks of the query path)."""
        for record in records:
            self._rows[agent_key(record.kind, record.agent_id)] = _Row(record)
        self._dirty = True
        self._ready.set()

    def __len__(self) -> int:
        return len(self._rows)

    def _snapshot(self) -> list[_Row]:
        now = time.monotonic()
        if self._dirty and (now - self._sorted_at >= self._resort or not self._sorted):
            self._sorted = sorted(self._rows.values(), key=lambda row: row.sort_key)
            self._counts = _counts(self._sorted)
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
        needle = text.casefold()
        if not (needle or kind or node or status):
            return AgentPage(len(rows), offset, tuple(r.record for r in rows[offset : offset + limit]))
        total = 0
        items: list[DirectoryRecord] = []
        end = offset + limit
        for row in rows:
            rec = row.record
            if (
                (kind is not None and rec.kind != kind)
                or (node is not None and rec.node != node)
                or (status is not None and rec.status.value != status)
                or (needle and needle not in row.folded)
            ):
                continue
            if offset <= total < end:
                items.append(rec)
            total += 1
        return AgentPage(total, offset, tuple(items))

    def get(self, key: str) -> DirectoryRecord | None:
        row = self._rows.get(key)
        return row.record if row is not None else None

    def counts(self) -> dict[str, dict[str, int]]:
        """Agents by kind, by node and by status (as of the current snapshot)."""
        self._snapshot()
        return self._counts


def _counts(rows: Iterable[_Row]) -> dict[str, dict[str, int]]:
    kinds: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for row in rows:
        rec = row.record
        kinds[rec.kind] += 1
        nodes[rec.node] += 1
        statuses[rec.status.value] += 1
    return {"kind": dict(kinds), "node": dict(nodes), "status": dict(statuses)}
