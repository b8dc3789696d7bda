"""The ``Agent`` base class and the ``@action`` decorator."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar, overload

from ..crdt.resolve import Sibling
from ..errors import ActionDefinitionError, ConfigurationError
from ..wire.envelope import ACTION_RE
from ..wire.ids import validate_kind
from .context import Context, current_context
from .policy import AllowSpec, Policy, parse_allow
from .ref import AgentRef
from .schema import ActionSpec, build_action_spec

__all__ = [
    "CONFLICT_RULES",
    "CONSISTENCY_MODES",
    "CRDT_PARTITION_STRATEGY",
    "EXACTLY_ONCE_CONSISTENCY",
    "PARTITION_STRATEGIES",
    "SUPPORTED_CONSISTENCY",
    "SUPPORTED_PARTITION_STRATEGIES",
    "Agent",
    "RefFactory",
    "action",
    "kind_summary",
]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C")


class RefFactory(Protocol):
    """Makes refs that call as a given agent (the mesh gives one to each agent)."""

    def ref(self, target: str | type[Agent], agent_id: str | None = None) -> AgentRef: ...


_ACTION_ATTR = "__natsagents_action__"
_RESERVED_ACTIONS = frozenset(
    {
        "on_start",
        "on_stop",
        "initial_state",
        "ref",
        "context",
        "checkpoint",
        "restore",
        "save_state",
        "mutate",
        "replica",
        "resolve",
        "merge_states",
    }
)
PERSISTENCE_MODES = ("action", "manual", "none")
RESTART_POLICIES = ("permanent", "transient", "temporary")
UNHEALTHY_POLICIES = ("throttle", "restart")


#: ``consistency`` values a kind may declare (docs/consistency.md).
CONSISTENCY_MODES = ("strong", "eventual", "session", "crdt")
#: Those this version serves; the others are refused when hosted (``NotSupportedYet``).
SUPPORTED_CONSISTENCY = ("strong", "eventual", "session", "crdt")
#: Those that may have read replicas (``read_replicas``).
REPLICA_CONSISTENCY = ("eventual", "session")
#: Most read replicas a kind may ask for.
MAX_READ_REPLICAS = 16
#: Those that can keep ``exactly_once`` delivery (its sequence is stored with the state
#: before the reply).
EXACTLY_ONCE_CONSISTENCY = ("strong", "session")
#: ``partition_strategy`` values a kind may declare (docs/consistency.md, "Partitions").
PARTITION_STRATEGIES = ("pause_minority", "continue_degraded", "split_brain_allowed")
#: Those this version serves; the others are refused when hosted (``NotSupportedYet``).
SUPPORTED_PARTITION_STRATEGIES = ("pause_minority", "continue_degraded", "split_brain_allowed")
#: The ``partition_strategy`` of a ``crdt`` kind: it keeps serving on every side (set for it
#: when the kind names none; any other value is refused when the class is defined).
CRDT_PARTITION_STRATEGY = "split_brain_allowed"
#: Modes that may keep two writers through a partition (``split_brain_allowed``): strong
#: means never two writers, and a session's read-your-writes needs one line of versions.
SPLIT_BRAIN_CONSISTENCY = ("eventual", "crdt")
#: Named ``conflict_resolution`` rules (or any callable, called like ``Agent.resolve``).
CONFLICT_RULES = ("last_write_wins", "vector_clock", "merge")


def kind_summary(cls: type[Agent]) -> dict[str, str]:
    """What an operator sees of a kind's declared behaviour, as strings: the services API's
    endpoint metadata and stats ``data`` (docs/protocol.md §16), the dashboard's kinds table.
    ``read_only``: the read-only actions, comma-separated (empty: none)."""
    return {
        "consistency": cls.consistency,
        "persistence": cls.persistence,
        "restart": cls.restart,
        "max_concurrency": str(cls.max_concurrency),
        "read_only": ",".join(sorted(name for name, spec in cls.__actions__.items() if spec.read_only)),
        "read_replicas": str(cls.read_replicas),
        "partition_strategy": cls.partition_strategy,
    }


class _ActionMark:
    __slots__ = ("allow", "bulkhead", "idempotent", "name", "read_only")

    def __init__(
        self, name: str | None, idempotent: bool, bulkhead: int | None, allow: Policy | None, read_only: bool
    ) -> None:
        self.name = name
        self.idempotent = idempotent
        self.bulkhead = bulkhead
        self.allow = allow
        self.read_only = read_only


@overload
def action(func: F, /) -> F: ...
@overload
def action(
    *,
    name: str | None = None,
    idempotent: bool = False,
    bulkhead: int | None = None,
    allow: AllowSpec = None,
    read_only: bool = False,
) -> Callable[[F], F]: ...


def action(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    idempotent: bool = False,
    bulkhead: int | None = None,
    allow: AllowSpec = None,
    read_only: bool = False,
) -> F | Callable[[F], F]:
    """Mark an ``async def`` method of an :class:`Agent` as callable over the mesh.

    Parameters are validated against their type hints for every message; the class
    definition fails with :class:`~natsagents.ActionDefinitionError` (a ``TypeError``)
    if the method is malformed.

    Args:
        name: wire name of the action (default: the method name).
        idempotent: running it twice has the effect of running it once, so callers may
            retry it automatically.
        bulkhead: at most this many handlers of this action run at once on one host,
            over all agents of the kind (beyond it: ``Overloaded``, or a wait when the
            kind sets ``bulkhead_wait``); ``None``: no own limit.
        allow: who may call it (``natsagents.agent.policy``): a list of verified caller
            names, ``"role:<role>"``, ``"key:<public nkey>"`` and ``"*"`` (any verified
            caller), or ``"anyone"``; ``None`` (default): the kind's ``allow``. Others get
            ``Unauthorized`` before the handler runs.
        read_only: the action only reads ``self.state``. Read-only actions of one agent may
            run at the same time as each other (up to the kind's ``read_concurrency``); an
            action that is not read-only waits until they finished and runs alone, and a
            waiting one is never overtaken by later reads (FIFO). Nothing is stored after
            a read-only action; on a cluster node, one that changed the state anyway fails
            with ``HandlerError`` and the state goes back to the last acknowledged one
            (docs/consistency.md). Applies to kinds with ``max_concurrency = 1``.
    """
    if not isinstance(read_only, bool):
        raise ActionDefinitionError(f"@action(read_only=...) must be a bool, not {read_only!r}")
    if bulkhead is not None and (type(bulkhead) is not int or bulkhead < 1):
        raise ActionDefinitionError(f"@action(bulkhead=...) must be an int >= 1 or None, not {bulkhead!r}")
    try:
        policy = parse_allow(allow, "@action")
    except ConfigurationError as exc:
        raise ActionDefinitionError(str(exc)) from None

    def mark(f: F) -> F:
        if not callable(f):
            raise ActionDefinitionError(f"@action applies to methods, not {type(f).__name__}")
        setattr(f, _ACTION_ATTR, _ActionMark(name, idempotent, bulkhead, policy, read_only))
        return f

    if func is not None:
        return mark(func)
    return mark


def _check_cluster_options(cls: type[Agent]) -> None:
    name = cls.__qualname__
    if cls.persistence not in PERSISTENCE_MODES:
        raise ActionDefinitionError(f"{name}.persistence must be one of {PERSISTENCE_MODES}, not {cls.persistence!r}")
    if cls.restart not in RESTART_POLICIES:
        raise ActionDefinitionError(f"{name}.restart must be one of {RESTART_POLICIES}, not {cls.restart!r}")
    for option in ("max_restarts", "restart_after_errors"):
        value = getattr(cls, option)
        if type(value) is not int or value < 0:
            raise ActionDefinitionError(f"{name}.{option} must be an int >= 0, not {value!r}")
    if cls.unhealthy not in UNHEALTHY_POLICIES:
        raise ActionDefinitionError(f"{name}.unhealthy must be one of {UNHEALTHY_POLICIES}, not {cls.unhealthy!r}")
    for option, allow_none in (
        ("restart_window", False),
        ("handler_timeout", True),
        ("max_state_bytes", True),
        ("throttle_latency", True),
        ("unhealthy_grace", False),
        ("idle_timeout", True),
    ):
        value = getattr(cls, option)
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ActionDefinitionError(f"{name}.{option} must be a positive number, not {value!r}")
    if not isinstance(cls.resources, Mapping):
        raise ActionDefinitionError(f"{name}.resources must be a mapping, not {cls.resources!r}")
    if cls.idle_timeout is not None and cls.restart == "permanent":
        raise ActionDefinitionError(f"{name}: a permanent agent always runs, so it takes no idle_timeout")
    _check_consistency(cls)


def _check_consistency(cls: type[Agent]) -> None:
    name = cls.__qualname__
    if cls.consistency not in CONSISTENCY_MODES:
        raise ActionDefinitionError(f"{name}.consistency must be one of {CONSISTENCY_MODES}, not {cls.consistency!r}")
    interval = cls.flush_interval
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval <= 60:
        raise ActionDefinitionError(f"{name}.flush_interval must be a number of seconds in (0, 60], not {interval!r}")
    if cls.consistency == "eventual" and cls.persistence != "action":
        raise ActionDefinitionError(
            f"{name}: consistency = 'eventual' stores the state behind the replies of actions, so it needs "
            f"persistence = 'action', not {cls.persistence!r}"
        )
    if cls.partition_strategy not in PARTITION_STRATEGIES:
        raise ActionDefinitionError(
            f"{name}.partition_strategy must be one of {PARTITION_STRATEGIES}, not {cls.partition_strategy!r}"
        )
    if cls.consistency == "crdt":
        _check_crdt(cls)
    _check_conflicts(cls)
    readers = cls.read_concurrency
    if type(readers) is not int or readers < 1:
        raise ActionDefinitionError(f"{name}.read_concurrency must be an int >= 1, not {readers!r}")
    if cls.consistency == "session" and cls.persistence != "action":
        raise ActionDefinitionError(
            f"{name}: consistency = 'session' stores the state before each reply and versions it, so it "
            f"needs persistence = 'action', not {cls.persistence!r}"
        )
    replicas = cls.read_replicas
    if type(replicas) is not int or not 0 <= replicas <= MAX_READ_REPLICAS:
        raise ActionDefinitionError(
            f"{name}.read_replicas must be an int in [0, {MAX_READ_REPLICAS}], not {replicas!r}"
        )
    if replicas and cls.consistency not in REPLICA_CONSISTENCY:
        raise ActionDefinitionError(
            f"{name}: read_replicas needs consistency 'eventual' or 'session', not {cls.consistency!r} "
            "(a strong read must come from the one copy under its lease; docs/consistency.md)"
        )
    wait = cls.session_wait
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 10:
        raise ActionDefinitionError(f"{name}.session_wait must be a number of seconds in [0, 10], not {wait!r}")


def _check_crdt(cls: type[Agent]) -> None:
    """A ``crdt`` kind: multi-active, its state stored by merging (docs/consistency.md)."""
    name = cls.__qualname__
    if cls.persistence != "action":
        raise ActionDefinitionError(
            f"{name}: consistency = 'crdt' merges the state into its record behind the replies of actions, "
            f"so it needs persistence = 'action', not {cls.persistence!r}"
        )
    declared = any("partition_strategy" in c.__dict__ for c in cls.__mro__ if c is not Agent)
    if not declared:
        cls.partition_strategy = CRDT_PARTITION_STRATEGY  # serves on every side: the point of it
    elif cls.partition_strategy != CRDT_PARTITION_STRATEGY:
        raise ActionDefinitionError(
            f"{name}: a crdt kind keeps serving on every side of a partition and merges at the heal: "
            f"partition_strategy must be {CRDT_PARTITION_STRATEGY!r} (or left unset), not {cls.partition_strategy!r}"
        )


def _check_conflicts(cls: type[Agent]) -> None:
    name = cls.__qualname__
    if cls.partition_strategy == "split_brain_allowed" and cls.consistency not in SPLIT_BRAIN_CONSISTENCY:
        why = (
            "strong means never two writers"
            if cls.consistency == "strong"
            else "a session's versions must form one line"
        )
        raise ActionDefinitionError(
            f"{name}: partition_strategy = 'split_brain_allowed' keeps two writers through a partition; "
            f"it needs consistency 'eventual' (or 'crdt'), not {cls.consistency!r} ({why})"
        )
    rule = cls.conflict_resolution
    if callable(rule):
        return
    if rule not in CONFLICT_RULES:
        raise ActionDefinitionError(
            f"{name}.conflict_resolution must be one of {CONFLICT_RULES} or a callable, not {rule!r}"
        )
    needs = {"vector_clock": "resolve", "merge": "merge_states"}.get(rule)
    if needs is not None and getattr(cls, needs) is getattr(Agent, needs):
        raise ActionDefinitionError(
            f"{name}: conflict_resolution = {rule!r} needs the agent to define {needs}() (docs/consistency.md)"
        )


class Agent:
    """Base class of agents (actors).

    Subclass it, define ``@action`` methods, and host the class on a mesh. One instance
    exists per ``kind/id`` while the agent is active; it handles its mailbox one message
    at a time unless ``max_concurrency`` says otherwise.

    Class options:
        kind: wire name of the kind (default: the class name).
        mailbox_size: messages that may wait for the agent; beyond it callers get
            ``Overloaded`` at once.
        max_concurrency: messages handled at the same time (1 = actor semantics).
        activate_on_demand: a message to an inactive agent activates it (virtual actor);
            ``False`` means only ``spawn`` creates it and calls get ``AgentNotFound``.
        bulkhead: at most this many handlers of this kind run at once on one host, over
            all its agents, so one hot kind cannot take every worker (``None``: no limit).
            Beyond it a message is refused with ``Overloaded`` (reason ``bulkhead``), or
            waits for a slot until its deadline when ``bulkhead_wait`` is true.
        throttle_backlog: waiting messages at which the agent counts as congested and new
            ones are refused with ``Overloaded`` (reason ``backlog``) until half have run
            (``None``: only ``mailbox_size`` limits). See ``runtime.health``.
        throttle_latency: seconds of average handler time above which the agent counts
            as slow and admits a message only when a worker is free (``Overloaded``,
            reason ``latency``); ``None``: off.
        idle_timeout: seconds without a message after which the host deactivates the
            agent, as :meth:`Mesh.deactivate` does (``on_stop``; a cluster node stores its
            state and releases it; its next message activates it again). Bounds the
            memory of kinds with many short-lived ids. ``None`` (default): never.

    Cluster options (used when the mesh runs as a cluster node, ``Mesh.connect(cluster=…)``):
        persistence: when ``self.state`` is saved to the replicated store: ``"action"``
            (after every action that changed it, before the reply; default), ``"manual"``
            (only ``await self.save_state()``, on stop and on migration) or ``"none"``
            (never: the state lives and dies with the activation).
        max_state_bytes: largest encoded state; a bigger one fails the action with
            ``PayloadTooLarge`` and the state rolls back (default: the store's limit).
        restart: ``"permanent"`` (re-activated at once elsewhere when its node dies, and
            restarted when unhealthy), ``"transient"`` (re-activated by its next message,
            restarted when unhealthy; default) or ``"temporary"`` (never restarted: when
            its node dies its directory record is removed).
        max_restarts, restart_window: at most this many supervised restarts in this many
            seconds; beyond it the agent is stopped and refused until the window passes.
        restart_after_errors: consecutive handler errors that count as unhealthy
            (0: errors never restart the agent).
        handler_timeout: seconds a handler may run before the agent counts as hung and is
            restarted (``None``: no limit).
        unhealthy: what a node does with an agent congested or slow (see the throttle
            options) for ``unhealthy_grace`` seconds: ``"throttle"`` (keep throttling;
            default) or ``"restart"`` (a supervised restart, counted in ``max_restarts``).
        resources: what one agent reserves on its node, ``{"cpu": cores, "memory": bytes,
            "custom": {name: amount}}``; placement only picks nodes with that much free.

    Consistency (docs/consistency.md):
        consistency: ``"strong"`` (default: one activation, the state is stored by
            compare-and-set before each reply) or ``"eventual"`` (one activation, the reply
            does not wait: changes are coalesced and stored within ``flush_interval``, and a
            crash loses at most that window) or ``"session"`` (writes as strong; every reply
            carries the state version, and reads served by replicas are never older than
            what the caller's session saw) or ``"crdt"`` (multi-active: ``initial_state()``
            returns a CRDT of ``natsagents.crdt``; every node that serves the agent holds a
            copy that answers at once and ships its deltas with :meth:`mutate`; copies merge,
            on every side of a partition). ``exactly_once`` delivery needs ``"strong"`` or
            ``"session"``.
        read_replicas: eventual and session kinds: read-only copies of each active agent
            on this many other nodes, fed by a watch of its stored state, that serve its
            ``@action(read_only=True)`` actions beside the primary (default 0).
        session_wait: seconds a replica behind a session's minimum version waits for
            its watch before it forwards the read to the primary (default 0.2).
        flush_interval: eventual only: seconds within which a change is stored (a bound).
        partition_strategy: what the kind's agents do on a node cut off from the
            majority (docs/consistency.md, "Partitions"): ``"pause_minority"`` (default:
            they answer nothing but ``PartitionError`` there; the majority takes them over
            after their lease); ``"continue_degraded"`` (they serve read-only actions from
            their last known state, flagged degraded, and queue other actions on the
            node's disk, replayed after the heal: a cluster node needs
            ``ClusterSettings(data_dir=…)``); or ``"split_brain_allowed"`` (eventual kinds:
            both sides keep serving; at the heal the two lines of state are reconciled by
            ``conflict_resolution``; a crdt kind is ``"split_brain_allowed"``, set when it
            names none).
        conflict_resolution: how concurrent versions of an eventual kind's state are
            reconciled (a split brain, a stale copy's late flush): ``"last_write_wins"``
            (default; the newest hybrid-logical-clock timestamp, node id breaking ties; the
            overwritten changes are counted and logged), ``"vector_clock"`` (the agent's
            :meth:`resolve` gets every sibling), ``"merge"`` (the agent's
            :meth:`merge_states`), or a callable called like :meth:`resolve`.
        read_concurrency: read-only actions (``@action(read_only=True)``) of one agent
            that may run at once.

    Access:
        allow: who may call the kind's actions that set no ``allow`` of their own (see
            ``@action(allow=…)``); ``None`` (default): the hosting mesh's
            ``default_allow``, which admits anyone unless set.
    """

    kind: ClassVar[str] = "Agent"
    mailbox_size: ClassVar[int] = 1024
    max_concurrency: ClassVar[int] = 1
    activate_on_demand: ClassVar[bool] = True
    persistence: ClassVar[str] = "action"
    max_state_bytes: ClassVar[int | None] = None
    restart: ClassVar[str] = "transient"
    idle_timeout: ClassVar[float | None] = None
    max_restarts: ClassVar[int] = 3
    restart_window: ClassVar[float] = 60.0
    restart_after_errors: ClassVar[int] = 0
    handler_timeout: ClassVar[float | None] = None
    bulkhead: ClassVar[int | None] = None
    bulkhead_wait: ClassVar[bool] = False
    throttle_backlog: ClassVar[int | None] = None
    throttle_latency: ClassVar[float | None] = None
    unhealthy: ClassVar[str] = "throttle"
    unhealthy_grace: ClassVar[float] = 10.0
    resources: ClassVar[Mapping[str, Any]] = {}
    consistency: ClassVar[str] = "strong"
    flush_interval: ClassVar[float] = 0.2
    partition_strategy: ClassVar[str] = "pause_minority"
    conflict_resolution: ClassVar[Any] = "last_write_wins"
    read_concurrency: ClassVar[int] = 64
    read_replicas: ClassVar[int] = 0
    session_wait: ClassVar[float] = 0.2
    allow: ClassVar[AllowSpec] = None
    __actions__: ClassVar[dict[str, ActionSpec]] = {}
    #: ``allow`` compiled (``None``: not set).
    __policy__: ClassVar[Policy | None] = None
    #: Wire names of the read-only actions, when they run beside each other (the kind has
    #: some and ``max_concurrency == 1``); ``None`` otherwise.
    __readers__: ClassVar[frozenset[str] | None] = None

    id: str
    state: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            cls.kind = cls.__name__
        try:
            validate_kind(cls.kind)
        except ConfigurationError as exc:
            raise ActionDefinitionError(f"agent class {cls.__qualname__}: {exc}") from None
        for option in ("mailbox_size", "max_concurrency"):
            value = getattr(cls, option)
            if type(value) is not int or value < 1:
                raise ActionDefinitionError(f"{cls.__qualname__}.{option} must be an int >= 1, not {value!r}")
        for option in ("bulkhead", "throttle_backlog"):
            value = getattr(cls, option)
            if value is not None and (type(value) is not int or value < 1):
                raise ActionDefinitionError(f"{cls.__qualname__}.{option} must be an int >= 1 or None, not {value!r}")
        if not isinstance(cls.bulkhead_wait, bool):
            raise ActionDefinitionError(f"{cls.__qualname__}.bulkhead_wait must be a bool, not {cls.bulkhead_wait!r}")
        backlog = cls.throttle_backlog
        if backlog is not None and (type(backlog) is not int or backlog < 1):
            raise ActionDefinitionError(
                f"{cls.__qualname__}.throttle_backlog must be an int >= 1 or None, not {backlog!r}"
            )
        _check_cluster_options(cls)
        try:
            cls.__policy__ = parse_allow(cls.allow, f"{cls.__qualname__}.allow")
        except ConfigurationError as exc:
            hint = ""
            if callable(cls.allow):
                hint = " (an action method named 'allow' hides it: rename the method and use @action(name='allow'))"
            raise ActionDefinitionError(f"{exc}{hint}") from None
        actions: dict[str, ActionSpec] = {}
        for base in reversed(cls.__mro__[1:]):
            actions.update(getattr(base, "__actions__", {}))
        for attr, value in cls.__dict__.items():
            mark = getattr(value, _ACTION_ATTR, None)
            if not isinstance(mark, _ActionMark):
                continue
            wire_name = mark.name or attr
            if wire_name in _RESERVED_ACTIONS or wire_name.startswith("_"):
                raise ActionDefinitionError(f"{cls.__qualname__}.{attr}: action name {wire_name!r} is reserved")
            if not ACTION_RE.fullmatch(wire_name):
                raise ActionDefinitionError(
                    f"{cls.__qualname__}.{attr}: action name {wire_name!r} cannot travel in Na-Action: "
                    "use 1-64 characters [A-Za-z0-9_], starting with a letter"
                )
            try:
                actions[wire_name] = build_action_spec(
                    wire_name,
                    value,
                    idempotent=mark.idempotent,
                    bulkhead=mark.bulkhead,
                    allow=mark.allow,
                    read_only=mark.read_only,
                )
            except TypeError as exc:
                raise ActionDefinitionError(str(exc)) from None
        cls.__actions__ = actions
        readers = frozenset(n for n, spec in actions.items() if spec.read_only)
        cls.__readers__ = readers if readers and cls.max_concurrency == 1 else None

    # Set by the runtime before on_start. The ref factory and the logger are made on first
    # use: a node may hold 100k agents, most of which never log or call anyone.
    _refs_for: Callable[[str], RefFactory]
    _refs: RefFactory | None = None
    _logger: logging.LoggerAdapter[logging.Logger] | None = None
    _activation: Any = None  # the runtime's Activation (save_state goes through it)
    # crdt kinds: this copy's replica id (set by the cluster node) and the deltas of the
    # running action (``mutate``), which the node ships after it.
    _replica: str | None = None
    _deltas: list[Any] | None = None

    def _bind(self, agent_id: str, refs_for: Callable[[str], RefFactory], activation: Any = None) -> None:
        self.id = agent_id
        self._refs_for = refs_for
        self._activation = activation
        self.state = self.initial_state()

    @property
    def address(self) -> str:
        """``Kind/id`` of this agent."""
        return f"{self.kind}/{self.id}"

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records name this agent (and the correlation id, see observability)."""
        logger = self._logger
        if logger is None:
            logger = self._logger = logging.LoggerAdapter(
                logging.getLogger(f"natsagents.agent.{self.kind}"), {"agent": self.address}
            )
        return logger

    @property
    def context(self) -> Context:
        """The context of the message being handled.

        Raises:
            RuntimeError: called outside a handler.
        """
        ctx = current_context()
        if ctx is None:
            raise RuntimeError("no message is being handled in this task")
        return ctx

    def ref(self, target: str | type[Agent], agent_id: str | None = None) -> AgentRef:
        """A reference to another agent, calling as this agent (see ``Mesh.ref``)."""
        refs = self._refs
        if refs is None:
            refs = self._refs = self._refs_for(self.address)
        return refs.ref(target, agent_id)

    def initial_state(self) -> Any:
        """State of a newly activated agent (default: an empty dict). A ``crdt`` kind
        returns an empty CRDT of ``natsagents.crdt`` (``PNCounter()``, ``ORMap(ORSet)``…)."""
        return {}

    @property
    def replica(self) -> str:
        """``crdt`` kinds: the replica id this copy writes as (``self.state.increment(
        self.replica, 1)``); one per copy, never shared (docs/consistency.md)."""
        replica = self._replica
        if replica is None:  # a standalone host: one copy per process
            replica = self._replica = f"{self.address}@{uuid.uuid4().hex[:12]}"
        return replica

    def mutate(self, mutation: tuple[C, C]) -> C:
        """``crdt`` kinds: apply a mutation of ``self.state`` (what a CRDT mutator returns,
        ``Mutation(state, delta)``) and ship its delta to the other copies after the
        action: ``self.mutate(self.state.add(self.replica, "x"))``. Returns the new state.
        (Assigning ``self.state`` works too; the whole state is shipped then.)"""
        state, delta = mutation
        self.state = state
        deltas = self._deltas
        if deltas is None:
            self._deltas = [delta]
        else:
            deltas.append(delta)
        return state

    def checkpoint(self) -> Any:
        """What to persist and to ship on migration (default: ``self.state``). Override for
        state that is not plain data; return anything msgpack can encode."""
        return self.state

    def restore(self, data: Any) -> None:
        """Rebuild the agent from what :meth:`checkpoint` returned (default: it becomes
        ``self.state``). Called before ``on_start`` when persisted or shipped state exists."""
        self.state = data

    async def save_state(self) -> None:
        """Persist the state now (with ``persistence = "manual"``; harmless otherwise).

        Raises:
            PayloadTooLarge: the state exceeds the size limit (nothing is written).
            Unavailable: this copy was fenced off (another node owns the agent now).
        """
        if self._activation is not None:
            await self._activation.save_state()

    def resolve(self, siblings: Sequence[Sibling[Any]]) -> Any:
        """``conflict_resolution = "vector_clock"``: the state to keep from concurrent
        versions (``Sibling``: ``value``, ``version``, ``stamp``), given in a canonical order.
        Must be deterministic: every node gets the same siblings and must return the same
        state (use only the siblings, never the clock or this instance's state)."""
        raise NotImplementedError

    def merge_states(self, a: Any, b: Any) -> Any:
        """``conflict_resolution = "merge"``: one state holding both ``a`` and ``b`` (folded
        over the siblings in canonical order). Deterministic, as :meth:`resolve`; a merge
        that is commutative, associative and idempotent (a union, a per-key maximum)
        loses nothing."""
        raise NotImplementedError

    async def on_start(self) -> None:
        """Called after activation, before the first message."""

    async def on_stop(self) -> None:
        """Called when the agent is deactivated (mesh close, stop), after the last message."""
