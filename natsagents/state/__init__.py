"""Agent state: strongly consistent, CAS-fenced storage in JetStream KV (other consistency
levels, CRDTs and event sourcing are to come)."""

from .store import FencedOff, StateStore, StoredState

__all__ = ["FencedOff", "StateStore", "StoredState"]
