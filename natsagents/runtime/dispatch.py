"""Running one message: validation, deadline, exactly-once, bulkheads, the handler,
persistence, and the reply it earns.

:meth:`Dispatcher.run` never publishes and never raises: it returns an
:class:`~natsagents.runtime.activation.Outcome` (the reply, whether the requester wants it,
what a copy of the request gets later) and its caller decides where the reply goes — the
activation's worker to the request's reply subject, a batch into the batch reply. Every
refusal before the handler runs is a :class:`Refused` raised by the step that found it and
answered in one place.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..agent.base import EXACTLY_ONCE_CONSISTENCY
from ..agent.context import Context, _current
from ..agent.policy import TrustedCaller
from ..agent.schema import ActionSpec, ParamError
from ..errors import (
    ALREADY_APPLIED,
    BAD_REQUEST,
    HANDLER_ERROR,
    OVERLOADED,
    TIMEOUT,
    UNKNOWN_ACTION,
    AgentError,
    ProtocolError,
    Unavailable,
)
from ..observability import Metrics, Tracing
from ..wire import codec, envelope
from ..wire import headers as h
from . import exactly_once
from .activation import Activation, Outcome
from .budget import DecodeBudget
from .bulkhead import Bulkhead
from .dedup import IN_PROGRESS, Reply
from .hooks import NodeHooks
from .replies import NIL

__all__ = ["Dispatcher", "Refused"]

log = logging.getLogger("natsagents.runtime")
_time = time.time
_perf_counter = time.perf_counter
# Header names read for every message, as module constants (an attribute load less each).
_ACCEPT, _ENCODING, _MESSAGE_ID, _STREAM_SEQ = h.REPLY_MODE_ACCEPT, h.ENCODING, h.MESSAGE_ID, h.STREAM_SEQ
_OK_BLOCK = envelope.OK_HEADER_BLOCK
_parse_request, _decoded_size = envelope.parse_request, codec.decoded_size
#: Builds a named tuple from a tuple of all its fields: the named tuple's own ``__new__`` is
#: a Python function (a frame per message, three named tuples a message).
_new = tuple.__new__
_NO_ROLES: frozenset[str] = frozenset()


@dataclass(eq=False)
class Refused(Exception):
    """A message refused before its handler ran.

    Attributes:
        code: the error code of the reply.
        message: its text.
        reason: the metric label (``natsagents_rejected_total{reason}``), default ``code``.
        details: the reply's ``details``.
    """

    code: str
    message: str
    reason: str = ""
    details: Mapping[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        super().__init__(self.message)


class Dispatcher:
    """Runs messages through their agents' handlers (see the module docstring).

    Args:
        metrics, tracing: the mesh's.
        node_name: this node's name (in bulkhead refusals).
        expose_tracebacks: include handler tracebacks in ``handler_error`` replies.
        compress_above: compress ok replies above this many bytes for callers that
            accept it (``None``: never).
        max_payload: the server's ``max_payload`` now (a compressed body may inflate to
            ``envelope.inflate_limit`` of it).
        decode_budget: most bytes of decoded large bodies held at once by running handlers
            (``runtime.budget``; ``None``: no limit).
    """

    def __init__(
        self,
        metrics: Metrics,
        tracing: Tracing,
        *,
        node_name: str,
        expose_tracebacks: bool,
        compress_above: int | None,
        max_payload: Callable[[], int],
        decode_budget: int | None = None,
    ) -> None:
        self._metrics = metrics
        #: Decoded large bodies held by running handlers (``runtime.budget``).
        self.budget = DecodeBudget(decode_budget)
        self._max_payload = max_payload
        self._tracing = tracing
        self._node_name = node_name
        self._expose_tracebacks = expose_tracebacks
        self._compress_above = compress_above
        self._bulkheads: dict[str, Bulkhead] = {}
        #: The cluster node, once it plugged in (``runtime.hooks``).
        self.node: NodeHooks | None = None

    async def run(
        self,
        act: Activation,
        headers: dict[str, str] | None,
        data: bytes,
        reply: bool,
        caller: TrustedCaller | None = None,
        margin: float | None = None,
    ) -> Outcome:
        """Run one message (``reply``: it has a reply subject; ``caller``: its verified
        caller, ``runtime.guard``; ``margin``: a request whose caller waits for its result
        is not started with less than this many seconds of its deadline left). Never raises.
        Called once a message: positional arguments (keywords cost more)."""
        started = _perf_counter()
        kind, address = act.kind, act.address
        # An id the activation recorded as in progress was matched on arrival (only
        # well-formed ids are recorded): not matched again (a regular expression).
        # (Only requests with a reply subject are recorded: the outcome names the id whose
        # entry its worker finishes, Outcome.message_id.)
        recent = act.recent
        checked = None
        if reply and recent is not None and headers is not None:
            checked = headers.get(_MESSAGE_ID)
            if checked is not None and recent.get(checked) is not IN_PROGRESS:
                checked = None
        try:
            meta = _parse_request(headers, checked)
        except ProtocolError as exc:
            self._metrics.rejected_one(kind, BAD_REQUEST)
            err = envelope.error_reply(BAD_REQUEST, str(exc), agent=address)
            return Outcome(err, True, None, message_id=checked)
        accept = meta.reply_mode == _ACCEPT
        wanted = reply and not accept  # an accepted send was acknowledged on arrival
        kept: Reply | None = (envelope.OK_HEADER_BLOCK, NIL) if accept else None  # a copy is acknowledged again
        action = meta.action
        durable = headers is not None and _STREAM_SEQ in headers
        deadline_ms = meta.deadline_ms
        weight = 0  # bytes held against the decode budget until the handler returns
        try:
            # The checks before the handler may run, each refusal a Refused: the deadline
            # (with ``margin`` for a caller that waits), the action, its parameters (inflated
            # and decoded within wire.codec's limits), a durable message's stream sequence,
            # room in the decode budget, the bulkheads. Inline: once a message.
            if deadline_ms is not None:
                left = deadline_ms / 1000 - _time()
                if left <= 0:
                    raise Refused(TIMEOUT, "deadline passed before the agent ran the message", reason="expired")
                if wanted and margin is not None and left < margin:
                    why = f"only {left * 1000:.0f} ms of the deadline left: not started (no time to answer)"
                    raise Refused(TIMEOUT, why)
            agent = act.agent
            spec = agent.__actions__.get(action)
            if spec is None:
                raise Refused(
                    UNKNOWN_ACTION,
                    f"{kind} has no action {action!r}",
                    details={"actions": sorted(agent.__actions__)},
                )
            try:
                encoding = headers.get(_ENCODING) if headers is not None else None
                if encoding is not None:
                    if encoding != h.ENCODING_DEFLATE:
                        raise ValueError(f"unknown {h.ENCODING} {encoding!r}: use {h.ENCODING_DEFLATE!r}")
                    data = envelope.inflate(data, envelope.inflate_limit(self._max_payload()))
                value, size = _decoded_size(data)  # size: what it holds of the decode budget
                kwargs = spec.bind(value)
            except ParamError as exc:
                raise Refused(
                    BAD_REQUEST, f"invalid parameters: {exc}", details={"param": exc.path, "problem": exc.problem}
                ) from None
            except (ProtocolError, ValueError) as exc:
                raise Refused(BAD_REQUEST, str(exc)) from None
            seq = self._exactly_once(act, headers) if durable and headers is not None else 0
            if size:
                budget = self.budget
                if not budget.try_take(size):
                    raise Refused(
                        OVERLOADED,
                        f"{self._node_name} holds {budget.held} bytes of decoded large bodies and this one needs "
                        f"{size} (decode budget {budget.limit})",
                        reason="decode_budget",
                        details={"reason": "decode_budget", "retry_after": 0.05},
                    )
                weight = size
            held: tuple[Bulkhead, ...] = ()
            if spec.bulkhead is not None or type(agent).bulkhead is not None:
                held = await self._enter_bulkheads(act, spec, deadline_ms)
        except Refused as refused:
            if weight:  # taken, then a bulkhead refused
                self.budget.release(weight)
            self._metrics.rejected_one(kind, refused.reason or refused.code)
            err = envelope.error_reply(
                refused.code, refused.message, agent=address, action=action, details=refused.details
            )
            return Outcome(err, wanted, None, action, message_id=checked)
        except BaseException:  # cancelled while waiting for a bulkhead
            if weight:
                self.budget.release(weight)
            raise
        tracing = self._tracing
        span = tracing.server_span(kind, action, act.agent_id, headers) if tracing.enabled else None
        token = _current.set(
            _new(
                Context,
                (
                    address,
                    action,
                    meta.message_id,
                    meta.correlation_id,
                    None if deadline_ms is None else deadline_ms / 1000,
                    meta.caller,
                    meta.traceparent,
                    meta.tracestate,
                    None if caller is None else caller.name,
                    _NO_ROLES if caller is None else caller.roles,
                ),
            )
        )
        span_token = tracing.activate(span) if span is not None else None
        node = self.node if act.cluster is not None else None
        try:
            result = await spec.func(agent, **kwargs)
        except Exception as exc:
            if node is not None:
                node.action_failed(act, exc)
            tracing.end(span, exc, HANDLER_ERROR)
            self._metrics.handled_one(kind, action, HANDLER_ERROR, _perf_counter() - started)
            agent.log.warning("action %s failed: %s: %s", action, type(exc).__name__, exc)
            failed = envelope.error_reply(
                HANDLER_ERROR,
                f"{type(exc).__name__}: {exc}",
                agent=address,
                action=action,
                traceback=self.traceback(exc),
                details={"exception": type(exc).__name__},
            )
            # A durable message is tried again by its partition owner: let a copy run.
            return Outcome(
                failed, wanted, None if durable else (kept or failed), action, True, meta.deadline_ms, False, checked
            )
        finally:
            if weight:
                self.budget.release(weight)
            for pool in held:
                pool.release()
            if span_token is not None:
                tracing.deactivate(span_token)
            _current.reset(token)
        body: bytes | None = None
        if seq or (wanted and act.cluster is not None):
            try:
                body = codec.encode(result)  # stored with the state: a copy gets it back
            except (TypeError, ValueError):
                body = None
        if node is not None:
            try:
                # Persist before answering. A durable at-least-once message may run again
                # anyway, so its id is not stored for copies (its partition owner retries it).
                await node.after_action(act, meta, reply and not durable, seq, body)
            except Exception as exc:
                if not isinstance(exc, AgentError):
                    log.exception("persisting %s after %s failed", address, action)
                    exc = Unavailable(f"state could not be saved: {exc}", details={"retry": True})
                tracing.end(span, exc, exc.code)
                self._metrics.handled_one(kind, action, exc.code, _perf_counter() - started)
                err = envelope.error_reply(exc.code, exc.message, agent=address, action=action, details=exc.details)
                return Outcome(err, wanted, None, action, message_id=checked)
        if span is not None:
            tracing.end(span)
        self._metrics.handled_one(kind, action, "ok", _perf_counter() - started)
        if not wanted:
            return _new(Outcome, (None, False, kept, action, True, deadline_ms, durable, checked))
        try:
            if body is None:
                body = codec.encode(result)
        except (TypeError, ValueError) as exc:
            failed = envelope.error_reply(
                HANDLER_ERROR, f"result cannot be encoded: {exc}", agent=address, action=action
            )
            return Outcome(failed, True, failed, action, True, deadline_ms, durable, checked)
        block = _OK_BLOCK
        threshold = self._compress_above
        if (
            threshold is not None
            and len(body) > threshold
            and headers is not None
            and headers.get(h.ACCEPT_ENCODING) == h.ENCODING_DEFLATE
        ):
            packed = envelope.deflate(body)
            if packed is not None:
                block, body = envelope.OK_DEFLATE_BLOCK, packed
        if node is not None:
            block = node.reply_block(act, block)
        reply_ok = (block, body)
        return _new(Outcome, (reply_ok, True, reply_ok, action, True, deadline_ms, durable, checked))

    # -- the steps -------------------------------------------------------------------

    def _exactly_once(self, act: Activation, hdrs: Mapping[str, str]) -> int:
        """For a durable message (its ``Na-Stream-Seq`` signed by a partition owner, checked
        on arrival): the stream sequence to store with the state (``exactly_once.check``).

        Raises:
            Refused: what the rule refuses.
        """
        node = self.node
        cls = type(act.agent)
        if cls.consistency not in EXACTLY_ONCE_CONSISTENCY and hdrs.get(h.DELIVERY) == h.DELIVERY_EXACTLY_ONCE:
            raise Refused(
                BAD_REQUEST,
                f"exactly_once delivery to {act.kind} needs consistency 'strong' or 'session', not "
                f"{cls.consistency!r}: its state is stored after the reply",
            )
        persisted = node is not None and act.cluster is not None and cls.persistence == "action"
        try:
            return exactly_once.check(
                hdrs,
                agent=act.address,
                persisted=persisted,
                applied_seq=node.applied_seq(act) if persisted and node is not None else 0,
            )
        except exactly_once.Verdict as verdict:
            if verdict.code == ALREADY_APPLIED:
                self._metrics.duplicates.labels(act.kind, "seq").inc()
            raise Refused(verdict.code, verdict.message) from None

    async def _enter_bulkheads(
        self, act: Activation, spec: ActionSpec, deadline_ms: int | None
    ) -> tuple[Bulkhead, ...]:
        """Take a slot in the kind's and the action's bulkheads.

        Raises:
            Refused: ``overloaded`` (reason ``bulkhead``): a bulkhead is full.
        """
        cls = type(act.agent)
        if spec.bulkhead is None and cls.bulkhead is None:
            return ()
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
                raise Refused(
                    OVERLOADED,
                    f"bulkhead of {act.kind}{'.' + spec.name if spec.bulkhead else ''} is full on {self._node_name}",
                    reason="bulkhead",
                    details={"reason": "bulkhead", "retry_after": 0.05},
                )
            held.append(pool)
        return tuple(held)

    def traceback(self, exc: BaseException) -> str | None:
        """The traceback of ``exc`` for an error reply (``None`` unless tracebacks are exposed)."""
        if not self._expose_tracebacks:
            return None
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
