"""Parsing a ``$JS.API.STREAM.MSG.GET`` reply (a leader read): hostile replies are typed errors."""

from __future__ import annotations

import base64

import pytest

from natsagents.errors import JetStreamError
from natsagents.transport.kv.bucket import _message_of, _stored


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_stored_message_reads_like_a_direct_get() -> None:
    hdrs = b"NATS/1.0\r\nNats-Msg-Id: abc\r\nKV-Operation: DEL\r\n\r\n"
    data, headers = _message_of(
        "get", {"message": {"seq": 7, "data": _b64(b"v"), "hdrs": _b64(hdrs), "time": "2026-12-02T10:00:00.5Z"}}
    )
    assert data == b"v"
    assert headers["Nats-Sequence"] == "7" and headers["Nats-Msg-Id"] == "abc"
    last = _stored("k", data, headers)
    assert (last.revision, last.entry, last.msg_id) == (7, None, "abc")  # a tombstone reads as absent
    data, headers = _message_of("get", {"message": {"seq": 3, "data": _b64(b"x")}})
    last = _stored("k", data, headers)
    assert last.entry is not None and (last.entry.value, last.entry.revision) == (b"x", 3)


@pytest.mark.parametrize(
    "reply",
    [
        {},
        {"message": None},
        {"message": {"seq": "7"}},
        {"message": {"seq": 0}},
        {"message": {"seq": True}},
        {"message": {"seq": 1, "data": "not base64!"}},
        {"message": {"seq": 1, "data": 5}},
        {"message": {"seq": 1, "hdrs": _b64(b"HTTP/1.1 200\r\n\r\n")}},
        {"message": {"seq": 1, "hdrs": _b64(b"NATS/1.0\r\nno colon here\r\n\r\n")}},
        {"message": {"seq": 1, "hdrs": _b64(b"NATS/1.0\r\n\xff\xfe: x\r\n\r\n")}},
    ],
)
def test_a_malformed_reply_is_a_jetstream_error(reply: dict[str, object]) -> None:
    with pytest.raises(JetStreamError):
        _message_of("get", reply)
