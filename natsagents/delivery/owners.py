"""Partition owners: cluster nodes consume the durable inbox and hand messages to agents.

Each node holds a KV lease (``<prefix>_control``, key ``partition.<n>``) on its share of the
inbox partitions: partition ``n`` belongs to the live node with the highest
``hash64("n:node")`` (rendezvous hashing, so a joining or leaving node moves only its own
share). Only the lease holder consumes a partition, through one durable pull consumer
(``p<n>``), so each partition — and each agent, all of whose messages land in one
partition — has one reader at a time.

Per partition the owner keeps a FIFO per agent: an agent's messages run one after the
other, in stream order, while different agents proceed concurrently; several waiting for
one agent are handed over in one batch request (``wire.batch``). A message is handed
to its agent by a core request to the agent's subject (activation on demand, resends and
"retry" answers as for any call), with ``Na-Stream-Seq`` added. Then:

* ok (or ``already_applied``: an exactly-once message that ran before): the reply goes to
  the requester's ``Na-Reply-To``, if any, and the message is acknowledged (double ack);
* a failure that may pass (``handler_error``, ``timeout``, ``unavailable``, ``overloaded``,
  ``at_capacity``): tried again after ``DeliverySettings.backoff`` — in process, holding the
  agent's later messages back so their order holds — up to ``max_deliver`` attempts
  (counting those of earlier owners: ``delivery.attempts``);
* a permanent failure (``bad_request``, ``unknown_action``, ``not_found``,
  ``payload_too_large``, ``unauthorized``) or the last attempt: the message goes to the
  dead-letter stream with its headers, the error and the attempt count, the requester gets
  the error, and the message is acknowledged.

While a message waits or runs, the owner renews its ack deadline (``+WPI``). An owner that
gives a partition up stops fetching, lets running messages finish and hands the waiting
ones back (``-NAK``) so the next owner gets them at once and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from ..observability import Metrics
from ..runtime.caller import Caller
from ..transport import Transport
from ..transport.kv import Bucket
from ..wire.hashing import hash64
from .partition import PERMANENT, Partition
from .settings import DeliverySettings, ensure_delivery_streams

__all__ = ["PERMANENT", "Lease", "LeaseFactory", "PartitionOwners"]

log = logging.getLogger("natsagents.delivery")


class Lease(Protocol):
    """A partition lease (``cluster.leader.LeaderLease``): held by one node at a time; its
    ``lead`` coroutine runs while held."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def holds(self) -> bool:
        """Whether the lease can be relied on now (lost or run out: no)."""
        ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


#: Makes the lease on ``key`` that runs ``lead`` while held.
LeaseFactory = Callable[[str, Callable[[], Awaitable[None]]], Lease]


class PartitionOwners:
    """The durable-inbox consumer of one cluster node.

    Args:
        transport: the node's connection.
        caller: the mesh's caller (forwards messages to agents).
        control: the ``<prefix>_control`` bucket (attempt counts).
        members: live members now (node id → record with ``kinds`` and ``draining``).
        changed: waits up to the given seconds for a membership change.
        node_id: this node.
        prefix: the mesh's subject prefix.
        settings: partitions, attempts, backoff…
        lease: makes a partition's lease (``cluster.leader.LeaderLease`` on the control
            bucket, from the mesh: the owners build on the cluster's leases without
            importing ``cluster/``, which sits above them).
        metrics: the mesh's metrics.
        owner_key: the cluster's owner key (``cluster.owner_key``): what this owner
            forwards is signed with it (``wire.owner``); hosts refuse unsigned
            ``Na-Stream-Seq`` and batches.
    """

    def __init__(
        self,
        transport: Transport,
        caller: Caller,
        control: Bucket,
        members: Callable[[], Mapping[str, Any]],
        changed: Callable[[float], Any],
        node_id: str,
        prefix: str,
        settings: DeliverySettings,
        lease: LeaseFactory,
        metrics: Metrics,
        *,
        owner_key: bytes | None = None,
    ) -> None:
        self.transport = transport
        self.owner_key = owner_key
        self.caller = caller
        self.control = control
        self._members = members
        self._changed = changed
        self.node_id = node_id
        self.prefix = prefix
        self.settings = settings
        self._new_lease = lease
        self.metrics = metrics
        self.partitions = settings.partitions
        self._leases: dict[int, Lease] = {}
        #: Kinds whose host refused a batch request: their messages go one by one.
        self.unbatched: set[str] = set()
        self.running: dict[int, Partition] = {}  # partitions consuming now
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.partitions = await ensure_delivery_streams(self.transport, self.prefix, self.settings)
        self._task = asyncio.get_running_loop().create_task(self._assign())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        leases, self._leases = self._leases, {}
        await asyncio.gather(*(lease.stop() for lease in leases.values()), return_exceptions=True)

    def held(self) -> int:
        """Messages fetched by this node's partitions and not yet acknowledged."""
        return sum(len(part.held) for part in self.running.values())

    def owned(self) -> list[int]:
        """Partitions this node consumes now."""
        return sorted(n for n, lease in self._leases.items() if lease.is_leader)

    def desired(self) -> set[int]:
        """Partitions this node should own: rendezvous hashing over live nodes."""
        live = [
            n for n, r in self._members().items() if getattr(r, "kinds", None) and not getattr(r, "draining", False)
        ]
        if self.node_id not in live:
            live.append(self.node_id)
        return {p for p in range(self.partitions) if max(live, key=lambda n: hash64(f"{p}:{n}")) == self.node_id}

    async def _assign(self) -> None:
        while True:
            want = self.desired()
            for p in sorted(want - set(self._leases)):
                lease = self._new_lease(f"partition.{p}", functools.partial(self._consume, p))
                lease.start()
                self._leases[p] = lease
            for p in sorted(set(self._leases) - want):
                lease = self._leases.pop(p)
                await lease.stop()  # graceful: the running partition hands its messages back
            self.metrics.partitions_owned.set(len(self.owned()))
            await self._changed(1.0)

    async def _consume(self, p: int) -> None:
        """Consume partition ``p`` while its lease is held: a fresh :class:`Partition` each
        time. A lease lost mid-message (its key overwritten, or this node paused past its
        TTL) cuts the partition's hand-back short, leaving messages in its queues; taken
        over again by the same partition, they would run next to the stream's redelivery
        of the same messages (and be answered twice)."""
        lease = self._leases.get(p)  # set before the lease's campaign can start leading
        if lease is None:  # stopped (close, rebalance) before its campaign led: nothing to run
            return
        await Partition(self, p, lambda: lease.holds).run()
