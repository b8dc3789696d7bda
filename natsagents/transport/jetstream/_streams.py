"""Streams: create (or reconcile), inspect and delete.

:func:`create_stream` is the one place a stream is created (KV buckets too): it picks the
replica count, binds to an existing stream through a caller's reconcile rule, and retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from ...errors import ConfigurationError, JetStreamError, StreamNotFound
from ..connection import Transport
from ._api import api_request, labelled, retry
from ._common import _NS, _name, _seconds, _subject
from ._partition import _partitions_in

log = logging.getLogger("natsagents.transport.jetstream")

Retention = Literal["limits", "workqueue", "interest"]
Storage = Literal["file", "memory"]
Discard = Literal["old", "new"]

#: Stream metadata key holding the partition count of a partitioned stream.
PARTITIONS_KEY = "natsagents_partitions"

_API_ATTEMPT = 2.0  # seconds one JetStream API attempt may take before it is retried
_INSUFFICIENT = frozenset({10023, 10074, 10005})  # not enough servers (or not clustered)
_STREAM_EXISTS = 10058


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """What :func:`ensure_stream` creates (or checks an existing stream against).

    Attributes:
        name: stream name, ``[a-zA-Z0-9_-]+``.
        subjects: the subjects it stores (wildcards allowed).
        subject_transform: ``(src, dest)``: rewrites incoming subjects before storing,
            e.g. ``("p.durable.*.*", "p.dpart.{{partition(16,1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}")``.
            A ``{{partition(n, …)}}`` makes the stream partitioned: ``n`` is recorded in
            its metadata (:data:`PARTITIONS_KEY`) and can never change.
        retention: ``"limits"``, ``"workqueue"`` (a message is removed once acked) or
            ``"interest"``.
        max_consumers: consumers allowed; ``None`` for the server's default (1000 on 2.15).
        duplicate_window: seconds within which a repeated ``Nats-Msg-Id`` is dropped
            (at most ``max_age``).
        replicas: 1-5; ``None`` picks 3 when the server is clustered (1 when the cluster
            turns out to have fewer than 3 servers), else 1.
        max_age: seconds a message is kept; ``None`` for ever.
        max_msg_size: largest message in bytes (headers included); ``None``: ``max_payload``.
        metadata: extra string metadata.
        storage: ``"file"`` (durable) or ``"memory"``.
        discard: when a limit is hit, drop the ``"old"`` messages or refuse ``"new"`` ones.
    """

    name: str
    subjects: Sequence[str]
    subject_transform: tuple[str, str] | None = None
    retention: Retention = "limits"
    max_consumers: int | None = None
    duplicate_window: float = 120.0
    replicas: int | None = None
    max_age: float | None = None
    max_msg_size: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    storage: Storage = "file"
    discard: Discard = "old"

    def __post_init__(self) -> None:
        _name("stream", self.name)
        subjects = (self.subjects,) if isinstance(self.subjects, str) else tuple(self.subjects)
        if not subjects:
            raise ConfigurationError(f"stream {self.name} needs at least one subject")
        for subject in subjects:
            _subject("stream subject", subject)
        object.__setattr__(self, "subjects", subjects)
        if self.subject_transform is not None:
            src, dest = self.subject_transform
            _subject("transform source", src)
            if not isinstance(dest, str) or not dest.strip():
                raise ConfigurationError(f"invalid transform destination {dest!r}")
            object.__setattr__(self, "subject_transform", (src, dest))
        if self.retention not in ("limits", "workqueue", "interest"):
            raise ConfigurationError(f"retention is limits, workqueue or interest, not {self.retention!r}")
        if self.storage not in ("file", "memory"):
            raise ConfigurationError(f"storage is file or memory, not {self.storage!r}")
        if self.discard not in ("old", "new"):
            raise ConfigurationError(f"discard is old or new, not {self.discard!r}")
        if self.max_consumers is not None and (not isinstance(self.max_consumers, int) or self.max_consumers < 1):
            raise ConfigurationError(f"max_consumers must be an int >= 1 (or None), not {self.max_consumers!r}")
        if self.replicas is not None and (not isinstance(self.replicas, int) or not 1 <= self.replicas <= 5):
            raise ConfigurationError(f"replicas must be within 1..5, not {self.replicas!r}")
        _seconds("duplicate_window", self.duplicate_window)
        if self.max_age is not None:
            _seconds("max_age", self.max_age)
            if self.duplicate_window > self.max_age:
                raise ConfigurationError("duplicate_window cannot be longer than max_age")
        if self.max_msg_size is not None and (not isinstance(self.max_msg_size, int) or self.max_msg_size < 1):
            raise ConfigurationError(f"max_msg_size must be an int >= 1 (or None), not {self.max_msg_size!r}")
        metadata = dict(self.metadata)
        if any(not isinstance(k, str) or not isinstance(v, str) for k, v in metadata.items()):
            raise ConfigurationError("stream metadata maps str to str")
        partitions = _partitions_in(self._transform())
        given = metadata.get(PARTITIONS_KEY)
        if given is not None and given != str(partitions):
            raise ConfigurationError(
                f"metadata {PARTITIONS_KEY}={given!r} does not match the transform's partition count {partitions}"
            )
        if partitions is not None:
            metadata[PARTITIONS_KEY] = str(partitions)
        object.__setattr__(self, "metadata", MappingProxyType(metadata))

    @property
    def partitions(self) -> int | None:
        """The partition count of the subject transform (``None``: not partitioned)."""
        return _partitions_in(self._transform())

    def _transform(self) -> dict[str, str] | None:
        if self.subject_transform is None:
            return None
        return {"src": self.subject_transform[0], "dest": self.subject_transform[1]}

    def _body(self, replicas: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "subjects": list(self.subjects),
            "retention": self.retention,
            "max_consumers": self.max_consumers if self.max_consumers is not None else -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": round((self.max_age or 0) * _NS),
            "max_msg_size": self.max_msg_size if self.max_msg_size is not None else -1,
            "storage": self.storage,
            "discard": self.discard,
            "num_replicas": replicas,
            "duplicate_window": round(self.duplicate_window * _NS),
        }
        if self.subject_transform is not None:
            body["subject_transform"] = self._transform()
        if self.metadata:
            body["metadata"] = dict(self.metadata)
        return body


def _existing_partitions(existing: Mapping[str, Any]) -> int | None:
    recorded = (existing.get("metadata") or {}).get(PARTITIONS_KEY)
    if recorded is not None:
        return int(recorded) if str(recorded).isdigit() else -1
    return _partitions_in(existing.get("subject_transform"))


def _reconciled(config: StreamConfig, existing: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any] | None:
    """``existing`` with the safe-to-change fields of ``body``, or ``None`` if nothing changes.

    Raises:
        ConfigurationError: the partition count, subject transform, retention or storage
            differ (the first two would remap stored messages, the server refuses the others).
    """
    name = config.name
    have, want = _existing_partitions(existing), config.partitions
    if have != want:
        raise ConfigurationError(
            f"stream {name} has {have or 'no'} partitions and the configuration asks for {want or 'none'}: "
            "the partition count of a stream never changes (it would remap nearly every key); "
            "create a new stream instead"
        )
    if (existing.get("subject_transform") or None) != (body.get("subject_transform") or None):
        raise ConfigurationError(
            f"stream {name} has the subject transform {existing.get('subject_transform')}, "
            f"not {body.get('subject_transform')}: changing it would remap stored messages"
        )
    for key in ("retention", "storage"):
        if existing.get(key) != body[key]:
            raise ConfigurationError(
                f"stream {name} has {key} {existing.get(key)!r}, not {body[key]!r}: it cannot change"
            )
    patched = dict(existing)
    safe = ["subjects", "max_consumers", "max_age", "max_msg_size", "discard", "duplicate_window"]
    if config.replicas is not None:
        safe.append("num_replicas")
    for key in safe:
        patched[key] = body[key]
    patched["metadata"] = {**(existing.get("metadata") or {}), **dict(config.metadata)}
    return None if patched == dict(existing) else patched


Reconcile = Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any] | None]


def _clustered(transport: Transport) -> bool:
    """Whether the connected server is part of a cluster (its INFO names one)."""
    info: Mapping[str, Any] = transport._nc._server_info or {}
    return bool(info.get("cluster"))


def _known_size(transport: Transport) -> int:
    """A lower bound on the servers of the connected server's cluster: the client URLs
    its INFO advertises (``connect_urls``). 0 or 1 with ``cluster { no_advertise: true }``
    (nothing is advertised) and for a server that just joined: never an upper bound, so
    the replicas are not chosen from it (a 3-server cluster that does not advertise would
    get R1 buckets); only whether an R3 refusal may fall back to R1."""
    info: Mapping[str, Any] = transport._nc._server_info or {}
    return len(set(info.get("connect_urls") or ())) if info.get("cluster") else 1


async def create_stream(
    transport: Transport,
    body: Mapping[str, Any],
    *,
    reconcile: Reconcile,
    what: str,
    timeout: float,
    attempt_timeout: float = _API_ATTEMPT,
) -> dict[str, Any]:
    """Create a stream from its wire configuration, or bind to the existing one.

    Args:
        transport: the connection.
        body: the ``STREAM.CREATE`` configuration. A ``num_replicas`` of ``None`` picks 3
            when the server is clustered, else 1, and falls back to 1 when the cluster
            turns out to have fewer than 3 servers.
        reconcile: called with an existing stream's configuration (it exists with another
            one) and the configuration wanted; returns the configuration to update the
            stream to, or ``None`` to keep it as it is. It may raise.
        what: the operation, for error messages.
        timeout: seconds for the whole operation (creating is idempotent: attempts are
            retried within it).
        attempt_timeout: seconds one attempt may take.

    Returns:
        The stream's configuration as the server holds it.

    Raises:
        JetStreamError: the server refused (e.g. not enough servers for the replicas).
        CallTimeout, MeshClosed, and what ``reconcile`` raises.
    """
    config = dict(body)
    name = _name("stream", config.get("name"))
    auto = config.get("num_replicas") is None
    if auto:
        # Any clustered server: ask for 3 and let the JetStream meta layer (which knows
        # the peers) refuse when the cluster is smaller; see the fallback below.
        config["num_replicas"] = 3 if _clustered(transport) else 1

    async def attempt(t: float) -> dict[str, Any]:
        while True:
            try:
                created = await api_request(transport, f"$JS.API.STREAM.CREATE.{name}", config, t)
            except JetStreamError as exc:
                if exc.err_code == _STREAM_EXISTS:
                    info = await api_request(transport, f"$JS.API.STREAM.INFO.{name}", None, t)
                    existing: dict[str, Any] = info["config"]
                    patched = reconcile(existing, config)
                    if patched is None:
                        return existing
                    updated = await api_request(transport, f"$JS.API.STREAM.UPDATE.{name}", patched, t)
                    return dict(updated["config"])
                if exc.err_code not in _INSUFFICIENT:
                    raise
                if auto and config["num_replicas"] > 1 and _known_size(transport) < 3:
                    # Auto on a cluster the meta layer says has fewer than 3 servers
                    # (none advertised contradicts it): one replica.
                    log.warning("%s: the cluster cannot place 3 replicas (%s); using 1", what, exc)
                    config["num_replicas"] = 1
                    continue
                # Enough servers known but not enough placeable now (a peer just started
                # or restarted, "peer offline"): transient (status 503), retried until
                # the timeout. Fewer servers than replicas: refused at once.
                enough = _known_size(transport) >= config["num_replicas"]
                raise JetStreamError(
                    f"{what}: not enough servers for {config['num_replicas']} replicas: {exc}",
                    status=503 if enough else exc.status,
                    err_code=exc.err_code,
                ) from exc
            return dict(created["config"])

    return await retry(what, attempt, timeout, attempt_timeout=attempt_timeout)


async def ensure_stream(transport: Transport, config: StreamConfig, *, timeout: float = 5.0) -> dict[str, Any]:
    """Create the stream, or bind to it if it exists.

    An existing stream whose configuration differs is updated in the fields that are safe
    to change (subjects, limits, duplicate window, discard, metadata, and the replica count
    when ``config.replicas`` is set); it keeps its own replicas when ``config.replicas`` is
    ``None``.

    Args:
        transport: the connection.
        config: the stream wanted.
        timeout: seconds for the whole operation (attempts are retried within it).

    Returns:
        The stream's configuration as the server holds it.

    Raises:
        ConfigurationError: the existing stream has another partition count, subject
            transform, retention or storage.
        JetStreamError: the server refused (e.g. not enough servers for ``replicas``).
        CallTimeout, MeshClosed.
    """
    if timeout <= 0:
        raise ConfigurationError(f"timeout must be > 0, not {timeout}")
    what = f"ensure stream {config.name}"

    def reconcile(existing: dict[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any] | None:
        return _reconciled(config, existing, wanted)

    with labelled(what):
        return await create_stream(
            transport, config._body(config.replicas), reconcile=reconcile, what=what, timeout=timeout
        )


async def stream_info(transport: Transport, name: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """The server's ``STREAM.INFO`` reply: ``config``, ``state``, ``cluster``.

    Raises:
        StreamNotFound: no such stream. ConfigurationError, JetStreamError, CallTimeout, MeshClosed.
    """
    subject = f"$JS.API.STREAM.INFO.{_name('stream', name)}"
    with labelled(f"stream info {name}"):
        return await retry(f"stream info {name}", lambda t: api_request(transport, subject, None, t), timeout)


async def delete_stream(transport: Transport, name: str, *, timeout: float = 5.0) -> bool:
    """Delete a stream and its messages and consumers.

    Returns:
        ``True`` if it was deleted, ``False`` if it did not exist.

    Raises:
        ConfigurationError, JetStreamError, CallTimeout, MeshClosed.
    """
    subject = f"$JS.API.STREAM.DELETE.{_name('stream', name)}"
    try:
        with labelled(f"delete stream {name}"):
            await retry(f"delete stream {name}", lambda t: api_request(transport, subject, None, t), timeout)
    except StreamNotFound:
        return False
    return True
