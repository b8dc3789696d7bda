"""One ``nats-server`` process, for tests, examples and single-machine deployments.

:class:`NatsServer` writes a config file, runs the binary found by
:func:`~natsagents.server.binary.find_server_binary` and waits until the monitoring
endpoint ``/healthz`` answers 200. Ports are picked once (free loopback ports) and kept
across restarts, so a client's URL stays valid; JetStream state lives in the store
directory and survives :meth:`NatsServer.restart`.

No process outlives the interpreter: every server is registered in a module registry
that an ``atexit`` hook drains (SIGTERM, then SIGKILL), and a server object that is
garbage-collected takes its process and temporary directory with it. Processes run in
their own session, so a Ctrl-C in the terminal reaches Python, not the server.
"""

from __future__ import annotations

import atexit
import enum
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ..errors import ServerError
from .binary import find_server_binary

__all__ = ["BOUNDED_PING", "NatsServer"]

#: Client ping settings of the servers the SDK starts for use (``Mesh.embedded``,
#: ``natsagents server``): a ping every 2 s, dropped after 3 unanswered, so a frozen or
#: cut-off client's subscriptions are freed within about 6-8 s instead of minutes (nothing
#: depends on it: docs/architecture.md "Gray failures"). Test harness servers keep the
#: server's own defaults.
BOUNDED_PING: dict[str, Any] = {"ping_interval": 2.0, "ping_max": 3}

_LOG_TAIL_LINES = 30
_POLL_FIRST = 0.02  # seconds between readiness polls, growing to _POLL_MAX
_POLL_MAX = 0.1
_REQUEST_TIMEOUT = 0.5
_EXIT_GRACE = 3.0  # how long the atexit hook lets servers shut down before SIGKILL

# urllib honours $http_proxy; the monitoring port is always local.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"  # killed, failed or stopped for a restart: can start again
    CLOSED = "closed"  # final stop: temporary files removed


@dataclass(eq=False)
class _Resources:
    """What a server owns outside Python; kept apart from it so cleanup needs no ``self``."""

    tempdir: Path | None
    proc: subprocess.Popen[bytes] | None = None


_REGISTRY: set[_Resources] = set()
_REGISTRY_LOCK = threading.Lock()


def _wait_stopped(pid: int, stopped: bool, timeout: float = 2.0) -> None:
    """Wait until every thread of ``pid`` is (or no longer is) in the stopped state.

    ``kill(SIGSTOP)`` returns before the target's threads on other CPUs have stopped; a
    chaos test that probes the server right after pause() must not see it answer.
    """
    task_dir = f"/proc/{pid}/task"
    if not os.path.isdir(task_dir):
        return  # not Linux: best effort
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            states = []
            for tid in os.listdir(task_dir):
                with open(f"{task_dir}/{tid}/stat", "rb") as f:
                    stat = f.read()
                states.append(stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3])
        except OSError:
            return
        if all((st in (b"T", b"t")) == stopped for st in states):
            return
        time.sleep(0.001)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """Send SIGTERM, and SIGCONT so that a paused server can act on it."""
    if proc.poll() is not None:
        return
    with suppress(ProcessLookupError):
        proc.terminate()
        if sys.platform != "win32":
            os.kill(proc.pid, signal.SIGCONT)


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait up to ``timeout`` for the process to exit, then SIGKILL it."""
    try:
        proc.wait(max(timeout, 0.0))
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def _release(res: _Resources, grace: float = 2.0) -> None:
    """Stop the process (if any) and remove the temporary directory (if owned)."""
    if res.proc is not None:
        _terminate(res.proc)
        _reap(res.proc, grace)
        res.proc = None
    if res.tempdir is not None:
        shutil.rmtree(res.tempdir, ignore_errors=True)
        res.tempdir = None
    with _REGISTRY_LOCK:
        _REGISTRY.discard(res)


@atexit.register
def _release_all() -> None:
    """Stop every server still running at interpreter exit, all in parallel."""
    with _REGISTRY_LOCK:
        leftovers = list(_REGISTRY)
    for res in leftovers:
        if res.proc is not None:
            _terminate(res.proc)
    deadline = time.monotonic() + _EXIT_GRACE
    for res in leftovers:
        _release(res, grace=deadline - time.monotonic())


_RANDOM = random.SystemRandom()
#: The lowest port :func:`_free_ports` picks (above the well-known and most registered ones).
_LOWEST_PORT = 10_000


def _free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Pick ``count`` distinct free TCP ports on ``host`` (held open together while picking).

    The ports come from outside the kernel's ephemeral range where it is known (Linux):
    a port picked there can be taken, between the pick and the server's bind, by any
    outgoing connection of any process (the server then exits with "address already in
    use"). Outside it, only another explicit bind can take it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        candidates = _non_ephemeral_ports()
        tries = 0
        while len(sockets) < count:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if candidates and tries < 50 * count:
                    tries += 1
                    sock.bind((host, _RANDOM.choice(candidates)))
                else:
                    sock.bind((host, 0))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _non_ephemeral_ports() -> range | None:
    """The ports below the kernel's ephemeral range (``None`` when it is not known)."""
    try:
        low, _high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return None
    return range(_LOWEST_PORT, low) if low - _LOWEST_PORT >= 1000 else None


def _http_get(url: str, timeout: float) -> tuple[int, bytes] | None:
    """GET ``url``: ``(status, body)``, or ``None`` when nothing answered in time."""
    try:
        with _OPENER.open(url, timeout=max(timeout, 0.001)) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, b""
    except (OSError, HTTPException):
        return None


def _get_json(url: str, timeout: float) -> dict[str, Any] | None:
    """GET a monitoring endpoint; its JSON object, or ``None`` on any failure."""
    answer = _http_get(url, timeout)
    if answer is None or answer[0] != 200:
        return None
    try:
        data = json.loads(answer[1])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


_T = TypeVar("_T", bound="_ContextManaged")


class _ContextManaged:
    """Sync and async context managers over ``start()`` / ``stop()``."""

    def _check_can_start(self) -> None:
        raise NotImplementedError

    def _start_default(self) -> None:
        raise NotImplementedError

    def _stop_default(self) -> None:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        self._check_can_start()
        try:
            self._start_default()
        except BaseException:
            self._stop_default()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_default()

    async def __aenter__(self: _T) -> _T:
        self._check_can_start()
        try:
            await anyio.to_thread.run_sync(self._start_default)
        except BaseException:
            # A cancelled start still runs to its end in the thread: undo it.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._stop_default)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._stop_default)


class NatsServer(_ContextManaged):
    """A ``nats-server`` child process listening on loopback.

    Args:
        port: client port; a free one is picked when ``None``.
        monitor_port: HTTP monitoring port; picked when ``None``.
        name: ``server_name``; defaults to ``natsagents-<port>``.
        store_dir: JetStream store directory, never deleted. When ``None`` the server
            creates a temporary directory and removes it on the final :meth:`stop`.
        jetstream: enable JetStream.
        cluster_name: cluster name. A cluster block is written when this, ``cluster_port``
            or ``routes`` is given (the name then defaults to ``"natsagents"``).
        cluster_port: route listen port; picked when clustering and ``None``.
        routes: route URLs of the other nodes (``nats-route://127.0.0.1:<port>``).
        cluster_advertise: the route address (``host:port``) this node advertises to the
            others (``cluster { advertise }``); ``None``: its listen address.
        cluster_no_advertise: ``cluster { no_advertise: true }``: the server does not
            tell clients the other servers' URLs (``connect_urls`` stays empty).
        max_payload: the server's ``max_payload`` in bytes (default 1 MiB).
        ping_interval, ping_max: how often the server pings each client and how many
            unanswered pings make it drop the connection (``None``: the server's defaults,
            2 min and 2). A frozen or cut-off client keeps its subscriptions, queue group
            memberships included, until then: ``natsagents`` does not rely on it, but a
            bound (e.g. 2 s and 3) frees them sooner.
        config_extra: config text appended verbatim (auth blocks, limits ...).
        include: a config file to ``include`` (e.g. the ``nats-auth.conf`` that
            ``natsagents auth`` writes). nats-server resolves include paths relative to
            the including file, even absolute ones, so it is written relative to this
            server's config file.
        binary: path of the ``nats-server`` binary; searched for when ``None``.
        host: interface to listen on.
        log_file: where the server's stdout/stderr go; ``server.log`` in the temporary
            directory when ``None``.
        debug: run with ``-D`` (debug logging).

    Use it as a context manager (``with`` or ``async with``) or call :meth:`start` and
    :meth:`stop`.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        name: str | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        jetstream: bool = True,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        cluster_advertise: str | None = None,
        cluster_no_advertise: bool = False,
        max_payload: int | None = None,
        ping_interval: float | None = None,
        ping_max: int | None = None,
        config_extra: str = "",
        include: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        host: str = "127.0.0.1",
        log_file: str | None = None,
        debug: bool = False,
    ) -> None:
        self._host = host
        self._clustered = cluster_name is not None or cluster_port is not None or bool(routes)
        self._auto_ports = port is None and monitor_port is None and cluster_port is None
        self._pick_ports(port, monitor_port, cluster_port)
        self.name: str = name if name is not None else f"natsagents-{self.port}"
        self.cluster_name: str | None = (cluster_name or "natsagents") if self._clustered else None
        self.routes: tuple[str, ...] = tuple(routes)
        self._cluster_advertise = cluster_advertise
        self._cluster_no_advertise = cluster_no_advertise
        self._jetstream = jetstream
        self._max_payload = max_payload
        self._ping = (ping_interval, ping_max)
        self._config_extra = config_extra
        self._include = Path(include).resolve() if include is not None else None
        self._binary_arg = binary
        self._binary: str | None = None
        self._debug = debug

        tempdir = Path(tempfile.mkdtemp(prefix="natsagents-"))
        self._res = _Resources(tempdir=tempdir)
        with _REGISTRY_LOCK:
            _REGISTRY.add(self._res)
        self._finalizer = weakref.finalize(self, _release, self._res)
        self._finalizer.atexit = False  # _release_all handles exit, in parallel

        self.store_dir: Path = Path(store_dir) if store_dir is not None else tempdir / "store"
        self.config_path: Path = tempdir / "nats-server.conf"
        self.log_path: Path = Path(log_file) if log_file is not None else tempdir / "server.log"
        self._state = _State.NEW
        self._paused = False
        self._lock = threading.RLock()

    # -- addresses and status -------------------------------------------------------

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:<port>``."""
        return f"nats://{self._connect_host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """Monitoring base URL, ``http://127.0.0.1:<monitor_port>``."""
        return f"http://{self._connect_host}:{self.monitor_port}"

    @property
    def route_url(self) -> str | None:
        """``nats-route://`` URL other nodes use to reach this one (``None`` if unclustered)."""
        if self.cluster_port is None:
            return None
        return f"nats-route://{self._connect_host}:{self.cluster_port}"

    @property
    def pid(self) -> int | None:
        """Process id while the process is alive (also while paused), else ``None``."""
        proc = self._res.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """``True`` while the server process is alive (paused counts as alive)."""
        return self.pid is not None

    @property
    def paused(self) -> bool:
        """``True`` between :meth:`pause` and :meth:`resume`."""
        return self._paused and self.running

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log, repeated health-check warnings folded."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 65536))
                text = log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        kept: list[str] = []
        for line in text.splitlines():
            # Every failed /healthz poll logs a warning; keep only the latest of a run.
            if kept and "Healthcheck failed" in line and "Healthcheck failed" in kept[-1]:
                kept[-1] = line
            else:
                kept.append(line)
        return "\n".join(kept[-lines:])

    def __repr__(self) -> str:
        return f"<NatsServer {self.name} {self.url} {self._state.value}>"

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Start the process and wait until it is ready.

        Args:
            timeout: seconds to wait for ``/healthz`` to answer 200.

        Returns:
            ``self``, so that ``server = NatsServer().start()`` works.

        Raises:
            ServerBinaryNotFound: no ``nats-server`` binary.
            ServerError: already running, already closed, the process exited early or
                did not become ready in time (the message holds the log tail).
        """
        with self._lock:
            self._check_can_start()
            # Freshly picked ports can be taken by someone else before the server binds
            # them: pick new ones, but only before the URL was ever handed out running.
            attempts = 3 if self._auto_ports and self._state is _State.NEW else 1
            for attempt in range(attempts):
                self._spawn()
                try:
                    self.wait_ready(timeout)
                    return self
                except ServerError as exc:
                    self._kill_quietly()
                    in_use = "address already in use" in str(exc).lower()
                    if not in_use or attempt == attempts - 1:
                        raise
                    self._pick_ports(None, None, None)
                except BaseException:
                    self._kill_quietly()
                    raise
            raise AssertionError("unreachable")  # pragma: no cover

    def wait_ready(self, timeout: float) -> None:
        """Poll ``GET /healthz`` until it answers 200 while the process is alive.

        Args:
            timeout: seconds to wait.

        Raises:
            ServerError: the server is not running, exited, or was not ready in time.
        """
        deadline = time.monotonic() + timeout
        delay = _POLL_FIRST
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerError(
                    f"nats-server {self.name} not ready after {timeout:.1f}s "
                    f"({self.monitor_url}/healthz).\n{self._log_excerpt()}"
                )
            answer = _http_get(f"{self.monitor_url}/healthz", min(_REQUEST_TIMEOUT, remaining))
            if answer is not None and answer[0] == 200 and self._is_ours(remaining):
                return
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 1.5, _POLL_MAX)

    def stop(self, timeout: float = 10.0, *, cleanup: bool = True) -> None:
        """Stop the server: SIGTERM, wait, SIGKILL after ``timeout``. Idempotent.

        Args:
            timeout: seconds to wait for a graceful exit before SIGKILL.
            cleanup: remove the temporary directory (and the JetStream state in it when
                no ``store_dir`` was given); the server cannot start again afterwards.
                ``False`` keeps everything for a later :meth:`start`.
        """
        with self._lock:
            proc = self._res.proc
            if proc is not None:
                _terminate(proc)
                _reap(proc, timeout)
                self._res.proc = None
            self._paused = False
            if cleanup:
                self._finalizer()  # removes the temporary directory and unregisters
                self._state = _State.CLOSED
            elif self._state is not _State.CLOSED:
                self._state = _State.STOPPED

    def kill(self) -> None:
        """SIGKILL the server and wait for it to exit (a crash, for chaos tests).

        Raises:
            ServerError: the server is not running.
        """
        with self._lock:
            self._require_running("kill")
            self._kill_quietly()

    def pause(self) -> None:
        """Freeze the process with SIGSTOP: it holds its sockets but answers nothing.

        Raises:
            ServerError: the server is not running, or the platform has no SIGSTOP.
        """
        with self._lock:
            proc = self._require_running("pause")
            if sys.platform == "win32":
                raise ServerError("pause() needs SIGSTOP, which Windows does not have")
            proc.send_signal(signal.SIGSTOP)
            self._paused = True
            _wait_stopped(proc.pid, True)

    def resume(self) -> None:
        """Continue a paused process with SIGCONT.

        Raises:
            ServerError: the server is not running, or the platform has no SIGCONT.
        """
        with self._lock:
            proc = self._require_running("resume")
            if sys.platform == "win32":
                raise ServerError("resume() needs SIGCONT, which Windows does not have")
            proc.send_signal(signal.SIGCONT)
            self._paused = False
            _wait_stopped(proc.pid, False)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (if running) and start again with the same ports, name and store.

        Args:
            timeout: seconds to wait for readiness after the new start.

        Raises:
            ServerError: the server was closed by a final :meth:`stop`, or did not
                come back (see :meth:`start`).
        """
        with self._lock:
            if self._state is _State.CLOSED:
                raise ServerError(f"nats-server {self.name} was stopped for good; create a new one")
            if self.running:
                self.stop(cleanup=False)
            self.start(timeout)

    # -- internals ------------------------------------------------------------------

    @property
    def _should_run(self) -> bool:
        """Started and not stopped or killed since (the process may have crashed)."""
        return self._state is _State.RUNNING

    @property
    def _connect_host(self) -> str:
        if self._host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if self._host == "::":
            return "[::1]"
        return f"[{self._host}]" if ":" in self._host else self._host

    def _pick_ports(self, port: int | None, monitor: int | None, cluster: int | None) -> None:
        free = iter(_free_ports(3, self._host if self._host not in ("", "::") else "127.0.0.1"))
        self.port: int = port if port is not None else next(free)
        self.monitor_port: int = monitor if monitor is not None else next(free)
        wanted = self._clustered and cluster is None
        self.cluster_port: int | None = next(free) if wanted else cluster

    def _check_can_start(self) -> None:
        if self._state is _State.CLOSED:
            raise ServerError(f"nats-server {self.name} was stopped for good; create a new one")
        if self.running:
            raise ServerError(f"nats-server {self.name} is already running (pid {self.pid})")

    def _start_default(self) -> None:
        self.start()

    def _stop_default(self) -> None:
        self.stop()

    def _require_running(self, action: str) -> subprocess.Popen[bytes]:
        proc = self._res.proc
        if proc is None or proc.poll() is not None:
            raise ServerError(f"cannot {action} nats-server {self.name}: it is not running")
        return proc

    def _check_alive(self) -> None:
        """Raise if the process is gone (never started, killed, or crashed)."""
        proc = self._res.proc
        if proc is None:
            raise ServerError(f"nats-server {self.name} is not running")
        code = proc.poll()
        if code is not None:
            raise ServerError(f"nats-server {self.name} exited with code {code}.\n{self._log_excerpt()}")

    def _is_ours(self, timeout: float) -> bool:
        """Whether the monitoring port is answered by this server, not a stranger."""
        varz = _get_json(f"{self.monitor_url}/varz", min(_REQUEST_TIMEOUT, timeout))
        return varz is not None and varz.get("server_name") == self.name

    def _log_excerpt(self) -> str:
        return f"--- last lines of {self.log_path} ---\n{self.log_tail()}"

    def _render_config(self) -> str:
        def q(value: str) -> str:
            return json.dumps(value, ensure_ascii=False)

        lines = [
            "# Written by natsagents.server on every start; edits are overwritten.",
            f"server_name: {q(self.name)}",
            f"listen: {q(f'{self._host}:{self.port}')}",
            f"http: {q(f'{self._host}:{self.monitor_port}')}",
        ]
        if self._max_payload is not None:
            lines.append(f"max_payload: {int(self._max_payload)}")
        if self._ping[0] is not None:
            lines.append(f"ping_interval: {q(f'{self._ping[0]:g}s')}")
        if self._ping[1] is not None:
            lines.append(f"ping_max: {int(self._ping[1])}")
        if self._jetstream:
            lines += [
                "jetstream {",
                f"  store_dir: {q(str(self.store_dir))}",
                "  max_memory_store: 256MB",
                "  max_file_store: 2GB",
                "}",
            ]
        if self.cluster_name is not None:
            lines += [
                "cluster {",
                f"  name: {q(self.cluster_name)}",
                f"  listen: {q(f'{self._host}:{self.cluster_port}')}",
                *([f"  advertise: {q(self._cluster_advertise)}"] if self._cluster_advertise else []),
                *(["  no_advertise: true"] if self._cluster_no_advertise else []),
                "  routes: [",
                *(f"    {q(route)}" for route in self.routes),
                "  ]",
                "}",
            ]
        if self._include is not None:
            lines += ["", f"include {q(os.path.relpath(self._include, self.config_path.parent))}"]
        if self._config_extra:
            lines += ["", "# config_extra", self._config_extra]
        return "\n".join(lines) + "\n"

    def _spawn(self) -> None:
        """Write the config and launch the process, without waiting for readiness."""
        with self._lock:
            self._check_can_start()
            if self._binary is None:
                self._binary = find_server_binary(self._binary_arg)
            self._res.proc = None
            self.store_dir.mkdir(parents=True, exist_ok=True)
            self.config_path.parent.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(self._render_config(), encoding="utf-8")
            argv = [self._binary, "-c", str(self.config_path)]
            if self._debug:
                argv.append("-D")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                try:
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=self.config_path.parent,
                        start_new_session=True,
                    )
                except OSError as exc:
                    raise ServerError(f"cannot run {self._binary}: {exc}") from exc
            self._res.proc = proc
            with _REGISTRY_LOCK:
                _REGISTRY.add(self._res)
            self._paused = False
            self._state = _State.RUNNING

    def _kill_quietly(self) -> None:
        """SIGKILL and reap the process if there is one; the server can start again."""
        proc = self._res.proc
        if proc is not None:
            with suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            self._res.proc = None
        self._paused = False
        self._state = _State.STOPPED
