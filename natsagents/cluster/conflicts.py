"""Versions and conflicts of eventual state: version vectors, hybrid-logical-clock stamps
and ``partition_strategy = "split_brain_allowed"`` (docs/consistency.md, "Conflicts").

Every stored state of an eventual kind carries a version vector (acknowledged changes
stored, per writer node) and the HLC timestamp of its newest change (``state.store``,
protocol §14.5). A copy's flush writes ``vv + {node: changes since the last store}``.

Two writers exist by design under ``split_brain_allowed`` (the minority keeps serving
while the majority takes the agent over), and by accident when a paused copy flushes late.
Their versions meet when a compare-and-set fails:

```
 stale copy (another node took over; its claim's epoch is higher)
   fenced ──▶ settle: its unstored value + vector is stored as a *sibling* in the owner's
              record (CAS; nothing if the record already has seen every change of it)
              ──▶ the copy stops; nothing it acknowledged is dropped unreported
 owner (same epoch; the record changed under it: a sibling was stored)
   its KV watch (headers only) or its own failed CAS ──▶ load the record
              ──▶ when its mailbox runs nothing: resolve(own state, record, siblings) by the
                  kind's conflict_resolution, restore the result, store it (CAS, siblings
                  cleared) at its next flush
 activation of a record with siblings ──▶ resolved before the first message
```

Only the owner resolves, once per conflict, against its live state (which includes its
unstored changes): a resolution made elsewhere would have to be merged again with that
state, and last-write-wins would count the same overwritten changes twice. Resolution is
deterministic (``crdt.resolve``: siblings in canonical order), so any node resolving the
same siblings reaches the same state. Last-write-wins losers are counted: the changes in
a losing version the winner has not seen, ``sum(max(0, loser[n] - winner[n]))`` over the
nodes ``n`` of the vectors (``natsagents_state_conflicts_total{outcome="overwritten"}``,
and a WARNING log naming them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..crdt.errors import ClockDriftError
from ..crdt.hlc import HLC, Timestamp
from ..crdt.resolve import Resolution, Sibling, frontier, last_write_wins, resolve
from ..crdt.vclock import VersionVector
from ..errors import NatsAgentsError, PayloadTooLarge, Unavailable
from ..observability import Metrics
from ..runtime.activation import Activation, ActivationState
from ..state.store import MAX_SIBLINGS, NO_STAMP, FencedOff, StateStore, StoredState
from ..tasks import TaskGroup
from ..wire import codec
from ..wire.ids import agent_key
from .owned import Owned, Versions

__all__ = ["Conflicts", "Deferred", "overwritten_changes"]

log = logging.getLogger("natsagents.cluster.conflicts")

#: Seconds a stale copy keeps trying to store its sibling before its changes count as lost.
_SETTLE_FOR = 10.0


class Deferred(Unavailable):
    """A flush found concurrent versions in the record: this copy resolves them first (the
    write is retried after)."""


def overwritten_changes(res: Resolution[Any]) -> int:
    """Changes in the losing versions of a last-write-wins resolution that the winner has
    not seen (0 for the other rules: they see every sibling)."""
    if not res.overwritten:
        return 0
    winner = res.siblings[-1].version
    lost = VersionVector.merge_all(s.version for s in res.overwritten)
    return sum(max(0, lost[n] - winner[n]) for n in lost)


def _plus(vv: VersionVector, node: str, changes: int) -> VersionVector:
    if changes <= 0:
        return vv
    return VersionVector({**vv.as_dict(), node: vv[node] + changes})


class Conflicts:
    """Versions and conflict resolution of the eventual agents one node owns.

    Args:
        node_id: this node (its entry in version vectors, its HLC's replica id).
        state: the state store.
        metrics: ``state_conflicts`` is counted there.
        tasks: the node's task group (watches, waits for an idle mailbox).
        mark: store an activation's new (resolved) value behind, without counting it as an
            acknowledged change (``Ownership``).
    """

    def __init__(
        self,
        node_id: str,
        state: StateStore,
        metrics: Metrics,
        tasks: TaskGroup,
        mark: Callable[[Activation, Owned, bytes], None],
    ) -> None:
        self.node_id = node_id
        self.hlc = HLC(node_id)
        self._state = state
        self._metrics = metrics
        self._tasks = tasks
        self._mark = mark
        #: Totals on this node per kind: ``siblings`` stored, ``resolved``, ``overwritten``.
        self.counts: dict[tuple[str, str], int] = {}

    def _count(self, kind: str, outcome: str, n: int = 1) -> None:
        if n > 0:
            self.counts[kind, outcome] = self.counts.get((kind, outcome), 0) + n
            self._metrics.state_conflicts.labels(kind, outcome).inc(n)

    def total(self, outcome: str, kind: str | None = None) -> int:
        """How many ``outcome`` (``siblings``, ``resolved``, ``overwritten``) this node counted."""
        return sum(n for (k, o), n in self.counts.items() if o == outcome and kind in (None, k))

    def _observe(self, stamp: Timestamp | None) -> None:
        if stamp is not None and stamp is not NO_STAMP:
            try:
                self.hlc.update(stamp)
            except ClockDriftError as exc:  # a writer with a broken clock: keep ours
                log.warning("not following a state timestamp: %s", exc)

    # -- versions of ordinary writes -------------------------------------------------------

    def started(self, act: Activation, own: Owned, stored: StoredState | None) -> None:
        """An eventual activation starts from ``stored`` (``None``: a state transfer, whose
        vector is read at the first flush). A record with siblings is resolved now, before
        the first message; a split-brain kind's owner watches its record."""
        cls = type(act.agent)
        split = cls.partition_strategy == "split_brain_allowed"
        vv = None if stored is None else (stored.vv or VersionVector())
        v = own.versions = Versions(vv, None if stored is None else stored.stamp, split)
        if split:
            v.watch = self._tasks.spawn(self._watch(act, own), name=f"versions {act.address}")
        if stored is None:
            return
        self._observe(stored.stamp)
        if stored.siblings:
            for s in stored.siblings:
                self._observe(s.stamp)
            res = self.resolve(act, [stored.sibling(), *stored.siblings])
            v.vv = res.version
            v.stamp = res.stamp
            act.agent.restore(res.value)
            self._mark(act, own, StateStore.encode(act.agent.checkpoint(), own.epoch))

    def changed(self, own: Owned) -> None:
        """An acknowledged change: stamp it (last-write-wins orders by it)."""
        if own.versions is not None:
            own.versions.stamp = self.hlc.now()

    async def next_version(self, act: Activation, own: Owned, changes: int) -> tuple[VersionVector, Timestamp]:
        """The vector and stamp of a write of ``act`` holding ``changes`` more changes."""
        v = own.versions
        assert v is not None
        if v.vv is None:  # after a state transfer: the vector of the record we hold
            try:
                current = await self._state.load(act.kind, act.agent_id, leader=True)
                v.vv = current.vv if current.revision == own.revision and current.vv else VersionVector()
            except NatsAgentsError:
                v.vv = VersionVector()
        if v.stamp is None:
            v.stamp = self.hlc.now()
        return _plus(v.vv, self.node_id, changes), v.stamp

    def stop(self, own: Owned) -> None:
        """The activation stops: no more watching."""
        v = own.versions
        if v is None:
            return
        for task in (v.watch, v.waiter):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        v.watch = v.waiter = None

    # -- resolution ------------------------------------------------------------------------

    def resolve(self, act: Activation, siblings: Sequence[Sibling[Any]]) -> Resolution[Any]:
        """Resolve ``siblings`` by the kind's ``conflict_resolution`` (counted, logged). A
        rule that raises falls back to last-write-wins (logged)."""
        cls = type(act.agent)
        rule = cls.conflict_resolution
        kept = frontier(siblings)
        if len(kept) == 1:
            only = kept[0]
            return Resolution(only.value, VersionVector.merge_all(s.version for s in siblings), only.stamp, kept)
        name = rule if isinstance(rule, str) else getattr(rule, "__name__", "callable")
        try:
            res = resolve(kept, rule, resolver=act.agent.resolve, merger=act.agent.merge_states)
        except Exception:
            log.exception("%s: conflict_resolution %s failed: last_write_wins instead", act.address, name)
            res = last_write_wins(kept)
            name = "last_write_wins (fallback)"
        # Superseded siblings dropped by the frontier are seen too: the result covers them.
        res = Resolution(
            res.value, VersionVector.merge_all(s.version for s in siblings), res.stamp, res.siblings, res.overwritten
        )
        self._count(act.kind, "resolved")
        lost = overwritten_changes(res)
        self._count(act.kind, "overwritten", lost)
        writers = sorted({n for s in kept for n in s.version})
        if lost:
            log.warning(
                "%s: %d concurrent versions (writers %s) resolved by %s: %d acknowledged change(s) overwritten "
                "(kept %s, overwritten %s)",
                act.address,
                len(kept),
                ", ".join(writers),
                name,
                lost,
                dict(res.siblings[-1].version.as_dict()),
                [dict(s.version.as_dict()) for s in res.overwritten],
            )
        else:
            log.info("%s: %d concurrent versions (writers %s) resolved by %s", act.address, len(kept), writers, name)
        return res

    # -- the owner: concurrent versions stored in its record -------------------------------

    async def _watch(self, act: Activation, own: Owned) -> None:
        """Watch the record (headers only): a revision this copy did not write means a stale
        copy stored a sibling there."""
        try:
            async with self._state.bucket.watch(agent_key(act.kind, act.agent_id), headers_only=True) as watch:
                async for entry in watch:
                    if own.handed_over or act.state is ActivationState.STOPPED:
                        return
                    if entry is not None and entry.operation == "put" and entry.revision > own.revision:
                        await self._check(act, own, entry.revision)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # its next flush still finds the siblings (a failed CAS)
            log.warning("watching the state of %s for concurrent versions stopped: %s", act.address, exc)

    async def _check(self, act: Activation, own: Owned, revision: int) -> None:
        if own.lock is None:
            own.lock = asyncio.Lock()
        async with own.lock:  # a write of ours in flight first: its revision is then ours
            if own.handed_over or revision <= own.revision:
                return
            try:
                current = await self._state.load(act.kind, act.agent_id, leader=True)
            except NatsAgentsError as exc:
                log.warning("reading the state of %s after a foreign write failed: %s", act.address, exc)
                return
            if current.revision > own.revision and current.epoch <= own.epoch:
                self.receive(act, own, current)
            # A higher epoch is a takeover: the directory fences this copy (settle).

    async def fenced_write(self, act: Activation, own: Owned) -> None:
        """A write of ``act`` was refused (the revision moved) and did not land. Returns if
        another owner took the agent (the caller fences this copy).

        Raises:
            Deferred: the record holds concurrent versions (a stale copy's sibling) that this
                copy resolves first, between messages; the write is retried after."""
        try:
            current = await self._state.load(act.kind, act.agent_id, leader=True)
        except NatsAgentsError:
            return
        if current.revision == 0 or current.epoch > own.epoch:
            return
        self.receive(act, own, current)
        raise Deferred(f"{act.address}: concurrent versions to resolve first", agent=act.address)

    def receive(self, act: Activation, own: Owned, current: StoredState) -> None:
        """Resolve ``current`` with the live state as soon as the mailbox runs nothing."""
        v = own.versions
        assert v is not None
        if v.incoming is None or current.revision > v.incoming.revision:
            v.incoming = current
        if not act.workers:
            self.apply(act, own)
        elif v.waiter is None:
            v.waiter = self._tasks.spawn(self._when_idle(act, own), name=f"resolve {act.address}")

    async def _when_idle(self, act: Activation, own: Owned) -> None:
        try:
            await act.wait_idle()
            self.apply(act, own)  # no await since wait_idle returned: nothing runs
        finally:
            if own.versions is not None and own.versions.waiter is asyncio.current_task():
                own.versions.waiter = None

    def apply(self, act: Activation, own: Owned) -> None:
        """Resolve the incoming record with the live state (the agent runs nothing now:
        call it only between messages), restore the result and store it behind."""
        v = own.versions
        if v is None or v.incoming is None:
            return
        current, v.incoming = v.incoming, None
        if own.handed_over or current.revision <= own.revision or v.vv is None:
            return
        agent = act.agent
        changes = own.marks - own.stored_marks
        ours = Sibling(agent.checkpoint(), _plus(v.vv, self.node_id, changes), v.stamp or NO_STAMP)
        theirs = [current.sibling(), *current.siblings]
        for s in theirs:
            self._observe(s.stamp)
        own.revision = current.revision
        v.vv = VersionVector.merge_all([v.vv, *(s.version for s in theirs)])  # our changes stay extra
        try:
            res = self.resolve(act, [ours, *theirs])
            own.saved = StateStore.encode(current.data, own.epoch)
            agent.restore(res.value)
            value = StateStore.encode(agent.checkpoint(), own.epoch)
        except Exception:  # hostile siblings, a restore that cannot take the result
            log.exception("%s: resolving concurrent versions failed: keeping this copy's state", act.address)
            agent.restore(ours.value)
            value = StateStore.encode(ours.value, own.epoch)
        else:
            v.stamp = max(v.stamp or NO_STAMP, res.stamp)
        self._mark(act, own, value)

    # -- a stale copy ----------------------------------------------------------------------

    async def settle(self, act: Activation, own: Owned) -> None:
        """``act`` was superseded (another node owns the agent) with changes it acknowledged
        but did not store: store them as a sibling in the owner's record (CAS), for the
        owner to resolve. Gives up (logged, counted as lost) after :data:`_SETTLE_FOR` s."""
        if own.lock is None:
            own.lock = asyncio.Lock()
        async with own.lock:  # after a write of ours in flight
            v = own.versions
            if own.unflushed is None or v is None:
                return
            changes = own.marks - own.stored_marks
            try:
                data = codec.decode(own.unflushed, None)["data"]  # our own encoding
                ours = Sibling(data, _plus(v.vv or VersionVector(), self.node_id, changes), v.stamp or self.hlc.now())
            except Exception as exc:
                log.error("%s: cannot keep its unstored changes as a sibling: %s", act.address, exc)
                return
            loop = asyncio.get_running_loop()
            end, delay = loop.time() + _SETTLE_FOR, 0.05
            while True:
                try:
                    stored = await self._store_sibling(act, ours, own.epoch)
                except PayloadTooLarge as exc:
                    log.error("%s: its unstored changes do not fit beside the owner's state: %s", act.address, exc)
                    return
                except NatsAgentsError as exc:  # FencedOff (someone wrote meanwhile) included
                    if loop.time() > end:
                        log.error("%s: storing its unstored changes as a sibling failed: %s", act.address, exc)
                        return
                    if not isinstance(exc, FencedOff):
                        await asyncio.sleep(delay)  # a retry's backoff
                        delay = min(delay * 2, 1.0)
                    continue
                own.stored_marks = own.marks
                own.unflushed = None
                if stored:
                    self._count(act.kind, "siblings")
                    log.warning(
                        "%s: superseded with %d unstored change(s): stored beside the owner's state for it to "
                        "resolve (%s, split_brain_allowed)",
                        act.address,
                        changes,
                        type(act.agent).conflict_resolution,
                    )
                return

    async def _store_sibling(self, act: Activation, ours: Sibling[Any], epoch: int) -> bool:
        """One CAS storing ``ours`` in the record (``epoch``: ours, for a record that is
        gone); ``False`` if the record had seen it."""
        kind, agent_id = act.kind, act.agent_id
        current = await self._state.load(kind, agent_id, leader=True)
        limit = type(act.agent).max_state_bytes
        if current.revision == 0 or current.empty:  # nothing stored but a takeover's fence
            value = StateStore.with_extras(
                StateStore.encode(ours.value, current.epoch or epoch), (), vv=ours.version, stamp=ours.stamp
            )
            await self._state.save_encoded(kind, agent_id, value, revision=current.revision, max_size=limit)
            return True
        if any(s.version.dominates(ours.version) for s in (current.sibling(), *current.siblings)):
            return False
        siblings = [*current.siblings, ours]
        if len(siblings) > MAX_SIBLINGS:  # fold them (deterministic): the owner resolves one
            res = self.resolve(act, siblings)
            siblings = [Sibling(res.value, res.version, res.stamp)]
        value = StateStore.with_extras(
            StateStore.encode(current.data, current.epoch),
            current.applied,
            current.seq,
            vv=current.vv or VersionVector(),
            stamp=current.stamp or NO_STAMP,
            siblings=siblings,
        )
        await self._state.save_encoded(kind, agent_id, value, revision=current.revision, max_size=limit)
        return True
