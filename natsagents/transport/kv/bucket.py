"""JetStream key-value buckets: open one, read, write (create / CAS / put / delete / purge).

The cluster layer keeps membership leases, the agent directory and agent state here. We
do not wrap nats-py's ``KeyValue``: each of its pitfalls (``nats-facts.md``) is avoided by
speaking the JetStream API ourselves through the JetStream layer (``transport/jetstream/``:
requests over :class:`Transport`'s request mux, retries, error decoding, stream creation):

* reads are direct gets (``allow_direct`` is always on), answered by any replica, so they
  keep working during leader elections (possibly stale); ``get(key, leader=True)`` reads
  from the stream leader instead (``STREAM.MSG.GET``): never older than an acknowledged
  write, unavailable without a leader;
* the raw reply keeps every header, so TTL markers (``Nats-Marker-Reason``) and delete /
  purge tombstones read as "absent", and :meth:`Bucket.create` writes over them;
* conflicts come back as the server's ``err_code`` (10071) and become :class:`CasConflict`;
* sizes are checked (headers + value ≤ ``max_payload``) before anything is sent;
* watches manage their own consumer and recreate it after a reconnect (``watch.py``).

Timeouts and retries: every operation takes ``timeout`` in seconds (``None``: the bucket's
default). Within it, timed-out attempts, "no responders" and 503s (leader elections) are
retried with backoff. Writes too: each write carries a fresh ``Nats-Msg-Id``, so a retry of
a plain write that did land is deduplicated by the server, and a compare-and-set retry that
conflicts with its own earlier attempt (the server checks revisions before it dedups) is
recognised by the message id stored with that revision. When the timeout expires on a
write, :class:`CallTimeout` means the outcome is unknown: read the key; if its revision
holds your value, the write landed, otherwise retry against that revision.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import CallTimeout, CasConflict, ConfigurationError, JetStreamError, KeyNotFound, PayloadTooLarge
from ..connection import Transport
from ..jetstream import api_request, create_stream, decode_reply, retry
from .entry import Entry, operation_of, parse_time, validate_key
from .watch import Watch

__all__ = ["Bucket", "open_bucket"]

_BUCKET_RE = re.compile(r"[a-zA-Z0-9_-]+")
_WRONG_LAST = re.compile(r"wrong last sequence: (\d+)")
_NS = 1_000_000_000
_WRITE_ATTEMPT = 2.0  # writes are retried with the same Nats-Msg-Id, so the server dedups them
_OPEN_ATTEMPT = 3.0  # one attempt at creating or binding the bucket's stream
_EXPECTED = "Nats-Expected-Last-Subject-Sequence"
_NO_MESSAGE = 10037  # STREAM.MSG.GET: no message found
_VALUE_LIMIT = "natsagents.max_value_size"  # stream metadata: the value limit asked for
_HEADER_ROOM = 512  # bytes of headers a KV write may add on top of the value


@dataclass(frozen=True, slots=True)
class _Last:
    """The last stored message of a key, tombstones included."""

    revision: int
    entry: Entry | None  # None for a tombstone (delete, purge, TTL marker)
    msg_id: str | None  # the Nats-Msg-Id of the write that stored it


class Bucket:
    """A JetStream KV bucket. Get one with :func:`open_bucket`.

    Attributes:
        name: the bucket name; the stream is ``KV_<name>``.
        replicas, history, ttl, max_value_size, limit_marker_ttl: its configuration as the
            server holds it (an existing bucket keeps its own).
        timeout: default seconds for each operation.
    """

    def __init__(self, transport: Transport, config: Mapping[str, Any], *, timeout: float) -> None:
        self._t = transport
        self.stream: str = config["name"]
        self.name = self.stream.removeprefix("KV_")
        self.prefix = f"$KV.{self.name}."
        self.replicas = int(config.get("num_replicas") or 1)
        self.history = int(config.get("max_msgs_per_subject") or 1)
        self.ttl: float | None = (config.get("max_age") or 0) / _NS or None
        limit = (config.get("metadata") or {}).get(_VALUE_LIMIT) or config.get("max_msg_size", -1)
        self.max_value_size: int | None = int(limit) if int(limit) > 0 else None
        self.limit_marker_ttl: float | None = (config.get("subject_delete_marker_ttl") or 0) / _NS or None
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<Bucket {self.name} R{self.replicas} history={self.history}>"

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.timeout
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0, not {timeout}")
        return timeout

    # -- reads -----------------------------------------------------------------------

    async def _last(self, key: str, timeout: float, *, leader: bool = False) -> _Last | None:
        if leader and self.replicas > 1:
            # (One replica: the server that stores the stream answers a direct get too, and
            # it has every write it acknowledged: as fresh as the leader, and cheaper.)
            return await self._last_from_leader(key, timeout)
        subject = f"$JS.API.DIRECT.GET.{self.stream}.{self.prefix}{key}"

        async def attempt(t: float) -> _Last | None:
            msg = await self._t.request(subject, b"", timeout=t)
            headers = msg.headers or {}
            status = headers.get("Status")
            if status == "404":
                return None
            if status:
                raise JetStreamError(
                    f"get {self.name}/{key}: status {status}", status=int(status) if status.isdigit() else None
                )
            return _stored(key, msg.data, headers)

        return await retry(f"get {self.name}/{key}", attempt, timeout)

    async def _last_from_leader(self, key: str, timeout: float) -> _Last | None:
        """The last message of ``key`` as the stream leader holds it (``STREAM.MSG.GET``,
        which only the leader answers; a direct get may come from any replica, one that
        lags by seconds after a partition included)."""
        subject = f"$JS.API.STREAM.MSG.GET.{self.stream}"
        body = {"last_by_subj": self.prefix + key}
        what = f"get {self.name}/{key} from the leader"

        async def attempt(t: float) -> _Last | None:
            try:
                reply = await api_request(self._t, subject, body, t)
            except JetStreamError as exc:
                if exc.err_code == _NO_MESSAGE:
                    return None
                raise
            return _stored(key, *_message_of(what, reply))

        return await retry(what, attempt, timeout)

    async def get(self, key: str, *, leader: bool = False, timeout: float | None = None) -> Entry | None:
        """The current value of ``key``, or ``None`` when it is absent, deleted, purged or
        expired. Reads may be stale on a replicated bucket (any replica answers, one that
        was cut off for a while too) unless ``leader`` is set.

        Args:
            key: the key.
            leader: read from the stream leader (``$JS.API.STREAM.MSG.GET``): never older
                than a write acknowledged before the read began (a linearizable read, as
                long as the leader is the Raft leader; see ``docs/architecture.md``
                "Partitions"). Slower, and it fails (``CallTimeout``) while no leader is
                elected or reachable, where a direct get still answers. A bucket of one
                replica is read with a direct get either way (its only server is its leader).
            timeout: seconds; ``None`` for the bucket's default.

        Raises:
            ConfigurationError: invalid key.
            CallTimeout: no replica answered in time.
            JetStreamError, MeshClosed.
        """
        last = await self._last(validate_key(key), self._timeout(timeout), leader=leader)
        return last.entry if last is not None else None

    async def keys(self, pattern: str = ">", *, timeout: float | None = None) -> list[str]:
        """The keys that hold a value (sorted), optionally filtered by a subject pattern.

        Args:
            pattern: ``>`` for all, or a key pattern with ``*`` / ``>`` wildcard tokens.
            timeout: seconds; ``None`` for the bucket's default.

        Raises:
            ConfigurationError: invalid pattern. CallTimeout, JetStreamError, MeshClosed.
        """
        limit = self._timeout(timeout)
        found: list[str] = []
        scope = asyncio.timeout(limit)
        try:
            async with scope, self.watch(pattern, headers_only=True) as watch:
                async for entry in watch:
                    if entry is None:
                        break
                    found.append(entry.key)
        except TimeoutError as exc:
            if not scope.expired():
                raise
            raise CallTimeout(f"keys {self.name}: not listed within {limit:g} s") from exc
        return sorted(found)

    def watch(
        self, pattern: str = ">", *, include_history: bool = False, heartbeat: float = 1.0, headers_only: bool = False
    ) -> Watch:
        """Watch keys: current values, then ``None`` once they are all delivered, then
        live changes (deletes and purges included, as entries with that ``operation``).

        Tombstones are skipped among the current values (the key is simply absent). The
        watch recreates its server-side consumer after a reconnect, a gap, or missed
        heartbeats, resuming after the last revision seen: no duplicates, no gaps. Use
        ``async with bucket.watch() as w: async for entry in w: …``; cancelling or closing
        it deletes the consumer.

        Args:
            pattern: ``>`` for all keys, or a key pattern with ``*`` / ``>`` wildcards.
            include_history: replay every stored revision instead of the latest only.
            heartbeat: seconds between the server's idle heartbeats; three missed ones
                make the watch recreate its consumer.
            headers_only: leave values out (``Entry.value`` is ``b""``).

        Raises:
            ConfigurationError: invalid pattern or heartbeat.
        """
        return Watch(
            self._t,
            self.stream,
            self.prefix,
            pattern,
            include_history=include_history,
            heartbeat=heartbeat,
            headers_only=headers_only,
        )

    # -- writes ----------------------------------------------------------------------

    async def _write(self, key: str, value: bytes, headers: dict[str, str], timeout: float, what: str) -> int:
        validate_key(key)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ConfigurationError(f"KV values are bytes, not {type(value).__name__}")
        value = bytes(value)
        if self.max_value_size is not None and len(value) > self.max_value_size:
            raise PayloadTooLarge(
                f"{what} {self.name}/{key}: value is {len(value)} bytes; the bucket allows {self.max_value_size}",
                details={"size": len(value), "max_value_size": self.max_value_size},
            )
        subject, label = self.prefix + key, f"{what} {self.name}/{key}"
        msg_id = secrets.token_hex(12)
        headers = {**headers, "Nats-Msg-Id": msg_id}
        timed_out = False

        async def attempt(t: float) -> int:
            nonlocal timed_out
            try:
                reply = await self._t.request(subject, value, headers=headers, timeout=t)
            except CallTimeout:
                timed_out = True
                raise
            return int(decode_reply(label, reply)["seq"])

        deadline = asyncio.get_running_loop().time() + timeout
        try:
            return await retry(label, attempt, timeout, write=True, attempt_timeout=_WRITE_ATTEMPT)
        except JetStreamError as exc:
            if exc.err_code not in (10071, 10164):
                raise
            conflict = exc
        expected = int(headers.get(_EXPECTED, "0"))
        found = _WRONG_LAST.search(str(conflict))
        current = int(found.group(1)) if found else None
        if timed_out:
            # The server checks the expected revision before it dedups: an earlier attempt
            # may be the revision we conflict with. Its stored Nats-Msg-Id tells.
            last = await self._last(key, _left(deadline))
            if last is not None and last.revision == current and last.msg_id == msg_id:
                return last.revision
            raise CallTimeout(
                f"{label}: an attempt timed out and the key is now at revision {current}; "
                "the write may or may not have landed"
            ) from conflict
        raise CasConflict(
            f"{label}: expected revision {expected}, found {current}",
            key=key,
            expected_revision=expected,
            current_revision=current,
        ) from conflict

    async def create(self, key: str, value: bytes, *, ttl: float | None = None, timeout: float | None = None) -> int:
        """Write ``key`` only if it holds no value (deleted, purged or expired counts as none).

        Args:
            key: the key.
            value: the value.
            ttl: seconds (≥ 1, millisecond precision) after which the server removes the key.
            timeout: seconds; ``None`` for the bucket's default. On timeout, read the key:
                if it holds your value, the create landed.

        Returns:
            The new revision.

        Raises:
            CasConflict: the key holds a value (``current_revision`` is its revision).
            ConfigurationError: invalid key, value or ttl.
            PayloadTooLarge: the value (with headers) is too large.
            CallTimeout, JetStreamError, MeshClosed.
        """
        limit = self._timeout(timeout)
        headers = {_EXPECTED: "0"}
        if ttl is not None:
            if not ttl >= 1:
                raise ConfigurationError(f"a key's ttl must be at least 1 second, not {ttl}")
            headers["Nats-TTL"] = f"{round(ttl * 1000)}ms"
        deadline = asyncio.get_running_loop().time() + limit
        for _ in range(3):
            try:
                return await self._write(key, value, headers, _left(deadline), "create")
            except CasConflict as exc:
                conflict = exc
            last = await self._last(key, _left(deadline))  # a tombstone or TTL marker: write over it
            if last is not None and last.entry is not None:
                raise CasConflict(
                    f"create {self.name}/{key}: the key exists at revision {last.revision}",
                    key=key,
                    expected_revision=0,
                    current_revision=last.revision,
                ) from conflict
            headers[_EXPECTED] = str(last.revision if last is not None else 0)
        raise conflict

    async def update(
        self, key: str, value: bytes, *, revision: int, ttl: float | None = None, timeout: float | None = None
    ) -> int:
        """Write ``key`` only if its last revision is ``revision`` (compare-and-set).

        Args:
            key: the key.
            value: the value.
            revision: the revision the caller last read (``Entry.revision``).
            ttl: seconds (≥ 1) after which the server removes the key (a lease renewal).
            timeout: seconds; ``None`` for the bucket's default. On timeout, read the key:
                if its revision holds your value, the update landed; otherwise retry.

        Returns:
            The new revision.

        Raises:
            KeyNotFound: the key holds no value any more.
            CasConflict: another revision was written since ``revision``.
            ConfigurationError, PayloadTooLarge, CallTimeout, JetStreamError, MeshClosed.
        """
        headers = {_EXPECTED: str(_revision(revision))}
        if ttl is not None:
            if not ttl >= 1:
                raise ConfigurationError(f"a key's ttl must be at least 1 second, not {ttl}")
            headers["Nats-TTL"] = f"{round(ttl * 1000)}ms"
        return await self._cas("update", key, value, headers, timeout)

    async def _cas(self, what: str, key: str, value: bytes, headers: dict[str, str], timeout: float | None) -> int:
        limit = self._timeout(timeout)
        deadline = asyncio.get_running_loop().time() + limit
        try:
            return await self._write(key, value, headers, limit, what)
        except CasConflict as exc:
            absent = exc.current_revision == 0
            if not absent:
                last = await self._last(key, max(_left(deadline), 0.5))
                absent = last is None or last.entry is None
            if absent:
                raise KeyNotFound(
                    f"{what} {self.name}/{key}: the key holds no value (expected revision {exc.expected_revision})",
                    key=key,
                    expected_revision=exc.expected_revision,
                    current_revision=exc.current_revision or None,
                ) from exc
            raise

    async def put(self, key: str, value: bytes, *, timeout: float | None = None) -> int:
        """Write ``key`` unconditionally.

        Returns:
            The new revision.

        Raises:
            ConfigurationError, PayloadTooLarge, CallTimeout (outcome unknown), JetStreamError, MeshClosed.
        """
        return await self._write(key, value, {}, self._timeout(timeout), "put")

    async def delete(self, key: str, *, revision: int | None = None, timeout: float | None = None) -> None:
        """Delete ``key`` (a tombstone; history is kept), optionally only at ``revision``.

        Raises:
            KeyNotFound: ``revision`` given and the key holds no value.
            CasConflict: ``revision`` given and the key is at another revision.
            ConfigurationError, CallTimeout (outcome unknown), JetStreamError, MeshClosed.
        """
        headers = {"KV-Operation": "DEL"}
        if revision is None:
            await self._write(key, b"", headers, self._timeout(timeout), "delete")
            return
        headers[_EXPECTED] = str(_revision(revision))
        await self._cas("delete", key, b"", headers, timeout)

    async def purge(self, key: str, *, timeout: float | None = None) -> None:
        """Remove ``key`` and all its history, leaving one purge tombstone.

        Raises:
            ConfigurationError, CallTimeout (outcome unknown), JetStreamError, MeshClosed.
        """
        await self._write(key, b"", {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}, self._timeout(timeout), "purge")


def _left(deadline: float) -> float:
    """Seconds left until ``deadline``, at least a millisecond (``retry`` reports the timeout)."""
    return max(deadline - asyncio.get_running_loop().time(), 0.001)


def _revision(revision: object) -> int:
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise ConfigurationError(f"revision must be an int >= 1, not {revision!r}")
    return revision


def _stored(key: str, data: bytes, headers: Mapping[str, str]) -> _Last:
    revision = int(headers.get("Nats-Sequence", "0"))
    entry = None
    if operation_of(headers) == "put":
        entry = Entry(key, data, revision, parse_time(headers.get("Nats-Time-Stamp")))
    return _Last(revision, entry, headers.get("Nats-Msg-Id"))


def _message_of(what: str, reply: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The data and headers of a ``STREAM.MSG.GET`` reply, with the sequence and the
    store time as a direct get gives them (``Nats-Sequence``, ``Nats-Time-Stamp``).

    Raises:
        JetStreamError: the reply is not a stored message.
    """
    message = reply.get("message")
    try:
        if not isinstance(message, Mapping):
            raise ValueError("no message")
        seq = message["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError(f"bad sequence {seq!r}")
        data = base64.b64decode(message.get("data") or "", validate=True)
        headers = _parse_headers(base64.b64decode(message.get("hdrs") or "", validate=True))
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise JetStreamError(f"{what}: malformed reply ({exc})") from None
    headers["Nats-Sequence"] = str(seq)
    if isinstance(message.get("time"), str):
        headers["Nats-Time-Stamp"] = message["time"]
    return data, headers


def _parse_headers(block: bytes) -> dict[str, str]:
    """A ``NATS/1.0`` header block as a dict (the first value of a repeated name).

    Raises:
        ValueError: not a header block.
    """
    if not block:
        return {}
    lines = block.decode().split("\r\n")
    if not lines[0].startswith("NATS/1.0"):
        raise ValueError("not a NATS header block")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"malformed header line {line[:40]!r}")
        headers.setdefault(name.strip(), value.strip())
    return headers


async def open_bucket(
    transport: Transport,
    name: str,
    *,
    history: int = 1,
    ttl: float | None = None,
    replicas: int | None = None,
    max_value_size: int | None = None,
    limit_marker_ttl: float | None = None,
    timeout: float = 5.0,
) -> Bucket:
    """Create the bucket ``name``, or bind to it if it exists (its own configuration wins;
    only ``allow_direct`` and per-key TTLs are switched on if missing).

    Args:
        transport: the connection.
        name: bucket name, ``[a-zA-Z0-9_-]+``.
        history: revisions kept per key, 1-64.
        ttl: seconds after which any value expires (``None``: never).
        replicas: stream replicas; ``None`` picks 3 when the server is clustered (1 when
            the cluster turns out to have fewer than 3 servers), else 1.
        max_value_size: largest value in bytes (``None``: up to ``max_payload``).
        limit_marker_ttl: when set (seconds ≥ 1), the server leaves a marker when a key
            expires, so watchers see expiries as purges; the marker lives this long.
        timeout: seconds for opening, and the default for every operation.

    Raises:
        ConfigurationError: an invalid argument.
        JetStreamError: the server refused (e.g. not enough servers for ``replicas``).
        CallTimeout, MeshClosed.
    """
    if not isinstance(name, str) or not _BUCKET_RE.fullmatch(name):
        raise ConfigurationError(f"invalid bucket name {name!r}: use [a-zA-Z0-9_-]+")
    if not 1 <= history <= 64:
        raise ConfigurationError(f"history must be within 1..64, not {history}")
    for label, seconds in (("ttl", ttl), ("limit_marker_ttl", limit_marker_ttl)):
        if seconds is not None and not seconds >= 1:
            raise ConfigurationError(f"{label} must be at least 1 second, not {seconds}")
    if replicas is not None and not 1 <= replicas <= 5:
        raise ConfigurationError(f"replicas must be within 1..5, not {replicas}")
    if max_value_size is not None and max_value_size < 1:
        raise ConfigurationError(f"max_value_size must be >= 1, not {max_value_size}")
    if timeout <= 0:
        raise ConfigurationError(f"timeout must be > 0, not {timeout}")
    stream = f"KV_{name}"
    config: dict[str, Any] = {
        "name": stream,
        "subjects": [f"$KV.{name}.>"],
        "retention": "limits",
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": round((ttl or 0) * _NS),
        "max_msgs_per_subject": history,
        # The server's limit counts headers too: leave room for ours, keep the value limit apart.
        "max_msg_size": max_value_size + _HEADER_ROOM if max_value_size else -1,
        "storage": "file",
        "discard": "new",
        "num_replicas": replicas,  # None: the jetstream layer picks 3 on a cluster, else 1
        "duplicate_window": round(min(ttl or 120.0, 120.0) * _NS),
        "deny_delete": True,
        "deny_purge": False,
        "allow_rollup_hdrs": True,
        "allow_direct": True,
        "allow_msg_ttl": True,
    }
    if max_value_size:
        config["metadata"] = {_VALUE_LIMIT: str(max_value_size)}
    if limit_marker_ttl is not None:
        config["subject_delete_marker_ttl"] = round(limit_marker_ttl * _NS)

    final = await create_stream(
        transport, config, reconcile=_bind, what=f"open bucket {name}", timeout=timeout, attempt_timeout=_OPEN_ATTEMPT
    )
    return Bucket(transport, final, timeout=timeout)


def _bind(existing: dict[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any] | None:
    """An existing bucket keeps its own configuration; only direct gets and per-key TTLs
    are switched on if missing (every read and ``create(ttl=…)`` needs them)."""
    if existing.get("allow_direct") and existing.get("allow_msg_ttl"):
        return None
    return dict(existing, allow_direct=True, allow_msg_ttl=True)
