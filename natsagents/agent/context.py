"""The per-message context a handler sees, carried in a context variable."""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import NamedTuple

__all__ = ["Context", "current_context"]


class Context(NamedTuple):
    """What the host knows about the message being handled.

    Attributes:
        agent: address ``Kind/id`` of the agent handling the message.
        action: the action being run.
        message_id: the message's unique id (an idempotency key for side effects).
        correlation_id: shared by every message caused by one external request.
        deadline: absolute deadline (Unix time, seconds) or ``None``.
        caller: ``Kind/id`` of the calling agent or the caller's client name, if sent.
            Informational: the sender writes what it likes (``Na-Caller``); never base a
            decision on it.
        traceparent, tracestate: the W3C trace context received, passed on by calls the
            handler makes when this process records no spans of its own.
        caller_identity: the name of the caller whose signature this host verified
            against its trusted keys (``Mesh.connect(trusted_callers=…)``), or ``None``
            (unsigned, or this host trusts no keys). The one to base decisions on.
        caller_roles: that caller's roles (empty when ``caller_identity`` is ``None``).
    """

    agent: str
    action: str
    message_id: str
    correlation_id: str
    deadline: float | None
    caller: str | None
    traceparent: str | None = None
    tracestate: str | None = None
    caller_identity: str | None = None
    caller_roles: frozenset[str] = frozenset()

    def remaining(self) -> float | None:
        """Seconds left before the deadline (negative once passed), or ``None``."""
        return None if self.deadline is None else self.deadline - time.time()

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline


_current: ContextVar[Context | None] = ContextVar("natsagents_context", default=None)


def current_context() -> Context | None:
    """The context of the message being handled in this task, or ``None`` outside one."""
    return _current.get()
