"""What a cluster node plugs into the host (``natsagents.cluster.node`` implements it):
activation requests go through placement, activations are claimed and restored, state is
persisted after actions and batches, stops release the claim. A host without a node is
standalone. The seam is typed here so that ``runtime/`` never imports ``cluster/``; values
only the node understands (its placement request, its per-activation record) cross it as
``object``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Protocol

from ..errors import AgentError
from ..transport import Inbound
from ..wire.envelope import RequestMeta
from .activation import Activation

__all__ = ["DEGRADED", "Degraded", "NodeHooks"]


class Degraded:
    """What ``NodeHooks.serving`` gives for a message to run degraded: the node is on the
    minority side and the kind continues there (``partition_strategy =
    "continue_degraded"``): read-only actions run on the last known state, flagged
    ``Na-Degraded: 1``; other actions are queued (``NodeHooks.queue_write``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEGRADED"


DEGRADED = Degraded()


class NodeHooks(Protocol):
    async def answer_activation(self, msg: Inbound) -> None:
        """Answer an activation request (placement, then activation on the chosen node)."""

    async def starting(self, act: Activation, options: object) -> None:
        """Claim ``act`` and restore its state before ``on_start`` (``options``: what the
        node passed to ``Host.activate``)."""

    def begin_batch(self, act: Activation) -> None:
        """A batch starts: ``after_action`` only records state until ``end_batch``."""

    async def end_batch(self, act: Activation) -> None:
        """Store what the batch's items left in one write."""

    def abort_batch(self, act: Activation) -> None:
        """Undo a batch cut short (a no-op after ``end_batch``)."""

    async def after_action(
        self, act: Activation, meta: RequestMeta, answered: bool, seq: int = 0, reply: bytes | None = None
    ) -> None:
        """Persist the state an action left, before its reply goes out."""

    def applied_seq(self, act: Activation) -> int:
        """The highest exactly-once stream sequence stored with the agent's state."""

    def action_failed(self, act: Activation, exc: BaseException) -> None:
        """An action raised: roll the state back to what was stored, count the error."""

    async def save_now(self, act: Activation) -> None:
        """``Agent.save_state()``."""

    async def stopped(self, act: Activation, *, discard: bool) -> None:
        """``act`` stopped: save (unless ``discard``), release the claim."""

    def serving(self, act: Activation, deadline_ms: int | None) -> Awaitable[str | AgentError | Degraded | None] | None:
        """Before each message: ``None`` to run it now; otherwise an awaitable giving
        ``None`` (run it), the reason to refuse it with ``unavailable`` + retry (the
        node's own lease lapsed and did not come back in time, or another node owns the
        agent now), the error to answer (``PartitionError``: the node is on the
        minority side of a partition and the kind pauses there), or :data:`DEGRADED`
        (the kind continues degraded there)."""

    async def queue_write(self, act: Activation, headers: Mapping[str, str], body: bytes) -> tuple[str, int]:
        """Queue a write taken degraded (replayed after the heal). Returns its message id
        and position. Raises: Overloaded (the queue is full: not queued), Unavailable +
        retry (the node is not cut off any more: not queued; a copy it learnt is
        superseded sets ``act.superseded``)."""

    def reply_block(self, act: Activation, block: bytes) -> bytes:
        """The header block of an ok reply of ``act``: ``block``, or it with the agent's
        state version added (``Na-State-Version``, kinds with session consistency or read
        replicas)."""
