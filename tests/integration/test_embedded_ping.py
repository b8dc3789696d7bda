"""The server ``Mesh.embedded()`` starts bounds how long it keeps a frozen or cut-off
client's subscriptions (ping every 2 s, dropped after 3 unanswered)."""

from __future__ import annotations

from natsagents import Mesh
from natsagents.server.process import _get_json


async def test_the_embedded_server_pings_its_clients_every_2_s() -> None:
    async with Mesh.embedded() as mesh:
        server = mesh._server
        assert server is not None
        config = server.config_path.read_text()
        assert 'ping_interval: "2s"' in config and "ping_max: 3" in config
        varz = _get_json(f"{server.monitor_url}/varz", 5.0)
        assert varz is not None and varz["ping_interval"] == 2_000_000_000 and varz["ping_max"] == 3
