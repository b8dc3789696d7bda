"""Activation request bodies (docs/protocol.md §4.3, §14.4): what a caller sends to
``<prefix>.activate.<kind>`` and what a cluster node forwards to
``<prefix>.node.<node>.activate`` once placement chose that node.

A msgpack map: ``id`` (the agent id), ``spawn`` and ``queue`` (bools), ``deadline`` (unix
ms ≥ 0), ``needs`` and ``hints`` (maps), and ``placed`` (a node forwarding what placement
chose). This module writes and checks the plain fields; what ``needs`` and ``hints`` mean
belongs to the cluster (``cluster.asks``), so they stay raw values here.

Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import NatsAgentsError, ProtocolError
from .ids import encode_id

__all__ = ["ActivationRequest", "activation_request", "parse_activation_request"]


def activation_request(
    agent_id: str,
    *,
    spawn: bool = False,
    deadline_ms: int | None = None,
    needs: Mapping[str, Any] | None = None,
    hints: Mapping[str, Any] | None = None,
    queue: bool = True,
    placed: bool = False,
) -> dict[str, Any]:
    """The body of an activation request (fields at their default are left out)."""
    body: dict[str, Any] = {"id": agent_id}
    if deadline_ms is not None:
        body["deadline"] = deadline_ms
    if spawn:
        body["spawn"] = True
    if needs is not None:
        body["needs"] = dict(needs)
    if hints:
        body["hints"] = dict(hints)
    if not queue:
        body["queue"] = False
    if placed:
        body["placed"] = True
    return body


@dataclass(frozen=True, slots=True)
class ActivationRequest:
    """The plain fields of an activation request body. ``needs`` and ``hints`` are the raw
    values (``None``: absent; a nil ``needs`` reads as ``{}``: no resources)."""

    agent_id: str
    spawn: bool = False
    deadline_ms: int | None = None
    queue: bool = True
    placed: bool = False
    needs: object = None
    hints: object = None


def parse_activation_request(body: object) -> ActivationRequest:
    """Check an activation request body: ``id`` a valid agent id, ``spawn`` and ``queue``
    bools, ``deadline`` an integer ≥ 0; other keys are ignored (``placed`` counts only
    when it is ``true``).

    Raises:
        ProtocolError: anything malformed.
    """
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise ProtocolError("activation body must be a map with a string 'id'")
    agent_id = body["id"]
    try:
        encode_id(agent_id)
    except NatsAgentsError as exc:
        raise ProtocolError(f"malformed activation request: {exc}") from None
    for flag in ("spawn", "queue"):
        if flag in body and not isinstance(body[flag], bool):
            raise ProtocolError(f"activation {flag!r} must be a bool")
    deadline_ms = body.get("deadline")
    if deadline_ms is not None and not (
        isinstance(deadline_ms, int) and not isinstance(deadline_ms, bool) and deadline_ms >= 0
    ):
        raise ProtocolError("activation 'deadline' must be an integer >= 0 (unix ms)")
    needs = body.get("needs", None)
    if needs is None and "needs" in body:
        needs = {}
    return ActivationRequest(
        agent_id=agent_id,
        spawn=body.get("spawn", False),
        deadline_ms=deadline_ms,
        queue=body.get("queue", True),
        placed=body.get("placed") is True,
        needs=needs,
        hints=body.get("hints"),
    )
