"""The cluster node: composes the parts of a node and plugs them into the host
(``runtime.hooks.NodeHooks``).

A mesh opened with ``cluster=`` runs one :class:`ClusterNode`. Each part is one
responsibility and gets the collaborators it needs in its constructor (none of them
imports this module):

* ``local.LocalNode``: this node's own figures and flags (reservations, draining,
  queued placements, agents moving away) and its membership record;
* ``roster.Roster``: the placement view of the live members;
* ``ownership.Ownership``: claims, state load/adopt/save, fencing, batches (the host's
  hooks for an activation's life);
* ``supervision.Supervisor``: restarts and claim checks;
* ``placing.Placing``: activation requests and spawns (placement, then activation);
* ``migration.Migration``: migrate out, adopt, drain;
* ``controller.Controller``: what the leader does (orphans, rebalancing);
* ``partition.PartitionMonitor``: which side of a partition the node is on, and its
  events (``pause_minority`` kinds pause on the minority side: ``Ownership.serving``);
* ``degraded.DegradedWrites``: the writes ``continue_degraded`` kinds queue on the
  minority side (a file under ``data_dir``), replayed after the heal;
* ``control.ControlServer``: ``<prefix>.node.<id>.<op>`` requests;
* ``crdts.CrdtCopies``: the copies of ``consistency = "crdt"`` kinds (no claim, no lease:
  deltas over core NATS, merges into the state record); the host hooks below send their
  activations there instead of to ``Ownership``.

The node owns the task group every part spawns into, and the lifecycle: ``start`` opens
the buckets, joins, serves and campaigns; ``close`` hands off or stops; the host stops
the agents; ``after_host_closed`` leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..agent.base import Agent, kind_summary
from ..errors import ConfigurationError, NatsAgentsError
from ..observability import Metrics
from ..observability.micro import ServiceResponder
from ..runtime.activation import ActivationState
from ..runtime.host import Host
from ..state.store import StateStore
from ..tasks import TaskGroup
from ..transport import Transport
from ..transport.kv import open_bucket
from ..wire.subjects import bucket_name
from .asks import NodeClient
from .conflicts import Conflicts
from .control import ControlServer
from .controller import Controller
from .crdts import CrdtCopies
from .degraded import DegradedWrites
from .directory import Directory
from .hooks import AgentHooks
from .leader import LeaderLease
from .load import LoadSampler
from .local import LocalNode
from .membership import Membership
from .migration import Migration
from .owner_key import load_owner_key
from .ownership import Ownership
from .partition import PartitionMonitor
from .placement import Hints, NodeInfo, Placer, Resources
from .placing import Placing
from .replicas import Replicas
from .roster import Roster
from .settings import ClusterSettings, validate_node_id
from .successor import Successors
from .supervision import Supervisor

__all__ = ["ClusterNode"]

log = logging.getLogger("natsagents.cluster.node")


class ClusterNode:
    """One node of the cluster (see the module docstring). Built and started by ``Mesh``."""

    def __init__(
        self,
        transport: Transport,
        host: Host,
        settings: ClusterSettings,
        *,
        prefix: str,
        node_id: str,
        metrics: Metrics,
    ) -> None:
        self._t = transport
        self._host = host
        self.settings = settings
        self.prefix = prefix
        self.node_id = node_id = validate_node_id(node_id)
        self._tasks = TaskGroup(f"cluster node {node_id}", log)
        self._announcing = False
        sampler = LoadSampler(settings.capacity_resources, transport.message_counts)
        local = self._local = LocalNode(node_id, settings, host, sampler, announce=self._announce)
        self.membership = Membership(
            transport, prefix, node_id, describe=local.describe, lease=settings.lease, interval=settings.heartbeat
        )
        self.partition = PartitionMonitor(self.membership, lambda: transport.is_connected, metrics)
        self.degraded = DegradedWrites(
            transport,
            prefix=prefix,
            node_id=node_id,
            data_dir=settings.data_dir,
            partition=self.partition,
            metrics=metrics,
            max_writes=settings.degraded_max_writes,
            max_bytes=settings.degraded_max_bytes,
        )
        self.directory = Directory(transport, prefix)
        self.state = StateStore(transport, prefix, max_size=settings.max_state_bytes)
        self.placer = Placer(weights=settings.score_weights)
        self._client = NodeClient(transport, prefix, lambda: self.owner_key)
        self._roster = roster = Roster(local, host, self.membership, self.directory)
        self._ownership = Ownership(
            local,
            host,
            self.directory,
            self.state,
            is_live=roster.is_live,
            membership=self.membership,
            metrics=metrics,
            tasks=self._tasks,
            partition=self.partition,
            successors=Successors(self._client, self.directory, metrics, self._tasks),
        )
        self._supervisor = Supervisor(
            local,
            host,
            self._ownership,
            self.directory,
            self.membership,
            lease=settings.lease,
            metrics=metrics,
            tasks=self._tasks,
        )
        self._placing = Placing(
            local,
            settings,
            host,
            roster,
            self.placer,
            self.membership,
            self.directory,
            self._supervisor,
            self._client,
            transport,
            metrics,
        )
        self._migration = Migration(
            local,
            settings,
            host,
            self._ownership,
            roster,
            self.placer,
            self.membership,
            self.directory,
            self._client,
            metrics,
        )
        self.replicas = Replicas(
            transport,
            host,
            self.directory,
            self.state,
            self.membership,
            prefix=prefix,
            node_id=node_id,
            metrics=metrics,
            tasks=self._tasks,
            partition=self.partition,
        )
        self.crdts = CrdtCopies(
            transport, host, self.state, prefix=prefix, node_id=node_id, metrics=metrics, tasks=self._tasks
        )
        #: What the host asks of this node around each activation (``Host.node``).
        self.hooks = AgentHooks(
            host,
            local,
            ownership=self._ownership,
            crdts=self.crdts,
            replicas=self.replicas,
            supervisor=self._supervisor,
            placing=self._placing,
            degraded=self.degraded,
        )
        self._controller = Controller(local, settings, self.membership, self.directory, self._placing, self._client)
        self._control_server = ControlServer(
            transport,
            prefix,
            node_id,
            queue_timeout=settings.queue_timeout,
            placing=self._placing,
            migration=self._migration,
            info=self.info,
            holds=host.holds,
            traceback=host.traceback,
            tasks=self._tasks,
            owner_key=lambda: self.owner_key,
            operators=settings.operators,
        )
        self._leader: LeaderLease | None = None
        self.owner_key: bytes | None = None
        self.services: ServiceResponder | None = None
        if settings.services_api:  # `nats micro ls` lists the node (observability/micro.py)
            self.services = ServiceResponder(
                transport,
                prefix=prefix,
                node_id=node_id,
                kinds=lambda: host.kinds,
                metrics=metrics,
                agents=lambda: host.activations.values(),
                settings=lambda kind: kind_summary(host.kinds[kind]),
                partition=lambda: self.partition.state.status,
            )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the buckets, join the membership, serve control requests, campaign."""
        await self.state.start()
        await self.directory.start()
        self.directory.add_listener(self._ownership.on_directory_change)
        self.directory.add_listener(self.replicas.on_directory_change)
        await self.membership.start()
        self._tasks.spawn(self.partition.run(), name="partition monitor")
        self.degraded.open()  # writes an earlier run queued: replayed once on the majority side
        self.partition.subscribe(lambda _: self.degraded.wake())
        self._tasks.spawn(self.degraded.run(), name="degraded writes")
        self.crdts.watch_partition(self.partition)
        await self._control_server.start()
        control = self.control = await open_bucket(self._t, bucket_name(self.prefix, "control"), history=1)
        # Hosts take Na-Stream-Seq and batches only when signed with it (wire.owner).
        self.owner_key = self._host.owner_key = await load_owner_key(control)
        self._leader = LeaderLease(
            control, "rebalancer", self.node_id, ttl=max(1.0, self.settings.lease), lead=self._controller.lead
        )
        self._leader.start()
        self._tasks.spawn(self._supervisor.run(), name="supervisor")
        self._tasks.spawn(self.replicas.run(), name="replicas")
        self._host.node = self.hooks
        await self._t.flush()
        if self.services is not None:  # last: nothing after it can fail and leave it running
            await self.services.start()

    async def close(self) -> None:
        """Leave the cluster: hand permanent agents off (if set), stop the rest (each saves
        and releases), stop heartbeating and delete the membership record."""
        local = self._local
        if local.closing:
            return
        if self.settings.handoff_on_close and not local.draining:
            permanent = [
                a
                for a in list(self._host.activations.values())
                if a.state is ActivationState.ACTIVE and type(a.agent).restart == "permanent"
            ]
            if permanent:
                await self._migration.hand_off(permanent, self.settings.rebalance_strategy)
        local.closing = True
        await self.crdts.close()
        await self.replicas.close()
        if self._leader is not None:
            await self._leader.stop()
        await self._control_server.stop()
        if self.services is not None:
            await self.services.stop()

    async def after_host_closed(self) -> None:
        """Called once the host stopped every agent (saves and releases done)."""
        await self._tasks.aclose()
        self.degraded.close()
        await self.membership.stop(leave=True)
        await self.directory.stop()

    def kind_added(self, cls: type[Agent]) -> None:
        """Validate the kind's cluster options; the next heartbeat announces it.

        Raises:
            ConfigurationError: the kind's ``resources`` are malformed, or it continues
                degraded (``continue_degraded``) and the node has no ``data_dir``.
        """
        self.check_kind(cls)
        self._local.add_kind(cls)
        if cls.consistency == "crdt":
            self.crdts.kind_added(cls)
        self._tasks.spawn(self._beat_soon())

    def check_kind(self, cls: type[Agent]) -> None:
        """Raises: ConfigurationError: ``cls`` continues degraded (``continue_degraded``)
        and this node has no ``data_dir`` for its write queue."""
        if cls.partition_strategy == "continue_degraded" and self.degraded.queue is None:
            raise ConfigurationError(
                f"{cls.__qualname__}: partition_strategy = 'continue_degraded' queues writes on the node's "
                "disk: set ClusterSettings(data_dir=...)"
            )

    async def _beat_soon(self) -> None:
        with contextlib.suppress(NatsAgentsError):
            await self.membership.beat_now()

    def _announce(self) -> None:
        """A heartbeat soon (coalesced): reservations and draining changed."""
        if self._announcing or self._tasks.closed:
            return
        self._announcing = True

        async def beat() -> None:
            await asyncio.sleep(0.01)
            self._announcing = False
            await self._beat_soon()

        self._tasks.spawn(beat())

    # -- what the mesh and tools see ---------------------------------------------------

    @property
    def reserved(self) -> Resources:
        """Resources reserved by the agents on this node."""
        return self._local.reserved

    @property
    def conflicts(self) -> Conflicts:
        """Versions and conflict resolution of this node's eventual agents (split brain):
        ``conflicts.total("overwritten")`` and the other counts (docs/consistency.md)."""
        return self._ownership.conflicts

    @property
    def draining(self) -> bool:
        return self._local.draining

    @property
    def is_leader(self) -> bool:
        return self._leader is not None and self._leader.is_leader

    @property
    def moves_in_flight(self) -> int:
        """Rebalancing moves the leader has asked for and not seen end."""
        return self._controller.moves_in_flight

    def describe(self) -> dict[str, Any]:
        """This node's membership record fields."""
        return self._local.describe()

    def info(self) -> dict[str, Any]:
        """This node's own view: record fields, agents, queued placements, leadership,
        and the agents throttled now (``unhealthy``: address → ``backlog``/``latency``)."""
        out = self._local.describe()
        out["node"] = self.node_id
        out["leader"] = self.is_leader
        out["queued"] = sorted(self._local.queued)
        out["agents"] = self._host.active()
        out["unhealthy"] = self._host.unhealthy()
        return out

    def nodes(self) -> list[NodeInfo]:
        """The placement view of the live members (this node with fresh local figures)."""
        return self._roster.nodes()

    def is_live(self, node: str) -> bool:
        return self._roster.is_live(node)

    def is_local(self, kind: str, agent_id: str) -> bool:
        """Whether the agent has an activation on this node."""
        return (kind, agent_id) in self._host.activations

    async def request_node(self, node: str, op: str, body: dict[str, Any], timeout: float) -> Any:
        """One control request to ``node``. Raises: NoResponders, AgentError subclasses."""
        return await self._client.request(node, op, body, timeout)

    async def spawn(
        self, kind: str, agent_id: str, *, needs: Resources | None, hints: Hints, queue: bool, timeout: float | None
    ) -> str:
        """Place and activate an agent now; returns its node (see ``Placing.spawn``)."""
        return await self._placing.spawn(kind, agent_id, needs=needs, hints=hints, queue=queue, timeout=timeout)

    async def migrate_out(self, kind: str, agent_id: str, target: str, strategy: str) -> dict[str, Any]:
        """Move one agent from this node to ``target`` (see ``Migration.migrate_out``)."""
        return await self._migration.migrate_out(kind, agent_id, target, strategy)

    async def drain(self) -> dict[str, Any]:
        """Take no new agents and move every agent here to other nodes."""
        return await self._migration.drain()

    async def undrain(self) -> dict[str, Any]:
        """Take new agents again after a drain (see ``Migration.undrain``)."""
        return await self._migration.undrain()
