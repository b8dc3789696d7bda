"""Agents: the base class, actions, refs, futures and the per-message context."""

from .base import Agent, action
from .context import Context, current_context
from .ref import USE_DEFAULT, AgentFuture, AgentRef, all_of, any_of

__all__ = [
    "USE_DEFAULT",
    "Agent",
    "AgentFuture",
    "AgentRef",
    "Context",
    "action",
    "all_of",
    "any_of",
    "current_context",
]
