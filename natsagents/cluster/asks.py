"""What one node asks another: the activation request as a node understands it
(:class:`ActivationAsk`, its body written and checked by ``wire.activation``), the body of
a migration's ``adopt`` request, node control requests, and the one way a node answers
activation and control requests.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    AgentError,
    BadRequest,
    ClusterAtCapacity,
    ConfigurationError,
    HandlerError,
    MeshClosed,
    NatsAgentsError,
    ProtocolError,
    Unavailable,
)
from ..state.store import Applied, FencedOff, applied_wire, parse_applied
from ..transport import Inbound, Transport
from ..wire import codec, envelope
from ..wire import headers as h
from ..wire.activation import activation_request, parse_activation_request
from ..wire.ids import encode_id, validate_kind
from ..wire.owner import owner_mac
from ..wire.subjects import node_subject
from .placement import Hints, Resources

__all__ = [
    "MAX_ASK_WAIT",
    "NODE_OPS",
    "OPERATOR_OPS",
    "ActivationAsk",
    "NodeClient",
    "Transfer",
    "adopt_request",
    "answer",
    "parse_adopt",
    "parse_ask",
    "start_error",
]

log = logging.getLogger("natsagents.cluster.node")

#: Seconds a placement may wait, whatever deadline its request names.
MAX_ASK_WAIT = 3600.0
#: Seconds a migration target gets to restore what it adopts.
ADOPT_WAIT = 10.0
_PROTO = envelope.encode_headers({h.PROTO: h.PROTO_VERSION})


@dataclass(slots=True)
class Transfer:
    """State shipped node to node (``state_transfer``), or kept in memory for a rollback."""

    data: Any
    revision: int
    epoch: int


@dataclass(slots=True)
class ActivationAsk:
    """One activation request as the node understands it (``Host.activate``'s options)."""

    agent_id: str
    spawn: bool = False
    needs: Resources | None = None
    hints: Hints = field(default_factory=Hints)
    queue: bool = True
    deadline: float = 0.0  # wall clock seconds
    transfer: Transfer | None = None
    min_revision: int = 0
    placed: bool = False  # chosen by the placer (not the known owner): re-check the load bound
    claim_revision: int = 0  # the directory handover to this node (migration, take-back)
    recent: Any = None  # the previous activation's answered requests (runtime.dedup export)
    applied: tuple[Applied, ...] = ()  # its persisted applied messages
    seq: int = 0  # its last exactly-once stream sequence

    def to_wire(self) -> dict[str, Any]:
        """The request body (``wire.activation``) without the kind."""
        return activation_request(
            self.agent_id,
            spawn=self.spawn,
            deadline_ms=int(self.deadline * 1000),
            needs=None if self.needs is None else self.needs.to_wire(),
            hints=self.hints.to_wire(),
            queue=self.queue,
            placed=self.placed,
        )


def parse_ask(body: object, *, default_timeout: float) -> ActivationAsk:
    """Parse and validate an activation request body: ``id`` (a valid agent id),
    ``spawn`` and ``queue`` (bools), ``deadline`` (Unix ms ≥ 0; a placement waits at most
    ``max(default_timeout, 1 h)`` whatever it says), ``needs`` (resources) and ``hints``
    (placement hints); other fields are ignored.

    Raises:
        ProtocolError: anything malformed (answered ``bad_request``).
    """
    try:
        return _parse_ask(body, default_timeout)
    except ProtocolError:
        raise
    except (NatsAgentsError, TypeError, ValueError, ArithmeticError) as exc:
        raise ProtocolError(f"malformed activation request: {exc}") from None


def _parse_ask(body: object, default_timeout: float) -> ActivationAsk:
    request = parse_activation_request(body)
    now = time.time()
    if request.deadline_ms is None:
        deadline = now + default_timeout
    else:
        deadline = min(request.deadline_ms / 1000, now + max(default_timeout, MAX_ASK_WAIT))
    return ActivationAsk(
        agent_id=request.agent_id,
        spawn=request.spawn,
        needs=None if request.needs is None else Resources.from_wire(request.needs),
        hints=Hints.from_wire(request.hints),
        queue=request.queue,
        deadline=deadline,
        placed=request.placed,
    )


def adopt_request(
    kind: str,
    agent_id: str,
    *,
    strategy: str,
    min_revision: int,
    claim_revision: int,
    needs: Resources,
    recent: Any,
    applied: Sequence[Applied] | None,
    seq: int,
    transfer: Transfer | None,
) -> dict[str, Any]:
    """The body of ``<prefix>.node.<target>.adopt`` (docs/protocol.md §14.4)."""
    body: dict[str, Any] = {
        "kind": kind,
        "id": agent_id,
        "strategy": strategy,
        "min_revision": min_revision,
        "claim_revision": claim_revision,
        "needs": needs.to_wire(),
        "recent": recent,
    }
    if applied is not None:
        body["applied"] = [applied_wire(a) for a in applied]
    if seq:
        body["seq"] = seq
    if transfer is not None:
        body["transfer"] = {"data": transfer.data, "revision": transfer.revision, "epoch": transfer.epoch}
    return body


def parse_adopt(body: object) -> tuple[str, ActivationAsk]:
    """The kind and the activation an ``adopt`` request asks for.

    Raises:
        BadRequest: a malformed body.
    """
    if not isinstance(body, dict):
        raise BadRequest("adopt body must be a map")
    try:
        kind = validate_kind(body.get("kind"))
        agent_id = body.get("id")
        if not isinstance(agent_id, str):
            raise ProtocolError("adopt 'id' must be a string")
        encode_id(agent_id)
        ask = ActivationAsk(agent_id, spawn=True, needs=Resources.from_wire(body.get("needs")))
        ask.deadline = time.time() + ADOPT_WAIT
        min_revision = body.get("min_revision", 0)
        ask.min_revision = min_revision if isinstance(min_revision, int) else 0
        claim_revision = body.get("claim_revision", 0)
        ask.claim_revision = claim_revision if isinstance(claim_revision, int) else 0
        transfer = body.get("transfer")
        if transfer is not None:
            if not isinstance(transfer, dict):
                raise ProtocolError("adopt 'transfer' must be a map")
            ask.transfer = Transfer(transfer.get("data"), int(transfer["revision"]), int(transfer["epoch"]))
        ask.recent = body.get("recent")
        ask.applied = parse_applied(body.get("applied"))
        seq = body.get("seq", 0)
        ask.seq = seq if type(seq) is int and seq > 0 else 0
    except (ProtocolError, ConfigurationError, KeyError, TypeError, ValueError) as exc:
        raise BadRequest(f"malformed adopt request: {exc}") from None
    return kind, ask


#: Control operations only a cluster node may ask for: signed with the owner key
#: (``wire.owner``), refused ``unauthorized`` otherwise. ``adopt`` carries an agent's state
#: (a forged one would write any state into any agent); ``activate`` places an agent here;
#: ``holds`` asks whether an agent is active (or starting) here (``cluster.successor``).
NODE_OPS = frozenset({"activate", "adopt", "holds"})
#: The operator's control operations: with trusted operators configured
#: (``ClusterSettings.trusted_operators``) they need an operator's signature
#: (``wire.identity``) or the owner key; otherwise NATS permissions alone decide.
OPERATOR_OPS = frozenset({"migrate", "drain", "undrain"})


class NodeClient:
    """Sends control requests to nodes (``<prefix>.node.<node>.<op>``), every one signed
    with the cluster's owner key (``owner_key()``, once known): required for
    :data:`NODE_OPS`, and what lets a node's ``migrate`` (the rebalancer) and a node's own
    mesh through where trusted operators are configured."""

    def __init__(self, transport: Transport, prefix: str, owner_key: Callable[[], bytes | None] = lambda: None) -> None:
        self._t = transport
        self.prefix = prefix
        self._owner_key = owner_key

    async def request(self, node: str, op: str, body: dict[str, Any], timeout: float) -> Any:
        """One control request to ``node``. Raises: NoResponders, AgentError subclasses."""
        subject = node_subject(self.prefix, node, op)
        data = codec.encode(body)
        headers: bytes | dict[str, str] = _PROTO
        key = self._owner_key()
        if key is not None:
            hdrs = {h.PROTO: h.PROTO_VERSION, h.MESSAGE_ID: envelope.new_message_id()}
            hdrs[h.OWNER_MAC] = owner_mac(key, subject, hdrs, data)
            headers = hdrs
        msg = await self._t.request(subject, data, headers=headers, timeout=max(timeout, 0.001))
        return envelope.parse_reply(msg.headers, msg.data)

    async def activate(self, node: str, kind: str, ask: ActivationAsk, timeout: float) -> str:
        """Have ``node`` activate the agent (placement chose it); returns the owner."""
        result = await self.request(node, "activate", {**ask.to_wire(), "kind": kind}, timeout)
        return str(result.get("node", node)) if isinstance(result, dict) else node


async def answer(transport: Transport, msg: Inbound, *, result: Any = None, error: AgentError | None = None) -> None:
    """Answer an activation or control request (if it has a reply subject); an
    ``at_capacity`` error carries what was needed and why each node refused."""
    if not msg.reply:
        return
    if error is not None:
        details = dict(error.details)
        if isinstance(error, ClusterAtCapacity):
            needs = error.needs
            details["needs"] = needs.to_wire() if isinstance(needs, Resources) else needs
            details["rejected"] = dict(error.rejected)
        hdrs, data = envelope.error_reply(
            error.code, error.message, agent=error.agent, action=error.action, details=details
        )
    else:
        hdrs, data = envelope.ok_reply(result)
    with contextlib.suppress(NatsAgentsError):
        await transport.publish_reply(msg.reply, data, headers=hdrs, on=msg.subject)


def start_error(address: str, exc: BaseException, traceback: Callable[[BaseException], str | None]) -> AgentError:
    """The answer for an activation that failed with ``exc``: the node's own troubles are
    ``unavailable`` + retry, ``on_start``/``restore`` failures a ``handler_error``."""
    if isinstance(exc, MeshClosed):
        return Unavailable(str(exc), agent=address, details={"retry": True})
    if isinstance(exc, FencedOff):
        return Unavailable(str(exc), agent=address, details={"retry": True})
    if isinstance(exc, AgentError):
        return exc
    if isinstance(exc, NatsAgentsError):
        return Unavailable(f"activation failed: {exc}", agent=address, details={"retry": True})
    log.exception("activation of %s failed", address, exc_info=exc)
    return HandlerError(
        f"activation failed: {type(exc).__name__}: {exc}",
        agent=address,
        action="on_start",
        remote_traceback=traceback(exc),
    )
