"""The node's record of one activation it owns (``Activation.cluster``; ``Ownership``) and the version
of an eventual one's state (``Versions``; ``conflicts.py``)."""

from __future__ import annotations

import asyncio
import time

from ..crdt.hlc import Timestamp
from ..crdt.vclock import VersionVector
from ..state.store import Applied, StoredState
from .directory import Claim
from .placement import Resources

__all__ = ["Owned", "Versions"]


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
        """The applied ids still worth persisting (expired ones dropped)."""
        applied = self.applied
        if not applied:
            return []
        now_ms = int(time.time() * 1000)
        if applied[0][1] <= now_ms:
            applied[:] = [a for a in applied if a[1] > now_ms]
        return applied
