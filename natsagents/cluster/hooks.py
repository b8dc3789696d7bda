"""The cluster's side of ``runtime.hooks.NodeHooks``: what a host asks of its node around
each activation and message, routed by the agent's kind to ``ownership.Ownership``
(single-activation kinds: claim, state, fencing, the lease check, the minority's answer;
``replicas.Replicas`` for the read subject and versioned replies; ``degraded`` for the
writes a ``continue_degraded`` kind queues on the minority side) or to
``crdts.CrdtCopies`` (``consistency = "crdt"``: a copy per node, no claim, no lease).
``node.ClusterNode`` builds it and plugs it into the host (``Host.node``)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Mapping

from ..errors import AgentError, MeshClosed, Unavailable
from ..runtime.activation import Activation
from ..runtime.hooks import Degraded
from ..runtime.host import Host
from ..transport import Inbound
from ..wire.envelope import RequestMeta
from .crdts import CrdtCopies, CrdtCopy
from .degraded import DegradedWrites
from .local import LocalNode
from .ownership import Ownership
from .placing import Placing
from .replicas import Replicas
from .supervision import Supervisor

__all__ = ["AgentHooks"]


class AgentHooks:
    """``runtime.hooks.NodeHooks`` for a cluster node (see the module)."""

    def __init__(
        self,
        host: Host,
        local: LocalNode,
        *,
        ownership: Ownership,
        crdts: CrdtCopies,
        replicas: Replicas,
        supervisor: Supervisor,
        placing: Placing,
        degraded: DegradedWrites,
    ) -> None:
        self._host = host
        self._local = local
        self._ownership = ownership
        self._crdts = crdts
        self._replicas = replicas
        self._supervisor = supervisor
        self._placing = placing
        self._degraded = degraded

    async def answer_activation(self, msg: Inbound) -> None:
        cls = self._host.kinds.get(msg.subject.rsplit(".", 1)[-1])
        if cls is not None and cls.consistency == "crdt":
            await self._host.activate_here(msg)  # multi-active: a copy here, no placement
            return
        await self._placing.answer_activation(msg)

    async def starting(self, act: Activation, options: object) -> None:
        if type(act.agent).consistency == "crdt":
            if self._local.closing:
                raise MeshClosed("the node is closing")
            await self._crdts.starting(act)
            return
        await self._ownership.starting(act, options)
        try:
            await self._replicas.primary_starting(act)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._ownership.stopped(act, discard=True)
            raise

    def begin_batch(self, act: Activation) -> None:
        if not isinstance(act.cluster, CrdtCopy):  # a crdt copy: each item's delta as it runs
            self._ownership.begin_batch(act)

    async def end_batch(self, act: Activation) -> None:
        if not isinstance(act.cluster, CrdtCopy):
            await self._ownership.end_batch(act)

    def abort_batch(self, act: Activation) -> None:
        if not isinstance(act.cluster, CrdtCopy):
            self._ownership.abort_batch(act)

    async def after_action(
        self, act: Activation, meta: RequestMeta, answered: bool, seq: int = 0, reply: bytes | None = None
    ) -> None:
        self._supervisor.succeeded(act)
        if isinstance(act.cluster, CrdtCopy):
            await self._crdts.after_action(act, meta)
            return
        await self._ownership.after_action(act, meta, answered, seq, reply)

    def applied_seq(self, act: Activation) -> int:
        if isinstance(act.cluster, CrdtCopy):
            return 0
        return self._ownership.applied_seq(act)

    def action_failed(self, act: Activation, exc: BaseException) -> None:
        if isinstance(act.cluster, CrdtCopy):
            self._crdts.rollback(act)
        else:
            self._ownership.action_failed(act)
        self._supervisor.failed(act)

    async def save_now(self, act: Activation) -> None:
        if isinstance(act.cluster, CrdtCopy):
            await self._crdts.save_now(act)
            return
        await self._ownership.save_now(act)

    def serving(self, act: Activation, deadline_ms: int | None) -> Awaitable[str | AgentError | Degraded | None] | None:
        if isinstance(act.cluster, CrdtCopy):
            return None  # no lease, no pause: a crdt copy serves on every side
        return self._ownership.serving(act, deadline_ms)

    async def queue_write(self, act: Activation, headers: Mapping[str, str], body: bytes) -> tuple[str, int]:
        if not await self._ownership.still_cut_off(act):
            why = f"{act.address} is not cut off any more: the write is not queued"
            raise Unavailable(why, agent=act.address, details={"retry": True})
        return await self._degraded.put(act, headers, body)

    async def stopped(self, act: Activation, *, discard: bool) -> None:
        if isinstance(act.cluster, CrdtCopy):
            await self._crdts.stopped(act, discard=discard)
            return
        await self._replicas.primary_stopped(act)
        await self._ownership.stopped(act, discard=discard)

    def reply_block(self, act: Activation, block: bytes) -> bytes:
        if isinstance(act.cluster, CrdtCopy):
            return block
        return self._replicas.reply_block(act, block)
