"""continue_degraded on the wire: the codes and the caller's option, and what a queued
write keeps of its request's headers (protocol §20)."""

from __future__ import annotations

from typing import Any

import pytest

from natsagents import ConfigurationError, DegradedReply, WriteQueued
from natsagents.agent.ref import AgentRef, CallOptions
from natsagents.cluster.degraded import replay_headers
from natsagents.errors import error_for_code
from natsagents.wire import headers as h


class _NoInvoker:
    async def invoke(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("not called")

    def spawn_task(self, coro: Any) -> Any:
        raise AssertionError("not called")


def test_the_codes_map_to_their_exceptions() -> None:
    queued = error_for_code("queued", "queued", details={"position": 2}, remote=True)
    assert isinstance(queued, WriteQueued) and queued.details["position"] == 2
    stale = DegradedReply("stale", value=7, agent="K/a")
    assert stale.code == "degraded" and stale.value == 7 and stale.agent == "K/a"


def test_allow_degraded_is_a_ref_option() -> None:
    ref = AgentRef("Kind", "a", _NoInvoker())
    assert CallOptions().allow_degraded is True
    strict = ref.with_options(allow_degraded=False)
    assert strict._options is not None and strict._options.allow_degraded is False
    kept = strict.with_options(priority="high")  # other options keep it
    assert kept._options is not None and kept._options.allow_degraded is False
    with pytest.raises(ConfigurationError, match="allow_degraded"):
        ref.with_options(allow_degraded="no")  # type: ignore[arg-type]


def test_a_queued_write_keeps_its_identity_and_drops_what_only_its_wait_or_owners_set() -> None:
    request = {
        h.PROTO: "1",
        h.ACTION: "add",
        h.MESSAGE_ID: "m-1",
        h.CALLER: "web",
        h.CORRELATION_ID: "c-1",
        h.DEADLINE: "1700000000000",
        h.REPLY_MODE: "result",
        h.PRIORITY: "high",
        h.STREAM_SEQ: "9",
        h.OWNER_MAC: "forged",
        h.ACCEPT_ENCODING: "deflate",
        h.ENCODING: "deflate",
        "Nats-Msg-Id": "forged",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    out = replay_headers(request, "m-1", h.DELIVERY_EXACTLY_ONCE)
    assert out == {
        h.PROTO: "1",
        h.ACTION: "add",
        h.MESSAGE_ID: "m-1",
        h.CALLER: "web",
        h.CORRELATION_ID: "c-1",
        h.ENCODING: "deflate",  # the body is stored as it came
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        h.DELIVERY: h.DELIVERY_EXACTLY_ONCE,
    }
