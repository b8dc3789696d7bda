"""Agent references (frozen values) and request futures."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, overload

from ..errors import ConfigurationError
from ..wire.envelope import is_message_id
from ..wire.ids import encode_id, parse_address, validate_kind

__all__ = [
    "USE_DEFAULT",
    "AgentFuture",
    "AgentRef",
    "CallOptions",
    "Invoker",
    "all_of",
    "any_of",
    "resolve_target",
]

#: Delivery guarantees a call may ask for (docs/delivery.md).
DELIVERY_MODES = ("at_most_once", "at_least_once", "exactly_once")

T = TypeVar("T")
U = TypeVar("U")


class _UseDefault:
    """Sentinel: use the mesh's default timeout."""

    _instance: _UseDefault | None = None

    def __new__(cls) -> _UseDefault:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "USE_DEFAULT"


USE_DEFAULT: Any = _UseDefault()
Timeout = float | None | _UseDefault


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Per-ref call options (``ref.with_options(...)``); ``USE_DEFAULT`` takes the mesh's.

    Args:
        retry: a :class:`~natsagents.RetryPolicy`, ``None`` for no retries, or the mesh's.
        idempotent: whether running the action twice is harmless (allows retries after
            no reply or a handler error); default: the action's ``@action(idempotent=…)``
            when the ref knows the agent class, else ``False``.
        delivery: ``"at_most_once"`` (core NATS, the default), ``"at_least_once"`` or
            ``"exactly_once"`` (through the durable inbox stream; docs/delivery.md).
        priority: ``"high"`` messages go ahead of ``"normal"`` ones in the agent's
            mailbox, ``"low"`` ones after them (at-most-once messages; a durable message
            keeps its stream order).
        message_ttl: seconds a durable message stays deliverable; later it goes to the
            dead-letter stream unrun (``None``: no limit; the call's timeout bounds only
            the caller's wait).
        message_id: the ``Na-Msg-Id`` of the message sent through this ref (default: a
            new one per send). Sending again with the same id is a retry of the same
            logical message: a durable inbox stores it once and a host runs it once.
        session: the caller session (``mesh.session()``) whose versions calls through
            this ref observe and whose minimum versions reads carry (default: the mesh's
            own session).
        read: set per call by the ref: a read-only action of a kind with read replicas,
            sent on the read subject (protocol §19).
        allow_degraded: whether an ok reply flagged ``Na-Degraded: 1`` (served on the
            minority side of a partition from a possibly stale state, protocol §20) is
            returned as the result (the default) or raised as
            :class:`~natsagents.DegradedReply` (its ``value`` holds the result).
    """

    retry: Any = USE_DEFAULT
    idempotent: bool | None = None
    delivery: str = "at_most_once"
    priority: str = "normal"
    message_ttl: float | None = None
    message_id: str | None = None
    session: Any = None
    read: bool = False
    allow_degraded: bool = True


class Invoker(Protocol):
    """What a ref needs from the mesh to deliver a message."""

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
    ) -> Any: ...

    def spawn_task(self, coro: Awaitable[Any]) -> asyncio.Future[Any]: ...


def resolve_target(target: Any, agent_id: str | None) -> tuple[str, str]:
    """``("Kind/id")``, ``(AgentClass, id)`` or ``("Kind", id)`` → ``(kind, id)``.

    Raises:
        InvalidAddress, InvalidAgentId: the kind or id is not valid.
        ConfigurationError: the arguments do not name one agent.
    """
    if isinstance(target, type):
        kind = getattr(target, "kind", None)
        if kind is None:
            raise ConfigurationError(f"{target.__name__} is not an Agent class")
        if agent_id is None:
            raise ConfigurationError("an agent id is required with an agent class")
        encode_id(agent_id)
        return validate_kind(kind), agent_id
    if not isinstance(target, str):
        raise ConfigurationError(f"expected 'Kind/id' or an Agent class, not {type(target).__name__}")
    if agent_id is None:
        return parse_address(target)
    encode_id(agent_id)
    return validate_kind(target), agent_id


def _merge_params(params: Mapping[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    if params is None:
        return kwargs
    if not isinstance(params, Mapping):
        raise ConfigurationError(f"params must be a mapping, not {type(params).__name__}")
    merged = dict(params)
    for key in kwargs:
        if key in merged:
            raise ConfigurationError(f"parameter {key!r} given twice")
    merged.update(kwargs)
    return merged


@dataclass(frozen=True, slots=True)
class AgentRef:
    """A reference to ``kind/id``: a frozen, hashable value that prints as ``kind/id``.

    Equality and hashing use only the address. Messages go by subject, so a ref works
    wherever the agent lives (or will be activated). Parameters are passed as keyword
    arguments, or as ``params={…}`` for names that clash with ``timeout``/``params``.
    """

    kind: str
    id: str
    _invoker: Invoker = field(compare=False, hash=False, repr=False)
    _options: CallOptions | None = field(default=None, compare=False, hash=False, repr=False)
    _cls: Any = field(default=None, compare=False, hash=False, repr=False)

    def with_options(
        self,
        *,
        retry: Any = USE_DEFAULT,
        idempotent: bool | None = None,
        delivery: str | None = None,
        priority: str | None = None,
        message_ttl: float | None = None,
        message_id: str | None = None,
        session: Any = None,
        allow_degraded: bool | None = None,
    ) -> AgentRef:
        """The same agent, called with these options (see :class:`CallOptions`); options
        not given keep this ref's.

        Raises:
            ConfigurationError: ``retry`` is not a RetryPolicy, None or USE_DEFAULT; an
                unknown ``delivery``; ``exactly_once`` to a kind (known here by its class)
                whose ``consistency`` cannot keep it.
        """
        from ..resilience import RetryPolicy

        if retry is not USE_DEFAULT and retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
        if idempotent is not None and not isinstance(idempotent, bool):
            raise ConfigurationError(f"idempotent must be a bool or None, not {idempotent!r}")
        if delivery is not None and delivery not in DELIVERY_MODES:
            raise ConfigurationError(f"delivery must be one of {DELIVERY_MODES}, not {delivery!r}")
        cls = self._cls  # the kinds that keep exactly_once: base.EXACTLY_ONCE_CONSISTENCY
        if delivery == "exactly_once" and cls is not None and cls.consistency not in ("strong", "session"):
            raise ConfigurationError(
                f"exactly_once delivery to {self.kind} needs consistency 'strong' or 'session', not "
                f"{cls.consistency!r}: its state is stored after the reply (docs/consistency.md)"
            )
        if priority is not None and priority not in ("high", "normal", "low"):
            raise ConfigurationError(f"priority must be 'high', 'normal' or 'low', not {priority!r}")
        if message_ttl is not None and (
            isinstance(message_ttl, bool) or not isinstance(message_ttl, (int, float)) or message_ttl <= 0
        ):
            raise ConfigurationError(f"message_ttl must be > 0 seconds or None, not {message_ttl!r}")
        if message_id is not None and not is_message_id(message_id):
            raise ConfigurationError(f"message_id must be 1-64 characters [A-Za-z0-9_-], not {message_id!r}")
        if allow_degraded is not None and not isinstance(allow_degraded, bool):
            raise ConfigurationError(f"allow_degraded must be a bool or None, not {allow_degraded!r}")
        if session is not None and not (callable(getattr(session, "observe", None)) and hasattr(session, "token")):
            raise ConfigurationError(f"session must come from mesh.session(), not {type(session).__name__}")
        old = self._options or CallOptions()
        options = CallOptions(
            old.retry if retry is USE_DEFAULT else retry,
            old.idempotent if idempotent is None else idempotent,
            old.delivery if delivery is None else delivery,
            old.priority if priority is None else priority,
            old.message_ttl if message_ttl is None else message_ttl,
            old.message_id if message_id is None else message_id,
            old.session if session is None else session,
            allow_degraded=old.allow_degraded if allow_degraded is None else allow_degraded,
        )
        return AgentRef(self.kind, self.id, self._invoker, options, self._cls)

    def _opts(self, action: str) -> CallOptions | None:
        options = self._options
        cls = self._cls
        if cls is None:
            return options
        spec = cls.__actions__.get(action)
        if spec is None:
            return options
        idempotent = spec.idempotent and (options is None or options.idempotent is None)
        # A read-only action of a kind with read replicas goes to the read subject.
        read = spec.read_only and cls.read_replicas > 0
        if idempotent or read:
            base = options or CallOptions()
            return CallOptions(
                base.retry,
                True if idempotent else base.idempotent,
                base.delivery,
                base.priority,
                base.message_ttl,
                base.message_id,
                base.session,
                read,
                base.allow_degraded,
            )
        return options

    def __str__(self) -> str:
        return f"{self.kind}/{self.id}"

    @property
    def address(self) -> str:
        return f"{self.kind}/{self.id}"

    async def send(
        self, action: str, /, *, params: Mapping[str, Any] | None = None, timeout: Timeout = USE_DEFAULT, **kwargs: Any
    ) -> None:
        """Fire-and-forget: returns once the agent's mailbox accepted the message.

        The handler runs later; its result and errors are not reported back.

        Raises:
            Overloaded: the mailbox is full. Unavailable: no host serves the kind.
            CallTimeout: not accepted within the timeout. PayloadTooLarge, BadRequest.
        """
        await self._invoker.invoke(
            self.kind,
            self.id,
            action,
            _merge_params(params, kwargs),
            timeout=timeout,
            accept_only=True,
            options=self._opts(action),
        )

    def request(
        self, action: str, /, *, params: Mapping[str, Any] | None = None, timeout: Timeout = USE_DEFAULT, **kwargs: Any
    ) -> AgentFuture[Any]:
        """Start a call now and return a future of its result (await it, or ``.then``)."""
        merged = _merge_params(params, kwargs)
        coro = self._invoker.invoke(
            self.kind, self.id, action, merged, timeout=timeout, accept_only=False, options=self._opts(action)
        )
        return AgentFuture(self._invoker.spawn_task(coro), self._invoker.spawn_task)

    async def call(
        self, action: str, /, *, params: Mapping[str, Any] | None = None, timeout: Timeout = USE_DEFAULT, **kwargs: Any
    ) -> Any:
        """Call ``action`` and wait for its result for at most ``timeout`` seconds.

        ``timeout=None`` waits without limit; the default is the mesh's default.

        Raises:
            CallTimeout: no reply in time. The other AgentError subclasses for the error
                reply received (BadRequest, UnknownAction, HandlerError …).
        """
        return await self._invoker.invoke(
            self.kind,
            self.id,
            action,
            _merge_params(params, kwargs),
            timeout=timeout,
            accept_only=False,
            options=self._opts(action),
        )


class AgentFuture(Generic[T]):
    """The pending result of :meth:`AgentRef.request`. Await it for the result.

    ``then(fn)`` chains a function (sync or async) over the result; ``cancel()``
    abandons the call (the caller stops waiting; the agent may still run it).
    """

    __slots__ = ("_spawn", "_task")

    def __init__(
        self, task: asyncio.Future[T], spawn: Callable[[Awaitable[Any]], asyncio.Future[Any]] | None = None
    ) -> None:
        self._task = task
        self._spawn = spawn or asyncio.ensure_future

    def __await__(self) -> Generator[Any, None, T]:
        return self._task.__await__()

    @overload
    def then(self, fn: Callable[[T], Awaitable[U]]) -> AgentFuture[U]: ...

    @overload
    def then(self, fn: Callable[[T], U]) -> AgentFuture[U]: ...

    def then(self, fn: Callable[[T], Any]) -> AgentFuture[Any]:
        """A future of ``fn(result)`` (awaited when it is a coroutine); errors of this future
        pass through unchanged."""

        async def chained() -> Any:
            value = await self._task
            out = fn(value)
            if inspect.isawaitable(out):
                return await out
            return out

        return AgentFuture(self._spawn(chained()), self._spawn)

    def done(self) -> bool:
        return self._task.done()

    def cancel(self) -> bool:
        return self._task.cancel()

    def cancelled(self) -> bool:
        return self._task.cancelled()

    def result(self) -> T:
        """The result once done. Raises: ``asyncio.InvalidStateError`` if not done yet."""
        return self._task.result()

    def exception(self) -> BaseException | None:
        return self._task.exception()


async def all_of(*futures: AgentFuture[Any] | Awaitable[Any], return_exceptions: bool = False) -> list[Any]:
    """Wait for every future; results in order.

    On the first failure the rest are cancelled and the error raised, unless
    ``return_exceptions`` (then errors take their place in the list).
    """
    tasks = [_as_task(f) for f in futures]
    if return_exceptions:
        return list(await asyncio.gather(*tasks, return_exceptions=True))
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


async def any_of(*futures: AgentFuture[Any] | Awaitable[Any]) -> Any:
    """The first successful result; the others are cancelled.

    Raises:
        The last error if every future fails. ValueError: no futures given.
    """
    if not futures:
        raise ValueError("any_of() needs at least one future")
    pending = {_as_task(f) for f in futures}
    last_error: BaseException | None = None
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.cancelled():
                    last_error = asyncio.CancelledError()
                elif t.exception() is None:
                    return t.result()
                else:
                    last_error = t.exception()
        assert last_error is not None
        raise last_error
    finally:
        for t in pending:
            t.cancel()


def _as_task(f: AgentFuture[Any] | Awaitable[Any]) -> asyncio.Future[Any]:
    if isinstance(f, AgentFuture):
        return f._task
    return asyncio.ensure_future(f)
