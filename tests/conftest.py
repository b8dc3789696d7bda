from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats.aio.client
import pytest

from natsagents.transport import ConnectSettings, Transport

pytest_plugins = ["natsagents.testing.plugin"]

_plain_flush = nats.aio.client.Client.flush


async def _ordered_flush(self: nats.aio.client.Client, *args: Any, **kwargs: Any) -> None:
    """nats-py's ``Client.flush`` writes its PING straight to the socket, ahead of commands
    still in its pending buffer: after ``subscribe`` then ``flush``, the server had not seen
    the SUB yet for 68 of 500 subscriptions (a raw spy then missed the first message it was
    there to see: a CI failure of test_kv_leader_reads.py). The tests' raw peers (sniffers,
    spies, hostile clients written with nats-py) flush the buffer first, as
    ``Transport.flush`` does (tests/integration/test_flush.py)."""
    if self.is_connected:
        await self._flush_pending(force_flush=True)
    await _plain_flush(self, *args, **kwargs)


nats.aio.client.Client.flush = _ordered_flush  # type: ignore[method-assign]

#: The folders under tests/ and their markers (pyproject.toml declares them).
_FOLDERS = ("unit", "integration", "cluster", "chaos", "cli")
#: Seconds a chaos test may take (the default per test is pyproject's ``timeout``).
CHAOS_TIMEOUT = 600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its folder (``pytest -m unit`` …); chaos tests get a longer timeout."""
    for item in items:
        parts = item.path.parts
        folder = next((p for p in _FOLDERS if p in parts[-3:-1]), None)
        if folder is None:
            continue
        item.add_marker(getattr(pytest.mark, folder))
        if folder == "chaos" and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(CHAOS_TIMEOUT))


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
