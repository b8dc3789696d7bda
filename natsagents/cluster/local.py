"""This node's own figures and flags, which several parts of the node read: what it offers
and has reserved, each kind's default needs, whether it drains or closes, the placements
waiting for capacity, the agents moving away, and the membership record built from them.

Data and small bookkeeping only: the parts that decide (placement, ownership, migration)
live in their own modules and share one :class:`LocalNode`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from ..agent.base import Agent
from ..errors import ConfigurationError
from ..runtime.host import Host
from .load import LoadSampler
from .placement import Resources
from .settings import UNLIMITED_CPU, UNLIMITED_MEMORY, ClusterSettings

__all__ = ["LocalNode"]


class LocalNode:
    """This node's own state.

    Args:
        node_id: this node's id.
        settings: its cluster settings.
        host: the host it runs agents on.
        sampler: its load sampler.
        announce: called when what others place by changed (reservations, draining):
            the node sends a heartbeat soon.
    """

    def __init__(
        self,
        node_id: str,
        settings: ClusterSettings,
        host: Host,
        sampler: LoadSampler,
        announce: Callable[[], None],
    ) -> None:
        self.node_id = node_id
        self.settings = settings
        self.capacity = settings.capacity_resources
        self.reserved = Resources()
        self.draining = False
        self.closing = False
        #: Placements waiting for capacity: address → since (wall clock).
        self.queued: dict[str, float] = {}
        #: Agents moving away from this node now, set once each landed.
        self.moving: dict[tuple[str, str], asyncio.Event] = {}
        self._kind_needs: dict[str, Resources] = {}
        self._host = host
        self._sampler = sampler
        self._announce = announce

    # -- resources -------------------------------------------------------------------

    def add_kind(self, cls: type[Agent]) -> None:
        """Remember the kind's default needs.

        Raises:
            ConfigurationError: the kind's ``resources`` are malformed.
        """
        try:
            self._kind_needs[cls.kind] = Resources.from_wire(cls.resources)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{cls.__qualname__}.resources: {exc}") from None

    def needs(self, kind: str) -> Resources:
        """What an agent of ``kind`` reserves unless its activation says otherwise."""
        return self._kind_needs.get(kind, Resources())

    def free(self) -> Resources:
        return self.capacity.remaining(self.reserved)

    # -- the agent cap ---------------------------------------------------------------

    @property
    def max_agents(self) -> int | None:
        """Most agents this node hosts at once (``Mesh.connect(max_agents=)``); ``None``: no cap."""
        return self._host.settings.max_agents

    def agent_count(self) -> int:
        """Agents active or starting here now."""
        return len(self._host.activations) + self._host.starting_count()

    def full(self) -> bool:
        """Whether one more activation would be refused for the agent cap."""
        cap = self.max_agents
        return cap is not None and self.agent_count() >= cap

    def reserve(self, needs: Resources) -> None:
        """Reserve ``needs`` (others place by our reservations: tell them soon)."""
        self.reserved = self.reserved + needs
        if needs != Resources():
            self._announce()

    def unreserve(self, needs: Resources, *, announce: bool = True) -> None:
        """Give ``needs`` back."""
        self.reserved = self.reserved.remaining(needs)
        if announce:
            self._announce()

    # -- membership record -----------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """This node's membership record fields (kinds, capacity, load, tags …)."""
        acts = self._host.activations
        backlog = sum(len(a.mailbox) for a in acts.values())
        load = self._sampler.sample()
        capacity = self.capacity.to_wire()
        if capacity.get("cpu") == UNLIMITED_CPU:
            del capacity["cpu"]
        if capacity.get("memory") == UNLIMITED_MEMORY:
            del capacity["memory"]
        out: dict[str, Any] = {
            "kinds": sorted(self._host.kinds),
            "capacity": capacity,
            "load": {
                "agents": len(acts),
                "mailbox_backlog": backlog,
                "reserved": self.reserved.to_wire(),
                "queued": len(self.queued),
                **load,
            },
            "tags": list(self.settings.tags),
            "version": _version(),
            "draining": self.draining,
            "weight": self.settings.weight,
        }
        if self.max_agents is not None:
            out["max_agents"] = self.max_agents
        return out


@functools.cache
def _version() -> str:
    """The installed natsagents version (read once: a heartbeat must not parse metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("natsagents")
    except PackageNotFoundError:
        return "0"
