"""``Transport.flush`` orders after everything written before it.

nats-py's ``Client.flush`` writes its PING straight to the socket while earlier commands
(a SUB, a PUB) still wait in the client's pending buffer for its flusher task: the PONG
can come back before the server has seen the SUB. ``Mesh.spawn`` and ``Mesh.host`` promise
that once they return, a caller on another connection finds the agent (or the host);
without the fix about 1 spawn in 20 was answered "no responders" by the server
(tests/integration/test_bad_input.py failed so under load).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors

from natsagents.transport import ConnectSettings, Inbound, Transport


async def _misses(subscribe: Callable[[str], Awaitable[object]], raw: Any, prefix: str, rounds: int = 300) -> int:
    """Of ``rounds`` subjects, how many had no responder right after ``subscribe(subject)``
    (which subscribes and flushes) returned: ``raw`` requests each at once."""
    misses = 0
    for i in range(rounds):
        subject = f"{prefix}.{secrets.token_hex(4)}.{i}"
        await subscribe(subject)
        try:
            await raw.request(subject, b"", timeout=0.001)
        except nats.errors.NoRespondersError:
            misses += 1
        except nats.errors.TimeoutError:
            pass  # interest existed: the expected outcome (the request is never answered)
    return misses


async def test_a_subscription_is_on_the_server_once_flush_returns(nats_url: str) -> None:
    t = await Transport.connect(ConnectSettings(servers=(nats_url,), name="flush-test"))
    raw = await nats.connect(nats_url)
    try:

        def echo(msg: Inbound) -> None:
            pass  # a responder's presence is what counts

        async def subscribe(subject: str) -> None:
            await t.subscribe(subject, echo)
            await t.flush()

        misses = await _misses(subscribe, raw, "flush")
        assert misses == 0, f"{misses} of 300 subscriptions were not on the server when flush() returned"
    finally:
        await raw.close()
        await t.close()


async def test_the_tests_raw_nats_py_peers_flush_in_order(nats_url: str) -> None:
    """tests/conftest.py makes a raw nats-py client's ``flush`` write its pending buffer
    first. Without it, 68 of 500 subscriptions were not on the server when flush returned."""
    a = await nats.connect(nats_url)
    b = await nats.connect(nats_url)
    try:

        async def ignore(msg: object) -> None:
            pass

        async def subscribe(subject: str) -> None:
            await a.subscribe(subject, cb=ignore)
            await a.flush()

        misses = await _misses(subscribe, b, "rawflush")
        assert misses == 0, f"{misses} of 300 raw subscriptions were not on the server when flush() returned"
    finally:
        await a.close()
        await b.close()
