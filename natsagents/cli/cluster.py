"""Cluster commands: ``node`` runs a cluster node; ``ls`` and ``nodes`` look at the
cluster from any machine that reaches NATS (``migrate``, ``drain`` and ``undrain``, which
operate it, are in :mod:`natsagents.cli.operate`).

``node`` imports agent classes from Python modules (``--module pkg.mod[:Kind,Kind2]``),
joins the cluster under ``--name`` with the capacity, tags and weight given, hosts the
kinds and runs until SIGTERM or SIGINT; then it drains (hands its agents to other nodes)
and exits 0. A second signal stops it without finishing the drain (exit 130).

Sizes in ``--resources``: plain bytes, or a number with a unit: ``K``, ``M``, ``G``,
``T`` are powers of 1000 and ``Ki``, ``Mi``, ``Gi``, ``Ti`` powers of 1024 (a trailing
``B`` is allowed: ``8GB``, ``512MiB``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import math
import os
import re
import signal
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

from ..agent import Agent
from ..cluster.directory import DirectoryRecord
from ..cluster.settings import ClusterSettings, node_id_from_name, validate_node_id
from ..cluster.view import NodeStatus
from ..errors import ConfigurationError
from ..wire.ids import validate_kind
from ..wire.subjects import validate_prefix
from .main import Exit, _error, _positive_float, add_connection_options, command, open_mesh, print_json

__all__ = [
    "format_resources",
    "format_size",
    "load_agent_classes",
    "parse_resources",
    "parse_size",
    "render_table",
]

# -- parsing --------------------------------------------------------------------------

_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?)?b?", re.IGNORECASE)
_RESOURCE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def parse_size(text: str) -> int:
    """Bytes from ``"8000000"``, ``"8G"`` (10^9), ``"8Gi"`` (2^30), ``"512MiB"`` ….

    Raises:
        ConfigurationError: not a non-negative number with an optional unit.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ConfigurationError(
            f"invalid size {text!r}: use bytes or a number with K, M, G, T (x1000) or Ki, Mi, Gi, Ti (x1024)"
        )
    number, unit = match.groups()
    return round(float(number) * _UNITS[(unit or "").lower()])


def parse_resources(text: str) -> dict[str, Any]:
    """A capacity map (``{"cpu", "memory", "custom"}``) from ``cpu=4,memory=8G,gpu=1``.

    ``cpu`` is in cores (fractions allowed), ``memory`` (or ``mem``) a size as in
    :func:`parse_size`; any other name is a custom resource with a numeric amount.
    Left-out cpu and memory are unlimited.

    Raises:
        ConfigurationError: a malformed item, a name given twice, or a bad amount.
    """
    cpu: float | None = None
    memory: int | None = None
    custom: dict[str, float] = {}
    seen: set[str] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not value:
            raise ConfigurationError(f"--resources items must look like NAME=AMOUNT, got {item!r}")
        key = "memory" if name == "mem" else name
        if key in seen:
            raise ConfigurationError(f"--resources: {key!r} is given twice")
        seen.add(key)
        if key == "memory":
            try:
                memory = parse_size(value)
            except ConfigurationError as exc:
                raise ConfigurationError(f"--resources: memory: {exc}") from None
            continue
        if not _RESOURCE_NAME_RE.fullmatch(key):
            raise ConfigurationError(
                f"--resources: invalid resource name {name!r}: use letters, digits, '_', '.' or '-', "
                "starting with a letter"
            )
        amount = _amount(key, value)
        if key == "cpu":
            cpu = amount
        else:
            custom[key] = amount
    out: dict[str, Any] = {}
    if cpu is not None:
        out["cpu"] = cpu
    if memory is not None:
        out["memory"] = memory
    if custom:
        out["custom"] = custom
    return out


def _amount(name: str, value: str) -> float:
    try:
        amount = float(value)
    except ValueError:
        amount = math.nan
    if not math.isfinite(amount) or amount < 0:
        what = "a number of cores" if name == "cpu" else "a number"
        raise ConfigurationError(f"--resources: {name} must be {what} >= 0, got {value!r}")
    return amount


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# -- loading agent classes ------------------------------------------------------------


def load_agent_classes(specs: Sequence[str]) -> list[type[Agent]]:
    """The agent classes named by ``--module`` specs (``pkg.mod`` or ``pkg.mod:Kind,Kind2``).

    The current directory is put on ``sys.path`` first, so a module next to the caller
    imports. Without kinds, every ``Agent`` subclass defined in the module is taken; a
    kind is matched by its wire name (``cls.kind``) or its name in the module.

    Raises:
        ConfigurationError: a module that does not import, an unknown kind, a module
            with no agents, or one kind given by two different classes.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    chosen: dict[str, type[Agent]] = {}
    for spec in specs:
        module_name, _, kinds_text = spec.partition(":")
        module_name = module_name.strip()
        module = _import(module_name)
        found = _agents_in(module)
        if kinds_text.strip():
            classes = [_pick(module_name, found, kind) for kind in _split_list(kinds_text)]
        else:
            classes = [cls for cls in found.values() if cls.__module__ == module.__name__]
            if not classes:
                raise ConfigurationError(f"module {module_name!r} defines no Agent subclasses")
        for cls in classes:
            other = chosen.get(cls.kind)
            if other is not None and other is not cls:
                raise ConfigurationError(
                    f"kind {cls.kind!r} is given by two classes: {_qualname(other)} and {_qualname(cls)}"
                )
            chosen[cls.kind] = cls
    if not chosen:
        raise ConfigurationError("no agent kinds to host: give --module MODULE[:Kind,...]")
    return sorted(chosen.values(), key=lambda cls: cls.kind)


def _import(module_name: str) -> ModuleType:
    if not module_name:
        raise ConfigurationError("--module needs a module name, e.g. --module myagents or --module pkg.mod:Kind")
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            hint = ""
            if module_name.endswith(".py") or "/" in module_name:
                hint = " (give a module name such as 'myagents' or 'pkg.agents', not a file path)"
            raise ConfigurationError(f"no module named {module_name!r}{hint}") from None
        raise ConfigurationError(f"importing module {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise ConfigurationError(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from None


def _agents_in(module: ModuleType) -> dict[str, type[Agent]]:
    """Agent subclasses reachable in the module's namespace, by attribute name."""
    return {
        name: obj
        for name, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, Agent) and obj is not Agent
    }


def _pick(module_name: str, found: Mapping[str, type[Agent]], kind: str) -> type[Agent]:
    by_kind = [cls for cls in found.values() if cls.kind == kind]
    if by_kind:
        return by_kind[0]
    if kind in found:
        return found[kind]
    known = ", ".join(sorted({cls.kind for cls in found.values()})) or "none"
    raise ConfigurationError(f"module {module_name!r} has no agent kind {kind!r} (its agent kinds: {known})")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# -- output ---------------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces (no trailing blanks)."""
    table = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table)


def format_size(n: int) -> str:
    """Bytes in short form, as :func:`parse_size` reads them: ``8G`` (10^9), ``8Gi`` (2^30), ``1.5G``."""
    for power, unit in ((4, "T"), (3, "G"), (2, "M"), (1, "K")):
        binary, decimal = 1024**power, 1000**power
        if n >= binary and n % binary == 0 and n % decimal != 0:
            return f"{n // binary}{unit}i"
        if n >= decimal:
            value = n / decimal
            return f"{value:.0f}{unit}" if value >= 100 else f"{value:.3g}{unit}"
    return str(n)


def format_resources(capacity: Mapping[str, Any]) -> str:
    """A capacity map in the ``--resources`` syntax (``unlimited`` when it is empty)."""
    parts = []
    cpu = capacity.get("cpu")
    if isinstance(cpu, (int, float)):
        parts.append(f"cpu={cpu:g}")
    memory = capacity.get("memory")
    if isinstance(memory, int):
        parts.append(f"memory={format_size(memory)}")
    custom = capacity.get("custom")
    if isinstance(custom, Mapping):
        parts.extend(f"{name}={amount:g}" for name, amount in sorted(custom.items()))
    return ",".join(parts) or "unlimited"


def _percent(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value * 100:.0f}%"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _agent_json(rec: DirectoryRecord) -> dict[str, Any]:
    return {
        "agent": rec.address,
        "kind": rec.kind,
        "id": rec.agent_id,
        "node": rec.node,
        "epoch": rec.epoch,
        "status": rec.status.value,
        "since": rec.since,
        "restart": rec.restart,
        "needs": dict(rec.needs),
        "hints": dict(rec.hints),
    }


def _node_json(status: NodeStatus) -> dict[str, Any]:
    rec = status.record
    agents = rec.load.get("agents")
    return {
        "node": rec.node_id,
        "live": status.live,
        "age": status.age,
        # A node that is not live: its load is its last heartbeat's, not a current figure.
        "stale": not status.live,
        "agents": agents if status.live and isinstance(agents, int) else None,
        "kinds": list(rec.kinds),
        "capacity": dict(rec.capacity),
        "load": dict(rec.load),
        "tags": list(rec.tags),
        "draining": rec.draining,
        "weight": rec.weight,
        "lease": rec.lease,
        "version": rec.version,
        "started_at": rec.started_at,
        "heartbeat_at": rec.heartbeat_at,
    }


# -- node -----------------------------------------------------------------------------


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--module",
        dest="modules",
        metavar="MODULE[:KIND,...]",
        action="append",
        required=True,
        help="import MODULE (from the current directory or sys.path) and host its agent kinds: all Agent "
        "subclasses it defines, or only the KINDs named (repeatable)",
    )
    parser.add_argument("--name", metavar="NODE", default=None, help="node id, [A-Za-z0-9_-] (default: HOSTNAME-PID)")
    parser.add_argument(
        "--resources",
        metavar="SPEC",
        default="",
        help="capacity, e.g. cpu=4,memory=8G,gpu=1: cpu in cores, memory in bytes or with K/M/G/T (x1000) or "
        "Ki/Mi/Gi/Ti (x1024), other names are custom resources (default: cpu and memory unlimited)",
    )
    parser.add_argument("--tags", metavar="TAGS", default="", help="comma-separated labels placement hints can require")
    parser.add_argument(
        "--lease",
        metavar="SECONDS",
        type=_positive_float,
        default=3.0,
        help="seconds without a heartbeat before the node counts as gone (>= 1, default: 3)",
    )
    parser.add_argument(
        "--weight", type=_positive_float, default=1.0, help="relative size of the node (share of agents, default: 1)"
    )
    parser.add_argument(
        "--no-rebalance", dest="rebalance", action="store_false", help="do not move agents to balance the cluster"
    )
    parser.add_argument(
        "--trusted-operator",
        dest="trusted_operators",
        metavar="KEY",
        action="append",
        default=None,
        help="public user nkey (U...) of an operator whose signed drain, undrain and migrate requests this node "
        "obeys; once one is given, unsigned ones are refused (repeatable; see 'drain --identity')",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="a directory on this machine's disk for the node's degraded write queue; needed to host kinds "
        "with partition_strategy = 'continue_degraded' (docs/consistency.md)",
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        type=_host_port,
        default=None,
        help="serve Prometheus /metrics, /healthz and /readyz there (e.g. 0.0.0.0:9100 for probes)",
    )
    add_connection_options(parser)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. 127.0.0.1:9100, not {value!r}")
    return host or "127.0.0.1", int(port)


@command(
    "node",
    help="run a cluster node hosting agent kinds from Python modules until SIGTERM",
    configure=_node_options,
    description="Import the agent classes of --module, join the cluster as node --name and host them. "
    "Prints 'node NAME ready: kinds ...' once serving. SIGTERM or SIGINT drains the node (its agents move to "
    "other nodes, or stop with their state saved when none can take them) and exits 0; a second signal exits "
    "at once (130). Exit codes: 2 bad usage (module, kind, resources), 3 NATS unreachable.",
)
def _node(args: argparse.Namespace) -> int:
    # Everything that can be wrong with the arguments is found before connecting.
    validate_prefix(args.prefix)
    node_id = validate_node_id(args.name) if args.name is not None else _default_node_id()
    settings = ClusterSettings(
        node_id=node_id,
        lease=args.lease,
        capacity=parse_resources(args.resources),
        tags=_split_list(args.tags),
        weight=args.weight,
        rebalance=args.rebalance,
        trusted_operators=args.trusted_operators,
        data_dir=args.data_dir,
    )
    classes = load_agent_classes(args.modules)
    return asyncio.run(_serve_node(args, node_id, settings, classes))


def _default_node_id() -> str:
    return node_id_from_name(f"{socket.gethostname()}-{os.getpid()}")


async def _serve_node(
    args: argparse.Namespace, node_id: str, settings: ClusterSettings, classes: Sequence[type[Agent]]
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            # A second signal: leave now. Agents still here were neither moved nor saved
            # by this process; other nodes take them over once its lease lapses.
            _error(f"node {node_id} interrupted again: exiting without finishing the drain")
            sys.stdout.flush()
            os._exit(Exit.INTERRUPTED)
        stop.set()

    # Installed before connecting, so that a signal while starting still drains.
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    try:
        # A node outlives server restarts: it waits for a server and reconnects forever.
        async with open_mesh(args, name=node_id, cluster=settings, fail_fast=False) as mesh:
            await mesh.host(*classes)
            if args.http is not None:
                port = await mesh.serve_http(*args.http)
                print(f"node {node_id} serves http://{args.http[0]}:{port}/metrics, /healthz, /readyz", flush=True)
            print(f"node {node_id} ready: kinds {', '.join(cls.kind for cls in classes)}", flush=True)
            await stop.wait()
            result = await mesh.drain()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    print(f"node {node_id} drained: moved {result['moved']}, stopped {result['stopped']}", flush=True)
    return Exit.OK


# -- ls / nodes -----------------------------------------------------------------------


def _ls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", metavar="KIND", default=None, help="only agents of this kind")
    parser.add_argument("--node", metavar="NODE", default=None, help="only agents on this node")
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    add_connection_options(parser)


@command(
    "ls",
    help="list the active agents of the cluster: kind/id, node, status, epoch",
    configure=_ls_options,
    description="List the agents in the cluster directory, sorted by kind and id. "
    "Exit codes: 0 ok, 2 bad usage, 3 NATS unreachable.",
)
def _ls(args: argparse.Namespace) -> int:
    validate_prefix(args.prefix)
    if args.kind is not None:
        validate_kind(args.kind)
    return asyncio.run(_ls_async(args))


async def _ls_async(args: argparse.Namespace) -> int:
    async with open_mesh(args) as mesh:
        records = await mesh.agents()
        # An agent whose owner's lease lapsed (paused, cut off, crashed) is not active: its
        # record stays until another node takes it over (on its next call, or the leader
        # re-places a permanent agent), so its status reads "lapsed" here.
        live = {s.record.node_id for s in await mesh.nodes() if s.live}
    records = [
        r for r in records if (args.kind is None or r.kind == args.kind) and (args.node is None or r.node == args.node)
    ]
    records.sort(key=lambda r: (r.kind, r.agent_id))

    def status(r: DirectoryRecord) -> str:
        return r.status.value if r.node in live else "lapsed"

    if args.json:
        print_json([{**_agent_json(r), "status": status(r), "node_live": r.node in live} for r in records])
    elif not records:
        print("no active agents", flush=True)
    else:
        rows = [(r.address, r.node, status(r), str(r.epoch)) for r in records]
        print(render_table(("KIND/ID", "NODE", "STATUS", "EPOCH"), rows), flush=True)
    return Exit.OK


def _nodes_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    add_connection_options(parser)


@command(
    "nodes",
    help="list the cluster's nodes: liveness, agents, kinds, load, capacity, tags",
    configure=_nodes_options,
    description="List the members of the cluster from their heartbeats: AGENTS, CPU% and MEM% are as of each "
    "node's last heartbeat (at most a lease old while it is live), AGE is that heartbeat's age and LIVE compares "
    "it with the node's lease. A node that is not live shows AGENTS as 'stale' and CPU%/MEM% as '-' (JSON: "
    '"stale": true, "agents": null; its last reported figures stay in "load"). '
    "Exit codes: 0 ok, 2 bad usage, 3 NATS unreachable.",
)
def _nodes(args: argparse.Namespace) -> int:
    validate_prefix(args.prefix)
    return asyncio.run(_nodes_async(args))


async def _nodes_async(args: argparse.Namespace) -> int:
    async with open_mesh(args) as mesh:
        statuses = sorted(await mesh.nodes(), key=lambda s: s.record.node_id)
    if args.json:
        print_json([_node_json(s) for s in statuses])
        return Exit.OK
    if not statuses:
        print("no nodes", flush=True)
        return Exit.OK
    rows = []
    for s in statuses:
        rec = s.record
        agents = rec.load.get("agents")
        rows.append(
            (
                rec.node_id,
                _yes(s.live),
                # A lapsed node's last count is not a current figure (it may have drained since).
                "stale" if not s.live else str(agents) if isinstance(agents, int) else "-",
                ",".join(rec.kinds) or "-",
                _percent(rec.load.get("cpu")) if s.live else "-",
                _percent(rec.load.get("memory")) if s.live else "-",
                format_resources(rec.capacity),
                ",".join(rec.tags) or "-",
                _yes(rec.draining),
                f"{s.age:.1f}s",
            )
        )
    headers = ("NODE", "LIVE", "AGENTS", "KINDS", "CPU%", "MEM%", "CAPACITY", "TAGS", "DRAINING", "AGE")
    print(render_table(headers, rows), flush=True)
    return Exit.OK
