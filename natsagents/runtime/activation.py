"""One active agent: its instance, bounded mailbox and workers."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, NamedTuple, Protocol

from ..agent.base import Agent
from ..errors import BAD_REQUEST, OVERLOADED, TIMEOUT, UNAUTHORIZED, UNAVAILABLE, ProtocolError
from ..transport import Inbound, Subscription
from ..wire import envelope
from ..wire import headers as h
from ..wire.owner import verify_owner_mac
from .dedup import IN_PROGRESS, Dedup, Recent, Reply, fingerprint
from .guard import Denied, Guard, Verified
from .health import Health

__all__ = ["Activation", "ActivationState", "Answers", "Outcome", "Services"]


class Outcome(NamedTuple):
    """What running one message gave (``runtime.dispatch``): the reply, whether its
    requester wants it (``False``: a send acknowledged on arrival, or no reply subject;
    an error is then only logged), what a copy of the request gets later (``kept``,
    ``None``: a copy may run), the action (for a reply too large to send), and whether
    the handler ran for good (``ran``: ok, or failed; not when refused or not stored)."""

    reply: Reply | None
    wanted: bool
    kept: Reply | None
    action: str | None = None
    ran: bool = False
    deadline_ms: int | None = None  # the request's (how long its copies may come: dedup)
    durable: bool = False  # a durable message (its partition owner may send it again)
    #: The request's ``Na-Msg-Id`` when ``deliver`` recorded it in progress (so it is
    #: well-formed): its dedup entry is finished without reading the headers again.
    #: ``None``: not known here (the worker finds it in the headers).
    message_id: str | None = None


class Answers(Protocol):
    """The answers an activation gives without running anything (``runtime.replies``)."""

    def refuse(
        self,
        act: Activation,
        msg: Inbound,
        code: str,
        message: str,
        *,
        retry: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None: ...

    def refuse_waiting(self, act: Activation, msg: Inbound, message: str) -> None: ...

    def throttle(self, act: Activation, msg: Inbound, reason: str) -> None: ...

    def duplicate(self, act: Activation, msg: Inbound, entry: Any) -> None: ...

    def replay(self, act: Activation, msg: Inbound) -> None: ...

    def accepted(self, msg: Inbound) -> None: ...

    def drop(self, act: Activation, msg: Inbound) -> None: ...

    async def send(
        self,
        subject: str,
        headers: dict[str, str] | bytes,
        body: bytes,
        agent: str | None = None,
        action: str | None = None,
        vetted: bool = False,
    ) -> None: ...


class Services(Protocol):
    """What an activation asks of its host (``runtime.host`` provides it): the answers,
    running a message, the dedup memory, the owner key, the caller guard and persisting
    state."""

    @property
    def replies(self) -> Answers: ...

    dedup: Dedup
    guard: Guard

    @property
    def owner_key(self) -> bytes | None: ...

    def dispatch(self, act: Activation, msg: Inbound) -> Awaitable[Outcome]: ...

    def replay(self, act: Activation, msg: Inbound) -> None: ...

    def hold(self, act: Activation, msg: Inbound) -> None: ...

    async def save_state(self, act: Activation) -> None: ...


class _Empty(deque):  # type: ignore[type-arg]
    """The shared mailbox of every idle agent: empty, and refuses to be filled."""

    def append(self, _: object) -> None:
        raise AssertionError("the shared empty mailbox must be replaced before use")


_NO_MAIL: deque[Any] = _Empty(maxlen=0)
#: The dedup entry of a message that ran and whose reply is gone (``already_applied``).
_APPLIED = (None, None, 0.0)
_NO_WORKERS: set[Any] = frozenset()  # type: ignore[assignment]


class ActivationState(enum.Enum):
    STARTING = "starting"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"


_ACTIVE = ActivationState.ACTIVE
# Header names read for every message, as module constants (one attribute load less each).
_ACTION, _BATCH, _MESSAGE_ID, _PRIORITY = h.ACTION, h.BATCH, h.MESSAGE_ID, h.PRIORITY
_REPLY_MODE, _STREAM_SEQ = h.REPLY_MODE, h.STREAM_SEQ
_ACCEPT, _REPLAY = h.REPLY_MODE_ACCEPT, h.REPLY_MODE_REPLAY
_monotonic = time.monotonic
log = logging.getLogger("natsagents.runtime")
#: Seconds between two tracebacks of a host bug of one exception type (``Activation._failed``).
_BUG_LOG_EVERY = 60.0
_BUG_LOGGED: dict[str, float] = {}
#: Whether a ``Na-Msg-Id`` is well-formed (``envelope.is_message_id`` for a header value).
_match_id = envelope.MESSAGE_ID_RE.fullmatch


class Activation:
    """Mailbox and workers of one agent.

    ``deliver`` runs in the connection's reader task: it only enqueues (or refuses) and
    makes sure a worker runs. Workers pop messages in FIFO order; with
    ``max_concurrency == 1`` there is at most one, which gives actor semantics.
    """

    __slots__ = (
        "_idle",
        "address",
        "agent",
        "agent_id",
        "busy",
        "busy_since",
        "capacity",
        "cluster",
        "errors_in_row",
        "group",
        "health",
        "highs",
        "hold",
        "host",
        "idle_since",
        "kind",
        "lows",
        "mailbox",
        "max_workers",
        "readers",
        "reading",
        "recent",
        "started",
        "state",
        "subscription",
        "superseded",
        "workers",
        "writing",
    )

    def __init__(self, host: Services, agent: Agent, agent_id: str) -> None:
        self.host = host
        self.agent = agent
        self.kind = agent.kind
        self.agent_id = agent_id
        self.address = f"{self.kind}/{agent_id}"
        self.capacity = agent.mailbox_size
        self.max_workers = agent.max_concurrency
        # An idle agent holds no deque and no set (760 + 216 bytes): shared empties until used.
        self.mailbox: deque[Inbound] = _NO_MAIL
        self.highs = 0  # high-priority messages at the front of the mailbox
        self.lows = 0  # low-priority messages at its back
        self.workers: set[asyncio.Task[None]] = _NO_WORKERS
        self.state = ActivationState.STARTING
        self.subscription: Subscription | None = None
        self._idle: asyncio.Event | None = None  # made only when someone waits (wait_idle)
        self.busy = 0
        self.busy_since = 0.0  # monotonic start of the oldest running handler (0: none)
        self.idle_since = time.monotonic()  # when its last message finished (idle_timeout)
        self.errors_in_row = 0
        self.cluster: Any = None  # the cluster node's per-activation record (claim, revision …)
        # The inbox's queue group: 0 is ``<prefix>.agents``, n is ``<prefix>.agents.<n>``
        # (a cluster node sets it from the agent's line of ownership, before subscribing).
        self.group = 0
        # A newer line of ownership of this agent exists, in another queue group: its
        # owner's subscription gets its own copy of every message, so this copy answers
        # nothing it has not run (protocol §8.8; set by the cluster node when it learns).
        self.superseded = False
        # Set while the cluster node checks another node's claim on this agent: until it
        # is done every message waits (``Services.hold``), then is delivered again — so a
        # copy that turns out superseded answers nothing, not even a refusal.
        self.hold: asyncio.Future[None] | None = None
        self.recent: Recent | None = None  # message id → dedup entry (runtime.dedup)
        cls = type(agent)
        # Read-only actions that may run beside each other (``Agent.__readers__``; None:
        # every message runs alone, the plain worker loop) and what runs now.
        self.readers: frozenset[str] | None = cls.__readers__
        self.reading = 0
        self.writing = False
        # Readers-writer mode: when each running handler started (``busy_since`` is the
        # oldest, for the supervisor's hung-handler check, though reads overlap).
        self.started: dict[asyncio.Task[None], float] | None = {} if self.readers is not None else None
        self.health: Health | None = None
        if cls.throttle_backlog is not None or cls.throttle_latency is not None:
            self.health = Health(cls.throttle_backlog, cls.throttle_latency)

    def deliver(self, msg: Inbound) -> None:
        """Take one message from the agent's subscriptions: enqueue it or answer it.

        Messages come only from ``service`` subscriptions (``Transport.subscribe``): their
        reply subject is one a host may answer, checked on arrival, so the reply to a
        message that ran is sent without checking it again. Runs for every message, in the
        reader task: each header is read once."""
        if self.superseded:
            self.host.replies.drop(self, msg)  # the new owner answers it
            return
        if self.state is not _ACTIVE:
            self.host.replies.refuse(self, msg, UNAVAILABLE, "the agent is stopping", retry=True)
            return
        if self.hold is not None:
            self.host.hold(self, msg)
            return
        hdrs = msg.headers
        mode = priority = None
        if hdrs is not None:
            mode = hdrs.get(_REPLY_MODE)
            if _STREAM_SEQ in hdrs or _BATCH in hdrs:
                # Owner-only orders (exactly-once sequences, batches): signed or refused.
                if h.BATCH in hdrs and mode is not None:  # a batch is answered once, with its results
                    self.host.replies.refuse(self, msg, BAD_REQUEST, f"a batch takes no {h.REPLY_MODE}")
                    return
                if not verify_owner_mac(self.host.owner_key, msg.subject, hdrs, msg.data):
                    self.host.replies.refuse(
                        self,
                        msg,
                        UNAUTHORIZED,
                        f"{h.STREAM_SEQ} and {h.BATCH} are accepted from partition owners only (a valid {h.OWNER_MAC})",
                    )
                    return
            elif mode == _REPLAY:
                self.host.replay(self, msg)  # a question about an earlier message: nothing runs
                return
            priority = hdrs.get(_PRIORITY)
        if len(self.mailbox) + self.busy >= self.capacity:
            self.host.replies.refuse(self, msg, OVERLOADED, f"mailbox of {self.address} is full ({self.capacity})")
            return
        if priority is not None and priority not in h.PRIORITIES:
            self.host.replies.refuse(self, msg, BAD_REQUEST, f"{h.PRIORITY} must be one of {h.PRIORITIES}")
            return
        health = self.health
        if health is not None:
            reason = health.admit(len(self.mailbox), self.busy, self.max_workers)
            if reason is not None:
                self.host.replies.throttle(self, msg, reason)
                return
        message_id = None
        if hdrs is not None and msg.reply:
            message_id = hdrs.get(_MESSAGE_ID)
            if message_id is not None:
                recent = self.recent
                if _match_id(message_id) is None:
                    message_id = None  # a malformed id identifies nothing: the request gets its bad_request
                elif recent is not None:
                    entry = recent.get(message_id)
                    if entry is not None:
                        seen = recent.fingerprints.get(message_id)
                        if seen is not None and seen != fingerprint(hdrs.get(h.ACTION), msg.data):
                            self.host.replies.refuse(
                                self,
                                msg,
                                BAD_REQUEST,
                                f"{h.MESSAGE_ID} {message_id} was used for another request: ids name one message",
                            )
                            return
                        self.host.replies.duplicate(self, msg, entry)  # a resend: never run twice
                        return
        guard = self.host.guard
        if guard.active and (hdrs is None or h.BATCH not in hdrs):  # batch items: checked one by one
            try:
                admitted = guard.admit(
                    self.kind,
                    hdrs.get(h.ACTION) if hdrs is not None else None,
                    msg.subject,
                    hdrs or {},
                    msg.data,
                    durable=hdrs is not None and h.STREAM_SEQ in hdrs,
                )
            except Denied as denied:
                self.host.replies.refuse(self, msg, UNAUTHORIZED, denied.message, details={"reason": denied.reason})
                return
            if admitted is not None:
                if not admitted.durable and guard.ran_before(admitted):
                    # A copy of a signed request that ran here and that the dedup forgot.
                    self.host.replies.duplicate(self, msg, _APPLIED)
                    return
                msg = Verified(msg, admitted)
        if mode == _ACCEPT and msg.reply:
            # Check what can be checked before acknowledging: an accepted send gets one reply.
            try:
                meta = envelope.parse_request(hdrs)
            except ProtocolError as exc:
                self.host.replies.refuse(self, msg, BAD_REQUEST, str(exc))
                return
            if meta.deadline_ms is not None and time.time() * 1000 >= meta.deadline_ms:
                self.host.replies.refuse(self, msg, TIMEOUT, "deadline passed before the message was accepted")
                return
            self.host.replies.accepted(msg)
        if message_id is not None:  # (so hdrs is not None)
            recent = self.recent
            if recent is None:
                recent = self.recent = Recent()
            recent[message_id] = IN_PROGRESS
            # fingerprint(action, body), inlined: a call less a request.
            recent.fingerprints[message_id] = hash((hdrs.get(_ACTION), msg.data))  # type: ignore[union-attr]
        mailbox = self.mailbox
        if mailbox is _NO_MAIL:
            mailbox = self.mailbox = deque()
        if priority is None or priority == "normal":
            if self.lows:
                mailbox.insert(len(mailbox) - self.lows, msg)
            else:
                mailbox.append(msg)
        elif priority == "high":
            mailbox.insert(self.highs, msg)
            self.highs += 1
        else:  # "low" (checked above)
            mailbox.append(msg)
            self.lows += 1
        if self.readers is not None:
            self._pump()
            return
        workers = self.workers
        if len(workers) < self.max_workers:
            if workers is _NO_WORKERS:
                workers = self.workers = set()
            workers.add(asyncio.get_running_loop().create_task(self._work()))

    def _pop(self) -> Inbound:
        mailbox = self.mailbox
        msg = mailbox.popleft()
        if self.highs:
            self.highs -= 1
        elif len(mailbox) < self.lows:
            self.lows -= 1
        return msg

    async def _work(self) -> None:
        task = asyncio.current_task()
        try:
            mailbox = self.mailbox
            handle = self._handle
            while mailbox:
                msg = mailbox.popleft()  # _pop(), inlined: once a message
                if self.highs:
                    self.highs -= 1
                elif len(mailbox) < self.lows:
                    self.lows -= 1
                await handle(msg)
        finally:
            workers = self.workers
            workers.discard(task)
            if not workers:
                if self.mailbox and self.state is not ActivationState.STOPPED:
                    # A message arrived while this worker was finishing up.
                    workers.add(asyncio.get_running_loop().create_task(self._work()))
                else:
                    self._went_idle()

    def _went_idle(self) -> None:
        self.idle_since = time.monotonic()
        self.workers = _NO_WORKERS
        if not self.mailbox:
            self.mailbox = _NO_MAIL
        if self._idle is not None:
            self._idle.set()
            self._idle = None

    # -- readers and writers (kinds with read-only actions) ---------------------------
    #
    # The head of the mailbox decides: a read-only action starts while no write runs and
    # fewer than ``read_concurrency`` reads do; any other message starts only when
    # nothing runs. A write at the head therefore holds back the reads behind it (FIFO:
    # a stream of reads cannot starve it), and priorities keep their order because the
    # mailbox is already sorted by them. One task per message.

    def _is_read(self, msg: Inbound) -> bool:
        hdrs = msg.headers
        if hdrs is None or h.BATCH in hdrs:
            return False
        readers = self.readers
        return readers is not None and hdrs.get(h.ACTION) in readers

    def _pump(self) -> None:
        """Start every message at the head of the mailbox that may run now."""
        mailbox = self.mailbox
        limit = type(self.agent).read_concurrency
        while mailbox and not self.writing:
            if self._is_read(mailbox[0]):
                if self.reading >= limit:
                    return
                self.reading += 1
                read = True
            elif self.reading:
                return
            else:
                self.writing = True
                read = False
            workers = self.workers
            if workers is _NO_WORKERS:
                workers = self.workers = set()
            workers.add(asyncio.get_running_loop().create_task(self._run_one(self._pop(), read)))

    async def _run_one(self, msg: Inbound, read: bool) -> None:
        task = asyncio.current_task()
        started = self.started
        assert task is not None and started is not None
        started[task] = time.monotonic()
        try:
            await self._handle(msg)
        finally:
            if read:
                self.reading -= 1
            else:
                self.writing = False
            began = started.pop(task, 0.0)
            if started and began <= self.busy_since:
                self.busy_since = min(started.values())  # the oldest still running
            workers = self.workers
            workers.discard(task)
            if self.mailbox and self.state is not ActivationState.STOPPED:
                self._pump()
            if not self.workers:
                self._went_idle()

    async def _handle(self, msg: Inbound) -> None:
        """Run one message and send its outcome where it belongs."""
        host = self.host
        started = _monotonic()
        if not self.busy:
            self.busy_since = started
        self.busy += 1
        try:
            try:
                # Outcome, unpacked once (its fields are read below).
                reply, wanted, kept, action, ran, deadline_ms, durable, message_id = await host.dispatch(self, msg)
            except Exception as exc:  # a bug in the host, not in the handler (dispatch catches those)
                self._failed(msg, exc)
                return
            if reply is not None:
                if self.superseded and not ran:
                    host.replies.drop(self, msg)  # refused (e.g. fenced off): the new owner answers it
                else:  # the dispatcher answers; we say where
                    # msg.reply was vetted on arrival (deliver's docstring): not checked again.
                    await host.replies.send(msg.reply if wanted else "", reply[0], reply[1], self.address, action, True)
        finally:
            self.busy -= 1
            if not self.busy:
                self.busy_since = 0.0
            if self.health is not None:
                took = _monotonic() - started
                count = msg.headers.get(h.BATCH) if msg.headers is not None else None
                if count is not None and count.isdigit() and int(count) > 1:
                    took /= int(count)  # a batch (wire.batch): the time per message
                self.health.handled(took, len(self.mailbox))
        if type(msg) is Verified and ran and not msg.admitted.durable:
            host.guard.remember(msg.admitted)
        if message_id is None:  # not named by the outcome: found in the headers
            recent = self.recent
            hdrs = msg.headers
            if recent is None or hdrs is None or not msg.reply:
                return
            message_id = hdrs.get(_MESSAGE_ID)
            # deliver() recorded only well-formed ids as in progress: no need to check again.
            if message_id is None or (recent.get(message_id) is not IN_PROGRESS and _match_id(message_id) is None):
                return
        host.dedup.finish(self, message_id, kept, deadline_ms, durable)

    def _failed(self, msg: Inbound, exc: Exception) -> None:
        """``dispatch`` raised: a bug of the host's. The message is answered ``unavailable``
        (retry: a durable one comes again, and is dead-lettered if it keeps failing), its
        id forgotten (a copy may run it), the error logged (its traceback at most once a
        minute per type); the worker goes on with the next message."""
        now = time.monotonic()
        key = type(exc).__name__
        if now - _BUG_LOGGED.get(key, -_BUG_LOG_EVERY) >= _BUG_LOG_EVERY:
            _BUG_LOGGED[key] = now
            log.error("%s: the host failed to handle a message (a bug): %r", self.address, exc, exc_info=exc)
        else:
            log.debug("%s: the host failed to handle a message (a bug): %r", self.address, exc)
        hdrs = msg.headers
        message_id = hdrs.get(_MESSAGE_ID) if hdrs is not None else None
        if message_id is not None and self.recent is not None and self.recent.get(message_id) is IN_PROGRESS:
            self.host.dedup.finish(self, message_id, None)
        self.host.replies.refuse_waiting(self, msg, f"the host failed to handle the message ({key}); try again")

    async def wait_idle(self) -> None:
        """Return once no worker runs (the mailbox is empty or refused)."""
        while self.workers:
            idle = self._idle
            if idle is None:
                idle = self._idle = asyncio.Event()
            await idle.wait()

    async def save_state(self) -> None:
        """``Agent.save_state()``: a cluster node persists the state now."""
        await self.host.save_state(self)

    def take_pending(self) -> list[Inbound]:
        """Remove and return the messages still waiting (used when stopping)."""
        pending = list(self.mailbox)
        self.mailbox.clear()  # a running worker holds this deque: it must find it empty
        self.mailbox = _NO_MAIL
        self.highs = self.lows = 0
        return pending
