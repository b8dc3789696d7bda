"""A bug inside the host (not in a handler: ``dispatch`` catches those) must cost one
message an ``unavailable`` answer, not its reply.

Before, an exception raised by the host's own dispatch code (as ``wire.batch.batch_reply``
did for a session kind's batch: ``KeyError`` on its ``Na-State-Version`` block) left the
worker's task with an exception nobody retrieved: the message was never answered (its
caller waited out its timeout; a durable one was retried until dead-lettered for want of an
answer) and its id stayed "in progress", so a copy of it got no answer either."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import nats
import pytest

from natsagents import Mesh
from natsagents.wire import envelope
from natsagents.wire.subjects import agent_subject
from tests.agents import Counter


async def test_a_host_bug_answers_unavailable_and_the_agent_goes_on(
    mesh: Mesh, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await mesh.host(Counter)
    assert await mesh.ref("Counter/b").call("add", by=2) == 2
    dispatcher: Any = mesh._host._dispatcher
    run = dispatcher.run

    def buggy(act: Any, hdrs: Any, data: bytes, *args: Any) -> Any:
        if hdrs is not None and hdrs.get("Na-Action") == "get":
            raise KeyError("a bug in the host")
        return run(act, hdrs, data, *args)

    monkeypatch.setattr(dispatcher, "run", buggy)
    raw = await nats.connect(nats_url)
    try:
        subject = agent_subject(mesh.prefix, "Counter", "b")
        headers = {"Na-Proto": "1", "Na-Action": "get", "Na-Msg-Id": envelope.new_message_id()}
        began = time.monotonic()
        reply = await raw.request(subject, b"", headers=headers, timeout=5)
        took = time.monotonic() - began
        assert (reply.headers or {}).get("Na-Status") == "unavailable", reply.headers
        error = msgpack.unpackb(reply.data)
        assert "KeyError" in error["message"] and error["details"]["retry"] is True
        assert took < 2.0
        # The same message again (same id): the id was forgotten, so it is tried again
        # and answered, not held as a copy of one in progress.
        again = await raw.request(subject, b"", headers=headers, timeout=5)
        assert (again.headers or {}).get("Na-Status") == "unavailable"
    finally:
        await raw.close()
    # The worker went on: other actions run, and "get" runs once the bug is gone.
    assert await mesh.ref("Counter/b").call("add", by=1) == 3
    monkeypatch.setattr(dispatcher, "run", run)
    assert await asyncio.wait_for(mesh.ref("Counter/b").call("get"), 5) == 3
