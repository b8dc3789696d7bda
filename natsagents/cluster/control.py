"""The control server: node control requests on ``<prefix>.node.<node>.<op>``
(docs/protocol.md §14.4), each answered exactly once.

``activate`` (placement chose this node), ``adopt`` (migration target), ``migrate`` (move
one agent away), ``drain`` and ``info``; any other op is a ``bad_request``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import AgentError, BadRequest, ConfigurationError, NatsAgentsError, ProtocolError, Unauthorized
from ..tasks import TaskGroup
from ..transport import Inbound, Subscription, Transport
from ..wire import codec
from ..wire import headers as h
from ..wire.ids import validate_kind
from ..wire.owner import verify_owner_mac
from ..wire.subjects import node_subject
from .asks import NODE_OPS, answer, parse_ask, start_error
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
        traceback: the traceback of a failed activation, for its ``handler_error``.
        tasks: the node's task group (each request is answered in its own task).
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
        traceback: Callable[[BaseException], str | None],
        tasks: TaskGroup,
        owner_key: Callable[[], bytes | None] = lambda: None,
    ) -> None:
        self._t = transport
        self._owner_key = owner_key
        self._subject = node_subject(prefix, node_id, "*")
        self._queue_timeout = queue_timeout
        self._placing = placing
        self._migration = migration
        self._info = info
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
            body = codec.decode(msg.data) if msg.data else {}
            if op == "activate":
                result = await self._activate(body)
            elif op == "info":
                result = self._info()
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
            else:
                raise BadRequest(f"unknown node operation {op!r}")
        except AgentError as exc:
            await answer(self._t, msg, error=exc)
            return
        except (ValueError, ProtocolError, ConfigurationError) as exc:
            await answer(self._t, msg, error=BadRequest(str(exc)))
            return
        except Exception as exc:
            log.exception("node operation %s failed", op)
            await answer(self._t, msg, error=start_error("", exc, self._traceback))
            return
        await answer(self._t, msg, result=result)

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


def _str(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name!r} must be a non-empty string")
    return value
