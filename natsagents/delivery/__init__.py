"""Durable delivery: partition owners consuming the inbox stream, and the dead-letter
stream (see docs/delivery.md)."""

from .dead_letters import DeadLetter, delete_dead_letter, list_dead_letters, replay_dead_letter
from .owners import PERMANENT, PartitionOwners

__all__ = [
    "PERMANENT",
    "DeadLetter",
    "PartitionOwners",
    "delete_dead_letter",
    "list_dead_letters",
    "replay_dead_letter",
]
