"""The cluster node: membership, placement, the directory and persistent state wired into
the host's activation, plus supervision, migration, drain and the rebalancer.

A mesh opened with ``cluster=`` runs one :class:`ClusterNode`. It plugs into the host
(``runtime.host.NodeHooks``):

* **activation requests** (``<prefix>.activate.<kind>``, queue group) are answered by
  placement: the directory decides whether the agent already has a live owner (then the
  request goes to that node), otherwise the placer picks a node and the request is sent
  to it (``<prefix>.node.<node>.activate``). Callers are unchanged: they retry their
  request once the activation is answered.
* **starting** an activation claims the directory record (create-if-absent, or a CAS
  takeover from a lapsed owner with ``epoch + 1``), loads the agent's state and calls
  ``restore``; a takeover first *adopts* the state, which fences the previous owner.
* **after each action** the checkpoint is saved with a CAS on the revision this copy last
  wrote (when it changed), before the reply. A CAS failure means another node owns the
  agent: the reply is ``unavailable`` + retry and this copy stops.
* **stopping** saves a final checkpoint and releases the record (CAS).

Control requests (``<prefix>.node.<id>.<op>``): ``activate`` (placement decided),
``adopt`` (migration target), ``migrate`` (move one agent away), ``drain``, ``info``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..agent.base import Agent
from ..errors import (
    AgentError,
    AgentNotFound,
    BadRequest,
    CallTimeout,
    ClusterAtCapacity,
    ConfigurationError,
    HandlerError,
    MeshClosed,
    NatsAgentsError,
    PayloadTooLarge,
    ProtocolError,
    TransportError,
    Unavailable,
)
from ..observability import Metrics
from ..runtime.activation import Activation, ActivationState
from ..runtime.host import Host
from ..state.store import Applied, FencedOff, StateStore
from ..tasks import TaskGroup
from ..transport import Inbound, NoResponders, Subscription, Transport
from ..transport.kv import CasConflict, open_bucket
from ..wire import codec
from ..wire.envelope import RequestMeta
from ..wire.ids import agent_key, validate_kind
from ..wire.subjects import bucket_name, node_subject
from .asks import (
    ADOPT_WAIT,
    ActivationAsk,
    NodeClient,
    Transfer,
    adopt_request,
    answer,
    parse_adopt,
    parse_ask,
    start_error,
)
from .directory import AgentActiveElsewhere, Claim, Directory
from .leader import LeaderLease
from .load import LoadSampler
from .membership import MemberRecord, Membership
from .owner_key import load_owner_key
from .placement import Hints, NodeInfo, NodeLoad, Placer, Resources
from .rebalance import plan_moves
from .settings import STRATEGIES, UNLIMITED_CPU, UNLIMITED_MEMORY, ClusterSettings, capacity_from_wire, validate_node_id

__all__ = ["ClusterNode"]

log = logging.getLogger("natsagents.cluster.node")

_RECHECK = 30.0  # seconds between the leader's drift checks when nothing changes
# Applied message ids persisted with an agent's state (see runtime.dedup): at most this
# many, each until its request's deadline (+1 s), at most _APPLIED_MAX_MS, or
# _APPLIED_DEFAULT_MS for a request without a deadline.
_MAX_APPLIED = 32
_MAX_APPLIED_DURABLE = 4  # entries that keep their reply, per agent
_MAX_KEPT_REPLY = 1024  # bytes of an at-most-once reply worth keeping with the state
_APPLIED_MAX_MS = 60_000
_APPLIED_DEFAULT_MS = 10_000
_APPLIED_DURABLE_MS = 120_000  # an exactly-once reply: the inbox stream's duplicate window


class _Owned:
    """The node's record of one activation it owns (``Activation.cluster``)."""

    __slots__ = (
        "applied",
        "batch",
        "claim",
        "epoch",
        "handed_over",
        "lock",
        "needs",
        "pending",
        "persistence",
        "revision",
        "saved",
        "seq",
    )

    def __init__(self, claim: Claim, revision: int, needs: Resources, persistence: str, saved: bytes | None) -> None:
        self.claim = claim
        self.epoch = claim.record.epoch
        self.revision = revision
        self.needs = needs
        self.persistence = persistence
        self.saved = saved  # the last stored value without "applied" (StateStore.encode)
        self.lock: asyncio.Lock | None = None  # made on the first save
        self.handed_over = False
        # Requests whose effect is in the state and that may still be resent: (id, expires ms).
        self.applied: list[Applied] | None = None
        self.seq = 0  # the inbox stream sequence of the last exactly-once message applied
        # While a batch of durable messages runs (runtime.batch): the seq and applied
        # ids to go back to if its one write fails, and the state to write (not yet stored).
        self.batch: tuple[int, list[Applied] | None] | None = None
        self.pending: bytes | None = None

    def applied_now(self) -> list[Applied]:
        """The applied ids still worth persisting (expired ones dropped)."""
        applied = self.applied
        if not applied:
            return []
        now_ms = int(time.time() * 1000)
        if applied[0][1] <= now_ms:
            applied[:] = [a for a in applied if a[1] > now_ms]
        return applied


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
        activate_remote: Callable[[str, str, ActivationAsk], Awaitable[str]] | None = None,
    ) -> None:
        self._t = transport
        self._host = host
        self.settings = settings
        self.prefix = prefix
        self.node_id = validate_node_id(node_id)
        self._metrics = metrics
        self.capacity = settings.capacity_resources
        self.reserved = Resources()
        self.placer = Placer(weights=settings.score_weights)
        self.membership = Membership(
            transport, prefix, self.node_id, describe=self.describe, lease=settings.lease, interval=settings.heartbeat
        )
        self.directory = Directory(transport, prefix)
        self.state = StateStore(transport, prefix, max_size=settings.max_state_bytes)
        self._leader: LeaderLease | None = None
        self.owner_key: bytes | None = None
        self._ctl: Subscription | None = None
        self._client = NodeClient(transport, prefix)
        self._tasks = TaskGroup(f"cluster node {self.node_id}", log)
        self._migrating: dict[tuple[str, str], asyncio.Event] = {}
        self._restarts: dict[tuple[str, str], deque[float]] = {}
        self._failed: dict[tuple[str, str], float] = {}
        self._queued: dict[str, float] = {}
        self._placed: dict[str, tuple[float, int]] = {}
        self._kind_needs: dict[str, Resources] = {}
        self.draining = False
        self.moves_in_flight = 0  # rebalancing moves the leader has asked for and not seen end
        self._closing = False
        self._announcing = False
        self._sampler = LoadSampler(self.capacity, transport.message_counts)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the buckets, join the membership, serve control requests, campaign."""
        await self.state.start()
        await self.directory.start()
        self.directory.add_listener(self._on_directory_change)
        await self.membership.start()
        self._ctl = await self._t.subscribe(
            node_subject(self.prefix, self.node_id, "*"), self._on_control, service=True
        )
        control = self.control = await open_bucket(self._t, bucket_name(self.prefix, "control"), history=1)
        # Hosts take Na-Stream-Seq and batches only when signed with it (wire.owner).
        self.owner_key = self._host.owner_key = await load_owner_key(control)
        self._leader = LeaderLease(
            control, "rebalancer", self.node_id, ttl=max(1.0, self.settings.lease), lead=self._lead
        )
        self._leader.start()
        self._tasks.spawn(self._supervise())
        self._host.node = self
        await self._t.flush()

    async def close(self) -> None:
        """Leave the cluster: hand permanent agents off (if set), stop the rest (each saves
        and releases), stop heartbeating and delete the membership record."""
        if self._closing:
            return
        if self.settings.handoff_on_close and not self.draining:
            permanent = [
                a
                for a in list(self._host.activations.values())
                if a.state is ActivationState.ACTIVE and type(a.agent).restart == "permanent"
            ]
            if permanent:
                self.draining = True
                with contextlib.suppress(NatsAgentsError):
                    await self.membership.beat_now()
                await self._move_all(permanent, self.settings.rebalance_strategy)
        self._closing = True
        if self._leader is not None:
            await self._leader.stop()
        if self._ctl is not None:
            with contextlib.suppress(NatsAgentsError):
                await self._ctl.unsubscribe()

    async def after_host_closed(self) -> None:
        """Called once the host stopped every agent (saves and releases done)."""
        await self._tasks.aclose()
        await self.membership.stop(leave=True)
        await self.directory.stop()

    def kind_added(self, cls: type[Agent]) -> None:
        """Validate the kind's cluster options; the next heartbeat announces it.

        Raises:
            ConfigurationError: the kind's ``resources`` are malformed.
        """
        try:
            self._kind_needs[cls.kind] = Resources.from_wire(cls.resources)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{cls.__qualname__}.resources: {exc}") from None
        self._tasks.spawn(self._beat_soon())

    async def _beat_soon(self) -> None:
        with contextlib.suppress(NatsAgentsError):
            await self.membership.beat_now()

    def _announce(self) -> None:
        """A heartbeat soon (coalesced): reservations and draining changed."""
        if self._announcing:
            return
        self._announcing = True

        async def beat() -> None:
            await asyncio.sleep(0.01)
            self._announcing = False
            await self._beat_soon()

        self._tasks.spawn(beat())

    # -- membership record -----------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        acts = self._host.activations
        backlog = sum(len(a.mailbox) for a in acts.values())
        capacity = self.capacity.to_wire()
        if capacity.get("cpu") == UNLIMITED_CPU:
            del capacity["cpu"]
        if capacity.get("memory") == UNLIMITED_MEMORY:
            del capacity["memory"]
        return {
            "kinds": sorted(self._host.kinds),
            "capacity": capacity,
            "load": {
                "agents": len(acts),
                "mailbox_backlog": backlog,
                "reserved": self.reserved.to_wire(),
                "queued": len(self._queued),
                **self._sampler.sample(),
            },
            "tags": list(self.settings.tags),
            "version": _version(),
            "draining": self.draining,
            "weight": self.settings.weight,
        }

    def nodes(self) -> list[NodeInfo]:
        """The placement view of the live members (this node with fresh local figures)."""
        out: list[NodeInfo] = []
        members = self.membership.members()
        if self.node_id not in members and not self._closing:
            # Our own record lapsed in our view (a long stall): we are still here.
            members = {**members, self.node_id: self.membership.own_record()}
        for rec in members.values():
            try:
                out.append(self._node_info(rec))
            except (ConfigurationError, TypeError, ValueError) as exc:
                log.warning("ignoring member %s: %s", rec.node_id, exc)
        return out

    def _node_info(self, rec: MemberRecord) -> NodeInfo:
        load = rec.load
        # The directory watch counts owners within milliseconds; heartbeats lag by up to
        # an interval, so take whichever is higher.
        agents = max(int(load.get("agents", 0)), self.directory.count_on(rec.node_id))
        reserved = Resources.from_wire(load.get("reserved"))
        if rec.node_id == self.node_id:
            agents = max(
                len(self._host.activations) + self._host.starting_count(), self.directory.count_on(self.node_id)
            )
            reserved = self.reserved
            draining = self.draining
        else:
            seen, placed = self._placed.get(rec.node_id, (0.0, 0))
            if seen == rec.heartbeat_at:
                agents += placed  # placements since its last heartbeat
            draining = rec.draining
        return NodeInfo(
            node_id=rec.node_id,
            kinds=frozenset(rec.kinds),
            capacity=capacity_from_wire(rec.capacity),
            reserved=reserved,
            load=NodeLoad(
                agents=agents,
                mailbox_backlog=int(load.get("mailbox_backlog", 0)),
                cpu=_fraction(load.get("cpu")),
                memory=_fraction(load.get("memory")),
                network=_fraction(load.get("network")),
            ),
            tags=frozenset(rec.tags),
            weight=rec.weight if rec.weight > 0 else 1.0,
            live=not draining,
        )

    def _note_placed(self, node: str) -> None:
        rec = self.membership.members().get(node)
        if rec is None:
            return
        seen, placed = self._placed.get(node, (0.0, 0))
        self._placed[node] = (rec.heartbeat_at, placed + 1 if seen == rec.heartbeat_at else 1)

    def is_live(self, node: str) -> bool:
        return node == self.node_id or self.membership.is_live(node)

    # -- activation requests ---------------------------------------------------------

    async def answer_activation(self, msg: Inbound) -> None:
        """An activation request from a caller (``<prefix>.activate.<kind>``)."""
        kind = msg.subject.rsplit(".", 1)[-1]
        try:
            ask = parse_ask(codec.decode(msg.data), default_timeout=self.settings.queue_timeout)
        except Exception as exc:  # every request gets an answer, even if parsing has a bug
            await self._answer(msg, error=BadRequest(str(exc), agent=kind))
            return
        address = f"{kind}/{ask.agent_id}"
        try:
            cls = self._host.kinds.get(kind)
            if cls is None or self._closing:
                raise Unavailable("host is closing", agent=address, details={"retry": True})
            if not (ask.spawn or cls.activate_on_demand) and (kind, ask.agent_id) not in self._host.activations:
                current = await self.directory.get(kind, ask.agent_id)
                if current is None or not self.is_live(current.record.node):
                    raise AgentNotFound(f"{address} is not active and {kind} is not activated on demand", agent=address)
            node = await self.place_and_activate(kind, ask)
        except AgentError as exc:
            await self._answer(msg, error=exc)
            return
        except Exception as exc:  # on_start or restore failed
            await self._answer(msg, error=self._start_error(address, exc))
            return
        await self._answer(msg, result={"node": node})

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
        delay = 0.005
        problem = "no node answered"
        try:
            while True:
                remaining = ask.deadline - time.time()
                if remaining <= 0:
                    raise CallTimeout(f"could not activate {address} in time: {problem}", agent=address)
                current = await self.directory.get(kind, ask.agent_id)
                owner = current.record.node if current is not None else None
                ask.placed = False
                if owner == self.node_id:
                    return await self.activate_here(kind, ask)
                if owner is not None and self.is_live(owner) and owner not in avoid:
                    try:
                        return await self._ask_node(owner, kind, ask, remaining)
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
                        continue
                members = self.nodes()
                if not any(kind in n.kinds for n in members):
                    raise Unavailable(f"no node serves kind {kind!r}", agent=address)
                try:
                    target = self.placer.choose(
                        kind,
                        address,
                        [n for n in members if n.node_id not in avoid],
                        needs=ask.needs if ask.needs is not None else self._needs(kind),
                        hints=ask.hints,
                        locate=self._locate,
                        load_factor=self.settings.load_factor,
                    )
                except ClusterAtCapacity as exc:
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
                    if address not in self._queued:
                        self._queued[address] = time.time()
                        self._metrics.queued_placements.set(len(self._queued))
                        log.info("queued %s: %s", address, exc.message)
                    avoid.clear()
                    await self.membership.changed(min(remaining, self.membership.interval))
                    continue
                ask.placed = True
                if target == self.node_id:
                    try:
                        return await self.activate_here(kind, ask)
                    except ClusterAtCapacity as exc:
                        problem = exc.message
                        refused[target] = exc.rejected.get(target, exc.message)
                        avoid.add(target)
                        continue
                try:
                    node = await self._ask_node(target, kind, ask, remaining)
                except ClusterAtCapacity as exc:
                    problem = exc.message
                    refused[target] = exc.rejected.get(target, exc.message)
                    avoid.add(target)
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
                self._note_placed(target)
                return node
        finally:
            if self._queued.pop(address, None) is not None:
                self._metrics.queued_placements.set(len(self._queued))

    async def activate_here(self, kind: str, ask: ActivationAsk) -> str:
        """Activate on this node (placement already chose it); return the owner's id,
        which is another node if someone else got the agent first."""
        key = (kind, ask.agent_id)
        address = f"{kind}/{ask.agent_id}"
        if self._closing or (self.draining and ask.transfer is None):
            raise Unavailable(f"node {self.node_id} is draining", agent=address, details={"retry": True})
        if kind not in self._host.kinds:
            raise Unavailable(f"node {self.node_id} does not host {kind}", agent=address, details={"retry": True})
        until = self._failed.get(key)
        if until is not None:
            if time.monotonic() < until:
                raise Unavailable(
                    f"{address} failed too often and is stopped for {until - time.monotonic():.0f} s more",
                    agent=address,
                    details={"failed": True},
                )
            del self._failed[key]
        waiter = self._migrating.get(key)
        if waiter is not None:  # it is moving away: answer once it landed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, ask.deadline - time.time())):
                    await waiter.wait()
            current = self.directory.lookup(kind, ask.agent_id)
            return current.node if current is not None else self.node_id
        act = self._host.activations.get(key)
        if act is not None and act.state is ActivationState.ACTIVE:
            return self.node_id
        if ask.placed and ask.transfer is None and ask.hints.pin is None:
            self._check_load_bound(kind, address)
        try:
            await self._host.activate(kind, ask.agent_id, ask)
        except AgentActiveElsewhere as exc:
            return exc.owner
        return self.node_id

    def _check_load_bound(self, kind: str, address: str) -> None:
        """Refuse a placement that would put this node over ``c`` x its share of agents.

        Nodes place concurrently from slightly stale views; the chosen node knows its own
        count exactly, so it re-checks the bounded-load rule and the placer moves on.
        """
        infos = [n for n in self.nodes() if n.live and kind in n.kinds]
        me = next((n for n in infos if n.node_id == self.node_id), None)
        if me is None or len(infos) < 2:
            return
        total = sum(n.load.agents for n in infos) + 1
        whole = sum(n.weight for n in infos)
        bound = math.ceil(self.settings.load_factor * total * me.weight / whole)
        if me.load.agents >= bound:
            raise ClusterAtCapacity(
                f"node {self.node_id} is at its load bound ({me.load.agents} agents, bound {bound})",
                agent=address,
                kind=kind,
                rejected={self.node_id: f"at load bound ({me.load.agents} agents, bound {bound})"},
            )

    def _start_error(self, address: str, exc: BaseException) -> AgentError:
        return start_error(address, exc, self._host.traceback)

    async def _wait_lapse(self, node: str, deadline: float) -> None:
        while self.membership.is_live(node) and time.time() < deadline:
            # Lapses make no event: re-check often (the lease is judged on our clock).
            await self.membership.changed(min(0.05, max(0.001, deadline - time.time())))

    def _locate(self, address: str) -> str | None:
        kind, _, agent_id = address.partition("/")
        rec = self.directory.lookup(kind, agent_id)
        return rec.node if rec is not None else None

    def _needs(self, kind: str) -> Resources:
        return self._kind_needs.get(kind, Resources())

    async def _ask_node(self, node: str, kind: str, ask: ActivationAsk, timeout: float) -> str:
        return await self._client.activate(node, kind, ask, timeout)

    async def request_node(self, node: str, op: str, body: dict[str, Any], timeout: float) -> Any:
        """One control request to ``node``. Raises: NoResponders, AgentError subclasses."""
        return await self._client.request(node, op, body, timeout)

    # -- host hooks ------------------------------------------------------------------

    async def starting(self, act: Activation, options: Any) -> None:
        """Claim the directory record, adopt/load the state and restore the agent."""
        if self._closing:
            raise MeshClosed("the node is closing")
        ask = options if isinstance(options, ActivationAsk) else ActivationAsk(act.agent_id)
        agent = act.agent
        cls = type(agent)
        kind, agent_id = act.kind, act.agent_id
        needs = ask.needs if ask.needs is not None else self._needs(kind)
        free = self.capacity.remaining(self.reserved)
        if not needs.within(free):
            raise ClusterAtCapacity(
                f"node {self.node_id} has not enough free resources for {act.address} (free {free}, needs {needs})",
                agent=act.address,
                kind=kind,
                needs=needs.to_wire(),
                rejected={self.node_id: "not enough free resources"},
            )
        self.reserved = self.reserved + needs
        if needs != Resources():
            self._announce()  # others place by our reservations: tell them soon
        try:
            transfer = ask.transfer
            persist = cls.persistence != "none"
            stored_data: Any = None
            stored_epoch = 0
            revision = 0
            applied = list(ask.applied)
            seq = ask.seq
            empty = False  # the stored record only fences a takeover (no state saved yet)
            if transfer is None and persist:
                stored = await self._load(kind, agent_id, ask.min_revision)
                stored_data, stored_epoch, revision = stored.data, stored.epoch, stored.revision
                empty = stored.empty
                applied.extend(a for a in stored.applied if a not in applied)
                seq = max(seq, stored.seq)
            elif transfer is not None:
                stored_data, stored_epoch, revision = transfer.data, transfer.epoch, transfer.revision
            claim = await self.directory.claim(
                kind,
                agent_id,
                self.node_id,
                is_live=self.is_live,
                min_epoch=stored_epoch + 1,
                restart=cls.restart,
                needs=needs.to_wire(),
                hints=ask.hints.to_wire(),
                min_revision=ask.claim_revision,
            )
            if claim.taken_over and persist:
                # Fence the lapsed owner: rewrite the state under our epoch (CAS).
                adopted = await self._adopt(kind, agent_id, claim.record.epoch)
                stored_data, revision, empty = adopted.data, adopted.revision, adopted.empty
                applied.extend(a for a in adopted.applied if a not in applied)
                seq = max(seq, adopted.seq)
            if (revision and not empty) or transfer is not None:
                agent.restore(stored_data)
            saved = None
            if cls.persistence != "none":
                # What the store holds (or the initial state, which needs no write).
                saved = StateStore.encode(agent.checkpoint(), claim.record.epoch)
            own = act.cluster = _Owned(claim, revision, needs, cls.persistence, saved)
            own.seq = seq
            # Copies of requests the previous activation answered or applied are not run again.
            dedup = self._host.dedup
            if ask.recent is not None:
                dedup.load(act, ask.recent)
            if applied:
                applied.sort(key=lambda a: a[1])
                own.applied = applied[-_MAX_APPLIED:]
                dedup.remember_applied(act, own.applied)
        except BaseException:
            self.reserved = self.reserved.remaining(needs)
            raise

    async def _load(self, kind: str, agent_id: str, min_revision: int) -> Any:
        deadline = time.monotonic() + 2.0
        while True:
            stored = await self.state.load(kind, agent_id)
            # A replica may lag a write another node just made; wait for it to catch up.
            if stored.revision >= min_revision or time.monotonic() > deadline:
                return stored
            await asyncio.sleep(0.005)

    async def _adopt(self, kind: str, agent_id: str, epoch: int) -> Any:
        for attempt in range(5):
            try:
                return await self.state.adopt(kind, agent_id, epoch)
            except FencedOff:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))  # a stale replica read: look again
        raise AssertionError("unreachable")

    async def after_action(
        self, act: Activation, meta: RequestMeta, answered: bool, seq: int = 0, reply: bytes | None = None
    ) -> None:
        """Persist the checkpoint if it changed (``persistence = "action"``), with the
        request's id when it will be answered (a resent copy is then never applied again,
        here or by a successor). An exactly-once message (``seq``: its inbox stream
        sequence) also stores its sequence and its ``reply`` body in the same write."""
        act.errors_in_row = 0
        own: _Owned = act.cluster
        if own.persistence != "action":
            return
        try:
            value = StateStore.encode(act.agent.checkpoint(), own.epoch)
        except (TypeError, ValueError) as exc:
            self._rollback(act)
            raise HandlerError(
                f"state cannot be stored: {exc}", agent=act.address, details={"state": "rolled back"}
            ) from None
        batch = own.batch is not None
        if value == (own.pending if batch and own.pending is not None else own.saved):
            return
        entry: Applied | None = None
        if answered or seq:
            now_ms = int(time.time() * 1000)
            # Kept while the requester may still resend: until its deadline (bounded).
            expires = now_ms + _APPLIED_DEFAULT_MS
            if seq:
                expires = now_ms + _APPLIED_DURABLE_MS  # a redelivery may come later
            elif meta.deadline_ms is not None:
                expires = min(max(meta.deadline_ms + 1000, now_ms + 1000), now_ms + _APPLIED_MAX_MS)
            # The reply too (a small one, or an exactly-once one), so that a successor can
            # answer a copy with it rather than with ``already_applied``.
            kept = reply if reply is not None and (seq or len(reply) <= _MAX_KEPT_REPLY) else None
            entry = (meta.message_id, expires, kept)
            applied = own.applied_now()
            applied.append(entry)
            if len(applied) > _MAX_APPLIED:
                del applied[: len(applied) - _MAX_APPLIED]
            # Only the newest few keep their reply; older entries keep just their id.
            with_reply = [i for i, a in enumerate(applied) if a[2] is not None]
            for i in with_reply[:-_MAX_APPLIED_DURABLE]:
                applied[i] = (applied[i][0], applied[i][1], None)
            own.applied = applied
        before = own.seq
        if seq:
            own.seq = seq
        if batch:
            own.pending = value  # stored by end_batch, with the whole batch
            return
        try:
            await self._save(act, value)
        except BaseException:
            own.seq = before
            if entry is not None and own.applied and entry in own.applied:
                own.applied.remove(entry)  # not stored: a copy may run
            raise

    def begin_batch(self, act: Activation) -> None:
        """A batch of durable messages starts: their state changes are stored together."""
        own: _Owned = act.cluster
        if own.persistence != "action" or type(act.agent).max_concurrency != 1:
            # With several handlers at once, another message's write must not wait for the
            # batch (its reply would go out before its state is stored): each item writes.
            return
        own.batch = (own.seq, None if own.applied is None else list(own.applied))
        own.pending = None

    async def end_batch(self, act: Activation) -> None:
        """Store the state the batch's messages left (one CAS). On failure the state,
        sequence and applied ids go back to what was stored, and the error is raised."""
        own: _Owned = act.cluster
        base, own.batch = own.batch, None
        value, own.pending = own.pending, None
        if base is None or value is None:
            return
        try:
            await self._save(act, value)
        except BaseException:
            own.seq, own.applied = base
            self._rollback(act)
            raise

    def abort_batch(self, act: Activation) -> None:
        """A batch stopped before :meth:`end_batch` (its task was cancelled): nothing of it
        was stored or answered, so the state, sequence and applied ids go back to what was
        stored; the owner sends the messages again."""
        own: _Owned = act.cluster
        base, own.batch = own.batch, None
        if base is None:
            return
        own.seq, own.applied = base
        own.pending = None
        self._rollback(act)  # also undoes what the interrupted handler had changed

    def applied_seq(self, act: Activation) -> int:
        """The inbox stream sequence of the last exactly-once message ``act`` applied."""
        own: _Owned | None = act.cluster
        return 0 if own is None else own.seq

    async def save_now(self, act: Activation) -> None:
        """``Agent.save_state()``: persist now whatever the persistence mode says."""
        own: _Owned | None = act.cluster
        if own is None or own.persistence == "none" or own.handed_over:
            return
        try:
            value = StateStore.encode(act.agent.checkpoint(), own.epoch)
        except (TypeError, ValueError) as exc:
            raise HandlerError(f"state cannot be stored: {exc}", agent=act.address) from None
        if value != own.saved:
            await self._save(act, value)

    async def _save(self, act: Activation, value: bytes) -> None:
        own: _Owned = act.cluster
        kind = act.kind
        limit = type(act.agent).max_state_bytes
        plain = value
        value = StateStore.with_extras(plain, own.applied_now(), own.seq)
        if own.lock is None:
            own.lock = asyncio.Lock()
        async with own.lock:
            deadline = time.monotonic() + 10.0
            delay = 0.01
            while True:
                try:
                    own.revision = await self.state.save_encoded(
                        kind, act.agent_id, value, revision=own.revision, max_size=limit
                    )
                    break
                except PayloadTooLarge:
                    self._metrics.state_saves.labels(kind, "too_large").inc()
                    self._rollback(act)
                    raise
                except FencedOff:
                    landed = await self._read_back(act, value)
                    if landed:
                        own.revision = landed
                        break
                    self._metrics.state_saves.labels(kind, "fenced").inc()
                    self._fenced(act)
                    raise Unavailable(
                        f"{act.address} moved to another node; this copy stopped",
                        agent=act.address,
                        details={"retry": True},
                    ) from None
                except (CallTimeout, TransportError) as exc:
                    if isinstance(exc, MeshClosed) or time.monotonic() > deadline:
                        self._metrics.state_saves.labels(kind, "failed").inc()
                        self._rollback(act)
                        raise Unavailable(
                            f"state of {act.address} could not be saved: {exc}",
                            agent=act.address,
                            details={"retry": True},
                        ) from None
                    landed = await self._read_back(act, value)  # outcome unknown: did it land?
                    if landed:
                        own.revision = landed
                        break
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
            own.saved = plain
            self._metrics.state_saves.labels(kind, "ok").inc()

    async def _read_back(self, act: Activation, value: bytes) -> int:
        """The revision holding ``value`` if our write landed, else 0."""
        for _ in range(3):
            try:
                entry = await self.state.bucket.get(agent_key(act.kind, act.agent_id), timeout=1.0)
            except NatsAgentsError:
                await asyncio.sleep(0.05)
                continue
            return entry.revision if entry is not None and entry.value == value else 0
        return 0

    def _rollback(self, act: Activation) -> None:
        """Put the agent back to its last saved state (an action failed or could not be saved)."""
        own: _Owned = act.cluster
        agent = act.agent
        if type(agent).max_concurrency != 1:
            return  # other handlers may be mid-flight on the same state
        try:
            # Within a batch: back to the state its earlier messages left (not yet stored).
            snapshot = own.pending if own.pending is not None else own.saved
            if snapshot is not None:
                agent.restore(codec.decode(snapshot)["data"])
            elif own.revision == 0:
                agent.state = agent.initial_state()
        except Exception:
            log.exception("rolling back the state of %s failed", act.address)

    def action_failed(self, act: Activation, exc: BaseException) -> None:
        own: _Owned = act.cluster
        if own.persistence == "action":
            self._rollback(act)
        act.errors_in_row += 1
        limit = type(act.agent).restart_after_errors
        if limit and act.errors_in_row >= limit:
            act.errors_in_row = 0
            self._tasks.spawn(self._restart(act, "errors"))

    async def stopped(self, act: Activation, *, discard: bool) -> None:
        """Final save (unless discarded) and release of the claim."""
        own: _Owned | None = act.cluster
        if own is None:
            return
        self._release(own)
        if own.handed_over:
            return
        if not discard and own.persistence != "none":
            try:
                value = StateStore.encode(act.agent.checkpoint(), own.epoch)
                if value != own.saved:
                    await self._save(act, value)
            except (AgentError, TypeError, ValueError) as exc:
                log.warning("final save of %s failed: %s", act.address, exc)
                if isinstance(exc, Unavailable) and exc.details.get("retry") and own.handed_over:
                    return
        with contextlib.suppress(NatsAgentsError):
            await self.directory.release(own.claim)

    def _release(self, own: _Owned) -> None:
        """Give back the resources reserved for one activation (once)."""
        if own.needs != Resources():
            self.reserved = self.reserved.remaining(own.needs)
            own.needs = Resources()
            self._announce()

    def _fenced(self, act: Activation) -> None:
        own: _Owned = act.cluster
        if own.handed_over:
            return
        own.handed_over = True  # not ours any more: no final save, no release
        self._metrics.fenced.labels(act.kind).inc()
        self._tasks.spawn(self._host.discard(act))

    def _on_directory_change(self, key: tuple[str, str], claim: Claim | None) -> None:
        act = self._host.activations.get(key)
        if act is None or act.cluster is None or key in self._migrating:
            return
        own: _Owned = act.cluster
        if claim is None:
            return  # our own release, or a removal we will notice on the next save
        if claim.revision <= own.claim.revision:
            if claim.revision == own.claim.revision:
                own.claim = claim  # the directory cache's copy of our own write: share it
            return
        if claim.record.node != self.node_id:
            log.warning("%s was taken over by %s (epoch %d)", act.address, claim.record.node, claim.record.epoch)
            self._fenced(act)
        else:
            own.claim = claim

    # -- supervision -----------------------------------------------------------------

    async def _supervise(self) -> None:
        """Every tick: restart hung handlers; after a heartbeat gap longer than the lease
        (paused process, lost connection), verify every claim and stop stale copies."""
        loop = asyncio.get_running_loop()
        tick = min(0.25, self.membership.interval)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            kinds = self._host.kinds.values()
            if any(cls.handler_timeout or cls.unhealthy == "restart" for cls in kinds):
                for act in list(self._host.activations.values()):
                    if act.state is not ActivationState.ACTIVE:
                        continue
                    cls = type(act.agent)
                    limit = cls.handler_timeout
                    if limit and act.busy_since and now - act.busy_since > limit:
                        self._tasks.spawn(self._restart(act, "hung"))
                        continue
                    health = act.health
                    if (
                        cls.unhealthy == "restart"
                        and health is not None
                        and health.unhealthy_since
                        and now - health.unhealthy_since > cls.unhealthy_grace
                    ):
                        health.unhealthy_since = now  # once per grace period, while it restarts
                        self._tasks.spawn(self._restart(act, "unhealthy"))
            last = self.membership.last_beat_ok
            if last and loop.time() - last > self.settings.lease:
                await self._verify_claims()

    async def _verify_claims(self) -> None:
        for key, act in list(self._host.activations.items()):
            own: _Owned | None = act.cluster
            if own is None or key in self._migrating:
                continue
            try:
                current = await self.directory.get(*key)
            except NatsAgentsError:
                return  # still cut off: try again next tick
            if current is None or current.revision != own.claim.revision:
                if current is not None and current.record.node == self.node_id:
                    own.claim = current
                    continue
                self._fenced(act)

    async def _restart(self, act: Activation, reason: str) -> None:
        cls = type(act.agent)
        key = (act.kind, act.agent_id)
        if act.state is not ActivationState.ACTIVE:
            return
        log.warning("restarting %s (%s)", act.address, reason)
        if reason == "hung":
            for task in list(act.workers):
                task.cancel()
        await self._host.stop_activation(act)
        if cls.restart == "temporary":
            return
        now = time.monotonic()
        history = self._restarts.setdefault(key, deque())
        while history and now - history[0] > cls.restart_window:
            history.popleft()
        if len(history) >= cls.max_restarts:
            self._failed[key] = now + cls.restart_window
            log.error("%s exceeded %d restarts in %.0f s: stopped", act.address, cls.max_restarts, cls.restart_window)
            return
        history.append(now)
        self._metrics.restarts.labels(act.kind, reason).inc()
        try:
            await self._host.activate(act.kind, act.agent_id)
        except Exception as exc:
            log.warning("restart of %s failed: %s", act.address, exc)

    # -- migration -------------------------------------------------------------------

    async def migrate_out(self, kind: str, agent_id: str, target: str, strategy: str) -> dict[str, Any]:
        """Move one agent from this node to ``target``; return ``{from, to, pause_ms}``.

        The agent stops taking messages (callers get "no responders", ask for activation
        and are answered once the move is done), finishes its mailbox, runs ``on_stop``,
        is checkpointed per ``strategy``, the directory switches to ``target`` (CAS,
        ``epoch + 1``) and ``target`` restores and subscribes. If the target fails, the
        switch is undone and the agent restarts here.

        Raises:
            AgentNotFound: not active here. Unavailable: target not live, does not host
            the kind, or the move failed (the agent stays here). BadRequest: strategy.
        """
        address = f"{kind}/{agent_id}"
        if strategy not in STRATEGIES:
            raise BadRequest(f"unknown migration strategy {strategy!r}; use one of {STRATEGIES}", agent=address)
        key = (kind, agent_id)
        act = self._host.activations.get(key)
        if act is None or act.state is not ActivationState.ACTIVE or act.cluster is None:
            raise AgentNotFound(f"{address} is not active on {self.node_id}", agent=address)
        if target == self.node_id:
            return {"agent": address, "from": self.node_id, "to": target, "pause_ms": 0.0, "moved": False}
        rec = self.membership.members().get(target)
        if rec is None:
            raise Unavailable(f"node {target} is not a live member", agent=address)
        if kind not in rec.kinds:
            raise Unavailable(f"node {target} does not host kind {kind}", agent=address)
        if key in self._migrating:
            raise Unavailable(f"{address} is already migrating", agent=address, details={"retry": True})
        done = asyncio.Event()
        self._migrating[key] = done
        own: _Owned = act.cluster
        agent = act.agent
        # The inbox stays subscribed until the target subscribed (the stopping copy
        # answers "unavailable, retry"): a queue subscription that goes away while a
        # request is on its way over a route loses that request unless another member
        # of the group exists to take it; the target's reply to "adopt" comes after its
        # subscription, so once it is here the servers know the target.
        inbox, act.subscription = act.subscription, None
        try:
            started = time.perf_counter()
            await self._host.quiesce(act)
            transfer: Transfer | None = None
            if strategy == "state_transfer" or (strategy == "checkpoint_restore" and own.persistence == "none"):
                transfer = Transfer(agent.checkpoint(), own.revision, own.epoch)
            elif strategy == "checkpoint_restore":
                value = StateStore.encode(agent.checkpoint(), own.epoch)
                if value != own.saved:
                    await self._save(act, value)
            try:
                new_claim = await self.directory.handover(own.claim, target)
            except CasConflict:
                own.handed_over = True
                self._release(own)
                raise Unavailable(f"{address} was taken over by another node during the move", agent=address) from None
            own.handed_over = True
            body = adopt_request(
                kind,
                agent_id,
                strategy=strategy,
                min_revision=own.revision,
                claim_revision=new_claim.revision,
                needs=own.needs,
                recent=self._host.dedup.export(act),
                applied=own.applied_now() if own.applied else None,
                seq=own.seq,
                transfer=transfer,
            )
            try:
                await self.request_node(target, "adopt", body, ADOPT_WAIT)
            except Exception as exc:
                await self._take_back(act, new_claim, own, exc)
                self._metrics.migrations.labels(kind, strategy, "failed").inc()
                raise Unavailable(f"migration of {address} to {target} failed: {exc}", agent=address) from None
            pause = time.perf_counter() - started
            self._release(own)
            self._metrics.migrations.labels(kind, strategy, "ok").inc()
            self._metrics.migration_pause.labels(kind).observe(pause)
            return {"agent": address, "from": self.node_id, "to": target, "pause_ms": pause * 1000, "moved": True}
        finally:
            if inbox is not None:
                with contextlib.suppress(NatsAgentsError):
                    await inbox.drain()
            done.set()
            self._migrating.pop(key, None)

    async def _take_back(self, act: Activation, handed: Claim, own: _Owned, why: BaseException) -> None:
        log.warning("migration of %s failed (%s): taking it back", act.address, why)
        needs = own.needs
        self._release(own)
        try:
            back = await self.directory.handover(handed, self.node_id)
        except CasConflict:
            return  # the target did take it (its answer was lost)
        ask = ActivationAsk(act.agent_id, spawn=True, needs=needs)
        ask.transfer = Transfer(act.agent.checkpoint(), own.revision, back.record.epoch)
        ask.claim_revision = back.revision
        ask.recent = self._host.dedup.export(act)
        ask.applied = tuple(own.applied_now())
        ask.seq = own.seq
        await self._host.activate(act.kind, act.agent_id, ask)

    async def adopt(self, body: object) -> dict[str, Any]:
        """Migration target: restore the agent handed over to this node."""
        kind, ask = parse_adopt(body)
        if kind not in self._host.kinds:
            raise Unavailable(f"node {self.node_id} does not host {kind}")
        await self._host.activate(kind, ask.agent_id, ask)
        return {"node": self.node_id}

    async def drain(self) -> dict[str, Any]:
        """Stop taking new agents and move every agent here to other nodes (stop those
        no node can take). Returns counts."""
        self.draining = True
        with contextlib.suppress(NatsAgentsError):
            await self.membership.beat_now()
        acts = [a for a in self._host.activations.values() if a.state is ActivationState.ACTIVE]
        moved, stopped = await self._move_all(acts, self.settings.rebalance_strategy)
        return {"node": self.node_id, "moved": moved, "stopped": stopped}

    async def _move_all(self, acts: list[Activation], strategy: str) -> tuple[int, int]:
        moved = stopped = 0
        gate = asyncio.Semaphore(8)

        async def one(act: Activation) -> None:
            nonlocal moved, stopped
            async with gate:
                if act.state is not ActivationState.ACTIVE:
                    return
                target = None
                with contextlib.suppress(ClusterAtCapacity):
                    target = self.placer.choose(
                        act.kind,
                        act.address,
                        [n for n in self.nodes() if n.node_id != self.node_id],
                        needs=act.cluster.needs if act.cluster is not None else self._needs(act.kind),
                        load_factor=self.settings.load_factor,
                    )
                if target is not None:
                    try:
                        await self.migrate_out(act.kind, act.agent_id, target, strategy)
                        moved += 1
                        return
                    except AgentError as exc:
                        log.warning("could not move %s to %s: %s", act.address, target, exc)
                if act.state is ActivationState.ACTIVE:
                    await self._host.stop_activation(act)
                    stopped += 1

        await asyncio.gather(*(one(a) for a in acts))
        return moved, stopped

    # -- control requests ------------------------------------------------------------

    def _on_control(self, msg: Inbound) -> None:
        self._tasks.spawn(self._control(msg))

    async def _control(self, msg: Inbound) -> None:
        op = msg.subject.rsplit(".", 1)[-1]
        result: Any
        try:
            body = codec.decode(msg.data) if msg.data else {}
            if op == "activate":
                if not isinstance(body, dict):
                    raise BadRequest("activate body must be a map")
                kind = validate_kind(body.get("kind"))
                ask = parse_ask(body, default_timeout=self.settings.queue_timeout)
                ask.placed = body.get("placed") is True
                try:
                    result = {"node": await self.activate_here(kind, ask)}
                except AgentError:
                    raise
                except Exception as exc:
                    raise self._start_error(f"{kind}/{ask.agent_id}", exc) from None
            elif op == "info":
                result = self.info()
            elif op == "migrate":
                if not isinstance(body, dict):
                    raise BadRequest("migrate body must be a map")
                result = await self.migrate_out(
                    _str(body, "kind"), _str(body, "id"), _str(body, "to"), body.get("strategy", "checkpoint_restore")
                )
            elif op == "adopt":
                result = await self.adopt(body)
            elif op == "drain":
                result = await self.drain()
            else:
                raise BadRequest(f"unknown node operation {op!r}")
        except AgentError as exc:
            await self._answer(msg, error=exc)
            return
        except (ValueError, ProtocolError, ConfigurationError) as exc:
            await self._answer(msg, error=BadRequest(str(exc)))
            return
        except Exception as exc:
            log.exception("node operation %s failed", op)
            await self._answer(msg, error=self._start_error("", exc))
            return
        await self._answer(msg, result=result)

    def info(self) -> dict[str, Any]:
        """This node's own view: record fields, agents, queued placements, leadership,
        and the agents throttled now (``unhealthy``: address → ``backlog``/``latency``)."""
        out = self.describe()
        out["node"] = self.node_id
        out["leader"] = self._leader.is_leader if self._leader is not None else False
        out["queued"] = sorted(self._queued)
        out["agents"] = self._host.active()
        out["unhealthy"] = self._host.unhealthy()
        return out

    async def _answer(self, msg: Inbound, *, result: Any = None, error: AgentError | None = None) -> None:
        await answer(self._t, msg, result=result, error=error)

    # -- the leader's controller -----------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leader is not None and self._leader.is_leader

    async def _lead(self) -> None:
        """While leading: re-place permanent agents of dead nodes at once, drop temporary
        ones, and rebalance when the topology changes (at ``rebalance_rate``)."""
        # Scans are O(agents): run them when membership changes, after moves, and every
        # `_RECHECK` seconds for drift, not on every tick.
        tick = min(0.25, self.membership.interval)
        last_live: frozenset[str] | None = None
        last_topology: frozenset[str] | None = None
        orphans_at = settled_at = rebalance_at = size_checked_at = 0.0
        last_size = -1
        pending = True
        loop = asyncio.get_running_loop()
        while True:
            live = self.membership.members()
            now = loop.time()
            live_ids = frozenset(live)
            if live_ids != last_live or now >= orphans_at:
                last_live = live_ids
                found = await self._replace_orphans(live)
                orphans_at = now + (2.0 if found else _RECHECK)
            topology = frozenset(n for n, r in live.items() if not r.draining)
            if topology != last_topology:
                last_topology = topology
                settled_at = now + self.membership.interval  # let heartbeats settle
                pending = True
            size = len(self.directory)
            if now >= rebalance_at or (size != last_size and now >= size_checked_at):
                # Periodically, and (at most once a second) when agents came or went.
                pending = True
                last_size, size_checked_at = size, now + 1.0
                if now >= rebalance_at:
                    rebalance_at = now + _RECHECK
            if self.settings.rebalance and pending and now >= settled_at:
                pending = await self._rebalance_round(live) > 0
            await self.membership.changed(tick)

    async def _replace_orphans(self, live: Mapping[str, MemberRecord]) -> int:
        work = []
        for claim in self.directory.claims():
            rec = claim.record
            if rec.node in live or rec.node == self.node_id:
                continue
            if rec.restart == "permanent":
                work.append(self._respawn(claim))
            elif rec.restart == "temporary":
                work.append(self._drop(claim))
        if work:
            await asyncio.gather(*work)
        return len(work)

    async def _respawn(self, claim: Claim) -> None:
        rec = claim.record
        ask = ActivationAsk(rec.agent_id, spawn=True, deadline=time.time() + 10.0)
        with contextlib.suppress(ConfigurationError):
            ask.needs = Resources.from_wire(rec.needs) if rec.needs else None
            ask.hints = Hints.from_wire(rec.hints)
        try:
            node = await self.place_and_activate(rec.kind, ask)
            log.info("re-placed permanent %s on %s", rec.address, node)
        except (AgentError, NatsAgentsError) as exc:
            log.warning("could not re-place %s: %s", rec.address, exc)

    async def _drop(self, claim: Claim) -> None:
        with contextlib.suppress(NatsAgentsError):
            await self.directory.remove(claim)

    async def _rebalance_round(self, live: Mapping[str, MemberRecord]) -> int:
        """One batch of moves (at most ``rebalance_rate`` per second); returns how many."""
        by_kind: dict[str, dict[str, str]] = {}
        pinned: set[str] = set()
        for claim in self.directory.claims():
            rec = claim.record
            by_kind.setdefault(rec.kind, {})[rec.address] = rec.node
            if rec.hints.get("pin"):
                pinned.add(rec.address)
        budget = max(1, math.ceil(self.settings.rebalance_rate * min(0.25, self.membership.interval)))
        moves = []
        for kind, assignment in sorted(by_kind.items()):
            weights = {n: r.weight for n, r in live.items() if kind in r.kinds and not r.draining and r.weight > 0}
            moves.extend(plan_moves(assignment, weights, pinned=pinned, imbalance=self.settings.imbalance))
        if not moves:
            return 0
        gate = asyncio.Semaphore(4)

        async def one(move: Any) -> None:
            kind, _, agent_id = move.agent.partition("/")
            async with gate:
                try:
                    await self.request_node(
                        move.source,
                        "migrate",
                        {"kind": kind, "id": agent_id, "to": move.target, "strategy": self.settings.rebalance_strategy},
                        15.0,
                    )
                except (AgentError, NatsAgentsError) as exc:
                    log.info("rebalance move %s %s→%s skipped: %s", move.agent, move.source, move.target, exc)
                finally:
                    self.moves_in_flight -= 1

        started = asyncio.get_running_loop().time()
        self.moves_in_flight += len(moves[:budget])
        await asyncio.gather(*(one(m) for m in moves[:budget]))
        # At most `rebalance_rate` moves per second.
        spent = asyncio.get_running_loop().time() - started
        await asyncio.sleep(max(0.0, budget / self.settings.rebalance_rate - spent))
        return len(moves[:budget])


def _str(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name!r} must be a non-empty string")
    return value


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return min(1.0, max(0.0, float(value)))


async def _sleep(delay: float, deadline: float) -> None:
    await asyncio.sleep(max(0.0, min(delay, deadline - time.time())))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("natsagents")
    except PackageNotFoundError:
        return "0"
