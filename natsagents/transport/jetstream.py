"""JetStream streams, publishes and pull consumers, spoken directly over the wire API.

The layer under durable agent inboxes. Like ``kv.py`` it does not use nats-py's JetStream
context: every operation is a core request through :class:`Transport`'s request mux, or a
pull request whose messages arrive on one private inbox subscription per consumer.

* **Partitions.** A stream may map its subjects to partitions with a subject transform
  such as ``{{partition(16,1,2)}}``. :func:`partition_of_tokens` computes the partition
  the server picks (FNV-1a 32-bit over the named wildcard tokens *concatenated with no
  separator*, mod n; verified against nats-server 2.15 by ``tests/test_jetstream.py``).
  The count is recorded in the stream metadata and :func:`ensure_stream` refuses to change
  it: a new count would remap nearly every key.
* **Publishes** carry a ``Nats-Msg-Id``. Timed-out attempts, "no responders" (a stream
  leader election) and transient refusals are retried with the same id until the
  timeout, so the server deduplicates a retry of a publish that did land. When no stream
  listens on the subject at all, :class:`StreamNotFound` comes at once.
* **Pull consumers** fetch with ``$JS.API.CONSUMER.MSG.NEXT``; the server's status
  messages (404 no messages, 408 request timeout, 409 …, 100 heartbeats) end or extend a
  fetch.

Exceptions (all :class:`~natsagents.errors.TransportError`)::

    JetStreamError                 the server refused, or an operation failed
    ├── StreamNotFound             no such stream, or no stream listens on a subject
    ├── ConsumerNotFound           no such consumer (never created, deleted, expired)
    ├── PublishBatchError          some publishes of :func:`publish_many` failed
    └── MalformedAckSubject        (also a ProtocolError) a reply subject is not ``$JS.ACK.…``

Oversized messages raise :class:`~natsagents.errors.PayloadTooLarge`, bad arguments
:class:`~natsagents.errors.ConfigurationError`, timeouts
:class:`~natsagents.errors.CallTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import re
import secrets
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Literal

from ..errors import CallTimeout, ConfigurationError, MeshClosed, ProtocolError, TransportError
from ..wire.envelope import encode_headers
from .connection import Inbound, NoResponders, Subscription, Transport
from .kv import KvError, _cluster_size, _decode, api_request, retry

__all__ = [
    "PARTITIONS_KEY",
    "AckMetadata",
    "ConsumerConfig",
    "ConsumerNotFound",
    "JetStreamError",
    "JsMsg",
    "MalformedAckSubject",
    "Outgoing",
    "PubAck",
    "PublishBatchError",
    "PullConsumer",
    "StreamConfig",
    "StreamNotFound",
    "consumer_info",
    "delete_consumer",
    "delete_stream",
    "ensure_consumer",
    "ensure_stream",
    "parse_ack_subject",
    "partition_of",
    "partition_of_tokens",
    "publish",
    "publish_many",
    "stream_info",
    "translate",
]

log = logging.getLogger("natsagents.transport.jetstream")

Retention = Literal["limits", "workqueue", "interest"]
Storage = Literal["file", "memory"]
Discard = Literal["old", "new"]
DeliverPolicy = Literal["all", "new", "last"]

#: Stream metadata key holding the partition count of a partitioned stream.
PARTITIONS_KEY = "natsagents_partitions"

_NS = 1_000_000_000
_NAME_RE = re.compile(r"[a-zA-Z0-9_-]+")
_SUBJECT_TOKEN_RE = re.compile(r"[^\s.]+")
_DIGITS_RE = re.compile(r"[0-9]+")
_PARTITION_RE = re.compile(r"\{\{\s*partition\(\s*(\d+)\s*(?:,[\s\d,]*)?\)\s*\}\}", re.IGNORECASE)
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_API_ATTEMPT = 2.0  # seconds one JetStream API attempt may take before it is retried
_PUBLISH_ATTEMPT = 2.0  # one publish attempt; retried with the same Nats-Msg-Id
_LOOKUP_TIMEOUT = 1.0  # the stream lookup after "no responders"
_FETCH_GRACE = 1.0  # how long after ``expires`` a fetch waits for the server's 408
_ACK_ATTEMPT = 1.0
_ENDED_EARLY = ("Leadership Change", "Server Shutdown", "Message Size Exceeds")  # 409s that end a fetch
_INSUFFICIENT = frozenset({10023, 10074, 10005})  # not enough servers (or not clustered)
_UNKNOWN_STREAM = 10059
_UNKNOWN_CONSUMER = 10014
_STREAM_EXISTS = 10058


# -- errors ------------------------------------------------------------------------------


class JetStreamError(TransportError):
    """A JetStream operation failed on the server.

    Attributes:
        status: the status (400, 404, 409, 503 …), when the server gave one.
        err_code: the JetStream error code (10058 …), when the server gave one.
    """

    def __init__(self, message: str, *, status: int | None = None, err_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.err_code = err_code

    @property
    def transient(self) -> bool:
        """Whether the server refused for now (leader election, quorum lost): retry later."""
        return self.status in (408, 503) or self.err_code in (10008, 10118)


class StreamNotFound(JetStreamError):
    """No such stream, or no stream listens on the subject published to."""


class ConsumerNotFound(JetStreamError):
    """No such consumer: never created, deleted, or expired (``inactive_threshold``)."""


class MalformedAckSubject(JetStreamError, ProtocolError):
    """A message's reply subject is not a JetStream ack subject (``$JS.ACK.…``)."""


class PublishBatchError(JetStreamError):
    """Some publishes of :func:`publish_many` failed; the others completed.

    Attributes:
        results: per message, in order: its :class:`PubAck`, or the exception it failed
            with (a :class:`~natsagents.errors.CallTimeout` means its outcome is unknown:
            publish it again with the same ``msg_id``).
    """

    def __init__(self, message: str, results: Sequence[PubAck | Exception]) -> None:
        super().__init__(message)
        self.results: tuple[PubAck | Exception, ...] = tuple(results)

    @property
    def failures(self) -> dict[int, Exception]:
        """Index → exception of every failed message."""
        return {i: r for i, r in enumerate(self.results) if isinstance(r, Exception)}


def translate(exc: KvError, what: str = "") -> JetStreamError:
    """The :class:`JetStreamError` for an API error decoded by ``kv.py``."""
    text = f"{what}: {exc}" if what and not str(exc).startswith(what) else str(exc)
    cls: type[JetStreamError] = JetStreamError
    if exc.err_code == _UNKNOWN_STREAM:
        cls = StreamNotFound
    elif exc.err_code == _UNKNOWN_CONSUMER:
        cls = ConsumerNotFound
    return cls(text, status=exc.status, err_code=exc.err_code)


@contextlib.contextmanager
def _boundary(what: str) -> Iterator[None]:
    """Raise ``kv.py``'s API errors as :class:`JetStreamError`."""
    try:
        yield
    except KvError as exc:
        raise translate(exc, what) from exc


def _name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ConfigurationError(f"invalid {kind} name {value!r}: use [a-zA-Z0-9_-]+")
    return value


def _seconds(label: str, value: float) -> int:
    """Seconds (> 0) → nanoseconds for the wire."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ConfigurationError(f"{label} must be > 0 seconds, not {value!r}")
    return round(value * _NS)


def _subject(label: str, value: object, *, wildcards: bool = True) -> str:
    if not isinstance(value, str) or not value or any(not _SUBJECT_TOKEN_RE.fullmatch(t) for t in value.split(".")):
        raise ConfigurationError(f"invalid {label} {value!r}: dot-separated tokens, no spaces")
    if not wildcards and any(t in ("*", ">") for t in value.split(".")):
        raise ConfigurationError(f"{label} {value!r} cannot contain wildcards")
    return value


# -- partitions --------------------------------------------------------------------------


def _fnv1a32(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition ``{{partition(partitions, i)}}`` gives a subject whose wildcard
    token ``i`` is ``key``: FNV-1a 32-bit over the token's UTF-8 bytes, mod ``partitions``.

    Args:
        key: the token (text or bytes).
        partitions: the partition count of the transform.

    Raises:
        ConfigurationError: ``partitions`` is not an int >= 1, or ``key`` is not text or bytes.
    """
    if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
        raise ConfigurationError(f"partitions must be an int >= 1, not {partitions!r}")
    if isinstance(key, str):
        key = key.encode()
    elif not isinstance(key, bytes | bytearray):
        raise ConfigurationError(f"a partition key is str or bytes, not {type(key).__name__}")
    return _fnv1a32(key) % partitions


def partition_of_tokens(tokens: Sequence[str], partitions: int) -> int:
    """The partition ``{{partition(partitions, i, j, …)}}`` gives a subject whose wildcard
    tokens ``i, j, …`` are ``tokens`` (in the order the transform names them).

    nats-server concatenates the tokens' bytes with **no separator** and hashes the result
    (FNV-1a 32-bit, mod ``partitions``). So ``("ab", "c")`` and ``("a", "bc")`` always
    share a partition.

    Args:
        tokens: the subject tokens, in the transform's argument order.
        partitions: the partition count of the transform.

    Raises:
        ConfigurationError: a token is empty or holds ``.`` or whitespace (it would not be
            one subject token), or ``partitions`` is invalid.
    """
    if isinstance(tokens, str | bytes):
        raise ConfigurationError("tokens is a sequence of subject tokens, not one string")
    for token in tokens:
        if not isinstance(token, str) or not _SUBJECT_TOKEN_RE.fullmatch(token):
            raise ConfigurationError(f"invalid subject token {token!r}: non-empty, no '.', no whitespace")
    return partition_of("".join(tokens).encode(), partitions)


def _partitions_in(transform: Mapping[str, Any] | None) -> int | None:
    """The partition count of a transform's ``{{partition(n, …)}}``, if it has one."""
    if not transform:
        return None
    found = _PARTITION_RE.search(str(transform.get("dest", "")))
    return int(found.group(1)) if found else None


# -- streams -----------------------------------------------------------------------------


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

    def _body(self, replicas: int) -> dict[str, Any]:
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
    auto = config.replicas is None
    body = config._body(config.replicas or (3 if _cluster_size(transport) > 1 else 1))
    what = f"ensure stream {config.name}"

    async def attempt(t: float) -> dict[str, Any]:
        try:
            created = await api_request(transport, f"$JS.API.STREAM.CREATE.{config.name}", body, t)
        except KvError as exc:
            if exc.err_code == _STREAM_EXISTS:
                info = await api_request(transport, f"$JS.API.STREAM.INFO.{config.name}", None, t)
                existing: dict[str, Any] = info["config"]
                patched = _reconciled(config, existing, body)
                if patched is None:
                    return existing
                updated = await api_request(transport, f"$JS.API.STREAM.UPDATE.{config.name}", patched, t)
                return dict(updated["config"])
            if exc.err_code in _INSUFFICIENT and auto and body["num_replicas"] > 1 and _cluster_size(transport) < 3:
                body["num_replicas"] = 1  # auto on a cluster of fewer than 3 servers
                return await attempt(t)
            raise
        return dict(created["config"])

    with _boundary(what):
        return await retry(what, attempt, timeout, attempt_timeout=_API_ATTEMPT)


async def stream_info(transport: Transport, name: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """The server's ``STREAM.INFO`` reply: ``config``, ``state``, ``cluster``.

    Raises:
        StreamNotFound: no such stream. ConfigurationError, JetStreamError, CallTimeout, MeshClosed.
    """
    subject = f"$JS.API.STREAM.INFO.{_name('stream', name)}"
    with _boundary(f"stream info {name}"):
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
        with _boundary(f"delete stream {name}"):
            await retry(f"delete stream {name}", lambda t: api_request(transport, subject, None, t), timeout)
    except StreamNotFound:
        return False
    return True


# -- publishing --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PubAck:
    """The server's acknowledgement of a stored message.

    Attributes:
        stream: the stream that stored it.
        seq: its stream sequence.
        duplicate: ``True`` when the ``Nats-Msg-Id`` was seen within the duplicate window:
            nothing new was stored and ``seq`` is the first copy's.
    """

    stream: str
    seq: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for :func:`publish_many`."""

    subject: str
    payload: bytes
    msg_id: str
    headers: Mapping[str, str] | None = field(default=None, hash=False)


def _header_block(
    transport: Transport,
    subject: str,
    payload: bytes,
    headers: Mapping[str, str] | None,
    msg_id: str,
    expected_stream: str | None,
) -> bytes:
    """The header block of a JetStream publish, size-checked against ``max_payload``."""
    _subject("publish subject", subject, wildcards=False)
    if not isinstance(payload, bytes):
        raise ConfigurationError(f"a payload is bytes, not {type(payload).__name__}")
    if not isinstance(msg_id, str) or not msg_id:
        raise ConfigurationError(f"msg_id must be a non-empty string, not {msg_id!r}")
    merged = dict(headers or {})
    merged["Nats-Msg-Id"] = msg_id
    if expected_stream is not None:
        merged["Nats-Expected-Stream"] = _name("stream", expected_stream)
    try:
        block = encode_headers(merged)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    transport.check_size(subject, block, payload)
    return block


class _StreamLookup:
    """Which streams listen on a subject, asked once per subject after "no responders"."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self._known: dict[str, list[str]] = {}
        self._asking: dict[str, asyncio.Future[list[str] | None]] = {}

    async def streams(self, subject: str, deadline: float) -> list[str] | None:
        """The names, or ``None`` when the server did not say (keep retrying)."""
        if subject in self._known:
            return self._known[subject]
        pending = self._asking.get(subject)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[list[str] | None] = asyncio.get_running_loop().create_future()
        self._asking[subject] = fut
        result: list[str] | None = None
        try:
            t = min(_LOOKUP_TIMEOUT, max(deadline - asyncio.get_running_loop().time(), 0.05))
            reply = await api_request(self._t, "$JS.API.STREAM.NAMES", {"subject": subject}, t)
            result = [str(s) for s in reply.get("streams") or ()]
            self._known[subject] = result
        except NoResponders:
            result = []  # JetStream is not enabled: no stream listens anywhere
            self._known[subject] = result
        except (CallTimeout, KvError):
            result = None
        finally:
            del self._asking[subject]
            fut.set_result(result)
        return result


def _pub_ack(what: str, msg: Inbound) -> PubAck:
    try:
        doc = _decode(what, msg)
    except KvError as exc:
        raise translate(exc, what) from exc
    stream, seq = doc.get("stream"), doc.get("seq")
    if not isinstance(stream, str) or not isinstance(seq, int) or isinstance(seq, bool):
        raise JetStreamError(f"{what}: the reply is not a JetStream PubAck (a core subscriber answered?)")
    return PubAck(stream, seq, bool(doc.get("duplicate", False)))


async def _publish(
    transport: Transport,
    subject: str,
    payload: bytes,
    block: bytes,
    *,
    timeout: float,
    expected_stream: str | None,
    lookup: _StreamLookup,
) -> PubAck:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    what = f"publish to {subject}"
    delay = 0.02
    timed_out = False
    last: BaseException | None = None
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            reply = await transport.request(subject, payload, headers=block, timeout=min(remaining, _PUBLISH_ATTEMPT))
            return _pub_ack(what, reply)
        except CallTimeout as exc:
            timed_out = True
            last = exc
        except NoResponders as exc:
            last = exc
            streams = await lookup.streams(subject, deadline)
            if streams is not None and (not streams or (expected_stream and expected_stream not in streams)):
                wanted = f"stream {expected_stream}" if expected_stream else "no stream"
                listening = f" (listening: {', '.join(streams)})" if streams else ""
                raise StreamNotFound(
                    f"{what}: {wanted} listens on this subject{listening}; nothing was stored", status=503
                ) from exc
        except JetStreamError as exc:
            if not exc.transient:
                raise
            last = exc
        remaining = deadline - loop.time()
        if remaining > 0:
            await asyncio.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
        delay = min(delay * 2, 0.5)
    if timed_out:
        raise CallTimeout(
            f"{what}: no PubAck within {timeout:g} s (last error: {last}); the outcome is unknown: the message "
            "may or may not be stored. Publish it again with the same msg_id within the duplicate window."
        ) from last
    raise JetStreamError(
        f"{what}: no stream leader stored it within {timeout:g} s (last error: {last}); it was not stored",
        status=503,
    ) from last


async def publish(
    transport: Transport,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    expected_stream: str | None = None,
) -> PubAck:
    """Store one message in the stream that listens on ``subject``.

    Timed-out attempts, "no responders" (a stream leader election: several seconds on a
    cluster) and transient refusals are retried with the same ``msg_id`` until
    ``timeout``; the server drops copies within the stream's duplicate window.

    Args:
        transport: the connection.
        subject: the subject (no wildcards).
        payload: the body.
        msg_id: the ``Nats-Msg-Id``: the same id for the same logical message, a new one
            for every other (a reused id silently drops the second message).
        headers: extra headers.
        timeout: seconds for the whole publish.
        expected_stream: refuse unless this stream stores the message
            (``Nats-Expected-Stream``).

    Returns:
        The :class:`PubAck`; ``duplicate`` is ``True`` when the id was already stored.

    Raises:
        PayloadTooLarge: headers + payload exceed ``max_payload`` (nothing is sent), or the
            stream's ``max_msg_size``.
        StreamNotFound: no stream (or not ``expected_stream``) listens on ``subject``.
        CallTimeout: an attempt timed out and no later one got an answer: the outcome is
            unknown; publish again with the same ``msg_id``.
        JetStreamError: the server refused (``err_code`` says why: 10060 another stream,
            10071 wrong last sequence …), or every attempt met an unavailable stream
            (nothing stored).
        ConfigurationError, MeshClosed.
    """
    if timeout <= 0:
        raise ConfigurationError(f"timeout must be > 0, not {timeout}")
    block = _header_block(transport, subject, payload, headers, msg_id, expected_stream)
    return await _publish(
        transport,
        subject,
        payload,
        block,
        timeout=timeout,
        expected_stream=expected_stream,
        lookup=_StreamLookup(transport),
    )


async def publish_many(
    transport: Transport,
    messages: Iterable[Outgoing],
    *,
    timeout: float = 5.0,
    expected_stream: str | None = None,
) -> list[PubAck]:
    """Publish many messages pipelined: every request goes out before any ack is awaited.

    Each message is published as :func:`publish` does, with its own deadline ``timeout``
    seconds from now and its own retries. First attempts are sent in order; a retried
    message may be stored after later ones.

    All sizes are checked first: an oversized message raises before anything is sent.
    Otherwise every message runs to completion; if any failed, :class:`PublishBatchError`
    is raised afterwards with every result (acks and exceptions, in order), so only the
    failed ones need publishing again (with the same ids).

    Args:
        transport: the connection.
        messages: what to publish.
        timeout: seconds allowed for each message.
        expected_stream: refuse any message not stored by this stream.

    Returns:
        The :class:`PubAck` of each message, in order.

    Raises:
        PayloadTooLarge: a message is too large (nothing was sent).
        PublishBatchError: some messages failed; ``results`` holds each outcome.
        ConfigurationError, MeshClosed.
    """
    if timeout <= 0:
        raise ConfigurationError(f"timeout must be > 0, not {timeout}")
    items = list(messages)
    blocks = [_header_block(transport, m.subject, m.payload, m.headers, m.msg_id, expected_stream) for m in items]
    if not items:
        return []
    await transport._ensure_mux()  # created once up front, so first attempts go out in order
    lookup = _StreamLookup(transport)
    outcomes = await asyncio.gather(
        *(
            _publish(
                transport,
                m.subject,
                m.payload,
                block,
                timeout=timeout,
                expected_stream=expected_stream,
                lookup=lookup,
            )
            for m, block in zip(items, blocks, strict=True)
        ),
        return_exceptions=True,
    )
    results: list[PubAck | Exception] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome
        results.append(outcome)
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise PublishBatchError(
            f"{len(failed)} of {len(results)} publishes failed (first: {failed[0]})", results
        ) from failed[0]
    return [r for r in results if isinstance(r, PubAck)]


# -- consumers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """A durable pull consumer with explicit acks.

    Attributes:
        durable: its name, ``[a-zA-Z0-9_-]+``.
        filter_subject: deliver only messages whose stored subject matches (after the
            stream's subject transform).
        filter_subjects: several filters instead (not with ``filter_subject``).
        ack_wait: seconds a delivery may stay unacked before it is redelivered. With
            ``backoff`` the server replaces it with ``backoff[0]``.
        max_deliver: deliveries per message (-1: unlimited; poison messages then loop
            for ever).
        max_ack_pending: unacked deliveries allowed at once (-1: unlimited).
        backoff: seconds to wait before each redelivery after an ack timeout (the last
            value repeats); needs ``max_deliver >= len(backoff)`` (or -1).
        inactive_threshold: seconds without fetches after which the server deletes the
            consumer; ``None`` never (a durable).
        deliver_policy: start with ``"all"`` stored messages, only ``"new"`` ones, or the
            ``"last"`` one.
        replicas: the consumer's replicas; 0 for the stream's.
        max_waiting: pull requests the server holds at once.
    """

    durable: str
    filter_subject: str | None = None
    filter_subjects: Sequence[str] = ()
    ack_wait: float = 30.0
    max_deliver: int = -1
    max_ack_pending: int = 1000
    backoff: Sequence[float] = ()
    inactive_threshold: float | None = None
    deliver_policy: DeliverPolicy = "all"
    replicas: int = 0
    max_waiting: int = 512

    def __post_init__(self) -> None:
        _name("consumer", self.durable)
        filters = tuple(self.filter_subjects)
        if self.filter_subject is not None:
            _subject("filter_subject", self.filter_subject)
            if filters:
                raise ConfigurationError("give filter_subject or filter_subjects, not both")
        for subject in filters:
            _subject("filter subject", subject)
        object.__setattr__(self, "filter_subjects", filters)
        _seconds("ack_wait", self.ack_wait)
        backoff = tuple(self.backoff)
        for value in backoff:
            _seconds("a backoff value", value)
        object.__setattr__(self, "backoff", backoff)
        if not isinstance(self.max_deliver, int) or (self.max_deliver < 1 and self.max_deliver != -1):
            raise ConfigurationError(f"max_deliver must be >= 1 or -1, not {self.max_deliver!r}")
        if backoff and self.max_deliver != -1 and self.max_deliver < len(backoff):
            raise ConfigurationError(f"max_deliver ({self.max_deliver}) must be >= len(backoff) ({len(backoff)})")
        if not isinstance(self.max_ack_pending, int) or (self.max_ack_pending < 1 and self.max_ack_pending != -1):
            raise ConfigurationError(f"max_ack_pending must be >= 1 or -1, not {self.max_ack_pending!r}")
        if self.inactive_threshold is not None:
            _seconds("inactive_threshold", self.inactive_threshold)
        if self.deliver_policy not in ("all", "new", "last"):
            raise ConfigurationError(f"deliver_policy is all, new or last, not {self.deliver_policy!r}")
        if not isinstance(self.replicas, int) or not 0 <= self.replicas <= 5:
            raise ConfigurationError(f"replicas must be within 0..5, not {self.replicas!r}")
        if not isinstance(self.max_waiting, int) or self.max_waiting < 1:
            raise ConfigurationError(f"max_waiting must be >= 1, not {self.max_waiting!r}")

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "durable_name": self.durable,
            "deliver_policy": self.deliver_policy,
            "ack_policy": "explicit",
            "ack_wait": round(self.ack_wait * _NS),
            "max_deliver": self.max_deliver,
            "max_ack_pending": self.max_ack_pending,
            "max_waiting": self.max_waiting,
            "replay_policy": "instant",
            "num_replicas": self.replicas,
        }
        if self.filter_subject is not None:
            body["filter_subject"] = self.filter_subject
        if self.filter_subjects:
            body["filter_subjects"] = list(self.filter_subjects)
        if self.backoff:
            body["backoff"] = [round(b * _NS) for b in self.backoff]
        if self.inactive_threshold is not None:
            body["inactive_threshold"] = round(self.inactive_threshold * _NS)
        return body


async def ensure_consumer(
    transport: Transport, stream: str, config: ConsumerConfig, *, timeout: float = 5.0
) -> dict[str, Any]:
    """Create the durable consumer, or update it to ``config`` if it exists.

    Args:
        transport: the connection.
        stream: the stream.
        config: the consumer wanted.
        timeout: seconds for the whole operation.

    Returns:
        The server's consumer info (``config``, ``num_pending``, ``num_ack_pending`` …).

    Raises:
        StreamNotFound: no such stream.
        JetStreamError: the server refused (``err_code`` 10026: the stream's
            ``max_consumers`` is reached; 10100: on a workqueue stream, another consumer's
            filter overlaps; a change it cannot apply to an existing consumer …).
        ConfigurationError, CallTimeout, MeshClosed.
    """
    _name("stream", stream)
    subject = f"$JS.API.CONSUMER.CREATE.{stream}.{config.durable}"
    body = {"stream_name": stream, "config": config._body(), "action": ""}  # "": create or update
    what = f"ensure consumer {stream}/{config.durable}"
    with _boundary(what):
        return await retry(what, lambda t: api_request(transport, subject, body, t), timeout)


async def consumer_info(transport: Transport, stream: str, durable: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """The server's ``CONSUMER.INFO`` reply (``config``, ``delivered``, ``num_pending`` …).

    Raises:
        StreamNotFound, ConsumerNotFound, ConfigurationError, JetStreamError, CallTimeout, MeshClosed.
    """
    subject = f"$JS.API.CONSUMER.INFO.{_name('stream', stream)}.{_name('consumer', durable)}"
    what = f"consumer info {stream}/{durable}"
    with _boundary(what):
        return await retry(what, lambda t: api_request(transport, subject, None, t), timeout)


async def delete_consumer(transport: Transport, stream: str, durable: str, *, timeout: float = 5.0) -> bool:
    """Delete a consumer (its unacked deliveries are dropped).

    Returns:
        ``True`` if it was deleted, ``False`` if it (or the stream) did not exist.

    Raises:
        ConfigurationError, JetStreamError, CallTimeout, MeshClosed.
    """
    subject = f"$JS.API.CONSUMER.DELETE.{_name('stream', stream)}.{_name('consumer', durable)}"
    what = f"delete consumer {stream}/{durable}"
    try:
        with _boundary(what):
            await retry(what, lambda t: api_request(transport, subject, None, t), timeout)
    except (ConsumerNotFound, StreamNotFound):
        return False
    return True


# -- messages ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckMetadata:
    """What a delivery's ack subject says.

    Attributes:
        stream, consumer: where it came from.
        num_delivered: 1 for the first delivery, 2 for the first redelivery …
        stream_seq: the message's stream sequence.
        consumer_seq: the delivery's sequence in the consumer.
        timestamp_ns: when the message was stored (Unix nanoseconds).
        num_pending: messages left for the consumer after this one.
        domain: the JetStream domain (``None`` if none).
    """

    stream: str
    consumer: str
    num_delivered: int
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    num_pending: int
    domain: str | None = None

    @property
    def timestamp(self) -> float:
        """When the message was stored (Unix seconds)."""
        return self.timestamp_ns / _NS


def parse_ack_subject(reply: str) -> AckMetadata:
    """Parse ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` or the
    v2 form ``$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>…]``.

    Raises:
        MalformedAckSubject: anything else.
    """
    if not isinstance(reply, str):
        raise MalformedAckSubject(f"a JetStream ack subject is a string, not {type(reply).__name__}")
    tokens = reply.split(".")
    if len(tokens) < 2 or tokens[0] != "$JS" or tokens[1] != "ACK":
        raise MalformedAckSubject(f"not a JetStream ack subject: {reply!r}")
    if len(tokens) == 9:
        domain, fields = None, tokens[2:9]
    elif len(tokens) >= 11:
        domain, fields = (tokens[2] if tokens[2] not in ("", "_") else None), tokens[4:11]
    else:
        raise MalformedAckSubject(f"a JetStream ack subject has 9 or at least 11 tokens, not {len(tokens)}: {reply!r}")
    stream, consumer, *numbers = fields
    if not stream or not consumer or not all(_DIGITS_RE.fullmatch(n) for n in numbers):
        raise MalformedAckSubject(f"malformed JetStream ack subject: {reply!r}")
    delivered, sseq, cseq, ts, pending = (int(n) for n in numbers)
    return AckMetadata(stream, consumer, delivered, sseq, cseq, ts, pending, domain)


class JsMsg:
    """A message delivered by a consumer; settle it with one of the ack methods.

    Attributes:
        subject: the stored subject (after the stream's subject transform).
        data: the payload.
        headers: the headers (``{}`` when none).
        reply: the ack subject.
        metadata: what the ack subject says (:class:`AckMetadata`).
    """

    __slots__ = ("_t", "data", "headers", "metadata", "reply", "subject")

    def __init__(
        self, transport: Transport, subject: str, data: bytes, headers: Mapping[str, str] | None, reply: str
    ) -> None:
        """
        Raises:
            MalformedAckSubject: ``reply`` is not a JetStream ack subject.
        """
        self.metadata = parse_ack_subject(reply)
        self._t = transport
        self.subject = subject
        self.data = data
        self.headers: dict[str, str] = dict(headers or {})
        self.reply = reply

    @classmethod
    def _from(cls, transport: Transport, msg: Inbound) -> JsMsg:
        return cls(transport, msg.subject, msg.data, msg.headers, msg.reply)

    def __repr__(self) -> str:
        m = self.metadata
        return f"<JsMsg {self.subject} seq={m.stream_seq} delivered={m.num_delivered}>"

    @property
    def stream_seq(self) -> int:
        return self.metadata.stream_seq

    @property
    def num_delivered(self) -> int:
        return self.metadata.num_delivered

    @property
    def num_pending(self) -> int:
        return self.metadata.num_pending

    @property
    def timestamp(self) -> float:
        """When the message was stored (Unix seconds)."""
        return self.metadata.timestamp

    async def ack(self) -> None:
        """Acknowledge (fire and forget: the ack may be lost; see :meth:`ack_sync`).

        Raises:
            MeshClosed, TransportError.
        """
        await self._t.publish(self.reply, b"+ACK")

    async def ack_sync(self, timeout: float = 5.0) -> None:
        """Acknowledge and wait until the server confirms it (a double ack). Attempts are
        retried (acks are idempotent) until ``timeout``.

        Raises:
            CallTimeout: not confirmed (consumer gone, or its leader unreachable); the
                message may be redelivered. MeshClosed.
        """

        async def attempt(t: float) -> None:
            await self._t.request(self.reply, b"+ACK", timeout=t)

        await retry(f"ack {self!r}", attempt, timeout, attempt_timeout=_ACK_ATTEMPT)

    async def nak(self, delay: float | None = None) -> None:
        """Ask for a redelivery: at once, or after ``delay`` seconds.

        Raises:
            ConfigurationError: ``delay`` is negative. MeshClosed, TransportError.
        """
        if delay is None or delay == 0:
            await self._t.publish(self.reply, b"-NAK")
            return
        ns = _seconds("nak delay", delay)
        await self._t.publish(self.reply, b'-NAK {"delay": %d}' % ns)

    async def term(self, reason: str = "") -> None:
        """Stop redelivering this message (it stays in the stream unless acked elsewhere).

        Raises:
            MeshClosed, TransportError.
        """
        reason = " ".join(reason.split())  # one line
        await self._t.publish(self.reply, b"+TERM" + (b" " + reason.encode() if reason else b""))

    async def in_progress(self) -> None:
        """Still working on it: restart the ack wait timer.

        Raises:
            MeshClosed, TransportError.
        """
        await self._t.publish(self.reply, b"+WPI")


# -- pull consumer -----------------------------------------------------------------------


def _header(headers: Mapping[Any, str] | None, name: str) -> str:
    """A header by name (nats-py keys some status headers with a ``str`` enum)."""
    for key, value in (headers or {}).items():
        if key == name:
            return value
    return ""


class _Pull:
    """One outstanding pull request."""

    __slots__ = ("done", "ended", "error", "inbox", "last_seen", "loop", "msgs", "want")

    def __init__(self, inbox: str, want: int, loop: asyncio.AbstractEventLoop) -> None:
        self.inbox = inbox
        self.want = want
        self.loop = loop
        self.msgs: list[JsMsg] = []
        self.done = asyncio.Event()
        self.error: JetStreamError | None = None
        self.ended = ""  # why the server ended the request
        self.last_seen = loop.time()

    def add(self, msg: JsMsg) -> None:
        self.msgs.append(msg)
        self.last_seen = self.loop.time()
        if len(self.msgs) >= self.want:
            self.done.set()

    def status(self, code: str, description: str, what: str) -> None:
        self.last_seen = self.loop.time()
        if code == "100":  # idle heartbeat
            return
        self.ended = f"{code} {description}".strip()
        if code in ("404", "408") or (code == "409" and description.startswith(_ENDED_EARLY)):
            pass  # no messages, request expired, or ended early (fetch again)
        elif code == "409" and description == "Consumer Deleted":
            self.error = ConsumerNotFound(f"{what}: the consumer was deleted", status=409)
        elif code == "503":
            self.error = JetStreamError(f"{what}: no consumer answers pull requests", status=503)
        else:
            self.error = JetStreamError(f"{what}: the server ended the pull request: {self.ended}", status=_int(code))
        self.done.set()


def _int(code: str) -> int | None:
    return int(code) if code.isdigit() else None


class PullConsumer:
    """Fetches batches from a durable pull consumer (create it with :func:`ensure_consumer`).

    One private inbox subscription (made on the first fetch) serves every fetch, each
    with its own reply subject. Fetches run one at a time. Deliveries that arrive when no
    fetch waits for them (a fetch that gave up before the server ended its request) are
    kept for the next fetch; :meth:`close` hands any left back to the server (NAK).

    Use ``async with PullConsumer(transport, stream, durable) as c: msgs = await c.fetch(…)``.
    """

    def __init__(self, transport: Transport, stream: str, durable: str) -> None:
        """
        Raises:
            ConfigurationError: invalid stream or consumer name.
        """
        self._t = transport
        self.stream = _name("stream", stream)
        self.durable = _name("consumer", durable)
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._prefix = f"{transport.settings.inbox_prefix}.{secrets.token_hex(8)}."
        self._tokens = itertools.count(1)
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()
        self._pull: _Pull | None = None
        self._buffer: deque[JsMsg] = deque()
        self._closed = False

    def __repr__(self) -> str:
        return f"<PullConsumer {self.stream}/{self.durable}>"

    async def __aenter__(self) -> PullConsumer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _on_msg(self, msg: Inbound) -> None:
        """Runs in the connection's reader task: route a delivery or status message."""
        pull = self._pull
        if not msg.reply:
            code = (msg.headers or {}).get("Status")
            if code and pull is not None and msg.subject == pull.inbox:
                pull.status(code, _header(msg.headers, "Description"), repr(self))
            return  # statuses of requests given up on
        try:
            delivery = JsMsg._from(self._t, msg)
        except MalformedAckSubject as exc:
            log.warning("%r: dropped a delivery: %s", self, exc)
            return
        if pull is not None and len(pull.msgs) < pull.want:
            pull.add(delivery)
        else:
            self._buffer.append(delivery)

    async def fetch(
        self, batch: int, expires: float, no_wait: bool = False, *, heartbeat: float | None = None
    ) -> list[JsMsg]:
        """Up to ``batch`` messages.

        Waits until ``batch`` messages came or ``expires`` seconds passed. With
        ``no_wait`` it returns as soon as no further message is available right away;
        when none is, it waits up to ``expires`` for the first (nats-server 2.15 answers
        such a request at once only when it has messages).

        An error status from the server ends the batch: it is raised when no message came,
        else the messages are returned (and the next fetch meets the error).

        Args:
            batch: most messages to return, >= 1.
            expires: seconds the server holds the request.
            no_wait: do not wait for a full batch.
            heartbeat: seconds between the server's idle heartbeats; two missed ones end
                the fetch early (the server or the route is gone). ``None``: a quarter of
                ``expires`` (at most 5 s) when ``expires`` is at least 4 s, else none.

        Returns:
            The messages, in delivery order; ``[]`` when none came within ``expires``.

        Raises:
            ConsumerNotFound: the consumer does not exist (or was deleted mid-fetch).
            StreamNotFound: the stream does not exist.
            JetStreamError: the server refused the request (``status`` 400/409), or the
                consumer is unavailable (``status`` 503, leader election: transient).
            ConfigurationError: invalid arguments. MeshClosed.
        """
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ConfigurationError(f"batch must be an int >= 1, not {batch!r}")
        expires_ns = _seconds("expires", expires)
        if heartbeat is None and expires >= 4:
            heartbeat = min(expires / 4, 5.0)
        if heartbeat is not None:
            if _seconds("heartbeat", heartbeat) * 2 > expires_ns:
                raise ConfigurationError(f"heartbeat ({heartbeat} s) must be at most half of expires ({expires} s)")
        async with self._lock:
            if self._closed:
                raise MeshClosed(f"{self!r} is closed")
            if self._sub is None:
                self._sub = await self._t.subscribe(self._prefix + "*", self._on_msg)
            out: list[JsMsg] = []
            while self._buffer and len(out) < batch:
                out.append(self._buffer.popleft())
            if len(out) == batch:
                return out
            loop = asyncio.get_running_loop()
            pull = _Pull(self._prefix + str(next(self._tokens)), batch - len(out), loop)
            body: dict[str, Any] = {"batch": pull.want, "expires": expires_ns}
            if no_wait:
                body["no_wait"] = True
            if heartbeat is not None:
                body["idle_heartbeat"] = round(heartbeat * _NS)
            self._pull = pull
            try:
                await self._t.publish(self._next_subject, json.dumps(body).encode(), reply=pull.inbox)
                await self._wait(pull, loop.time() + expires + _FETCH_GRACE, heartbeat)
            finally:
                self._pull = None
            out.extend(pull.msgs)
            if pull.error is not None and not out:
                if pull.error.status == 503:
                    raise await self._unavailable(pull.error)
                raise pull.error
            return out

    @staticmethod
    async def _wait(pull: _Pull, until: float, heartbeat: float | None) -> None:
        loop = pull.loop
        while not pull.done.is_set():
            now = loop.time()
            left = until - now
            if heartbeat is not None:
                left = min(left, pull.last_seen + 2 * heartbeat + 0.25 - now)
            if left <= 0:
                return  # expired without the server's 408, or heartbeats missed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await pull.done.wait()

    async def _unavailable(self, error: JetStreamError) -> JetStreamError:
        """No consumer answered: tell a missing consumer or stream from an unavailable one."""
        try:
            await consumer_info(self._t, self.stream, self.durable, timeout=_LOOKUP_TIMEOUT)
        except (ConsumerNotFound, StreamNotFound) as exc:
            missing = type(exc)(f"{self!r}: {exc}", status=exc.status, err_code=exc.err_code)
            missing.__cause__ = error
            return missing
        except (JetStreamError, CallTimeout):
            pass
        return JetStreamError(f"{error} (the consumer exists: its leader may be changing; fetch again)", status=503)

    async def close(self) -> None:
        """Unsubscribe and hand undelivered buffered messages back (NAK). Idempotent."""
        if self._closed:
            return
        self._closed = True
        pull = self._pull
        if pull is not None:
            pull.error = JetStreamError(f"{self!r} closed during a fetch")
            pull.done.set()
        if self._sub is not None:
            await self._sub.unsubscribe()
        buffered, self._buffer = list(self._buffer), deque()
        for msg in buffered:
            with contextlib.suppress(TransportError):
                await msg.nak()
