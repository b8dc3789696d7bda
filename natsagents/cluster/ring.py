"""Consistent hashing with bounded loads.

A :class:`HashRing` maps string keys (agent addresses) to node ids. Each node owns
``round(vnodes * weight)`` virtual nodes: points on a 64-bit circle. A key's position is
its 64-bit hash; walking clockwise from it gives the key's preference order over nodes.

Two ways of using the ring:

* **Plain consistent hashing** (:meth:`HashRing.owner`): the first node clockwise. Adding
  a node moves only the keys that now belong to it (about ``1/(N+1)`` of them, all *to*
  the new node); removing a node moves only its own keys.
* **Bounded loads** (:meth:`HashRing.assign`, :meth:`HashRing.place`), after Mirrokni,
  Thorup and Zadimoghaddam, *Consistent Hashing with Bounded Loads* (SODA 2018): with
  ``m`` keys and load factor ``c ≥ 1``, node ``i`` may hold at most
  ``ceil(c * m * weight_i / Σ weight)`` keys, and a key whose node is full walks clockwise
  to the first node with spare capacity. No node ever exceeds ``c *`` its fair share, and
  because ``Σ capacity ≥ c * m ≥ m`` every key finds a node.

Hashing is ``blake2b`` (8-byte digest, fixed personalisation), never Python's ``hash()``:
every process, Python version and SDK version must put a key on the same node, or two
nodes of a mesh would disagree about where an agent belongs. The point scheme
(``hash64(f"{node}\\x00{i}")`` for ``i < vnode count``) is therefore a compatibility
contract; ``tests/unit/test_ring.py`` pins it with golden values.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from functools import lru_cache
from types import MappingProxyType

from natsagents.errors import ConfigurationError, NatsAgentsError
from natsagents.wire.hashing import hash64

__all__ = [
    "DEFAULT_LOAD_FACTOR",
    "DEFAULT_VNODES",
    "HashRing",
    "NoNodes",
    "bounded_capacities",
    "check_load_factor",
    "hash64",
]

#: Virtual nodes per node of weight 1.0. 100 keeps the arc owned by a node within about
#: ±10% of its share (the relative spread falls as ``1/sqrt(vnodes)``).
DEFAULT_VNODES = 100
#: The ``c`` of bounded loads: no node above ``c *`` its fair share.
DEFAULT_LOAD_FACTOR = 1.25
#: Upper bound on virtual nodes for one node (``vnodes * weight``), a sanity limit.
MAX_VNODES_PER_NODE = 10_000

_SPACE = 1 << 64


class NoNodes(NatsAgentsError):
    """The ring has no nodes, so no key can be placed."""


@lru_cache(maxsize=4096)
def _node_points(node: str, count: int) -> tuple[int, ...]:
    """The sorted virtual-node points of ``node`` (cached: placement rebuilds rings often)."""
    return tuple(sorted(hash64(f"{node}\x00{i}") for i in range(count)))


def check_load_factor(load_factor: float) -> None:
    """Raise :class:`ConfigurationError` unless ``load_factor`` is a finite number ``>= 1``."""
    if not isinstance(load_factor, int | float) or not math.isfinite(load_factor) or load_factor < 1.0:
        raise ConfigurationError(f"load_factor must be a finite number >= 1.0, got {load_factor!r}")


def bounded_capacities(weights: Mapping[str, float], total: int, load_factor: float) -> dict[str, int]:
    """Each node's capacity under bounded loads: ``ceil(c * total * weight / Σ weight)``.

    Computed with exact rationals, so a fair share that is a whole number is never
    rounded up (or down) by floating-point error, and ``Σ capacity ≥ total`` always holds.

    Raises:
        ConfigurationError: ``load_factor < 1`` or ``total < 0``.
    """
    check_load_factor(load_factor)
    if total < 0:
        raise ConfigurationError(f"total must be >= 0, got {total}")
    whole = sum((Fraction(w) for w in weights.values()), Fraction(0))
    scale = Fraction(load_factor) * total
    return {node: math.ceil(scale * Fraction(w) / whole) for node, w in weights.items()}


class HashRing:
    """A weighted consistent-hash ring over node ids, with bounded-load assignment.

    Args:
        nodes: initial node ids (weight 1.0 each), or a mapping node id → weight.
        vnodes: virtual nodes per unit of weight; a node gets ``max(1, round(vnodes * weight))``.

    The ring's answers depend only on the set of (node, weight) pairs, never on the
    order in which nodes were added: points are ordered by ``(hash, node id)``.

    Raises:
        ConfigurationError: ``vnodes < 1``, or an invalid node id or weight.
    """

    def __init__(self, nodes: Mapping[str, float] | Iterable[str] = (), *, vnodes: int = DEFAULT_VNODES) -> None:
        if not isinstance(vnodes, int) or isinstance(vnodes, bool) or vnodes < 1:
            raise ConfigurationError(f"vnodes must be an int >= 1, got {vnodes!r}")
        self._vnodes = vnodes
        self._weights: dict[str, float] = {}
        self._merged: tuple[list[int], list[str]] | None = None
        if isinstance(nodes, Mapping):
            for node, weight in nodes.items():
                self.add(node, weight)
        else:
            for node in nodes:
                self.add(node)

    # -- membership ---------------------------------------------------------------------

    def add(self, node: str, weight: float = 1.0) -> None:
        """Add ``node`` (or change its weight if present).

        Raises:
            ConfigurationError: empty/non-string id, or a weight that is not a finite
                number > 0 or would give more than ``MAX_VNODES_PER_NODE`` virtual nodes.
        """
        if not isinstance(node, str) or not node:
            raise ConfigurationError(f"node id must be a non-empty string, got {node!r}")
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not math.isfinite(weight) or weight <= 0:
            raise ConfigurationError(f"weight of node {node!r} must be a finite number > 0, got {weight!r}")
        if self._vnodes * weight > MAX_VNODES_PER_NODE:
            raise ConfigurationError(f"node {node!r}: vnodes * weight exceeds {MAX_VNODES_PER_NODE}")
        self._weights[node] = float(weight)
        self._merged = None

    def remove(self, node: str) -> None:
        """Remove ``node``.

        Raises:
            ConfigurationError: ``node`` is not on the ring.
        """
        if node not in self._weights:
            raise ConfigurationError(f"node {node!r} is not on the ring")
        del self._weights[node]
        self._merged = None

    @property
    def nodes(self) -> tuple[str, ...]:
        """The node ids, sorted."""
        return tuple(sorted(self._weights))

    @property
    def weights(self) -> Mapping[str, float]:
        """A read-only view of node id → weight."""
        return MappingProxyType(self._weights)

    @property
    def vnodes(self) -> int:
        """Virtual nodes per unit of weight."""
        return self._vnodes

    def vnode_count(self, node: str) -> int:
        """How many virtual nodes ``node`` has on the ring."""
        return max(1, round(self._vnodes * self._weights[node]))

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, node: object) -> bool:
        return node in self._weights

    def __repr__(self) -> str:
        return f"HashRing({dict(sorted(self._weights.items()))!r}, vnodes={self._vnodes})"

    # -- plain consistent hashing -------------------------------------------------------

    def _ring(self) -> tuple[list[int], list[str]]:
        if not self._weights:
            raise NoNodes("the hash ring has no nodes")
        if self._merged is None:
            pairs = sorted((p, n) for n in self._weights for p in _node_points(n, self.vnode_count(n)))
            self._merged = ([p for p, _ in pairs], [n for _, n in pairs])
        return self._merged

    def owner(self, key: str) -> str:
        """The node owning ``key``: the first virtual node clockwise from its hash.

        Raises:
            NoNodes: the ring is empty.
        """
        points, owners = self._ring()
        i = bisect_left(points, hash64(key))
        return owners[i if i < len(points) else 0]

    def preference(self, key: str) -> tuple[str, ...]:
        """Every node, in the order a clockwise walk from ``key`` first meets it.

        ``preference(key)[0] == owner(key)``. Costs ``O(N log vnodes)`` (no merged ring
        is built), which is what placement needs for a small candidate set.

        Raises:
            NoNodes: the ring is empty.
        """
        if not self._weights:
            raise NoNodes("the hash ring has no nodes")
        h = hash64(key)
        ranked: list[tuple[int, str]] = []
        for node in self._weights:
            points = _node_points(node, self.vnode_count(node))
            i = bisect_left(points, h)
            ranked.append(((points[i] - h) if i < len(points) else (points[0] + _SPACE - h), node))
        ranked.sort()
        return tuple(node for _, node in ranked)

    # -- bounded loads ------------------------------------------------------------------

    def capacities(self, total: int, load_factor: float = DEFAULT_LOAD_FACTOR) -> dict[str, int]:
        """Per-node capacity for ``total`` keys (see :func:`bounded_capacities`)."""
        return bounded_capacities(self._weights, total, load_factor)

    def _walk(self, h: int, has_room: Callable[[str], bool]) -> str:
        """The first node clockwise from position ``h`` for which ``has_room`` is true."""
        points, owners = self._ring()
        start = bisect_left(points, h)
        size = len(points)
        for step in range(size):
            node = owners[(start + step) % size]
            if has_room(node):
                return node
        raise AssertionError("bounded loads: no node with spare capacity (Σ capacity < total)")  # unreachable

    def assign(
        self,
        keys: Iterable[str],
        load_factor: float = DEFAULT_LOAD_FACTOR,
        current: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Assign every key to a node with bounded loads.

        Capacities come from :meth:`capacities` for the number of distinct keys. Keys are
        placed in two passes, each in a canonical order (by key hash, then key), so the
        result depends neither on the order of ``keys`` nor on the order nodes were added:

        1. *home*: each key goes to its :meth:`owner` if that node has room. Keys already
           at their owner in ``current`` go first, so an existing key is never displaced
           from its home by a newcomer.
        2. *overflow*: each remaining key stays on its ``current`` node if that node is
           still on the ring and has room (no churn among displaced keys), else walks
           clockwise from its position to the first node with room.

        Doing every home placement before any overflow walk (instead of one pass in
        arrival order) keeps an overflowing key from taking a slot at a node that is
        another key's home, so fewer keys end up away from home and fewer move.

        Args:
            keys: the keys (duplicates count once).
            load_factor: ``c ≥ 1``; no node gets more than ``ceil(c * m * its weight share)``.
            current: the present assignment, for stability; entries for unknown keys or
                nodes are ignored.

        Returns:
            key → node for every key.

        Raises:
            NoNodes: there are keys but no nodes.
            ConfigurationError: ``load_factor < 1``.
        """
        check_load_factor(load_factor)
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        points, owners = self._ring()
        capacity = self.capacities(len(unique), load_factor)
        load = dict.fromkeys(self._weights, 0)
        current = current or {}
        hashes = {k: hash64(k) for k in unique}
        home: dict[str, str] = {}
        for k, h in hashes.items():
            i = bisect_left(points, h)
            home[k] = owners[i if i < len(points) else 0]

        result: dict[str, str] = {}
        for k in sorted(unique, key=lambda k: (current.get(k) != home[k], hashes[k], k)):
            node = home[k]
            if load[node] < capacity[node]:
                result[k] = node
                load[node] += 1
        for k in sorted((k for k in unique if k not in result), key=lambda k: (hashes[k], k)):
            was = current.get(k)
            if was is not None and was in load and load[was] < capacity[was]:
                node = was
            else:
                node = self._walk(hashes[k], lambda n: load[n] < capacity[n])
            result[k] = node
            load[node] += 1
        return result

    def place(
        self,
        key: str,
        loads: Mapping[str, int],
        total: int | None = None,
        load_factor: float = DEFAULT_LOAD_FACTOR,
    ) -> str:
        """Place one new key given the current per-node loads (incremental bounded loads).

        The key goes to the first node clockwise from its position whose load is below
        its capacity for ``total`` keys. Nodes missing from ``loads`` count as empty;
        entries for nodes not on the ring are ignored.

        Args:
            key: the key to place.
            loads: node → keys it holds now (not counting ``key``).
            total: the number of keys once ``key`` is placed; default
                ``Σ loads on ring nodes + 1``.
            load_factor: ``c ≥ 1``.

        Raises:
            NoNodes: the ring is empty.
            ConfigurationError: a negative load, ``total`` below ``Σ loads + 1`` (there
                would be no room), or ``load_factor < 1``.
        """
        self._ring()
        ring_loads = {node: loads.get(node, 0) for node in self._weights}
        if any(v < 0 for v in ring_loads.values()):
            raise ConfigurationError("loads must be >= 0")
        needed = sum(ring_loads.values()) + 1
        if total is None:
            total = needed
        elif total < needed:
            raise ConfigurationError(f"total ({total}) must count the current keys plus the new one ({needed})")
        capacity = self.capacities(total, load_factor)
        return self._walk(hash64(key), lambda n: ring_loads[n] < capacity[n])
