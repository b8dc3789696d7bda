"""A fault-injecting TCP proxy, for real partitions in tests.

A :class:`Proxy` listens on a free port of 127.0.0.1 and forwards every connection it
accepts to one target (a NATS server's client port, or another server's route port).
From a test, while the connections stay up, it can:

===================  ===============================================================
``cut()``            close every connection and refuse new ones (a crashed peer or a
                     firewall that answers with RST: both ends see the close at once)
``blackhole()``      keep the sockets open but forward nothing; the bytes are held and
                     delivered, in order, on ``heal()`` (a partition as TCP sees it:
                     nobody notices until a ping or an application timeout)
``block(d)``         ``blackhole`` in one direction only (``"up"``: towards the target,
                     ``"down"``: back from it)
``drop()``           forward nothing and forget the bytes (the byte stream is broken
                     for good: after ``heal()`` the peers see garbage and reconnect)
``delay(s)``         forward every chunk ``s`` seconds after it arrived (order kept)
``heal()``           forward again (held bytes first), accept new connections
===================  ===============================================================

Every fault takes ``direction="both" | "up" | "down"``. Proxies run in one background
thread with its own event loop, so they keep forwarding while the test's own loop is busy
or blocked, and their methods are plain (thread-safe) calls usable from sync and async
tests alike. Held bytes are bounded (:attr:`Proxy.MAX_HELD` per connection and
direction); beyond it they are dropped and counted.

:class:`ProxiedCluster` is a :class:`~natsagents.server.NatsCluster` whose route
connections all pass through proxies, one per ordered pair of servers (server ``i``
dials server ``j`` through ``link(i, j)``), and which hands out proxied client URLs
(:meth:`ProxiedCluster.client_url`). :func:`partition` isolates a set of servers from the
others (routes, and by default the clients connected through their proxied URLs) for the
length of a ``with`` or ``async with`` block; :func:`one_way` blocks the bytes from one
server to another::

    cluster = ProxiedCluster(3).start()
    url = cluster.client_url(2)            # a node connected through a proxy
    with partition(cluster, {2}):          # server 2 and its proxied clients cut off
        ...
    with one_way(cluster, 2, 0):           # server 2's bytes never reach server 0
        ...

Each server advertises a route address that refuses connections, so servers never learn
a direct way around the proxies (clients still learn the other servers' direct client
URLs: a client whose proxied connection is *closed* reconnects to another server, as it
would in production; a blackholed one stays connected and deaf).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal, TypeVar

from ..errors import ConfigurationError
from ..server import NatsCluster

__all__ = ["Direction", "ProxiedCluster", "Proxy", "one_way", "partition"]

Direction = Literal["up", "down", "both"]
_DIRECTIONS = ("up", "down")
_CHUNK = 64 * 1024
_CONTROL_TIMEOUT = 10.0

_T = TypeVar("_T")


# -- the proxies' event loop --------------------------------------------------------------


class _LoopThread:
    """One daemon thread running the event loop every proxy lives on (started lazily)."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._thread is None or not cls._thread.is_alive():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name="natsagents-proxies", daemon=True)
                thread.start()
                ready.wait(5)
                cls._loop, cls._thread = loop, thread
            return cls._loop

    @classmethod
    def call(cls, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the proxies' loop and return its result (directly when already there)."""
        loop = cls.loop()
        if cls._thread is threading.current_thread():
            return fn()
        done: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the calling thread
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result(_CONTROL_TIMEOUT)


@dataclass(frozen=True, slots=True)
class _Rule:
    """What a proxy does with the bytes going one way."""

    hold: bool = False
    drop: bool = False
    delay: float = 0.0


_PASS = _Rule()


# -- one proxy ------------------------------------------------------------------------------


class Proxy:
    """A TCP proxy from ``127.0.0.1:<port>`` to ``target_host:target_port``.

    Args:
        target_port: where accepted connections are forwarded.
        target_host: the target's address (loopback by default).
        port: the port to listen on (a free one when ``None``).

    The proxy listens as soon as it is created; :meth:`close` stops it for good. It is
    also a context manager.
    """

    #: Bytes held per connection and direction (blackholed or delayed) before more are dropped.
    MAX_HELD = 64 * 1024 * 1024

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", port: int | None = None) -> None:
        self.target = (target_host, int(target_port))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port or 0))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.port: int = int(sock.getsockname()[1])
        self._rules: dict[str, _Rule] = dict.fromkeys(_DIRECTIONS, _PASS)
        self._refusing = False
        self._closed = False
        self._conns: set[_Connection] = set()
        self._changed: asyncio.Event | None = None
        #: Bytes forwarded, and bytes dropped (``drop()``, or over :attr:`MAX_HELD`).
        self.forwarded = 0
        self.dropped = 0
        #: Connections accepted since the start (refused ones included).
        self.accepted = 0
        self._server: asyncio.AbstractServer | None = None
        self._serving = _LoopThread.call(lambda: _LoopThread.loop().create_task(self._serve(sock)))

    def __repr__(self) -> str:
        return f"<Proxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]} {self.state}>"

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def state(self) -> str:
        """``"pass"``, ``"cut"``, ``"closed"``, or the rules per direction."""
        if self._closed:
            return "closed"
        if self._refusing:
            return "cut"
        if all(rule == _PASS for rule in self._rules.values()):
            return "pass"
        return ", ".join(f"{d}: {self._describe(r)}" for d, r in self._rules.items())

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        return len(self._conns)

    @staticmethod
    def _describe(rule: _Rule) -> str:
        if rule.drop:
            return "drop"
        if rule.hold:
            return "hold"
        return f"delay {rule.delay:g} s" if rule.delay else "pass"

    # -- faults (thread-safe) ------------------------------------------------------------

    def cut(self) -> None:
        """Close every connection (both ways) and refuse new ones until :meth:`heal`."""

        def apply() -> None:
            self._refusing = True
            for conn in list(self._conns):
                conn.abort()

        self._control(apply)

    def blackhole(self, direction: Direction = "both") -> None:
        """Keep connections open but forward nothing ``direction``; held bytes are
        delivered on :meth:`heal`."""
        self._set(direction, hold=True, drop=False)

    def block(self, direction: Literal["up", "down"]) -> None:
        """Blackhole one direction: ``"up"`` (towards the target) or ``"down"``."""
        if direction not in _DIRECTIONS:
            raise ConfigurationError(f"block() takes 'up' or 'down', not {direction!r}")
        self.blackhole(direction)

    def drop(self, direction: Direction = "both") -> None:
        """Forward nothing ``direction`` and forget the bytes (the stream stays broken)."""
        self._set(direction, hold=False, drop=True)

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        """Forward each chunk ``seconds`` after it arrived (0: no delay)."""
        if not seconds >= 0:
            raise ConfigurationError(f"delay must be >= 0 seconds, not {seconds!r}")
        self._set(direction, delay=float(seconds))

    def heal(self) -> None:
        """Forward everything again, held bytes first, and accept new connections."""

        def apply() -> None:
            self._refusing = False
            self._rules = dict.fromkeys(_DIRECTIONS, _PASS)
            self._notify()

        self._control(apply)

    def close(self) -> None:
        """Stop listening and close every connection. Idempotent."""
        if self._closed:
            return

        def apply() -> None:
            self._closed = self._refusing = True
            if self._server is not None:
                self._server.close()
            for conn in list(self._conns):
                conn.abort()
            self._notify()

        self._control(apply)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _set(self, direction: Direction, **changes: Any) -> None:
        ways = _ways(direction)

        def apply() -> None:
            for way in ways:
                self._rules[way] = replace(self._rules[way], **changes)
            self._notify()

        self._control(apply)

    def _control(self, apply: Callable[[], None]) -> None:
        _LoopThread.call(apply)

    # -- on the proxies' loop ------------------------------------------------------------

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    def _changed_event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def _serve(self, sock: socket.socket) -> None:
        if self._closed:
            sock.close()
            return
        self._server = await asyncio.start_server(self._accept, sock=sock, limit=_CHUNK)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target, limit=_CHUNK)
        except OSError:
            writer.transport.abort()
            return
        if self._refusing:  # cut while connecting
            writer.transport.abort()
            up_writer.transport.abort()
            return
        conn = _Connection(self, reader, writer, up_reader, up_writer)
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            self._conns.discard(conn)


def _ways(direction: Direction) -> tuple[str, ...]:
    if direction == "both":
        return _DIRECTIONS
    if direction in _DIRECTIONS:
        return (direction,)
    raise ConfigurationError(f"direction must be 'up', 'down' or 'both', not {direction!r}")


class _Connection:
    """One proxied connection: two pipes, each a reader and a writer task."""

    def __init__(
        self,
        proxy: Proxy,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.writers = (writer, up_writer)
        self.pipes = (_Pipe(proxy, "up", reader, up_writer), _Pipe(proxy, "down", up_reader, writer))
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(coro) for pipe in self.pipes for coro in (pipe.read(), pipe.write())]
        ends = [loop.create_task(pipe.finished.wait()) for pipe in self.pipes]
        try:
            # The first pipe to end (its peer closed and what it sent was forwarded, an
            # error, an abort) closes the whole connection.
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.abort()
            for task in (*self.tasks, *ends):
                task.cancel()
            for task in (*self.tasks, *ends):
                with contextlib.suppress(BaseException):
                    await task

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        for pipe in self.pipes:
            pipe.finished.set()


class _Pipe:
    """Bytes one way: the reader queues chunks (or drops them), the writer forwards them
    as the direction's rule allows."""

    def __init__(self, proxy: Proxy, way: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.way = way
        self.reader = reader
        self.writer = writer
        self.queue: deque[tuple[float, bytes]] = deque()
        self.held = 0
        self.eof = False
        self.wake = asyncio.Event()
        self.finished = asyncio.Event()

    async def read(self) -> None:
        proxy = self.proxy
        try:
            while True:
                data = await self.reader.read(_CHUNK)
                if not data:
                    break
                rule = proxy._rules[self.way]
                if rule.drop or self.held + len(data) > Proxy.MAX_HELD:
                    proxy.dropped += len(data)
                    continue
                self.queue.append((time.monotonic(), data))
                self.held += len(data)
                self.wake.set()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.eof = True
            self.wake.set()

    async def write(self) -> None:
        proxy = self.proxy
        try:
            while True:
                if not self.queue:
                    if self.eof:
                        return
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                rule = proxy._rules[self.way]
                if rule.hold:
                    await proxy._changed_event().wait()
                    continue
                arrived, data = self.queue[0]
                wait = arrived + rule.delay - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proxy._changed_event().wait(), wait)
                    continue
                self.queue.popleft()
                self.held -= len(data)
                self.writer.write(data)
                await self.writer.drain()
                proxy.forwarded += len(data)
        except (OSError, ConnectionError):
            pass
        finally:
            self.finished.set()


# -- a cluster behind proxies ---------------------------------------------------------------


class ProxiedCluster(NatsCluster):
    """A :class:`~natsagents.server.NatsCluster` whose routes pass through proxies.

    Takes the same arguments. ``link(i, j)`` is the proxy server ``i`` dials server ``j``
    through ("up" is ``i → j``); NATS keeps one route (pool) per pair, which may have been
    dialed either way, so faults between two servers go on both links.
    :meth:`client_url` makes a proxied client URL for a server; :meth:`stop` also closes
    every proxy.
    """

    def __init__(self, size: int = 3, **options: Any) -> None:
        if size < 2:
            raise ConfigurationError("a proxied cluster needs at least two servers")
        self._links: dict[tuple[int, int], Proxy] = {}
        self._clients: dict[int, list[Proxy]] = {}
        # Servers advertise this route address (it refuses every connection), so gossip
        # never tells one server a direct way to another.
        self._nowhere = Proxy(_free_port())
        self._nowhere.cut()
        try:
            super().__init__(size, route_via=self._route_via, route_advertise=self._nowhere.address, **options)
        except BaseException:
            self._close_proxies()
            raise

    def _route_via(self, i: int, j: int, port: int) -> int:
        proxy = self._links[(i, j)] = Proxy(port)
        return proxy.port

    def link(self, i: int, j: int) -> Proxy:
        """The proxy server ``i`` dials server ``j`` through.

        Raises:
            KeyError: no such pair (``i == j`` or out of range)."""
        return self._links[(i, j)]

    def links_between(self, a: Collection[int], b: Collection[int]) -> list[Proxy]:
        """Every route proxy between a server of ``a`` and one of ``b`` (both ways)."""
        return [p for (i, j), p in self._links.items() if (i in a and j in b) or (i in b and j in a)]

    def client_url(self, i: int) -> str:
        """A new proxied client URL for server ``i`` (``client_proxies(i)[-1]``)."""
        proxy = Proxy(self.servers[i].port)
        self._clients.setdefault(i, []).append(proxy)
        return f"nats://{proxy.address}"

    def client_proxies(self, i: int) -> list[Proxy]:
        """The proxies of the client URLs made for server ``i``."""
        return list(self._clients.get(i, ()))

    def proxies(self) -> list[Proxy]:
        """Every route and client proxy."""
        return [*self._links.values(), *(p for ps in self._clients.values() for p in ps)]

    def heal(self) -> None:
        """Heal every proxy."""
        for proxy in self.proxies():
            proxy.heal()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self._close_proxies()

    def _close_proxies(self) -> None:
        for proxy in [*self.proxies(), self._nowhere]:
            with contextlib.suppress(Exception):
                proxy.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Fault:
    """Applies faults on enter and heals the same proxies on exit (``with`` or ``async with``)."""

    def __init__(self, apply: Callable[[], list[Proxy]]) -> None:
        self._apply = apply
        self.proxies: list[Proxy] = []
        #: ``time.monotonic()`` when the fault began and ended.
        self.started = self.ended = 0.0

    def __enter__(self) -> _Fault:
        self.proxies = self._apply()
        self.started = time.monotonic()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.heal()

    async def __aenter__(self) -> _Fault:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.heal()

    def heal(self) -> None:
        """End the fault now (idempotent)."""
        if not self.ended:
            self.ended = time.monotonic()
            for proxy in self.proxies:
                proxy.heal()


def partition(
    cluster: ProxiedCluster,
    servers: Collection[int],
    *,
    clients: bool = True,
    mode: Literal["blackhole", "cut", "drop"] = "blackhole",
) -> _Fault:
    """Isolate ``servers`` (indexes) from the other servers for a ``with`` block.

    Args:
        cluster: a :class:`ProxiedCluster`.
        servers: the side cut off (the others stay connected to each other).
        clients: also fault the proxied client connections of ``servers``
            (:meth:`ProxiedCluster.client_url`); ``False``: routes only.
        mode: ``"blackhole"`` (sockets stay open, nothing flows: what a network
            partition looks like), ``"cut"`` (connections closed, new ones refused) or
            ``"drop"``.

    Returns:
        A context manager (sync and async); its ``heal()`` ends the partition early.
    """
    group = set(servers)
    others = set(range(cluster.size)) - group
    if not group or not group <= set(range(cluster.size)):
        raise ConfigurationError(f"servers must be indexes of the cluster (0..{cluster.size - 1}), not {servers!r}")

    def apply() -> list[Proxy]:
        chosen = cluster.links_between(group, others)
        if clients:
            chosen += [p for i in group for p in cluster.client_proxies(i)]
        for proxy in chosen:
            getattr(proxy, mode)()
        return chosen

    return _Fault(apply)


def one_way(cluster: ProxiedCluster, source: int, target: int) -> _Fault:
    """Blackhole the route bytes from server ``source`` to server ``target`` (the other
    way keeps flowing) for a ``with`` block."""

    def apply() -> list[Proxy]:
        there, back = cluster.link(source, target), cluster.link(target, source)
        there.block("up")  # source dialed target: source's bytes go up
        back.block("down")  # target dialed source: source's bytes come back down
        return [there, back]

    return _Fault(apply)
