from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from natsagents.transport import ConnectSettings, Transport

pytest_plugins = ["natsagents.testing.plugin"]

Connect = Callable[..., Awaitable[Transport]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Opens bare transports (no mesh) to the given servers; closes them all."""
    opened: list[Transport] = []

    async def factory(*urls: str) -> Transport:
        transport = await Transport.connect(ConnectSettings(servers=urls, reconnect_wait=0.1))
        opened.append(transport)
        return transport

    try:
        yield factory
    finally:
        for transport in opened:
            await transport.close()
