"""A call the NATS server refuses to carry ends at once with ``Unauthorized``.

Before: the server's permissions violation went to nats-py's error callback only, and the
call waited its whole timeout (``CallTimeout`` after 5 s)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from natsagents import Auth, Mesh, Unauthorized
from natsagents.server import NatsServer
from tests.agents import Counter

PREFIX = "perm"
USERS = f"""
authorization {{
  users = [
    {{user: host, password: host-pw}}
    {{user: caller, password: caller-pw, permissions: {{
      publish: {{allow: ["{PREFIX}.agent.Counter.>", "{PREFIX}.activate.Counter", "{PREFIX}.agent.Quiet.>"]}}
      subscribe: {{allow: ["_INBOX.caller.>"]}}
    }}}}
  ]
}}
"""


class Quiet(Counter):
    """A kind the caller may message but not activate."""


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    with NatsServer(config_extra=USERS) as srv:
        yield srv


async def test_a_refused_publish_ends_the_call_at_once(server: NatsServer) -> None:
    async with (
        await Mesh.connect(server.url, prefix=PREFIX, auth=Auth(user="host", password="host-pw")) as host,
        await Mesh.connect(
            server.url, prefix=PREFIX, auth=Auth(user="caller", password="caller-pw"), inbox_prefix="_INBOX.caller"
        ) as caller,
    ):
        await host.host(Counter, Quiet)
        assert await caller.ref("Counter/a").call("add", timeout=5) == 1  # allowed
        started = time.monotonic()
        with pytest.raises(Unauthorized, match=f"(?i){PREFIX}.agent.Ledger.x"):
            await caller.ref("Ledger/x").call("add", timeout=5)  # a kind it may not reach
        with pytest.raises(Unauthorized) as err:
            await caller.ref("Ledger/y").call("add", timeout=5)
        assert (err.value.agent, err.value.action) == ("Ledger/y", "add")
        with pytest.raises(Unauthorized, match=f"(?i){PREFIX}.activate.Quiet"):
            await caller.ref("Quiet/q").call("add", timeout=5)  # inactive; may not activate it
        assert time.monotonic() - started < 2.0
        await host.spawn(Quiet, "q")
        assert await caller.ref("Quiet/q").call("add", timeout=5) == 1  # active: reachable
        assert await caller.ref("Counter/a").call("add", timeout=5) == 2  # the connection is fine
