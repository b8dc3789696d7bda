"""Native distributed counters: JetStream's counter streams (ADR-49, nats-server ≥ 2.12).

``await mesh.counter("hits")`` returns a :class:`DistributedCounter`: ``add(delta)`` returns
the new total, ``value()`` reads it. Every mesh keeps its counters in one stream,
``<prefix>_counters`` (dots of the prefix made underscores), with ``allow_msg_counter``
and ``allow_direct`` set; counter ``name`` is the subject ``<prefix>.counter.<name>``.
The server does the arithmetic: an add is a publish with an empty body and the header
``Nats-Incr: +5``; the stream leader adds it to the last total of the subject, stores the
new total in the message body (``{"val":"42"}``) and returns it in the PubAck. Totals are
arbitrary-precision integers carried as decimal strings. The wire contract is
``docs/protocol.md`` §18; when to choose this or the CRDT ``PNCounter`` is in
``docs/crdt.md``.

Guarantees: an add is stored by the stream's Raft quorum before it is acknowledged (R3 on
a cluster of three or more servers), so it needs the quorum: on the minority side of a
partition adds fail (:class:`~natsagents.errors.CallTimeout` or
:class:`~natsagents.errors.JetStreamError`) while reads may still answer, stale. Each add
carries a fresh ``Nats-Msg-Id`` and a timed-out attempt is published again with the same
id, so within the stream's duplicate window (:data:`DUPLICATE_WINDOW`) a retry is never
counted twice.

Errors::

    ConfigurationError (ValueError)   a bad name, delta or timeout; a stream of that name
                                      that is not a counter stream
    CountersUnsupported               the server is older than 2.12 (a JetStreamError)
    ProtocolError                     the server (or someone answering for it) sent a
                                      total that is not a decimal integer
    CallTimeout, JetStreamError, Unauthorized, MeshClosed  as for any JetStream request
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError, JetStreamError, ProtocolError, StreamNotFound
from .transport import Transport
from .transport.jetstream import api_request, create_stream, labelled, publish, retry
from .wire.subjects import bucket_name, validate_prefix

__all__ = [
    "COUNTER_TOKEN",
    "DUPLICATE_WINDOW",
    "MAX_DELTA_DIGITS",
    "MAX_VALUE_DIGITS",
    "Counters",
    "CountersUnsupported",
    "DistributedCounter",
    "counter_subject",
    "counters_stream",
    "validate_counter_name",
]

#: The subject token after the prefix: counter ``n`` is ``<prefix>.counter.<n>``.
COUNTER_TOKEN = "counter"
#: Seconds within which a retried add (same ``Nats-Msg-Id``) is recognised; an add's
#: timeout may not be longer.
DUPLICATE_WINDOW = 30.0
#: The largest delta the SDK sends, in decimal digits (the server takes any integer whose
#: header fits in 64 KiB; a bound keeps hostile or mistaken adds from bloating every total).
MAX_DELTA_DIGITS = 100
#: The longest total the SDK accepts from the server, in decimal digits (Python's own
#: ``int()`` limit is 4300).
MAX_VALUE_DIGITS = 4000
#: The first nats-server release with counter streams.
MIN_SERVER = (2, 12)

_NS = 1_000_000_000
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}")
_VALUE_RE = re.compile(rf"-?[0-9]{{1,{MAX_VALUE_DIGITS}}}")
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)")
_NO_MESSAGE = 10037  # STREAM.MSG.GET: no message found


class CountersUnsupported(JetStreamError):
    """The NATS server has no distributed counters (``allow_msg_counter`` needs 2.12+).

    Attributes:
        server_version: the version the server reported, if any.
    """

    def __init__(self, message: str, *, server_version: str | None = None) -> None:
        super().__init__(message)
        self.server_version = server_version


def validate_counter_name(name: object) -> str:
    """Return ``name`` if it can name a counter: 1-8 dot-separated tokens of 1-64
    ``[A-Za-z0-9_-]`` (``hits``, ``orders.eu``); no wildcards, no spaces.

    Raises:
        ConfigurationError: it cannot.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigurationError(
            f"invalid counter name {name!r}: use 1-8 dot-separated tokens of [A-Za-z0-9_-] (each 1-64 characters)"
        )
    return name


def counters_stream(prefix: str) -> str:
    """The stream holding the mesh's counters: ``<prefix>_counters``."""
    return bucket_name(validate_prefix(prefix), "counters")


def counter_subject(prefix: str, name: str) -> str:
    """The subject of counter ``name``: ``<prefix>.counter.<name>``."""
    return f"{validate_prefix(prefix)}.{COUNTER_TOKEN}.{validate_counter_name(name)}"


def _delta_header(delta: object) -> str:
    if type(delta) is not int:
        raise ConfigurationError(f"a counter delta is an int, not {type(delta).__name__} {delta!r}")
    text = f"{delta:+d}"
    if len(text) - 1 > MAX_DELTA_DIGITS:
        raise ConfigurationError(f"a counter delta has at most {MAX_DELTA_DIGITS} decimal digits")
    return text


def _total(what: str, text: object) -> int:
    """A total from the server (hostile until parsed): a bounded decimal string."""
    if not isinstance(text, str) or not _VALUE_RE.fullmatch(text):
        shown = text[:40] + "…" if isinstance(text, str) and len(text) > 40 else text
        raise ProtocolError(f"{what}: the counter total {shown!r} is not a decimal integer")
    return int(text)


def _body_total(what: str, data: bytes) -> int:
    try:
        doc = json.loads(data)
    except ValueError:
        raise ProtocolError(f"{what}: the counter message is not JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"{what}: the counter message is not a JSON object")
    return _total(what, doc.get("val"))


def _supports_counters(version: str | None) -> bool:
    match = _VERSION_RE.match(version or "")
    return match is None or (int(match.group(1)), int(match.group(2))) >= MIN_SERVER


class DistributedCounter:
    """One native counter of the mesh (obtain it with ``await mesh.counter(name)``).

    Cheap to keep and to share between tasks: it holds no state but its name.
    """

    __slots__ = ("_stream", "_t", "name", "subject")

    def __init__(self, transport: Transport, prefix: str, name: str, *, stream: str) -> None:
        self._t = transport
        self.name = validate_counter_name(name)
        self.subject = counter_subject(prefix, name)
        self._stream = stream

    def __repr__(self) -> str:
        return f"<DistributedCounter {self.name} ({self._stream})>"

    @property
    def stream(self) -> str:
        """The stream that holds it."""
        return self._stream

    async def add(self, delta: int = 1, *, timeout: float = 5.0) -> int:
        """Add ``delta`` (negative to subtract) and return the new total.

        The total is the stream's, right after this add (others may have added since).
        A timed-out attempt is published again with the same ``Nats-Msg-Id``; if the first
        one had landed, the server says "duplicate" without a total and the current total
        is read from the stream leader instead.

        Args:
            delta: an ``int`` of at most :data:`MAX_DELTA_DIGITS` decimal digits (0 is valid).
            timeout: seconds, at most :data:`DUPLICATE_WINDOW`.

        Raises:
            ConfigurationError: a delta that is not an int, or too long; a bad timeout.
            CallTimeout: no answer in time: the add may or may not have been counted.
            JetStreamError: the server refused (no quorum, or the stream is gone).
            ProtocolError, Unauthorized, MeshClosed.
        """
        incr = _delta_header(delta)
        if not (isinstance(timeout, int | float) and 0 < timeout <= DUPLICATE_WINDOW):
            raise ConfigurationError(f"timeout must be within (0, {DUPLICATE_WINDOW:g}] seconds, not {timeout!r}")
        ack = await publish(
            self._t, self.subject, b"", msg_id=os.urandom(12).hex(), headers={"Nats-Incr": incr}, timeout=timeout
        )
        if ack.value is not None:
            return _total(f"add to counter {self.name}", ack.value)
        if ack.duplicate:
            return await self.value(consistent=True, timeout=timeout)
        raise ProtocolError(f"add to counter {self.name}: stream {ack.stream} answered without a total")

    async def value(self, *, consistent: bool = False, timeout: float = 5.0) -> int:
        """The current total (0 for a counter never added to, or deleted).

        Args:
            consistent: ``False`` (default): a direct get, answered by any replica: fast,
                and it answers without a quorum, but a follower may be a few adds behind.
                ``True``: asked of the stream leader (needs the quorum; sees every
                acknowledged add).
            timeout: seconds.

        Raises:
            CallTimeout, JetStreamError, ProtocolError, Unauthorized, MeshClosed.
        """
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ConfigurationError(f"timeout must be > 0, not {timeout!r}")
        what = f"read counter {self.name}"
        if consistent:
            return await retry(what, self._leader_get, timeout)
        return await retry(what, self._direct_get, timeout)

    async def _direct_get(self, t: float) -> int:
        what = f"read counter {self.name}"
        msg = await self._t.request(f"$JS.API.DIRECT.GET.{self._stream}.{self.subject}", b"", timeout=t)
        status = (msg.headers or {}).get("Status")
        if status == "404":
            return 0
        if status:
            raise JetStreamError(f"{what}: status {status}", status=int(status) if status.isdigit() else None)
        return _body_total(what, msg.data)

    async def _leader_get(self, t: float) -> int:
        what = f"read counter {self.name}"
        try:
            reply = await api_request(
                self._t, f"$JS.API.STREAM.MSG.GET.{self._stream}", {"last_by_subj": self.subject}, t
            )
        except JetStreamError as exc:
            if exc.err_code == _NO_MESSAGE:
                return 0
            raise
        message = reply.get("message")
        data = message.get("data", "") if isinstance(message, dict) else None
        try:
            raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            raise ProtocolError(f"{what}: the server's reply holds no message")
        return _body_total(what, raw)

    async def delete(self, *, timeout: float = 5.0) -> bool:
        """Remove the counter (a purge of its subject; its total becomes 0). Needs
        permission to purge the counters stream, which no role generated by
        ``natsagents auth`` has. Adds racing with it may land before or after.

        Returns:
            ``True`` if there was something to remove.

        Raises:
            CallTimeout, JetStreamError, Unauthorized, MeshClosed.
        """
        subject = f"$JS.API.STREAM.PURGE.{self._stream}"
        what = f"delete counter {self.name}"
        with labelled(what):
            reply = await retry(what, lambda t: api_request(self._t, subject, {"filter": self.subject}, t), timeout)
        purged = reply.get("purged")
        return isinstance(purged, int) and purged > 0


class Counters:
    """The counters of one mesh: makes sure the stream exists (once), hands out counters."""

    def __init__(self, transport: Transport, prefix: str) -> None:
        self._t = transport
        self._prefix = validate_prefix(prefix)
        self.stream = counters_stream(prefix)
        self._ready = False
        self._lock = asyncio.Lock()

    def _wanted(self) -> dict[str, Any]:
        return {
            "name": self.stream,
            "subjects": [f"{self._prefix}.{COUNTER_TOKEN}.>"],
            "retention": "limits",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            # The body of the last message holds the total: older ones are only history.
            "max_msgs_per_subject": 1,
            "max_msg_size": -1,
            "storage": "file",
            "discard": "old",  # the server refuses "new" on a counter stream
            "num_replicas": None,  # the jetstream layer picks 3 on a cluster of ≥ 3 servers, else 1
            "duplicate_window": round(DUPLICATE_WINDOW * _NS),
            "allow_direct": True,
            "allow_msg_counter": True,
        }

    def _reconcile(self, existing: dict[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any] | None:
        """An existing stream must be a counter stream with the same retention and storage;
        its subjects, direct gets, history and duplicate window are brought in line."""
        name = self.stream
        if existing.get("allow_msg_counter") is not True:
            raise ConfigurationError(
                f"stream {name} exists and is not a counter stream (allow_msg_counter is off; it was created by "
                "something else, or by a server older than 2.12); the server cannot turn counting on for an "
                "existing stream: delete it, or give the mesh another prefix"
            )
        for key in ("retention", "storage"):
            if existing.get(key) != wanted[key]:
                raise ConfigurationError(
                    f"stream {name} has {key} {existing.get(key)!r}, not {wanted[key]!r}: it cannot change"
                )
        patched = dict(existing)
        for key in ("subjects", "allow_direct", "max_msgs_per_subject", "duplicate_window", "discard"):
            patched[key] = wanted[key]
        return None if patched == existing else patched

    async def _ensure(self, timeout: float) -> None:
        version = self._t.server_version
        if not _supports_counters(version):
            raise CountersUnsupported(
                f"nats-server {version} has no distributed counters (ADR-49 needs 2.12 or later): "
                "upgrade the server, or use the CRDT PNCounter (natsagents.crdt)",
                server_version=version,
            )
        what = f"open counters stream {self.stream}"
        wanted = self._wanted()
        info_subject = f"$JS.API.STREAM.INFO.{self.stream}"
        try:
            # INFO first: a caller may read and add but not create (docs/security.md).
            with labelled(what):
                info = await retry(what, lambda t: api_request(self._t, info_subject, None, t), timeout)
        except StreamNotFound:
            config = await create_stream(self._t, wanted, reconcile=self._reconcile, what=what, timeout=timeout)
        else:
            config = info.get("config") or {}
            patched = self._reconcile(dict(config), wanted)
            if patched is not None:
                subject = f"$JS.API.STREAM.UPDATE.{self.stream}"
                with labelled(what):
                    reply = await retry(what, lambda t: api_request(self._t, subject, patched, t), timeout)
                config = reply.get("config") or {}
        if config.get("allow_msg_counter") is not True:  # a server that ignored the field
            raise CountersUnsupported(
                f"{what}: the server created stream {self.stream} without counting (it ignores allow_msg_counter: "
                f"older than 2.12?); delete that stream and upgrade the server",
                server_version=version,
            )

    async def open(self, name: str, *, timeout: float = 5.0) -> DistributedCounter:
        """Counter ``name``, creating the mesh's counters stream on first use.

        Raises:
            ConfigurationError: a bad name or timeout; the stream exists and is not a
                counter stream (or differs in retention or storage).
            CountersUnsupported: the server is older than 2.12.
            Unauthorized: this user may not read the stream's info (or create it when it
                is missing). CallTimeout, JetStreamError, MeshClosed.
        """
        counter = DistributedCounter(self._t, self._prefix, name, stream=self.stream)
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ConfigurationError(f"timeout must be > 0, not {timeout!r}")
        if not self._ready:
            async with self._lock:
                if not self._ready:
                    await self._ensure(timeout)
                    self._ready = True
        return counter
