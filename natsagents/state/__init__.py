"""Agent state: CAS-fenced storage in JetStream KV (``store``), written before each reply
(strong) or behind it within a bound (eventual, ``behind``); session and CRDT kinds and
event sourcing are to come (docs/consistency.md)."""

from .store import FencedOff, StateStore, StoredState

__all__ = ["FencedOff", "StateStore", "StoredState"]
