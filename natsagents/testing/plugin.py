"""pytest fixtures backed by real nats-server processes.

Enable with ``pytest_plugins = ["natsagents.testing.plugin"]`` in a ``conftest.py``.

Fixtures:
    nats_server   one JetStream server for the whole session
    nats_url      its URL
    nats_cluster  a 3-node JetStream cluster on loopback (per module; chaos tests may
                  kill and restart its nodes)
    mesh_prefix   a subject prefix unique to the test, so tests sharing a server never
                  see each other's agents
    mesh          a Mesh connected to ``nats_server`` with ``mesh_prefix``
    mesh_factory  opens more meshes (same server and prefix by default); all closed at
                  the end of the test
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from ..mesh import Mesh
from ..server import NatsCluster, NatsServer

MeshFactory = Callable[..., Awaitable[Mesh]]


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture(scope="module")
def nats_cluster() -> Iterator[NatsCluster]:
    cluster = NatsCluster(3).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def mesh_prefix() -> str:
    return "t" + secrets.token_hex(4)


@pytest.fixture
async def mesh_factory(nats_url: str, mesh_prefix: str) -> AsyncIterator[MeshFactory]:
    opened: list[Mesh] = []

    async def factory(servers: Any = None, **options: Any) -> Mesh:
        options.setdefault("prefix", mesh_prefix)
        options.setdefault("name", f"mesh-{len(opened)}")
        m = await Mesh.connect(servers or nats_url, **options)
        opened.append(m)
        return m

    try:
        yield factory
    finally:
        for m in reversed(opened):
            await m.aclose()


@pytest.fixture
async def mesh(mesh_factory: MeshFactory) -> Mesh:
    return await mesh_factory()
