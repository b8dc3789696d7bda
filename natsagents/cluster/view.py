"""The cluster front a mesh delegates to (node or plain client, and so the CLI): members,
the directory, and the control operations ``migrate``, ``drain`` and ``undrain`` — done by
the mesh's own node when it is the one concerned, by a control request to the right node
otherwise. Control requests of a cluster node's mesh carry the owner key's proof (through
the node); those of a mesh with an ``identity`` its signature (docs/security.md,
"Operator control requests")."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import AgentNotFound, ConfigurationError, NatsAgentsError, Unavailable
from ..transport import NoResponders, Transport
from ..transport.kv import Bucket, open_bucket
from ..wire import codec, envelope
from ..wire import headers as h
from ..wire.identity import Identity, call_expiry
from ..wire.ids import parse_agent_key
from ..wire.subjects import bucket_name, node_subject
from .directory import DirectoryRecord
from .membership import MemberRecord
from .settings import STRATEGIES

__all__ = ["ClusterView", "NodeStatus", "OwnNode"]

_PROTO = envelope.encode_headers({h.PROTO: h.PROTO_VERSION})


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A member as read from the membership bucket; ``live`` compares its last heartbeat
    with this machine's clock (good enough for listing; nodes judge leases themselves)."""

    record: MemberRecord
    live: bool
    age: float


class OwnNode(Protocol):
    """What the mesh's own cluster node (``node.ClusterNode``) does for the view."""

    @property
    def node_id(self) -> str: ...

    def is_local(self, kind: str, agent_id: str) -> bool:
        """Whether the agent has an activation on this node."""
        ...

    async def migrate_out(self, kind: str, agent_id: str, target: str, strategy: str) -> dict[str, Any]: ...

    async def drain(self) -> dict[str, Any]: ...

    async def undrain(self) -> dict[str, Any]: ...

    async def request_node(self, node: str, op: str, body: dict[str, Any], timeout: float) -> Any:
        """A control request to ``node`` with the owner key's proof. Raises: NoResponders."""
        ...


class ClusterView:
    """Reads the membership and directory buckets and sends node control requests.

    Args:
        transport: the mesh's connection.
        prefix: subject prefix.
        node: the mesh's own cluster node, if it is one (it migrates and drains itself
            without a request, and sends the others' through the node).
        identity: signs the control requests of a mesh that is not a node (operators).
    """

    def __init__(
        self, transport: Transport, prefix: str, *, node: OwnNode | None = None, identity: Identity | None = None
    ) -> None:
        self._t = transport
        self.prefix = prefix
        self._node = node
        self._identity = identity
        self._members: Bucket | None = None
        self._directory: Bucket | None = None
        self._lock = asyncio.Lock()

    async def _open(self) -> tuple[Bucket, Bucket]:
        async with self._lock:
            if self._members is None or self._directory is None:
                self._members = await open_bucket(self._t, bucket_name(self.prefix, "members"), history=1)
                self._directory = await open_bucket(self._t, bucket_name(self.prefix, "directory"), history=1)
        return self._members, self._directory

    async def nodes(self) -> list[NodeStatus]:
        """Every member record, by node id; lapsed ones have ``live=False``."""
        members, _ = await self._open()
        out = []
        now = time.time()
        for key in await members.keys():
            entry = await members.get(key)
            if entry is None:
                continue
            try:
                rec = MemberRecord.from_wire(entry.value, key=key)
            except ValueError:
                continue
            # The server's store time when known: a record's own timestamp may be forged.
            age = max(0.0, now - (entry.created if entry.created is not None else rec.heartbeat_at))
            out.append(NodeStatus(rec, age <= rec.lease, age))
        return sorted(out, key=lambda s: s.record.node_id)

    async def agents(self) -> list[DirectoryRecord]:
        """Every directory record, sorted by kind and id."""
        _, directory = await self._open()
        out = []
        for key in await directory.keys():
            try:
                parse_agent_key(key)
            except NatsAgentsError:
                continue
            entry = await directory.get(key)
            if entry is None:
                continue
            try:
                out.append(DirectoryRecord.from_wire(entry.value, key=key))
            except ValueError:
                continue
        return sorted(out, key=lambda r: (r.kind, r.agent_id))

    async def owner(self, kind: str, agent_id: str) -> DirectoryRecord | None:
        from ..wire.ids import agent_key

        _, directory = await self._open()
        entry = await directory.get(agent_key(kind, agent_id))
        if entry is None:
            return None
        try:
            return DirectoryRecord.from_wire(entry.value, key=entry.key)
        except ValueError:
            return None

    async def request(self, node: str, op: str, body: Any, timeout: float) -> Any:
        """A control request to ``node``.

        Raises:
            Unavailable: no such node is running. AgentError subclasses from the node
            (``Unauthorized``: it trusts operators and this request's signer is none).
        """
        try:
            if self._node is not None:
                return await self._node.request_node(node, op, body, timeout)
            subject = node_subject(self.prefix, node, op)
            data = codec.encode(body)
            headers: bytes | dict[str, str] = _PROTO
            if self._identity is not None:
                headers = {h.PROTO: h.PROTO_VERSION, h.MESSAGE_ID: envelope.new_message_id()}
                now = time.time()
                self._identity.sign(subject, headers, data, call_expiry(now + timeout, now))
            msg = await self._t.request(subject, data, headers=headers, timeout=timeout)
        except NoResponders:
            raise Unavailable(f"node {node} is not running") from None
        return envelope.parse_reply(msg.headers, msg.data)

    async def migrate(self, kind: str, agent_id: str, to: str, strategy: str, timeout: float) -> dict[str, Any]:
        """Move the agent to node ``to``: the mesh's own node when the agent is active
        there, else its owner asked by a control request.

        Raises:
            ConfigurationError: an unknown ``strategy``. AgentNotFound: the agent is not
            active anywhere. Unavailable, BadRequest.
        """
        if strategy not in STRATEGIES:
            raise ConfigurationError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
        node = self._node
        if node is not None and node.is_local(kind, agent_id):
            return await node.migrate_out(kind, agent_id, to, strategy)
        rec = await self.owner(kind, agent_id)
        if rec is None:
            raise AgentNotFound(f"{kind}/{agent_id} is not active", agent=f"{kind}/{agent_id}")
        result = await self.request(
            rec.node, "migrate", {"kind": kind, "id": agent_id, "to": to, "strategy": strategy}, timeout
        )
        return dict(result)

    async def drain(self, node: str | None, timeout: float) -> dict[str, Any]:
        """Have ``node`` (``None``: the mesh's own node) move all its agents away and take
        no new ones.

        Raises:
            ConfigurationError: ``None`` on a mesh that is not a cluster node.
            Unavailable: no such node is running.
        """
        own = self._node
        if node is None or (own is not None and node == own.node_id):
            if own is None:
                raise ConfigurationError("this mesh is not a cluster node: name the node to drain")
            return await own.drain()
        return dict(await self.request(node, "drain", {}, timeout))

    async def undrain(self, node: str | None, timeout: float) -> dict[str, Any]:
        """Have a drained ``node`` (``None``: the mesh's own node) take new agents again.

        Raises:
            ConfigurationError: ``None`` on a mesh that is not a cluster node.
            Unavailable: no such node is running, or it is closing.
        """
        own = self._node
        if node is None or (own is not None and node == own.node_id):
            if own is None:
                raise ConfigurationError("this mesh is not a cluster node: name the node to undrain")
            return await own.undrain()
        return dict(await self.request(node, "undrain", {}, timeout))

    async def info(self, node: str, timeout: float = 5.0) -> dict[str, Any]:
        return dict(await self.request(node, "info", {}, timeout))
