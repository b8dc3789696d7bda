"""The reply window of ``runtime.dedup``: how long answers are kept for copies, and the
byte bounds that keep a hostile or busy caller from growing memory or state without bound —
past which an id is still remembered (``already_applied``), never run again."""

from __future__ import annotations

import time
from typing import Any

from natsagents.cluster.replicas import versioned_block
from natsagents.runtime.dedup import (
    APPLIED_MAX_BYTES,
    IN_PROGRESS,
    Dedup,
    applied_size,
    keep_until_ms,
    trim_applied,
)
from natsagents.state.store import StateStore
from natsagents.wire import codec, envelope


class _Act:
    recent: Any = None


def _deadline(seconds: float) -> int | None:
    """The ``Na-Deadline`` of a request due in ``seconds``, as the host parses it."""
    return envelope.deadline_of({"Na-Deadline": str(int((time.time() + seconds) * 1000))})


def test_keep_until_follows_the_deadline_within_the_window() -> None:
    now = 1_000_000
    assert keep_until_ms(now + 30_000, now) == now + 31_000  # deadline + 1 s
    assert keep_until_ms(now + 600_000, now) == now + 60_000  # at most the window
    assert keep_until_ms(None, now) == now + 60_000  # no deadline: the window
    assert keep_until_ms(now - 5_000, now, floor_ms=1000) == now + 1000  # at least the floor


def test_an_answer_is_kept_until_its_deadline_not_just_the_ttl() -> None:
    dedup = Dedup(ttl=0.0)
    act, other = _Act(), _Act()
    Dedup.begin(act, "long")
    dedup.finish(act, "long", (b"h", b"r"), _deadline(30))
    Dedup.begin(act, "short")
    dedup.finish(act, "short", (b"h", b"s"), _deadline(-5))  # deadline passed: ttl only
    dedup.finish(other, "tick", (b"h", b"t"), _deadline(-5))  # expires what is due
    assert act.recent is not None and Dedup.lookup(act, "long")[:2] == (b"h", b"r")
    garbage = envelope.deadline_of({"Na-Deadline": "soon"})  # a malformed deadline: the whole window
    Dedup.begin(act, "g")
    dedup.finish(act, "g", (b"h", b"g"), garbage)
    assert Dedup.lookup(act, "g")[2] > time.time() + 59


def test_replies_past_the_byte_cap_leave_their_ids_applied() -> None:
    dedup = Dedup(max_bytes=3 * (100 + 64))
    acts = [_Act() for _ in range(5)]
    for i, act in enumerate(acts):
        Dedup.begin(act, f"m{i}")
        dedup.finish(act, f"m{i}", (b"h", bytes(100)), _deadline(30))
    # The two oldest replies were dropped; their ids stay known as applied.
    assert [Dedup.lookup(a, f"m{i}")[:2] for i, a in enumerate(acts)] == [
        (None, None),
        (None, None),
        (b"h", bytes(100)),
        (b"h", bytes(100)),
        (b"h", bytes(100)),
    ]
    assert dedup._bytes <= dedup.max_bytes
    # A forgotten activation's entries do not leak the count: they leave the deque in turn.
    acts[2].recent = None
    for i in range(5, 10):
        act = _Act()
        Dedup.begin(act, f"m{i}")
        dedup.finish(act, f"m{i}", (b"h", bytes(100)), _deadline(30))
    assert dedup._bytes <= dedup.max_bytes and len(dedup._kept) <= 3


def test_trim_applied_drops_replies_before_ids_and_ids_last() -> None:
    now = 1_000_000
    applied = [("old", now - 1, b"x"), *[(f"id{i:02d}", now + 10_000, bytes(1000)) for i in range(10)]]
    kept = trim_applied(applied, now, max_bytes=5000)
    assert [a[0] for a in kept] == [f"id{i:02d}" for i in range(10)]  # only the expired went
    assert [a[2] is not None for a in kept] == [False] * 6 + [True] * 4  # the newest replies
    assert sum(applied_size(a) for a in kept) <= 5000
    ids_only = trim_applied(applied, now, max_bytes=3 * applied_size(("id00", 0, None)))
    assert [a[0] for a in ids_only] == ["id07", "id08", "id09"]
    assert trim_applied([], now) == []


def test_a_busy_agents_record_stays_within_the_cap() -> None:
    """Write size: what the applied entries add to a state record, measured on the encoded
    record (64 KiB cap; about 37 bytes per id and the reply body besides)."""
    now = int(time.time() * 1000)
    plain = StateStore.encode({"n": 1}, 1)
    applied = [(envelope.new_message_id(), now + 11_000, codec.encode(i)) for i in range(5000)]
    kept = trim_applied(applied, now)
    value = StateStore.with_extras(plain, kept)
    assert len(value) - len(plain) <= APPLIED_MAX_BYTES + 16
    one = StateStore.with_extras(plain, kept[-1:])
    assert 30 <= len(one) - len(plain) <= 50  # "applied" key + one small entry


def test_export_carries_expiry_and_bounds_reply_bytes() -> None:
    dedup = Dedup()
    src = _Act()
    for i in range(3):
        Dedup.begin(src, f"m{i}")
        dedup.finish(src, f"m{i}", (envelope.OK_HEADER_BLOCK, bytes(100)), _deadline(30))
    Dedup.begin(src, "running")
    exported = dedup.export(src, max_bytes=150)
    assert [e[0] for e in exported] == ["m0", "m1", "m2"]
    assert [e[2] is not None for e in exported] == [False, False, True]  # the newest reply
    assert all(abs(e[3] - (time.time() + 31) * 1000) < 2000 for e in exported)
    dst = _Act()
    Dedup(window=5.0).load(dst, codec.decode(codec.encode(exported)))
    assert dst.recent is not None and dst.recent["m0"][:2] == (None, None)
    assert dst.recent["m2"][1] == bytes(100)
    assert dst.recent["m2"][2] <= time.time() + 5  # within the loader's window
    assert "running" not in dst.recent and Dedup.lookup(src, "running") is IN_PROGRESS


def test_a_durable_answer_is_kept_for_its_redelivery_window() -> None:
    """A partition owner may deliver a durable message again up to 120 s later (it ran,
    its ack was lost): the activation answers it from memory, not ``already_applied`` by
    its stream sequence."""
    dedup = Dedup()
    act = _Act()
    Dedup.begin(act, "d")
    dedup.finish(act, "d", (b"h", b"r"), _deadline(5), durable=True)  # Na-Stream-Seq: 7
    assert Dedup.lookup(act, "d")[2] >= time.time() + 119


def test_a_compressed_reply_moves_with_its_encoding() -> None:
    dedup = Dedup()
    src = _Act()
    Dedup.begin(src, "z")
    dedup.finish(src, "z", (envelope.OK_DEFLATE_BLOCK, b"packed"), _deadline(30))
    (exported,) = dedup.export(src)
    assert exported[1]["Na-Encoding"] == "deflate" and exported[2] == b"packed"


def test_a_versioned_reply_moves_with_its_version_and_encoding() -> None:
    """A session kind's kept replies carry ``Na-State-Version`` in their block (and, when
    compressed, ``Na-Encoding``). The export took every block given as bytes for the plain
    ok block: after a move, a copy of a compressed request got the deflated bytes as a plain
    body (undecodable) and no version."""
    dedup = Dedup()
    src = _Act()
    packed = versioned_block(envelope.OK_DEFLATE_BLOCK, 42)
    plain = versioned_block(envelope.OK_HEADER_BLOCK, 43, {"Na-Replica": "n2"})
    for mid, block in (("v1", packed), ("v2", plain)):
        Dedup.begin(src, mid)
        dedup.finish(src, mid, (block, b"body"), _deadline(30))
    first, second = dedup.export(src)
    assert first[1] == {"Na-Proto": "1", "Na-Status": "ok", "Na-Encoding": "deflate", "Na-State-Version": "42"}
    assert second[1] == {"Na-Proto": "1", "Na-Status": "ok", "Na-State-Version": "43", "Na-Replica": "n2"}


def test_expired_replies_leave_the_byte_count() -> None:
    """Each answer sheds the kept replies that expired (here: each one at once, a zero
    window), so the count holds live replies only and the three deques stay aligned."""
    dedup = Dedup(ttl=0.0, window=0.0)
    act = _Act()
    for i in range(5):
        Dedup.begin(act, f"m{i}")
        dedup.finish(act, f"m{i}", (b"h", bytes(10)), None)
    assert len(dedup._kept) == len(dedup._kept_acts) == len(dedup._kept_ids) == 0
    assert dedup._bytes == 0
    kept = Dedup(ttl=0.0)  # the default window: kept, and counted once each
    Dedup.begin(act, "k")
    kept.finish(act, "k", (b"h", bytes(10)), _deadline(30))
    assert list(kept._kept_ids) == ["k"] and kept._bytes == 10 + 64
