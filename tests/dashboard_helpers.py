"""Shared by the dashboard tests: a raw HTTP client (it can send what a browser never
would), a durable agent kind that dead-letters on demand, and a small cluster."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from natsagents import Agent, ClusterSettings, DeliverySettings, Mesh, action
from natsagents.testing import wait_for
from natsagents.testing.plugin import MeshFactory
from tests.agents import Counter

FAST = DeliverySettings(partitions=2, max_deliver=2, backoff=(0.02,), ack_wait=5.0, attempt_timeout=5.0)


class Ledger(Agent):
    """Keeps entries; ``poison`` fails while ``Ledger.broken`` is true (dead letters)."""

    broken = True

    def initial_state(self) -> dict[str, Any]:
        return {"entries": []}

    @action
    async def add(self, entry: str) -> int:
        self.state["entries"].append(entry)
        return len(self.state["entries"])

    @action
    async def poison(self, note: str = "") -> str:
        if Ledger.broken:
            raise ValueError("cannot digest this")
        self.state["entries"].append(f"digested {note}")
        return "digested"


class Presence(Agent):
    """Who is online: ``consistency = "eventual"`` (the dashboard's kinds table shows it)."""

    consistency = "eventual"

    def initial_state(self) -> dict[str, Any]:
        return {"online": []}

    @action
    async def join(self, who: str) -> int:
        self.state["online"].append(who)
        return len(self.state["online"])

    @action(read_only=True)
    async def who(self) -> list[str]:
        return list(self.state["online"])


async def cluster(mesh_factory: MeshFactory, *names: str, durable: bool = False) -> list[Mesh]:
    """Cluster nodes hosting ``Counter``, ``Ledger`` and ``Presence`` that see each other."""
    meshes = []
    for name in names:
        settings = ClusterSettings(node_id=name, lease=1.5, rebalance=False, delivery=FAST if durable else None)
        m = await mesh_factory(name=name, cluster=settings)
        await m.host(Counter, Ledger, Presence)
        meshes.append(m)

    def seen() -> bool:
        for m in meshes:
            assert m.cluster_node is not None
            members = m.cluster_node.membership.members()
            if not set(names) <= set(members):
                return False
        return True

    await wait_for(seen, timeout=10, what="nodes see each other")
    return meshes


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


async def http(
    port: int,
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Response:
    """One request on a fresh connection (the server closes after each answer).
    ``raw``: bytes sent as they are, instead of a request built from the arguments."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if raw is None:
            data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
            hdrs = {"Host": f"127.0.0.1:{port}"}
            if method == "POST":
                hdrs["Content-Type"] = "application/json"
                hdrs["Content-Length"] = str(len(data))
            hdrs.update(headers or {})
            head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
            raw = head.encode() + data
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
        await writer.wait_closed()
    head_bytes, _, payload = answer.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    parsed = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        parsed[k.strip().lower()] = v.strip()
    return Response(status, parsed, payload)


async def get_json(port: int, path: str) -> Any:
    response = await http(port, "GET", path)
    assert response.status == 200, response
    return response.json()
