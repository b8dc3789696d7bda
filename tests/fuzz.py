"""A fuzzer for a live cluster: hostile and mutated messages at every subject a peer on the
account can reach, with oracles that count what must never happen (the security issue's
fuzz requirement; ``tests/integration/test_fuzz.py`` runs it).

The mesh under test: two cluster nodes in their own processes (``tests/node_process.py`` with ``tests/fuzz_agents.py``,
started like the chaos tests' hosts) on one nats-server, so that a host that crashes or
wedges shows as such. They host the fuzz kinds (``fuzz_agents.FUZZ_KINDS``) and ``Canary``,
whose agents the fuzzer never addresses.

What the fuzzer sends (one raw-protocol connection, every message a hand-made
``HPUB``/``PUB`` frame, so header blocks are arbitrary bytes):

* **agent** subjects ``<prefix>.agent.<kind>.<token>``: valid SDK requests of every
  action (accept, replay, priorities, deadlines past and future, compression), mutated
  ones (flipped bytes in headers and bodies, headers swapped between messages, truncated
  bodies, odd header names and values, huge counts, deep nesting, deflate bombs), copies
  of earlier requests (same ``Na-Msg-Id``), owner orders (``Na-Stream-Seq``, batches)
  with and without a valid ``Na-Owner-Mac`` (the fuzzer reads the owner key, as a node
  could), malformed header blocks (``test_hostile_peer.BAD_BLOCKS`` and generated ones);
* **activate** subjects ``<prefix>.activate.<kind>``: valid, odd and garbage activation bodies;
* **control** subjects ``<prefix>.node.<node>.<op>``: ``activate``, ``info``, ``migrate``,
  ``adopt``, unknown ops, garbage (never ``drain`` to a real node: it is an order the
  nodes' role may give, and it would empty the node for the rest of the run);
* **inbox**: JetStream publishes to ``<prefix>.inbox.<kind>.<token>``, with
  ``Na-Reply-To`` an inbox of ours, a hostile subject or none, forged owner headers,
  duplicate ``Nats-Msg-Id``;
* **kv**: puts, deletes and purges of garbage in the four registry buckets (never a
  canary's keys, never a rollup of a whole bucket);
* **read** subjects ``<prefix>.read.<kind>.<token>`` (a session kind's replicas, protocol
  §19): read-only and other actions, ``Na-Min-Version`` valid, far ahead and malformed;
* **crdt** subjects ``<prefix>.crdt.<kind>.<token>`` (protocol §21): deltas and whole states
  valid (any replica id, huge counts), of another type, garbage or flipped; digests; hellos
  (``~hello``) with odd ``Na-Crdt-Hello`` values, from new node names, from the nodes' own
  names (``Na-Crdt-Node``: a node ignores its own). Nothing is ever answered on these (no
  reply subject is used but a hostile one).

Reply subjects are ``_INBOX.fuzz.<n>`` (one per message), none, or hostile ones a host
must never publish to (``$KV.…``, ``$JS.…``, control and agent subjects, wildcards, too
long, not printable ASCII). A privileged connection subscribes to all of them.

Oracles (:class:`Report`): (a) every message with an inbox reply subject to an agent,
activation, control subject — and every JetStream publish — gets **exactly one** reply
within its timeout (a copy of a message the agent still holds: at most one). As a caller
must (protocol §7.4), a request with a well-formed ``Na-Msg-Id`` that has no reply after
:data:`RESEND_AFTER` is published again, identical; it must then be answered (the figures
say how many needed it), and replies after the resend do not count as duplicates. One
exception, reported apart: a request without a usable ``Na-Msg-Id`` to an agent whose
directory or state record the fuzz itself rewrote within :data:`MOVE_WINDOW` s before it
(or before its timeout) may go unanswered — a forged claim can move a live agent (§14.2),
a foreign state write fences its copy (§14.3), a superseded copy drops what only it
received (§8.8), and such a request cannot be resent; (b) no reply on a hostile subject,
ever; (c) both host processes alive, and the canaries
answer a normal call within a short timeout every ``probe_every`` messages and at the end
(a wedge = no answer); (d) each canary's state equals the increments the test made;
(e) the hosts' RSS growth is bounded (measured, asserted by the test). A durable message
with an inbox ``Na-Reply-To`` that was stored gets its result there (at least once: a
durable result comes again when an ack is lost, which delivery allows; counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import struct
import time
import urllib.request
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import msgpack
import nats

from natsagents import Mesh
from natsagents.cluster.placement import Hints
from natsagents.crdt import CrdtError, GCounter, ORSet, PNCounter
from natsagents.wire import envelope
from natsagents.wire import headers as h
from natsagents.wire.ids import encode_id
from natsagents.wire.owner import owner_mac
from natsagents.wire.subjects import bucket_name
from tests.fuzz_agents import FUZZ_KINDS
from tests.integration.test_hostile_peer import BAD_BLOCKS

TARGETS = ("agent", "activate", "control", "inbox", "kv", "read", "crdt")
#: Share of each target in the mix.
WEIGHTS = {"agent": 50, "activate": 12, "control": 8, "inbox": 12, "kv": 10, "read": 5, "crdt": 6}
NODES = ("n1", "n2")
CANARIES = ("c0", "c1", "c2", "c3")
MiB = 1024 * 1024
UINT64_MAX = 2**64 - 1
#: Largest message the fuzzer sends (the server's max_payload is 1 MiB; a bigger one
#: would only get the fuzzer's connection closed).
MAX_MESSAGE = MiB - 4096
#: Seconds after which a request with a well-formed Na-Msg-Id that got no reply is
#: published again, identical (same reply subject), as a caller must (protocol §7.4: NATS
#: may drop a request in transit while the agent's subscription changes hands).
RESEND_AFTER = 5.0
#: Seconds before a request within which a rewrite of its agent's directory record may have
#: moved the agent while it was on its way (``Report.unanswered_moved``).
MOVE_WINDOW = 5.0

HOST_OPTIONS: dict[str, Any] = {
    "lease": 1.5,
    "rebalance": False,
    "queue_timeout": 4.0,  # an activation that cannot be placed is answered within it
    "delivery": {"partitions": 4, "max_deliver": 3, "backoff": [0.05], "ack_wait": 10.0, "attempt_timeout": 2.0},
}


# -- raw protocol ---------------------------------------------------------------------------


class RawPublisher:
    """A NATS client written by hand (as ``test_hostile_peer.RawConnection``), for volume:
    frames are written without waiting, :meth:`flush` is a PING/PONG round trip, and a
    reader answers the server's PINGs and hands the messages of its subscriptions to
    ``on_msg(subject, header block, payload)``. Replies are read here, not on another
    connection: the server sends a "no responders" status only to the requester's own
    subscription. If the server closes the connection (it should not: the fuzzer keeps
    frames well formed), :meth:`ensure` reconnects and counts it."""

    def __init__(
        self, url: str, subscribe: str = "", on_msg: Callable[[str, bytes, bytes], None] | None = None
    ) -> None:
        self.url = url
        self.subscribe = subscribe
        self.on_msg = on_msg
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._pongs: deque[asyncio.Future[None]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.errors: list[bytes] = []
        self.reconnects = 0

    async def open(self) -> None:
        parsed = urlparse(self.url)
        self.reader, self.writer = await asyncio.open_connection(parsed.hostname, parsed.port, limit=2 * MiB)
        await self.reader.readline()  # INFO
        self.writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n')
        if self.subscribe:
            self.writer.write(b"SUB %s 1\r\n" % self.subscribe.encode())
        self._task = asyncio.get_running_loop().create_task(self._read(self.reader, self.writer))
        await self.flush()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if line.startswith((b"MSG ", b"HMSG ")):
                    parts = line.split()
                    total = int(parts[-1])
                    data = await reader.readexactly(total + 2)
                    hdr = int(parts[-2]) if parts[0] == b"HMSG" else 0
                    if self.on_msg is not None:
                        self.on_msg(parts[1].decode(errors="replace"), data[:hdr], data[hdr:total])
                elif line.startswith(b"PING"):
                    writer.write(b"PONG\r\n")
                elif line.startswith(b"PONG"):
                    if self._pongs:
                        fut = self._pongs.popleft()
                        if not fut.done():
                            fut.set_result(None)
                elif line.startswith(b"-ERR"):
                    self.errors.append(line.strip())
        finally:
            for fut in self._pongs:
                if not fut.done():
                    fut.set_exception(ConnectionError("the server closed the raw connection"))
            self._pongs.clear()

    @property
    def closed(self) -> bool:
        return self._task is None or self._task.done()

    async def ensure(self) -> None:
        if self.closed:
            await self.close()
            self.reconnects += 1
            await self.open()

    def send(self, subject: bytes, reply: bytes, block: bytes, payload: bytes) -> None:
        assert self.writer is not None
        if block:
            total = len(block) + len(payload)
            frame = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject, reply, len(block), total, block, payload)
        else:
            frame = b"PUB %s %s %d\r\n%s\r\n" % (subject, reply, len(payload), payload)
        self.writer.write(frame)

    async def flush(self, timeout: float = 10.0) -> None:
        assert self.writer is not None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(fut)
        self.writer.write(b"PING\r\n")
        await self.writer.drain()
        await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


# -- what was sent, and what came back ---------------------------------------------------------


@dataclass
class Sent:
    n: int
    target: str
    what: str  # the generator and mutations that made it
    subject: str
    expect: str  # "one", "at_most_one", "none" (no reply subject), "hostile"
    at: float
    timeout: float
    summary: str
    replies: list[str] = field(default_factory=list)  # statuses of the replies that came
    first: Any = None  # the first reply's body (a PubAck for JetStream publishes)
    durable: str = ""  # the Na-Reply-To inbox token of a durable message
    expired: bool = False
    agent: tuple[str, str] | None = None
    frame: tuple[bytes, bytes, bytes, bytes] | None = None  # what a resend publishes again
    resent: int = 0  # replies that had come when it was resent (-1: not resent)
    size: int = 0  # bytes of its body as sent


@dataclass
class Report:
    """The fuzz's figures (printed by :meth:`text`)."""

    seed: int
    messages: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    whats: Counter[str] = field(default_factory=Counter)
    expected_one: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    # A second reply to one request. A superseded copy of an agent (another line of
    # ownership in another queue group has its own copy of each message) drops what it
    # does not run instead of refusing it (protocol §8.8): its refusals count here too.
    duplicates: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    # Unanswered requests without a usable Na-Msg-Id to an agent whose directory or state
    # record the fuzz rewrote around then: a forged claim may move a live agent (protocol
    # §14.2), a foreign state write fences its copy (§14.3), and what only a superseded copy
    # received it drops (§8.8) — answered after a resend, which such a request cannot
    # have. Reported, not a failure; any other is.
    unanswered_moved: list[str] = field(default_factory=list)
    hostile_replies: list[str] = field(default_factory=list)
    durable_expected: int = 0
    durable_answered: int = 0
    durable_duplicates: list[str] = field(default_factory=list)
    durable_unanswered: list[str] = field(default_factory=list)
    durable_unexpected: list[str] = field(default_factory=list)
    probes: int = 0
    probe_failures: list[str] = field(default_factory=list)
    probe_max_ms: float = 0.0
    probe_ms: list[float] = field(default_factory=list)  # each successful canary call, in order
    canary_expected: dict[str, int] = field(default_factory=dict)
    canary_found: dict[str, Any] = field(default_factory=dict)
    hosts_dead: list[str] = field(default_factory=list)
    rss_before: dict[str, int] = field(default_factory=dict)
    rss_after: dict[str, int] = field(default_factory=dict)
    rss_peak: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    raw_errors: list[str] = field(default_factory=list)
    raw_reconnects: int = 0
    slow_consumers: int = 0  # the server's count over the run (it drops messages to such a client)
    resent: int = 0  # requests published again for want of a reply (protocol §7.4)
    agents: dict[str, int] = field(default_factory=dict)  # agents active on each node at the end
    rss_trend: dict[str, list[int]] = field(default_factory=dict)  # RSS MiB at each probe
    answered_after_resend: list[str] = field(default_factory=list)
    seconds: float = 0.0
    host_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_jumps: list[str] = field(default_factory=list)  # with $FUZZ_RSS_TRACE: what was sent before each

    def probe_p50(self, *, first: bool) -> float:
        """The median canary call latency (ms) over the first or the last tenth of the run."""
        part = max(1, len(self.probe_ms) // 10)
        cut = sorted(self.probe_ms[:part] if first else self.probe_ms[-part:])
        return cut[len(cut) // 2] if cut else 0.0

    @property
    def corrupted_canaries(self) -> list[str]:
        return [c for c, n in self.canary_expected.items() if self.canary_found.get(c) != n]

    def failures(self) -> list[str]:
        """Every oracle that failed, in words (empty: the fuzz found nothing)."""
        out = []
        if self.duplicates:
            out.append(f"{len(self.duplicates)} message(s) answered more than once: {self.duplicates[:10]}")
        if self.unanswered:
            out.append(f"{len(self.unanswered)} message(s) never answered: {self.unanswered[:10]}")
        if self.hostile_replies:
            out.append(f"{len(self.hostile_replies)} reply(ies) on hostile subjects: {self.hostile_replies[:10]}")
        if self.durable_unanswered:
            out.append(
                f"{len(self.durable_unanswered)} stored durable message(s) without result: "
                f"{self.durable_unanswered[:10]}"
            )
        if self.durable_unexpected:
            out.append(
                f"{len(self.durable_unexpected)} durable result(s) for unstored messages: "
                f"{self.durable_unexpected[:10]}"
            )
        if self.probe_failures:
            out.append(f"{len(self.probe_failures)} canary probe(s) failed (wedge?): {self.probe_failures[:10]}")
        if self.corrupted_canaries:
            out.append(f"corrupted canaries: expected {self.canary_expected}, found {self.canary_found}")
        if self.hosts_dead:
            out.append(f"host process(es) died: {self.hosts_dead}")
        if self.raw_reconnects:
            out.append(
                f"the server closed the fuzzer's raw connection {self.raw_reconnects} time(s): {self.raw_errors}"
            )
        return out

    def text(self) -> str:
        mib = {k: round(v / MiB, 1) for k, v in self.rss_before.items()}
        lines = [
            f"fuzz seed {self.seed}: {self.messages} messages in {self.seconds:.1f} s",
            "  sent per target: " + ", ".join(f"{t} {self.sent[t]}" for t in TARGETS),
            "  exactly-one expected / answered: "
            + ", ".join(f"{t} {self.expected_one[t]}/{self.answered[t]}" for t in TARGETS),
            f"  duplicates {len(self.duplicates)} {self.duplicates[:3]}, unanswered {len(self.unanswered)} "
            f"{self.unanswered[:3]}, unanswered without a usable id while the fuzz rewrote their agent's "
            f"directory or state record {len(self.unanswered_moved)} {self.unanswered_moved[:3]}, "
            f"hostile replies {len(self.hostile_replies)}; resent after {RESEND_AFTER:g} s without a reply "
            f"{self.resent}, answered only then {len(self.answered_after_resend)}",
            f"  durable results expected {self.durable_expected}, answered {self.durable_answered}, "
            f"twice {len(self.durable_duplicates)}, missing {len(self.durable_unanswered)}, "
            f"unexpected {len(self.durable_unexpected)}",
            f"  canary probes {self.probes}, failed {len(self.probe_failures)}, slowest {self.probe_max_ms:.0f} ms, "
            f"p50 first/last tenth {self.probe_p50(first=True):.1f}/{self.probe_p50(first=False):.1f} ms; "
            f"canaries expected {self.canary_expected} found {self.canary_found}",
            f"  hosts dead {self.hosts_dead or 0}; RSS MiB before {mib} after "
            f"{ {k: round(v / MiB, 1) for k, v in self.rss_after.items()} } peak "
            f"{ {k: round(v / MiB, 1) for k, v in self.rss_peak.items()} }; host CPU s "
            f"{ {k: round(v, 1) for k, v in self.cpu.items()} }",
            f"  agents active at the end {self.agents}; RSS MiB at each probe "
            f"{ {k: v[:: max(1, len(v) // 12)] for k, v in self.rss_trend.items()} }",
            f"  raw -ERR {len(self.raw_errors)}, reconnects {self.raw_reconnects}, "
            f"server slow consumers {self.slow_consumers}",
            "  reply statuses: " + ", ".join(f"{k} {v}" for k, v in self.statuses.most_common(16)),
            "  generators: " + ", ".join(f"{k} {v}" for k, v in self.whats.most_common(40)),
        ]
        for line in self.answered_after_resend[:5]:
            lines.append(f"  answered after a resend: {line[:300]}")
        for line in self.rss_jumps[:20]:
            lines.append(f"  RSS jump: {line[:3000]}")
        for node, stats in self.host_stats.items():
            keep = {k: v for k, v in stats.items() if "rejected" in k or "refused" in k or "dropped" in k}
            lines.append(f"  {node} refusals: {json.dumps(keep, sort_keys=True)[:1500]}")
        return "\n".join(lines)


# -- processes ------------------------------------------------------------------------------


def proc_status(pid: int, field_name: str) -> int:
    """A ``/proc/<pid>/status`` size field (``VmRSS``, ``VmHWM``) in bytes (0 if gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# -- values ---------------------------------------------------------------------------------

NASTY = [
    "",
    " ",
    "0",
    "1",
    "2",
    "-1",
    "1.5",
    "99999999999999999999",
    "9" * 15,
    "9" * 16,
    "a" * 65,
    "a" * 300,
    "é",
    "\u00ff",
    "\x00",
    "\x01\x02",
    "\x7f",
    "\t",
    "add ",
    " add",
    "ADD",
    "a.b",
    "a-b",
    "*",
    ">",
    "=",
    "=x",
    "$KV.x",
    "_INBOX.x",
    "true",
    "null",
    "NaN",
    "\ud7ff",
    "🙂",
]
HEADER_NAMES = [
    h.PROTO,
    h.ACTION,
    h.MESSAGE_ID,
    h.CORRELATION_ID,
    h.DEADLINE,
    h.CALLER,
    h.REPLY_MODE,
    h.PRIORITY,
    h.ENCODING,
    h.ACCEPT_ENCODING,
    h.STREAM_SEQ,
    h.BATCH,
    h.DELIVERY,
    h.OWNER_MAC,
    h.REPLY_TO,
    h.TRACEPARENT,
    h.TRACESTATE,
    "Status",
    "Description",
    envelope.MALFORMED,
    "na-action",
    "NA-ACTION",
    "Nats-Msg-Id",
    "X-Other",
    "Na-Unknown",
]


def empty_maps(n: int) -> bytes:
    return b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n


@functools.cache
def bombs() -> list[bytes]:
    """Compressed bodies that expand far (computed once)."""
    return [zlib.compress(empty_maps(16 * MiB), 9), zlib.compress(b"\x00" * (8 * MiB), 9)]


HUGE_COUNTS = [
    b"\xdd\xff\xff\xff\xff\x00",  # array of 4 Gi items, one given
    b"\xdf\xff\xff\xff\xff\x00\x00",  # map of 4 Gi entries
    b"\xdb\xff\xff\xff\xffabc",  # str of 4 GiB
    b"\xc6\xff\xff\xff\xffabc",  # bin of 4 GiB
    b"\xc9\xff\xff\xff\xff\x05abc",  # ext of 4 GiB
    b"\x81\xa5value\xdd\x7f\xff\xff\xff",
]


class Gen:
    """Random values, bodies and header blocks from one seeded ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def text(self, n: int = 12) -> str:
        r = self.r
        alphabet = "abcXYZ019_-./ =é\u00ff🙂\x00\t"
        return "".join(r.choice(alphabet) for _ in range(r.randint(0, n)))

    def value(self, depth: int = 0) -> Any:
        r = self.r
        k = r.randint(0, 11 if depth < 4 else 7)
        if k == 0:
            return None
        if k == 1:
            return r.choice([True, False])
        if k == 2:
            return r.choice([0, 1, -1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, r.randint(-1000, 1000)])
        if k == 3:
            return r.choice([0.0, -1.5, 1e300, float("inf"), float("nan"), r.random()])
        if k in (4, 5):
            return self.text()
        if k == 6:
            return r.randbytes(r.randint(0, 16))
        if k == 7:
            return r.choice(NASTY)
        if k in (8, 9):
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {self.key(): self.value(depth + 1) for _ in range(r.randint(0, 4))}

    def key(self) -> Any:
        r = self.r
        return r.choice(["by", "value", "x", "id", "ms", "size", "message", "target", self.text(6), 1, None])

    def pack(self, value: Any) -> bytes:
        try:
            return msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return b"\xc0"

    def garbage_body(self) -> tuple[str, bytes]:
        r = self.r
        k = r.randint(0, 8)
        if k == 0:
            return "bytes", r.randbytes(r.randint(0, 64))
        if k == 1:
            return "value", self.pack(self.value())
        if k == 2:
            depth = r.choice([10, 1000, 1025, 3000, 100_000])
            return f"deep{depth}", b"\x81\xa5value" + r.choice([b"\x91", b"\x81\x00"]) * depth + b"\xc0"
        if k == 3:
            return "huge-count", r.choice(HUGE_COUNTS)
        if k == 4:
            n = r.choice([1000, 100_000, 600_000])
            return f"objects{n}", b"\x81\xa5value" + empty_maps(n)
        if k == 5:
            return "ext", b"\x81\xa5value" + r.choice([b"\xd4\x05\x00", b"\xd6\xff\x00\x00\x00\x01", b"\xc7\x00\x07"])
        if k == 6:
            return "never-used", b"\xc1" * r.randint(1, 4)
        if k == 7:
            return "trailing", self.pack({"by": 1}) + r.randbytes(r.randint(1, 8))
        return "empty", b""

    def mutate_bytes(self, data: bytes, flips: int | None = None) -> bytes:
        if not data:
            return self.r.randbytes(self.r.randint(0, 8))
        out = bytearray(data)
        for _ in range(flips or self.r.randint(1, 4)):
            i = self.r.randrange(len(out))
            op = self.r.randint(0, 3)
            if op == 0:
                out[i] ^= 1 << self.r.randrange(8)
            elif op == 1:
                out[i] = self.r.randrange(256)
            elif op == 2 and len(out) > 1:
                del out[i]
            else:
                out.insert(i, self.r.randrange(256))
        return bytes(out)


def block_of(headers: dict[str, str] | list[tuple[str, str]]) -> bytes:
    """A header block written as given: no checks (CR, LF, colons, anything)."""
    items = headers.items() if isinstance(headers, dict) else headers
    return ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in items) + "\r\n").encode("utf-8", "surrogatepass")


# -- the fuzzer -----------------------------------------------------------------------------


ACTIONS: dict[str, tuple[str, ...]] = {
    "Tally": ("add", "get", "echo", "fail", "slow", "big", "keep", "relay", "whoami"),
    "Typed": ("shapes",),
    "Reader": ("add", "get", "peek", "echo", "fail", "slow", "big", "keep", "relay", "whoami"),
    "Merged": ("add", "get", "echo", "fail", "slow", "whoami"),
}
#: Read-only actions of ``Reader`` (served by its replica on ``<prefix>.read.…``).
READ_ONLY = ("get", "peek")


@dataclass
class Msg:
    target: str
    what: str
    subject: str
    block: bytes
    body: bytes
    reply: str = "inbox"  # "inbox", "none", "hostile"
    copy: bool = False  # same Na-Msg-Id to the same agent as an earlier message
    durable_reply: bool = False  # Na-Reply-To one of our inboxes (inbox target)
    # An activation request whose mutated body names a deadline beyond the reply timeout:
    # a placement that cannot fit is answered at its deadline (protocol §4.3, an hour at most).
    waits: bool = False
    agent: tuple[str, str] | None = None  # (kind, id) of an agent subject


class Fuzzer:
    """Sends ``messages`` fuzz messages to a live mesh and checks the oracles.

    Args:
        url: the server. prefix: the mesh's prefix. hosts: ``{node id: pid}`` of the host
        processes (alive = still running). alive: ``{node id: callable}`` true while its
        process runs. seed: the random seed (printed). probe_every: messages between
        canary probes. window: requests awaiting their one reply at most at a time.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        pids: dict[str, int],
        alive: Callable[[str], bool],
        *,
        seed: int,
        probe_every: int = 1000,
        window: int = 48,
        reply_timeout: float = 20.0,
        durable_timeout: float = 30.0,
        monitor_url: str | None = None,
    ) -> None:
        self.url = url
        self.monitor_url = monitor_url
        self.p = prefix
        self.pids = pids
        self.alive = alive
        self.rng = random.Random(seed)
        self.g = Gen(self.rng)
        self.report = Report(seed=seed, canary_expected=dict.fromkeys(CANARIES, 0))
        self.probe_every = probe_every
        self.window = window
        self.reply_timeout = reply_timeout
        self.durable_timeout = durable_timeout
        self.raw = RawPublisher(url, "_INBOX.fuzz.>", self._on_reply)
        self.sent: dict[int, Sent] = {}
        self.pending: set[int] = set()  # expecting exactly one reply, not yet answered
        self.durable: dict[str, Sent] = {}  # Na-Reply-To token → its message
        self.durable_replies: Counter[str] = Counter()
        self.progress = asyncio.Event()
        self.durable_progress = asyncio.Event()
        self.n = 0
        self.owner_key: bytes | None = None
        self.ids = [f"f{i}" for i in range(24)] + ["fü 1", "a.b", "=x", "x" * 200, "名前", "order/7"]
        self.inactive: set[tuple[str, str]] = set()  # agents a request found inactive
        # When the fuzz wrote each agent's directory or state record (a forged claim may move
        # the agent, §14.2; a state write fences its copy, §14.3).
        self.rewritten: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
        self.seen_ids: set[tuple[str, str]] = set()  # (agent subject, Na-Msg-Id) sent before
        self.recent: deque[tuple[str, bytes, bytes]] = deque(maxlen=64)  # valid requests: copies
        self.old_headers: deque[dict[str, str]] = deque(maxlen=32)  # for swaps
        self.sniffer: Any = None
        self.prober: Mesh | None = None
        self.rss_trace = int(os.environ.get("FUZZ_RSS_TRACE", "0"))
        self._rss_seen: dict[str, int] = {}
        self.hostile_subjects = [
            f"$KV.{bucket_name(prefix, 'state')}.Hx.h",
            f"$KV.{bucket_name(prefix, 'directory')}.Hx.h",
            "$JS.API.HX.h",
            f"{prefix}.node.hx.h",
            f"{prefix}.agent.Hx.h",
            "HX.h",
            "_INBOX.hx.*",
            "_INBOX.hx.>",
            "_INBOX.hx..h",
            "_INBOX.hx." + "a" * 300 + ".h",
            "_INBOX.hx.\u00e9.h",
            "_INBOXhx.h",
            "_inbox.hx.h",
        ]

    # -- setup ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.sniffer = await nats.connect(self.url, name="fuzz-sniffer", max_reconnect_attempts=-1)
        for wildcard in (
            f"$KV.{bucket_name(self.p, 'state')}.Hx.>",
            f"$KV.{bucket_name(self.p, 'directory')}.Hx.>",
            "$JS.API.HX.>",
            f"{self.p}.node.hx.>",
            f"{self.p}.agent.Hx.>",
            "HX.>",
            "_INBOX.hx.>",
            "_INBOXhx.>",
            "_inbox.>",
        ):
            await self.sniffer.subscribe(wildcard, cb=self._on_hostile)
        await self.sniffer.flush()
        await self.raw.open()
        self.prober = await Mesh.connect(self.url, prefix=self.p, name="prober", default_timeout=5.0)
        for i, canary in enumerate(CANARIES):
            await self.prober.spawn("Canary", canary, hints=Hints(pin=NODES[i % len(NODES)]), timeout=20.0)
        gate = asyncio.Semaphore(16)

        async def spawn(kind: str, agent_id: str) -> None:
            async with gate:
                body = msgpack.packb({"id": agent_id, "spawn": True})
                await self.sniffer.request(f"{self.p}.activate.{kind}", body, headers={h.PROTO: "1"}, timeout=20)

        await asyncio.gather(*(spawn(kind, agent_id) for kind in FUZZ_KINDS for agent_id in self.ids))
        kv = await self.sniffer.jetstream().key_value(bucket_name(self.p, "control"))
        self.owner_key = (await kv.get("owner-key")).value
        self.report.slow_consumers = -self._slow_consumers()
        for node, pid in self.pids.items():
            self.report.rss_before[node] = proc_status(pid, "VmRSS")
            self.report.cpu[node] = -proc_cpu(pid)
        await self.probe()

    async def close(self) -> None:
        await self.raw.close()
        if self.prober is not None:
            await self.prober.aclose()
        if self.sniffer is not None:
            await self.sniffer.close()

    # -- replies ---------------------------------------------------------------------------

    def _on_reply(self, subject: str, block: bytes, data: bytes) -> None:
        token = subject[len("_INBOX.fuzz.") :]
        hdrs = (envelope.parse_header_block(block) if block else None) or {}
        status = hdrs.get(h.STATUS) or (("nats-" + hdrs["Status"]) if "Status" in hdrs else "raw")
        if token.startswith("d"):
            self.durable_replies[token] += 1
            self.durable_progress.set()
            sent = self.durable.get(token)
            if sent is None:
                return
            if self.durable_replies[token] == 2:
                self.report.durable_duplicates.append(f"{sent.summary} ack={sent.first} -> {status}")
            return
        try:
            sent = self.sent[int(token)]
        except (KeyError, ValueError):
            return
        why = ""
        if status not in ("ok", "raw") and not status.startswith("nats-"):
            with contextlib.suppress(Exception):  # the error's text, for a failure report
                why = f" ({str(msgpack.unpackb(data).get('message'))[:160]})"
        sent.replies.append(status + why)
        if len(sent.replies) == 1:
            if status == "nats-503" and sent.agent is not None and sent.agent[0] in FUZZ_KINDS:
                self.inactive.add(sent.agent)  # activate it, as a caller would (protocol §7.2)
            if sent.target in ("inbox", "kv"):
                with contextlib.suppress(Exception):
                    sent.first = json.loads(data)
            else:
                self.report.statuses[f"{sent.target}:{status}"] += 1
        if sent.n in self.pending:
            self.pending.discard(sent.n)
            self.report.answered[sent.target] += 1
            self.progress.set()

    async def _on_hostile(self, msg: Any) -> None:
        """Anything on these subjects is a reply a host (or owner) should not have sent:
        nothing else in the test publishes there."""
        self.report.hostile_replies.append(f"{msg.subject[:80]} {dict(msg.headers or {})}")

    # -- sending ---------------------------------------------------------------------------

    async def send(self, m: Msg) -> None:
        r = self.rng
        self.n += 1
        n = self.n
        if len(m.block) + len(m.body) > MAX_MESSAGE:
            m.body = m.body[: max(0, MAX_MESSAGE - len(m.block))]
            m.what += "+cut"
        if m.reply == "inbox":
            reply = f"_INBOX.fuzz.{n}"
            expect = "at_most_one" if m.copy or m.waits else "one"
        elif m.reply == "hostile":
            reply = r.choice(self.hostile_subjects)
            if reply.endswith(".h"):
                reply += str(n)
            expect = "hostile"
        else:
            reply = ""
            expect = "none"
        summary = f"#{n} {m.target}/{m.what} {m.subject[:90]} hdrs={m.block[:160]!r} body={m.body[:48]!r}"
        sent = Sent(n, m.target, m.what, m.subject, expect, time.monotonic(), self.reply_timeout, summary)
        sent.agent = m.agent
        if m.target in ("agent", "read") and expect == "one":
            mid = (envelope.parse_header_block(m.block) or {}).get(h.MESSAGE_ID)
            if mid is not None and envelope.is_message_id(mid):
                sent.frame = (m.subject.encode("utf-8", "surrogateescape"), reply.encode(), m.block, m.body)
        if m.durable_reply:
            sent.durable = self._durable_token(m)
            self.durable[sent.durable] = sent
        self.sent[n] = sent
        if expect == "one":
            self.pending.add(n)
            self.report.expected_one[m.target] += 1
        self.report.sent[m.target] += 1
        self.report.whats[f"{m.target}/{m.what.split('+')[0]}"] += 1
        sent.size = len(m.body)
        await self.raw.ensure()
        self.raw.send(m.subject.encode("utf-8", "surrogateescape"), reply.encode(), m.block, m.body)
        if self.rss_trace:
            await self._trace_rss()

    async def _trace_rss(self) -> None:
        """``$FUZZ_RSS_TRACE=<MiB>``: after each message, flush it and look at each host's
        RSS; a rise of at least that much since the last look is reported with the messages
        sent since the one before (the host may still be working on earlier ones)."""
        await self.raw.flush()
        for node, pid in self.pids.items():
            rss = proc_status(pid, "VmRSS")
            last = self._rss_seen.get(node, rss)
            self._rss_seen[node] = rss
            if rss - last >= self.rss_trace * MiB:
                recent = [self.sent[k] for k in range(max(1, self.n - 8), self.n + 1) if k in self.sent]
                self.report.rss_jumps.append(
                    f"{node} +{(rss - last) // MiB} MiB to {rss // MiB} MiB after #{self.n}: "
                    + "; ".join(f"#{s.n} {s.target}/{s.what} {s.subject[:40]} {s.size} B" for s in recent)
                )

    @staticmethod
    def _durable_token(m: Msg) -> str:
        hdrs = envelope.parse_header_block(m.block) or {}
        return hdrs.get(h.REPLY_TO, "")[len("_INBOX.fuzz.") :]

    async def room(self) -> None:
        """Wait until fewer than ``window`` requests await their reply (expiring late ones)."""
        while len(self.pending) >= self.window:
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), 1.0)
            self._expire()

    def _expire(self, final: bool = False) -> None:
        now = time.monotonic()
        for n in list(self.pending):
            sent = self.sent[n]
            if sent.frame is not None and not sent.resent and now - sent.at > RESEND_AFTER:
                sent.resent = len(sent.replies) or -1  # (none had come: it is pending)
                self.report.resent += 1
                self.raw.send(*sent.frame)
                continue
            if final or now - sent.at > sent.timeout:
                self.pending.discard(n)
                sent.expired = True
                if self._moved_meanwhile(sent):
                    self.report.unanswered_moved.append(sent.summary)
                else:
                    self.report.unanswered.append(sent.summary)

    def _moved_meanwhile(self, sent: Sent) -> bool:
        """Whether ``sent`` is an agent request without a usable ``Na-Msg-Id`` whose agent's
        directory or state record the fuzz rewrote from :data:`MOVE_WINDOW` s before it was sent
        until its timeout (see ``Report.unanswered_moved``)."""
        if sent.target not in ("agent", "read") or sent.frame is not None or sent.agent is None:
            return False
        return any(sent.at - MOVE_WINDOW <= t <= sent.at + sent.timeout for t in self.rewritten.get(sent.agent, ()))

    # -- the run ---------------------------------------------------------------------------

    async def run(self, messages: int) -> Report:
        started = time.monotonic()
        makers: list[Callable[[], Msg]] = []
        weights: list[int] = []
        for target, make in (
            ("agent", self.agent_msg),
            ("activate", self.activate_msg),
            ("control", self.control_msg),
            ("inbox", self.inbox_msg),
            ("kv", self.kv_msg),
            ("read", self.read_msg),
            ("crdt", self.crdt_msg),
        ):
            makers.append(make)
            weights.append(WEIGHTS[target])
        for i in range(1, messages + 1):
            if self.inactive and self.rng.random() < 0.5:
                await self.send(self.activation(*self.inactive.pop()))
            else:
                await self.send(self.rng.choices(makers, weights)[0]())
            if i % 50 == 0:
                await self.raw.flush()
                self._expire()
                await self.room()
            if i % self.probe_every == 0:
                await self.probe()
                print(
                    f"fuzz: {i} sent in {time.monotonic() - started:.0f} s, {len(self.pending)} awaiting replies, "
                    f"{len(self.report.unanswered)} unanswered, {len(self.report.probe_failures)} probe failures",
                    flush=True,
                )
        await self.raw.flush()
        await self.settle()
        await self.probe()
        await self.finish()
        self.report.messages = messages
        self.report.seconds = time.monotonic() - started
        return self.report

    async def settle(self) -> None:
        """Wait for every expected reply (or its timeout), then for the durable results."""
        while self.pending:
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), 1.0)
            self._expire()
        # Durable results: of the messages the stream stored (first reply: a PubAck
        # without error and not a duplicate), each gets its one result. An agent whose
        # state is garbage keeps its messages queued for attempts x attempt_timeout each:
        # wait while results keep coming, up to durable_timeout without one.
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < self.durable_timeout:
            if all(self.durable_replies[t] or not self._stored(s) for t, s in self.durable.items()):
                break
            self.durable_progress.clear()
            try:
                await asyncio.wait_for(self.durable_progress.wait(), 1.0)
                quiet_since = time.monotonic()
            except TimeoutError:
                pass
        await self.sniffer.flush()

    def _slow_consumers(self) -> int:
        """The server's slow consumer count (``/varz``), 0 without a monitoring URL."""
        if self.monitor_url is None:
            return 0
        with urllib.request.urlopen(f"{self.monitor_url}/varz", timeout=5) as answer:
            return int(json.loads(answer.read()).get("slow_consumers", 0))

    @staticmethod
    def _stored(sent: Sent) -> bool:
        ack = sent.first
        return isinstance(ack, dict) and "seq" in ack and "error" not in ack and not ack.get("duplicate")

    async def probe(self) -> None:
        """Each canary answers a normal call (``add``) within a short timeout; the host
        processes are alive; each node answers ``info``."""
        assert self.prober is not None
        self.report.probes += 1
        for node in NODES:
            if not self.alive(node) and node not in self.report.hosts_dead:
                self.report.hosts_dead.append(node)
        for node, pid in self.pids.items():
            rss = proc_status(pid, "VmRSS")
            self.report.rss_peak[node] = max(self.report.rss_peak.get(node, 0), rss)
            self.report.rss_trend.setdefault(node, []).append(rss // MiB)

        async def one(canary: str) -> None:
            began = time.monotonic()
            try:
                await self.prober.ref("Canary", canary).call("add", by=1, timeout=5.0)
            except Exception as exc:
                self.report.probe_failures.append(f"message {self.n}: Canary/{canary}: {type(exc).__name__}: {exc}")
                self.report.canary_expected[canary] = -1_000_000  # unknown from now on
                return
            self.report.canary_expected[canary] += 1
            took = (time.monotonic() - began) * 1000
            self.report.probe_ms.append(took)
            self.report.probe_max_ms = max(self.report.probe_max_ms, took)

        async def info(node: str) -> None:
            try:
                reply = await self.sniffer.request(f"{self.p}.node.{node}.info", b"", timeout=5)
                assert (reply.headers or {}).get(h.STATUS) == "ok", reply.headers
                self.report.agents[node] = len(msgpack.unpackb(reply.data).get("agents", []))
            except Exception as exc:
                self.report.probe_failures.append(f"message {self.n}: node {node} info: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(one(c) for c in CANARIES), *(info(node) for node in NODES))

    async def finish(self) -> None:
        """The last checks: duplicates, durable results, canary states, RSS, CPU."""
        assert self.prober is not None
        for sent in self.sent.values():
            # A resent request's copy is answered again once the first is answered (the
            # host keeps the reply): only replies before the resend count as duplicates.
            before = sent.replies if not sent.resent else sent.replies[: max(sent.resent, 0)]
            if len(before) > 1:
                self.report.duplicates.append(f"{sent.summary} -> {sent.replies}")
            if sent.resent == -1 and sent.replies:
                self.report.answered_after_resend.append(f"{sent.summary} -> {sent.replies}")
        for token, sent in self.durable.items():
            got = self.durable_replies[token]
            if self._stored(sent):
                self.report.durable_expected += 1
                if got:
                    self.report.durable_answered += 1
                else:
                    self.report.durable_unanswered.append(f"{sent.summary} ack={sent.first}")
            elif got and isinstance(sent.first, dict):  # refused or dropped by the stream, yet answered
                self.report.durable_unexpected.append(f"{sent.summary} ack={sent.first}")
        for canary in CANARIES:
            try:
                self.report.canary_found[canary] = await self.prober.ref("Canary", canary).call("get", timeout=5.0)
            except Exception as exc:
                self.report.canary_found[canary] = f"{type(exc).__name__}: {exc}"
        for node, pid in self.pids.items():
            self.report.rss_after[node] = proc_status(pid, "VmRSS")
            # VmHWM: the true peak, not only what the probes saw.
            peak = max(self.report.rss_after[node], proc_status(pid, "VmHWM"))
            self.report.rss_peak[node] = max(self.report.rss_peak.get(node, 0), peak)
            self.report.cpu[node] += proc_cpu(pid)
        self.report.slow_consumers += self._slow_consumers()
        self.report.raw_errors = [e.decode(errors="replace") for e in self.raw.errors]
        self.report.raw_reconnects = self.raw.reconnects

    # -- generators ------------------------------------------------------------------------

    def kind(self) -> str:
        r = self.rng
        if r.random() < 0.03:
            return r.choice(["Ghost", "tally", "Canary2", "X" * 64])
        return r.choice(FUZZ_KINDS)

    def agent_id(self) -> str:
        r = self.rng
        if r.random() < 0.03:
            return r.choice(["n", "new"]) + str(r.randrange(10**6))  # a new agent
        return r.choice(self.ids)

    def token(self) -> tuple[str | None, str]:
        """(id, its token), or (None, a token that is not canonical)."""
        r = self.rng
        if r.random() < 0.02:
            return None, r.choice(["=", "=!!", "=" + "A" * 400, "a" * 301, "é", "=YS5i=", "=eA"])
        agent_id = self.agent_id()
        return agent_id, encode_id(agent_id)

    def activation(self, kind: str, agent_id: str) -> Msg:
        """A plain activation request (spawn), as a caller sends after "no responders"."""
        body = self.g.pack({"id": agent_id, "spawn": True})
        return Msg("activate", "reactivate", f"{self.p}.activate.{kind}", block_of({h.PROTO: "1"}), body)

    def params(self, kind: str, action: str) -> tuple[str, Any]:
        """(label, parameters) for an action, mostly valid."""
        r = self.rng
        g = self.g
        if r.random() < 0.15:
            return "rand-params", g.value()
        if kind == "Typed":
            good: dict[str, Any] = {"point": {"x": r.randint(-5, 5)}, "color": r.choice(["red", "blue"]), "tags": ["a"]}
            if r.random() < 0.5:
                good[r.choice(["mode", "scale", "maybe", "pair", "meta", "point", "color"])] = g.value()
            return "shapes", good
        if action == "add":
            return "add", {"by": r.choice([1, 1, 2, -3, 0, 2**63 - 1, 2**64 - 1, True, "1", 1.5, None])}
        if action == "echo":
            value = g.value() if r.random() < 0.9 else "x" * r.choice([1000, 100_000, 900_000])
            return "echo", {"value": value}
        if action == "fail":
            return "fail", {"message": g.text(40)}
        if action == "slow":
            return "slow", {"ms": r.choice([0, 1, 5, 20, 10**9])}
        if action == "big":
            return "big", {"size": r.choice([0, 10, 70_000, 600_000, 1_100_000, 2**40])}
        if action == "keep":
            value = g.value() if r.random() < 0.8 else "k" * r.choice([1000, 50_000, 1_000_000])
            return "keep", {"value": value}
        if action == "relay":
            target = f"{r.choice((*FUZZ_KINDS[:2], 'Ghost', 'Canary'))}/{r.choice(self.ids)}"
            return "relay", {"target": target if r.random() < 0.9 else g.text(), "by": 1}
        return action, {}

    def request_headers(self, action: str) -> tuple[str, dict[str, str]]:
        r = self.rng
        now = int(time.time() * 1000)
        hdrs = {h.PROTO: "1", h.ACTION: action, h.MESSAGE_ID: envelope.new_message_id()}
        labels = []
        if r.random() < 0.7:
            hdrs[h.DEADLINE] = str(now + r.randint(2000, 10_000))
        elif r.random() < 0.2:
            hdrs[h.DEADLINE] = str(r.choice([1, now - 1000]))
            labels.append("past")
        if r.random() < 0.3:
            hdrs[h.CALLER] = r.choice(["fuzz", "Tally/f1", "x" * 300])
        if r.random() < 0.12:
            hdrs[h.REPLY_MODE] = h.REPLY_MODE_ACCEPT
            labels.append("accept")
        elif r.random() < 0.05:
            hdrs[h.REPLY_MODE] = h.REPLY_MODE_REPLAY
            labels.append("replay")
            if self.recent and r.random() < 0.7:
                old = envelope.parse_header_block(self.recent[-1][1]) or {}
                hdrs[h.MESSAGE_ID] = old.get(h.MESSAGE_ID, hdrs[h.MESSAGE_ID])
        if r.random() < 0.1:
            hdrs[h.PRIORITY] = r.choice(["high", "low", "normal", "urgent"])
        if r.random() < 0.1:
            hdrs[h.ACCEPT_ENCODING] = "deflate"
        if r.random() < 0.05:
            hdrs[h.TRACEPARENT] = r.choice(["00-" + "a" * 32 + "-" + "b" * 16 + "-01", "garbage", "00-zz"])
        if r.random() < 0.05:
            hdrs[h.CORRELATION_ID] = r.choice(["corr-1", "bad id", ""])
        return "+".join(labels), hdrs

    def mutate_headers(self, hdrs: dict[str, str]) -> str:
        r = self.rng
        labels = []
        for _ in range(r.randint(1, 3)):
            op = r.randint(0, 5)
            if op == 0:
                hdrs[r.choice(HEADER_NAMES)] = r.choice(NASTY)
                labels.append("set")
            elif op == 1 and hdrs:
                del hdrs[r.choice(list(hdrs))]
                labels.append("drop")
            elif op == 2 and self.old_headers:
                other = r.choice(self.old_headers)
                if other:
                    name = r.choice(list(other))
                    hdrs[name] = other[name]
                    labels.append("swap")
            elif op == 3:
                hdrs[r.choice(HEADER_NAMES)] = "v" * r.choice([100, 3000, 20_000])
                labels.append("long")
            elif op == 4:
                hdrs[r.choice(["", " ", "Na Action", "é-Name", "X:Y", "\x00"])] = "add"
                labels.append("name")
            else:
                hdrs[r.choice(HEADER_NAMES)] = self.g.text(20)
                labels.append("text")
        return "+".join(labels)

    def bad_block(self) -> tuple[str, bytes]:
        r = self.rng
        k = r.randint(0, 6)
        if k == 0:
            return "bad-block", r.choice(BAD_BLOCKS)
        if k == 1:
            return "bad-block-rand", r.randbytes(r.randint(1, 40))
        if k == 2:
            return "bad-status", b"NATS/1.0 " + r.randbytes(r.randint(1, 8)) + b"\r\nNa-Action: add\r\n\r\n"
        if k == 3:
            return "bad-utf8", b"NATS/1.0\r\nNa-Action: \xff\xfe\r\nNa-Msg-Id: \xc3\r\n\r\n"
        if k == 4:
            return "no-end", b"NATS/1.0\r\nNa-Action: add"
        if k == 5:
            lines = b"".join(b"X-%d: %s\r\n" % (i, b"y" * r.randint(0, 30)) for i in range(r.randint(100, 2000)))
            return "many-lines", b"NATS/1.0\r\nNa-Action: add\r\n" + lines + b"\r\n"
        return "dup-lines", b"NATS/1.0\r\nNa-Action: add\r\nNa-Action: get\r\nNa-Action: \r\n\r\n"

    def reply_kind(self) -> str:
        x = self.rng.random()
        return "inbox" if x < 0.86 else ("none" if x < 0.93 else "hostile")

    def agent_msg(self) -> Msg:
        r = self.rng
        g = self.g
        kind = self.kind()
        agent_id, token = self.token()
        subject = f"{self.p}.agent.{kind}.{token}"
        x = r.random()
        if x < 0.05 and self.recent:  # a copy of an earlier request (a resend)
            old_subject, block, body = r.choice(self.recent)
            return Msg("agent", "copy", old_subject, block, body, copy=True)
        if x < 0.12:
            what, block = self.bad_block()
            return Msg("agent", what, subject, block, g.pack({"by": 100}), self.reply_kind())
        if x < 0.22:
            return self.owner_msg(subject)
        actions = ACTIONS.get(kind, ACTIONS["Tally"])
        action = r.choice(actions) if r.random() < 0.93 else r.choice(["nope", "on_start", "_x", "add.x", "a" * 65])
        what, params = self.params(kind, action)
        label, hdrs = self.request_headers(action)
        body = g.pack(params)
        if r.random() < 0.06:
            name, body = g.garbage_body()
            what += f"+{name}"
        if r.random() < 0.08:
            what += "+" + self.compress(hdrs, body)
            body = self._compressed
        if label:
            what += "+" + label
        mutated = r.random() < 0.25
        if mutated:
            what += "+" + self.mutate_headers(hdrs)
        block = block_of(hdrs)
        if r.random() < 0.05:
            block = g.mutate_bytes(block)
            what += "+flip-hdr"
            mutated = True
        if r.random() < 0.05:
            body = g.mutate_bytes(body)
            what += "+flip-body"
        if r.random() < 0.03:
            body = body[: r.randrange(len(body) + 1)]
            what += "+truncated"
        self.old_headers.append(dict(hdrs))
        msg = Msg("agent", what, subject, block, body, self.reply_kind())
        msg.agent = (kind, agent_id) if agent_id is not None else None
        if msg.reply == "inbox" and not mutated:
            self.recent.append((subject, block, body))
        self._mark_copy(msg)
        return msg

    def _mark_copy(self, msg: Msg) -> None:
        """A message carrying a ``Na-Msg-Id`` this agent was sent before is a copy: while the
        first is held, the copy gets no reply of its own (protocol §7.4)."""
        hdrs = envelope.parse_header_block(msg.block) or {}
        mid = hdrs.get(h.MESSAGE_ID)
        if mid is None or not envelope.is_message_id(mid):
            return  # a malformed id identifies nothing: each such request gets its own answer
        key = (msg.subject, mid)
        if key in self.seen_ids:
            msg.copy = True
        self.seen_ids.add(key)

    _compressed = b""

    def compress(self, hdrs: dict[str, str], body: bytes) -> str:
        r = self.rng
        hdrs[h.ENCODING] = "deflate" if r.random() < 0.9 else r.choice(["gzip", "DEFLATE", ""])
        k = r.randint(0, 4)
        if k == 0:
            self._compressed = zlib.compress(body)
            return "deflate"
        if k == 1:
            self._compressed = r.choice(bombs())
            return "bomb"
        if k == 2:
            self._compressed = zlib.compress(body)[:-3]
            return "deflate-truncated"
        if k == 3:
            self._compressed = zlib.compress(body) + b"junk"
            return "deflate-trailing"
        self._compressed = body
        return "not-deflate"

    def owner_msg(self, subject: str) -> Msg:
        """Owner orders: single durable messages and batches, signed or not."""
        r = self.rng
        g = self.g
        signed = r.random() < 0.6 and self.owner_key is not None
        if r.random() < 0.35:
            hdrs = {
                h.PROTO: "1",
                h.ACTION: r.choice(["add", "get", "echo"]),
                h.MESSAGE_ID: envelope.new_message_id(),
                h.DELIVERY: r.choice([h.DELIVERY_AT_LEAST_ONCE, h.DELIVERY_EXACTLY_ONCE, "maybe"]),
                h.STREAM_SEQ: r.choice([str(r.randint(1, 10**6)), "999999999999999999", "0", "-1", "x", "9" * 20]),
            }
            body = g.pack({"by": 1})
            what = "seq"
        else:
            items = []
            for _ in range(r.randint(1, 4)):
                ih = {
                    h.PROTO: "1",
                    h.ACTION: r.choice(["add", "get", "echo", "nope"]),
                    h.MESSAGE_ID: envelope.new_message_id(),
                    h.DELIVERY: r.choice([h.DELIVERY_AT_LEAST_ONCE, h.DELIVERY_EXACTLY_ONCE]),
                    h.STREAM_SEQ: str(r.randint(1, 10**6)),
                }
                if r.random() < 0.1:
                    del ih[h.STREAM_SEQ]
                ib: Any = g.pack({"by": 1})
                if r.random() < 0.08:
                    ib = g.garbage_body()[1]
                if r.random() < 0.05:
                    ib = "not bytes"
                items.append([ih, ib])
            what = "batch"
            x = r.random()
            if x < 0.1:  # an item that is itself a batch (a signed outer batch)
                inner = msgpack.packb(items, use_bin_type=True)
                items = [[{h.PROTO: "1", h.BATCH: "1", h.STREAM_SEQ: "1", h.MESSAGE_ID: "in"}, inner]]
                what = "batch-nested"
            body = msgpack.packb(items, use_bin_type=True)
            if x > 0.95:
                body = b"\x91" * 3000 + b"\xc0"
                what = "batch-deep"
            count = str(len(items)) if r.random() < 0.85 else r.choice(["0", "257", "999", "x", "2", ""])
            hdrs = {h.PROTO: "1", h.BATCH: count, h.MESSAGE_ID: envelope.new_message_id()}
            if r.random() < 0.05:
                hdrs[h.REPLY_MODE] = r.choice(["accept", "replay"])
                what += "+mode"
        if r.random() < 0.5:
            hdrs[h.DEADLINE] = str(int(time.time() * 1000) + 8000)
        if signed:
            hdrs[h.OWNER_MAC] = owner_mac(self.owner_key or b"", subject, hdrs, body)
            what += "+signed"
        elif r.random() < 0.5:
            hdrs[h.OWNER_MAC] = r.choice(["0" * 32, "x", r.randbytes(16).hex()])
            what += "+forged"
        block = block_of(hdrs)
        if signed and r.random() < 0.1:
            body = g.mutate_bytes(body, 1)
            what += "+flipped"
        msg = Msg("agent", what, subject, block, body, self.reply_kind())
        self._mark_copy(msg)
        return msg

    def ask_body(self) -> tuple[str, dict[Any, Any]]:
        """An activation body, valid or nearly so (its deadline always near)."""
        r = self.rng
        g = self.g
        now = int(time.time() * 1000)
        body: dict[Any, Any] = {"id": self.agent_id()}
        labels = []
        if r.random() < 0.3:
            body["spawn"] = r.choice([True, False, "yes", 1])
        if r.random() < 0.5:
            # Never far: a placement that cannot fit is answered at its deadline (an hour at most).
            body["deadline"] = r.choice([now + 3000, now + 500, 0, now - 1000, -1, "soon", 1.5, None])
        if r.random() < 0.2:
            body["needs"] = r.choice(
                [
                    {"cpu": 0.1},
                    {"cpu": 10**9},
                    {"memory": -1},
                    {"custom": {"gpu": 1}},
                    {"cpu": "x"},
                    [],
                    None,
                    {"cpu": float("nan")},
                    {"custom": {"": 1}},
                ]
            )
            labels.append("needs")
        if r.random() < 0.2:
            body["hints"] = r.choice(
                [
                    {"prefer": ["n1"]},
                    {"avoid": ["n1", "n2"]},
                    {"pin": "ghost"},
                    {"pin": "n2"},
                    {"tags": ["gpu"]},
                    {"colocate_with": "Tally/f1"},
                    {"prefer": "n1"},
                    {"pin": 5},
                    {"avoid": [None]},
                    "x",
                ]
            )
            labels.append("hints")
        if r.random() < 0.3:
            body["queue"] = r.choice([True, False, 0, "no"])
        if r.random() < 0.1:
            body[g.key()] = g.value()
        if body.get("deadline") is None:
            body.pop("deadline", None)  # the host's queue_timeout
        return "+".join(labels), body

    def activate_msg(self) -> Msg:
        r = self.rng
        g = self.g
        subject = f"{self.p}.activate.{self.kind()}"
        x = r.random()
        if x < 0.1:
            what, block = self.bad_block()
            return Msg("activate", what, subject, block, g.pack({"id": "f1"}), self.reply_kind())
        if x < 0.25:
            what, body = g.garbage_body()
            return Msg("activate", "garbage-" + what, subject, block_of({h.PROTO: "1"}), body, self.reply_kind())
        label, ask = self.ask_body()
        if r.random() < 0.1:
            ask["id"] = r.choice([5, "", None, "x" * 201, "\ud800", b"f1", ["f1"]])
            label += "+id"
        body = g.pack(ask)
        waits = False
        if r.random() < 0.08:
            body = g.mutate_bytes(body)
            label += "+flip"
            waits = far_deadline(body, self.reply_timeout)
        hdrs = {h.PROTO: "1"} if r.random() < 0.9 else {h.PROTO: r.choice(NASTY), h.ACTION: "add"}
        msg = Msg("activate", "ask+" + label, subject, block_of(hdrs), body, self.reply_kind())
        msg.waits = waits
        return msg

    def control_msg(self) -> Msg:
        r = self.rng
        g = self.g
        node = r.choice(NODES + NODES + ("ghost",))
        op = r.choice(["activate", "activate", "info", "migrate", "migrate", "adopt", "adopt", "nope", "Drain", "x"])
        if node == "ghost" and r.random() < 0.3:
            op = "drain"
        subject = f"{self.p}.node.{node}.{op}"
        label = op
        body: Any
        if op == "activate":
            label2, body = self.ask_body()
            body["kind"] = self.kind() if r.random() < 0.9 else g.value()
            if r.random() < 0.3:
                body["placed"] = r.choice([True, False, "y"])
            label += "+" + label2
        elif op == "migrate":
            body = {
                "kind": self.kind(),
                "id": self.agent_id(),
                "to": r.choice((*NODES, "ghost", "", 5)),
                "strategy": r.choice(["checkpoint_restore", "state_transfer", "cold_start", "teleport", None]),
            }
            if r.random() < 0.2:
                del body[r.choice(list(body))]
        elif op == "adopt":
            body = {
                "kind": self.kind(),
                "id": self.agent_id(),
                "strategy": "checkpoint_restore",
                "min_revision": r.choice([0, 1, 10**9, -1, "x"]),
                "claim_revision": r.choice([0, 1, 10**9, -1, None]),
            }
            if r.random() < 0.4:
                body["transfer"] = r.choice(
                    [
                        {"data": {"n": 5}, "revision": 1, "epoch": 1},
                        {"data": None},
                        "x",
                        {"revision": "x", "epoch": 1},
                    ]
                )
            if r.random() < 0.3:
                body["recent"] = r.choice([[["m1", None, None]], [["m2", {"Na-Status": "ok"}, b"\x01"]], "x", [[1]]])
            if r.random() < 0.3:
                body["applied"] = r.choice([[["m3", 2**40]], [[None]], "x", [["m4", "y"]]])
            if r.random() < 0.2:
                body["seq"] = r.choice([1, 10**12, -5, "x"])
            if r.random() < 0.2:
                body["needs"] = r.choice([{"cpu": 1}, "x", {"cpu": -1}])
        elif op == "info":
            body = r.choice([{}, None, [], "x"])
        else:
            body = g.value()
        data = g.pack(body) if r.random() < 0.9 else g.garbage_body()[1]
        if r.random() < 0.05:
            data = g.mutate_bytes(data)
            label += "+flip"
        if r.random() < 0.08:
            label += "+" + self.bad_block()[0]
            block = self.bad_block()[1]
        else:
            block = block_of({h.PROTO: "1"})
        return Msg("control", label, subject, block, data, self.reply_kind())

    def inbox_msg(self) -> Msg:
        r = self.rng
        g = self.g
        kind = self.kind()
        subject = f"{self.p}.inbox.{kind}.{self.token()[1]}"
        action = r.choice(ACTIONS.get(kind, ACTIONS["Tally"])) if r.random() < 0.95 else "nope"
        what, params = self.params(kind, action)
        if action in ("big", "echo", "keep", "slow", "relay") and r.random() < 0.7:
            action, params, what = "add", {"by": 1}, "add"
        mid = envelope.new_message_id()
        if r.random() < 0.05 and self.recent:
            old = envelope.parse_header_block(self.recent[-1][1]) or {}
            mid = old.get(h.MESSAGE_ID, mid)
            what += "+old-id"
        hdrs = {
            h.PROTO: "1",
            h.ACTION: action,
            h.MESSAGE_ID: mid,
            h.DELIVERY: r.choice([h.DELIVERY_AT_LEAST_ONCE, h.DELIVERY_EXACTLY_ONCE]),
            "Nats-Msg-Id": mid if r.random() < 0.95 else "dup-" + str(r.randrange(5)),
        }
        durable_reply = False
        x = r.random()
        if x < 0.6:
            hdrs[h.REPLY_TO] = f"_INBOX.fuzz.d{self.n + 1}"
            durable_reply = True
        elif x < 0.75:
            hostile = r.choice(self.hostile_subjects)
            hdrs[h.REPLY_TO] = hostile + str(self.n + 1) if hostile.endswith(".h") else hostile
            what += "+hostile-reply-to"
        if r.random() < 0.2:
            now = int(time.time() * 1000)
            hdrs[h.DEADLINE] = str(r.choice([now + 5000, now - 1000, 1]))
        if r.random() < 0.08:
            hdrs[h.BATCH] = r.choice(["1", "2", "x"])
            what += "+batch"
        if r.random() < 0.05:
            hdrs[h.STREAM_SEQ] = "999999999999"
            what += "+seq"
        if r.random() < 0.05:
            hdrs[h.OWNER_MAC] = "0" * 32
        if r.random() < 0.05:
            hdrs[h.REPLY_MODE] = "accept"
            hdrs[h.PRIORITY] = "high"
        body = g.pack(params)
        if r.random() < 0.05:
            name, body = g.garbage_body()
            what += "+" + name
        if r.random() < 0.04:
            what += "+" + self.compress(hdrs, body)
            body = self._compressed
        if r.random() < 0.1:
            what += "+" + self.mutate_headers(hdrs)
            if hdrs.get(h.REPLY_TO) != f"_INBOX.fuzz.d{self.n + 1}":
                durable_reply = False
        block = block_of(hdrs)
        msg = Msg("inbox", what, subject, block, body, "inbox" if r.random() < 0.95 else "none")
        msg.durable_reply = durable_reply
        return msg

    def read_msg(self) -> Msg:
        """A request on a read subject: the session kind's primary and replica answer it."""
        r = self.rng
        g = self.g
        kind = "Reader" if r.random() < 0.85 else self.kind()
        agent_id, token = self.token()
        subject = f"{self.p}.read.{kind}.{token}"
        if r.random() < 0.06:
            what, block = self.bad_block()
            msg = Msg("read", what, subject, block, g.pack({}), self.reply_kind())
            msg.agent = (kind, agent_id) if agent_id is not None else None
            return msg
        action = r.choice(READ_ONLY) if r.random() < 0.8 else r.choice(["add", "keep", "nope", "echo"])
        what, params = self.params(kind, action)
        label, hdrs = self.request_headers(action)
        if r.random() < 0.6:
            hdrs[h.MIN_VERSION] = r.choice(
                ["0", "1", "2", "5", str(r.randint(1, 50)), "1000000", "9" * 19, str(2**64), "-1", "x", "", "1.5", " 3"]
            )
            what += "+min-version"
        if r.random() < 0.05:
            hdrs[h.REPLICA] = r.choice(["1", "n1", "x"])
        if label:
            what += "+" + label
        if r.random() < 0.15:
            what += "+" + self.mutate_headers(hdrs)
        body = g.pack(params)
        if r.random() < 0.05:
            name, body = g.garbage_body()
            what += "+" + name
        msg = Msg("read", what, subject, block_of(hdrs), body, self.reply_kind())
        msg.agent = (kind, agent_id) if agent_id is not None else None
        self._mark_copy(msg)
        return msg

    def crdt_value(self) -> tuple[str, bytes]:
        """A body for a crdt subject: a counter delta or state, mostly valid."""
        r = self.rng
        g = self.g
        x = r.random()
        if x < 0.45:
            counter = PNCounter()
            for _ in range(r.randint(1, 4)):
                replica = r.choice(["n1", "n2", "x", "fuzz", g.text(8) or "e", "r" * 64])
                amount = r.choice([1, 5, -3, 10**6, 2**63, UINT64_MAX])
                try:
                    counter = counter.increment(replica, amount).state
                except (CrdtError, ValueError):
                    continue
            return "pn", counter.to_wire()
        if x < 0.55:
            return "gcounter", GCounter().increment("x", r.randint(1, 9)).state.to_wire()
        if x < 0.62:
            return "orset", ORSet().add("x", g.text(6)).state.to_wire()
        if x < 0.72:
            fields: dict[str, Any] = {"t": "pn", "v": r.choice([1, 2, "1"])}
            fields[r.choice(["p", "n"])] = r.choice(
                [{"x": -5}, {"": 1}, {"x": 2**64}, {"x": "1"}, {"a" * 300: 1}, [1], {1: 1}]
            )
            return "pn-bad", g.pack(fields)
        if x < 0.85:
            name, body = g.garbage_body()
            return "garbage-" + name, body
        counter = PNCounter().increment("x", r.randint(1, 100)).state
        return "pn-flipped", g.mutate_bytes(counter.to_wire())

    def crdt_msg(self) -> Msg:
        """A delta, a whole state, a digest or a hello, as a crdt copy (or a peer) sends."""
        r = self.rng
        g = self.g
        kind = "Merged" if r.random() < 0.85 else self.kind()
        token = self.token()[1]
        hdrs: dict[str, str] = {}
        node = r.random()
        if node < 0.6:
            hdrs[h.CRDT_NODE] = "peer" + str(r.randrange(3))
        elif node < 0.8:
            hdrs[h.CRDT_NODE] = r.choice(NODES)  # a node ignores what names it as the sender
        elif node < 0.9:
            hdrs[h.CRDT_NODE] = r.choice(["", " ", "x" * 300, "\u00e9", "peer" + str(r.randrange(10**6))])
        x = r.random()
        if x < 0.15:
            token = "~hello"
            hdrs[h.CRDT_HELLO] = r.choice(["0", "0.5", "3", "86400", "1e308", "nan", "inf", "-1", "x", ""])
            if r.random() < 0.3:
                hdrs[h.CRDT_ECHO] = r.choice(["1", "0", "x"])
            what, body = "hello", b"" if r.random() < 0.9 else r.randbytes(r.randint(1, 64))
        elif x < 0.35:
            hdrs[h.CRDT_DIGEST] = "1"
            choice = r.random()
            if choice < 0.4:
                what, body = "digest-hash", g.pack({"t": "pn", "h": r.randbytes(r.choice([16, 0, 3, 64]))})
            elif choice < 0.6:
                what, body = "digest-cc", g.pack({"t": r.choice(["orset", "pn", "x"]), "cc": g.value()})
            else:
                name, body = g.garbage_body()
                what = "digest-" + name
        else:
            what, body = self.crdt_value()
            if r.random() < 0.3:
                hdrs[h.CRDT_WHOLE] = r.choice(["1", "1", "0", "yes"])
                what += "+whole"
        if r.random() < 0.1:
            what += "+" + self.mutate_headers(hdrs)
        block = block_of(hdrs) if hdrs else b""
        if r.random() < 0.04:
            label, block = self.bad_block()
            what += "+" + label
        subject = f"{self.p}.crdt.{kind}.{token}"
        return Msg("crdt", what, subject, block, body, "hostile" if r.random() < 0.2 else "none")

    def kv_msg(self) -> Msg:
        r = self.rng
        g = self.g
        bucket = r.choice(["members", "directory", "state", "control"])
        if bucket == "members":
            key = r.choice(["n1", "n2", "ghost", "g" + str(r.randrange(5)), "x.y"])
        elif bucket == "control":
            key = r.choice(["rebalancer", "partition.0", "partition.3", "partition.9", "attempts.1", "owner-key", "zz"])
        else:
            kind, (agent_id, token) = self.kind(), self.token()
            key = f"{kind}.{token}"
            if agent_id is not None:  # a directory or state record: it may move or fence the agent
                self.rewritten[(kind, agent_id)].append(time.monotonic())
        subject = f"$KV.{bucket_name(self.p, bucket)}.{key}"
        hdrs: dict[str, str] = {}
        x = r.random()
        if x < 0.1:
            hdrs["KV-Operation"] = "DEL"
            label = "del"
        elif x < 0.15:
            hdrs["KV-Operation"] = "PURGE"
            hdrs["Nats-Rollup"] = "sub"  # this key only: never "all" (a purge of the bucket)
            label = "purge"
        else:
            label = "put"
        if r.random() < 0.1:
            hdrs["Nats-TTL"] = r.choice(["1", "5s", "x", "0"])
        if r.random() < 0.05:
            hdrs["Nats-Expected-Last-Subject-Sequence"] = r.choice(["0", "1", "x"])
        now = time.time()
        record: Any
        if bucket == "members":
            record = {
                "node": r.choice([key, "n1", "other"]),
                "kinds": r.choice([list(FUZZ_KINDS), [], ["Canary"], "x"]),
                "capacity": r.choice([{}, {"cpu": 0.0}, "x"]),
                "load": {
                    "agents": r.choice([0, 10**6, -1]),
                    "mailbox_backlog": 0,
                    "cpu": 0.0,
                    "memory": 0.0,
                    "network": 0.0,
                },
                "tags": [],
                "version": "0",
                "started_at": now,
                "heartbeat_at": now + r.choice([0, 3600, -3600]),
                "lease": r.choice([1.5, 1e9, 0, -1, float("nan")]),
                "draining": r.choice([False, True, "no"]),
                "weight": r.choice([1.0, 0, 100, 1e9]),
            }
        elif bucket == "directory":
            record = {
                "kind": key.split(".")[0],
                "id": "f1",
                "node": r.choice(["n1", "n2", "ghost", ""]),
                "epoch": r.choice([1, 2**60, -1, "x"]),
                "status": r.choice(["active", "migrating", "zombie"]),
                "since": now,
                "restart": r.choice(["transient", "permanent", "x"]),
            }
        elif bucket == "state":
            record = {"epoch": r.choice([1, 2**60, -1, "x"]), "data": g.value(), "seq": r.choice([0, 2**60, "x"])}
            if r.random() < 0.3:
                record["applied"] = r.choice([[["m", 2**50]], "x", [[1, 2, 3]]])
        else:
            record = r.choice(["n1", "ghost", 5, {"x": 1}])
        if r.random() < 0.3:
            record = g.value()
        body = g.pack(record) if r.random() < 0.8 else g.garbage_body()[1]
        if label != "put":
            body = b""
        if r.random() < 0.05:
            body = b"\x00" * r.choice([32, 100_000])
        return Msg("kv", f"{bucket}-{label}", subject, block_of(hdrs) if hdrs else b"", body, "inbox")


def far_deadline(body: bytes, within: float) -> bool:
    """Whether an activation body decodes to a map whose ``deadline`` (Unix ms) is more
    than ``within`` seconds away: a byte flip can make one of the fuzz's near deadlines far."""
    try:
        ask = msgpack.unpackb(body, strict_map_key=False)
    except Exception:
        return False
    deadline = ask.get("deadline") if isinstance(ask, dict) else None
    return type(deadline) is int and deadline > time.time() * 1000 + within * 1000


def fuzz_seed() -> int:
    """``$FUZZ_SEED`` or a fresh random seed."""
    env = os.environ.get("FUZZ_SEED")
    return int(env) if env else struct.unpack(">I", os.urandom(4))[0]
