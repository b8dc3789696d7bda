"""Message options: mailbox priority, compression above a size threshold, batches of sends."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import msgpack
import nats
import pytest
from nats.aio.msg import Msg

from natsagents import Agent, BadRequest, ConfigurationError, Mesh, action
from natsagents.errors import ProtocolError
from natsagents.testing import wait_for
from natsagents.wire import envelope
from natsagents.wire.subjects import agent_subject


class Recorder(Agent):
    """Notes tags in the order it runs them; ``block`` holds the mailbox until opened."""

    async def on_start(self) -> None:
        self.gate = asyncio.Event()

    def initial_state(self) -> dict[str, Any]:
        return {"notes": []}

    @action
    async def block(self) -> None:
        self.blocked = True
        await self.gate.wait()

    @action
    async def note(self, tag: str) -> int:
        self.state["notes"].append(tag)
        return len(self.state["notes"])

    @action
    async def echo(self, text: str) -> str:
        return text

    @action
    async def blob(self, size: int) -> str:
        return "x" * size


async def test_high_priority_runs_first_and_low_last(mesh: Mesh) -> None:
    await mesh.host(Recorder)
    ref = mesh.ref("Recorder/r")
    blocked = ref.request("block")
    # Wait for "block" to run, not for the activation: its retry can trail the sends.
    await wait_for(lambda: getattr(mesh.local_agent("Recorder/r"), "blocked", False), timeout=5, what="blocking")
    for tag, priority in [("low1", "low"), ("n1", "normal"), ("high1", "high"), ("low2", "low"), ("n2", "normal")]:
        await ref.with_options(priority=priority).send("note", tag=tag)
    await ref.with_options(priority="high").send("note", tag="high2")
    agent = mesh.local_agent("Recorder/r")
    agent.gate.set()
    await blocked
    await wait_for(lambda: len(agent.state["notes"]) == 6, timeout=5, what="all noted")
    assert agent.state["notes"] == ["high1", "high2", "n1", "n2", "low1", "low2"]


async def test_bad_priority_values_are_refused(mesh: Mesh, nats_url: str, mesh_prefix: str) -> None:
    await mesh.host(Recorder)
    await mesh.spawn("Recorder/p")
    with pytest.raises(ConfigurationError):
        mesh.ref("Recorder/p").with_options(priority="urgent")
    nc = await nats.connect(nats_url)
    try:
        hdrs = {"Na-Action": "note", "Na-Priority": "urgent"}
        reply = await _request(nc, agent_subject(mesh_prefix, "Recorder", "p"), msgpack.packb({"tag": "x"}), hdrs)
        assert (reply.headers or {})["Na-Status"] == "bad_request"
    finally:
        await nc.close()
    assert mesh.local_agent("Recorder/p").state["notes"] == []


async def _request(nc: Any, subject: str, body: bytes, hdrs: dict[str, str]) -> Msg:
    for _ in range(50):
        try:
            reply: Msg = await nc.request(subject, body, timeout=5, headers=hdrs)
            return reply
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.02)  # the server's early no-responders (protocol §7.2)
    raise AssertionError("no responders")


async def test_large_bodies_travel_compressed_both_ways(mesh_factory: Any, nats_url: str, mesh_prefix: str) -> None:
    host = await mesh_factory(name="host", compress_above=1000)
    await host.host(Recorder)
    client = await mesh_factory(name="client", compress_above=1000)
    text = "all work and no play " * 5000  # 105 KB, compresses well
    nc = await nats.connect(nats_url)
    seen: list[Msg] = []

    async def sniff(msg: Msg) -> None:
        seen.append(msg)

    await host.spawn("Recorder/z")  # the sniffer below would otherwise be the only subscriber
    try:
        await nc.subscribe(agent_subject(mesh_prefix, "Recorder", "z"), cb=sniff)  # not in the queue group
        await nc.flush()
        # The server may not route to a subscription made a moment ago (protocol §7.2):
        # call until the sniffer has seen one request.
        for _ in range(50):
            assert await client.ref("Recorder/z").call("echo", text=text) == text
            if any(m.headers and m.headers.get("Na-Action") == "echo" for m in seen):
                break
        request = next(m for m in seen if m.headers and m.headers.get("Na-Action") == "echo")
        assert request.headers is not None and request.headers["Na-Encoding"] == "deflate"
        assert len(request.data) < len(text) // 10
        # A reply is compressed only for a caller that says it takes it.
        hdrs = {"Na-Action": "blob", "Na-Accept-Encoding": "deflate"}
        reply = await _request(nc, agent_subject(mesh_prefix, "Recorder", "z"), msgpack.packb({"size": 50_000}), hdrs)
        assert reply.headers is not None and reply.headers["Na-Encoding"] == "deflate"
        assert msgpack.unpackb(zlib.decompress(reply.data)) == "x" * 50_000
        plain = await _request(
            nc, agent_subject(mesh_prefix, "Recorder", "z"), msgpack.packb({"size": 50_000}), {"Na-Action": "blob"}
        )
        assert plain.headers is not None and "Na-Encoding" not in plain.headers
        # Bigger than the server's max_payload, but small once compressed.
        huge = "z" * (client.max_payload * 2)
        assert len(await client.ref("Recorder/z").call("echo", text=huge)) == len(huge)
        # A body that claims to be compressed and is not: bad_request.
        bad = {"Na-Action": "echo", "Na-Encoding": "deflate"}
        reply = await _request(nc, agent_subject(mesh_prefix, "Recorder", "z"), b"not zlib at all", bad)
        assert (reply.headers or {})["Na-Status"] == "bad_request"
        unknown = {"Na-Action": "echo", "Na-Encoding": "brotli"}
        reply = await _request(nc, agent_subject(mesh_prefix, "Recorder", "z"), msgpack.packb({"text": "a"}), unknown)
        assert (reply.headers or {})["Na-Status"] == "bad_request"
    finally:
        await nc.close()


def test_inflate_refuses_bombs_and_garbage() -> None:
    bomb = zlib.compress(b"\0" * 1_000_000)
    assert envelope.inflate(bomb, limit=2_000_000) == b"\0" * 1_000_000
    with pytest.raises(ProtocolError, match="expands beyond"):
        envelope.inflate(bomb, limit=1000)
    with pytest.raises(ProtocolError, match="not a valid"):
        envelope.inflate(b"garbage")
    with pytest.raises(ProtocolError):
        envelope.inflate(zlib.compress(b"abc" * 100)[:-4])  # truncated
    assert envelope.deflate(b"ab") is None  # not worth it


async def test_send_many_pipelines_and_keeps_each_agents_order(mesh: Mesh) -> None:
    await mesh.host(Recorder)
    messages = [(f"Recorder/m{i % 5}", "note", {"tag": str(i)}) for i in range(100)]
    assert await mesh.send_many(messages, in_flight=16) == [None] * 100
    for k in range(5):
        agent_state = (await mesh.ref(f"Recorder/m{k}").call("echo", text="sync"), None)
        assert agent_state[0] == "sync"
        await wait_for(lambda k=k: len(mesh.local_agent(f"Recorder/m{k}").state["notes"]) == 20, timeout=5)  # type: ignore[misc]
        assert mesh.local_agent(f"Recorder/m{k}").state["notes"] == [str(i) for i in range(k, 100, 5)]
    errors = await mesh.send_many([("Recorder/m0", "nope", {}), ("Recorder/m0", "note", {"tag": "ok"})])
    assert errors[1] is None and errors[0] is None  # an accepted send reports only acceptance
    results = await mesh.send_many([("Recorder/m0", "note", {"tag": 5})])
    assert isinstance(results[0], BadRequest) is False  # parameter checks run later, after acceptance
    with pytest.raises(ConfigurationError):
        await mesh.send_many([("Recorder/m0", "note")])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError):
        await mesh.send_many([("Recorder/m0", "note", {})], in_flight=0)
