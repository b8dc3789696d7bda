"""Which reply subjects a host answers (``wire.subjects.is_reply_subject``): only a caller's
inbox, never another subject a sender points the answer at (docs/protocol.md §3.1)."""

from __future__ import annotations

import pytest

from natsagents.wire.subjects import MAX_REPLY_SUBJECT, is_reply_subject, reply_subject_pattern

INBOX = ("_INBOX.",)


@pytest.mark.parametrize(
    ("subject", "prefixes", "ok"),
    [
        ("_INBOX.abc", INBOX, True),
        ("_INBOX.Hk3v8ZbqQx0rX1m2nP3q4R.17", INBOX, True),
        ("_INBOX.a-b_c/d=e?f~g!h)i+j,k", INBOX, True),  # printable ASCII but . * >
        ("my.in.x", ("_INBOX.", "my.in."), True),  # any of several prefixes
        ("_INBOX.", INBOX, False),  # nothing after the prefix
        ("_INBOX.a.", INBOX, False),  # ends with a dot
        ("_INBOX.a..b", INBOX, False),  # empty token
        ("_INBOX.*", INBOX, False),
        ("_INBOX.a*b", INBOX, False),  # a token that merely contains a wildcard
        ("_INBOX.>", INBOX, False),
        ("_INBOX.a>", INBOX, False),
        ("_INBOX.a b", INBOX, False),
        ("_INBOX.a\tb", INBOX, False),
        ("_INBOX.a\r\nPUB x", INBOX, False),
        ("_INBOX.é", INBOX, False),
        ("$KV.bucket.key", INBOX, False),
        ("na.agent.Counter.c", INBOX, False),
        ("_INBOXa", INBOX, False),
        ("_INBOX.a", (), False),  # no prefix: nothing is an inbox
        ("_INBOX." + "a" * (MAX_REPLY_SUBJECT - 7), INBOX, True),
        ("_INBOX." + "a" * (MAX_REPLY_SUBJECT - 6), INBOX, False),  # one character too long
    ],
)
def test_only_inbox_subjects_are_answered(subject: str, prefixes: tuple[str, ...], ok: bool) -> None:
    assert is_reply_subject(subject, prefixes) is ok


def test_the_pattern_is_compiled_once_per_prefixes() -> None:
    assert reply_subject_pattern(("_INBOX.", "x.")) is reply_subject_pattern(("_INBOX.", "x."))
