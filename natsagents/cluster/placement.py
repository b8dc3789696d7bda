"""Resource-aware placement: which node should host a new activation of an agent.

:meth:`Placer.choose` combines hard constraints (the node hosts the kind, is live, has the
free resources and the tags asked for), operator hints (pin, avoid, colocate, prefer),
bounded loads (no node above ``c *`` its weighted share of agents) and a load score,
with consistent hashing of the agent address as the deterministic tie-breaker. Pure code:
the caller supplies the membership snapshot (:class:`NodeInfo` per node) and, for
colocation, a function that says where an agent is active.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from natsagents.errors import ClusterAtCapacity, ConfigurationError

from .ring import DEFAULT_LOAD_FACTOR, DEFAULT_VNODES, HashRing, bounded_capacities, check_load_factor

__all__ = ["ClusterAtCapacity", "Hints", "NodeInfo", "NodeLoad", "Placer", "Resources", "ScoreWeights"]

# Relative slack when comparing resource amounts, so that sums of floats such as
# 0.1 + 0.2 still "fit" into 0.3.
_EPS = 1e-9


def _number(owner: str, name: str, value: object, *, lo: float = 0.0, hi: float = math.inf) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigurationError(f"{owner}.{name} must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigurationError(f"{owner}.{name} must be within [{lo}, {hi}], got {value!r}")
    return float(value)


def _count(owner: str, name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"{owner}.{name} must be an int >= 0, got {value!r}")
    return value


def _le(a: float, b: float) -> bool:
    return a <= b + _EPS * max(1.0, abs(b))


def _minus(a: float, b: float) -> float:
    """``a - b`` floored at zero, with float residue (``0.1 + 0.2 - 0.3``) snapped to zero."""
    return 0.0 if _le(a, b) else a - b


def _strings(owner: str, name: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ConfigurationError(f"{owner}.{name} must be a collection of strings, not one string")
    out = tuple(values)
    if not all(isinstance(v, str) and v for v in out):
        raise ConfigurationError(f"{owner}.{name} must hold non-empty strings, got {out!r}")
    return out


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of resources: what a node has, has reserved, or what an agent needs.

    ``cpu`` is in cores (fractions allowed), ``memory`` in bytes, ``custom`` holds named
    amounts (``{"gpu": 1}``). A custom resource a node does not list counts as 0 there.
    Zero custom amounts are dropped, so ``Resources(custom={"gpu": 0}) == Resources()``.

    Raises:
        ConfigurationError: a negative, non-finite or mistyped amount.
    """

    cpu: float = 0.0
    memory: int = 0
    custom: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cpu", _number("Resources", "cpu", self.cpu))
        _count("Resources", "memory", self.memory)
        if not isinstance(self.custom, Mapping):
            raise ConfigurationError(f"Resources.custom must be a mapping, got {self.custom!r}")
        custom: dict[str, float] = {}
        for name in self.custom:
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"Resources.custom names must be non-empty strings, got {name!r}")
        for name in sorted(self.custom):
            amount = _number("Resources", f"custom[{name!r}]", self.custom[name])
            if amount:
                custom[name] = amount
        object.__setattr__(self, "custom", MappingProxyType(custom))

    def __hash__(self) -> int:
        return hash((self.cpu, self.memory, tuple(self.custom.items())))

    def __repr__(self) -> str:
        return f"Resources(cpu={self.cpu!r}, memory={self.memory!r}, custom={dict(self.custom)!r})"

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-ready map (zero dimensions left out)."""
        out: dict[str, Any] = {}
        if self.cpu:
            out["cpu"] = self.cpu
        if self.memory:
            out["memory"] = self.memory
        if self.custom:
            out["custom"] = dict(self.custom)
        return out

    @classmethod
    def from_wire(cls, value: object) -> Resources:
        """Parse ``{"cpu", "memory", "custom"}`` (every key optional).

        Raises:
            ConfigurationError: not a map, unknown keys, or invalid amounts.
        """
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigurationError(f"resources must be a map, not {type(value).__name__}")
        unknown = set(value) - {"cpu", "memory", "custom"}
        if unknown:
            raise ConfigurationError(f"unknown resource fields {sorted(map(str, unknown))}")
        memory = value.get("memory", 0)
        if isinstance(memory, float) and memory.is_integer():
            memory = int(memory)
        return cls(cpu=value.get("cpu", 0.0), memory=memory, custom=value.get("custom") or {})

    def within(self, other: Resources) -> bool:
        """Whether these amounts fit inside ``other``, in every dimension."""
        return (
            _le(self.cpu, other.cpu)
            and self.memory <= other.memory
            and all(_le(v, other.custom.get(k, 0.0)) for k, v in self.custom.items())
        )

    def __add__(self, other: Resources) -> Resources:
        names = self.custom.keys() | other.custom.keys()
        return Resources(
            cpu=self.cpu + other.cpu,
            memory=self.memory + other.memory,
            custom={k: self.custom.get(k, 0.0) + other.custom.get(k, 0.0) for k in names},
        )

    def __sub__(self, other: Resources) -> Resources:
        """Strict subtraction (releasing a reservation).

        Raises:
            ConfigurationError: ``other`` does not fit inside ``self`` (the result would be
                negative), which means resources were released twice or never reserved.
        """
        if not other.within(self):
            raise ConfigurationError(f"cannot subtract {other} from {self}: the result would be negative")
        return self.remaining(other)

    def remaining(self, used: Resources) -> Resources:
        """``self - used``, each dimension floored at zero (free capacity of a node whose
        reservations may exceed what it declares, e.g. after its capacity shrank).

        A difference within the float tolerance of zero is exactly zero, so reserving and
        releasing amounts such as 0.1 and 0.2 cores leaves no residue behind."""
        names = self.custom.keys() | used.custom.keys()
        return Resources(
            cpu=_minus(self.cpu, used.cpu),
            memory=max(0, self.memory - used.memory),
            custom={k: _minus(self.custom.get(k, 0.0), used.custom.get(k, 0.0)) for k in names},
        )


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """A node's current load, as its membership heartbeat reports it.

    ``cpu``, ``memory`` and ``network`` are utilisation fractions in ``[0, 1]`` and feed the
    placement score; ``agents`` feeds the bounded-load rule; ``mailbox_backlog`` is
    informational (health, rebalancing).
    """

    agents: int = 0
    mailbox_backlog: int = 0
    cpu: float = 0.0
    memory: float = 0.0
    network: float = 0.0

    def __post_init__(self) -> None:
        _count("NodeLoad", "agents", self.agents)
        _count("NodeLoad", "mailbox_backlog", self.mailbox_backlog)
        for name in ("cpu", "memory", "network"):
            object.__setattr__(self, name, _number("NodeLoad", name, getattr(self, name), hi=1.0))


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What placement knows about one node (a membership snapshot).

    ``weight`` is the node's relative size (1.0 = a standard node): it scales both its
    share of the hash ring and its bounded-load share of agents. ``live=False`` (lease
    lapsed, draining) keeps the node from receiving anything. ``max_agents`` is the most
    agents the node hosts at once (``None``: no cap); a node at it receives nothing.
    """

    node_id: str
    kinds: frozenset[str] = frozenset()
    capacity: Resources = Resources()
    reserved: Resources = Resources()
    load: NodeLoad = NodeLoad()
    tags: frozenset[str] = frozenset()
    weight: float = 1.0
    live: bool = True
    max_agents: int | None = None

    def __post_init__(self) -> None:
        if self.max_agents is not None and (type(self.max_agents) is not int or self.max_agents < 1):
            raise ConfigurationError(f"NodeInfo.max_agents must be an int >= 1 or None, got {self.max_agents!r}")
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ConfigurationError(f"NodeInfo.node_id must be a non-empty string, got {self.node_id!r}")
        object.__setattr__(self, "kinds", frozenset(_strings("NodeInfo", "kinds", self.kinds)))
        object.__setattr__(self, "tags", frozenset(_strings("NodeInfo", "tags", self.tags)))
        weight = _number("NodeInfo", "weight", self.weight)
        if weight <= 0:
            raise ConfigurationError(f"NodeInfo.weight must be > 0, got {self.weight!r}")
        object.__setattr__(self, "weight", weight)

    @property
    def free(self) -> Resources:
        """Capacity not yet reserved (floored at zero)."""
        return self.capacity.remaining(self.reserved)

    @property
    def full(self) -> bool:
        """Whether the node holds ``max_agents`` agents (it takes no more)."""
        return self.max_agents is not None and self.load.agents >= self.max_agents


@dataclass(frozen=True, slots=True)
class Hints:
    """Placement hints for one agent.

    Attributes:
        prefer: node ids that get a score bonus (soft).
        avoid: node ids never chosen (hard: if only avoided nodes fit, placement fails).
        colocate_with: an agent address; its node is chosen when it is a candidate under
            the load bound (soft).
        pin: the only node allowed (hard); bypasses the load bound and scoring.
        tags: tags every candidate node must carry (hard).

    Raises:
        ConfigurationError: malformed values, or ``pin`` listed in ``avoid``.
    """

    prefer: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    colocate_with: str | None = None
    pin: str | None = None
    tags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefer", _strings("Hints", "prefer", self.prefer))
        object.__setattr__(self, "avoid", _strings("Hints", "avoid", self.avoid))
        object.__setattr__(self, "tags", frozenset(_strings("Hints", "tags", self.tags)))
        for name in ("colocate_with", "pin"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigurationError(f"Hints.{name} must be a non-empty string or None, got {value!r}")
        if self.pin is not None and self.pin in self.avoid:
            raise ConfigurationError(f"Hints: node {self.pin!r} is both pinned and avoided")

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-ready map (empty fields left out)."""
        out: dict[str, Any] = {}
        if self.prefer:
            out["prefer"] = list(self.prefer)
        if self.avoid:
            out["avoid"] = list(self.avoid)
        if self.colocate_with is not None:
            out["colocate_with"] = self.colocate_with
        if self.pin is not None:
            out["pin"] = self.pin
        if self.tags:
            out["tags"] = sorted(self.tags)
        return out

    @classmethod
    def from_wire(cls, value: object) -> Hints:
        """Parse the map written by :meth:`to_wire`.

        Raises:
            ConfigurationError: not a map, unknown keys, or invalid values.
        """
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigurationError(f"hints must be a map, not {type(value).__name__}")
        unknown = set(value) - {"prefer", "avoid", "colocate_with", "pin", "tags"}
        if unknown:
            raise ConfigurationError(f"unknown hint fields {sorted(map(str, unknown))}")
        for name in ("prefer", "avoid", "tags"):
            if not isinstance(value.get(name, ()), (list, tuple)):
                raise ConfigurationError(f"hints.{name} must be a list of strings")
        return cls(
            prefer=tuple(value.get("prefer", ())),
            avoid=tuple(value.get("avoid", ())),
            colocate_with=value.get("colocate_with"),
            pin=value.get("pin"),
            tags=frozenset(_strings("Hints", "tags", value.get("tags", ()))),
        )


@dataclass(frozen=True, slots=True)
class ScoreWeights:
    """Weights of the load score (lower score = better node); any non-negative values,
    normalised by their sum. All zero means "score does not matter": ring order decides."""

    cpu: float = 0.4
    memory: float = 0.4
    network: float = 0.2

    def __post_init__(self) -> None:
        for name in ("cpu", "memory", "network"):
            object.__setattr__(self, name, _number("ScoreWeights", name, getattr(self, name)))

    def score(self, load: NodeLoad) -> float:
        """The weighted mean utilisation of ``load``, in ``[0, 1]``."""
        whole = self.cpu + self.memory + self.network
        if whole == 0:
            return 0.0
        return (self.cpu * load.cpu + self.memory * load.memory + self.network * load.network) / whole


class Placer:
    """Chooses a node for an agent activation; stateless apart from its settings.

    Args:
        weights: the load-score weights (default cpu 0.4, memory 0.4, network 0.2).
        prefer_bonus: subtracted from the score of nodes named in ``Hints.prefer``.
        tolerance: nodes whose score is within ``tolerance`` of the best count as tied
            and the earliest in ring order wins. Without it the single least-loaded node
            would take every placement until its next heartbeat (herding), and an agent
            would land somewhere different on every re-activation; with it, nodes of
            similar load split agents by consistent hashing and an agent keeps its node.
        vnodes: virtual nodes per unit of weight for the ring over candidates.

    Raises:
        ConfigurationError: negative or non-finite settings.
    """

    def __init__(
        self,
        *,
        weights: ScoreWeights = ScoreWeights(),
        prefer_bonus: float = 0.25,
        tolerance: float = 0.05,
        vnodes: int = DEFAULT_VNODES,
    ) -> None:
        self.weights = weights
        self.prefer_bonus = _number("Placer", "prefer_bonus", prefer_bonus)
        self.tolerance = _number("Placer", "tolerance", tolerance)
        HashRing(vnodes=vnodes)  # validates vnodes
        self.vnodes = vnodes

    def choose(
        self,
        kind: str,
        agent_address: str,
        nodes: Sequence[NodeInfo],
        *,
        needs: Resources = Resources(),
        hints: Hints = Hints(),
        locate: Callable[[str], str | None] | None = None,
        load_factor: float = DEFAULT_LOAD_FACTOR,
    ) -> str:
        """The node that should host ``agent_address`` (of ``kind``).

        Rules, in order:

        1. **Eligibility** (hard): the node is live, hosts ``kind``, holds fewer agents
           than its ``max_agents``, has ``needs`` free (``capacity - reserved``, per
           dimension) and carries every tag in ``hints.tags``.
        2. **Pin** (hard): with ``hints.pin`` the pinned node is the answer if eligible,
           whatever its load; otherwise placement fails. Operators pin on purpose, so
           neither the load bound nor the score overrides them.
        3. **Avoid** (hard): avoided nodes are dropped, even when nothing else is left.
        4. **Bounded load**: with ``T = Σ agents over candidates + 1`` (the new one), a
           candidate stays only if its agents are below
           ``ceil(c * T * weight / Σ weight)``, so once placed no node exceeds ``c *`` its
           weighted share. At least one candidate always stays (the bounds sum to ≥ T).
        5. **Colocate** (soft): the node where ``locate(hints.colocate_with)`` says that
           agent is active, if it is still a candidate; otherwise the hint is ignored, so
           colocation cannot pile agents onto a full or unsuitable node.
        6. **Score**: ``ScoreWeights.score(load)``, minus ``prefer_bonus`` on preferred
           nodes. The answer is the first node, in consistent-hash order of
           ``agent_address`` over the remaining candidates, whose score is within
           ``tolerance`` of the best. Same inputs → same node.

        Args:
            kind: the agent kind.
            agent_address: ``"Kind/id"``; the consistent-hash key.
            nodes: the membership snapshot (node ids must be unique).
            needs: resources the agent reserves.
            hints: placement hints.
            locate: agent address → node id where it is active (for colocation).
            load_factor: the ``c`` of bounded loads, ``≥ 1``.

        Raises:
            ClusterAtCapacity: no node passes the rules (``rejected`` says why per node).
            ConfigurationError: duplicate node ids or ``load_factor < 1``.
        """
        ids = [n.node_id for n in nodes]
        if len(set(ids)) != len(ids):
            raise ConfigurationError(f"duplicate node ids in {sorted(ids)!r}")
        check_load_factor(load_factor)
        rejected: dict[str, str] = {}
        eligible: list[NodeInfo] = []
        for node in nodes:
            reason = self._ineligible(node, kind, needs, hints)
            if reason is None:
                eligible.append(node)
            else:
                rejected[node.node_id] = reason

        def fail(why: str) -> ClusterAtCapacity:
            return ClusterAtCapacity(
                f"no node can host {agent_address}: {why}",
                kind=kind,
                agent=agent_address,
                needs=needs,
                rejected=rejected,
            )

        if hints.pin is not None:
            if any(n.node_id == hints.pin for n in eligible):
                return hints.pin
            rejected.setdefault(hints.pin, "not a member")
            raise fail(f"pinned node {hints.pin!r} is unsuitable ({rejected[hints.pin]})")

        candidates = [n for n in eligible if n.node_id not in hints.avoid]
        for node in eligible:
            if node.node_id in hints.avoid:
                rejected[node.node_id] = "avoided by hints"
        if not candidates:
            raise fail("no node is live, hosts the kind, has the resources and tags, and is not avoided")

        total = sum(n.load.agents for n in candidates) + 1
        bound = bounded_capacities({n.node_id: n.weight for n in candidates}, total, load_factor)
        under = [n for n in candidates if n.load.agents < bound[n.node_id]]
        for node in candidates:
            if node.load.agents >= bound[node.node_id]:
                rejected[node.node_id] = f"at load bound ({node.load.agents} agents, bound {bound[node.node_id]})"
        if not under:  # impossible: Σ bound ≥ c * total > Σ agents; kept as a guard
            raise fail("every candidate is at its load bound")

        if hints.colocate_with is not None and locate is not None:
            target = locate(hints.colocate_with)
            if target is not None and any(n.node_id == target for n in under):
                return target

        prefer = set(hints.prefer)
        scores = {
            n.node_id: self.weights.score(n.load) - (self.prefer_bonus if n.node_id in prefer else 0.0) for n in under
        }
        best = min(scores.values())
        ring = HashRing({n.node_id: n.weight for n in under}, vnodes=self.vnodes)
        return next(node for node in ring.preference(agent_address) if scores[node] <= best + self.tolerance)

    @staticmethod
    def _ineligible(node: NodeInfo, kind: str, needs: Resources, hints: Hints) -> str | None:
        """Why ``node`` fails the hard constraints (rule 1), or ``None``."""
        if not node.live:
            return "not live"
        if kind not in node.kinds:
            return f"does not host kind {kind!r}"
        if node.full:
            return f"at its agent limit ({node.load.agents} agents, max_agents={node.max_agents})"
        if not needs.within(node.free):
            return f"not enough free resources (free {node.free}, needs {needs})"
        missing = hints.tags - node.tags
        if missing:
            return f"missing tags {sorted(missing)}"
        return None
