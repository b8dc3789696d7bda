"""The host: which kinds this process serves, activation, dispatch and replies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from ..agent.base import Agent
from ..agent.context import Context, _current
from ..agent.schema import ParamError
from ..errors import AgentError, ConfigurationError, MeshClosed, NatsAgentsError, ProtocolError, Unavailable
from ..observability import Metrics, Tracing
from ..transport import Inbound, Subscription, Transport
from ..wire import batch as wire_batch
from ..wire import codec, envelope
from ..wire import headers as h
from ..wire.envelope import RequestMeta
from ..wire.ids import encode_id
from ..wire.subjects import activate_subject, agent_queue, agent_subject
from .activation import Activation, ActivationState
from .bulkhead import Bulkhead
from .dedup import IN_PROGRESS, Dedup, Reply

__all__ = ["Host", "HostSettings", "NodeHooks"]

log = logging.getLogger("natsagents.runtime")
_NIL = codec.encode(None)
_CLOSE_CONCURRENCY = 128
#: The reply subject of a batch item: its reply is collected into the batch reply.
_BATCH_ITEM = "\x00batch"
#: Replies collected by the batch running in this task (Host._handle_batch).
_collected: ContextVar[list[tuple[dict[str, str] | bytes, bytes]] | None] = ContextVar(
    "natsagents_batch_replies", default=None
)
#: Outcomes after which a batch goes on with its next item.
_BATCH_GOES_ON = frozenset({h.STATUS_OK, "already_applied"})


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
    """

    prefix: str
    node: str
    expose_tracebacks: bool = True
    stop_timeout: float = 10.0
    dedup_ttl: float = 10.0
    compress_above: int | None = 64 * 1024


class NodeHooks(Protocol):
    """What a cluster node plugs into the host (``natsagents.cluster.node``): activation
    requests go through placement, activations are claimed and restored, state is
    persisted after actions, stops release the claim. A host without a node is standalone."""

    async def answer_activation(self, msg: Inbound) -> None: ...

    async def starting(self, act: Activation, options: Any) -> None: ...

    def begin_batch(self, act: Activation) -> None: ...

    async def end_batch(self, act: Activation) -> None: ...

    def abort_batch(self, act: Activation) -> None: ...

    async def after_action(
        self, act: Activation, meta: RequestMeta, answered: bool, seq: int = 0, reply: bytes | None = None
    ) -> None: ...

    def applied_seq(self, act: Activation) -> int: ...

    def action_failed(self, act: Activation, exc: BaseException) -> None: ...

    async def save_now(self, act: Activation) -> None: ...

    async def stopped(self, act: Activation, *, discard: bool) -> None: ...


class Host:
    """Hosts agent kinds for one mesh: activation on demand, mailboxes, dispatch."""

    def __init__(
        self,
        transport: Transport,
        settings: HostSettings,
        refs_for: Any,
        metrics: Metrics,
        tracing: Tracing,
    ) -> None:
        self._t = transport
        self.settings = settings
        self._refs_for = refs_for  # Callable[[str], RefFactory]: refs calling as an agent
        self._metrics = metrics
        self._tracing = tracing
        self.kinds: dict[str, type[Agent]] = {}
        self._kind_subs: dict[str, Subscription] = {}
        self.activations: dict[tuple[str, str], Activation] = {}
        self._starting: dict[tuple[str, str], asyncio.Future[Activation]] = {}
        self._outbox: deque[tuple[str, dict[str, str] | bytes, bytes]] = deque()
        self._outbox_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.node: NodeHooks | None = None
        self.dedup = Dedup(settings.dedup_ttl)
        self._bulkheads: dict[str, Bulkhead] = {}
        self._queue = agent_queue(settings.prefix)

    # -- kinds -----------------------------------------------------------------------

    async def host(self, cls: type[Agent]) -> None:
        """Serve ``cls``: answer activation requests for its kind.

        Raises:
            ConfigurationError: not an Agent subclass, or another class has the same kind.
        """
        if not (isinstance(cls, type) and issubclass(cls, Agent)) or cls is Agent:
            raise ConfigurationError(f"host() takes Agent subclasses, not {cls!r}")
        existing = self.kinds.get(cls.kind)
        if existing is cls:
            return
        if existing is not None:
            raise ConfigurationError(f"kind {cls.kind!r} is already hosted by {existing.__qualname__}")
        self.kinds[cls.kind] = cls
        subject = activate_subject(self.settings.prefix, cls.kind)
        self._kind_subs[cls.kind] = await self._t.subscribe(
            subject, self._on_activate_request, queue=f"{self.settings.prefix}.hosts.{cls.kind}"
        )
        # Once host() returns, the server knows this host: a caller on the same server
        # never sees "no host" for the kind.
        await self._t.flush()

    # -- activation ------------------------------------------------------------------

    async def activate(self, kind: str, agent_id: str, options: Any = None) -> Activation:
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

    async def _start(self, cls: type[Agent], agent_id: str, options: Any = None) -> Activation:
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
        try:
            act.subscription = await self._t.subscribe(subject, act.deliver, queue=self._queue)
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

    async def _stop(self, act: Activation, *, discard: bool = False) -> None:
        await self.quiesce(act, discard=discard)
        if self.node is not None:
            try:
                await self.node.stopped(act, discard=discard)
            except Exception:
                log.exception("releasing %s failed", act.address)

    async def discard(self, act: Activation) -> None:
        """Stop a copy that is no longer the owner (fenced off): no final save; messages
        still waiting are refused with ``unavailable`` + retry so callers reach the owner."""
        if act.state in (ActivationState.STOPPING, ActivationState.STOPPED):
            return
        log.warning("stopping the stale copy of %s: another node owns it now", act.address)
        await self._stop(act, discard=True)

    async def quiesce(self, act: Activation, *, discard: bool = False) -> None:
        """Stop taking messages, finish the mailbox (or refuse it when ``discard``), run
        ``on_stop``. The cluster node then saves, releases or hands the agent over."""
        act.state = ActivationState.STOPPING
        if act.subscription is not None:
            # Messages still in flight reach deliver(), which answers "unavailable, retry".
            with contextlib.suppress(NatsAgentsError):
                await act.subscription.drain()
        if discard:
            for msg in act.take_pending():
                self.refuse(act, msg, "unavailable", "this copy of the agent was superseded", retry=True)
        try:
            async with asyncio.timeout(self.settings.stop_timeout):
                await act.wait_idle()
        except TimeoutError:
            log.warning("%s did not finish its mailbox within %.1f s", act.address, self.settings.stop_timeout)
            for task in list(act.workers):
                task.cancel()
        for msg in act.take_pending():
            self.refuse(act, msg, "unavailable", "the agent stopped before handling the message", retry=True)
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
        await self._drain_outbox()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- activation requests ---------------------------------------------------------

    def _on_activate_request(self, msg: Inbound) -> None:
        node = self.node
        self._spawn(node.answer_activation(msg) if node is not None else self._answer_activation(msg))

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
            await self._reply(msg.reply, *envelope.error_reply("bad_request", str(exc), agent=kind))
            return
        address = f"{kind}/{agent_id}"
        cls = self.kinds.get(kind)
        if cls is None or self._closing:
            await self._reply(msg.reply, *envelope.error_reply("unavailable", "host is closing", agent=address))
            return
        if not (spawn or cls.activate_on_demand) and (kind, agent_id) not in self.activations:
            await self._reply(
                msg.reply,
                *envelope.error_reply(
                    "not_found", f"{address} is not active and {kind} is not activated on demand", agent=address
                ),
            )
            return
        try:
            await self.activate(kind, agent_id)
        except MeshClosed as exc:
            await self._reply(msg.reply, *envelope.error_reply("unavailable", str(exc), agent=address))
            return
        except Exception as exc:
            log.exception("activation of %s failed", address)
            await self._reply(
                msg.reply,
                *envelope.error_reply(
                    "handler_error",
                    f"activation failed: {type(exc).__name__}: {exc}",
                    agent=address,
                    action="on_start",
                    traceback=self._tb(exc),
                ),
            )
            return
        await self._reply(msg.reply, *envelope.ok_reply({"node": self.settings.node}))

    # -- dispatch --------------------------------------------------------------------

    async def handle(self, act: Activation, msg: Inbound) -> Reply | None:
        """Run one message through the agent's handler and reply. Never raises. Returns
        the reply worth giving again to a copy of the request (``None``: a copy may run:
        refused, or its state not stored); the activation records it (runtime.dedup)."""
        if msg.headers is not None and h.BATCH in msg.headers:
            return await self._handle_batch(act, msg)
        started = time.perf_counter()
        kind, address = act.kind, act.address
        reply_to = msg.reply
        try:
            meta = envelope.parse_request(msg.headers)
        except ProtocolError as exc:
            self._metrics.rejected_one(kind, "bad_request")
            await self._reply(reply_to, *envelope.error_reply("bad_request", str(exc), agent=address))
            return None
        kept: Reply | None = None
        if meta.reply_mode == h.REPLY_MODE_ACCEPT:
            reply_to = ""  # accepted already; the result is not wanted
            kept = (envelope.OK_HEADER_BLOCK, _NIL)  # a copy is acknowledged again
        action = meta.action
        if meta.deadline_ms is not None and time.time() * 1000 >= meta.deadline_ms:
            self._metrics.rejected_one(kind, "expired")
            await self._reply(
                reply_to,
                *envelope.error_reply(
                    "timeout", "deadline passed before the agent ran the message", agent=address, action=action
                ),
            )
            return None
        spec = act.agent.__actions__.get(action)
        if spec is None:
            self._metrics.rejected_one(kind, "unknown_action")
            await self._reply(
                reply_to,
                *envelope.error_reply(
                    "unknown_action",
                    f"{kind} has no action {action!r}",
                    agent=address,
                    action=action,
                    details={"actions": sorted(act.agent.__actions__)},
                ),
            )
            return None
        data = msg.data
        try:
            encoding = msg.headers.get(h.ENCODING) if msg.headers is not None else None
            if encoding is not None:
                if encoding != h.ENCODING_DEFLATE:
                    raise ValueError(f"unknown {h.ENCODING} {encoding!r}: use {h.ENCODING_DEFLATE!r}")
                data = envelope.inflate(data, envelope.inflate_limit(self._t.max_payload))
            kwargs = spec.bind(codec.decode(data))
        except ProtocolError as exc:
            self._metrics.rejected_one(kind, "bad_request")
            await self._reply(reply_to, *envelope.error_reply("bad_request", str(exc), agent=address, action=action))
            return None
        except ParamError as exc:
            self._metrics.rejected_one(kind, "bad_request")
            await self._reply(
                reply_to,
                *envelope.error_reply(
                    "bad_request",
                    f"invalid parameters: {exc}",
                    agent=address,
                    action=action,
                    details={"param": exc.path, "problem": exc.problem},
                ),
            )
            return None
        except ValueError as exc:
            self._metrics.rejected_one(kind, "bad_request")
            await self._reply(reply_to, *envelope.error_reply("bad_request", str(exc), agent=address, action=action))
            return None
        seq = 0
        if msg.headers is not None and h.STREAM_SEQ in msg.headers:
            refusal = self._exactly_once(act, msg.headers)
            if isinstance(refusal, int):
                seq = refusal
            else:
                self._metrics.rejected_one(kind, refusal[0])
                await self._reply(reply_to, *envelope.error_reply(*refusal, agent=address, action=action))
                return None
        held: tuple[Bulkhead, ...] = ()
        if spec.bulkhead is not None or act.agent.bulkhead is not None:
            taken = await self._enter_bulkheads(act, spec, meta.deadline_ms)
            if taken is None:
                self._metrics.rejected_one(kind, "bulkhead")
                await self._reply(
                    reply_to,
                    *envelope.error_reply(
                        "overloaded",
                        f"bulkhead of {kind}{'.' + action if spec.bulkhead else ''} is full on {self.settings.node}",
                        agent=address,
                        action=action,
                        details={"reason": "bulkhead", "retry_after": 0.05},
                    ),
                )
                return None
            held = taken
        ctx = Context(
            agent=address,
            action=action,
            message_id=meta.message_id,
            correlation_id=meta.correlation_id,
            deadline=None if meta.deadline_ms is None else meta.deadline_ms / 1000,
            caller=meta.caller,
            traceparent=meta.traceparent,
            tracestate=meta.tracestate,
        )
        tracing = self._tracing
        span = tracing.server_span(kind, action, act.agent_id, msg.headers) if tracing.enabled else None
        token = _current.set(ctx)
        span_token = tracing.activate(span) if span is not None else None
        try:
            result = await spec.func(act.agent, **kwargs)
        except Exception as exc:
            if act.cluster is not None and self.node is not None:
                self.node.action_failed(act, exc)
            tracing.end(span, exc, "handler_error")
            self._metrics.handled_one(kind, action, "handler_error", time.perf_counter() - started)
            act.agent.log.warning("action %s failed: %s: %s", action, type(exc).__name__, exc)
            failed = envelope.error_reply(
                "handler_error",
                f"{type(exc).__name__}: {exc}",
                agent=address,
                action=action,
                traceback=self._tb(exc),
                details={"exception": type(exc).__name__},
            )
            await self._reply(reply_to, *failed)
            if seq or (msg.headers is not None and h.STREAM_SEQ in msg.headers):
                return None  # a durable message is tried again by its partition owner: let it run
            return kept or failed
        finally:
            for pool in held:
                pool.release()
            if span_token is not None:
                tracing.deactivate(span_token)
            _current.reset(token)
        body: bytes | None = None
        if seq or (reply_to and act.cluster is not None):
            try:
                body = codec.encode(result)  # stored with the state: a copy gets it back
            except (TypeError, ValueError):
                body = None
        if act.cluster is not None and self.node is not None:
            try:
                # Persist before answering. A durable at-least-once message may run again
                # anyway, so its id is not stored for copies (its partition owner retries it).
                answered = bool(msg.reply) and not (msg.headers is not None and h.STREAM_SEQ in msg.headers)
                await self.node.after_action(act, meta, answered, seq, body)
            except Exception as exc:
                if not isinstance(exc, AgentError):
                    log.exception("persisting %s after %s failed", address, action)
                    exc = Unavailable(f"state could not be saved: {exc}", details={"retry": True})
                tracing.end(span, exc, exc.code)
                self._metrics.handled_one(kind, action, exc.code, time.perf_counter() - started)
                await self._reply(
                    reply_to,
                    *envelope.error_reply(exc.code, exc.message, agent=address, action=action, details=exc.details),
                )
                return None
        if span is not None:
            tracing.end(span)
        self._metrics.handled_one(kind, action, "ok", time.perf_counter() - started)
        if not reply_to:
            return kept
        try:
            if body is None:
                body = codec.encode(result)
        except (TypeError, ValueError) as exc:
            failed = envelope.error_reply(
                "handler_error", f"result cannot be encoded: {exc}", agent=address, action=action
            )
            await self._reply(reply_to, *failed)
            return failed
        block = envelope.OK_HEADER_BLOCK
        threshold = self.settings.compress_above
        if (
            threshold is not None
            and len(body) > threshold
            and msg.headers is not None
            and msg.headers.get(h.ACCEPT_ENCODING) == h.ENCODING_DEFLATE
        ):
            packed = envelope.deflate(body)
            if packed is not None:
                block, body = envelope.OK_DEFLATE_BLOCK, packed
        await self._reply(reply_to, block, body, agent=address, action=action)
        return (block, body)

    async def _handle_batch(self, act: Activation, msg: Inbound) -> Reply | None:
        """Run the durable messages of a batch request (wire.batch) in order, each as
        :meth:`handle` would, stopping at the first that does not succeed; a cluster node
        stores their state changes in one write before the batch is answered. Replies are
        ``[headers, body]`` per item tried; a failed write answers the first item with the
        error and nothing else (none of them is applied)."""
        address = act.address
        try:
            items = wire_batch.parse_batch_request(msg.headers or {}, msg.data)
            for i, (hdrs, _) in enumerate(items):
                if h.STREAM_SEQ not in hdrs:
                    raise ProtocolError(f"batch item {i} has no {h.STREAM_SEQ}: only durable messages are batched")
        except ProtocolError as exc:
            self._metrics.rejected_one(act.kind, "bad_request")
            await self._reply(msg.reply, *envelope.error_reply("bad_request", str(exc), agent=address))
            return None
        replies: list[tuple[dict[str, str] | bytes, bytes]] = []
        node = self.node if act.cluster is not None else None
        token = _collected.set(replies)
        try:
            if node is not None:
                node.begin_batch(act)
            # The batch reply must fit in one message: stop taking items once the replies
            # fill a quarter of max_payload (one more reply, itself within max_payload, fits
            # then in all but extreme cases; the owner copes with the rest).
            budget = self._t.max_payload // 4
            size = 0
            for hdrs, data in items:
                hdrs.pop(h.REPLY_MODE, None)  # each item is answered with its result
                before = len(replies)
                await self.handle(act, _BatchItem(msg.subject, hdrs, data))
                if len(replies) == before:  # cannot happen: handle() answers every message
                    replies.append(envelope.error_reply("handler_error", "no reply", agent=address))
                status, reply_body = replies[-1]
                if not isinstance(status, bytes) and status.get(h.STATUS) not in _BATCH_GOES_ON:
                    break
                size += len(reply_body) + 64
                if size >= budget:
                    break  # the items after it did not run: the owner sends them again
            if node is not None:
                try:
                    await node.end_batch(act)
                except Exception as exc:
                    if not isinstance(exc, AgentError):
                        log.exception("persisting %s after a batch failed", address)
                        exc = Unavailable(f"state could not be saved: {exc}", details={"retry": True})
                    first = items[0][0].get(h.ACTION)
                    replies[:] = [
                        envelope.error_reply(exc.code, exc.message, agent=address, action=first, details=exc.details)
                    ]
        finally:
            _collected.reset(token)
            if node is not None:
                node.abort_batch(act)  # a no-op after end_batch; else (cancelled) undo it all
        for (hdrs, _), reply in zip(items, replies, strict=False):
            # Like a message that came alone: its reply is kept for a replay (§15.1) or a copy.
            if not isinstance(reply[0], bytes) or h.MESSAGE_ID not in hdrs:
                continue  # only ok replies (prebuilt blocks) are worth keeping
            self.dedup.finish(act, hdrs[h.MESSAGE_ID], reply)
        hdrs_out, body = wire_batch.batch_reply(replies)
        await self._reply(msg.reply, hdrs_out, body)
        return (hdrs_out, body)

    def _exactly_once(self, act: Activation, hdrs: dict[str, str]) -> int | tuple[str, str]:
        """For a durable message: its stream sequence to store with the state (0 for
        at-least-once), or ``(code, message)`` to answer instead of running it."""
        raw = hdrs.get(h.STREAM_SEQ, "")
        if not raw.isdigit() or len(raw) > 19:
            return ("bad_request", f"{h.STREAM_SEQ} must be a positive integer, not {raw!r}")
        if hdrs.get(h.DELIVERY) != h.DELIVERY_EXACTLY_ONCE:
            return 0
        node = self.node
        if node is None or act.cluster is None or type(act.agent).persistence != "action":
            return (
                "bad_request",
                f"exactly_once delivery to {act.kind} needs a cluster node and persistence = 'action'",
            )
        seq = int(raw)
        if seq <= node.applied_seq(act):
            self._metrics.duplicates.labels(act.kind, "seq").inc()
            return (
                "already_applied",
                f"stream message {seq} was applied to {act.address} already (its reply is no longer kept)",
            )
        return seq

    async def _enter_bulkheads(
        self, act: Activation, spec: Any, deadline_ms: int | None
    ) -> tuple[Bulkhead, ...] | None:
        """Take a slot in the kind's and the action's bulkheads (``None``: refused)."""
        cls = type(act.agent)
        wanted = []
        if cls.bulkhead is not None:
            wanted.append((act.kind, cls.bulkhead))
        if spec.bulkhead is not None:
            wanted.append((f"{act.kind}.{spec.name}", spec.bulkhead))
        held: list[Bulkhead] = []
        deadline = None if deadline_ms is None else deadline_ms / 1000
        for name, limit in wanted:
            pool = self._bulkheads.get(name)
            if pool is None or pool.limit != limit:
                pool = self._bulkheads[name] = Bulkhead(name, limit)
            ok = await pool.acquire(deadline) if cls.bulkhead_wait else pool.try_acquire()
            if not ok:
                for taken in held:
                    taken.release()
                return None
            held.append(pool)
        return tuple(held)

    def _tb(self, exc: BaseException) -> str | None:
        if not self.settings.expose_tracebacks:
            return None
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    async def _reply(
        self,
        subject: str,
        headers: dict[str, str] | bytes,
        body: bytes,
        *,
        agent: str | None = None,
        action: str | None = None,
    ) -> None:
        if subject is _BATCH_ITEM:
            collected = _collected.get()
            if collected is not None:
                collected.append((headers, body))
            return
        if not subject:
            status = h.STATUS_OK if isinstance(headers, bytes) else headers.get(h.STATUS, h.STATUS_OK)
            if status not in (h.STATUS_OK, "handler_error"):  # handler errors are logged in handle()
                try:
                    err = codec.decode(body)
                except ValueError:
                    err = None
                err = err if isinstance(err, dict) else {}
                log.warning(
                    "dropped a send to %s (action %s): %s: %s",
                    err.get("agent"),
                    err.get("action"),
                    status,
                    err.get("message"),
                )
            return
        try:
            await self._t.publish(subject, body, headers=headers)
        except NatsAgentsError as exc:
            if getattr(exc, "code", None) == "payload_too_large":
                hdrs, data = envelope.error_reply(
                    "payload_too_large",
                    f"reply is too large for the server ({len(body)} bytes)",
                    agent=agent,
                    action=action,
                )
                with contextlib.suppress(NatsAgentsError):
                    await self._t.publish(subject, data, headers=hdrs)
                return
            log.warning("could not send reply to %s: %s", subject, exc)

    # -- immediate replies from the reader task ---------------------------------------

    def refuse(self, act: Activation, msg: Inbound, code: str, message: str, *, retry: bool = False) -> None:
        """Answer ``msg`` with an error without running it (mailbox full, stopping)."""
        self._metrics.rejected_one(act.kind, code)
        if not msg.reply:
            log.warning("dropped a send to %s: %s", act.address, message)
            return
        action = (msg.headers or {}).get(h.ACTION)
        hdrs, body = envelope.error_reply(
            code, message, agent=act.address, action=action, details={"retry": True} if retry else None
        )
        self._post(msg.reply, hdrs, body)

    def throttle(self, act: Activation, msg: Inbound, reason: str) -> None:
        """Refuse a message to an unhealthy agent (runtime.health): ``overloaded`` with
        ``details.reason`` and ``details.retry_after`` (seconds)."""
        health = act.health
        assert health is not None
        self._metrics.rejected_one(act.kind, f"throttled_{reason}")
        if not msg.reply:
            log.warning("dropped a send to %s: throttled (%s)", act.address, reason)
            return
        waiting = len(act.mailbox)
        if reason == "backlog":
            text = f"{act.address} is congested: {waiting} messages waiting (limit {health.backlog_limit})"
        else:
            text = (
                f"{act.address} is slow: handlers take {health.latency:.3f} s on average (limit {health.latency_limit})"
            )
        retry_after = round(health.retry_after(waiting, act.max_workers), 3)
        hdrs, body = envelope.error_reply(
            "overloaded",
            text,
            agent=act.address,
            action=(msg.headers or {}).get(h.ACTION),
            details={"reason": reason, "retry_after": retry_after},
        )
        self._post(msg.reply, hdrs, body)

    def duplicate(self, act: Activation, msg: Inbound, entry: Any) -> None:
        """A copy of a request this agent has seen (same ``Na-Msg-Id``): never run it again.
        In progress: the one reply is on its way (an accepted send is acknowledged again);
        answered: the stored reply again; applied by an earlier activation: ``already_applied``."""
        hdrs = msg.headers or {}
        if entry is IN_PROGRESS:
            self._metrics.duplicates.labels(act.kind, "in_progress").inc()
            if hdrs.get(h.REPLY_MODE) == h.REPLY_MODE_ACCEPT:
                self.accepted(msg)
            return
        hdrs_kept, body_kept, _ = entry
        if hdrs_kept is None:  # applied by an earlier activation; the reply is gone
            self._metrics.duplicates.labels(act.kind, "applied").inc()
            if hdrs.get(h.REPLY_MODE) == h.REPLY_MODE_ACCEPT:
                self.accepted(msg)
                return
            self.refuse(
                act,
                msg,
                "already_applied",
                "an earlier activation of the agent applied this message and stopped before answering;"
                " its result is lost",
            )
            return
        self._metrics.duplicates.labels(act.kind, "replayed").inc()
        self._post(msg.reply, hdrs_kept, body_kept or b"")

    def replay(self, act: Activation, msg: Inbound) -> None:
        """``Na-Reply-Mode: replay``: answer with the reply of the earlier message named by
        ``Na-Msg-Id`` if this activation knows it (answered: the reply again; applied by an
        earlier activation without its reply: ``already_applied``). Running or unknown
        (not run yet, or forgotten): ``unavailable`` with ``details.retry`` — ask again."""
        message_id = (msg.headers or {}).get(h.MESSAGE_ID)
        if not msg.reply or message_id is None or not envelope.is_message_id(message_id):
            self.refuse(act, msg, "bad_request", f"a replay request needs a reply subject and a valid {h.MESSAGE_ID}")
            return
        entry = act.recent.get(message_id) if act.recent is not None else None
        if entry is None or entry is IN_PROGRESS:
            state = "still running" if entry is IN_PROGRESS else "not known here (not run yet, or forgotten)"
            self._metrics.rejected_one(act.kind, "replay_unknown")
            hdrs, body = envelope.error_reply(
                "unavailable",
                f"the result of message {message_id} is {state}",
                agent=act.address,
                action=(msg.headers or {}).get(h.ACTION),
                details={"retry": True, "result": "running" if entry is IN_PROGRESS else "unknown"},
            )
            self._post(msg.reply, hdrs, body)
            return
        self.duplicate(act, msg, entry)

    def accepted(self, msg: Inbound) -> None:
        """Acknowledge a send (reply mode ``accept``) as soon as it is in the mailbox."""
        self._post(msg.reply, envelope.OK_HEADER_BLOCK, _NIL)

    def _post(self, subject: str, headers: dict[str, str] | bytes, body: bytes) -> None:
        self._outbox.append((subject, headers, body))
        if self._outbox_task is None:
            self._outbox_task = self._spawn(self._drain_outbox())

    async def _drain_outbox(self) -> None:
        try:
            while self._outbox:
                subject, headers, body = self._outbox.popleft()
                await self._reply(subject, headers, body)
        finally:
            self._outbox_task = None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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


class _BatchItem:
    """One message of a batch request, run as if it had come alone (its reply is collected)."""

    __slots__ = ("data", "headers", "reply", "subject")

    def __init__(self, subject: str, headers: dict[str, str], data: bytes) -> None:
        self.subject = subject
        self.reply = _BATCH_ITEM
        self.headers: dict[str, str] | None = headers
        self.data = data
