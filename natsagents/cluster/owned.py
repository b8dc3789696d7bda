"""The node's record of one activation it owns (``Activation.cluster``; ``Ownership``) and the version
of an eventual one's state (``Versions``; ``conflicts.py``)."""

from __future__ import annotations

import asyncio
import time

from ..crdt.hlc import Timestamp
from ..crdt.vclock import VersionVector
from ..runtime.dedup import APPLIED_MAX_BYTES, trim_applied
from ..state.store import Applied, StoredState
from .directory import Claim
from .placement import Resources

__all__ = ["Owned", "Versions"]

#: Entries an eventual activation appends before its applied list is first trimmed.
_UNTRIMMED_MIN = 32


class Versions:
    """The version of an eventual activation's state (``Owned.versions``)."""

    __slots__ = ("incoming", "split", "stamp", "vv", "waiter", "watch")

    def __init__(self, vv: VersionVector | None, stamp: Timestamp | None, split: bool) -> None:
        #: The vector of the state last stored or resolved (``None``: not known yet, after a
        #: state transfer: read at the first flush); this copy's changes since are extra.
        self.vv = vv
        #: The HLC timestamp of the newest change (acknowledged or resolved).
        self.stamp = stamp
        self.split = split  # partition_strategy = "split_brain_allowed"
        #: A record with concurrent versions, waiting for the mailbox to be idle.
        self.incoming: StoredState | None = None
        self.waiter: asyncio.Task[None] | None = None
        self.watch: asyncio.Task[None] | None = None


class Owned:
    """The node's record of one activation it owns (``Activation.cluster``)."""

    __slots__ = (
        "applied",
        "applied_cap",
        "batch",
        "checking",
        "claim",
        "doubt",
        "doubted",
        "epoch",
        "eventual",
        "gaps",
        "handed_over",
        "lock",
        "marks",
        "needs",
        "pending",
        "persistence",
        "revision",
        "saved",
        "seq",
        "stored_marks",
        "unflushed",
        "untrimmed",
        "versions",
    )

    def __init__(self, claim: Claim, revision: int, needs: Resources, persistence: str, saved: bytes | None) -> None:
        self.claim = claim
        self.epoch = claim.record.epoch
        self.revision = revision
        self.needs = needs
        self.persistence = persistence
        self.saved = saved  # the last stored value without "applied" (StateStore.encode)
        self.lock: asyncio.Lock | None = None  # made on the first save
        self.handed_over = False
        # Requests whose effect is in the state and that may still be resent: (id, expires ms).
        self.applied: list[Applied] | None = None
        # Eventual kinds append to ``applied`` per change and trim it when it has doubled
        # (``add_applied``): entries appended since the last trim, and the cap in bytes.
        self.untrimmed = 0
        self.applied_cap = APPLIED_MAX_BYTES
        self.seq = 0  # the inbox stream sequence of the last exactly-once message applied
        # While a batch of durable messages runs (runtime.batch): the seq and applied
        # ids to go back to if its one write fails, and the state to write (not yet stored).
        self.batch: tuple[int, list[Applied] | None] | None = None
        self.pending: bytes | None = None
        # Our own lease gaps (Membership.gaps) this claim was verified after; a re-check
        # of the claim in progress (shared by the messages that wait for it).
        self.gaps = 0
        self.checking: asyncio.Future[bool | None] | None = None
        # A newer claim by another node being checked with that node (cluster.successor),
        # and the newest one that came meanwhile: messages wait for the answer.
        self.doubt: asyncio.Task[None] | None = None
        self.doubted: Claim | None = None
        # consistency = "eventual" (state.behind): the newest acknowledged value not
        # stored yet, and how many changes were acknowledged / are stored.
        self.eventual = False
        self.unflushed: bytes | None = None
        self.marks = 0
        self.stored_marks = 0
        self.versions: Versions | None = None  # eventual: version vector, stamp (conflicts.py)

    def applied_now(self) -> list[Applied]:
        """The applied ids still worth persisting (expired ones dropped; within
        ``applied_cap`` bytes, ``dedup.trim_applied``)."""
        applied = self.applied
        if not applied:
            return []
        now_ms = int(time.time() * 1000)
        if self.untrimmed:
            self.applied = applied = trim_applied(applied, now_ms, self.applied_cap)
            self.untrimmed = 0
        elif applied[0][1] <= now_ms:
            applied[:] = [a for a in applied if a[1] > now_ms]
        return applied

    def add_applied(self, entry: Applied, now_ms: int, cap: int) -> None:
        """Remember one more applied entry without trimming the list each time (an
        eventual kind: its list is persisted only by a flush, which takes
        :meth:`applied_now`). The list is trimmed when the entries appended since the last
        trim outnumber those it kept, so the cost per entry is constant and the list holds
        at most twice what a trim keeps (plus a few)."""
        applied = self.applied
        if applied is None:
            applied = self.applied = []
        applied.append(entry)
        self.applied_cap = cap
        self.untrimmed += 1
        if self.untrimmed > max(_UNTRIMMED_MIN, len(applied) - self.untrimmed):
            self.applied = trim_applied(applied, now_ms, cap)
            self.untrimmed = 0

    def drop_applied(self, entry: Applied) -> None:
        """Forget ``entry`` again (added by :meth:`add_applied`; its change was not kept)."""
        applied = self.applied
        if applied and applied[-1] is entry:
            applied.pop()
            self.untrimmed = max(0, self.untrimmed - 1)
