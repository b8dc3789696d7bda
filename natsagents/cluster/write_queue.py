"""The node's durable queue of writes taken on the minority side (``partition_strategy =
"continue_degraded"``): one append-only file per node, fsynced on every record.

The minority side has no JetStream quorum, so a write it accepts cannot be stored in the
cluster: it is stored here, on the node's own disk, and replayed after the heal through
the durable inbox (``cluster.degraded``). A record is::

    magic b"NAQ1" | length (4 bytes, big-endian) | CRC-32 of the payload (4 bytes) | payload

and the payload a msgpack map: ``{"op": "put", "id", "kind", "agent", "action",
"headers", "body", "at", "delivery"}`` (a queued write) or ``{"op": "done", "id"}`` (it
was stored in the inbox stream). Opening the file replays it: the writes without a
``done`` are pending, in file order.

Every byte of the file is treated as hostile (another process, a torn write, a bad
disk): reading stops at the first record that is short, has a bad magic, length or CRC,
or does not decode to a valid write; the file is then moved aside (``<name>.bad-<unix
ms>``, for an operator) and a clean file holding the valid pending writes replaces it.
Nothing in the file can crash or wedge the node. The queue is bounded in writes and
bytes; a full queue refuses new writes (``QueueFull``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..wire import codec, envelope
from ..wire.ids import encode_id, validate_kind

__all__ = ["MAGIC", "QueueFull", "QueuedWrite", "WriteQueue"]

log = logging.getLogger("natsagents.cluster.degraded")

MAGIC = b"NAQ1"
_HEAD = struct.Struct(">4sII")  # magic, payload length, CRC-32
#: Largest payload of one record: a message's headers and body fit in a NATS message
#: (8 MiB is above any server's max_payload), plus room for the fields.
MAX_RECORD = 8 * 1024 * 1024 + 64 * 1024
_MAX_HEADERS = 64  # header lines kept with a write
_MAX_HEADER_BYTES = 16 * 1024
DELIVERIES = ("exactly_once", "at_least_once")


class QueueFull(Exception):
    """The queue holds its most writes or bytes: the write is refused."""


@dataclass(frozen=True, slots=True)
class QueuedWrite:
    """One write taken on the minority side, to replay after the heal.

    Attributes:
        message_id: its ``Na-Msg-Id`` (the replay's ``Nats-Msg-Id``: stored once).
        kind, agent_id, action: where it goes and what it runs.
        headers: the request's headers to replay (``cluster.degraded`` chooses them).
        body: the request body, as received (compressed if it came so).
        queued_at: when it was queued (unix seconds).
        delivery: ``"exactly_once"`` or ``"at_least_once"`` (the replay's ``Na-Delivery``).
    """

    message_id: str
    kind: str
    agent_id: str
    action: str
    headers: Mapping[str, str]
    body: bytes
    queued_at: float
    delivery: str

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers.items()) + 128

    def to_record(self) -> dict[str, Any]:
        return {
            "op": "put",
            "id": self.message_id,
            "kind": self.kind,
            "agent": self.agent_id,
            "action": self.action,
            "headers": dict(self.headers),
            "body": self.body,
            "at": self.queued_at,
            "delivery": self.delivery,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> QueuedWrite:
        """Raises: ValueError for anything that is not a valid queued write."""
        mid, kind, agent, action = rec.get("id"), rec.get("kind"), rec.get("agent"), rec.get("action")
        headers, body, at, delivery = rec.get("headers"), rec.get("body"), rec.get("at"), rec.get("delivery")
        if not envelope.is_message_id(mid):
            raise ValueError("bad message id")
        if not isinstance(kind, str) or not isinstance(agent, str):
            raise ValueError("bad address")
        validate_kind(kind)
        encode_id(agent)
        if not isinstance(action, str) or not envelope.ACTION_RE.fullmatch(action):
            raise ValueError("bad action")
        if not isinstance(body, bytes) or not isinstance(headers, dict) or len(headers) > _MAX_HEADERS:
            raise ValueError("bad body or headers")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise ValueError("bad headers")
        if sum(len(k) + len(v) for k, v in headers.items()) > _MAX_HEADER_BYTES:
            raise ValueError("headers too large")
        if any(c in k + v for k, v in headers.items() for c in "\r\n") or any(":" in k or " " in k for k in headers):
            raise ValueError("headers cannot be sent")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or delivery not in DELIVERIES:
            raise ValueError("bad time or delivery")
        return cls(str(mid), kind, agent, action, dict(headers), body, float(at), str(delivery))


def _frame(record: Mapping[str, Any]) -> bytes:
    payload = codec.encode(dict(record))
    return _HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _read(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The valid records at the start of ``data`` and how many bytes they take."""
    records: list[dict[str, Any]] = []
    at = 0
    while at < len(data):
        if len(data) - at < _HEAD.size:
            break
        magic, length, crc = _HEAD.unpack_from(data, at)
        start = at + _HEAD.size
        if magic != MAGIC or length > MAX_RECORD or start + length > len(data):
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            break
        try:
            rec = codec.decode(payload)
        except ValueError:
            break
        if not isinstance(rec, dict) or rec.get("op") not in ("put", "done"):
            break
        records.append(rec)
        at = start + length
    return records, at


class WriteQueue:
    """The node's queue file (see the module docstring).

    Args:
        path: the file (its directory is created).
        max_writes: most pending writes.
        max_bytes: most bytes of pending writes (bodies and headers).
    """

    def __init__(self, path: Path, *, max_writes: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.max_writes = max_writes
        self.max_bytes = max_bytes
        self._pending: dict[str, QueuedWrite] = {}  # in queue order
        self._bytes = 0
        self._lock = asyncio.Lock()
        self._fd: int | None = None
        #: Bytes of the file not read at the last open (garbage), and where it was moved.
        self.discarded = 0
        self.moved_to: Path | None = None

    # -- what the node asks ----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._pending

    def pending(self) -> list[QueuedWrite]:
        """The writes not replayed yet, oldest first."""
        return list(self._pending.values())

    def position(self, message_id: str) -> int:
        """1-based place of a pending write in the queue (0: not queued)."""
        for i, mid in enumerate(self._pending, 1):
            if mid == message_id:
                return i
        return 0

    # -- the file --------------------------------------------------------------------

    def open(self) -> int:
        """Read the file (recovering from garbage, see the module docstring) and keep it
        open for appends. Returns the number of pending writes."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        records, used = _read(data)
        pending: dict[str, QueuedWrite] = {}
        bad = 0
        for rec in records:
            mid = rec.get("id")
            if rec["op"] == "done":
                if isinstance(mid, str):
                    pending.pop(mid, None)
                continue
            try:
                write = QueuedWrite.from_record(rec)
            except ValueError:
                bad += 1
                continue
            pending.setdefault(write.message_id, write)
        self.discarded = len(data) - used
        if self.discarded or bad:
            self.moved_to = self.path.with_name(f"{self.path.name}.bad-{int(time.time() * 1000)}")
            with contextlib.suppress(OSError):
                os.replace(self.path, self.moved_to)
            log.error(
                "degraded write queue %s: %d byte(s) unreadable and %d invalid record(s) ignored; "
                "the file was moved to %s, %d valid write(s) kept",
                self.path,
                self.discarded,
                bad,
                self.moved_to,
                len(pending),
            )
        self._pending = dict(list(pending.items())[: self.max_writes])
        self._bytes = sum(w.size for w in self._pending.values())
        self._rewrite()
        return len(self._pending)

    def _rewrite(self) -> None:
        """Replace the file with one holding only the pending writes (tmp, fsync, rename)."""
        self._close_fd()
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"".join(_frame(w.to_record()) for w in self._pending.values()))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._sync_dir()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def _sync_dir(self) -> None:
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _append(self, frame: bytes) -> None:
        if self._fd is None:
            raise RuntimeError("the write queue is not open")
        os.write(self._fd, frame)
        os.fsync(self._fd)

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()

    async def put(self, write: QueuedWrite) -> int:
        """Store ``write`` (fsynced before this returns). Returns its 1-based position;
        a write already queued (same message id) is not stored again.

        Raises:
            QueueFull: the queue holds ``max_writes`` writes or ``max_bytes`` bytes.
            OSError: the disk refused it (not queued).
        """
        async with self._lock:
            if write.message_id in self._pending:
                return self.position(write.message_id)
            if len(self._pending) >= self.max_writes or self._bytes + write.size > self.max_bytes:
                raise QueueFull(
                    f"the degraded write queue holds {len(self._pending)} writes, {self._bytes} bytes "
                    f"(at most {self.max_writes}, {self.max_bytes})"
                )
            frame = _frame(write.to_record())
            # Counted first: if this task is cancelled while the thread writes, the write
            # still lands and stays pending here (replayed), never dropped by a rewrite.
            self._pending[write.message_id] = write
            self._bytes += write.size
            try:
                await asyncio.to_thread(self._append, frame)
            except OSError:
                del self._pending[write.message_id]
                self._bytes -= write.size
                raise
            return len(self._pending)

    async def done(self, message_id: str) -> None:
        """The write is stored in the inbox stream: never replay it again (fsynced). An
        empty queue truncates the file."""
        async with self._lock:
            write = self._pending.pop(message_id, None)
            if write is None:
                return
            self._bytes -= write.size
            if self._pending:
                await asyncio.to_thread(self._append, _frame({"op": "done", "id": message_id}))
            else:
                await asyncio.to_thread(self._rewrite)
