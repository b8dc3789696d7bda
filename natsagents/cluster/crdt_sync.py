"""How crdt copies catch up across a healed cut: hellos, digests and the backstop rounds
(protocol §21.4).

The servers route again a moment after a cut heals (NATS redials a lost route about every
second); until then nothing crosses, and the copies cannot know when it will. So, while a
node's partition state is not ``ok``, and for a second after it is ``ok`` again, it says
*hello* on each crdt kind it hosts every 0.1 s (``<prefix>.crdt.<kind>.~hello``, no body):
lost while the cut lasts, the first one to cross tells the far side that the servers route
again. A node hearing a hello from a
node it has not heard for a second (:data:`SILENCE`):

* answers with a hello of its own (an *echo*, never echoed again), so that a node that is
  ``ok``, and silent, is heard too;
* publishes the *digest* of each of its copies of the kind changed during the cut (the
  longer of the sender's and its own time away from ``ok``, plus two seconds).

These *news rounds* run at most once per kind per second: news heard within a second of
a round is served by one more round at the end of that second, covering all of it (a peer
saying hello under a new name each time would otherwise draw every copy's digest each
time).

A digest names what a copy holds in a few bytes: its causal context for a causal type
(``orset``, ``mvreg``, ``ormap``), else a hash of its encoding. A copy receiving a digest
that lacks something it holds answers at once with its whole state; one that lacks
something the digest's sender holds answers with its own digest, which the sender answers
with its whole state. So both sides merge one round trip after the first hello crosses,
instead of at the next round of gossip.

Backstops, for a lost hello, digest or answer: while the node is not ``ok``, every 0.5 s
each copy changed since the partition began publishes its digest; when the state comes
back to ``ok`` every copy publishes its digest twice, 1 s apart, and merges into its record
at once; and the record (anti-entropy, protocol §21.3) carries everything in the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from ..crdt import CausalContext, Crdt, CrdtDecodeError
from ..observability import Metrics
from ..runtime.activation import Activation, ActivationState
from ..tasks import TaskGroup
from ..transport import Transport
from ..wire import codec
from ..wire import headers as h
from .partition import PartitionEvent, PartitionMonitor

__all__ = ["HELLO", "CrdtCopy", "CrdtSync", "digest_of", "parse_digest"]

log = logging.getLogger("natsagents.cluster.crdt")

#: The last subject token of a hello (never an agent id token: ``~`` is not in one, §2).
HELLO = "~hello"
#: Seconds between two hellos of a node that is not ``ok``.
HELLO_EVERY = 0.1
#: Seconds a node goes on saying hellos after its partition state is ``ok`` again.
HELLO_AFTER = 1.0
#: Seconds between two rounds of digests while the node is not ``ok`` (the backstop).
GOSSIP_EVERY = 0.5
#: Seconds after a heal at which every copy publishes its digest a second time.
RESYNC_AGAIN = 1.0
#: A hello from a node not heard for this many seconds is news: it may come from across a cut.
SILENCE = 1.0
#: Seconds within which a copy does not answer again with a whole state holding nothing
#: more than its last answer did (it is on its way; a lost one costs a backstop round).
ANSWER_AGAIN = 1.0
#: Nodes (per kind) whose last hello is remembered; beyond, the oldest are forgotten.
_MAX_HEARD = 1024
#: Longest time away from ``ok`` a hello may claim (seconds).
_MAX_CUT = 86_400.0
_HASH_BYTES = 16
#: Digests of bodies merged or published a copy remembers (``CrdtCopy.merged``).
_KNOWN_BODIES = 4


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=_HASH_BYTES).digest()


class CrdtCopy:
    """The node's record of one crdt copy (``Activation.cluster``)."""

    __slots__ = (
        "acked",
        "answered",
        "changed_at",
        "digest",
        "marks",
        "merged",
        "replica",
        "revision",
        "stored_marks",
        "token",
        "wire",
    )

    def __init__(self, replica: str, token: str, acked: Crdt, revision: int) -> None:
        self.replica = replica
        self.token = token
        #: The state as acknowledged: every action that answered ok, every merge.
        self.acked = acked
        #: The newest record revision merged here or written by this copy.
        self.revision = revision
        #: Changes (own actions, deltas of other copies merged here) made / known to be in
        #: the record. Only own changes schedule a merge into the record; a received one is
        #: stored with the next, or at the stop.
        self.marks = 0
        self.stored_marks = 0
        #: ``time.monotonic()`` of the last change of ``acked`` (a hello's digests go to
        #: the copies changed during the cut).
        self.changed_at = time.monotonic()
        #: Digests of the last bodies (whole states, record values) merged into ``acked``
        #: or published from it: ``acked`` holds all of each (it only grows), so the same
        #: bytes again (a partition's gossip repeating itself; a node's whole state after
        #: its record, or the other way round) are not decoded again.
        self.merged: list[bytes] = []
        #: The last whole state published and its bytes (a repeat is not encoded again).
        self.wire: tuple[Crdt, bytes] | None = None
        #: The last whole state published as an answer and when (``time.monotonic()``):
        #: not published again within :data:`ANSWER_AGAIN` (it is on its way).
        self.answered: tuple[Crdt, float] | None = None
        #: The state whose digest was last encoded, and the digest.
        self.digest: tuple[Crdt, bytes] | None = None

    def knows(self, digest: bytes) -> bool:
        """Whether bytes with this digest were merged into (or published from) ``acked``."""
        return digest in self.merged

    def learned(self, digest: bytes) -> None:
        merged = self.merged
        if digest not in merged:
            merged.append(digest)
            if len(merged) > _KNOWN_BODIES:
                del merged[0]

    def holds_exactly(self, data: bytes) -> bool:
        """Whether ``acked`` encodes to ``data`` (known without encoding it: the bytes of
        the last whole state published, if ``acked`` has not changed since)."""
        wire = self.wire
        return wire is not None and wire[0] is self.acked and wire[1] == data

    @property
    def dirty(self) -> bool:
        return self.marks != self.stored_marks

    def answered_lately(self, state: Crdt, lacking: CausalContext | None = None) -> bool:
        """Whether an answer to a copy that lacks something went within
        :data:`ANSWER_AGAIN`: ``state`` itself, or (``lacking``: the other copy's context)
        a value holding everything of ``state`` that the other copy lacks."""
        last = self.answered
        if last is None or time.monotonic() - last[1] > ANSWER_AGAIN:
            return False
        sent = last[0]
        if sent is state:
            return True
        if lacking is None or not sent.CAUSAL or not state.CAUSAL:
            return False
        # What the other copy lacks went: ``lacking`` joined with what went covers ours
        # (a delta for another context carries every dot outside the ones it left out).
        return bool(lacking.union(sent.context).covers(state.context))  # type: ignore[attr-defined]

    def hash(self) -> bytes:
        """The hash of ``acked``'s encoding (what a digest of a non-causal type carries)."""
        state = self.acked
        wire = self.wire
        data = wire[1] if wire is not None and wire[0] is state else state.to_wire()
        return _digest(data)


def digest_of(copy: CrdtCopy, max_bytes: int) -> bytes:
    """The digest of the copy's ``acked`` state (protocol §21.4): ``{"t": tag, "cc":
    context}`` for a causal type whose context encodes within ``max_bytes``, else ``{"t":
    tag, "h": 16-byte BLAKE2b of the state's encoding}``."""
    state = copy.acked
    cached = copy.digest
    if cached is not None and cached[0] is state:
        return cached[1]
    data = b""
    if state.CAUSAL:
        data = codec.encode({"t": state.TAG, "cc": state.context.to_obj()})  # type: ignore[attr-defined]
    if not data or len(data) > max_bytes:
        data = codec.encode({"t": state.TAG, "h": copy.hash()})
    copy.digest = (state, data)
    return data


def parse_digest(data: bytes, like: Crdt) -> CausalContext | bytes:
    """A digest from a peer for a copy holding ``like``: its causal context, or the hash.

    Raises:
        CrdtDecodeError: not msgpack, not a map, another type tag, neither a valid context
            (for a causal type) nor a 16-byte hash.
    """
    try:
        obj = codec.decode(data)
    except ValueError as exc:
        raise CrdtDecodeError(f"digest: {exc}") from None
    if not isinstance(obj, dict) or obj.get("t") != like.TAG:
        raise CrdtDecodeError(f"digest: not a map for a {like.TAG}")
    if "cc" in obj and like.CAUSAL:
        return CausalContext.from_obj(obj["cc"], "digest.cc")
    hashed = obj.get("h")
    if isinstance(hashed, bytes) and len(hashed) == _HASH_BYTES:
        return hashed
    raise CrdtDecodeError("digest: neither a causal context nor a 16-byte hash")


def _unseen(state: Crdt, context: CausalContext) -> int:
    """About how many of the state's events ``context`` has not seen (its version vector
    entries beyond the context's, and its cloud): when that is most of the state's entries,
    the answer is the whole state, without computing the delta."""
    cc: CausalContext = state.context  # type: ignore[attr-defined]
    theirs = context.vv
    return sum(max(0, n - theirs.get(r, 0)) for r, n in cc.vv.items()) + len(cc.cloud)


Publish = Callable[[Activation, Crdt, bool], Coroutine[Any, Any, None]]


class CrdtSync:
    """The catch-up exchanges of one node's crdt copies (see the module docstring).

    Args:
        transport: the node's connection.
        prefix: the mesh's subject prefix.
        node_id: this node.
        metrics: where digests are counted (``natsagents_crdt_deltas_total``).
        tasks: the node's task group.
        copies: the node's crdt copies (``(kind, token) → activation``).
        publish: publishes a value for a copy: its whole state (``Na-Crdt-Whole: 1``) when
            the flag is set, else a delta.
        flush_soon: merges a copy into its record now.
        closing: whether the node is closing.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        prefix: str,
        node_id: str,
        metrics: Metrics,
        tasks: TaskGroup,
        copies: Mapping[tuple[str, str], Activation],
        publish: Publish,
        flush_soon: Callable[[Activation], Coroutine[Any, Any, None]],
        closing: Callable[[], bool],
    ) -> None:
        self._t = transport
        self._prefix = prefix
        self._node = node_id
        self._metrics = metrics
        self._tasks = tasks
        self._copies = copies
        self._publish = publish
        self._flush_soon = flush_soon
        self._closing = closing
        self._monitor: PartitionMonitor | None = None
        self._loop: asyncio.Task[None] | None = None
        self._heard: dict[tuple[str, str], float] = {}  # (kind, node) → monotonic time
        # Per hosted kind: when its last news round began, and the round due meanwhile
        # (the earliest change it covers, whether it echoes).
        self._news_at: dict[str, float] = {}
        self._news_due: dict[str, tuple[float, bool]] = {}
        self._hello = {h.CRDT_NODE: node_id}
        self._digest_headers = {h.CRDT_NODE: node_id, h.CRDT_DIGEST: "1"}
        #: Seconds between backstop rounds while not ``ok`` (a test lengthens it).
        self.gossip_every = GOSSIP_EVERY
        #: Whether a heal publishes every copy's digest and merges it into its record
        #: (a test turns it off to see the hellos alone).
        self.resync_on_heal = True

    # -- the partition state ---------------------------------------------------------------

    def watch_partition(self, monitor: PartitionMonitor) -> None:
        self._monitor = monitor
        monitor.subscribe(self.on_partition)

    def status(self) -> str:
        return "ok" if self._monitor is None else self._monitor.state.status

    def away(self) -> float:
        """Seconds this node has been away from ``ok`` (0 when ``ok``)."""
        if self._monitor is None:
            return 0.0
        state = self._monitor.state
        return 0.0 if state.status == "ok" else max(0.0, time.time() - state.since)

    def on_partition(self, event: PartitionEvent) -> None:
        if self._closing() or self._tasks.closed:
            return
        if event.kind == "heal":
            if self.resync_on_heal:
                self._tasks.spawn(self._resync(), name="crdt heal")
        elif event.kind == "start" and self._loop is None:
            self._loop = self._tasks.spawn(self._while_cut(), name="crdt hello")

    @property
    def cut_loop(self) -> asyncio.Task[None] | None:
        """The hello and gossip loop while the node is not ``ok`` (``None`` otherwise)."""
        return self._loop

    def _active(self, kind: str | None = None) -> list[tuple[Activation, CrdtCopy]]:
        out = []
        for act in list(self._copies.values()):
            copy = act.cluster
            if isinstance(copy, CrdtCopy) and act.state is ActivationState.ACTIVE and kind in (None, act.kind):
                out.append((act, copy))
        return out

    async def _while_cut(self) -> None:
        """Hellos every :data:`HELLO_EVERY`, digests of the copies changed since the
        partition began every ``gossip_every``, until the node is ``ok`` again; then hellos
        for :data:`HELLO_AFTER` more seconds.

        The tail matters: the state turns ``ok`` on heartbeats that cross the healed routes,
        often within milliseconds of the routes coming back (a replica catches up on the
        heartbeats the cut held back at once), so no hello said while not ``ok`` may have
        crossed. A hello said after ``ok`` does: the routes are up.
        """
        try:
            began = time.monotonic()
            next_round = began + self.gossip_every
            healed: float | None = None
            while not self._closing():
                await asyncio.sleep(HELLO_EVERY)
                now = time.monotonic()
                if self.status() == "ok":
                    # Claim the whole cut just ended as the time away (the far side looks
                    # back that far for the copies to publish digests of).
                    healed = now if healed is None else healed
                    if now - healed > HELLO_AFTER:
                        return
                    away = f"{now - began:.3f}"
                else:
                    healed = None
                    away = f"{self.away():.3f}"
                kinds = {act.kind for act, _ in self._active()}
                for kind in sorted(kinds):
                    await self._say_hello(kind, away, echo=False)
                if healed is not None:
                    continue
                now = time.monotonic()
                if now >= next_round:
                    next_round = now + self.gossip_every
                    for act, copy in self._active():
                        if copy.changed_at >= began:
                            self._prepare(copy)
                            await self.publish_digest(act, copy)
        finally:
            self._loop = None

    def _prepare(self, copy: CrdtCopy) -> None:
        """Encode the whole state now, while the cut lasts: the answer after the heal then
        costs no encoding (encoding 10,000 keys takes about 50 ms)."""
        state = copy.acked
        if copy.wire is None or copy.wire[0] is not state:
            data = state.to_wire()
            copy.wire = (state, data)
            copy.learned(_digest(data))

    async def _resync(self) -> None:
        # Twice: the routes between the servers may come back a moment after this node's
        # own view does, and a core NATS message published before that is lost.
        for round_ in range(2):
            if round_:
                await asyncio.sleep(RESYNC_AGAIN)
            for act, copy in self._active():
                await self.publish_digest(act, copy)
                if not round_:
                    copy.marks += 1
                    self._tasks.spawn(self._flush_soon(act), name="crdt heal flush")

    # -- hellos --------------------------------------------------------------------------

    async def _say_hello(self, kind: str, away: str, *, echo: bool) -> None:
        headers = {**self._hello, h.CRDT_HELLO: away}
        if echo:
            headers[h.CRDT_ECHO] = "1"
        try:
            await self._t.publish(f"{self._prefix}.crdt.{kind}.{HELLO}", b"", headers=headers)
        except Exception as exc:  # not connected, or closing: the next hello goes
            log.debug("a crdt hello failed: %s", exc)

    def on_hello(self, kind: str, node: str, headers: Mapping[str, str]) -> None:
        """A hello from ``node`` on ``kind``: news when ``node`` was silent for
        :data:`SILENCE` (echo it, publish the digests of the copies changed meanwhile)."""
        now = time.monotonic()
        key = (kind, node)
        heard = self._heard
        last = heard.pop(key, None)
        heard[key] = now
        if len(heard) > _MAX_HEARD:
            del heard[next(iter(heard))]
        if last is not None and now - last <= SILENCE:
            return
        try:
            away = float(headers.get(h.CRDT_HELLO, "0"))
        except ValueError:
            away = 0.0
        if not math.isfinite(away) or away < 0:
            away = 0.0
        window = max(min(away, _MAX_CUT), self.away()) + SILENCE + 1.0
        echo = headers.get(h.CRDT_ECHO) != "1"
        if self._closing() or self._tasks.closed:
            return
        self._schedule_news(kind, now - window, echo, now)

    def _schedule_news(self, kind: str, since: float, echo: bool, now: float) -> None:
        """At most one news round per kind per :data:`SILENCE`: a hello under a new name
        each time must not draw a round each (every copy's digest: an amplification).
        News within the second widens the one round that follows it."""
        pending = self._news_due.get(kind)
        if pending is not None:
            self._news_due[kind] = (min(pending[0], since), pending[1] or echo)
            return
        last = self._news_at.get(kind)
        if last is None or now - last >= SILENCE:
            self._news_at[kind] = now
            self._tasks.spawn(self._news(kind, since, echo), name="crdt hello news")
            return
        self._news_due[kind] = (since, echo)
        self._tasks.spawn(self._news_later(kind, last + SILENCE - now), name="crdt hello news")

    async def _news_later(self, kind: str, delay: float) -> None:
        await asyncio.sleep(delay)
        since, echo = self._news_due.pop(kind, (0.0, False))
        self._news_at[kind] = time.monotonic()
        await self._news(kind, since, echo)

    async def _news(self, kind: str, since: float, echo: bool) -> None:
        if echo:
            await self._say_hello(kind, f"{self.away():.3f}", echo=True)
        for act, copy in self._active(kind):
            if copy.changed_at >= since:
                await self.publish_digest(act, copy)

    # -- digests -------------------------------------------------------------------------

    async def publish_digest(self, act: Activation, copy: CrdtCopy) -> None:
        try:
            data = digest_of(copy, self._t.max_payload - 256)
            await self._t.publish(f"{self._prefix}.crdt.{act.kind}.{copy.token}", data, headers=self._digest_headers)
        except Exception as exc:  # not connected, or closing: a later round goes
            log.debug("publishing the digest of %s failed: %s", act.address, exc)
            return
        self._metrics.crdt_deltas.labels(act.kind, "digest_sent").inc()

    def on_digest(self, act: Activation, data: bytes) -> None:
        """A peer's digest of this copy: answer with the whole state if it lacks something
        held here, with our digest if we lack something it holds; a malformed one is
        dropped and counted."""
        copy: CrdtCopy = act.cluster
        state = copy.acked
        try:
            theirs = parse_digest(data, state)
        except CrdtDecodeError as exc:
            log.debug("a crdt digest for %s dropped: %s", act.address, exc)
            self._metrics.crdt_deltas.labels(act.kind, "dropped").inc()
            return
        self._metrics.crdt_deltas.labels(act.kind, "digest").inc()
        if self._closing() or self._tasks.closed:
            return
        if isinstance(theirs, CausalContext):
            mine: CausalContext = state.context  # type: ignore[attr-defined]
            if not theirs.covers(mine):
                self.answer(act, copy, state, theirs)
            if not mine.covers(theirs):
                self._tasks.spawn(self.publish_digest(act, copy), name="crdt digest")
        elif theirs != copy.hash():
            self.answer(act, copy, state)

    def answer(self, act: Activation, copy: CrdtCopy, state: Crdt, lacking: CausalContext | None = None) -> bool:
        """Answer a copy that lacks some of ``state`` (the copy's whole state), unless an
        answer holding all it lacks went within :data:`ANSWER_AGAIN`. ``lacking``: the other
        copy's causal context, when known: the answer is then the delta it lacks
        (``delta_for``: the keys or elements it has not seen), published as a delta, when
        that is less than three quarters of the whole state; otherwise the whole state
        (``Na-Crdt-Whole: 1``; its bytes are often encoded already). Returns whether an
        answer is (or was) on its way."""
        if self._tasks.closed:
            return False
        if copy.answered_lately(state, lacking):
            return True
        sent = state
        delta_for = getattr(state, "delta_for", None)
        if lacking is not None and delta_for is not None and _unseen(state, lacking) * 4 < len(state) * 3:  # type: ignore[arg-type]
            sent = delta_for(lacking)
            if len(sent) * 4 >= len(state) * 3:  # type: ignore[arg-type]
                sent = state  # most of it: the whole state, whose bytes are often ready
        copy.answered = (sent, time.monotonic())
        self._tasks.spawn(self._publish(act, sent, sent is state), name="crdt answer")
        return True
