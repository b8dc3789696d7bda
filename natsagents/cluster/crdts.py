"""Copies of ``consistency = "crdt"`` agents: multi-active, merged, never fenced.

A crdt kind's state is a CRDT (``natsagents.crdt``; ``Agent.initial_state`` returns an empty
one). No directory record, no lease, no fencing: every node that serves a ``kind/id`` holds
its own copy, writing as its own replica id, and the copies converge by merging.

* **Where copies run.** An activation request for a crdt kind is answered by the node that
  receives it (no placement), so a side of a partition that reaches no copy starts its own.
  A node hosting the kind also starts a copy when it hears a delta for an agent it does not
  hold ("follow"), so every node that hosts the kind holds a copy of each agent being
  written. Calls reach any copy (the agent queue group; NATS does not prefer the caller's
  server, and keeps routing to the far side of a cut until it drops the route: protocol
  §21.1).
* **Fast path.** After each action that changed the state the copy publishes the delta
  (``Agent.mutate``; the whole state when the action assigned ``self.state``) on
  ``<prefix>.crdt.<kind>.<token>`` over core NATS; the other copies merge it. A delta that
  does not decode as the kind's CRDT type, or does not merge with it, is dropped and counted
  (``natsagents_crdt_deltas_total{outcome="dropped"}``): never a crash, never a change.
* **Durable path (anti-entropy).** Each copy with changes the record may lack merges its
  state into the agent's state record by read-merge-compare-and-set, coalesced within the
  kind's ``flush_interval`` (``state.behind.WriteBehind``, as eventual's write-behind, with
  the same backoff). One watch per hosted kind merges every record change into the local
  copy (and a copy that finds itself ahead of the record flushes again). A copy that missed
  deltas, was partitioned or starts later catches up from the record.
* **Partitions** (``crdt_sync``). While the node's partition state is not ``ok`` it says
  hello on each hosted kind every 0.1 s; a node hearing one from a node silent for a second
  (the servers route again) echoes it and publishes the digest (causal context, or a hash)
  of each copy changed meanwhile; a copy whose digest shows the other lacks something
  answers with its whole state at once. Backstops: digests every 0.5 s while not ``ok``,
  twice at the heal (with a merge into the record). A copy that receives a whole state
  lacking something it holds answers with its own at once (a causal type: before merging,
  when the sender's causal context lacks a dot it has seen).
* **Stop** (deactivation, idle, drain, node close): the copy flushes before it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from ..agent.base import Agent
from ..crdt import CausalContext, Crdt, CrdtDecodeError, CrdtError, CrdtTypeError
from ..crdt.dots import context_of
from ..errors import HandlerError, NatsAgentsError
from ..observability import Metrics
from ..observability.logging import warn_ignored
from ..runtime.activation import Activation, ActivationState
from ..runtime.host import Host
from ..state.behind import WriteBehind
from ..state.store import FencedOff, StateStore
from ..tasks import TaskGroup
from ..transport import Inbound, Subscription, Transport
from ..wire import codec
from ..wire import headers as h
from ..wire.envelope import RequestMeta, encode_headers
from ..wire.ids import agent_key, decode_id, encode_id, validate_kind
from ..wire.subjects import crdt_subject
from .crdt_sync import HELLO, CrdtCopy, CrdtSync, _digest
from .partition import PartitionEvent, PartitionMonitor

__all__ = ["CrdtCopies", "CrdtCopy"]

log = logging.getLogger("natsagents.cluster.crdt")

#: Most deltas of one action joined into the delta it ships; beyond, the whole state is
#: shipped (joining thousands of deltas one by one is quadratic; the state is a valid delta).
_MAX_DELTAS = 64
#: Read-merge-CAS attempts of one flush before it counts as failed (and is retried later).
_CAS_ATTEMPTS = 8


def _join(deltas: list[Crdt]) -> Crdt:
    """The join of ``deltas``, pairwise (balanced: each level is linear in what it joins)."""
    while len(deltas) > 1:
        deltas = [
            deltas[i].merge(deltas[i + 1]) if i + 1 < len(deltas) else deltas[i] for i in range(0, len(deltas), 2)
        ]
    return deltas[0]


def _is_crdt_copy(act: Activation) -> bool:
    return isinstance(act.cluster, CrdtCopy)


class CrdtCopies:
    """The crdt copies of one node (see the module docstring).

    Args:
        transport: the node's connection (deltas).
        host: the host the copies run on.
        state: the state store (records).
        prefix: the mesh's subject prefix.
        node_id: this node (replica ids start with it; our own deltas are skipped).
        metrics: where deltas and merges are counted.
        tasks: the node's task group.
    """

    def __init__(
        self,
        transport: Transport,
        host: Host,
        state: StateStore,
        *,
        prefix: str,
        node_id: str,
        metrics: Metrics,
        tasks: TaskGroup,
    ) -> None:
        self._t = transport
        self._host = host
        self._state = state
        self._prefix = prefix
        self._node = node_id
        # One incarnation per process: a node that restarts writes under new replica ids
        # (what it wrote before and lost in a crash must not be written again as new).
        self._incarnation = uuid.uuid4().hex[:8]
        self._metrics = metrics
        self._tasks = tasks
        self._kinds: dict[str, Subscription | None] = {}
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._copies: dict[tuple[str, str], Activation] = {}  # (kind, token) → copy
        self._following: set[tuple[str, str]] = set()
        # A copy whose final flush failed: the next copy of that agent here writes under a
        # new replica id (what the old one wrote may live on elsewhere, unknown here).
        self._generations: dict[tuple[str, str], int] = {}
        self._closing = False
        # Header blocks of our deltas, built once (protocol §21.2).
        self._block = encode_headers({h.CRDT_NODE: node_id})
        self._whole_block = encode_headers({h.CRDT_NODE: node_id, h.CRDT_WHOLE: "1"})
        #: Hellos, digests and the rounds that catch copies up after a cut (§21.4).
        self.sync = CrdtSync(
            transport,
            prefix=prefix,
            node_id=node_id,
            metrics=metrics,
            tasks=tasks,
            copies=self._copies,
            publish=lambda act, state, whole: self._publish(act, state, whole=whole),
            flush_soon=self._flush_soon,
            closing=lambda: self._closing,
        )
        self.behind: WriteBehind[Activation] = WriteBehind(
            self._flush,
            tasks,
            dirty=lambda act: isinstance(act.cluster, CrdtCopy) and act.cluster.dirty,
            stale=lambda act: act.state is ActivationState.STOPPED,
        )

    # -- kinds -------------------------------------------------------------------------

    def kind_added(self, cls: type[Agent]) -> None:
        """Subscribe the kind's deltas and watch its records (in the node's task group)."""
        if cls.kind not in self._kinds:
            self._kinds[cls.kind] = None
            self._tasks.spawn(self._start_kind(cls.kind), name=f"crdt {cls.kind}")

    async def ensure_kind(self, kind: str) -> None:
        """Wait until the kind's delta subscription exists (before a copy starts)."""
        if self._kinds.get(kind) is None:
            await self._start_kind(kind)

    async def _start_kind(self, kind: str) -> None:
        if self._kinds.get(kind) is not None or self._closing:
            return
        subject = f"{self._prefix}.crdt.{validate_kind(kind)}.*"
        sub = await self._t.subscribe(subject, self._on_delta)
        if self._kinds.get(kind) is not None:  # started twice at once: keep the first
            with contextlib.suppress(NatsAgentsError):
                await sub.unsubscribe()
            return
        self._kinds[kind] = sub
        self._watches[kind] = self._tasks.spawn(self._watch(kind), name=f"crdt watch {kind}")

    async def close(self) -> None:
        """Stop following deltas and records (the host then stops the copies, which flush)."""
        self._closing = True
        for task in self._watches.values():
            task.cancel()
        for sub in self._kinds.values():
            if sub is not None:
                with contextlib.suppress(NatsAgentsError):
                    await sub.unsubscribe()

    # -- a copy's life (the node's host hooks) -------------------------------------------

    async def starting(self, act: Activation) -> None:
        """Load the record, merge it into the initial state, name the replica."""
        agent = act.agent
        initial = agent.state
        if not isinstance(initial, Crdt):
            raise HandlerError(
                f"{act.address}: a crdt kind's initial_state() must return a CRDT of natsagents.crdt, "
                f"not {type(initial).__name__}",
                agent=act.address,
            )
        kind, agent_id = act.kind, act.agent_id
        await self.ensure_kind(kind)
        # From the stream leader: a lagging replica would only make the copy catch up later.
        entry = await self._state.bucket.get(agent_key(kind, agent_id), leader=True)
        state = initial
        revision = 0
        if entry is not None:
            revision = entry.revision
            remote = self._decode_record(act, initial, entry.value)  # garbage: ignored, overwritten
            if remote is not None:
                state = initial.merge(remote)
        key = (kind, agent_id)
        token = encode_id(agent_id)
        if (kind, token) in self._copies:
            # The previous copy here is still stopping: its last changes may not be in the
            # record read above, so this copy must not write under the same replica id.
            self._generations[key] = self._generations.get(key, 0) + 1
        generation = self._generations.get(key, 0)
        replica = f"{self._node}:{self._incarnation}" + (f":{generation}" if generation else "")
        act.cluster = CrdtCopy(replica, token, state, revision)
        agent._replica = replica
        agent._deltas = None
        agent.state = state
        self._copies[(kind, token)] = act

    async def after_action(self, act: Activation, meta: RequestMeta) -> None:
        """Acknowledge what the action did: merge it into ``acked``, publish the delta,
        schedule the record merge. A read-only action that changed the state, or a state
        that is no longer the kind's CRDT, fails the action (rolled back)."""
        copy: CrdtCopy = act.cluster
        agent = act.agent
        deltas, agent._deltas = agent._deltas, None
        state = agent.state
        before = copy.acked
        if not deltas and state is before:
            return
        spec = agent.__actions__.get(meta.action)
        if not isinstance(state, type(before)):
            self.rollback(act)
            raise HandlerError(
                f"{act.address}: the state of a crdt kind must stay a {type(before).__name__}, "
                f"not {type(state).__name__}",
                agent=act.address,
                action=meta.action,
                details={"state": "rolled back"},
            )
        try:
            delta: Crdt = state
            if deltas:
                if len(deltas) <= _MAX_DELTAS:
                    delta = _join(deltas)
            elif state == before:
                return
            merged = state.merge(before)
        except (CrdtError, CrdtTypeError, TypeError) as exc:
            self.rollback(act)
            raise HandlerError(
                f"{act.address}: the action's mutation does not merge with the state: {exc}",
                agent=act.address,
                action=meta.action,
                details={"state": "rolled back"},
            ) from None
        if spec is not None and spec.read_only and merged != before:
            self.rollback(act)
            raise HandlerError(
                f"read-only action {meta.action} changed the state of {act.address}: the change is discarded",
                agent=act.address,
                action=meta.action,
                details={"state": "rolled back", "read_only": True},
            )
        copy.acked = agent.state = merged
        copy.changed_at = time.monotonic()
        await self._publish(act, delta)
        self._changed(act, copy)

    def rollback(self, act: Activation) -> None:
        """Back to the acknowledged state (an action failed)."""
        copy: CrdtCopy = act.cluster
        act.agent._deltas = None
        act.agent.state = copy.acked

    async def save_now(self, act: Activation) -> None:
        """``Agent.save_state()``: merge into the record now."""
        copy: CrdtCopy = act.cluster
        copy.marks += 1
        await self.behind.flush_now(act)

    async def stopped(self, act: Activation, *, discard: bool) -> None:
        """The copy stopped: merge what it holds into the record (even when ``discard``:
        a merge never takes anything away), then forget it."""
        copy: CrdtCopy | None = act.cluster
        if copy is None:
            return
        try:
            if copy.dirty:
                await self.behind.flush_now(act)
        except Exception as exc:
            lost = copy.marks - copy.stored_marks
            key = (act.kind, act.agent_id)
            self._generations[key] = self._generations.get(key, 0) + 1
            log.error(
                "%s stopped with %d change(s) not merged into its record (%s): they survive only where "
                "another copy received them",
                act.address,
                lost,
                exc,
            )
            self._metrics.crdt_merges.labels(act.kind, "lost").inc()
        finally:
            self.behind.forget(act)
            if self._copies.get((act.kind, copy.token)) is act:  # not replaced by a newer copy
                del self._copies[(act.kind, copy.token)]

    # -- deltas (core NATS) --------------------------------------------------------------

    async def _publish(self, act: Activation, delta: Crdt, *, whole: bool = False) -> None:
        """Publish a delta (``whole``: the copy's whole state, which a copy holding more
        answers with its own: one round trip merges both ways)."""
        kind = act.kind
        copy = act.cluster
        try:
            cached = copy.wire if isinstance(copy, CrdtCopy) else None
            if cached is not None and cached[0] is delta:
                data = cached[1]  # immutable: the same value, the same bytes
            else:
                data = delta.to_wire()
                if whole and isinstance(copy, CrdtCopy):
                    copy.wire = (delta, data)
                    if delta is copy.acked:
                        copy.learned(_digest(data))
            if len(data) + 256 > self._t.max_payload:
                self._metrics.crdt_deltas.labels(kind, "too_large").inc()
                return  # the record carries it (anti-entropy)
            subject = f"{self._prefix}.crdt.{kind}.{copy.token}" if isinstance(copy, CrdtCopy) else ""
            if not subject:
                subject = crdt_subject(self._prefix, kind, act.agent_id)
            await self._t.publish(subject, data, headers=self._whole_block if whole else self._block)
        except (NatsAgentsError, ValueError, TypeError) as exc:
            # Not connected, or closing: the record carries it.
            log.debug("publishing a delta of %s failed: %s", act.address, exc)
            self._metrics.crdt_deltas.labels(kind, "failed").inc()
            return
        self._metrics.crdt_deltas.labels(kind, "sent").inc()

    def _on_delta(self, msg: Inbound) -> None:
        hdrs = msg.headers
        if hdrs is not None and hdrs.get(h.CRDT_NODE) == self._node:
            return  # our own
        parts = msg.subject.split(".")
        if len(parts) < 3:
            return
        kind, token = parts[-2], parts[-1]
        if token == HELLO:
            if hdrs is not None and kind in self._kinds:
                self.sync.on_hello(kind, hdrs.get(h.CRDT_NODE, ""), hdrs)
            return
        digest = hdrs is not None and hdrs.get(h.CRDT_DIGEST) == "1"
        act = self._copies.get((kind, token))
        if act is None:
            if digest:
                return  # no copy here: nothing to compare (a copy starts with a delta)
            if kind in self._host.kinds:
                self._metrics.crdt_deltas.labels(kind, "no_copy").inc()
                self._follow(kind, token, msg.data)
            return
        if act.state is not ActivationState.ACTIVE:
            return
        if digest:
            self.sync.on_digest(act, msg.data)
            return
        self._merge_delta(act, msg.data, whole=hdrs is not None and hdrs.get(h.CRDT_WHOLE) == "1")

    def _merge_delta(self, act: Activation, data: bytes, *, whole: bool = False) -> None:
        copy: CrdtCopy = act.cluster
        digest = b""
        if whole:
            # A partition's gossip repeats an unchanged state every 0.5 s, and a node's whole
            # state may be what its record (merged here already) holds: decode it once.
            digest = _digest(data)
            if copy.knows(digest):
                self._metrics.crdt_deltas.labels(act.kind, "repeated").inc()
                if not copy.holds_exactly(data):  # we hold all of it, maybe more
                    if copy.acked.CAUSAL:
                        # Our digest: the sender answers with what we lack, or learns what
                        # it lacks (a repeat already on its way when our answer left is
                        # not answered with our whole state again).
                        self._tasks.spawn(self.sync.publish_digest(act, copy), name="crdt digest")
                    else:
                        self._answer(act, copy.acked)
                return
        before = copy.acked
        answered = False
        if whole and before.CAUSAL:
            # A whole state's causal context first (cheap: its entries are not decoded yet).
            # If it lacks a dot we have seen, the sender (a copy across a healed cut) misses
            # something of ours: answer at once with the state we hold, while we merge its
            # own. (A context that ours covers may still hold a removal we lack: merged.)
            try:
                obj = codec.decode(data)
                theirs = context_of(obj, before.TAG)
            except (ValueError, CrdtDecodeError) as exc:
                warn_ignored(log, "crdt delta", act.address, exc)
                self._metrics.crdt_deltas.labels(act.kind, "dropped").inc()
                return
            mine: CausalContext = before.context  # type: ignore[attr-defined]
            if not theirs.covers(mine):
                answered = self._answer(act, before, theirs)
            remote = self._decode_obj(act, before, obj)
        else:
            remote = self._decode_wire(act, before, data, "delta")
        if remote is None:
            self._metrics.crdt_deltas.labels(act.kind, "dropped").inc()
            return
        merged = self._merge_in(act, copy, remote)
        if merged is None:
            self._metrics.crdt_deltas.labels(act.kind, "dropped").inc()
            return
        if whole:
            copy.learned(digest)
            if not answered and merged != remote:
                # A copy that missed something of ours (across a cut): everything at once.
                self._answer(act, merged)
        self._metrics.crdt_deltas.labels(act.kind, "applied").inc()
        # Not stored from here: its writer merges it into the record. Should the writer
        # crash first, this copy still holds it, and stores it with its own next change,
        # when the record's next change shows the record lacks it (``_pull``), at a heal,
        # or when it stops (it is marked as received-but-unstored).
        copy.marks += 1  # counted, not scheduled

    def _answer(self, act: Activation, state: Crdt, lacking: CausalContext | None = None) -> bool:
        """Answer a copy that lacks some of ``state``: with what it lacks (``lacking``: its
        causal context) or the whole state; not again within 1 s when the last answer
        holds it all (``CrdtSync.answer``)."""
        return self.sync.answer(act, act.cluster, state, lacking)

    def _follow(self, kind: str, token: str, data: bytes) -> None:
        """A delta for an agent of a kind we host but hold no copy of: start one (it loads
        the record) and merge the delta into it."""
        key = (kind, token)
        if key in self._following or self._closing or self._tasks.closed or len(data) > self._t.max_payload:
            return
        try:
            agent_id = decode_id(token)
        except (NatsAgentsError, ValueError):
            self._metrics.crdt_deltas.labels(kind, "dropped").inc()
            return
        self._following.add(key)
        self._tasks.spawn(self._start_following(kind, agent_id, key, data), name="crdt follow")

    async def _start_following(self, kind: str, agent_id: str, key: tuple[str, str], data: bytes) -> None:
        try:
            act = await self._host.activate(kind, agent_id)
        except Exception as exc:
            log.debug("following %s/%s failed: %s", kind, agent_id, exc)
            return
        finally:
            self._following.discard(key)
        if _is_crdt_copy(act) and act.state is ActivationState.ACTIVE:
            self._merge_delta(act, data)

    # -- the record (JetStream KV) ----------------------------------------------------------

    def _changed(self, act: Activation, copy: CrdtCopy) -> None:
        copy.marks += 1
        if not self._tasks.closed:
            self.behind.mark(act, type(act.agent).flush_interval)

    async def _flush(self, act: Activation) -> None:
        """Merge the copy into its record: read, merge, compare-and-set (again on a
        conflict); the record's content is merged into the copy too."""
        copy: CrdtCopy | None = act.cluster
        if not isinstance(copy, CrdtCopy):
            return
        kind, agent_id = act.kind, act.agent_id
        marks = copy.marks
        bucket = self._state.bucket
        key = agent_key(kind, agent_id)
        for attempt in range(_CAS_ATTEMPTS):
            entry = await bucket.get(key, leader=attempt > 0)
            local = copy.acked
            remote: Crdt | None = None
            revision = 0
            value: bytes | None = None
            if entry is not None:
                revision = entry.revision
                if revision == copy.revision:
                    # The record this copy wrote or merged last: the copy holds all of it, so
                    # the merge is the copy itself; equal bytes (canonical encoding) mean
                    # the record has everything too. Nothing to decode.
                    value = StateStore.encode(local.to_wire(), 0)
                    if value == entry.value:
                        copy.stored_marks = max(copy.stored_marks, marks)
                        return
                else:
                    remote = self._decode_record(act, local, entry.value)
            merged = local
            if remote is not None:
                try:
                    merged = local.merge(remote)
                except (CrdtError, CrdtTypeError, TypeError):
                    remote = None  # a record of another type: overwritten by ours
                else:
                    if merged == remote:  # the record has everything we have
                        self._merge_in(act, copy, remote)
                        copy.revision = max(copy.revision, revision)
                        copy.stored_marks = max(copy.stored_marks, marks)
                        return
            if value is None:
                value = StateStore.encode(merged.to_wire(), 0)
            try:
                written = await self._state.save_encoded(
                    kind, agent_id, value, revision=revision, max_size=type(act.agent).max_state_bytes
                )
            except FencedOff:
                await asyncio.sleep(0.005 * (attempt + 1))  # another copy merged first: again
                continue
            except Exception:
                self._metrics.crdt_merges.labels(kind, "failed").inc()
                raise
            copy.revision = max(copy.revision, written)
            if remote is not None:
                self._merge_in(act, copy, remote)
            copy.stored_marks = max(copy.stored_marks, marks)
            self._metrics.crdt_merges.labels(kind, "stored").inc()
            return
        self._metrics.crdt_merges.labels(kind, "failed").inc()
        raise NatsAgentsError(f"merging {act.address} into its record: {_CAS_ATTEMPTS} conflicts in a row")

    async def _watch(self, kind: str) -> None:
        """Merge every change of the kind's records into the local copies."""
        delay = 0.1
        while not self._closing:
            try:
                async with self._state.bucket.watch(f"{kind}.*") as watch:
                    async for entry in watch:
                        delay = 0.1
                        if entry is None or entry.operation != "put":
                            continue
                        token = entry.key.rsplit(".", 1)[-1]
                        act = self._copies.get((kind, token))
                        if act is None or act.state is not ActivationState.ACTIVE:
                            continue
                        self._pull(act, entry.value, entry.revision)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:
                    return
                log.warning("watching the crdt records of %s failed (%s): again in %.1f s", kind, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _pull(self, act: Activation, value: bytes, revision: int) -> None:
        copy: CrdtCopy = act.cluster
        if revision <= copy.revision:
            return  # written by this copy, or merged already
        self._pull_one(act, copy, value, revision)
        if copy.dirty:  # the record stream answers: a merge retrying after a cut goes soon
            self.behind.hurry(act, type(act.agent).flush_interval)

    def _pull_one(self, act: Activation, copy: CrdtCopy, value: bytes, revision: int) -> None:
        data = self._record_data(act, value)
        copy.revision = revision
        if data is None:
            return
        digest = _digest(data) if isinstance(data, bytes) else b""
        if digest and copy.knows(digest):  # merged here already (its writer's whole state)
            if copy.holds_exactly(data):
                copy.stored_marks = copy.marks
            else:
                self._changed(act, copy)  # we may hold more: the flush compares bytes first
            return
        remote = self._decode(act, copy.acked, data, "state record")
        if remote is None:
            return
        merged = self._merge_in(act, copy, remote)
        if merged is not None and digest:
            copy.learned(digest)
        if merged is not None and merged != remote:
            self._changed(act, copy)  # we hold more than the record: merge it in again
        elif merged is not None:
            copy.stored_marks = copy.marks  # the record has everything we have

    def _merge_in(self, act: Activation, copy: CrdtCopy, remote: Crdt) -> Crdt | None:
        """Merge ``remote`` into the acknowledged state and the live one (an action running
        now keeps it: its result is merged with ``acked`` when it ends)."""
        before = copy.acked
        try:
            merged = before.merge(remote)
        except (CrdtError, CrdtTypeError, TypeError) as exc:
            warn_ignored(log, "crdt value", act.address, exc)
            return None
        if merged is not before:
            copy.acked = merged
            copy.changed_at = time.monotonic()
        live = act.agent.state
        if live is before:  # no action under way: nothing else to merge it into
            act.agent.state = merged
        elif live is not merged:
            try:
                act.agent.state = live.merge(remote) if isinstance(live, type(merged)) else merged
            except (CrdtError, CrdtTypeError, TypeError):
                act.agent.state = merged
        return merged

    def _decode_record(self, act: Activation, like: Crdt, value: bytes) -> Crdt | None:
        data = self._record_data(act, value)
        return None if data is None else self._decode(act, like, data, "state record")

    def _record_data(self, act: Activation, value: bytes) -> Any:
        """A state record's ``data`` (``None``: empty, or not a record: counted, ignored)."""
        try:
            stored = StateStore.parse(value)
        except NatsAgentsError as exc:
            warn_ignored(log, "crdt state record", act.address, exc)
            self._metrics.crdt_merges.labels(act.kind, "dropped").inc()
            return None
        return None if stored.empty else stored.data

    def _decode(self, act: Activation, like: Crdt, data: Any, what: str) -> Crdt | None:
        if not isinstance(data, bytes):
            warn_ignored(log, f"crdt {what}", act.address, f"expected bytes, got {type(data).__name__}")
            return None
        return self._decode_wire(act, like, data, what)

    def _decode_obj(self, act: Activation, like: Crdt, obj: Any) -> Crdt | None:
        try:
            return type(like).from_obj(obj)
        except (CrdtDecodeError, CrdtTypeError, RecursionError) as exc:
            warn_ignored(log, "crdt delta", act.address, exc)
            return None

    def _decode_wire(self, act: Activation, like: Crdt, data: bytes, what: str) -> Crdt | None:
        try:
            return type(like).from_wire(data)
        except (CrdtDecodeError, CrdtTypeError, RecursionError) as exc:
            warn_ignored(log, f"crdt {what}", act.address, exc)
            return None

    # -- partitions (crdt_sync.CrdtSync) ---------------------------------------------------

    def watch_partition(self, monitor: PartitionMonitor) -> None:
        """Follow the node's partition state: hellos and digests while it is not ``ok``,
        digests and record merges at the heal (``crdt_sync``)."""
        self.sync.watch_partition(monitor)

    def on_partition(self, event: PartitionEvent) -> None:
        self.sync.on_partition(event)

    async def _flush_soon(self, act: Activation) -> None:
        """Merge into the record now (a retry's backoff timer is cancelled)."""
        try:
            await self.behind.flush_now(act)
        except Exception as exc:
            log.warning("merging %s into its record after the heal failed (%s): retried", act.address, exc)
            if not self._tasks.closed and act.state is ActivationState.ACTIVE:
                self.behind.mark(act, type(act.agent).flush_interval)

    def held(self) -> list[str]:
        """The addresses of the crdt copies held here."""
        return sorted(a.address for a in self._copies.values())
