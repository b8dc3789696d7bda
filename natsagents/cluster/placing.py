"""Placing one agent: answering activation requests (``<prefix>.activate.<kind>``) and
explicit spawns.

The directory decides whether the agent already has a live owner (then the request goes
to that node); otherwise the placer picks a node from the roster and the request is sent
to it (``<prefix>.node.<node>.activate``), or it is activated here. The chosen node
re-checks the bounded-load rule, its agent cap and its free resources, and the placer
moves on when it refuses. When nothing fits, the placement waits (queued) for membership
changes until its deadline, or fails at once with ``ClusterAtCapacity`` (``queue=False``,
or every live node of the kind holds its ``max_agents`` agents: waiting would only turn
that answer into a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from ..errors import AgentError, AgentNotFound, BadRequest, CallTimeout, ClusterAtCapacity, Unavailable
from ..observability import Metrics
from ..runtime.activation import ActivationState
from ..runtime.host import Host
from ..transport import Inbound, NoResponders, Transport
from ..wire import codec
from .asks import ActivationAsk, NodeClient, answer, parse_ask, start_error
from .directory import AgentActiveElsewhere, Directory
from .local import LocalNode
from .membership import Membership
from .placement import Hints, Placer, Resources
from .roster import Roster
from .settings import ClusterSettings
from .supervision import Supervisor

__all__ = ["Placing"]

log = logging.getLogger("natsagents.cluster.node")


class Placing:
    """Finds or chooses an agent's node and has it activated there.

    Args:
        local: this node's own state (draining, closing, queued placements, moves).
        settings: the cluster settings (load factor, queue timeout).
        host: the host agents run on here.
        roster: the placement view of the members.
        placer: chooses a node.
        membership: the heartbeats (placements wait for their changes).
        directory: who owns what.
        supervisor: refuses agents stopped for failing too often.
        client: control requests to other nodes.
        transport: answers go out on it.
        metrics: the queued placements gauge.
    """

    def __init__(
        self,
        local: LocalNode,
        settings: ClusterSettings,
        host: Host,
        roster: Roster,
        placer: Placer,
        membership: Membership,
        directory: Directory,
        supervisor: Supervisor,
        client: NodeClient,
        transport: Transport,
        metrics: Metrics,
    ) -> None:
        self._local = local
        self._settings = settings
        self._host = host
        self._roster = roster
        self._placer = placer
        self._membership = membership
        self._directory = directory
        self._supervisor = supervisor
        self._client = client
        self._t = transport
        self._metrics = metrics

    async def spawn(
        self, kind: str, agent_id: str, *, needs: Resources | None, hints: Hints, queue: bool, timeout: float | None
    ) -> str:
        """Place and activate an agent now (``Mesh.spawn``); returns its node.

        Raises:
            as :meth:`place_and_activate` (``timeout`` ``None``: the queue timeout).
        """
        ask = ActivationAsk(agent_id, spawn=True, needs=needs, hints=hints, queue=queue)
        ask.deadline = time.time() + (timeout if timeout is not None else self._settings.queue_timeout)
        node = await self.place_and_activate(kind, ask)
        await self._t.flush()
        return node

    async def answer_activation(self, msg: Inbound) -> None:
        """An activation request from a caller (``<prefix>.activate.<kind>``)."""
        kind = msg.subject.rsplit(".", 1)[-1]
        try:
            ask = parse_ask(codec.decode(msg.data), default_timeout=self._settings.queue_timeout)
        except Exception as exc:  # every request gets an answer, even if parsing has a bug
            await answer(self._t, msg, error=BadRequest(str(exc), agent=kind))
            return
        address = f"{kind}/{ask.agent_id}"
        try:
            cls = self._host.kinds.get(kind)
            if cls is None or self._local.closing:
                raise Unavailable("host is closing", agent=address, details={"retry": True})
            if not (ask.spawn or cls.activate_on_demand) and (kind, ask.agent_id) not in self._host.activations:
                current = await self._directory.get(kind, ask.agent_id)
                if current is None or not self._roster.is_live(current.record.node):
                    raise AgentNotFound(f"{address} is not active and {kind} is not activated on demand", agent=address)
            node = await self.place_and_activate(kind, ask)
        except AgentError as exc:
            await answer(self._t, msg, error=exc)
            return
        except Exception as exc:  # on_start or restore failed
            await answer(self._t, msg, error=start_error(address, exc, self._host.traceback))
            return
        await answer(self._t, msg, result={"node": node})

    async def place_and_activate(self, kind: str, ask: ActivationAsk) -> str:
        """Find or choose the agent's node and have it activated there; return the node.

        Raises:
            ClusterAtCapacity: nothing fits and ``ask.queue`` is false.
            CallTimeout: the deadline passed (queued, or the owner's lease never lapsed).
            AgentError: the chosen node refused (e.g. ``on_start`` failed).
        """
        address = f"{kind}/{ask.agent_id}"
        avoid: set[str] = set()
        refused: dict[str, str] = {}  # node -> why it refused what placement chose
        full: set[str] = set()  # nodes that refused at their agent cap
        delay = 0.005
        problem = "no node answered"
        try:
            while True:
                remaining = ask.deadline - time.time()
                if remaining <= 0:
                    raise CallTimeout(f"could not activate {address} in time: {problem}", agent=address)
                current = await self._directory.get(kind, ask.agent_id)
                owner = current.record.node if current is not None else None
                ask.placed = False
                if owner == self._local.node_id:
                    return await self.activate_here(kind, ask)
                if owner is not None and self._roster.is_live(owner) and owner not in avoid:
                    try:
                        # Bounded: a paused or cut-off owner keeps its control subscription
                        # and never answers; its lease lapses meanwhile.
                        lease = self._settings.lease
                        return await self._client.activate(owner, kind, ask, min(remaining, lease))
                    except NoResponders:
                        # Its process is gone but its lease has not lapsed yet: wait for it.
                        problem = f"owner {owner} does not answer; waiting for its lease to lapse"
                        await self._wait_lapse(owner, ask.deadline)
                        continue
                    except Unavailable as exc:
                        if not exc.details.get("retry"):
                            raise
                        problem = exc.message
                        await _sleep(delay, ask.deadline)
                        delay = min(delay * 2, 0.25)
                        continue
                    except CallTimeout:
                        problem = f"owner {owner} did not answer in time"
                        await self._wait_lapse(owner, min(ask.deadline, time.time() + lease))
                        continue
                members = self._roster.nodes()
                if not any(kind in n.kinds for n in members):
                    raise Unavailable(f"no node serves kind {kind!r}", agent=address)
                try:
                    target = self._placer.choose(
                        kind,
                        address,
                        [n for n in members if n.node_id not in avoid],
                        needs=ask.needs if ask.needs is not None else self._local.needs(kind),
                        hints=ask.hints,
                        locate=self._roster.locate,
                        load_factor=self._settings.load_factor,
                    )
                except ClusterAtCapacity as exc:
                    hosts = [n for n in members if n.live and kind in n.kinds]
                    if hosts and all(n.full or n.node_id in full for n in hosts):
                        # Only an agent stopping somewhere makes room: waiting would turn
                        # a clear answer into a timeout.
                        raise ClusterAtCapacity(
                            f"every node of kind {kind} is at its agent limit (max_agents)",
                            agent=address,
                            kind=kind,
                            needs=exc.needs,
                            rejected={**refused, **exc.rejected},
                        ) from None
                    if not ask.queue:
                        if refused:
                            raise ClusterAtCapacity(
                                exc.message,
                                agent=address,
                                kind=kind,
                                needs=exc.needs,
                                rejected={**refused, **exc.rejected},
                            ) from None
                        raise
                    problem = exc.message
                    if address not in self._local.queued:
                        if len(self._local.queued) >= self._settings.max_queued:
                            raise ClusterAtCapacity(
                                f"{exc.message}; and {self._local.node_id} already holds"
                                f" {len(self._local.queued)} placements waiting (max_queued)",
                                agent=address,
                                kind=kind,
                                needs=exc.needs,
                                rejected={**refused, **exc.rejected},
                            ) from None
                        self._local.queued[address] = time.time()
                        self._metrics.queued_placements.set(len(self._local.queued))
                        log.info("queued %s: %s", address, exc.message)
                    avoid.clear()
                    full.clear()
                    await self._membership.changed(min(remaining, self._membership.interval))
                    continue
                ask.placed = True
                if target == self._local.node_id:
                    try:
                        return await self.activate_here(kind, ask)
                    except ClusterAtCapacity as exc:
                        problem = _refused(target, exc, refused, full, avoid)
                        continue
                try:
                    node = await self._client.activate(target, kind, ask, remaining)
                except ClusterAtCapacity as exc:
                    problem = _refused(target, exc, refused, full, avoid)
                    continue
                except (NoResponders, CallTimeout) as exc:
                    problem = f"node {target}: {exc}"
                    avoid.add(target)
                    continue
                except Unavailable as exc:
                    if not exc.details.get("retry"):
                        raise
                    problem = f"node {target}: {exc.message}"
                    avoid.add(target)
                    continue
                self._roster.note_placed(target)
                return node
        finally:
            if self._local.queued.pop(address, None) is not None:
                self._metrics.queued_placements.set(len(self._local.queued))

    async def activate_here(self, kind: str, ask: ActivationAsk) -> str:
        """Activate on this node (placement already chose it); return the owner's id,
        which is another node if someone else got the agent first."""
        key = (kind, ask.agent_id)
        address = f"{kind}/{ask.agent_id}"
        node_id = self._local.node_id
        if self._local.closing or (self._local.draining and ask.transfer is None):
            raise Unavailable(f"node {node_id} is draining", agent=address, details={"retry": True})
        if kind not in self._host.kinds:
            raise Unavailable(f"node {node_id} does not host {kind}", agent=address, details={"retry": True})
        self._supervisor.check_not_failed(key, address)
        waiter = self._local.moving.get(key)
        if waiter is not None:  # it is moving away: answer once it landed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, ask.deadline - time.time())):
                    await waiter.wait()
            current = self._directory.lookup(kind, ask.agent_id)
            return current.node if current is not None else node_id
        act = self._host.activations.get(key)
        if act is not None and act.state is ActivationState.ACTIVE:
            return node_id
        if ask.transfer is None and self._local.full():
            raise self._full(kind, address)
        if ask.placed and ask.transfer is None and ask.hints.pin is None:
            self._check_load_bound(kind, address)
        try:
            await self._host.activate(kind, ask.agent_id, ask)
        except AgentActiveElsewhere as exc:
            return exc.owner
        except ClusterAtCapacity:
            if self._local.full():  # the host's own cap check: say so, the placer counts on it
                raise self._full(kind, address) from None
            raise
        return node_id

    def _full(self, kind: str, address: str) -> ClusterAtCapacity:
        """The refusal of a node at its agent cap (``details.full``: the placer stops
        trying once every node of the kind said so)."""
        node_id, cap = self._local.node_id, self._local.max_agents
        why = f"at its agent limit ({self._local.agent_count()} agents, max_agents={cap})"
        return ClusterAtCapacity(
            f"node {node_id} is {why}", agent=address, kind=kind, rejected={node_id: why}, details={"full": True}
        )

    def _check_load_bound(self, kind: str, address: str) -> None:
        """Refuse a placement that would put this node over ``c`` x its share of agents.

        Nodes place concurrently from slightly stale views; the chosen node knows its own
        count exactly, so it re-checks the bounded-load rule and the placer moves on.
        """
        node_id = self._local.node_id
        # Nodes at their agent cap take no share: the others split the agents.
        infos = [n for n in self._roster.nodes() if n.live and kind in n.kinds and not n.full]
        me = next((n for n in infos if n.node_id == node_id), None)
        if me is None or len(infos) < 2:
            return
        total = sum(n.load.agents for n in infos) + 1
        whole = sum(n.weight for n in infos)
        bound = math.ceil(self._settings.load_factor * total * me.weight / whole)
        if me.load.agents >= bound:
            raise ClusterAtCapacity(
                f"node {node_id} is at its load bound ({me.load.agents} agents, bound {bound})",
                agent=address,
                kind=kind,
                rejected={node_id: f"at load bound ({me.load.agents} agents, bound {bound})"},
            )

    async def _wait_lapse(self, node: str, deadline: float) -> None:
        while self._membership.is_live(node) and time.time() < deadline:
            # Lapses make no event: re-check often (the lease is judged on our clock).
            await self._membership.changed(min(0.05, max(0.001, deadline - time.time())))


def _refused(node: str, exc: ClusterAtCapacity, refused: dict[str, str], full: set[str], avoid: set[str]) -> str:
    """Note that ``node`` refused what placement chose; returns the problem to report."""
    refused[node] = exc.rejected.get(node, exc.message)
    if exc.details.get("full") is True:
        full.add(node)
    avoid.add(node)
    return exc.message


async def _sleep(delay: float, deadline: float) -> None:
    await asyncio.sleep(max(0.0, min(delay, deadline - time.time())))
