"""``partition_strategy = "continue_degraded"``: writes taken on the minority side, queued
on the node's disk (``cluster.write_queue``) and replayed after the heal.

On the minority side (``quorum_lost``) a copy of a ``continue_degraded`` kind keeps
answering: read-only actions run on its last known state (replies flagged
``Na-Degraded: 1``), and every other action is not run but queued here, durably, and
answered ``queued`` (protocol §6.3, §20). Once the node is back on the majority side
(or at its next start, after a crash), :class:`DegradedWrites` replays the queue in order
through the durable inbox stream: each write is published with ``Nats-Msg-Id`` = its
message id (stored once within the stream's duplicate window) and ``Na-Delivery:
exactly_once`` (``at_least_once`` for an eventual kind, which cannot keep exactly-once),
so the partition owner hands it to the agent's current owner, which applies it once. A
write is marked done in the file (fsynced) only after the stream acknowledged it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from ..agent.base import EXACTLY_ONCE_CONSISTENCY
from ..delivery.settings import ensure_delivery_streams
from ..errors import BadRequest, CallTimeout, NatsAgentsError, Overloaded
from ..observability import Metrics
from ..runtime.activation import Activation
from ..transport import Transport, jetstream
from ..wire import envelope
from ..wire import headers as h
from ..wire.envelope import MALFORMED
from ..wire.subjects import durable_subject
from .partition import PartitionMonitor
from .write_queue import QueuedWrite, QueueFull, WriteQueue

__all__ = ["DegradedWrites", "replay_headers"]

log = logging.getLogger("natsagents.cluster.degraded")

#: Request headers a queued write does not carry into its replay: the caller's wait
#: (deadline, reply mode, reply subject), what only owners may set, and the mailbox lane
#: (the stream's order is the agent's order).
_DROPPED = frozenset(
    {
        h.DEADLINE,
        h.REPLY_MODE,
        h.REPLY_TO,
        h.PRIORITY,
        h.STREAM_SEQ,
        h.OWNER_MAC,
        h.BATCH,
        h.MIN_VERSION,
        h.DELIVERY,
        h.ACCEPT_ENCODING,
        MALFORMED,
    }
)


def replay_headers(hdrs: Mapping[str, str], message_id: str, delivery: str) -> dict[str, str]:
    """The headers a queued write is replayed with (bounded by ``write_queue``'s checks)."""
    out = {k: v for k, v in hdrs.items() if k not in _DROPPED and not k.startswith("Nats-")}
    out[h.MESSAGE_ID] = message_id
    out[h.DELIVERY] = delivery
    out.setdefault(h.PROTO, h.PROTO_VERSION)
    return out


class DegradedWrites:
    """The node's degraded write queue and its replay (see the module docstring).

    Args:
        transport: the node's connection.
        prefix: the mesh's subject prefix.
        node_id: this node.
        data_dir: where the queue file lives (``<data_dir>/<node_id>.degraded``);
            ``None``: no queue (``continue_degraded`` kinds are refused by the node).
        partition: the node's partition state (the replay waits for the majority side).
        metrics: ``natsagents_state_saves_total{outcome="queued"|"replayed"}``.
        max_writes, max_bytes: the queue's bounds.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        prefix: str,
        node_id: str,
        data_dir: str | os.PathLike[str] | None,
        partition: PartitionMonitor,
        metrics: Metrics,
        max_writes: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._t = transport
        self._prefix = prefix
        self._node_id = node_id
        self._partition = partition
        self._metrics = metrics
        self.queue: WriteQueue | None = None
        if data_dir is not None:
            path = Path(data_dir) / f"{node_id}.degraded"
            self.queue = WriteQueue(path, max_writes=max_writes, max_bytes=max_bytes)
        self._wake = asyncio.Event()
        #: Writes replayed (stored in the inbox stream) since this node started.
        self.replayed = 0

    def open(self) -> None:
        """Read the queue file left by an earlier run (replayed once connected)."""
        if self.queue is None:
            return
        left = self.queue.open()
        if left:
            log.warning("%s: %d degraded write(s) queued by an earlier run will be replayed", self._node_id, left)
            self._wake.set()

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()

    def wake(self) -> None:
        """Look at the queue now (a partition event, a write queued)."""
        self._wake.set()

    async def put(self, act: Activation, hdrs: Mapping[str, str], body: bytes) -> tuple[str, int]:
        """Queue one write for ``act`` (its request's headers and body, as received).
        Returns its message id and 1-based position.

        Raises:
            Overloaded: the queue is full (or the disk refused the write); not queued.
            BadRequest: the write could not be replayed as it is (headers too many or too
                large for the queue's bounds); not queued.
        """
        queue = self.queue
        if queue is None:  # refused when the kind was hosted: never reached
            raise Overloaded(f"node {self._node_id} has no degraded write queue", agent=act.address)
        message_id = hdrs.get(h.MESSAGE_ID)
        if not envelope.is_message_id(message_id):
            message_id = envelope.new_message_id()  # a peer that sent none: its copies are new writes
        assert message_id is not None
        consistency = type(act.agent).consistency
        delivery = h.DELIVERY_EXACTLY_ONCE if consistency in EXACTLY_ONCE_CONSISTENCY else h.DELIVERY_AT_LEAST_ONCE
        write = QueuedWrite(
            message_id,
            act.kind,
            act.agent_id,
            hdrs.get(h.ACTION, ""),
            replay_headers(hdrs, message_id, delivery),
            body,
            time.time(),
            delivery,
        )
        try:
            write = QueuedWrite.from_record(write.to_record())  # the same checks as a read back
        except ValueError as exc:
            raise BadRequest(f"the write cannot be queued: {exc}", agent=act.address) from None
        try:
            position = await queue.put(write)
        except QueueFull as exc:
            raise Overloaded(str(exc), agent=act.address, details={"reason": "degraded_queue_full"}) from None
        except OSError as exc:
            log.error("%s: queuing a degraded write failed: %s", self._node_id, exc)
            raise Overloaded(
                f"the degraded write queue of {self._node_id} failed: {exc}",
                agent=act.address,
                details={"reason": "degraded_queue_error"},
            ) from None
        self._metrics.state_saves.labels(act.kind, "queued").inc()
        self._wake.set()
        return message_id, position

    def _may_replay(self) -> bool:
        return self._t.is_connected and self._partition.state.side == "majority"

    async def run(self) -> None:
        """Replay the queue whenever it holds writes and the node is on the majority side
        (the node's task): in order, one write at a time, retried with backoff."""
        if self.queue is None:
            return
        delay = 0.1
        while True:
            self._wake.clear()
            if self.queue and self._may_replay():
                try:
                    await self._replay()
                    delay = 0.1
                    continue
                except (NatsAgentsError, OSError) as exc:
                    log.warning("%s: replaying degraded writes failed (retried): %s", self._node_id, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)  # also re-check the side every second
            except TimeoutError:
                pass

    async def _replay(self) -> None:
        queue = self.queue
        assert queue is not None
        pending = queue.pending()
        log.info("%s: replaying %d degraded write(s) through the durable inbox", self._node_id, len(pending))
        for write in pending:
            if not self._may_replay():
                return
            subject = durable_subject(self._prefix, write.kind, write.agent_id)
            try:
                await jetstream.publish(
                    self._t, subject, write.body, msg_id=write.message_id, headers=write.headers, timeout=5.0
                )
            except jetstream.StreamNotFound:
                await ensure_delivery_streams(self._t, self._prefix, timeout=5.0)
                return  # the next round starts again from this write (order kept)
            except CallTimeout as exc:
                raise NatsAgentsError(f"publishing a degraded write timed out: {exc}") from None
            await queue.done(write.message_id)
            self.replayed += 1
            self._metrics.state_saves.labels(write.kind, "replayed").inc()
