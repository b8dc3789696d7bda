"""``Dashboard``: the web dashboard over an open mesh (catalog, sampler, API, server)."""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from .api import Api
from .catalog import AgentCatalog
from .series import Sampler
from .server import DashboardServer

if TYPE_CHECKING:
    from ..mesh import Mesh

__all__ = ["Dashboard"]


class Dashboard:
    """A live web page of a mesh's cluster: nodes, agents, plots, dead letters, actions.

    Use ``async with Dashboard(mesh, port=0) as d: print(d.url)``, or :meth:`start` and
    :meth:`aclose`. The mesh stays the caller's (open it before, close it after). The
    dashboard has no authentication of its own: keep it on loopback (the default) or put
    it behind an authenticating proxy (docs/security.md).

    Args:
        mesh: an open mesh (a plain client; a cluster node works too).
        host: address to listen on (default ``127.0.0.1``).
        port: port to listen on (0: a free one).
        interval: seconds between samples of members and request figures.
        history: seconds of plot points kept.
        action_timeout: seconds a migration or a dead-letter operation may take.
        drain_timeout: seconds a drain may take.

    Raises:
        ConfigurationError: an interval or history that is not a positive number, a bad port.
    """

    def __init__(
        self,
        mesh: Mesh,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        interval: float = 2.0,
        history: float = 600.0,
        action_timeout: float = 30.0,
        drain_timeout: float = 300.0,
    ) -> None:
        for name, value in (("interval", interval), ("history", history)):
            if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")
        if not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be within 0..65535, not {port}")
        self.mesh = mesh
        self.host = host
        self.port = port
        self.catalog = AgentCatalog(mesh.transport, mesh.prefix)
        self.sampler = Sampler(mesh, interval=interval, history=history)
        self.api = Api(mesh, self.catalog, self.sampler, action_timeout=action_timeout, drain_timeout=drain_timeout)
        self._server = DashboardServer(self.api)
        self._started = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> int:
        """Start watching and sampling, then listen; returns the port."""
        if self._started:
            raise RuntimeError("the dashboard is already started")
        self._started = True
        self.catalog.start()
        self.sampler.start()
        try:
            self.port = await self._server.start(self.host, self.port)
        except BaseException:
            await self.aclose()
            raise
        return self.port

    async def aclose(self) -> None:
        """Stop listening, sampling and watching. Idempotent."""
        with contextlib.suppress(Exception):
            await self._server.aclose()
        await self.api.aclose()
        await self.sampler.aclose()
        await self.catalog.aclose()

    async def __aenter__(self) -> Dashboard:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
