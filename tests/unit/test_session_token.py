"""Session tokens (runtime.session): they round-trip, are bounded, and anything that is
not one is refused whole with InvalidSessionToken (hostile bytes from a web request)."""

from __future__ import annotations

import base64

import pytest

from natsagents import ConfigurationError, InvalidSessionToken, Session
from natsagents.runtime.session import MAX_TOKEN_AGENTS, MAX_TOKEN_CHARS
from natsagents.wire import codec


def _token(items: object) -> str:
    return "s1." + base64.urlsafe_b64encode(codec.encode(items)).rstrip(b"=").decode()


def test_a_token_round_trips_the_highest_versions() -> None:
    s = Session()
    s.observe("Cart", "u@example.com", 7)
    s.observe("Cart", "u@example.com", 5)  # never goes down
    s.observe("Board", "b", 3)
    again = Session.from_token(s.token())
    assert again.version("Cart", "u@example.com") == 7
    assert again.version("Board", "b") == 3
    assert again.version("Board", "other") == 0


def test_tokens_are_bounded_to_the_newest_agents() -> None:
    s = Session(max_agents=5000)
    for i in range(1000):
        s.observe("K", f"a{i}", i + 1)
    t = s.token()
    assert len(t) <= MAX_TOKEN_CHARS
    again = Session.from_token(t)
    assert len(again) == MAX_TOKEN_AGENTS
    assert again.version("K", "a999") == 1000 and again.version("K", "a0") == 0


def test_a_session_forgets_the_least_recently_seen_beyond_its_bound() -> None:
    s = Session(max_agents=2)
    s.observe("K", "a", 1)
    s.observe("K", "b", 1)
    s.observe("K", "c", 1)
    assert s.version("K", "a") == 0 and len(s) == 2


@pytest.mark.parametrize(
    "token",
    [
        None,
        42,
        b"s1.",
        "",
        "s2.AAAA",
        "s1.!!!!",
        "s1.=",
        "s1." + "A" * (MAX_TOKEN_CHARS + 1),
        "s1.\u00e9\u00e9",
        _token({"not": "a list"}),
        _token([["K", "a"]]),
        _token([["K", "a", 1, 2]]),
        _token([["bad kind!", "a", 1]]),
        _token([["K", "", 1]]),
        _token([["K", "a", 0]]),
        _token([["K", "a", -1]]),
        _token([["K", "a", 2**63]]),
        _token([["K", "a", 1.5]]),
        _token([["K", "a", True]]),
        _token([["K", "a", 1]] * (MAX_TOKEN_AGENTS + 1)),
        _token([[["K"], "a", 1]]),
        "s1." + base64.urlsafe_b64encode(b"\xc1\xc1").decode(),  # not msgpack
    ],
)
def test_garbage_tokens_are_refused_with_a_typed_error(token: object) -> None:
    with pytest.raises(InvalidSessionToken) as info:
        Session.from_token(token)
    assert isinstance(info.value, ConfigurationError)
