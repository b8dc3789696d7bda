"""JetStream key-value buckets, spoken directly over the JetStream wire API.

The cluster layer keeps membership leases, the agent directory and agent state here. We
do not wrap nats-py's ``KeyValue``: each of its pitfalls (``nats-facts.md``) is avoided by
sending the JetStream requests ourselves through :class:`Transport`'s request mux:

* reads are direct gets (``allow_direct`` is always on), answered by any replica, so they
  keep working during leader elections (possibly stale);
* the raw reply keeps every header, so TTL markers (``Nats-Marker-Reason``) and delete /
  purge tombstones read as "absent", and :meth:`Bucket.create` writes over them;
* conflicts come back as the server's ``err_code`` (10071) and become :class:`CasConflict`;
* sizes are checked (headers + value ≤ ``max_payload``) before anything is sent;
* watches manage their own consumer and recreate it after a reconnect (``kv_watch.py``).

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
import datetime
import json
import random
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ..errors import CallTimeout, ConfigurationError, PayloadTooLarge, TransportError
from .connection import Inbound, NoResponders, Transport

if TYPE_CHECKING:
    from .kv_watch import Watch

__all__ = ["Bucket", "CasConflict", "Entry", "KeyNotFound", "KvError", "Operation", "open_bucket", "validate_key"]

Operation = Literal["put", "delete", "purge"]
T = TypeVar("T")

_KEY_RE = re.compile(r"[-/_=.a-zA-Z0-9]+")
_BUCKET_RE = re.compile(r"[a-zA-Z0-9_-]+")
_WRONG_LAST = re.compile(r"wrong last sequence: (\d+)")
_NS = 1_000_000_000
_READ_ATTEMPT = 1.0  # seconds one read attempt may take before it is retried
_WRITE_ATTEMPT = 2.0  # writes are retried with the same Nats-Msg-Id, so the server dedups them
_EXPECTED = "Nats-Expected-Last-Subject-Sequence"
_VALUE_LIMIT = "natsagents.max_value_size"  # stream metadata: the value limit asked for
_HEADER_ROOM = 512  # bytes of headers a KV write may add on top of the value
_TRANSIENT_CODES = frozenset({10008, 10118})  # cluster temporarily unavailable, stream offline


class KvError(TransportError):
    """A key-value operation failed on the server.

    Attributes:
        status: the JetStream API status (400, 404, 503 …), when the server gave one.
        err_code: the JetStream error code (10071 …), when the server gave one.
    """

    def __init__(self, message: str, *, status: int | None = None, err_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.err_code = err_code

    @property
    def transient(self) -> bool:
        """Whether the server refused for now (leader election, quorum lost): retry later."""
        return self.status in (408, 503) or self.err_code in _TRANSIENT_CODES


class CasConflict(KvError):
    """A compare-and-set write found another revision than the one expected.

    Attributes:
        key: the key written.
        expected_revision: the revision the write expected (``0``: the key absent).
        current_revision: the key's last revision when the server refused (tombstones
            count), when known.
    """

    def __init__(self, message: str, *, key: str, expected_revision: int, current_revision: int | None) -> None:
        super().__init__(message, status=400, err_code=10071)
        self.key = key
        self.expected_revision = expected_revision
        self.current_revision = current_revision


class KeyNotFound(CasConflict):
    """A compare-and-set update or delete found the key absent (never written, deleted,
    purged or expired). A :class:`CasConflict`, so one ``except`` catches both."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One revision of a key.

    Attributes:
        key: the key.
        value: the value (``b""`` for deletes and purges).
        revision: the stream sequence of this revision; pass it to :meth:`Bucket.update`.
        created: when the server stored it (Unix seconds), when known.
        operation: ``"put"``, or ``"delete"`` / ``"purge"`` (only seen in watches).
    """

    key: str
    value: bytes
    revision: int
    created: float | None
    operation: Operation = "put"


def validate_key(key: object) -> str:
    """Return ``key`` if it is a valid KV key.

    Raises:
        ConfigurationError: not a string of ``[-/_=.a-zA-Z0-9]``, or it starts or ends with
            ``.``, or has an empty token (``a..b``).
    """
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or key[0] == "." or key[-1] == "." or ".." in key:
        raise ConfigurationError(f"invalid KV key {key!r}: use [-/_=.a-zA-Z0-9], no leading, trailing or double '.'")
    return key


def _operation(headers: Mapping[str, str]) -> Operation:
    """The KV operation a stored message stands for; server TTL markers count as purges/deletes."""
    op = headers.get("KV-Operation")
    if op == "DEL":
        return "delete"
    if op == "PURGE":
        return "purge"
    reason = headers.get("Nats-Marker-Reason")
    if reason is not None:
        return "delete" if reason == "Remove" else "purge"
    return "put"


def _parse_time(text: str | None) -> float | None:
    """RFC 3339 with nanoseconds (``2026-01-02T03:04:05.123456789Z``) → Unix seconds."""
    if not text:
        return None
    try:
        base, _, rest = text.partition(".")
        frac = rest.rstrip("Z") if rest else ""
        stamp = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.UTC).timestamp()
        return stamp + (int(frac) / 10 ** len(frac) if frac.isdigit() else 0.0)
    except ValueError:
        return None


def _decode(what: str, msg: Inbound) -> dict[str, Any]:
    """A JetStream API reply as a dict; its ``error`` raised as :class:`KvError`."""
    status = (msg.headers or {}).get("Status")
    if status and not msg.data:
        raise KvError(f"{what}: status {status}", status=int(status) if status.isdigit() else None)
    try:
        doc = json.loads(msg.data)
    except ValueError:
        raise KvError(f"{what}: the server sent a reply that is not JSON") from None
    err = doc.get("error") if isinstance(doc, dict) else {"description": "the reply is not a JSON object"}
    if isinstance(err, dict):
        code, status_code = err.get("err_code"), err.get("code")
        text = f"{what}: {err.get('description', 'JetStream error')} (err_code {code})"
        if code == 10054:
            raise PayloadTooLarge(text, details={"err_code": code})
        raise KvError(text, status=_int_or_none(status_code), err_code=_int_or_none(code))
    return doc  # type: ignore[no-any-return]


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


async def api_request(transport: Transport, subject: str, body: object, timeout: float) -> dict[str, Any]:
    """One JetStream API request (JSON in, JSON out), not retried.

    Raises:
        KvError: the server answered with an error; NoResponders, CallTimeout, MeshClosed.
    """
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    return _decode(subject, await transport.request(subject, payload, timeout=timeout))


async def retry(
    what: str,
    op: Callable[[float], Awaitable[T]],
    timeout: float,
    *,
    write: bool = False,
    attempt_timeout: float = _READ_ATTEMPT,
) -> T:
    """Run ``op(attempt_timeout)`` until it succeeds or ``timeout`` seconds pass.

    Timeouts, "no responders" and transient :class:`KvError` are retried with jittered
    backoff. Writes must be idempotent (``Nats-Msg-Id``): after a timed-out attempt the
    first may still land.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.02
    last: BaseException | None = None
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            unknown = "; the write may or may not have landed" if write else ""
            raise CallTimeout(f"{what}: no answer within {timeout:g} s (last error: {last}){unknown}") from last
        try:
            return await op(min(remaining, attempt_timeout))
        except (CallTimeout, NoResponders) as exc:
            last = exc
        except KvError as exc:
            if not exc.transient:
                raise
            last = exc
        remaining = deadline - loop.time()
        if remaining > 0:
            await asyncio.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
        delay = min(delay * 2, 0.5)


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

    async def _last(self, key: str, timeout: float) -> _Last | None:
        subject = f"$JS.API.DIRECT.GET.{self.stream}.{self.prefix}{key}"

        async def attempt(t: float) -> _Last | None:
            msg = await self._t.request(subject, b"", timeout=t)
            headers = msg.headers or {}
            status = headers.get("Status")
            if status == "404":
                return None
            if status:
                raise KvError(
                    f"get {self.name}/{key}: status {status}", status=int(status) if status.isdigit() else None
                )
            revision = int(headers.get("Nats-Sequence", "0"))
            entry = None
            if _operation(headers) == "put":
                entry = Entry(key, msg.data, revision, _parse_time(headers.get("Nats-Time-Stamp")))
            return _Last(revision, entry, headers.get("Nats-Msg-Id"))

        return await retry(f"get {self.name}/{key}", attempt, timeout)

    async def get(self, key: str, *, timeout: float | None = None) -> Entry | None:
        """The current value of ``key``, or ``None`` when it is absent, deleted, purged or
        expired. Reads may be slightly stale on a replicated bucket (any replica answers).

        Args:
            key: the key.
            timeout: seconds; ``None`` for the bucket's default.

        Raises:
            ConfigurationError: invalid key.
            CallTimeout: no replica answered in time.
            KvError, MeshClosed.
        """
        last = await self._last(validate_key(key), self._timeout(timeout))
        return last.entry if last is not None else None

    async def keys(self, pattern: str = ">", *, timeout: float | None = None) -> list[str]:
        """The keys that hold a value (sorted), optionally filtered by a subject pattern.

        Args:
            pattern: ``>`` for all, or a key pattern with ``*`` / ``>`` wildcard tokens.
            timeout: seconds; ``None`` for the bucket's default.

        Raises:
            ConfigurationError: invalid pattern. CallTimeout, KvError, MeshClosed.
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
        from .kv_watch import Watch

        return Watch(
            self._t, self, pattern, include_history=include_history, heartbeat=heartbeat, headers_only=headers_only
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
            return int(_decode(label, reply)["seq"])

        deadline = asyncio.get_running_loop().time() + timeout
        try:
            return await retry(label, attempt, timeout, write=True, attempt_timeout=_WRITE_ATTEMPT)
        except KvError as exc:
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
            CallTimeout, KvError, MeshClosed.
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
            ConfigurationError, PayloadTooLarge, CallTimeout, KvError, MeshClosed.
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
            ConfigurationError, PayloadTooLarge, CallTimeout (outcome unknown), KvError, MeshClosed.
        """
        return await self._write(key, value, {}, self._timeout(timeout), "put")

    async def delete(self, key: str, *, revision: int | None = None, timeout: float | None = None) -> None:
        """Delete ``key`` (a tombstone; history is kept), optionally only at ``revision``.

        Raises:
            KeyNotFound: ``revision`` given and the key holds no value.
            CasConflict: ``revision`` given and the key is at another revision.
            ConfigurationError, CallTimeout (outcome unknown), KvError, MeshClosed.
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
            ConfigurationError, CallTimeout (outcome unknown), KvError, MeshClosed.
        """
        await self._write(key, b"", {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}, self._timeout(timeout), "purge")


def _left(deadline: float) -> float:
    """Seconds left until ``deadline``, at least a millisecond (``retry`` reports the timeout)."""
    return max(deadline - asyncio.get_running_loop().time(), 0.001)


def _revision(revision: object) -> int:
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise ConfigurationError(f"revision must be an int >= 1, not {revision!r}")
    return revision


def _cluster_size(transport: Transport) -> int:
    """Servers in the connected server's cluster, from its INFO (1 when not clustered).

    A server that just joined may not list every peer yet: only a lower bound.
    """
    info: Mapping[str, Any] = transport._nc._server_info or {}
    return max(1, len(set(info.get("connect_urls") or ()))) if info.get("cluster") else 1


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
        KvError: the server refused (e.g. not enough servers for ``replicas``).
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
        "num_replicas": replicas if replicas is not None else (3 if _cluster_size(transport) > 1 else 1),
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

    async def attempt(t: float) -> dict[str, Any]:
        try:
            created = await api_request(transport, f"$JS.API.STREAM.CREATE.{stream}", config, t)
        except KvError as exc:
            if exc.err_code == 10058:  # exists with another configuration: bind to it
                info = await api_request(transport, f"$JS.API.STREAM.INFO.{stream}", None, t)
                existing: dict[str, Any] = info["config"]
                if existing.get("allow_direct") and existing.get("allow_msg_ttl"):
                    return existing
                patched = dict(existing, allow_direct=True, allow_msg_ttl=True)
                updated = await api_request(transport, f"$JS.API.STREAM.UPDATE.{stream}", patched, t)
                return dict(updated["config"])
            if exc.err_code in (10023, 10074, 10005):  # not enough servers (or not clustered)
                if replicas is None and config["num_replicas"] > 1 and _cluster_size(transport) < 3:
                    config["num_replicas"] = 1  # auto on a cluster of 2 servers
                    return await attempt(t)
                raise KvError(
                    f"cannot create bucket {name} with {config['num_replicas']} replicas: {exc}",
                    status=exc.status,
                    err_code=exc.err_code,
                ) from exc
            raise
        return dict(created["config"])

    final = await retry(f"open bucket {name}", attempt, timeout, attempt_timeout=3.0)  # creating is idempotent
    return Bucket(transport, final, timeout=timeout)
