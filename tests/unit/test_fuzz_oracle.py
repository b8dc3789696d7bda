"""The fuzz harness's own oracle (``tests/fuzz.py``): which unanswered requests fail it."""

from __future__ import annotations

import time

import msgpack
import pytest

from tests.fuzz import MOVE_WINDOW, Fuzzer, Sent, far_deadline

pytestmark = pytest.mark.unit


def fuzzer() -> Fuzzer:
    return Fuzzer("nats://127.0.0.1:1", "t", {}, lambda node: True, seed=1, probe_every=10)


def request(n: int, *, resendable: bool, at: float) -> Sent:
    sent = Sent(n, "agent", "get", "t.agent.Tally.f1", "one", at, 10.0, f"#{n}")
    sent.agent = ("Tally", "f1")
    if resendable:
        sent.frame = (b"t.agent.Tally.f1", b"_INBOX.fuzz.1", b"", b"")
    return sent


def test_only_unanswered_requests_without_an_id_to_a_rewritten_agent_are_excused() -> None:
    f = fuzzer()
    now = time.monotonic()
    f.rewritten[("Tally", "f1")].append(now - MOVE_WINDOW / 2)
    assert f._moved_meanwhile(request(1, resendable=False, at=now))  # moved: cannot be resent
    assert not f._moved_meanwhile(request(2, resendable=True, at=now))  # a resend must be answered
    assert not f._moved_meanwhile(request(3, resendable=False, at=now + MOVE_WINDOW + 1))  # long after
    other = request(4, resendable=False, at=now)
    other.agent = ("Tally", "f2")  # another agent's record
    assert not f._moved_meanwhile(other)
    f.rewritten[("Tally", "f1")].append(now + 5)  # rewritten before its timeout
    assert f._moved_meanwhile(request(5, resendable=False, at=now + MOVE_WINDOW + 1))


def test_an_activation_whose_flipped_body_names_a_far_deadline_may_wait() -> None:
    now_ms = int(time.time() * 1000)
    assert far_deadline(msgpack.packb({"id": "f19", "deadline": now_ms + 19 * 3600 * 1000}), 20.0)
    assert not far_deadline(msgpack.packb({"id": "f19", "deadline": now_ms + 3000}), 20.0)
    assert not far_deadline(msgpack.packb({"id": "f19", "deadline": "soon"}), 20.0)
    assert not far_deadline(b"\xc1", 20.0)
