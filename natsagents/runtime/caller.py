"""The calling side: envelopes, deadlines, activation on demand, retries of "no responders"."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..agent.context import Context, current_context
from ..agent.ref import USE_DEFAULT, CallOptions, Timeout
from ..errors import (
    HANDLER_ERROR,
    PARTITION,
    TIMEOUT,
    UNAVAILABLE,
    AgentError,
    BadRequest,
    CallTimeout,
    ConfigurationError,
    DegradedReply,
    NatsAgentsError,
    PartitionError,
    Unauthorized,
    Unavailable,
)
from ..observability import Metrics, Tracing
from ..resilience import Breakers, BreakerSettings, CircuitState, RetryPolicy
from ..transport import NoResponders, Transport
from ..wire import codec, envelope
from ..wire import headers as h
from ..wire.activation import activation_request
from ..wire.identity import Identity, call_expiry
from ..wire.ids import decode_id, encode_id
from ..wire.subjects import activate_subject, agent_subject, read_subject
from .session import MAX_VERSION, Session

log = logging.getLogger("natsagents.runtime")

__all__ = ["Caller", "CallerSettings"]

_ACTIVATE_HEADERS = envelope.encode_headers({h.PROTO: h.PROTO_VERSION})
#: Owner checks (activation requests for stalled requests) in flight per mesh at most.
_MAX_OWNER_CHECKS = 64


def _partition_retry_for(msg: Any) -> float:
    """Seconds a caller resends after a ``partition`` answer (its ``details.retry_for``:
    the host's lease, within which the majority takes the agent over; at most 60)."""
    try:
        envelope.parse_reply(msg.headers, msg.data)
    except PartitionError as exc:
        value = exc.details.get("retry_for")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 60:
            return float(value)
    except NatsAgentsError:
        pass
    return 0.0


def _result(msg: Any, address: str, action: str, options: CallOptions | None, max_payload: int) -> Any:
    """The result of a reply (``envelope.parse_reply``); a degraded ok reply raises
    ``DegradedReply`` when the ref does not allow them (``allow_degraded=False``)."""
    value = envelope.parse_reply(msg.headers, msg.data, agent=address, action=action, max_payload=max_payload)
    if options is not None and not options.allow_degraded and msg.headers and msg.headers.get(h.DEGRADED) == "1":
        raise DegradedReply(
            f"{address} answered from a copy cut off from the majority (degraded, possibly stale)",
            value=value,
            agent=address,
            action=action,
            details={"degraded": True},
        )
    return value


def _caller_name(address: str) -> str:
    """``Kind/<id token>``: an agent's address as it may travel in a header (ids can hold
    any character, tokens only safe ones)."""
    kind, _, agent_id = address.partition("/")
    return f"{kind}/{encode_id(agent_id)}"


def _observe(session: Session, kind: str, agent_id: str, headers: Mapping[str, str]) -> None:
    """Remember the state version a reply carried (a malformed one is ignored)."""
    text = headers.get(h.STATE_VERSION, "")
    if 0 < len(text) <= 19 and text.isascii() and text.isdigit():
        version = int(text)
        if version <= MAX_VERSION:
            session.observe(kind, agent_id, version)


def _passthrough(ctx: Context | None) -> dict[str, str] | None:
    """Without a tracer here, a call made while handling a traced message carries the
    received trace context on unchanged, so the trace survives untraced hops."""
    if ctx is None or ctx.traceparent is None:
        return None
    out = {h.TRACEPARENT: ctx.traceparent}
    if ctx.tracestate:
        out[h.TRACESTATE] = ctx.tracestate
    return out


@dataclass(frozen=True, slots=True)
class CallerSettings:
    """Settings of the calling side.

    Args:
        prefix: subject prefix.
        name: client name sent as ``Na-Caller`` when not calling from an agent.
        default_timeout: seconds a call waits when no timeout is given (``None``: forever).
        backoff_initial, backoff_max: retry delays (seconds) while nobody answers.
        resend_after: publish a request again, unchanged, when no reply came within this
            many seconds (NATS can drop a request in transit; hosts recognise the copy by
            its ``Na-Msg-Id`` and never run it twice). Each resend of a request to an
            agent also sends an activation request: if the agent's owner is paused or cut
            off (the server still holds its subscription, so no "no responders" comes), a
            host takes the agent over once the owner's lease lapsed, and the request is
            published again at once. ``None``: never.
        check_owner_after: the first such resend and activation request come after this
            many seconds (when shorter than ``resend_after``), so that an agent of a paused
            owner answers again soon after the owner's lease lapsed.
        retry: the default :class:`~natsagents.RetryPolicy` of calls (``None``: no retries
            beyond activation and "retry" answers).
        breaker: circuit breakers per destination (``None``: off).
        compress_above: request bodies larger than this many bytes are compressed
            (``Na-Encoding: deflate``), and replies may come compressed; ``None``: never.
        identity: signs every request (``wire.identity``) so hosts that trust its key
            know who calls; ``None``: requests go unsigned.
    """

    prefix: str
    name: str
    default_timeout: float | None = 10.0
    backoff_initial: float = 0.005
    backoff_max: float = 0.25
    resend_after: float | None = 2.0
    check_owner_after: float | None = 1.0
    retry: RetryPolicy | None = None
    breaker: BreakerSettings | None = None
    compress_above: int | None = 64 * 1024
    identity: Identity | None = None


class DurablePath(Protocol):
    """Stores a durable message and waits for its result (``delivery.publish``)."""

    async def publish(
        self,
        kind: str,
        agent_id: str,
        action: str,
        body: bytes,
        hdrs: dict[str, str],
        deadline: float | None,
        accept_only: bool,
        delivery: str,
        message_ttl: float | None = None,
        on_reply: Callable[[Mapping[str, str]], None] | None = None,
    ) -> Any: ...


class Caller:
    """Sends requests and sends to agents for one mesh (the refs' :class:`Invoker`)."""

    def __init__(
        self,
        transport: Transport,
        settings: CallerSettings,
        metrics: Metrics,
        tracing: Tracing,
        *,
        as_agent: str | None = None,
        tasks: set[asyncio.Future[Any]] | None = None,
    ) -> None:
        self._t = transport
        self.settings = settings
        self._metrics = metrics
        self._tracing = tracing
        self._as_agent = as_agent
        self._tasks: set[asyncio.Future[Any]] = tasks if tasks is not None else set()
        self._subjects: dict[tuple[str, str], str] = {}
        self._actions_seen: set[str] = set()
        self.breakers: Breakers | None = None
        if settings.breaker is not None:
            self.breakers = Breakers(settings.breaker, self._breaker_changed)
        #: The durable publish path (``delivery.publish``), plugged in by the mesh.
        self.durable: DurablePath | None = None
        # Agents whose owner is being checked after a request went unanswered (see
        # _stalled): the requests to publish again once it answered.
        self._probing: dict[tuple[str, str], list[Callable[[], None]]] = {}
        self._agent_prefix = f"{settings.prefix}.agent."
        self._read_prefix = f"{settings.prefix}.read."
        #: The session of calls that name none (``CallOptions.session``): read-your-writes
        #: and monotonic reads for everything this mesh calls (``runtime.session``).
        self.session = Session()
        #: This mesh's partition status (a cluster node's ``PartitionMonitor``, plugged in
        #: by the mesh): a call nothing answered raises ``PartitionError`` instead of
        #: ``CallTimeout`` while it is ``quorum_lost`` or ``nats_unreachable``.
        self.partition_status: Callable[[], str] | None = None

    def _breaker_changed(self, kind: str, destination: str, state: CircuitState) -> None:
        self._metrics.circuit_transitions.labels(kind, state.value).inc()
        if self.breakers is not None:
            self._metrics.circuits_open.labels(kind).set(self.breakers.open_count(kind))
        if state is CircuitState.OPEN:
            log.warning("circuit to %s opened", destination)
        elif state is CircuitState.CLOSED:
            log.info("circuit to %s closed", destination)

    def as_agent(self, address: str) -> Caller:
        """A caller whose messages name the agent ``address`` as ``Na-Caller`` (shares tasks
        and caches)."""
        other = Caller(
            self._t, self.settings, self._metrics, self._tracing, as_agent=_caller_name(address), tasks=self._tasks
        )
        other._subjects = self._subjects
        other._actions_seen = self._actions_seen
        other.breakers = self.breakers
        other.durable = self.durable
        other._probing = self._probing
        other.session = self.session
        other.partition_status = self.partition_status
        return other

    def spawn_task(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _subject(self, kind: str, agent_id: str) -> str:
        key = (kind, agent_id)
        subject = self._subjects.get(key)
        if subject is None:
            subject = agent_subject(self.settings.prefix, kind, agent_id)
            if len(self._subjects) > 100_000:
                self._subjects.clear()
            self._subjects[key] = subject
        return subject

    async def invoke(
        self,
        kind: str,
        agent_id: str,
        action: str,
        params: Mapping[str, Any],
        *,
        timeout: Timeout,
        accept_only: bool,
        options: CallOptions | None = None,
    ) -> Any:
        """Deliver one message and return the result (or ``None`` for an accepted send).

        Raises:
            CallTimeout, Unavailable, PayloadTooLarge, BadRequest and the other AgentError
            subclasses; CircuitOpen (the destination's breaker is open); MeshClosed when
            the mesh closes under the call.
        """
        started = time.perf_counter()
        address = f"{kind}/{agent_id}"
        if timeout is USE_DEFAULT:
            timeout = self.settings.default_timeout
        elif timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ConfigurationError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
        ctx = current_context()
        now = time.time()
        deadline = None if timeout is None else now + timeout
        if ctx is not None and ctx.deadline is not None:
            deadline = ctx.deadline if deadline is None else min(deadline, ctx.deadline)
        if action not in self._actions_seen:
            if not isinstance(action, str) or not envelope.ACTION_RE.fullmatch(action):
                raise ConfigurationError(
                    f"invalid action {action!r}: use 1-64 characters [A-Za-z0-9_], starting with a letter"
                )
            if len(self._actions_seen) < 10_000:
                self._actions_seen.add(action)
        subject = self._subject(kind, agent_id)
        session = self.session
        read: str | None = None  # the read subject (protocol §19), falling back to ``subject``
        if options is not None:
            if options.session is not None:
                session = options.session
            if options.read:
                read = read_subject(self.settings.prefix, kind, agent_id)
        try:
            body = codec.encode(dict(params))
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"cannot encode parameters: {exc}", agent=address, action=action) from None
        message_id = (options.message_id if options is not None else None) or envelope.new_message_id()
        span = self._tracing.client_span(subject, kind, action, agent_id, send=accept_only)
        outcome = "ok"
        try:
            hdrs = envelope.request_headers(
                action=action,
                message_id=message_id,
                correlation_id=ctx.correlation_id if ctx is not None else None,
                deadline_ms=None if deadline is None else int(deadline * 1000),
                caller=self._as_agent or (_caller_name(ctx.agent) if ctx is not None else self.settings.name),
                reply_mode=h.REPLY_MODE_ACCEPT if accept_only else h.REPLY_MODE_RESULT,
                trace=self._tracing.inject(span) if span is not None else _passthrough(ctx),
            )
            threshold = self.settings.compress_above
            if threshold is not None:
                hdrs[h.ACCEPT_ENCODING] = h.ENCODING_DEFLATE
                if len(body) > threshold:
                    packed = envelope.deflate(body)
                    if packed is not None:
                        body = packed
                        hdrs[h.ENCODING] = h.ENCODING_DEFLATE
            if options is not None:
                if options.priority != "normal":
                    hdrs[h.PRIORITY] = options.priority
                if options.delivery != "at_most_once":
                    if self.durable is None:
                        raise ConfigurationError("durable delivery is not available on this mesh")
                    return await self.durable.publish(
                        kind,
                        agent_id,
                        action,
                        body,
                        hdrs,
                        deadline,
                        accept_only,
                        options.delivery,
                        options.message_ttl,
                        on_reply=lambda hd: _observe(session, kind, agent_id, hd),
                    )
            if read is not None:
                floor = session.version(kind, agent_id)
                if floor:
                    hdrs[h.MIN_VERSION] = str(floor)
            identity = self.settings.identity
            if identity is not None:
                # Always over the agent subject, also for a read sent on the read subject.
                identity.sign(subject, hdrs, body, call_expiry(deadline, now))
            # Every value is either generated here or checked (action below, names at
            # connect, ids by the host's regexes), so the block needs no per-call checks.
            block = envelope.encode_headers_unchecked(hdrs)
            policy = self.settings.retry
            if options is not None and options.retry is not USE_DEFAULT:
                policy = options.retry
            if policy is None and self.breakers is None:  # the common case: one attempt
                if read is None:
                    msg = await self._deliver(subject, body, block, deadline, kind, agent_id, action)
                else:
                    msg = await self._deliver(read, body, block, deadline, kind, agent_id, action, fallback=subject)
                if msg.headers is not None and h.STATE_VERSION in msg.headers:
                    _observe(session, kind, agent_id, msg.headers)
                return _result(msg, address, action, options, self._t.max_payload)
            idempotent = bool(options is not None and options.idempotent)
            return await self._attempts(
                subject, body, block, hdrs, deadline, kind, agent_id, action, policy, idempotent, session, read, options
            )
        except AgentError as exc:
            outcome = exc.code
            exc.agent = exc.agent or address
            exc.action = exc.action or action
            self._tracing.end(span, exc, exc.code)
            span = None
            raise
        except BaseException as exc:
            outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__name__
            self._tracing.end(span, exc)
            span = None
            raise
        finally:
            self._tracing.end(span)
            self._metrics.called_one(kind, action, outcome, time.perf_counter() - started)

    async def _attempts(
        self,
        subject: str,
        body: bytes,
        block: bytes,
        hdrs: dict[str, str],
        deadline: float | None,
        kind: str,
        agent_id: str,
        action: str,
        policy: RetryPolicy | None,
        idempotent: bool,
        session: Session,
        read: str | None = None,
        options: CallOptions | None = None,
    ) -> Any:
        """Deliver with the circuit breaker and the retry policy (see ``resilience``)."""
        address = f"{kind}/{agent_id}"
        breakers = self.breakers
        attempt = 1
        while True:
            answered = True
            try:
                if breakers is not None:
                    breakers.before(kind, address)
                try:
                    until = deadline
                    if policy is not None and policy.attempt_timeout is not None:
                        cap = time.time() + policy.attempt_timeout
                        until = cap if until is None else min(until, cap)
                    if read is None:
                        msg = await self._deliver(subject, body, block, until, kind, agent_id, action)
                    else:
                        msg = await self._deliver(read, body, block, until, kind, agent_id, action, fallback=subject)
                    if msg.headers is not None and h.STATE_VERSION in msg.headers:
                        _observe(session, kind, agent_id, msg.headers)
                    result = _result(msg, address, action, options, self._t.max_payload)
                except AgentError as exc:
                    # Only a local timeout (no reply; a local partition error is one too)
                    # leaves open whether the message ran.
                    answered = exc.remote or exc.code not in (TIMEOUT, PARTITION)
                    if breakers is not None:
                        breakers.after(kind, address, exc.code)
                    raise
                if breakers is not None:
                    breakers.after(kind, address, None)
                return result
            except AgentError as exc:
                if policy is None or attempt >= policy.max_attempts:
                    raise
                if not policy.allows(exc.code, idempotent=idempotent, answered=answered):
                    raise
                wait = policy.backoff(attempt)
                retry_after = exc.details.get("retry_after") if isinstance(exc.details, dict) else None
                if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
                    wait = max(wait, float(retry_after))
                if deadline is not None and time.time() + wait >= deadline:
                    raise
                self._metrics.retries.labels(kind, f"policy_{exc.code}").inc()
                await asyncio.sleep(wait)
                attempt += 1
                if exc.code == HANDLER_ERROR:
                    # The copy would get the stored error again: a new logical message.
                    hdrs = dict(hdrs, **{h.MESSAGE_ID: envelope.new_message_id()})
                    identity = self.settings.identity
                    if identity is not None:
                        identity.sign(subject, hdrs, body, call_expiry(deadline, time.time()))
                    block = envelope.encode_headers_unchecked(hdrs)

    async def forward(
        self,
        subject: str,
        body: bytes,
        block: bytes,
        deadline: float | None,
        kind: str,
        agent_id: str,
        action: str,
    ) -> Any:
        """One request with a prebuilt header block, activating the agent on demand and
        retrying "no responders" and "retry" answers until ``deadline``: how a partition
        owner hands a durable message to its agent. Returns the reply message (any status).

        Raises:
            CallTimeout, Unavailable (no host of the kind), MeshClosed."""
        return await self._deliver(subject, body, block, deadline, kind, agent_id, action)

    async def _deliver(
        self,
        subject: str,
        body: bytes,
        hdrs: bytes,
        deadline: float | None,
        kind: str,
        agent_id: str,
        action: str,
        *,
        fallback: str | None = None,
    ) -> Any:
        """Request with retries: "no responders" activates the agent, then tries again.
        ``fallback``: the agent subject of a read sent on its read subject, taken when
        nobody serves the read subject (the agent is not active: activate it there)."""
        delay = self.settings.backoff_initial
        address = f"{kind}/{agent_id}"
        last_problem = "no reply"
        no_host: Unavailable | None = None
        partitioned: float | None = None  # when a paused copy first answered "partition"
        while True:
            remaining = None if deadline is None else deadline - time.time()
            if remaining is not None and remaining <= 0:
                if no_host is not None:
                    try:
                        raise no_host
                    finally:
                        no_host = None  # not kept by this frame: no cycle with its traceback
                raise self._no_answer(f"deadline passed ({last_problem})", address, action)
            try:
                msg = await self._t.request(
                    subject,
                    body,
                    headers=hdrs,
                    timeout=remaining,
                    resend=self.settings.resend_after,
                    stalled=self._stalled,
                    stall_after=self.settings.check_owner_after,
                )
            except NoResponders:
                if fallback is not None:
                    subject, fallback = fallback, None
                    continue
                last_problem = "agent not active"
                self._metrics.retries.labels(kind, "not_active").inc()
                try:
                    activated = await self.activate(kind, agent_id, deadline)
                except Unavailable as exc:
                    last_problem = exc.message
                    no_host = exc
                    activated = False
                    self._metrics.retries.labels(kind, "no_host").inc()
                if activated:
                    no_host = None
                    continue
            except CallTimeout as exc:
                raise self._no_answer(exc.message, address, action) from None
            except Unauthorized as exc:
                if exc.agent is None:  # refused by the NATS server, not by the agent
                    raise Unauthorized(exc.message, agent=address, action=action) from None
                raise
            else:
                status = (msg.headers or {}).get(h.STATUS)
                if status == PARTITION:
                    # A paused copy on the minority side. Another copy on the majority may
                    # own the agent now and run this very message (both reachable: a
                    # one-way cut, the heal): resend with the same id for a while, so a
                    # result is never reported as "did not run".
                    partitioned = partitioned if partitioned is not None else time.time()
                    if time.time() - partitioned >= _partition_retry_for(msg):
                        return msg
                    last_problem = "partition"
                    self._metrics.retries.labels(kind, "partition").inc()
                elif status != UNAVAILABLE:
                    return msg
                else:
                    try:
                        envelope.parse_reply(
                            msg.headers, msg.data, agent=address, action=action, max_payload=self._t.max_payload
                        )
                    except Unavailable as exc:
                        if not exc.details.get("retry"):
                            raise
                        last_problem = exc.message
                        self._metrics.retries.labels(kind, "stopping").inc()
            await self._sleep(delay, deadline)
            delay = min(delay * 2, self.settings.backoff_max)

    def _no_answer(self, message: str, address: str, action: str) -> AgentError:
        """The error for a call nothing answered by its deadline: ``CallTimeout``, or a
        local ``PartitionError`` when this mesh is a cluster node on the minority side
        (``quorum_lost``) or cut from NATS (``nats_unreachable``) — the agent's owner may
        be on the other side. Either way the message may have run (protocol §6.4)."""
        status = self.partition_status() if self.partition_status is not None else None
        if status in ("quorum_lost", "nats_unreachable"):
            return PartitionError(
                f"no reply, and this caller is cut off from the cluster's majority ({status}): {message}; "
                "the message may or may not have run",
                agent=address,
                action=action,
                details={"state": status, "caller": True},
            )
        return CallTimeout(message, agent=address, action=action)

    def _stalled(self, subject: str, again: Callable[[], None]) -> None:
        """A request to an agent is resent (no reply within ``resend_after``). Its owner
        may be paused or cut off: the server keeps such a process's subscription, so
        nothing says "no responders" and every resend reaches the same frozen
        subscription. Ask for an activation (one at a time per agent, at most
        ``_MAX_OWNER_CHECKS`` at once): a host forwards
        it to a live owner (nothing changes), or takes the agent over once the owner's
        lease lapsed, and the waiting requests are published again at once (the new
        owner subscribes in a queue group of its own: docs/architecture.md)."""
        if subject.startswith(self._agent_prefix):
            rest = subject[len(self._agent_prefix) :]
        elif subject.startswith(self._read_prefix):  # a read whose replica forwarded it
            rest = subject[len(self._read_prefix) :]
        else:
            return
        kind, _, token = rest.partition(".")
        try:
            key = (kind, decode_id(token))
        except (NatsAgentsError, ValueError):
            return
        waiting = self._probing.get(key)
        if waiting is not None:
            waiting.append(again)
            return
        if len(self._probing) >= _MAX_OWNER_CHECKS:
            return  # a slow cluster, not a paused node: do not add to its load (next resend)
        self._probing[key] = [again]
        self._metrics.retries.labels(kind, "owner_check").inc()
        self.spawn_task(self._check_owner(key))

    async def _check_owner(self, key: tuple[str, str]) -> None:
        kind, agent_id = key
        window = max(5.0, 2 * (self.settings.resend_after or 0.0))
        try:
            # Resent every 0.5 s: the paused host may hold a place in the kind's
            # activation queue group too, and the caller is already late.
            activated = await self.activate(kind, agent_id, time.time() + window, resend=0.5)
        except (AgentError, NatsAgentsError) as exc:
            log.debug("checking the owner of %s/%s failed: %s", kind, agent_id, exc)
            activated = False
        finally:
            waiting = self._probing.pop(key, [])
        if activated:
            for again in waiting:
                again()

    async def activate(
        self,
        kind: str,
        agent_id: str,
        deadline: float | None,
        *,
        spawn: bool = False,
        placement: Mapping[str, Any] | None = None,
        resend: float | None = None,
    ) -> bool:
        """Ask a host of ``kind`` to activate the agent.

        ``placement`` adds ``needs``, ``hints`` and ``queue`` to the request (cluster hosts).
        ``resend``: seconds between copies of the request while unanswered (default
        ``resend_after``).

        Returns ``True`` once activated. Raises: Unavailable (no host of the kind),
        AgentNotFound, HandlerError (``on_start`` failed), ClusterAtCapacity, CallTimeout.
        """
        remaining = None if deadline is None else deadline - time.time()
        if remaining is not None and remaining <= 0:
            return False
        body = activation_request(agent_id, spawn=spawn, deadline_ms=None if deadline is None else int(deadline * 1000))
        if placement:
            body.update(placement)
        try:
            # Resent like any request: the host that got it may be paused (the server
            # keeps its place in the kind's queue group), another one answers the copy.
            msg = await self._t.request(
                activate_subject(self.settings.prefix, kind),
                codec.encode(body),
                headers=_ACTIVATE_HEADERS,
                timeout=remaining,
                resend=resend if resend is not None else self.settings.resend_after,
            )
        except NoResponders:
            raise Unavailable(f"no host serves kind {kind!r}", agent=f"{kind}/{agent_id}") from None
        except CallTimeout:
            return False
        except Unauthorized as exc:  # the server refused our publish: say whose call it was
            raise Unauthorized(exc.message, agent=f"{kind}/{agent_id}", action="activate") from None
        envelope.parse_reply(msg.headers, msg.data, agent=f"{kind}/{agent_id}")
        return True

    async def spawn(
        self, kind: str, agent_id: str, timeout: float | None, placement: Mapping[str, Any] | None = None
    ) -> None:
        """Activate ``kind/agent_id`` on some host, waiting (with backoff) for a host of the
        kind to appear until ``timeout``.

        Raises:
            Unavailable: still no host of the kind at the deadline. AgentNotFound,
            HandlerError: the host refused or ``on_start`` failed. CallTimeout.
        """
        deadline = None if timeout is None else time.time() + timeout
        delay = self.settings.backoff_initial
        while True:
            try:
                if await self.activate(kind, agent_id, deadline, spawn=True, placement=placement):
                    return
            except Unavailable:
                if deadline is not None and time.time() >= deadline:
                    raise
                self._metrics.retries.labels(kind, "no_host").inc()
            else:
                raise CallTimeout(f"activation of {kind}/{agent_id} timed out", agent=f"{kind}/{agent_id}")
            await self._sleep(delay, deadline)
            delay = min(delay * 2, self.settings.backoff_max)

    @staticmethod
    async def _sleep(delay: float, deadline: float | None) -> None:
        delay = delay * (0.5 + random.random())
        if deadline is not None:
            delay = max(0.0, min(delay, deadline - time.time()))
        await asyncio.sleep(delay)
