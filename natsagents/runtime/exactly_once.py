"""The exactly-once rule of durable messages, in one place (docs/delivery.md).

A durable message carries its inbox stream sequence (``Na-Stream-Seq``, set and signed by
its partition owner). An ``exactly_once`` one runs only on a cluster node, for a kind whose
state is persisted after each action, and only if its sequence is above the one stored with
the agent's state; the new state and the sequence are then stored in one compare-and-set
before the reply. The host's dispatcher applies :func:`check`; the owner acknowledges a
message whose answer is in :data:`SETTLED` and retries or dead-letters any other.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ALREADY_APPLIED, BAD_REQUEST
from ..wire import headers as h

__all__ = ["SETTLED", "Verdict", "check"]

#: Answers that settle a durable message: it ran (``ok``) or had run before.
SETTLED = frozenset({h.STATUS_OK, ALREADY_APPLIED})


class Verdict(Exception):
    """A durable message that must not run: answered with ``code`` and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check(hdrs: Mapping[str, str], *, agent: str, persisted: bool, applied_seq: int) -> int:
    """The stream sequence to store with the state (0 for at-least-once).

    Args:
        hdrs: the message's headers (``Na-Stream-Seq`` present).
        agent: the agent's address (``Kind/id``), for the refusals' texts.
        persisted: the agent runs on a cluster node with ``persistence = "action"``.
        applied_seq: the sequence stored with the agent's state.

    Raises:
        Verdict: ``bad_request`` (malformed sequence, or exactly-once where it cannot be
            kept) or ``already_applied``.
    """
    raw = hdrs.get(h.STREAM_SEQ, "")
    if not raw.isdigit() or len(raw) > 19:
        raise Verdict(BAD_REQUEST, f"{h.STREAM_SEQ} must be a positive integer, not {raw!r}")
    if hdrs.get(h.DELIVERY) != h.DELIVERY_EXACTLY_ONCE:
        return 0
    if not persisted:
        kind = agent.partition("/")[0]
        raise Verdict(BAD_REQUEST, f"exactly_once delivery to {kind} needs a cluster node and persistence = 'action'")
    seq = int(raw)
    if seq <= applied_seq:
        raise Verdict(
            ALREADY_APPLIED, f"stream message {seq} was applied to {agent} already (its reply is no longer kept)"
        )
    return seq
