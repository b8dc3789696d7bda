"""Protocol v1 building blocks: ids, codec, envelopes (pure code, property-tested)."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

import natsagents as na
from natsagents.wire import codec, envelope, ids, subjects
from natsagents.wire import headers as h

KV_KEY_CHARS = set("-/_=.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


@given(st.text(min_size=1, max_size=ids.MAX_ID_CHARS).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)))
def test_id_encoding_round_trips_to_one_safe_token(agent_id: str) -> None:
    token = ids.encode_id(agent_id)
    assert ids.decode_id(token) == agent_id
    assert token and set(token) <= KV_KEY_CHARS and "." not in token
    assert len(token.encode()) <= ids.MAX_TOKEN_BYTES * 4


def test_id_examples() -> None:
    assert ids.encode_id("c-1_A") == "c-1_A"
    assert ids.encode_id("user@example.com") == "=dXNlckBleGFtcGxlLmNvbQ"
    assert ids.encode_id("=x") == "=PXg"
    with pytest.raises(na.InvalidAgentId):
        ids.decode_id("=dXNlckBleGFtcGxlLmNvbQ=")  # padding is not canonical
    with pytest.raises(na.InvalidAgentId):
        ids.decode_id("=QB")  # non-canonical trailing bits (canonical: "=QA" for "@")
    assert ids.decode_id("=QA") == "@"
    with pytest.raises(na.InvalidAgentId):
        ids.decode_id("=YQ")  # "a" is a plain id: encoding it is not canonical
    with pytest.raises(na.InvalidAgentId):
        ids.decode_id("a.b")
    with pytest.raises(na.InvalidAgentId):
        ids.encode_id("\ud800")


def test_subjects() -> None:
    assert subjects.agent_subject("na", "Counter", "c-1") == "na.agent.Counter.c-1"
    assert subjects.activate_subject("a.b", "Counter") == "a.b.activate.Counter"
    for bad in ("", "a..b", "a.*", "a b", ".a", 5):
        with pytest.raises(na.ConfigurationError):
            subjects.validate_prefix(bad)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


@given(json_like)
def test_codec_round_trips(value: object) -> None:
    assert codec.decode(codec.encode(value)) == value


@given(st.binary(max_size=64))
def test_codec_decode_never_raises_anything_but_value_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except ValueError:
        pass


def test_codec_types() -> None:
    when = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
    assert codec.decode(codec.encode({"t": when})) == {"t": when}
    assert codec.decode(codec.encode((1, 2))) == [1, 2]
    with pytest.raises(TypeError):
        codec.encode(datetime.datetime(2026, 1, 1))
    with pytest.raises(TypeError):
        codec.encode(object())
    with pytest.raises(ValueError):
        codec.encode(2**70)
    assert codec.decode(b"") is None


def test_header_size_matches_the_wire_format() -> None:
    hdrs = {"Na-Proto": "1", "Na-Action": "add", "X": "ü"}
    block = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in hdrs.items()) + b"\r\n"
    assert envelope.headers_size(hdrs) == len(block)
    assert envelope.headers_size({}) == 0


def test_request_headers_and_parse_round_trip() -> None:
    hdrs = envelope.request_headers(
        action="add",
        message_id="m1",
        correlation_id="c1",
        deadline_ms=123,
        caller="Kind/x",
        reply_mode=h.REPLY_MODE_ACCEPT,
        trace={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    )
    meta = envelope.parse_request(hdrs)
    assert (meta.action, meta.message_id, meta.correlation_id, meta.deadline_ms, meta.caller, meta.reply_mode) == (
        "add",
        "m1",
        "c1",
        123,
        "Kind/x",
        "accept",
    )
    assert meta.traceparent is not None
    minimal = envelope.request_headers(action="a", message_id="m", correlation_id="m", deadline_ms=None)
    assert minimal == {h.PROTO: "1", h.ACTION: "a", h.MESSAGE_ID: "m"}
    generated = envelope.parse_request({h.ACTION: "a"})  # a peer may omit ids: the host makes one
    assert generated.correlation_id == generated.message_id and len(generated.message_id) == 22
    assert type(meta) is envelope.RequestMeta and meta == envelope.RequestMeta(*meta)


def test_an_id_checked_before_is_taken_and_any_other_id_still_matched() -> None:
    """``parse_request(headers, checked_id)``: the host matched ``Na-Msg-Id`` on arrival and
    passes it on (matched once a request); only that very id skips the match."""
    good = {h.ACTION: "a", h.MESSAGE_ID: "m-1_x"}
    assert envelope.parse_request(good, "m-1_x") == envelope.parse_request(good)
    bad = {h.ACTION: "a", h.MESSAGE_ID: "not an id!"}
    for checked in (None, "m-1_x", "not an id"):
        with pytest.raises(na.ProtocolError, match=f"malformed {h.MESSAGE_ID}"):
            envelope.parse_request(bad, checked)
    bad_correlation = {h.ACTION: "a", h.MESSAGE_ID: "m", h.CORRELATION_ID: "a b"}
    with pytest.raises(na.ProtocolError, match=f"malformed {h.CORRELATION_ID}"):
        envelope.parse_request(bad_correlation, "m")  # the correlation id is matched still


def test_replies_round_trip_into_typed_errors() -> None:
    hdrs, body = envelope.ok_reply({"n": 1})
    assert envelope.parse_reply(hdrs, body) == {"n": 1}
    for code, cls in [
        ("bad_request", na.BadRequest),
        ("timeout", na.CallTimeout),
        ("overloaded", na.Overloaded),
        ("unauthorized", na.Unauthorized),
        ("not_found", na.AgentNotFound),
        ("unavailable", na.Unavailable),
        ("payload_too_large", na.PayloadTooLarge),
        ("unknown_action", na.UnknownAction),
        ("handler_error", na.HandlerError),
    ]:
        hdrs, body = envelope.error_reply(code, "msg", agent="K/i", action="a", traceback="tb", details={"k": 1})
        with pytest.raises(cls) as info:
            envelope.parse_reply(hdrs, body)
        err = info.value
        assert (err.code, err.message, err.agent, err.action, err.remote_traceback, err.details, err.remote) == (
            code,
            "msg",
            "K/i",
            "a",
            "tb",
            {"k": 1},
            True,
        )
    hdrs, body = envelope.error_reply("from_the_future", "new")
    with pytest.raises(na.AgentError) as info2:
        envelope.parse_reply(hdrs, body)
    assert info2.value.code == "from_the_future"
    with pytest.raises(na.ProtocolError):
        envelope.parse_reply({}, b"")
    with pytest.raises(na.ProtocolError):
        envelope.parse_reply({h.STATUS: "ok"}, b"\xc1")
    with pytest.raises(na.HandlerError):  # an error reply with a garbage body is still that error
        envelope.parse_reply({h.STATUS: "handler_error"}, b"\xc1")


def test_long_non_ascii_ids_are_refused_before_the_wire() -> None:
    with pytest.raises(na.InvalidAgentId, match="once encoded"):
        ids.encode_id("😀" * 200)
    token = ids.encode_id("é" * 100)
    assert ids.decode_id(token) == "é" * 100


def test_message_ids_are_unique_and_differ_after_fork() -> None:
    import os

    ids_here = {envelope.new_message_id() for _ in range(10_000)}
    assert len(ids_here) == 10_000
    assert all(len(i) == 22 and set(i) <= KV_KEY_CHARS for i in list(ids_here)[:100])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one id and leave at once
        os.write(w, envelope.new_message_id().encode())
        os._exit(0)
    os.close(w)
    child_id = os.read(r, 64).decode()
    os.waitpid(pid, 0)
    assert child_id not in ids_here and child_id[:12] != envelope.new_message_id()[:12]


def _reference_header_block(raw: bytes) -> dict[str, str] | None:
    """parse_header_block as it read every name before names were cached (its rules)."""
    if not raw.startswith(b"NATS/1.0"):
        return {envelope.MALFORMED: "the header block does not start with NATS/1.0"}
    text = raw[len(b"NATS/1.0") :].decode("utf-8", "replace")
    first, _, rest = text.partition("\r\n")
    out: dict[str, str] = {}
    if first:
        if first[0] != " ":
            return {envelope.MALFORMED: "the header block's first line is not NATS/1.0"}
        code, _, description = first.strip().partition(" ")
        if len(code) == 3 and code.isascii() and code.isdigit():
            out["Status"] = code
            if description.strip():
                out["Description"] = description.strip()
    for line in rest.split("\r\n"):
        name, sep, value = line.partition(":")
        name = name.strip()
        if sep and name and name.isascii() and " " not in name and "\t" not in name:
            out[name] = value.strip()
    return out or None


_header_text = st.text(alphabet=st.sampled_from(list("Na-Ac:tion \t\r\né1")), max_size=12)


@given(st.lists(st.tuples(_header_text, _header_text), max_size=6), st.sampled_from(["", " 503", " 100 Idle"]))
def test_header_blocks_read_as_before_names_were_cached(lines: list[tuple[str, str]], status: str) -> None:
    raw = ("NATS/1.0" + status + "\r\n" + "".join(f"{k}:{v}\r\n" for k, v in lines) + "\r\n").encode()
    assert envelope.parse_header_block(raw) == _reference_header_block(raw)
    assert envelope.parse_header_block(raw) == _reference_header_block(raw)  # now from the cache


def test_header_name_and_action_caches_stay_bounded_and_exact() -> None:
    for i in range(envelope._MAX_NAMES + 50):  # past the bound: read every time, still right
        raw = f"NATS/1.0\r\nX-{i}: v\r\nbad name {i}: w\r\n\r\n".encode()
        assert envelope.parse_header_block(raw) == {f"X-{i}": "v"}
    assert len(envelope._NAMES) <= envelope._MAX_NAMES
    hdrs = {h.ACTION: "ok"}
    for i in range(envelope._MAX_ACTIONS + 50):
        hdrs[h.ACTION] = f"a{i}"
        assert envelope.parse_request(hdrs).action == f"a{i}"
        assert envelope.parse_request(hdrs).action == f"a{i}"
    assert len(envelope._ACTIONS) <= envelope._MAX_ACTIONS
    for bad in ("1a", "a b", "", "a" * 65, "é"):
        hdrs[h.ACTION] = bad
        with pytest.raises(na.ProtocolError):
            envelope.parse_request(hdrs)
