"""Ownership of the agents this node runs: the host's hooks (``runtime.hooks.NodeHooks``)
for claims, state and fencing.

* **starting** an activation reserves its resources, claims the directory record
  (create-if-absent, or a CAS takeover from a lapsed owner with ``epoch + 1``), loads the
  agent's state and calls ``restore``; a takeover first *adopts* the state, which fences
  the previous owner.
* **after each action** the checkpoint is saved with a CAS on the revision this copy last
  wrote (when it changed), before the reply; a batch of durable messages is stored in one
  write (``begin_batch`` / ``end_batch``, undone by ``abort_batch``). A CAS failure means
  another node owns the agent: the reply is ``unavailable`` + retry and this copy stops.
* a failed action or an unstorable state **rolls back** to the last stored checkpoint.
* **stopping** saves a final checkpoint and releases the record (CAS).
* a **directory change** naming another owner stops this copy at once (``fenced``).
* **serving** (``serving.LeaseGate``) gates every message on the node's own lease: a copy runs nothing while the
  node's last stored heartbeat is older than its lease (others may be taking it over),
  and after such a gap it re-reads its claim first (a paused or cut-off node that wakes
  up stops its stale copies before it touches their backlog).
* on the **minority side** of a partition (``partition.PartitionMonitor``: connected,
  but no heartbeat stored for a lease) a kind with ``partition_strategy =
  "pause_minority"`` answers ``PartitionError`` at once instead of waiting for its lease,
  and a save retrying there gives up with it (rolled back): the majority takes the agent
  over after its lease; at the heal the copy re-verifies its claim and stops if it moved.
  A ``"continue_degraded"`` kind is served degraded there instead (``DEGRADED``: reads on
  the last known state, writes queued, ``cluster.degraded``).
* a **takeover** is judged on a trusted view only: while our own lease is lapsed, or for
  a lease after a gap, every owner counts as live (our view of them is stale).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import (
    AgentError,
    CallTimeout,
    ClusterAtCapacity,
    HandlerError,
    MeshClosed,
    NatsAgentsError,
    PartitionError,
    PayloadTooLarge,
    TransportError,
    Unavailable,
)
from ..observability import Metrics
from ..runtime.activation import Activation
from ..runtime.dedup import APPLIED_MAX_BYTES, DURABLE_WINDOW, keep_until_ms, trim_applied
from ..runtime.host import Host
from ..state.behind import WriteBehind
from ..state.store import Applied, FencedOff, StateStore, StoredState
from ..tasks import TaskGroup
from ..wire import codec
from ..wire.envelope import RequestMeta
from ..wire.ids import agent_key
from .asks import ActivationAsk
from .conflicts import Conflicts, Deferred
from .directory import Claim, Directory
from .local import LocalNode
from .membership import Membership
from .minority import cut_off_while_storing, minority_answer
from .owned import Owned
from .partition import PartitionMonitor
from .placement import Resources
from .serving import LeaseGate
from .successor import Successors

__all__ = ["Owned", "Ownership"]  # Owned: re-exported from .owned

log = logging.getLogger("natsagents.cluster.node")

# Applied message ids persisted with an agent's state (see runtime.dedup): each until its
# request's deadline + 1 s (at most REPLY_WINDOW; a durable one DURABLE_WINDOW), with its ok
# reply, within APPLIED_MAX_BYTES (dedup.trim_applied: the oldest replies go first).


class Ownership:
    """Claims, state and fencing of the agents this node runs.

    Args:
        local: this node's own state (reservations, closing, agents moving away).
        host: the host the agents run on.
        directory: the directory (claims).
        state: the state store.
        is_live: whether a node's lease holds (a claim over a lapsed owner is a takeover).
        membership: this node's own lease (``serving``) and whether its view is trusted.
        metrics: where saves and fencings are counted.
        tasks: the node's task group (stopping a fenced copy runs there).
        partition: the node's partition state (``pause_minority`` kinds pause on the
            minority side); ``None``: never paused.
    """

    def __init__(
        self,
        local: LocalNode,
        host: Host,
        directory: Directory,
        state: StateStore,
        *,
        is_live: Callable[[str], bool],
        membership: Membership,
        metrics: Metrics,
        tasks: TaskGroup,
        partition: PartitionMonitor | None = None,
        successors: Successors | None = None,
    ) -> None:
        self._partition = partition
        self._successors = successors
        self._local = local
        self._host = host
        self._directory = directory
        self._state = state
        self._is_live = is_live
        self._membership = membership
        self._metrics = metrics
        self._tasks = tasks
        self.behind: WriteBehind[Activation] = WriteBehind(
            self._flush_behind,
            tasks,
            dirty=lambda act: act.cluster is not None and act.cluster.unflushed is not None,
            stale=lambda act: act.cluster is None or act.cluster.handed_over,
        )
        self.conflicts = Conflicts(local.node_id, state, metrics, tasks, self._mark_resolved)
        gate = LeaseGate(local.node_id, directory, membership, partition, self.fenced)
        self.serving = gate.serving
        self.still_cut_off = gate.still_cut_off
        self.verify_claim = gate.verify_claim

    def owner_live(self, node: str) -> bool:
        """Whether a claim must treat ``node`` as a live owner: it is live in our view, or
        our view cannot be trusted (``Membership.view_trusted``: after a pause or a cut
        the others' records look old until their next heartbeats reach us)."""
        return self._is_live(node) or not self._membership.view_trusted()

    async def starting(self, act: Activation, options: Any) -> None:
        """Claim the directory record, adopt/load the state and restore the agent."""
        if self._local.closing:
            raise MeshClosed("the node is closing")
        ask = options if isinstance(options, ActivationAsk) else ActivationAsk(act.agent_id)
        agent = act.agent
        cls = type(agent)
        kind, agent_id = act.kind, act.agent_id
        needs = ask.needs if ask.needs is not None else self._local.needs(kind)
        node_id = self._local.node_id
        free = self._local.free()
        if not needs.within(free):
            raise ClusterAtCapacity(
                f"node {node_id} has not enough free resources for {act.address} (free {free}, needs {needs})",
                agent=act.address,
                kind=kind,
                needs=needs.to_wire(),
                rejected={node_id: "not enough free resources"},
            )
        self._local.reserve(needs)  # others place by our reservations: it tells them soon
        try:
            transfer = ask.transfer
            persist = cls.persistence != "none"
            stored_data: Any = None
            stored_epoch = 0
            revision = 0
            applied = list(ask.applied)
            seq = ask.seq
            empty = False  # the stored record only fences a takeover (no state saved yet)
            record: StoredState | None = None  # what was loaded or adopted (its version)
            if transfer is None and persist:
                stored = record = await self._load_state(kind, agent_id, ask.min_revision)
                stored_data, stored_epoch, revision = stored.data, stored.epoch, stored.revision
                empty = stored.empty
                applied.extend(a for a in stored.applied if a not in applied)
                seq = max(seq, stored.seq)
            elif transfer is not None:
                stored_data, stored_epoch, revision = transfer.data, transfer.epoch, transfer.revision
            gaps = self._membership.gaps
            claim = await self._directory.claim(
                kind,
                agent_id,
                self._local.node_id,
                is_live=self.owner_live,
                confirm_lapsed=self._membership.confirm_lapsed,
                min_epoch=stored_epoch + 1,
                restart=cls.restart,
                needs=needs.to_wire(),
                hints=ask.hints.to_wire(),
                min_revision=ask.claim_revision,
                # No copy here (a stopping one still saves) and no hand-over: a record
                # naming this node is not a line it runs (Directory.claim).
                fresh=transfer is None and ask.claim_revision <= 0 and (kind, agent_id) not in self._host.activations,
            )
            if claim.taken_over and persist:
                # Fence the lapsed owner: rewrite the state under our epoch (CAS).
                adopted = record = await self._adopt_state(kind, agent_id, claim.record.epoch)
                stored_data, revision, empty = adopted.data, adopted.revision, adopted.empty
                applied.extend(a for a in adopted.applied if a not in applied)
                seq = max(seq, adopted.seq)
            if (revision and not empty) or transfer is not None:
                agent.restore(stored_data)
            saved = None
            if cls.persistence != "none":
                # What the store holds (or the initial state, which needs no write).
                saved = StateStore.encode(agent.checkpoint(), claim.record.epoch)
            own = act.cluster = Owned(claim, revision, needs, cls.persistence, saved)
            own.eventual = cls.consistency == "eventual"
            if own.eventual:
                self.conflicts.started(act, own, record)
            own.seq = seq
            own.gaps = gaps
            act.group = claim.record.group  # the queue group of this line of ownership
            # Copies of requests the previous activation answered or applied are not run again.
            dedup = self._host.dedup
            if ask.recent is not None:
                dedup.load(act, ask.recent)
            if applied:
                applied.sort(key=lambda a: a[1])
                own.applied = trim_applied(applied, int(time.time() * 1000))
                dedup.remember_applied(act, own.applied)
        except BaseException:
            self._local.unreserve(needs, announce=False)
            raise

    async def _load_state(self, kind: str, agent_id: str, min_revision: int) -> StoredState:
        deadline = time.monotonic() + 2.0
        while True:
            # From the stream leader: a lagging replica (a server that rejoined after a
            # partition) would restore an old state, and reads would go back in time.
            stored = await self._state.load(kind, agent_id, leader=True)
            # The leader may not have applied a write another node just made; wait for it.
            if stored.revision >= min_revision or time.monotonic() > deadline:
                return stored
            await asyncio.sleep(0.005)

    async def _adopt_state(self, kind: str, agent_id: str, epoch: int) -> StoredState:
        for attempt in range(5):
            try:
                return await self._state.adopt(kind, agent_id, epoch)
            except FencedOff:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))  # a stale replica read: look again
        raise AssertionError("unreachable")

    async def after_action(
        self, act: Activation, meta: RequestMeta, answered: bool, seq: int = 0, reply: bytes | None = None
    ) -> None:
        """Persist the checkpoint if it changed (``persistence = "action"``), with the
        request's id when it will be answered (a resent copy is then never applied again,
        here or by a successor). An exactly-once message (``seq``: its inbox stream
        sequence) also stores its sequence and its ``reply`` body in the same write."""
        own: Owned = act.cluster
        if own.persistence != "action":
            return
        try:
            value = StateStore.encode(act.agent.checkpoint(), own.epoch)
        except (TypeError, ValueError) as exc:
            self.rollback(act)
            raise HandlerError(
                f"state cannot be stored: {exc}", agent=act.address, details={"state": "rolled back"}
            ) from None
        batch = own.batch is not None
        if value == (own.pending if batch and own.pending is not None else own.unflushed or own.saved):
            return
        if self._read_only(act, meta):
            self.rollback(act)
            raise HandlerError(
                f"read-only action {meta.action} changed the state of {act.address}: the change is discarded",
                agent=act.address,
                action=meta.action,
                details={"state": "rolled back", "read_only": True},
            )
        entry: Applied | None = None
        previous = own.applied
        if answered or seq:
            now_ms = int(time.time() * 1000)
            # Kept while the requester (or the partition owner) may still send a copy, with
            # the reply, so that a successor answers the copy with it (runtime.dedup).
            if seq:
                expires = now_ms + int(DURABLE_WINDOW * 1000)
            else:
                expires = keep_until_ms(meta.deadline_ms, now_ms, floor_ms=1000)
            entry = (meta.message_id, expires, reply)
            limit = type(act.agent).max_state_bytes
            cap = APPLIED_MAX_BYTES if limit is None else min(APPLIED_MAX_BYTES, limit // 4)
            if own.eventual:
                own.add_applied(entry, now_ms, cap)  # persisted by a flush only: trimmed then
            else:
                own.applied = trim_applied([*own.applied_now(), entry], now_ms, cap)
        before = own.seq
        if seq:
            own.seq = seq
        if batch:
            own.pending = value  # stored by end_batch, with the whole batch
            return
        try:
            if own.eventual:
                self._behind_mark(act, own, value)  # stored within flush_interval
                if own.versions is not None and own.versions.incoming is not None and act.max_workers == 1:
                    self.conflicts.apply(act, own)  # between messages: a stale copy's sibling
            else:
                await self.save(act, value)
        except BaseException:
            own.seq = before
            if entry is not None:  # not stored: a copy may run
                if own.eventual:
                    own.drop_applied(entry)
                else:
                    own.applied = previous
            raise

    def begin_batch(self, act: Activation) -> None:
        """A batch of durable messages starts: their state changes are stored together."""
        own: Owned = act.cluster
        if own.persistence != "action" or type(act.agent).max_concurrency != 1 or own.eventual:
            # With several handlers at once, another message's write must not wait for the
            # batch (its reply would go out before its state is stored): each item writes.
            # Eventual kinds coalesce every change anyway.
            return
        own.batch = (own.seq, None if own.applied is None else list(own.applied))
        own.pending = None

    async def end_batch(self, act: Activation) -> None:
        """Store the state the batch's messages left (one CAS). On failure the state,
        sequence and applied ids go back to what was stored, and the error is raised."""
        own: Owned = act.cluster
        base, own.batch = own.batch, None
        value, own.pending = own.pending, None
        if base is None or value is None:
            return
        try:
            await self.save(act, value)
        except BaseException:
            own.seq, own.applied = base
            self.rollback(act)
            raise

    def abort_batch(self, act: Activation) -> None:
        """A batch stopped before :meth:`end_batch` (its task was cancelled): nothing of it
        was stored or answered, so the state, sequence and applied ids go back to what was
        stored; the owner sends the messages again."""
        own: Owned = act.cluster
        base, own.batch = own.batch, None
        if base is None:
            return
        own.seq, own.applied = base
        own.pending = None
        self.rollback(act)  # also undoes what the interrupted handler had changed

    def applied_seq(self, act: Activation) -> int:
        """The inbox stream sequence of the last exactly-once message ``act`` applied."""
        own: Owned | None = act.cluster
        return 0 if own is None else own.seq

    async def save_now(self, act: Activation) -> None:
        """``Agent.save_state()``: persist now whatever the persistence mode says."""
        own: Owned | None = act.cluster
        if own is None or own.persistence == "none" or own.handed_over:
            return
        if own.eventual:
            await self.behind.flush_now(act)
            return
        try:
            value = StateStore.encode(act.agent.checkpoint(), own.epoch)
        except (TypeError, ValueError) as exc:
            raise HandlerError(f"state cannot be stored: {exc}", agent=act.address) from None
        if value != own.saved:
            await self.save(act, value)

    async def save(self, act: Activation, value: bytes, *, rollback: bool = True, changes: int = 1) -> None:
        """Store ``value`` (``StateStore.encode``) with the applied ids and sequence: a CAS
        on the revision this copy last wrote, retried while its outcome is unknown.

        Raises:
            PayloadTooLarge: over the kind's ``max_state_bytes`` (rolled back).
            Unavailable: fenced off (this copy stops) or not stored in time (rolled back
                unless ``rollback`` is false: an eventual flush keeps the acknowledged state).
            Deferred: a split-brain kind's record holds concurrent versions to resolve first.
        """
        own: Owned = act.cluster
        kind = act.kind
        limit = type(act.agent).max_state_bytes
        plain = value
        if own.lock is None:
            own.lock = asyncio.Lock()
        async with own.lock:
            vv = stamp = None
            if own.versions is not None:  # eventual: the version vector and stamp (conflicts.py)
                vv, stamp = await self.conflicts.next_version(act, own, changes)
            value = StateStore.with_extras(plain, own.applied_now(), own.seq, vv=vv, stamp=stamp)
            deadline = time.monotonic() + 10.0
            delay = 0.01
            while True:
                try:
                    own.revision = await self._state.save_encoded(
                        kind, act.agent_id, value, revision=own.revision, max_size=limit
                    )
                    break
                except PayloadTooLarge:
                    self._metrics.state_saves.labels(kind, "too_large").inc()
                    if rollback:
                        self.rollback(act)
                    raise
                except FencedOff:
                    landed = await self._read_back(act, value)
                    if landed:
                        own.revision = landed
                        break
                    if own.versions is None and await self._overwritten(act, own):
                        continue  # a foreign write: ours goes over it (own.revision is its revision)
                    if own.versions is not None and own.versions.split:
                        await self.conflicts.fenced_write(act, own)  # Deferred: resolve first
                    self._metrics.state_saves.labels(kind, "fenced").inc()
                    self.fenced(act)
                    raise Unavailable(
                        f"{act.address} moved to another node; this copy stopped",
                        agent=act.address,
                        details={"retry": True},
                    ) from None
                except (CallTimeout, TransportError) as exc:
                    cut = minority_answer(self._partition, act, self._local.node_id, self._membership.lease)
                    # Cut off: the majority will take the agent over (pause_minority), or
                    # the caller's resend is queued (continue_degraded, protocol §20).
                    if isinstance(cut, PartitionError) or (cut is not None and rollback):
                        self._metrics.state_saves.labels(kind, "failed").inc()
                        if rollback:
                            self.rollback(act)
                        raise (cut if isinstance(cut, PartitionError) else cut_off_while_storing(act)) from None
                    if isinstance(exc, MeshClosed) or time.monotonic() > deadline:
                        self._metrics.state_saves.labels(kind, "failed").inc()
                        if rollback:
                            self.rollback(act)
                        raise Unavailable(
                            f"state of {act.address} could not be saved: {exc}",
                            agent=act.address,
                            details={"retry": True},
                        ) from None
                    landed = await self._read_back(act, value)  # outcome unknown: did it land?
                    if landed:
                        own.revision = landed
                        break
                    self._metrics.state_saves.labels(kind, "retried").inc()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
            own.saved = plain
            if own.versions is not None:
                own.versions.vv = vv
            self._metrics.state_saves.labels(kind, "ok").inc()

    async def _overwritten(self, act: Activation, own: Owned) -> bool:
        """Whether our state record was written by someone who does not own the agent: our
        claim still holds at the stream leader, and no node that claimed after us can have
        written it (a takeover or a hand-over claims the directory record first; protocol
        §14.3). Then ``own.revision`` becomes the foreign write's (0: it deleted the record)
        and the copy stores its own state over it, instead of stopping and leaving the
        agent to restart on garbage. ``False`` when the claim moved or cannot be read."""
        try:
            if not await self._directory.verify(own.claim):
                return False
            entry = await self._state.bucket.get(agent_key(act.kind, act.agent_id), leader=True, timeout=1.0)
        except NatsAgentsError:
            return False
        revision = 0 if entry is None else entry.revision
        if revision == own.revision:
            return False  # no write of anyone else's to go over: the CAS failed otherwise
        own.revision = revision
        self._metrics.state_saves.labels(act.kind, "overwritten").inc()
        log.warning("%s: its state record was written by someone who does not own it: stored over", act.address)
        return True

    async def _read_back(self, act: Activation, value: bytes) -> int:
        """The revision holding ``value`` if our write landed, else 0."""
        for _ in range(3):
            try:
                entry = await self._state.bucket.get(agent_key(act.kind, act.agent_id), timeout=1.0)
            except NatsAgentsError:
                await asyncio.sleep(0.05)
                continue
            return entry.revision if entry is not None and entry.value == value else 0
        return 0

    # -- consistency = "eventual": write-behind (state.behind) ---------------------------

    @staticmethod
    def _read_only(act: Activation, meta: RequestMeta) -> bool:
        spec = act.agent.__actions__.get(meta.action)
        return spec is not None and spec.read_only

    def _behind_mark(self, act: Activation, own: Owned, value: bytes) -> None:
        """An eventual agent's change is acknowledged now and stored within its
        ``flush_interval``. A state over the size limit fails the action now (rolled back)."""
        limit = self._state.max_size
        kind_limit = type(act.agent).max_state_bytes
        if kind_limit is not None:
            limit = min(limit, kind_limit)
        if len(value) > limit:
            self._metrics.state_saves.labels(act.kind, "too_large").inc()
            self.rollback(act)
            raise PayloadTooLarge(
                f"state of {act.address} is {len(value)} bytes; the limit is {limit}",
                agent=act.address,
                details={"size": len(value), "max_size": limit},
            )
        own.unflushed = value
        own.marks += 1
        self.conflicts.changed(own)
        self.behind.mark(act, type(act.agent).flush_interval)

    def _mark_resolved(self, act: Activation, own: Owned, value: bytes) -> None:
        """Store a resolved state behind (``Conflicts``; not an acknowledged change)."""
        own.unflushed = value
        self.behind.mark(act, type(act.agent).flush_interval)

    async def _flush_behind(self, act: Activation) -> None:
        """Store the newest unflushed value of ``act`` (``WriteBehind``'s flush)."""
        own: Owned | None = act.cluster
        if own is None or own.handed_over or own.unflushed is None:
            return
        value, marks = own.unflushed, own.marks
        try:
            await self.save(act, value, rollback=False, changes=marks - own.stored_marks)
        except Deferred:
            return  # concurrent versions are resolved first; the result is flushed after
        own.stored_marks = max(own.stored_marks, marks)
        if own.marks == marks:
            own.unflushed = None

    async def flush_behind(self, act: Activation) -> None:
        """Store what an eventual agent has not stored yet, now (before a graceful stop or
        a migration); a failure is logged (a final save may still store it)."""
        own: Owned | None = act.cluster
        if own is None or not own.eventual or own.handed_over:
            return
        try:
            await self.behind.flush_now(act)
        except Exception as exc:
            log.warning("flushing the state of %s failed: %s", act.address, exc)

    def forget_behind(self, act: Activation, own: Owned) -> None:
        """No more flushes of ``act``; acknowledged changes never stored are logged."""
        self.behind.forget(act)
        lost = own.marks - own.stored_marks
        if own.unflushed is not None and lost > 0 and own.handed_over:
            log.error(
                "%s: %d acknowledged change(s) were not stored and are lost: this copy was superseded "
                "(consistency = 'eventual')",
                act.address,
                lost,
            )
            self._metrics.state_saves.labels(act.kind, "lost").inc(lost)
            own.stored_marks = own.marks  # counted once

    def rollback(self, act: Activation) -> None:
        """Put the agent back to its last saved state (an action failed or could not be saved)."""
        own: Owned = act.cluster
        agent = act.agent
        if type(agent).max_concurrency != 1:
            return  # other handlers may be mid-flight on the same state
        try:
            # Within a batch: back to the state its earlier messages left (not yet stored).
            # Eventual: back to the newest acknowledged value, stored or not.
            snapshot = own.pending if own.pending is not None else own.unflushed or own.saved
            if snapshot is not None:
                agent.restore(codec.decode(snapshot, None)["data"])  # our own encoding: no limit
            elif own.revision == 0:
                agent.state = agent.initial_state()
        except Exception:
            log.exception("rolling back the state of %s failed", act.address)

    def action_failed(self, act: Activation) -> None:
        """An action raised: back to the stored state (``persistence = "action"``)."""
        own: Owned = act.cluster
        if own.persistence == "action":
            self.rollback(act)

    async def stopped(self, act: Activation, *, discard: bool) -> None:
        """Final save (unless discarded) and release of the claim."""
        own: Owned | None = act.cluster
        if own is None:
            return
        self.release(own)
        if own.eventual:
            self.conflicts.stop(own)
            if not discard and not own.handed_over:
                await self.flush_behind(act)
                if own.versions is not None and own.versions.incoming is not None:
                    self.conflicts.apply(act, own)  # concurrent versions found: nothing runs now
                    await self.flush_behind(act)
            self.forget_behind(act, own)
        if own.handed_over:
            return
        if not discard and own.persistence != "none":
            try:
                value = StateStore.encode(act.agent.checkpoint(), own.epoch)
                if value != own.saved:
                    await self.save(act, value)
            except (AgentError, TypeError, ValueError) as exc:
                log.warning("final save of %s failed: %s", act.address, exc)
                if isinstance(exc, Unavailable) and exc.details.get("retry") and own.handed_over:
                    return
        with contextlib.suppress(NatsAgentsError):
            await self._directory.release(own.claim)

    def release(self, own: Owned) -> None:
        """Give back the resources reserved for one activation (once)."""
        if own.needs != Resources():
            self._local.unreserve(own.needs)
            own.needs = Resources()

    def fenced(self, act: Activation, successor: Claim | None = None) -> None:
        """Another node owns ``act`` now: stop this copy without saving or releasing.

        ``successor``: the claim that superseded this copy, when known (else the directory
        cache's, if newer than ours). If its owner subscribes another queue group
        (``DirectoryRecord.group``: a new line of ownership), it gets its own copy of every
        message: this copy answers nothing more that it has not run
        (``Activation.superseded``, protocol §8.8). Otherwise (a migration's handover keeps
        the group; nobody known) what it will not run is refused ``unavailable`` + retry."""
        own: Owned = act.cluster
        if successor is None:
            successor = self._directory.lookup_claim(act.kind, act.agent_id)  # the watch's copy
        if (
            successor is not None
            and successor.revision > own.claim.revision
            and successor.record.node != self._local.node_id
            and successor.record.group != act.group
        ):
            act.superseded = True
            log.debug(
                "%s superseded by %s's claim (epoch %d, revision %d > %d)",
                act.address,
                successor.record.node,
                successor.record.epoch,
                successor.revision,
                own.claim.revision,
            )
        if own.handed_over:
            return
        own.handed_over = True  # not ours any more: no final save, no release
        self._metrics.fenced.labels(act.kind).inc()
        if own.eventual:
            self.conflicts.stop(own)
            if own.versions is not None and own.versions.split and own.unflushed is not None:
                self.behind.forget(act)
                self._tasks.spawn(self._settle(act, own))  # split brain: kept as a sibling
                return
            self.forget_behind(act, own)
        self._tasks.spawn(self._host.discard(act))

    async def _settle(self, act: Activation, own: Owned) -> None:
        await self.conflicts.settle(act, own)
        self.forget_behind(act, own)  # what could not be stored is counted as lost
        await self._host.discard(act)

    def _taken_over(self, act: Activation, claim: Claim) -> None:
        log.warning("%s was taken over by %s (epoch %d)", act.address, claim.record.node, claim.record.epoch)
        self.fenced(act, claim)

    async def _after_start(self, key: tuple[str, str]) -> None:
        await self._host.settled(*key)
        latest = self._directory.lookup_claim(*key)
        if latest is not None and key in self._host.activations:
            self.on_directory_change(key, latest)

    def on_directory_change(self, key: tuple[str, str], claim: Claim | None, revision: int = 0) -> None:
        """The directory watch saw ``key`` change (to ``revision``): a newer claim by another
        node fences our copy (agents moving away are the migration's business); a live
        copy's record removed or garbled is written back (``Successors.reclaim``)."""
        act = self._host.activations.get(key)
        if act is None and claim is not None and claim.record.node != self._local.node_id and self._host.holds(*key):
            # Being started here: it is not in ``activations`` until it is active, and a
            # claim it does not hear of now it would never hear of (a forged record naming
            # this node, which it started on, written back by the live owner meanwhile:
            # two copies answering every message). Judged once the start has ended.
            self._tasks.spawn(self._after_start(key), name=f"claim of {key[0]}/{key[1]} after its start")
            return
        own = act.cluster if act is not None else None
        if not isinstance(own, Owned) or key in self._local.moving:
            return  # not held here, or a copy without a claim (a crdt copy, a replica)
        assert act is not None
        if claim is None:
            if (
                revision > own.claim.revision
                and self._successors is not None
                and own.gaps == self._membership.gaps
                and self._membership.own_lease_left() > 0
            ):
                self._successors.reclaim(act, revision)  # not our release: that stops the copy first
            return
        if claim.revision <= own.claim.revision:
            if claim.revision == own.claim.revision:
                own.claim = claim  # the directory cache's copy of our own write: share it
            return
        if claim.record.node != self._local.node_id:
            if self._successors is not None:  # forged? ask that node first
                self._successors.check(act, own.claim, claim, self._taken_over)
            else:
                self._taken_over(act, claim)
        else:
            own.claim = claim
