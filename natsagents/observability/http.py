"""A node's HTTP endpoints for orchestrators and scrapers: Prometheus ``/metrics``,
``/healthz`` (the process is alive and connected) and ``/readyz`` (it should get work:
joined, connected, not draining), the usual shapes for Kubernetes probes.

A small asyncio server, no framework: three GET routes and nothing else. Every request is
bounded (8 KiB of request head, 5 s to send it); anything else gets a plain status and the
connection is closed. It binds where it is told, 127.0.0.1 by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["Health", "HttpEndpoints"]

log = logging.getLogger("natsagents.observability")

_MAX_HEAD = 8 * 1024
_READ_TIMEOUT = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Health:
    """What ``/healthz`` and ``/readyz`` report.

    Attributes:
        live: the process works (its mesh is open and its NATS connection up).
        ready: it should be sent work.
        reasons: why not, when not (``["draining"]``, ``["disconnected from NATS"]`` …).
        details: anything else worth showing (node id, agents, partitions owned …).
    """

    live: bool
    ready: bool
    reasons: tuple[str, ...] = ()
    details: dict[str, object] = field(default_factory=dict)


class HttpEndpoints:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz``.

    Args:
        registry: the Prometheus registry to expose.
        health: returns the node's :class:`Health` now.
    """

    def __init__(self, registry: CollectorRegistry, health: Callable[[], Health]) -> None:
        self._registry = registry
        self._health = health
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port."""
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("HTTP endpoints on http://%s:%d (/metrics, /healthz, /readyz)", host, self.port)
        return self.port

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                await self._send(writer, 400, b"bad request\n")
                return
            if len(head) > _MAX_HEAD:
                await self._send(writer, 400, b"request head too large\n")
                return
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await self._send(writer, 400, b"bad request\n")
                return
            method, target = parts[0], parts[1].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._send(writer, 405, b"only GET\n")
                return
            status, body, content_type = self._route(target)
            await self._send(writer, status, b"" if method == "HEAD" else body, content_type, length=len(body))
        except Exception:  # one bad connection never ends the server
            log.debug("HTTP endpoint request failed", exc_info=True)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _route(self, target: str) -> tuple[int, bytes, str]:
        if target == "/metrics":
            return 200, generate_latest(self._registry), CONTENT_TYPE_LATEST
        if target in ("/healthz", "/livez", "/readyz"):
            health = self._health()
            ok = health.ready if target == "/readyz" else health.live
            body = {"status": "ok" if ok else "unavailable", "reasons": list(health.reasons), **health.details}
            return (200 if ok else 503), (json.dumps(body) + "\n").encode(), "application/json"
        return 404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8"

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        *,
        length: int | None = None,
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        writer.write(head + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
