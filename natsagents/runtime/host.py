"""The host: which kinds this process serves, activation and the agents' lifecycle.

It composes the parts a message meets (``activation``: mailbox and workers, ``dispatch``:
running it, ``batch``: batch requests, ``replies``: where answers go) and provides them to
each activation (``activation.Services``). A cluster node plugs in through
``hooks.NodeHooks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from ..agent.base import SUPPORTED_CONSISTENCY, SUPPORTED_PARTITION_STRATEGIES, Agent, RefFactory
from ..agent.policy import Policy, TrustedCaller
from ..errors import (
    BAD_REQUEST,
    HANDLER_ERROR,
    NOT_FOUND,
    PARTITION,
    QUEUED,
    TIMEOUT,
    UNAVAILABLE,
    AgentError,
    ClusterAtCapacity,
    ConfigurationError,
    MeshClosed,
    NatsAgentsError,
    NotSupportedYet,
    ProtocolError,
)
from ..observability import Metrics, Tracing
from ..tasks import TaskGroup
from ..transport import Inbound, Subscription, Transport
from ..wire import codec, envelope
from ..wire import headers as h
from ..wire.ids import encode_id
from ..wire.subjects import activate_subject, agent_queue, agent_subject
from .activation import Activation, ActivationState, Outcome
from .batch import BatchRunner
from .dedup import Dedup
from .dispatch import Dispatcher
from .guard import Guard, Verified
from .hooks import DEGRADED, Degraded, NodeHooks
from .replies import Replies

__all__ = ["Host", "HostSettings", "NodeHooks"]

log = logging.getLogger("natsagents.runtime")
_CLOSE_CONCURRENCY = 128
#: Messages that may wait at once, per host, for their copy's ownership to be confirmed
#: (``Host.hold``, ``Host.replay``).
MAX_WAITING = 1024
#: A message refused before it ran (the refusal is already sent; a copy may run).
_NOT_RUN = Outcome(None, False, None)
_DEGRADED_LINE = f"{h.DEGRADED}: 1\r\n\r\n".encode()
_BATCH = h.BATCH


@dataclass(frozen=True, slots=True)
class HostSettings:
    """Settings of the hosting side.

    Args:
        prefix: subject prefix.
        node: this node's name (sent in activation replies).
        expose_tracebacks: include handler tracebacks in ``handler_error`` replies.
        stop_timeout: seconds an agent gets to finish its mailbox when stopping.
        dedup_ttl: seconds the reply of a request is kept for copies of it (a requester
            that heard nothing publishes the same request again).
        compress_above: replies larger than this many bytes are compressed (``deflate``)
            for callers that accept it; ``None``: never.
        max_agents: most agents active here at once; one more activation is refused with
            ``at_capacity`` (``ClusterAtCapacity``; a cluster places it on another node).
            ``None``: no limit. Anyone who may name agents can otherwise fill a host's
            memory with activations (each costs about 1 KiB here and 1 KiB in the server).
        trusted_callers: public user nkey → the caller it identifies (``runtime.guard``);
            signed requests are verified only when this is not empty.
        default_allow: the policy of kinds and actions that set none (``None``: anyone).
        decode_budget: most bytes of decoded request bodies longer than 64 KiB that running
            handlers hold at once (estimated: ``codec.decoded_size``); a body beyond it is
            refused with ``overloaded`` (``runtime.budget``). ``None``: no limit.
        min_time_left: a request with a deadline is not started with less than this many
            seconds of it left: it could not be answered in time, and its caller, having
            given up, would never learn that it ran. It is answered ``timeout`` unrun.
            ``None``: only requests whose deadline passed are refused.
    """

    prefix: str
    node: str
    expose_tracebacks: bool = True
    stop_timeout: float = 10.0
    dedup_ttl: float = 10.0
    compress_above: int | None = 64 * 1024
    max_agents: int | None = 100_000
    trusted_callers: Mapping[str, TrustedCaller] = field(default_factory=dict)
    default_allow: Policy | None = None
    decode_budget: int | None = 64 * 1024 * 1024
    min_time_left: float | None = 0.02

    def __post_init__(self) -> None:
        if self.max_agents is not None and (type(self.max_agents) is not int or self.max_agents < 1):
            raise ConfigurationError(f"max_agents must be an int >= 1 or None, not {self.max_agents!r}")


class Host:
    """Hosts agent kinds for one mesh: activation on demand, mailboxes, dispatch."""

    def __init__(
        self,
        transport: Transport,
        settings: HostSettings,
        refs_for: Callable[[str], RefFactory],
        metrics: Metrics,
        tracing: Tracing,
    ) -> None:
        self._t = transport
        self.settings = settings
        self._refs_for = refs_for  # refs calling as an agent
        self._metrics = metrics
        self.kinds: dict[str, type[Agent]] = {}
        self._kind_subs: dict[str, Subscription] = {}
        self.activations: dict[tuple[str, str], Activation] = {}
        self._starting: dict[tuple[str, str], asyncio.Future[Activation]] = {}
        self._tasks = TaskGroup("host", log)
        self._waiting = 0  # messages waiting for their copy's ownership (hold, replay)
        self._closing = False
        self._collecting = False  # the idle-agent collector runs (a kind has idle_timeout)
        self.idle_sweeps = 0  # its sweeps so far
        self._node: NodeHooks | None = None
        #: The cluster's owner key (``wire.owner``), set by the cluster node: messages
        #: carrying ``Na-Stream-Seq`` or ``Na-Batch`` run only when signed with it.
        self.owner_key: bytes | None = None
        self.dedup = Dedup(settings.dedup_ttl)
        #: Caller signatures and action policies (``runtime.guard``).
        self.guard = Guard(settings.trusted_callers, settings.default_allow)
        self.replies = Replies(transport, metrics, self._tasks)
        self._dispatcher = Dispatcher(
            metrics,
            tracing,
            node_name=settings.node,
            expose_tracebacks=settings.expose_tracebacks,
            compress_above=settings.compress_above,
            max_payload=lambda: transport.max_payload,
            decode_budget=settings.decode_budget,
        )
        #: Decoded large bodies held by running handlers (``runtime.budget``).
        self.decode_budget = self._dispatcher.budget
        self._batches = BatchRunner(self._dispatcher, self.dedup, self.guard, metrics, lambda: transport.max_payload)
        self._queue = agent_queue(settings.prefix)
        self._margin = settings.min_time_left  # (read for every message)

    @property
    def refs_for(self) -> Callable[[str], RefFactory]:
        """What binds an agent instance's refs (``Agent._bind``): a read replica's too."""
        return self._refs_for

    @property
    def node(self) -> NodeHooks | None:
        """The cluster node plugged into this host (``None``: standalone)."""
        return self._node

    @node.setter
    def node(self, node: NodeHooks | None) -> None:
        self._node = self._dispatcher.node = node

    # -- what activations ask of their host (activation.Services) ---------------------

    def dispatch(self, act: Activation, msg: Inbound, *, checked: bool = False) -> Awaitable[Outcome]:
        """Run one message (a batch request through the batch runner); never raises.

        Before it runs: a cluster node's lease check (``NodeHooks.serving``), and a
        request with too little of its deadline left (``min_time_left``) is refused.
        Returns the awaitable: a message with nothing to check first goes straight to
        the dispatcher, one coroutine less per message (``checked``: the checks are done).
        """
        if not checked and (act.superseded or (self._node is not None and act.cluster is not None)):
            return self._dispatch_checked(act, msg)
        hdrs = msg.headers
        if hdrs is not None and _BATCH in hdrs:
            return self._batches.run(act, msg)
        caller = msg.admitted.caller if type(msg) is Verified else None
        return self._dispatcher.run(act, hdrs, msg.data, bool(msg.reply), caller, self._margin)

    async def _dispatch_checked(self, act: Activation, msg: Inbound) -> Outcome:
        """:meth:`dispatch` of a message to a cluster node's activation, or to a superseded one."""
        node = self._node
        degraded = False
        if node is not None and act.cluster is not None:
            check = node.serving(act, envelope.deadline_of(msg.headers))
            if check is not None:
                refusal = await check
                if refusal is DEGRADED:  # continue_degraded on the minority side
                    degraded = True
                elif isinstance(refusal, AgentError):  # PartitionError: this side pauses
                    if act.superseded:  # the new owner answers it (protocol §8.8)
                        self.replies.drop(act, msg)
                    else:
                        self.replies.refuse(act, msg, refusal.code, refusal.message, details=refusal.details)
                    return _NOT_RUN
                elif isinstance(refusal, str):
                    self._refuse_waiting(act, msg, refusal)
                    return _NOT_RUN
        if act.superseded:  # learnt while it waited in the mailbox: the new owner answers it
            self.replies.drop(act, msg)
            return _NOT_RUN
        if degraded:
            assert node is not None
            return await self._degraded(act, msg, node)
        return await self.dispatch(act, msg, checked=True)

    async def _degraded(self, act: Activation, msg: Inbound, node: NodeHooks) -> Outcome:
        """A message to a copy serving degraded (``continue_degraded`` on the minority
        side, protocol §20): a read-only action runs on the last known state, its ok
        reply flagged ``Na-Degraded: 1``; any other action is queued by the node (not
        run) and answered ``queued``; batches and durable messages are refused
        ``partition`` (their partition owner sends them again)."""
        hdrs = msg.headers or {}
        action = hdrs.get(h.ACTION)
        if h.BATCH in hdrs or h.STREAM_SEQ in hdrs:
            why = f"{act.address} serves degraded on the minority side: no batches or durable messages until the heal"
            self.replies.refuse(act, msg, PARTITION, why, details={"degraded": True})
            return _NOT_RUN
        spec = act.agent.__actions__.get(action) if action is not None else None
        accept = hdrs.get(h.REPLY_MODE) == h.REPLY_MODE_ACCEPT
        wanted = bool(msg.reply) and not accept
        if spec is None or spec.read_only:  # an unknown action is refused unrun by the dispatcher
            caller = msg.admitted.caller if type(msg) is Verified else None
            out = await self._dispatcher.run(
                act, msg.headers, msg.data, reply=bool(msg.reply), caller=caller, margin=self.settings.min_time_left
            )
            reply = out.reply
            if reply is not None and isinstance(reply[0], bytes):  # an ok reply: flag it
                flagged = (reply[0][:-2] + _DEGRADED_LINE, reply[1])
                return out._replace(reply=flagged, kept=None if out.kept is None else flagged)
            return out
        try:
            meta = envelope.parse_request(hdrs)  # what the replay would be refused for, refused now
        except ProtocolError as exc:
            self.replies.refuse(act, msg, BAD_REQUEST, str(exc))
            return _NOT_RUN
        if meta.deadline_ms is not None and time.time() * 1000 >= meta.deadline_ms:
            # Its caller gave up, and may have had it run elsewhere with the same id (a
            # copy held by the cut and delivered at the heal): never queue it.
            self.replies.refuse(act, msg, TIMEOUT, "deadline passed before the agent queued the message")
            return _NOT_RUN
        try:
            message_id, position = await node.queue_write(act, hdrs, msg.data)
        except AgentError as exc:
            if act.superseded:  # learnt by the node's check: the new owner answers it
                self.replies.drop(act, msg)
            elif not accept:
                self.replies.refuse(act, msg, exc.code, exc.message, details=exc.details)
            else:
                log.error("dropped an accepted send to %s (action %s): %s", act.address, action, exc.message)
            return _NOT_RUN
        headers, body = envelope.error_reply(
            QUEUED,
            f"{act.address} is cut off from the majority: {action} was queued (position {position}) "
            "and will be applied after the heal; it has not run",
            agent=act.address,
            action=action,
            details={"node": self.settings.node, "message_id": message_id, "position": position, "degraded": True},
        )
        headers[h.DEGRADED] = "1"
        # Not kept for copies: the replay carries the same id and must run. A copy sent
        # before the heal is recognised by the node's queue (same id, queued once).
        return Outcome((headers, body), wanted, None, action)

    async def save_state(self, act: Activation) -> None:
        """``Agent.save_state()``: a cluster node persists the state now."""
        node = self._node
        if node is not None and act.cluster is not None:
            await node.save_now(act)

    def traceback(self, exc: BaseException) -> str | None:
        """The traceback of ``exc`` for an error reply (``None`` unless tracebacks are exposed)."""
        return self._dispatcher.traceback(exc)

    # -- kinds -----------------------------------------------------------------------

    @staticmethod
    def check_kind(cls: object) -> None:
        """Whether ``cls`` can be hosted here (``Mesh.host`` asks before announcing it).

        Raises:
            ConfigurationError: not an Agent subclass.
            NotSupportedYet: the kind declares a ``consistency`` or ``partition_strategy``
                this version cannot serve.
        """
        if not (isinstance(cls, type) and issubclass(cls, Agent)) or cls is Agent:
            raise ConfigurationError(f"host() takes Agent subclasses, not {cls!r}")
        if cls.consistency not in SUPPORTED_CONSISTENCY:
            raise NotSupportedYet(
                f"{cls.__qualname__}: consistency = {cls.consistency!r} is not supported yet "
                f"(this version serves {', '.join(map(repr, SUPPORTED_CONSISTENCY))}; docs/consistency.md)"
            )
        if cls.consistency != "crdt" and cls.partition_strategy not in SUPPORTED_PARTITION_STRATEGIES:
            raise NotSupportedYet(
                f"{cls.__qualname__}: partition_strategy = {cls.partition_strategy!r} is not supported yet "
                f"(this version serves {' and '.join(map(repr, SUPPORTED_PARTITION_STRATEGIES))}; "
                "docs/consistency.md)"
            )

    async def host(self, cls: type[Agent]) -> None:
        """Serve ``cls``: answer activation requests for its kind.

        Raises:
            ConfigurationError: not an Agent subclass, or another class has the same kind.
            NotSupportedYet: the kind declares a ``consistency`` this version cannot serve.
        """
        self.check_kind(cls)
        existing = self.kinds.get(cls.kind)
        if existing is cls:
            return
        if existing is not None:
            raise ConfigurationError(f"kind {cls.kind!r} is already hosted by {existing.__qualname__}")
        self.kinds[cls.kind] = cls
        self.guard.add_kind(cls)
        if cls.idle_timeout is not None and not self._collecting:
            self._collecting = True
            self._tasks.spawn(self._collect_idle(), name="idle agents")
        subject = activate_subject(self.settings.prefix, cls.kind)
        self._kind_subs[cls.kind] = await self._t.subscribe(
            subject, self._on_activate_request, queue=f"{self.settings.prefix}.hosts.{cls.kind}", service=True
        )
        # Once host() returns, the server knows this host: a caller on the same server
        # never sees "no host" for the kind.
        await self._t.flush()

    # -- activation ------------------------------------------------------------------

    def holds(self, kind: str, agent_id: str) -> bool:
        """Whether ``kind/agent_id`` is active, starting or stopping here."""
        key = (kind, agent_id)
        return key in self.activations or key in self._starting

    async def settled(self, kind: str, agent_id: str) -> None:
        """Wait until a start of ``kind/agent_id`` in progress here has ended, either way
        (at once when none is)."""
        pending = self._starting.get((kind, agent_id))
        if pending is not None:
            await asyncio.wait((pending,))  # its outcome is the starter's business

    async def activate(self, kind: str, agent_id: str, options: object = None) -> Activation:
        """Return the activation of ``kind/agent_id``, activating it if needed.

        ``options`` go to the cluster node's ``starting`` hook (placement, shipped state).

        Raises:
            ConfigurationError: the kind is not hosted here. MeshClosed: shutting down.
            Exception: whatever ``on_start`` (or the node's claim) raised.
        """
        key = (kind, agent_id)
        act = self.activations.get(key)
        if act is not None and act.state is ActivationState.ACTIVE:
            return act
        if self._closing:
            raise MeshClosed("the mesh is closing")
        cls = self.kinds.get(kind)
        if cls is None:
            raise ConfigurationError(f"kind {kind!r} is not hosted by this mesh")
        encode_id(agent_id)
        pending = self._starting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Activation] = asyncio.get_running_loop().create_future()
        self._starting[key] = fut
        try:
            act = await self._start(cls, agent_id, options)
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved
            raise
        else:
            fut.set_result(act)
            return act
        finally:
            del self._starting[key]
            # The failure's traceback holds this frame: without ``fut`` it is not a cycle
            # (frame, future, exception), freed at once with every frame's locals (a state
            # record's bytes, ...) rather than whenever the cyclic collector next runs.
            del fut

    async def _start(self, cls: type[Agent], agent_id: str, options: object = None) -> Activation:
        limit = self.settings.max_agents
        if limit is not None and len(self.activations) + len(self._starting) - 1 >= limit:
            name = self.settings.node
            raise ClusterAtCapacity(
                f"{name} holds {len(self.activations)} agents, its limit (max_agents={limit})",
                agent=f"{cls.kind}/{agent_id}",
                kind=cls.kind,
                rejected={name: f"agent limit ({limit})"},
            )
        agent = cls()
        act = Activation(self, agent, agent_id)
        agent._bind(agent_id, self._refs_for, act)
        node = self.node
        if node is not None:
            await node.starting(act, options)  # claim, restore state
        try:
            await agent.on_start()
        except BaseException:
            if node is not None:
                with contextlib.suppress(Exception):
                    await node.stopped(act, discard=True)
            raise
        subject = agent_subject(self.settings.prefix, cls.kind, agent_id)
        # Active before subscribing: a message may arrive while subscribe() is awaited.
        act.state = ActivationState.ACTIVE
        self.activations[(cls.kind, agent_id)] = act
        # A cluster agent's own queue group (Activation.group): a lapsed owner's inbox
        # subscription, which the server keeps while that process is paused or cut off,
        # never shares it, so it never takes messages meant for this copy.
        queue = self._queue if not act.group else f"{self._queue}.{act.group}"
        try:
            act.subscription = await self._t.subscribe(subject, act.deliver, queue=queue, service=True)
        except BaseException:
            act.state = ActivationState.STOPPED
            self.activations.pop((cls.kind, agent_id), None)
            with contextlib.suppress(Exception):
                await agent.on_stop()
            if node is not None:
                with contextlib.suppress(Exception):
                    await node.stopped(act, discard=True)
            raise
        self._metrics.active_agents.labels(cls.kind).inc()
        log.debug("activated %s/%s", cls.kind, agent_id)
        return act

    async def deactivate(self, kind: str, agent_id: str) -> bool:
        """Stop one agent: no new messages, finish the mailbox, ``on_stop``. ``False`` if not active."""
        act = self.activations.get((kind, agent_id))
        if act is None or act.state is not ActivationState.ACTIVE:
            return False
        await self._stop(act)
        return True

    async def stop_activation(self, act: Activation, *, discard: bool = False) -> None:
        """Stop ``act`` as :meth:`deactivate` does (``discard``: as :meth:`discard`, without
        the check); the cluster node's restarts and drains."""
        await self._stop(act, discard=discard)

    def starting_count(self) -> int:
        """Activations being started now (not active yet)."""
        return len(self._starting)

    async def _stop(self, act: Activation, *, discard: bool = False) -> None:
        await self.quiesce(act, discard=discard)
        if self.node is not None:
            try:
                await self.node.stopped(act, discard=discard)
            except Exception:
                log.exception("releasing %s failed", act.address)

    def hold(self, act: Activation, msg: Inbound) -> None:
        """A message to a copy whose ownership is being checked (``Activation.hold``: the
        cluster node asks the node named by a newer claim whether it holds the agent): it
        waits for the answer, then is delivered again — dropped if the copy turned out
        superseded (its successor answers it, protocol §8.8), else handled as usual. At
        most :data:`MAX_WAITING` messages wait per host; more are refused ``unavailable``
        + retry."""
        if self._waiting >= MAX_WAITING:
            self._refuse_waiting(act, msg, f"too many messages wait for {act.address}'s owner")
            return
        self._waiting += 1
        self._tasks.spawn(self._deliver_after_hold(act, msg), name=f"held for {act.address}")

    async def _deliver_after_hold(self, act: Activation, msg: Inbound) -> None:
        try:
            hold = act.hold
            if hold is not None:
                await asyncio.wait((hold,))  # bounded: cluster.successor.CHECK_TIMEOUT and one write
        finally:
            self._waiting -= 1
        act.deliver(msg)

    def replay(self, act: Activation, msg: Inbound) -> None:
        """A replay question (``Na-Reply-Mode: replay``, protocol §7.5): runs nothing, so it
        skips the mailbox, but on a cluster copy it is answered only by an owner in good
        standing, as any message is: while its lease is lapsed or another node's newer
        claim is being checked it waits (``NodeHooks.serving``), and a copy that turns out
        superseded drops it (the successor answers, §8.8) — else both copies would answer
        it. They count in :data:`MAX_WAITING`."""
        node = self._node
        check = None
        if node is not None and act.cluster is not None:
            check = node.serving(act, envelope.deadline_of(msg.headers))
        if check is None:
            self.replies.replay(act, msg)
        elif self._waiting >= MAX_WAITING:
            if asyncio.iscoroutine(check):
                check.close()  # never awaited
            self._refuse_waiting(act, msg, f"too many replay questions wait for {act.address}'s owner")
        else:
            self._waiting += 1
            self._tasks.spawn(self._replay_when_serving(act, msg, check), name=f"replay for {act.address}")

    async def _replay_when_serving(
        self, act: Activation, msg: Inbound, check: Awaitable[str | AgentError | Degraded | None]
    ) -> None:
        try:
            refusal = await check
        finally:
            self._waiting -= 1
        if act.superseded:
            self.replies.drop(act, msg)
        elif isinstance(refusal, AgentError):
            self.replies.refuse(act, msg, refusal.code, refusal.message, details=refusal.details)
        elif isinstance(refusal, str):
            self._refuse_waiting(act, msg, refusal)
        else:  # run-able (or degraded: a replay runs nothing, it answers from memory)
            self.replies.replay(act, msg)

    def _refuse_waiting(self, act: Activation, msg: Inbound, why: str) -> None:
        """A message this copy will not run: dropped when the copy is superseded (the new
        owner's queue group has its own copy of it), else ``unavailable`` + retry."""
        if act.superseded:
            self.replies.drop(act, msg)
        else:
            self.replies.refuse_waiting(act, msg, why)

    async def discard(self, act: Activation) -> None:
        """Stop a copy that is no longer the owner (fenced off): no final save; messages
        still waiting are dropped when a newer line of ownership has its own copies of
        them (``Activation.superseded``), else refused with ``unavailable`` + retry so
        callers reach the owner (protocol §8.8)."""
        if act.state in (ActivationState.STOPPING, ActivationState.STOPPED):
            return
        log.warning("stopping the stale copy of %s: another node owns it now", act.address)
        await self._stop(act, discard=True)

    async def quiesce(self, act: Activation, *, discard: bool = False) -> None:
        """Stop taking messages, finish the mailbox (or refuse it when ``discard``), run
        ``on_stop``. The cluster node then saves, releases or hands the agent over."""
        act.state = ActivationState.STOPPING
        if act.subscription is not None:
            # Messages still in flight reach deliver(), which answers "unavailable, retry"
            # (or drops them when this copy is superseded).
            with contextlib.suppress(NatsAgentsError):
                await act.subscription.drain()
        if discard:
            for msg in act.take_pending():
                self._refuse_waiting(act, msg, "this copy of the agent was superseded")
        try:
            async with asyncio.timeout(self.settings.stop_timeout):
                await act.wait_idle()
        except TimeoutError:
            log.warning("%s did not finish its mailbox within %.1f s", act.address, self.settings.stop_timeout)
            for task in list(act.workers):
                task.cancel()
        for msg in act.take_pending():
            self._refuse_waiting(act, msg, "the agent stopped before handling the message")
        act.state = ActivationState.STOPPED
        key = (act.kind, act.agent_id)
        if self.activations.get(key) is act:  # not a newer activation started meanwhile
            del self.activations[key]
        self._metrics.active_agents.labels(act.kind).dec()
        try:
            await act.agent.on_stop()
        except Exception:
            log.exception("on_stop of %s failed", act.address)

    async def close(self) -> None:
        """Stop serving: unsubscribe kinds, stop every agent, flush pending replies."""
        self._closing = True
        for sub in self._kind_subs.values():
            with contextlib.suppress(NatsAgentsError):
                await sub.unsubscribe()
        self._kind_subs.clear()
        acts = [a for a in self.activations.values() if a.state is ActivationState.ACTIVE]
        if acts:
            # Bounded: each stop of a cluster agent is a save and a release; thousands at
            # once would swamp the server and time out.
            gate = asyncio.Semaphore(_CLOSE_CONCURRENCY)

            async def stop(act: Activation) -> None:
                async with gate:
                    await self._stop(act)

            await asyncio.gather(*(stop(a) for a in acts), return_exceptions=True)
        await self.replies.drain()
        await self._tasks.aclose()

    # -- idle agents (Agent.idle_timeout) -------------------------------------------

    def idle_agents(self, now: float) -> list[Activation]:
        """Active agents with nothing waiting or running for their kind's ``idle_timeout``."""
        out = []
        for act in self.activations.values():
            limit = type(act.agent).idle_timeout
            if (
                limit is not None
                and act.state is ActivationState.ACTIVE
                and not act.busy
                and not act.mailbox
                and not act.workers
                and now - act.idle_since >= limit
            ):
                out.append(act)
        return out

    async def _collect_idle(self) -> None:
        """Deactivate idle agents: a sweep every quarter of the shortest ``idle_timeout``
        (at most every second), each stop as :meth:`deactivate` (bounded concurrency)."""
        gate = asyncio.Semaphore(_CLOSE_CONCURRENCY)

        async def stop(act: Activation) -> None:
            async with gate:
                # Still idle (a message may have come since the sweep): stop it.
                if act.state is ActivationState.ACTIVE and not act.busy and not act.mailbox:
                    log.debug("deactivating %s: idle for its idle_timeout", act.address)
                    self._metrics.idle_deactivations.labels(act.kind).inc()
                    await self._stop(act)

        while not self._closing:
            limits = [c.idle_timeout for c in self.kinds.values() if c.idle_timeout is not None]
            await asyncio.sleep(min(1.0, min(limits) / 4))
            idle = self.idle_agents(time.monotonic())
            self.idle_sweeps += 1
            if idle and not self._closing:
                await asyncio.gather(*(stop(a) for a in idle), return_exceptions=True)

    # -- activation requests ---------------------------------------------------------

    async def activate_here(self, msg: Inbound) -> None:
        """Answer an activation request by activating the agent on this host, without
        placement (a cluster node does this for ``crdt`` kinds: every node may hold a copy)."""
        await self._answer_activation(msg)

    def _on_activate_request(self, msg: Inbound) -> None:
        node = self.node
        self._tasks.spawn(node.answer_activation(msg) if node is not None else self._answer_activation(msg))

    async def _answer_activation(self, msg: Inbound) -> None:
        kind = msg.subject.rsplit(".", 1)[-1]
        try:
            body = codec.decode(msg.data)
            if not isinstance(body, dict) or not isinstance(body.get("id"), str):
                raise ProtocolError("activation body must be a map with a string 'id'")
            agent_id = body["id"]
            encode_id(agent_id)
            spawn = body.get("spawn", False)
            if not isinstance(spawn, bool):
                raise ProtocolError("activation 'spawn' must be a bool")
        except (ValueError, ProtocolError) as exc:
            await self.replies.send(msg.reply, *envelope.error_reply(BAD_REQUEST, str(exc), agent=kind))
            return
        address = f"{kind}/{agent_id}"
        cls = self.kinds.get(kind)
        if cls is None or self._closing:
            await self.replies.send(msg.reply, *envelope.error_reply(UNAVAILABLE, "host is closing", agent=address))
            return
        if not (spawn or cls.activate_on_demand) and (kind, agent_id) not in self.activations:
            await self.replies.send(
                msg.reply,
                *envelope.error_reply(
                    NOT_FOUND, f"{address} is not active and {kind} is not activated on demand", agent=address
                ),
            )
            return
        try:
            await self.activate(kind, agent_id)
        except MeshClosed as exc:
            await self.replies.send(msg.reply, *envelope.error_reply(UNAVAILABLE, str(exc), agent=address))
            return
        except ClusterAtCapacity as exc:
            self._metrics.rejected_one(kind, exc.code)
            await self.replies.send(
                msg.reply, *envelope.error_reply(exc.code, exc.message, agent=address, details=exc.details)
            )
            return
        except Exception as exc:
            log.exception("activation of %s failed", address)
            await self.replies.send(
                msg.reply,
                *envelope.error_reply(
                    HANDLER_ERROR,
                    f"activation failed: {type(exc).__name__}: {exc}",
                    agent=address,
                    action="on_start",
                    traceback=self.traceback(exc),
                ),
            )
            return
        await self.replies.send(msg.reply, *envelope.ok_reply({"node": self.settings.node}))

    # -- introspection ---------------------------------------------------------------

    def active(self) -> list[str]:
        """Addresses of the active agents hosted here."""
        return sorted(a.address for a in self.activations.values() if a.state is ActivationState.ACTIVE)

    def unhealthy(self) -> dict[str, str]:
        """Address → ``"backlog"`` or ``"latency"`` for the agents throttled now."""
        out: dict[str, str] = {}
        for act in self.activations.values():
            health = act.health
            if health is not None and health.reason is not None:
                out[act.address] = health.reason
        return out

    def agent_instance(self, kind: str, agent_id: str) -> Agent | None:
        act = self.activations.get((kind, agent_id))
        return act.agent if act is not None else None
