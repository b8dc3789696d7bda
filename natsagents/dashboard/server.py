"""The dashboard's HTTP server: static assets shipped in the package and the JSON API.

A small asyncio HTTP/1.1 server in the manner of ``observability/http.py`` (no framework,
one request per connection), hardened for a page that can change the cluster:

- bounded requests: 16 KiB of head, :data:`MAX_BODY` of body (``Content-Length`` only, no
  chunked bodies), 10 s to send them, at most :data:`MAX_CONNECTIONS` at once;
- ``GET``/``HEAD`` read, ``POST`` acts; a ``POST`` must say ``Content-Type:
  application/json`` (a cross-site form cannot, and no CORS header ever allows a script
  of another origin to), its ``Origin``, when sent, must be this server's own, and a
  ``Sec-Fetch-Site`` other than ``same-origin``/``none`` is refused;
- served on a loopback address, the ``Host`` header must name a loopback host, so a page
  of another site cannot reach the dashboard through DNS rebinding;
- every response carries a strict Content-Security-Policy (scripts and styles only from
  this server, no inline code, no framing), ``nosniff`` and ``no-store``.

The dashboard has no authentication of its own (docs/security.md): keep it on loopback or
put it behind the operator's authenticating proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .api import Api, Reply

__all__ = ["MAX_BODY", "MAX_CONNECTIONS", "DashboardServer"]

log = logging.getLogger("natsagents.dashboard")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 64
MAX_QUERY_FIELDS = 16
READ_TIMEOUT = 10.0
_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


def load_assets() -> dict[str, tuple[bytes, str]]:
    """The static files shipped in ``natsagents/dashboard/static``: URL path → (bytes, type)."""
    out: dict[str, tuple[bytes, str]] = {}
    folder = resources.files(__package__).joinpath("static")
    for item in folder.iterdir():
        name = item.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if item.is_file() and suffix in _TYPES:
            out[f"/static/{name}"] = (item.read_bytes(), _TYPES[suffix])
    if "/static/index.html" in out:
        out["/"] = out["/static/index.html"]
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8080`` → ``::1``)."""
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else ""  # malformed: no host
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class DashboardServer:
    """Serves the page and the API on one address.

    Args:
        api: the JSON API.
        assets: static files (default: those shipped in the package).
    """

    def __init__(self, api: Api, assets: Mapping[str, tuple[bytes, str]] | None = None) -> None:
        self._api = api
        self._assets = dict(assets) if assets is not None else load_assets()
        self._server: asyncio.Server | None = None
        self._connections = 0
        self._loopback_only = True
        self.host = "127.0.0.1"
        self.port: int | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD + 1024)
        self.host = host
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._loopback_only = _is_loopback(host)
        return self.port

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    # -- one connection --------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        try:
            if self._connections > MAX_CONNECTIONS:
                await self._send(writer, 503, _error_body("busy", "too many connections"), "application/json")
                await _discard(reader, writer)
                return
            try:
                request = await asyncio.wait_for(self._read(reader), READ_TIMEOUT)
            except _Refused as exc:
                await self._send(writer, exc.status, _error_body("bad_request", exc.message), "application/json")
                await _discard(reader, writer)
                return
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            status, body, content_type = await self._answer(request)
            await self._send(writer, status, b"" if request.method == "HEAD" else body, content_type, len(body))
        except Exception:  # one bad connection never ends the server
            log.debug("dashboard request failed", exc_info=True)
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader) -> _Request:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _Refused(431, "request head too large") from None
        if len(head) > MAX_HEAD:
            raise _Refused(431, "request head too large")
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            raise _Refused(400, "request head is not ASCII") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
            raise _Refused(400, "malformed request line")
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            raw_name, sep, value = line.partition(":")
            name = raw_name.lower()
            if not sep or not name or name != name.strip() or " " in name or "\t" in name:
                raise _Refused(400, "malformed header")  # no folding, no space before the colon
            if name in headers and name in ("host", "content-length", "content-type", "origin"):
                raise _Refused(400, f"header {name} given twice")
            headers[name] = value.strip()
        if "transfer-encoding" in headers:
            raise _Refused(411, "chunked bodies are not accepted: send Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit() or len(length_text) > 9:
            raise _Refused(400, "invalid Content-Length")
        length = int(length_text)
        if length > MAX_BODY:
            raise _Refused(413, f"request body over {MAX_BODY} bytes")
        body = await reader.readexactly(length) if length else b""
        if not target.startswith("/"):
            raise _Refused(400, "request target must be a path")
        split = urlsplit(target)
        try:
            pairs = parse_qsl(
                split.query, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_QUERY_FIELDS
            )
        except ValueError:
            raise _Refused(400, f"more than {MAX_QUERY_FIELDS} query parameters") from None
        query: dict[str, str] = {}
        for key, value in pairs:
            if key in query:
                raise _Refused(400, f"query parameter {key!r} given twice")
            query[key] = value
        return _Request(method, unquote(split.path), query, headers, body)

    # -- routing ---------------------------------------------------------------------

    def _refusal(self, request: _Request) -> tuple[int, str] | None:
        """Why a request is refused before routing (``None``: it is not)."""
        host = request.headers.get("host")
        if host is None:
            return 400, "missing Host header"
        if self._loopback_only and not _is_loopback(_host_name(host)):
            return 403, "this dashboard answers only to a loopback host name (see docs/security.md)"
        if request.method not in ("GET", "HEAD", "POST"):
            return 405, "only GET, HEAD and POST"
        if request.method == "POST":
            site = request.headers.get("sec-fetch-site")
            if site is not None and site not in ("same-origin", "none"):
                return 403, "cross-site requests may not act"
            origin = request.headers.get("origin")
            if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
                return 403, "cross-origin requests may not act"
            content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if content_type != "application/json":
                return 415, "actions take Content-Type: application/json"
        return None

    async def _answer(self, request: _Request) -> tuple[int, bytes, str]:
        refused = self._refusal(request)
        if refused is not None:
            status, message = refused
            code = {403: "forbidden", 405: "method_not_allowed", 415: "unsupported_media_type"}.get(
                status, "bad_request"
            )
            return status, _error_body(code, message), "application/json"
        if request.path.startswith("/api/"):
            reply = await self._api.handle(request.method, request.path, request.query, request.body)
            try:
                return reply.status, _json(reply), "application/json"
            except ValueError:  # a value JSON cannot carry (NaN): a bug here, not the client's
                log.exception("dashboard: cannot encode the answer to %s", request.path)
                return 500, _error_body("internal", "the answer could not be encoded"), "application/json"
        if request.method == "POST":
            return 405, _error_body("method_not_allowed", "pages take GET"), "application/json"
        asset = self._assets.get(request.path)
        if asset is None:
            return 404, b"not found\n", "text/plain; charset=utf-8"
        return 200, asset[0], asset[1]

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str, length: int | None = None
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body) if length is None else length}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in _SECURITY_HEADERS),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()


async def _discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After refusing a request whose bytes were not all read: end our side and drop what
    the client still sends (bounded), so that closing does not reset the connection
    before the client has read the refusal."""
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
        left = MAX_BODY
        async with asyncio.timeout(1.0):
            while left > 0 and (chunk := await reader.read(min(left, 16384))):
                left -= len(chunk)


def _json(reply: Reply) -> bytes:
    return json.dumps(
        reply.body, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_fallback
    ).encode()


def _fallback(value: Any) -> Any:
    return str(value)


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode()
