"""Conflict-free replicated data types, hybrid logical clocks, version vectors and conflict
resolution: pure code, no I/O (``docs/crdt.md``; wire encoding in ``docs/protocol.md`` §17).

Every value is immutable; a mutator returns ``Mutation(state, delta)``::

    from natsagents.crdt import ORSet

    s, delta = ORSet().add("node-1", "apple")   # ship delta to the other replicas
    theirs = theirs.apply_delta(delta)           # any order, duplicates fine
    assert s.merge(theirs) == theirs.merge(s)
"""

from . import resolve
from .base import Crdt, Mutation, decode
from .counters import GCounter, PNCounter
from .dots import CausalContext, Dot
from .errors import ClockDriftError, CrdtDecodeError, CrdtError, CrdtTypeError
from .hlc import DEFAULT_MAX_DRIFT, HLC, Timestamp
from .ormap import ORMap
from .registers import LWWRegister, MVRegister
from .resolve import Resolution, Sibling
from .sets import GSet, ORSet
from .vclock import Order, VersionVector

__all__ = [
    "DEFAULT_MAX_DRIFT",
    "HLC",
    "CausalContext",
    "ClockDriftError",
    "Crdt",
    "CrdtDecodeError",
    "CrdtError",
    "CrdtTypeError",
    "Dot",
    "GCounter",
    "GSet",
    "LWWRegister",
    "MVRegister",
    "Mutation",
    "ORMap",
    "ORSet",
    "Order",
    "PNCounter",
    "Resolution",
    "Sibling",
    "Timestamp",
    "VersionVector",
    "decode",
    "resolve",
]
