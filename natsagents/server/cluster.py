"""A local cluster of ``nats-server`` processes with JetStream, for tests and chaos.

Every node's ports are picked before any node starts, so each node's route list names
all the others. :meth:`NatsCluster.start` launches all nodes at once (a JetStream node
is not healthy until a meta leader exists, which needs a quorum) and then waits until
the cluster can take writes: ``/healthz`` answers 200 on every node, each node has
routes to every other live node (``/routez``) and knows the meta leader (``/jsz``), and the
meta leader counts every other live node as a current peer (else an R3 stream created at
once fails: "no suitable peers for placement, peer offline").
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, ServerError
from .process import (
    _POLL_FIRST,
    _POLL_MAX,
    _REQUEST_TIMEOUT,
    NatsServer,
    _ContextManaged,
    _free_ports,
    _get_json,
)

__all__ = ["NatsCluster"]


class NatsCluster(_ContextManaged):
    """``size`` ``nats-server`` nodes on loopback, routed to each other.

    Args:
        size: number of nodes. ``1`` gives a single JetStream server without a
            cluster block.
        name: cluster name; node ``i`` is named ``f"{name}-{i}"``.
        jetstream: enable JetStream on every node.
        max_payload: every node's ``max_payload`` in bytes.
        config_extra: config text appended verbatim to every node's config.
        include: a config file every node includes (see :class:`NatsServer`).
        binary: path of the ``nats-server`` binary; searched for when ``None``.
        base_dir: when given, node ``i`` stores JetStream data in ``base_dir/<name>-<i>``
            (kept after stop); otherwise each node uses a temporary directory.
        route_via: ``route_via(i, j, port)`` returns the port node ``i`` dials to reach
            node ``j``'s route port ``port`` (a proxy's, for partitions in tests: see
            ``natsagents.testing.proxy``); ``None``: direct.
        route_advertise: the route address (``host:port``) every node advertises to the
            others; with ``route_via``, one that leads nowhere keeps gossip from telling a
            node a direct way around the proxies.
        ping_interval, ping_max: every node's client ping settings (see :class:`NatsServer`).
        no_advertise: ``cluster { no_advertise: true }`` on every node (clients are not
            told the other servers' URLs).

    Raises:
        ConfigurationError: ``size`` is smaller than 1.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        name: str = "natsagents",
        jetstream: bool = True,
        max_payload: int | None = None,
        config_extra: str = "",
        include: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        base_dir: str | None = None,
        route_via: Callable[[int, int, int], int] | None = None,
        route_advertise: str | None = None,
        ping_interval: float | None = None,
        ping_max: int | None = None,
        no_advertise: bool = False,
    ) -> None:
        if size < 1:
            raise ConfigurationError(f"a cluster needs at least one node, not {size}")
        self.name = name
        self._jetstream = jetstream
        clustered = size > 1
        ports = iter(_free_ports(size * (3 if clustered else 2)))
        client = [next(ports) for _ in range(size)]
        monitor = [next(ports) for _ in range(size)]
        routing = [next(ports) for _ in range(size)] if clustered else []
        self.servers: list[NatsServer] = []
        for i in range(size):
            node_name = f"{name}-{i}"
            self.servers.append(
                NatsServer(
                    port=client[i],
                    monitor_port=monitor[i],
                    name=node_name,
                    store_dir=Path(base_dir) / node_name if base_dir is not None else None,
                    jetstream=jetstream,
                    cluster_name=name if clustered else None,
                    cluster_port=routing[i] if clustered else None,
                    routes=[
                        f"nats-route://127.0.0.1:{port if route_via is None else route_via(i, j, port)}"
                        for j, port in enumerate(routing)
                        if j != i
                    ],
                    cluster_advertise=route_advertise if clustered else None,
                    cluster_no_advertise=no_advertise,
                    max_payload=max_payload,
                    ping_interval=ping_interval,
                    ping_max=ping_max,
                    config_extra=config_extra,
                    include=include,
                    binary=binary,
                )
            )
        self._started = False
        self._closed = False
        self._lock = threading.RLock()

    @property
    def size(self) -> int:
        """Number of nodes."""
        return len(self.servers)

    @property
    def urls(self) -> list[str]:
        """Client URL of every node, in node order."""
        return [server.url for server in self.servers]

    @property
    def url(self) -> str:
        """All client URLs joined by commas (what ``nats.connect`` accepts)."""
        return ",".join(self.urls)

    def __repr__(self) -> str:
        return f"<NatsCluster {self.name} size={self.size} {self.url}>"

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Launch every node, then wait until the cluster is formed (see :meth:`wait_ready`).

        Args:
            timeout: seconds for the whole start.

        Returns:
            ``self``.

        Raises:
            ServerBinaryNotFound: no ``nats-server`` binary.
            ServerError: already started or closed, a node exited, or the cluster did not
                form in time (the message holds the relevant log tails). The nodes are
                stopped (not cleaned up: call :meth:`stop` for that).
        """
        with self._lock:
            self._check_can_start()
            self._started = True
            try:
                for server in self.servers:
                    server._spawn()
                self.wait_ready(timeout)
            except BaseException:
                self._stop_nodes(cleanup=False)
                raise
            return self

    def wait_ready(self, timeout: float) -> None:
        """Wait until every live node is healthy and the cluster can take writes.

        A node that was killed or stopped on purpose (or is paused) is left out; a node
        that crashed is an error. For each other node: ``/healthz`` answers 200, ``/routez``
        lists a route to every other live node and ``/jsz`` names a meta leader, which counts
        every other live node as a current peer.

        Args:
            timeout: seconds to wait.

        Raises:
            ServerError: a node exited, or the conditions did not hold in time.
        """
        deadline = time.monotonic() + timeout
        live = [s for s in self.servers if s._should_run and not s.paused]
        for server in live:
            server.wait_ready(max(0.0, deadline - time.monotonic()))
        if self.size == 1:
            return
        delay = _POLL_FIRST
        while True:
            waiting: dict[NatsServer, str] = {}
            for server in live:
                server._check_alive()
                problem = self._node_problem(server, live, deadline)
                if problem is not None:
                    waiting[server] = problem
            if not waiting:
                return
            if time.monotonic() >= deadline:
                details = "\n".join(
                    f"--- {node.name}: {problem}; last lines of {node.log_path} ---\n" + node.log_tail(10)
                    for node, problem in waiting.items()
                )
                raise ServerError(f"cluster {self.name} not formed after {timeout:.1f}s\n{details}")
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 1.5, _POLL_MAX)

    def stop(self) -> None:
        """Stop every node (in parallel) and remove their temporary directories. Idempotent."""
        with self._lock:
            self._stop_nodes(cleanup=True)
            self._closed = True

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (a crash).

        Raises:
            IndexError: no node ``i``.
            ServerError: the node is not running.
        """
        self._node(i).kill()

    def pause(self, i: int) -> None:
        """SIGSTOP node ``i``: it keeps its sockets but answers nothing.

        Raises:
            IndexError: no node ``i``.
            ServerError: the node is not running.
        """
        self._node(i).pause()

    def resume(self, i: int) -> None:
        """SIGCONT node ``i``.

        Raises:
            IndexError: no node ``i``.
            ServerError: the node is not running.
        """
        self._node(i).resume()

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Stop node ``i`` if running, start it with the same ports and store, wait for it
        to rejoin (routes to the live nodes, meta leader known).

        Args:
            i: node index.
            timeout: seconds for the node to come back and the cluster to re-form.

        Raises:
            IndexError: no node ``i``.
            ServerError: the node did not come back in time.
        """
        node = self._node(i)
        deadline = time.monotonic() + timeout
        node.restart(timeout)
        self.wait_ready(max(0.0, deadline - time.monotonic()))

    # -- internals ------------------------------------------------------------------

    def _node(self, i: int) -> NatsServer:
        if not -self.size <= i < self.size:
            raise IndexError(f"cluster {self.name} has nodes 0..{self.size - 1}, not {i}")
        return self.servers[i]

    def _check_can_start(self) -> None:
        if self._closed:
            raise ServerError(f"cluster {self.name} was stopped for good; create a new one")
        if self._started and any(s.running for s in self.servers):
            raise ServerError(f"cluster {self.name} is already running")

    def _start_default(self) -> None:
        self.start()

    def _stop_default(self) -> None:
        self.stop()

    def _stop_nodes(self, *, cleanup: bool) -> None:
        with ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="nats-stop") as pool:
            futures = [pool.submit(s.stop, cleanup=cleanup) for s in self.servers]
        for future in futures:
            future.result()

    def _node_problem(self, server: NatsServer, live: list[NatsServer], deadline: float) -> str | None:
        """Why ``server`` is not ready yet, or ``None`` when it is."""
        timeout = max(0.001, min(_REQUEST_TIMEOUT, deadline - time.monotonic()))
        routez = _get_json(f"{server.monitor_url}/routez", timeout)
        if routez is None:
            return "/routez did not answer"
        peers = {route.get("remote_name") for route in _dicts(routez.get("routes"))}
        missing = sorted(s.name for s in live if s is not server and s.name not in peers)
        if missing:
            return f"no route to {', '.join(missing)}"
        if not self._jetstream:
            return None
        jsz = _get_json(f"{server.monitor_url}/jsz", timeout)
        if jsz is None:
            return "/jsz did not answer"
        meta = jsz.get("meta_cluster")
        if not isinstance(meta, dict) or not meta.get("leader"):
            return "no JetStream meta leader known"
        if meta.get("leader") == server.name:
            # The leader places streams: a peer it does not count as current and online yet
            # fails an R3 stream's creation ("no suitable peers for placement, peer offline").
            replicas = {r.get("name"): r for r in _dicts(meta.get("replicas"))}
            behind = sorted(
                s.name
                for s in live
                if s is not server
                and not (replicas.get(s.name, {}).get("current") and not replicas[s.name].get("offline"))
            )
            if behind:
                return f"the meta leader does not count {', '.join(behind)} as current yet"
        return None


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The dict items of a JSON list (monitoring output is not trusted to be well-formed)."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]
