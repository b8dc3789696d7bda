"""The natsagents exception tree.

Every error the public API raises derives from :class:`NatsAgentsError`; no nats-py
exception escapes. Misuse errors also derive from the matching builtin
(``ValueError`` / ``TypeError``) and timeouts from ``TimeoutError``, so generic
``except`` clauses keep working::

    NatsAgentsError
    ├── ConfigurationError (ValueError)        bad settings, bad arguments
    │   ├── InvalidAddress                     kind or id cannot be used on the wire
    │   │   └── InvalidAgentId
    │   ├── ActionDefinitionError (TypeError)  a malformed @action, raised at class definition
    │   ├── NotSupportedYet                    a declared option this version cannot honour yet
    │   └── InvalidSessionToken                a session token that is not one (mesh.session(token=…))
    ├── ServerError                            the embedded nats-server failed
    │   └── ServerBinaryNotFound
    ├── TransportError                         talking to NATS failed
    │   ├── ConnectError (ConnectionError)     servers unreachable, auth refused
    │   ├── MeshClosed                         the mesh/connection is closed
    │   └── JetStreamError                     a JetStream/KV request refused (status, err_code); = KvError
    │       ├── StreamNotFound                 no such stream, or none listens on the subject
    │       ├── ConsumerNotFound               no such consumer (never created, deleted, expired)
    │       ├── CasConflict                    a KV compare-and-set found another revision
    │       │   └── KeyNotFound                … found the key absent
    │       ├── MalformedAckSubject            (also ProtocolError) a reply is not ``$JS.ACK.…``
    │       ├── PublishBatchError              some of a publish_many failed (in transport.jetstream)
    │       └── CountersUnsupported            the server has no counters, < 2.12 (in natsagents.counters)
    ├── ProtocolError                          a peer sent something that is not protocol v1
    └── AgentError                             a call failed; carries code, agent, action
        ├── BadRequest (ValueError)            bad_request
        ├── UnknownAction                      unknown_action
        ├── AgentNotFound                      not_found
        ├── HandlerError                       handler_error (remote_traceback set)
        ├── CallTimeout (TimeoutError)         timeout
        ├── Overloaded                         overloaded
        ├── Unavailable                        unavailable
        ├── PayloadTooLarge (ValueError)       payload_too_large
        ├── Unauthorized (PermissionError)     unauthorized
        ├── ClusterAtCapacity                  at_capacity (no node can host the agent)
        ├── CircuitOpen                        circuit_open (the caller's breaker fails fast; nothing sent)
        ├── PartitionError                     partition (the agent's node, or the caller, is on the minority side)
        ├── WriteQueued                        queued (continue_degraded: queued on the minority side, not run yet)
        ├── DegradedReply                      degraded (a degraded read refused by the caller's allow_degraded=False)
        └── AlreadyApplied                     already_applied (a resent request whose result is lost)

:class:`AgentError` subclasses map one-to-one to the wire error codes of protocol v1
(``docs/protocol.md``); :func:`error_for_code` builds the right one from a reply.

What a caller can conclude (protocol §6.4): ``HandlerError`` — the handler ran and failed;
``AlreadyApplied`` — it ran exactly once, its result is lost; ``CallTimeout`` raised
locally (``remote=False``: no reply) — **unknown**, it may have run and even been stored;
``PartitionError`` from a reply — not on the paused copy that answered (the SDK resent it
with the same id for ``details.retry_for`` seconds first, so a new owner that ran it would
have answered); ``PartitionError`` raised locally (``remote=False``: the caller itself is on
the minority side and nothing answered) — **unknown**, as a local ``CallTimeout``;
``WriteQueued`` — not run yet: queued on the minority node's disk, applied once after the
heal (unless that disk is lost);
every other code, and ``CallTimeout`` from a reply (``remote=True``) — it did not run.

:class:`JetStreamError` is the one family for errors of the JetStream API, whichever layer
sent the request (``transport/jetstream/`` or ``transport/kv/``, whose ``KvError`` is the same
class): ``transport/jetstream/_api.py`` decodes every API error into it. Timeouts there are
:class:`CallTimeout`, oversized messages :class:`PayloadTooLarge`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "ALREADY_APPLIED",
    "AT_CAPACITY",
    "BAD_REQUEST",
    "CIRCUIT_OPEN",
    "DEGRADED",
    "HANDLER_ERROR",
    "NOT_FOUND",
    "OVERLOADED",
    "PARTITION",
    "PAYLOAD_TOO_LARGE",
    "QUEUED",
    "TIMEOUT",
    "UNAUTHORIZED",
    "UNAVAILABLE",
    "UNKNOWN_ACTION",
    "ActionDefinitionError",
    "AgentError",
    "AgentNotFound",
    "AlreadyApplied",
    "BadRequest",
    "CallTimeout",
    "CasConflict",
    "CircuitOpen",
    "ClusterAtCapacity",
    "ConfigurationError",
    "ConnectError",
    "ConsumerNotFound",
    "DegradedReply",
    "HandlerError",
    "InvalidAddress",
    "InvalidAgentId",
    "InvalidSessionToken",
    "JetStreamError",
    "KeyNotFound",
    "MalformedAckSubject",
    "MeshClosed",
    "NatsAgentsError",
    "NotSupportedYet",
    "Overloaded",
    "PartitionError",
    "PayloadTooLarge",
    "ProtocolError",
    "ServerBinaryNotFound",
    "ServerError",
    "StreamNotFound",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UnknownAction",
    "WriteQueued",
    "error_for_code",
]


# -- error codes (protocol §6.3): the only place these strings are written ------------------

BAD_REQUEST: Final = "bad_request"
UNKNOWN_ACTION: Final = "unknown_action"
NOT_FOUND: Final = "not_found"
HANDLER_ERROR: Final = "handler_error"
TIMEOUT: Final = "timeout"
OVERLOADED: Final = "overloaded"
UNAVAILABLE: Final = "unavailable"
PAYLOAD_TOO_LARGE: Final = "payload_too_large"
UNAUTHORIZED: Final = "unauthorized"
AT_CAPACITY: Final = "at_capacity"
CIRCUIT_OPEN: Final = "circuit_open"
ALREADY_APPLIED: Final = "already_applied"
PARTITION: Final = "partition"
QUEUED: Final = "queued"
DEGRADED: Final = "degraded"


class NatsAgentsError(Exception):
    """Root of every error raised by natsagents."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(NatsAgentsError, ValueError):
    """A setting or argument is invalid."""


class InvalidAddress(ConfigurationError):
    """An agent kind or id cannot be turned into a subject token."""


class InvalidAgentId(InvalidAddress):
    """An agent id is empty, too long, not a string, or not encodable."""


class ActionDefinitionError(ConfigurationError, TypeError):
    """An ``@action`` method is malformed; raised when the agent class is defined."""


class NotSupportedYet(ConfigurationError):
    """A valid option this version does not implement yet (e.g. ``consistency = "session"``),
    refused when the kind is hosted rather than silently served another way."""


class InvalidSessionToken(ConfigurationError):
    """A session token (``Session.token()``, docs/consistency.md) is malformed, too large
    or names invalid agents or versions: it came from elsewhere and is refused whole."""


class ServerError(NatsAgentsError):
    """The embedded nats-server could not be started, reached or stopped."""


class ServerBinaryNotFound(ServerError, FileNotFoundError):
    """No ``nats-server`` binary was found."""


class TransportError(NatsAgentsError):
    """Talking to NATS failed."""


class ConnectError(TransportError, ConnectionError):
    """No server could be reached, or the servers refused the credentials.

    ``reason`` says why, for programs: ``refused`` (nothing listens), ``unknown_host``,
    ``tls_untrusted`` (the server's certificate), ``tls_client_cert`` (the server wants a
    client certificate, or refused ours), ``tls``, ``credentials``, ``closed`` (the server
    closed the connection), ``timeout`` or ``error``.
    """

    def __init__(self, message: str, *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class MeshClosed(TransportError):
    """The mesh (or its connection) is closed or closing."""


class ProtocolError(NatsAgentsError):
    """A message is not valid natsagents protocol v1."""


#: JetStream error codes of a refusal for now (cluster temporarily unavailable, stream offline).
_TRANSIENT_CODES = frozenset({10008, 10118})


class JetStreamError(TransportError):
    """A JetStream (or KV) operation failed on the server.

    Attributes:
        status: the status (400, 404, 409, 503 …), when the server gave one.
        err_code: the JetStream error code (10058 …), when the server gave one.
    """

    def __init__(self, message: str, *, status: int | None = None, err_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.err_code = err_code

    @property
    def transient(self) -> bool:
        """Whether the server refused for now (leader election, quorum lost): retry later."""
        return self.status in (408, 503) or self.err_code in _TRANSIENT_CODES


class StreamNotFound(JetStreamError):
    """No such stream, or no stream listens on the subject published to."""


class ConsumerNotFound(JetStreamError):
    """No such consumer: never created, deleted, or expired (``inactive_threshold``)."""


class MalformedAckSubject(JetStreamError, ProtocolError):
    """A message's reply subject is not a JetStream ack subject (``$JS.ACK.…``)."""


class CasConflict(JetStreamError):
    """A KV compare-and-set write found another revision than the one expected.

    Attributes:
        key: the key written.
        expected_revision: the revision the write expected (``0``: the key absent).
        current_revision: the key's last revision when the server refused (tombstones
            count), when known.
    """

    def __init__(self, message: str, *, key: str, expected_revision: int, current_revision: int | None) -> None:
        super().__init__(message, status=400, err_code=10071)
        self.key = key
        self.expected_revision = expected_revision
        self.current_revision = current_revision


class KeyNotFound(CasConflict):
    """A KV compare-and-set update or delete found the key absent (never written, deleted,
    purged or expired). A :class:`CasConflict`, so one ``except`` catches both."""


class AgentError(NatsAgentsError):
    """A call to an agent failed.

    Attributes:
        code: the protocol v1 error code (``"bad_request"``, ``"timeout"`` …).
        agent: the address ``"Kind/id"`` of the agent called, when known.
        action: the action called, when known.
        remote_traceback: the handler's traceback text (``handler_error`` only, when the
            host exposes tracebacks).
        details: extra machine-readable fields sent by the host.
        remote: ``True`` when the error came in a reply, ``False`` when raised locally.
    """

    code: str = "handler_error"

    def __init__(
        self,
        message: str,
        *,
        agent: str | None = None,
        action: str | None = None,
        remote_traceback: str | None = None,
        details: dict[str, Any] | None = None,
        remote: bool = False,
    ) -> None:
        super().__init__(message)
        self.agent = agent
        self.action = action
        self.remote_traceback = remote_traceback
        self.details = dict(details or {})
        self.remote = remote

    def __str__(self) -> str:
        where = ""
        if self.agent:
            where = f" [{self.agent}" + (f".{self.action}" if self.action else "") + "]"
        return f"{self.code}: {self.message}{where}"


class BadRequest(AgentError, ValueError):
    """The request was malformed: undecodable body, bad headers, invalid parameters."""

    code = BAD_REQUEST


class UnknownAction(AgentError):
    """The agent kind has no such action."""

    code = UNKNOWN_ACTION


class AgentNotFound(AgentError):
    """The agent does not exist and cannot be activated."""

    code = NOT_FOUND


class HandlerError(AgentError):
    """The action handler raised; ``remote_traceback`` holds its traceback text."""

    code = HANDLER_ERROR


class CallTimeout(AgentError, TimeoutError):
    """The deadline passed before a reply arrived (``remote=False``), or the host refused
    to start the message because its deadline passed or too little of it was left
    (``remote=True``).

    Only the second says the message did not run. **A local ``CallTimeout`` never proves
    that the message did not run**: it may have been applied and stored, its reply lost or
    late. Resending it with the same message id (or asking with reply mode ``replay``)
    within the host's reply window gets its result if it ran (protocol §7.4, §7.5, §8.6)."""

    code = TIMEOUT


class Overloaded(AgentError):
    """The agent's mailbox (or a bulkhead) is full; the message was not accepted."""

    code = OVERLOADED


class Unavailable(AgentError):
    """No host serves the agent's kind, or the mesh is shutting down."""

    code = UNAVAILABLE


class PayloadTooLarge(AgentError, ValueError):
    """Headers plus payload exceed the server's ``max_payload``."""

    code = PAYLOAD_TOO_LARGE


class Unauthorized(AgentError, PermissionError):
    """The caller is not allowed to call this agent or action."""

    code = UNAUTHORIZED


class ClusterAtCapacity(AgentError):
    """No live node can host the agent (kind, resources, tags, hints, load bounds).

    Attributes:
        kind: the agent kind, when known.
        needs: the resources asked for (a mapping, or the placer's ``Resources``).
        rejected: node id → why it was not chosen (read-only).
    """

    code = AT_CAPACITY

    def __init__(
        self,
        message: str,
        *,
        agent: str | None = None,
        action: str | None = None,
        remote_traceback: str | None = None,
        details: dict[str, Any] | None = None,
        remote: bool = False,
        kind: str | None = None,
        needs: Any = None,
        rejected: Mapping[str, str] | None = None,
    ) -> None:
        details = dict(details or {})
        if rejected is None:
            raw = details.get("rejected")
            rejected = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        else:
            details.setdefault("rejected", dict(rejected))
        if kind is None and isinstance(details.get("kind"), str):
            kind = details["kind"]
        elif kind is not None:
            details.setdefault("kind", kind)
        if needs is None:
            needs = details.get("needs")
        super().__init__(
            message, agent=agent, action=action, remote_traceback=remote_traceback, details=details, remote=remote
        )
        self.kind = kind
        self.needs = needs
        self.rejected: Mapping[str, str] = MappingProxyType(dict(rejected))


class CircuitOpen(AgentError):
    """The caller's circuit breaker for this destination is open: the call failed at once
    and nothing was sent. ``details``: ``destination``, ``retry_after`` (seconds)."""

    code = CIRCUIT_OPEN


class AlreadyApplied(AgentError):
    """A copy of a request (same message id, resent because no reply came) reached a host
    that knows the request was applied but no longer keeps its reply. The effect happened
    exactly once; the result is lost (read the agent's state to learn it); do not resend.

    A host keeps each reply at least until the request's deadline + 1 s (at most 60 s;
    120 s for a durable message), also across a migration or failover of the agent, so a
    caller resending within its deadline gets the first result instead. ``AlreadyApplied``
    comes only for a copy sent after that window (a caller without a deadline, or one past
    60 s), or one whose reply a host dropped to stay within its byte bounds (64 MiB of
    replies per host, 64 KiB of applied entries per state record: the oldest replies go
    first, their ids stay). It never means the request did not run (protocol §6.4, §8.6)."""

    code = ALREADY_APPLIED


class PartitionError(AgentError):
    """The node serving the agent is cut off from the majority of the cluster (it cannot
    write to the JetStream quorum, yet its connection is up) and the agent's kind pauses
    there (``partition_strategy = "pause_minority"``): that copy did not run the message.
    The majority side takes the agent over once its lease lapses; the SDK caller resends
    with the same message id for ``details.retry_for`` seconds (the node's lease) before
    raising this, so a new owner reachable too answers instead (protocol §6.4). Retry
    later, or from a caller on the majority side. Distinct from :class:`CallTimeout`
    (nothing answered) and :class:`Unavailable` (no host, or the agent stopping).
    ``details``: ``node``, ``state`` (the node's partition status, docs/consistency.md),
    ``retry_for``.

    Also raised locally (``remote=False``, ``details``: ``state``, ``caller: True``) instead
    of :class:`CallTimeout` when nothing answered a call by its deadline while the caller's
    own mesh, a cluster node, is on the minority side (``quorum_lost``) or cut from NATS
    (``nats_unreachable``): as with a ``CallTimeout``, the message may or may not have run."""

    code = PARTITION


class WriteQueued(AgentError):
    """The agent's node is on the minority side and its kind continues degraded
    (``partition_strategy = "continue_degraded"``): the action was **not run**; it was
    queued on that node's disk (fsynced) and is replayed through the durable inbox after
    the heal, then applied once by the agent's owner. This is not its result, and no
    result will come to this caller. A resend with the same message id is not queued
    twice. Lost only with that node's disk (protocol §20). ``details``: ``node``,
    ``state``, ``message_id``, ``position`` (its place in the node's queue)."""

    code = QUEUED


class DegradedReply(AgentError):
    """Raised by the caller (never sent) for an ok reply flagged ``Na-Degraded: 1`` when
    the ref was made with ``with_options(allow_degraded=False)``: the action ran on a copy
    cut off from the majority, on its last known state, which may be stale. ``value`` is
    that reply's result."""

    code = DEGRADED

    def __init__(self, message: str, *, value: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.value = value


_BY_CODE: dict[str, type[AgentError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        UnknownAction,
        AgentNotFound,
        HandlerError,
        CallTimeout,
        Overloaded,
        Unavailable,
        PayloadTooLarge,
        Unauthorized,
        ClusterAtCapacity,
        AlreadyApplied,
        CircuitOpen,
        PartitionError,
        WriteQueued,
        DegradedReply,
    )
}

#: Every error code of protocol v1.
ERROR_CODES: frozenset[str] = frozenset(_BY_CODE)


def error_for_code(
    code: str,
    message: str,
    *,
    agent: str | None = None,
    action: str | None = None,
    remote_traceback: str | None = None,
    details: dict[str, Any] | None = None,
    remote: bool = True,
) -> AgentError:
    """Build the :class:`AgentError` subclass for a wire error code.

    An unknown code (from a newer peer) gives a plain :class:`AgentError` whose ``code``
    is the code received.
    """
    cls = _BY_CODE.get(code)
    if cls is None:
        err = AgentError(
            message,
            agent=agent,
            action=action,
            remote_traceback=remote_traceback,
            details=details,
            remote=remote,
        )
        err.code = code
        return err
    return cls(
        message,
        agent=agent,
        action=action,
        remote_traceback=remote_traceback,
        details=details,
        remote=remote,
    )
