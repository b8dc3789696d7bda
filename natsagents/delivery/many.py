"""``Mesh.send_many``: many messages published in a pipeline, in order per agent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..agent.ref import AgentRef
from ..errors import AgentError, ConfigurationError

__all__ = ["send_many"]


async def send_many(
    ref_of: Callable[[str], AgentRef],
    messages: Iterable[tuple[str | AgentRef, str, Mapping[str, Any]]],
    *,
    delivery: str,
    timeout: Any,
    in_flight: int,
) -> list[AgentError | None]:
    """See :meth:`natsagents.Mesh.send_many`; ``ref_of`` makes a ref from ``"Kind/id"``."""
    if type(in_flight) is not int or in_flight < 1:
        raise ConfigurationError(f"in_flight must be an int >= 1, not {in_flight!r}")
    items: list[tuple[AgentRef, str, Mapping[str, Any]]] = []
    for entry in messages:
        if not (isinstance(entry, tuple) and len(entry) == 3):
            raise ConfigurationError(f"each message must be (agent, action, params), not {entry!r}")
        target, action_name, params = entry
        ref = target if isinstance(target, AgentRef) else ref_of(target)
        if not isinstance(params, Mapping):
            raise ConfigurationError(f"params must be a mapping, not {type(params).__name__}")
        items.append((ref.with_options(delivery=delivery), action_name, params))
    gate = asyncio.Semaphore(in_flight)
    chains: dict[str, asyncio.Future[Any]] = {}
    results: list[AgentError | None] = [None] * len(items)

    async def one(i: int, ref: AgentRef, action_name: str, params: Mapping[str, Any], before: Any) -> None:
        if before is not None:
            await asyncio.wait({before})  # the previous message to this agent first
        async with gate:
            try:
                await ref.send(action_name, params=params, timeout=timeout)
            except AgentError as exc:
                results[i] = exc

    tasks = []
    for i, (ref, action_name, params) in enumerate(items):
        task = asyncio.ensure_future(one(i, ref, action_name, params, chains.get(ref.address)))
        chains[ref.address] = task
        tasks.append(task)
    await asyncio.gather(*tasks)
    return results
