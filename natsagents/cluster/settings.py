"""How a mesh takes part in the cluster: :class:`ClusterSettings`, node ids and the
migration strategies."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..agent.policy import TrustedCaller, TrustedCallersSpec, parse_trusted_callers
from ..delivery.settings import DeliverySettings
from ..errors import ConfigurationError
from ..wire.identity import Identity
from .placement import Resources, ScoreWeights
from .records import MAX_WEIGHT

__all__ = [
    "STRATEGIES",
    "UNLIMITED_CPU",
    "UNLIMITED_MEMORY",
    "ClusterSettings",
    "TrustedOperatorsSpec",
    "capacity_from_wire",
    "node_id_from_name",
    "validate_node_id",
]

#: Migration strategies (``Mesh.migrate``, the rebalancer, drain).
STRATEGIES = ("checkpoint_restore", "state_transfer", "cold_start")
#: What a capacity left out counts as (and is left out of the membership record again).
UNLIMITED_CPU = 1e9
UNLIMITED_MEMORY = 2**62
_NODE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: What ``ClusterSettings(trusted_operators=…)`` takes: public user nkeys (``U…``), or what
#: ``Mesh.connect(trusted_callers=…)`` takes (key → name or ``TrustedCaller``, a JSON file).
TrustedOperatorsSpec = Iterable[str] | TrustedCallersSpec


def validate_node_id(node_id: object) -> str:
    """Raises: ConfigurationError unless ``node_id`` is 1-64 of ``[A-Za-z0-9_-]``."""
    if not isinstance(node_id, str) or not _NODE_ID_RE.fullmatch(node_id):
        raise ConfigurationError(f"invalid node id {node_id!r}: use 1-64 characters [A-Za-z0-9_-]")
    return node_id


def node_id_from_name(name: str) -> str:
    """A valid node id derived from a mesh name (invalid characters become ``-``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)[:64] or "node"


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """How a mesh takes part in the cluster.

    Args:
        node_id: this node's id (``[A-Za-z0-9_-]``, default: derived from the mesh name).
        lease: seconds without a heartbeat after which the node counts as gone and its
            agents may be taken over (also the rebalancer's leader lease, at least 1 s).
        heartbeat: seconds between heartbeats (default ``lease / 3``).
        capacity: what this node offers (``Resources`` or ``{"cpu", "memory", "custom"}``);
            cpu and memory left out are unlimited, custom resources left out are zero.
        tags: labels placement hints can require.
        weight: relative size of the node (share of the ring and of the agents), in (0, 100].
        score_weights: load-score weights (cpu 0.4, memory 0.4, network 0.2).
        load_factor: bounded-load ``c``: no node above ``c`` x its share of agents.
        rebalance: run the leader-elected rebalancer (moves agents to new nodes).
        rebalance_rate: agents the rebalancer moves per second at most.
        rebalance_strategy: migration strategy the rebalancer and drain use.
        imbalance: the rebalancer acts once a node is this fraction off its share.
        queue_timeout: seconds a placement may wait for capacity when the request has
            no deadline.
        max_queued: placements this node holds waiting for capacity at most; one more
            is refused at once with ``at_capacity`` (a peer asking for impossible needs
            with long deadlines would otherwise pile them up).
        handoff_on_close: on close, migrate ``permanent`` agents to other nodes instead
            of only stopping them.
        max_state_bytes: largest encoded agent state (default: what one message allows).
        delivery: durable delivery settings; the node consumes its share of the inbox
            stream's partitions (``None``: it consumes none).
        trusted_operators: the operators whose signed control requests this node obeys
            (public user nkeys ``U…``, or a map key → name / a JSON file as for
            ``Mesh.connect(trusted_callers=…)``). When set, ``drain``, ``undrain`` and
            ``migrate`` must be signed by one of them (``Mesh.connect(identity=…)``,
            ``natsagents drain --identity``) or come from a cluster node; anything else is
            refused ``unauthorized``. Unset: NATS permissions alone decide who may ask.
        services_api: answer the NATS services API (``$SRV.PING|INFO|STATS``,
            ``observability.micro``) so that ``nats micro ls`` lists the node.
        data_dir: a directory on this node's own disk for its degraded write queue
            (``<data_dir>/<node_id>.degraded``, ``cluster.write_queue``): writes taken on
            the minority side by ``continue_degraded`` kinds, replayed after the heal.
            Needed to host such kinds (``None``: they are refused).
        degraded_max_writes, degraded_max_bytes: the queue's bounds; a write beyond them
            is refused ``overloaded``.
    """

    node_id: str | None = None
    lease: float = 3.0
    heartbeat: float | None = None
    capacity: Resources | Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    weight: float = 1.0
    score_weights: ScoreWeights = field(default_factory=ScoreWeights)
    load_factor: float = 1.25
    rebalance: bool = True
    rebalance_rate: float = 50.0
    rebalance_strategy: str = "checkpoint_restore"
    imbalance: float = 0.1
    queue_timeout: float = 30.0
    max_queued: int = 1000
    handoff_on_close: bool = True
    max_state_bytes: int | None = None
    delivery: DeliverySettings | None = field(default_factory=DeliverySettings)
    trusted_operators: TrustedOperatorsSpec = None
    services_api: bool = True
    data_dir: str | os.PathLike[str] | None = None
    degraded_max_writes: int = 10_000
    degraded_max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.node_id is not None:
            validate_node_id(self.node_id)
        if not self.lease >= 1:
            raise ConfigurationError(f"lease must be at least 1 second, not {self.lease}")
        if self.heartbeat is not None and not 0 < self.heartbeat < self.lease:
            raise ConfigurationError("heartbeat must be > 0 and shorter than the lease")
        if not 0 < self.weight <= MAX_WEIGHT:
            raise ConfigurationError(f"weight must be > 0 and at most {MAX_WEIGHT:g}")
        if not self.rebalance_rate > 0:
            raise ConfigurationError("rebalance_rate must be > 0")
        if self.rebalance_strategy not in STRATEGIES:
            raise ConfigurationError(f"rebalance_strategy must be one of {STRATEGIES}")
        if not self.queue_timeout > 0:
            raise ConfigurationError("queue_timeout must be > 0")
        if type(self.max_queued) is not int or self.max_queued < 0:
            raise ConfigurationError(f"max_queued must be an int >= 0, not {self.max_queued!r}")
        for name in ("degraded_max_writes", "degraded_max_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, not {value!r}")
        if not 0 <= self.imbalance < 1:
            raise ConfigurationError("imbalance must be within [0, 1)")
        capacity = self.capacity
        if not isinstance(capacity, Resources):
            object.__setattr__(self, "capacity", capacity_from_wire(capacity))
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "trusted_operators", MappingProxyType(_operators(self.trusted_operators)))

    @property
    def operators(self) -> Mapping[str, TrustedCaller]:
        """The trusted operators by public key (empty: control requests are not checked)."""
        value = self.trusted_operators
        assert isinstance(value, Mapping)
        return value

    @property
    def capacity_resources(self) -> Resources:
        assert isinstance(self.capacity, Resources)
        return self.capacity


def _operators(value: TrustedOperatorsSpec) -> dict[str, TrustedCaller]:
    """``trusted_operators`` read (see :data:`TrustedOperatorsSpec`).

    Raises:
        ConfigurationError: a key that is not a user public nkey, an unreadable file, or
            the nkeys package missing.
    """
    spec: TrustedCallersSpec
    if value is None or isinstance(value, (Mapping, str, os.PathLike)):
        spec = value
    else:
        keys = list(value)
        if not all(isinstance(key, str) for key in keys):
            raise ConfigurationError(f"trusted_operators must hold public user nkeys (strings), not {keys!r}")
        spec = dict.fromkeys(keys, "operator")
    try:
        out = parse_trusted_callers(spec)
    except ConfigurationError as exc:
        text = exc.message.removeprefix("trusted_callers: ").replace("trusted_callers", "trusted_operators")
        raise ConfigurationError(f"trusted_operators: {text}") from None
    if out:
        Identity.check_available()
    return out


def capacity_from_wire(value: object) -> Resources:
    """A capacity map (``{"cpu", "memory", "custom"}``) as ``Resources``: cpu and memory
    left out are unlimited.

    Raises:
        ConfigurationError: not a map, or invalid amounts.
    """
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"capacity must be a map, not {type(value).__name__}")
    filled = dict(value)
    filled.setdefault("cpu", UNLIMITED_CPU)
    filled.setdefault("memory", UNLIMITED_MEMORY)
    return Resources.from_wire(filled)
