"""The control server: node control requests on ``<prefix>.node.<node>.<op>``
(docs/protocol.md §14.4), each answered exactly once.

``activate`` (placement chose this node), ``adopt`` (migration target), ``migrate`` (move
one agent away), ``drain``, ``undrain`` and ``info``; any other op is a ``bad_request``.

Who may ask: ``activate`` and ``adopt`` only a cluster node (a valid ``Na-Owner-Mac``).
With trusted operators configured, ``migrate``, ``drain`` and ``undrain`` need a cluster
node's ``Na-Owner-Mac`` or an operator's caller signature (``wire.identity`` over the
control subject, checked and replay-protected by a ``runtime.guard.Guard`` holding the
operators' keys); every refusal is ``unauthorized`` at once, before the body is read.
``info`` reads only what the members and directory buckets show and is not checked.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..agent.policy import TrustedCaller
from ..errors import AgentError, BadRequest, ConfigurationError, NatsAgentsError, ProtocolError, Unauthorized
from ..runtime.guard import Denied, Guard
from ..tasks import TaskGroup
from ..transport import Inbound, Subscription, Transport
from ..wire import codec
from ..wire import headers as h
from ..wire.identity import is_signed
from ..wire.ids import validate_kind
from ..wire.owner import verify_owner_mac
from ..wire.subjects import node_subject
from .asks import NODE_OPS, OPERATOR_OPS, answer, parse_ask, start_error
from .migration import Migration
from .placing import Placing

__all__ = ["ControlServer"]

log = logging.getLogger("natsagents.cluster.node")


class ControlServer:
    """Serves one node's control subject.

    Args:
        transport: the node's connection.
        prefix: subject prefix.
        node_id: the node served.
        queue_timeout: how long an ``activate`` without a deadline may wait.
        placing: activates what placement chose.
        migration: ``migrate``, ``adopt`` and ``drain``.
        info: this node's ``info`` answer.
        holds: whether an agent (kind, id) is active or starting here (``holds``).
        traceback: the traceback of a failed activation, for its ``handler_error``.
        tasks: the node's task group (each request is answered in its own task).
        owner_key: the cluster's owner key, once known (``Na-Owner-Mac``).
        operators: trusted operators by public key (``ClusterSettings.trusted_operators``;
            empty: operator requests are not checked).
    """

    def __init__(
        self,
        transport: Transport,
        prefix: str,
        node_id: str,
        *,
        queue_timeout: float,
        placing: Placing,
        migration: Migration,
        info: Callable[[], dict[str, Any]],
        holds: Callable[[str, str], bool],
        traceback: Callable[[BaseException], str | None],
        tasks: TaskGroup,
        owner_key: Callable[[], bytes | None] = lambda: None,
        operators: Mapping[str, TrustedCaller] | None = None,
    ) -> None:
        self._t = transport
        self._owner_key = owner_key
        # The callers' guard, holding the operators' keys: the same signatures, the same
        # replay memory (a signed request runs at most once until it expires).
        self._operators = Guard(operators, None) if operators else None
        self._subject = node_subject(prefix, node_id, "*")
        self._queue_timeout = queue_timeout
        self._placing = placing
        self._migration = migration
        self._info = info
        self._holds = holds
        self._traceback = traceback
        self._tasks = tasks
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._t.subscribe(self._subject, self._on_request, service=True)

    async def stop(self) -> None:
        """Stop taking control requests (those already taken are answered)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(NatsAgentsError):
                await sub.unsubscribe()

    def _on_request(self, msg: Inbound) -> None:
        if not self._tasks.closed:  # the node is gone: a request still in flight goes unanswered
            self._tasks.spawn(self._serve(msg))

    async def _serve(self, msg: Inbound) -> None:
        op = msg.subject.rsplit(".", 1)[-1]
        result: Any
        try:
            if op in NODE_OPS and not verify_owner_mac(self._owner_key(), msg.subject, msg.headers or {}, msg.data):
                raise Unauthorized(f"node operation {op!r} is accepted from cluster nodes only (a valid {h.OWNER_MAC})")
            if op in OPERATOR_OPS and self._operators is not None:
                self._check_operator(op, msg)
            body = codec.decode(msg.data) if msg.data else {}
            if op == "activate":
                result = await self._activate(body)
            elif op == "info":
                result = self._info()
            elif op == "holds":
                if not isinstance(body, dict):
                    raise BadRequest("holds body must be a map")
                result = {"holds": self._holds(validate_kind(body.get("kind")), _str(body, "id"))}
            elif op == "migrate":
                if not isinstance(body, dict):
                    raise BadRequest("migrate body must be a map")
                result = await self._migration.migrate_out(
                    _str(body, "kind"), _str(body, "id"), _str(body, "to"), body.get("strategy", "checkpoint_restore")
                )
            elif op == "adopt":
                result = await self._migration.adopt(body)
            elif op == "drain":
                result = await self._migration.drain()
            elif op == "undrain":
                result = await self._migration.undrain()
            else:
                raise BadRequest(f"unknown node operation {op!r}")
        except AgentError as exc:
            await answer(self._t, msg, error=exc)
            return
        except (ValueError, ProtocolError, ConfigurationError) as exc:
            await answer(self._t, msg, error=BadRequest(str(exc)))
            return
        except NatsAgentsError as exc:  # typed (e.g. a stored state that is corrupt): no traceback
            log.warning("node operation %s failed: %s", op, exc)
            await answer(self._t, msg, error=start_error("", exc, self._traceback))
            return
        except Exception as exc:
            log.exception("node operation %s failed", op)
            await answer(self._t, msg, error=start_error("", exc, self._traceback))
            return
        await answer(self._t, msg, result=result)

    def _check_operator(self, op: str, msg: Inbound) -> None:
        """Raises Unauthorized unless a cluster node or a trusted operator asks (signed,
        fresh, not a replay)."""
        guard = self._operators
        assert guard is not None
        headers = msg.headers or {}
        if verify_owner_mac(self._owner_key(), msg.subject, headers, msg.data):
            return  # a cluster node (the rebalancer's migrate, a node's own mesh)
        if not is_signed(headers):
            raise _refused("unsigned", f"node operation {op!r} takes only requests signed by a trusted operator")
        try:
            admitted = guard.admit("", None, msg.subject, headers, msg.data, durable=False)
        except Denied as exc:
            raise _refused(exc.reason, exc.message) from None
        if admitted is None:  # unreachable: the guard trusts keys and the request is signed
            raise _refused("unsigned", f"node operation {op!r} takes only requests signed by a trusted operator")
        if guard.ran_before(admitted):
            raise _refused("replayed", f"this signed {op!r} request was already received")
        guard.remember(admitted)
        log.info("node operation %s by operator %s", op, admitted.caller.name)

    async def _activate(self, body: object) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("activate body must be a map")
        kind = validate_kind(body.get("kind"))
        ask = parse_ask(body, default_timeout=self._queue_timeout)
        try:
            return {"node": await self._placing.activate_here(kind, ask)}
        except AgentError:
            raise
        except Exception as exc:
            raise start_error(f"{kind}/{ask.agent_id}", exc, self._traceback) from None


def _refused(reason: str, message: str) -> Unauthorized:
    return Unauthorized(message, details={"reason": reason})


def _str(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name!r} must be a non-empty string")
    return value
