"""The ``natsagents`` command: argument parsing, the command registry and the core commands.

Each subcommand is a :class:`Command` in a registry. A command module defines a runner
and registers it with :func:`command`; :data:`COMMAND_MODULES` lists the modules whose
import registers more commands, so adding ``node``, ``ls``, ``drain`` … means writing
one module and naming it there.

Exit codes (:class:`Exit`): 0 success, 1 the operation failed (an agent error reply, the
server failed), 2 bad usage (arguments, address, parameters, credentials files), 3 NATS
unreachable, the connection refused (credentials, TLS) or lost, 4 timed out (no reply in
time), 130 interrupted, 141 stdout closed early (``| head``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import enum
import importlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..agent.ref import DELIVERY_MODES
from ..errors import (
    AgentError,
    CallTimeout,
    ConfigurationError,
    ConnectError,
    ServerError,
    TransportError,
    Unauthorized,
)
from ..wire.ids import parse_address
from ..wire.subjects import DEFAULT_PREFIX, validate_prefix
from . import connect

if TYPE_CHECKING:
    from ..mesh import Mesh
    from ..server import NatsCluster, NatsServer

__all__ = [
    "COMMAND_MODULES",
    "Command",
    "Exit",
    "add_connection_options",
    "build_parser",
    "command",
    "connection",
    "main",
    "open_mesh",
    "parse_params",
    "print_json",
    "to_jsonable",
]


class Exit(enum.IntEnum):
    """Process exit codes."""

    OK = 0
    FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    TIMEOUT = 4
    INTERRUPTED = 130
    BROKEN_PIPE = 141  # 128 + SIGPIPE, as for a program the signal ended


Runner = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its name, one-line help, argument setup and runner.

    The runner gets the parsed arguments and returns an exit code. It may raise the
    library's errors; :func:`main` turns them into messages and exit codes.
    """

    name: str
    help: str
    configure: Configure
    run: Runner
    description: str | None = None


_COMMANDS: dict[str, Command] = {}

#: Modules whose import registers commands (this one registers server, call and send).
COMMAND_MODULES: tuple[str, ...] = (
    "natsagents.cli.demo",
    "natsagents.cli.dashboard",
    "natsagents.cli.cluster",
    "natsagents.cli.operate",
    "natsagents.cli.delivery",
    "natsagents.cli.auth",
    "natsagents.cli.top",
)


def command(
    name: str, *, help: str, configure: Configure, description: str | None = None
) -> Callable[[Runner], Runner]:
    """Register the decorated function as the runner of subcommand ``name``.

    Raises:
        ValueError: a command of that name is already registered.
    """

    def register(run: Runner) -> Runner:
        if name in _COMMANDS:
            raise ValueError(f"command {name!r} is registered twice")
        _COMMANDS[name] = Command(name, help, configure, run, description)
        return run

    return register


def _load_commands() -> dict[str, Command]:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    return _COMMANDS


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered command."""
    parser = argparse.ArgumentParser(
        prog="natsagents",
        description="natsagents: a service mesh for distributed agents over NATS.",
    )
    parser.add_argument("--version", action="version", version=f"natsagents {__version__}")
    verbose_help = "log to stderr (-v: info, -vv: debug)"
    parser.add_argument("-v", "--verbose", action="count", default=0, help=verbose_help)
    # Also accepted after the command; SUPPRESS keeps the global count when absent there.
    common = _CommandParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=verbose_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for cmd in sorted(_load_commands().values(), key=lambda c: c.name):
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help, parents=[common])
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


class _CommandParser(argparse.ArgumentParser):
    """The parser of a subcommand: an unknown option is reported with the subcommand's
    usage (argparse leaves it to the top-level parser, which shows its own)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``natsagents`` command line; returns the exit code."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (``natsagents ls --json | head -1``). Point stdout at
        # /dev/null so that the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return Exit.BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        if exc.code is None:
            return Exit.OK
        return exc.code if isinstance(exc.code, int) else Exit.USAGE
    _setup_logging(args.verbose)
    run: Runner | None = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return Exit.USAGE
    try:
        return run(args)
    except CallTimeout as exc:
        _error(f"{exc.code}: {exc.message}")
        if isinstance(getattr(args, "timeout", None), float):
            _error(f"--timeout (here {args.timeout:g} s) sets how long to wait", "hint")
        return Exit.TIMEOUT
    except AgentError as exc:
        _error(f"{exc.code}: {exc.message}")
        if isinstance(exc, Unauthorized) and "its inbox" in exc.message and hasattr(args, "inbox_prefix"):
            _error("--inbox-prefix _INBOX.USER: a user of 'natsagents auth' subscribes only to its own inbox", "hint")
        actions = exc.details.get("actions")
        if isinstance(actions, list):
            _error(f"{exc.agent or 'the agent'} has the actions: {', '.join(map(str, actions)) or '(none)'}", "hint")
        if exc.remote_traceback and hasattr(args, "traceback"):
            if args.traceback:
                print("remote traceback:\n" + exc.remote_traceback.rstrip(), file=sys.stderr)
            else:
                _error("--traceback prints the remote traceback", "hint")
        return Exit.FAILED
    except ConfigurationError as exc:
        _error(exc.message)
        return Exit.USAGE
    except ConnectError as exc:
        _error(exc.message)
        hint = _connect_hint(exc, getattr(args, "_servers_from", ""))
        if hint:
            _error(hint, "hint")
        return Exit.UNREACHABLE
    except TransportError as exc:
        _error(exc.message)
        return Exit.UNREACHABLE
    except ServerError as exc:
        _error(exc.message)
        return Exit.FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return Exit.INTERRUPTED


_HINTS = {
    "tls_untrusted": "--tls-ca FILE (or the context's ca) names the CA that signed the server's certificate",
    "tls_client_cert": "--tls-cert FILE --tls-key FILE give a client certificate signed by a CA the server trusts",
    "credentials": "check --creds, --nkey, --user/--password or --token (or the context's)",
}


def _connect_hint(exc: ConnectError, servers_from: str) -> str:
    if exc.reason == "refused" and servers_from in ("default", "natsagents server"):
        return "start a server with 'natsagents server', or give --servers, $NATS_URL or --context"
    return _HINTS.get(exc.reason, "")


def _error(message: str, label: str = "error") -> None:
    print(f"{label}: {message}", file=sys.stderr, flush=True)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncio").addFilter(_not_ssl_eof_noise)


def _not_ssl_eof_noise(record: logging.LogRecord) -> bool:
    """asyncio warns "returning true from eof_received() has no effect when using ssl" when
    a TLS connection ends: nats-py upgrades its plain stream to TLS, whose protocol asyncio
    then misjudges. Nothing is wrong; the warning would only alarm."""
    return not record.getMessage().startswith("returning true from eof_received()")


# -- shared helpers for commands ------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {text}")
    return value


def add_connection_options(parser: argparse.ArgumentParser, *, prefix: bool = True) -> None:
    """``--prefix`` and the connection options (servers, context, credentials, TLS, inbox
    prefix, ``--connect-timeout``: :mod:`natsagents.cli.connect`), for commands that connect."""
    if prefix:
        parser.add_argument(
            "--prefix", default=DEFAULT_PREFIX, help=f"subject prefix of the mesh (default: {DEFAULT_PREFIX})"
        )
    group = connect.add_options(parser)
    group.add_argument(
        "--connect-timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=5.0,
        help="seconds to reach a server before giving up (default: 5)",
    )


def connection(args: argparse.Namespace) -> connect.Connection:
    """The connection the options of :func:`add_connection_options` describe (files
    checked); remembered on ``args`` for the messages of :func:`main`.

    Raises:
        ConfigurationError: see :func:`natsagents.cli.connect.resolve`.
    """
    resolved = connect.resolve(args)
    args._servers_from = resolved.servers_from
    return resolved


def open_mesh(args: argparse.Namespace, **options: Any) -> AbstractAsyncContextManager[Mesh]:
    """``Mesh.connect`` with the connection options of :func:`add_connection_options`.

    Fails fast (``fail_fast=True``) unless ``options`` say otherwise: a command does not
    wait for a server that refuses connections, nor reconnect for long.
    """
    from ..mesh import Mesh

    options.setdefault("prefix", validate_prefix(getattr(args, "prefix", DEFAULT_PREFIX)))
    options.setdefault("name", f"natsagents-cli-{os.getpid()}-{secrets.token_hex(2)}")
    options.setdefault("fail_fast", True)
    return Mesh.connect(**connection(args).mesh_options(), **options)


def to_jsonable(value: Any, notes: set[str]) -> Any:
    """A decoded msgpack value as JSON data: bytes → base64, datetimes → ISO 8601 strings.

    What was converted is added to ``notes``.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        notes.add("bytes are shown as base64 strings")
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = to_jsonable(k, notes)
            if not isinstance(key, str):
                notes.add("non-string map keys are shown as JSON text")
                key = json.dumps(key)
            out[key] = to_jsonable(v, notes)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, notes) for v in value]
    notes.add(f"{type(value).__name__} values are shown as text")
    return str(value)


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout; conversion notes go to stderr."""
    notes: set[str] = set()
    text = json.dumps(to_jsonable(value, notes), indent=2, ensure_ascii=False)
    print(text, flush=True)
    for note in sorted(notes):
        print(f"note: {note}", file=sys.stderr)


# -- call / send ----------------------------------------------------------------------


def _message_options(parser: argparse.ArgumentParser, *, wait: bool = False) -> None:
    parser.add_argument("address", metavar="KIND/ID", help="the agent, e.g. Counter/c-1")
    parser.add_argument("action", metavar="ACTION", help="the action to run")
    parser.add_argument(
        "-p",
        "--param",
        dest="params",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a parameter; VALUE is parsed as JSON if it parses, else taken as a string (repeatable)",
    )
    parser.add_argument("--json", dest="json_params", metavar="OBJECT", help="parameters as a JSON object")
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=_positive_float, default=5.0, help="seconds to wait (default: 5)"
    )
    parser.add_argument(
        "--delivery",
        choices=DELIVERY_MODES,
        default="at_most_once",
        help="at_most_once: straight to the agent (default); at_least_once, exactly_once: through the durable "
        "inbox stream, run by a cluster node (failures are retried, then dead-lettered: see 'dlq')",
    )
    if wait:
        parser.add_argument("--wait", action="store_true", help="wait for the result and print it, as 'call' does")
    parser.add_argument("--traceback", action="store_true", help="print the remote traceback of a handler error")
    add_connection_options(parser)


def _send_options(parser: argparse.ArgumentParser) -> None:
    _message_options(parser, wait=True)


def parse_params(json_text: str | None, pairs: Sequence[str]) -> dict[str, Any]:
    """Merge ``--json`` and ``--param`` values into one parameter map.

    Raises:
        ConfigurationError: invalid JSON, not an object, a malformed pair or a key given twice.
    """
    params: dict[str, Any] = {}
    if json_text is not None:
        try:
            loaded = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigurationError(f"--json must be a JSON object, not {type(loaded).__name__}")
        params.update(loaded)
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigurationError(f"--param must look like KEY=VALUE, got {pair!r}")
        if key in params:
            raise ConfigurationError(f"parameter {key!r} is given twice")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _deliver(args: argparse.Namespace, *, accept_only: bool) -> int:
    # Check the usage before connecting, so that mistakes are reported at once.
    kind, agent_id = parse_address(args.address)
    params = parse_params(args.json_params, args.params)
    validate_prefix(args.prefix)
    return asyncio.run(_deliver_async(args, kind, agent_id, params, accept_only=accept_only))


async def _deliver_async(
    args: argparse.Namespace, kind: str, agent_id: str, params: dict[str, Any], *, accept_only: bool
) -> int:
    async with open_mesh(args, default_timeout=args.timeout) as mesh:
        ref = mesh.ref(kind, agent_id)
        if args.delivery != "at_most_once":
            ref = ref.with_options(delivery=args.delivery)
        if accept_only and not getattr(args, "wait", False):
            await ref.send(args.action, params=params, timeout=args.timeout)
            # A durable send returns once the inbox stream stored the message.
            print("accepted" if args.delivery == "at_most_once" else "stored", flush=True)
        else:
            print_json(await ref.call(args.action, params=params, timeout=args.timeout))
    return Exit.OK


@command(
    "call",
    help="call an agent's action and print the result as JSON",
    configure=_message_options,
    description="Call ACTION of agent KIND/ID and print its result as JSON. With --delivery at_least_once or "
    "exactly_once the message goes through the durable inbox stream and a cluster node runs it. "
    "Exit codes: 0 ok, 1 error reply, 2 bad usage, 3 NATS unreachable, 4 no reply within --timeout.",
)
def _call(args: argparse.Namespace) -> int:
    return _deliver(args, accept_only=False)


@command(
    "send",
    help="send a message to an agent (fire-and-forget) and print 'accepted' (durable: 'stored')",
    configure=_send_options,
    description="Send ACTION to agent KIND/ID; returns once the agent's mailbox accepted it and prints "
    "'accepted', or, with --delivery at_least_once or exactly_once, once the durable inbox stream stored it "
    "and prints 'stored' (a cluster node runs it later). With --wait it is a call: it prints the result as JSON. "
    "Exit codes: 0 accepted, 1 error reply, 2 bad usage, 3 NATS unreachable, 4 timed out.",
)
def _send(args: argparse.Namespace) -> int:
    return _deliver(args, accept_only=True)


# -- server ---------------------------------------------------------------------------


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster", metavar="N", type=_positive_int, default=None, help="run an N-node JetStream cluster on loopback"
    )
    parser.add_argument(
        "--port", type=_positive_int, default=None, help=f"client port (default: {DEFAULT_PORT} if free, else any)"
    )
    parser.add_argument("--monitor-port", type=_positive_int, default=None, help="monitoring port (default: free)")
    parser.add_argument("--name", default=None, help="server name (cluster: the cluster name)")
    parser.add_argument(
        "--store-dir", metavar="DIR", default=None, help="JetStream store directory, kept (default: a temporary one)"
    )
    parser.add_argument("--max-payload", metavar="BYTES", type=_positive_int, default=None, help="max message size")


#: The client port ``natsagents server`` takes when it is free (NATS's usual port).
DEFAULT_PORT = 4222


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``host:port`` (a bind succeeds)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (handlers restored after)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@command(
    "server",
    help="run a local nats-server (or a loopback cluster) until Ctrl-C",
    configure=_server_options,
    description="Start nats-server with JetStream on loopback, print its URLs and run until "
    f"SIGINT or SIGTERM, then stop it. A single server listens on port {DEFAULT_PORT} if it is free, else on a free "
    "port; its URLs go to a state file ($XDG_RUNTIME_DIR/natsagents/server.json, else "
    "~/.cache/natsagents/server.json) where the other commands find them when no --servers, --context or "
    "$NATS_URL says otherwise.",
)
def _server(args: argparse.Namespace) -> int:
    from ..server import BOUNDED_PING, NatsCluster, NatsServer

    runner: NatsServer | NatsCluster
    if args.cluster is not None:
        if args.port is not None or args.monitor_port is not None:
            raise ConfigurationError("--port and --monitor-port cannot be used with --cluster")
        runner = NatsCluster(
            args.cluster,
            name=args.name or "natsagents",
            max_payload=args.max_payload,
            base_dir=args.store_dir,
            **BOUNDED_PING,
        )
        nodes = list(runner.servers)
    else:
        port = args.port
        if port is None and args.monitor_port is None and port_is_free(DEFAULT_PORT):
            port = DEFAULT_PORT
        runner = _single_server(args, port)
        nodes = [runner]
    # Handlers go in before the start, so a signal during it still stops the servers.
    with _stop_on_signals() as stop:
        try:
            try:
                runner.start()
            except ServerError:
                if args.port is not None or not isinstance(runner, NatsServer) or runner.port != DEFAULT_PORT:
                    raise
                runner.stop()  # someone took 4222 since we looked: any free port then
                runner = _single_server(args, None)
                nodes = [runner]
                runner.start()
            urls = [node.url for node in nodes]
            state = connect.write_server_state(urls)  # before printing: once printed, commands find it
            for node in nodes:
                print(f"{node.name}  {node.url}  monitor {node.monitor_url}  store {node.store_dir}  pid {node.pid}")
            print(f"NATS_URL={','.join(urls)}", flush=True)
            print(f"running; Ctrl-C to stop (URLs in {state})", file=sys.stderr, flush=True)
            while not stop.wait(0.25):
                dead = [node.name for node in nodes if not node.running]
                if dead:
                    _error(f"nats-server {', '.join(dead)} exited unexpectedly")
                    return Exit.FAILED
        finally:
            connect.remove_server_state()
            runner.stop()
    print("stopped", file=sys.stderr, flush=True)
    return Exit.OK


def _single_server(args: argparse.Namespace, port: int | None) -> NatsServer:
    from ..server import BOUNDED_PING, NatsServer

    return NatsServer(
        port=port,
        monitor_port=args.monitor_port,
        name=args.name,
        store_dir=args.store_dir,
        max_payload=args.max_payload,
        **BOUNDED_PING,
    )
