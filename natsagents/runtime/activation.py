"""One active agent: its instance, bounded mailbox and workers."""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..agent.base import Agent
from ..errors import ProtocolError
from ..transport import Inbound, Subscription
from ..wire import envelope
from ..wire import headers as h
from .dedup import IN_PROGRESS, Recent

if TYPE_CHECKING:
    from .host import Host

__all__ = ["Activation", "ActivationState"]


class ActivationState(enum.Enum):
    STARTING = "starting"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Activation:
    """Mailbox and workers of one agent.

    ``deliver`` runs in the connection's reader task: it only enqueues (or refuses) and
    makes sure a worker runs. Workers pop messages in FIFO order; with
    ``max_concurrency == 1`` there is at most one, which gives actor semantics.
    """

    __slots__ = (
        "address",
        "agent",
        "agent_id",
        "busy",
        "busy_since",
        "capacity",
        "cluster",
        "errors_in_row",
        "host",
        "idle",
        "kind",
        "mailbox",
        "max_workers",
        "recent",
        "state",
        "subscription",
        "workers",
    )

    def __init__(self, host: Host, agent: Agent) -> None:
        self.host = host
        self.agent = agent
        self.kind = agent.kind
        self.agent_id = agent.id
        self.address = f"{self.kind}/{self.agent_id}"
        self.capacity = agent.mailbox_size
        self.max_workers = agent.max_concurrency
        self.mailbox: deque[Inbound] = deque()
        self.workers: set[asyncio.Task[None]] = set()
        self.state = ActivationState.STARTING
        self.subscription: Subscription | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.busy = 0
        self.busy_since = 0.0  # monotonic start of the oldest running handler (0: none)
        self.errors_in_row = 0
        self.cluster: Any = None  # the cluster node's per-activation record (claim, revision …)
        self.recent: Recent | None = None  # message id → dedup entry (runtime.dedup)

    def deliver(self, msg: Inbound) -> None:
        if self.state is not ActivationState.ACTIVE:
            self.host.refuse(self, msg, "unavailable", "the agent is stopping", retry=True)
            return
        if len(self.mailbox) + self.busy >= self.capacity:
            self.host.refuse(self, msg, "overloaded", f"mailbox of {self.address} is full ({self.capacity})")
            return
        hdrs = msg.headers
        message_id = None
        if msg.reply and hdrs is not None:
            message_id = hdrs.get(h.MESSAGE_ID)
            recent = self.recent
            if recent is not None and message_id is not None:
                entry = recent.get(message_id)
                if entry is not None:
                    self.host.duplicate(self, msg, entry)  # a resend: never run twice
                    return
        if msg.reply and hdrs is not None and hdrs.get(h.REPLY_MODE) == h.REPLY_MODE_ACCEPT:
            # Check what can be checked before acknowledging: an accepted send gets one reply.
            try:
                meta = envelope.parse_request(hdrs)
            except ProtocolError as exc:
                self.host.refuse(self, msg, "bad_request", str(exc))
                return
            if meta.deadline_ms is not None and time.time() * 1000 >= meta.deadline_ms:
                self.host.refuse(self, msg, "timeout", "deadline passed before the message was accepted")
                return
            self.host.accepted(msg)
        if message_id is not None:
            recent = self.recent
            if recent is None:
                recent = self.recent = Recent()
            recent[message_id] = IN_PROGRESS
        self.mailbox.append(msg)
        self.idle.clear()
        if len(self.workers) < self.max_workers:
            task = asyncio.get_running_loop().create_task(self._work())
            self.workers.add(task)

    async def _work(self) -> None:
        task = asyncio.current_task()
        try:
            mailbox = self.mailbox
            handle = self.host.handle
            while mailbox:
                msg = mailbox.popleft()
                if not self.busy:
                    self.busy_since = time.monotonic()
                self.busy += 1
                try:
                    kept = await handle(self, msg)
                finally:
                    self.busy -= 1
                    if not self.busy:
                        self.busy_since = 0.0
                if self.recent is not None and msg.reply:
                    message_id = msg.headers.get(h.MESSAGE_ID) if msg.headers is not None else None
                    if message_id is not None:
                        self.host.dedup.finish(self, message_id, kept)
        finally:
            self.workers.discard(task)
            if not self.workers:
                if self.mailbox and self.state is not ActivationState.STOPPED:
                    # A message arrived while this worker was finishing up.
                    new = asyncio.get_running_loop().create_task(self._work())
                    self.workers.add(new)
                else:
                    self.idle.set()

    def take_pending(self) -> list[Inbound]:
        """Remove and return the messages still waiting (used when stopping)."""
        pending = list(self.mailbox)
        self.mailbox.clear()
        return pending
