"""``natsagents dashboard``: serve the web dashboard of a mesh until SIGINT or SIGTERM.

It connects like every command (``--servers``, ``--context``, credentials, TLS:
:mod:`.connect`), listens on ``--http HOST:PORT`` (default ``127.0.0.1:8470``; port 0
picks a free one) and prints ``dashboard on http://HOST:PORT/`` once serving. The page
has no authentication of its own: keep it on loopback or behind an authenticating proxy
(docs/security.md). Unlike one-shot commands it reconnects to NATS for as long as it runs.
``--identity SEED_FILE`` signs what it sends, for nodes that obey only trusted operators.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from ..wire.identity import Identity
from ..wire.subjects import validate_prefix
from .main import Exit, _positive_float, add_connection_options, command, open_mesh

__all__ = ["DEFAULT_HTTP", "parse_http"]

#: Where the dashboard listens by default.
DEFAULT_HTTP = ("127.0.0.1", 8470)


def parse_http(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; an empty host is 127.0.0.1)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. 127.0.0.1:8470, not {value!r}")
    host = host.removeprefix("[").removesuffix("]")
    return host or "127.0.0.1", int(port)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        type=parse_http,
        default=DEFAULT_HTTP,
        help="where to serve the page (default: 127.0.0.1:8470; port 0 picks a free one). It has no "
        "authentication: bind another address only behind an authenticating proxy",
    )
    parser.add_argument(
        "--interval",
        metavar="SECONDS",
        type=_positive_float,
        default=2.0,
        help="seconds between samples of the members and the request figures (default: 2)",
    )
    parser.add_argument(
        "--identity",
        metavar="SEED_FILE",
        default=None,
        help="sign what the dashboard sends with this user nkey seed (a .nk file of 'natsagents auth', or a "
        ".creds file): nodes started with trusted operators obey only signed control requests",
    )
    add_connection_options(parser)


@command(
    "dashboard",
    help="serve a live web dashboard of the cluster (nodes, agents, plots, dead letters, actions)",
    configure=_options,
    description="Serve the web dashboard on --http until SIGINT or SIGTERM: nodes and their load, agents "
    "(search, state), requests per second and latency per kind, dead letters (replay, delete), and actions "
    "(migrate, drain). Prints 'dashboard on URL' once serving. It has no authentication of its own. "
    "Exit codes: 0 stopped by a signal, 2 bad usage or the address is taken, 3 NATS unreachable.",
)
def _dashboard(args: argparse.Namespace) -> int:
    validate_prefix(args.prefix)
    identity = Identity.from_seed(args.identity) if args.identity is not None else None
    return asyncio.run(_serve(args, identity))


async def _serve(args: argparse.Namespace, identity: Identity | None) -> int:
    from ..dashboard import Dashboard

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        # As a node: wait up to --connect-timeout for a server, then reconnect as long as it runs.
        async with open_mesh(args, fail_fast=False, identity=identity) as mesh:
            host, port = args.http
            dashboard = Dashboard(mesh, host=host, port=port, interval=args.interval)
            try:
                await dashboard.start()
            except OSError as exc:
                print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr, flush=True)
                return Exit.USAGE
            try:
                print(f"dashboard on {dashboard.url}", flush=True)
                await stop.wait()
            finally:
                await dashboard.aclose()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return Exit.OK
