"""Operating the cluster: ``migrate`` moves an agent, ``drain`` empties a node (showing the
agents left), ``undrain`` lets a drained node take agents again.

Nodes started with trusted operators (``natsagents node --trusted-operator KEY``,
``ClusterSettings(trusted_operators=…)``) obey only requests signed by one of them:
``--identity SEED_FILE`` signs (docs/security.md, "Operator control requests").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING, Any

from ..cluster.settings import STRATEGIES, validate_node_id
from ..cluster.view import ClusterView
from ..errors import NatsAgentsError
from ..wire.identity import Identity
from ..wire.ids import parse_address
from ..wire.subjects import validate_prefix
from .main import Exit, _positive_float, add_connection_options, command, open_mesh, print_json

if TYPE_CHECKING:
    from ..mesh import Mesh

__all__: list[str] = []


def _migrate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", metavar="KIND/ID", help="the agent to move, e.g. Counter/c-1")
    parser.add_argument("node", metavar="NODE", help="the node to move it to")
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="checkpoint_restore",
        help="checkpoint_restore: save, then restore on NODE from the store (default); state_transfer: ship the "
        "in-memory state node to node; cold_start: NODE starts from the last saved state",
    )
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=_positive_float, default=30.0, help="seconds to wait (default: 30)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    _identity_option(parser)
    add_connection_options(parser)


def _identity_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--identity",
        metavar="SEED_FILE",
        default=None,
        help="sign the request with this user nkey seed (a .nk file of 'natsagents auth', or a .creds file): "
        "nodes started with trusted operators obey only requests signed by one of them",
    )


def _signed(args: argparse.Namespace) -> dict[str, Any]:
    """``open_mesh`` options: the ``--identity`` that signs control requests, if any.

    Raises:
        ConfigurationError: not a user seed, or the nkeys package is missing.
    """
    return {} if args.identity is None else {"identity": Identity.from_seed(args.identity)}


@command(
    "migrate",
    help="move an active agent to another node",
    configure=_migrate_options,
    description="Move agent KIND/ID to NODE; callers keep working while it moves. Exit codes: 0 moved (or "
    "already there), 1 the move failed (agent not active, NODE not live or not hosting the kind) or was "
    "refused (unauthorized), 2 bad usage, "
    "3 NATS unreachable, 4 not done within --timeout.",
)
def _migrate(args: argparse.Namespace) -> int:
    kind, agent_id = parse_address(args.address)
    validate_node_id(args.node)
    validate_prefix(args.prefix)
    return asyncio.run(_migrate_async(args, kind, agent_id))


async def _migrate_async(args: argparse.Namespace, kind: str, agent_id: str) -> int:
    async with open_mesh(args, **_signed(args)) as mesh:
        result = await mesh.migrate(kind, agent_id, to=args.node, strategy=args.strategy, timeout=args.timeout)
    if args.json:
        print_json(result)
    elif result.get("moved", True):
        pause = float(result.get("pause_ms", 0.0))
        print(
            f"moved {kind}/{agent_id} from {result.get('from')} to {result.get('to')} (pause {pause:.1f} ms)",
            flush=True,
        )
    else:
        print(f"{kind}/{agent_id} is already on {result.get('to', args.node)}", flush=True)
    return Exit.OK


def _drain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", metavar="NODE", help="the node to drain")
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=_positive_float, default=300.0, help="seconds to wait (default: 300)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the agents left on the node while it drains, on stderr (default: when stderr is a terminal "
        "and without --json)",
    )
    _identity_option(parser)
    add_connection_options(parser)


@command(
    "drain",
    help="move every agent off a node and stop it taking new ones",
    configure=_drain_options,
    description="Drain NODE: it takes no new agents and moves its agents to other nodes (those no node can take "
    "stop, with their state saved), showing how many are left. The node keeps running; 'natsagents undrain "
    "NODE' lets it take agents again. Exit codes: 0 drained, 1 the node is not running, failed or refused "
    "(unauthorized), 2 bad usage, 3 NATS unreachable, 4 not done within --timeout.",
)
def _drain(args: argparse.Namespace) -> int:
    validate_node_id(args.node)
    validate_prefix(args.prefix)
    return asyncio.run(_drain_async(args))


async def _drain_async(args: argparse.Namespace) -> int:
    show = args.progress if args.progress is not None else sys.stderr.isatty() and not args.json
    async with open_mesh(args, **_signed(args)) as mesh:
        if show:
            result = await _drain_with_progress(mesh, args.node, args.timeout)
        else:
            result = await mesh.drain(args.node, timeout=args.timeout)
    if args.json:
        print_json(result)
    else:
        node, moved, stopped = result.get("node", args.node), result.get("moved"), result.get("stopped")
        print(f"drained {node}: moved {moved}, stopped {stopped}", flush=True)
    return Exit.OK


async def _agents_left(view: ClusterView, node: str) -> int | None:
    """How many agents ``node`` holds now (its ``info``), or ``None`` when it does not say."""
    try:
        info = await view.info(node, timeout=2.0)
    except NatsAgentsError:
        return None
    agents = info.get("agents")
    return len(agents) if isinstance(agents, list) else None


async def _drain_with_progress(mesh: Mesh, node: str, timeout: float) -> dict[str, Any]:
    """``mesh.drain(node)`` while a progress bar (rich, on stderr) shows the agents left on
    ``node``, asked every quarter second until the drain answers."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    view = ClusterView(mesh.transport, mesh.prefix)
    before = await _agents_left(view, node)
    total = before or 0
    drain = asyncio.ensure_future(mesh.drain(node, timeout=timeout))
    columns = (
        TextColumn("draining {task.fields[node]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("moved or stopped, {task.fields[left]} agents left"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
            task = progress.add_task("drain", total=total, node=node, left="?" if before is None else before)
            while not drain.done():
                await asyncio.wait({drain}, timeout=0.25)
                left = await _agents_left(view, node)
                if left is not None:
                    total = max(total, left)
                    progress.update(task, total=total, completed=total - left, left=left)
            result = drain.result()  # raises what the drain raised
            left = await _agents_left(view, node)
            if left is not None:
                total = max(total, left)
                progress.update(task, total=total, completed=total - left, left=left)
    finally:
        if not drain.done():
            drain.cancel()
            with contextlib.suppress(BaseException):
                await drain
    return result


def _undrain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", metavar="NODE", help="the drained node")
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=_positive_float, default=30.0, help="seconds to wait (default: 30)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    _identity_option(parser)
    add_connection_options(parser)


@command(
    "undrain",
    help="let a drained node take new agents again",
    configure=_undrain_options,
    description="Undrain NODE: it takes new agents again (placement and, with rebalancing on, its share of the "
    "agents); the agents it moved away stay where they went until the rebalancer moves some back. A drain "
    "still under way moves no more agents. Exit codes: 0 done (also when NODE was not draining), 1 the node "
    "is not running, closing or refused (unauthorized), 2 bad usage, 3 NATS unreachable, 4 no answer within "
    "--timeout.",
)
def _undrain(args: argparse.Namespace) -> int:
    validate_node_id(args.node)
    validate_prefix(args.prefix)
    return asyncio.run(_undrain_async(args))


async def _undrain_async(args: argparse.Namespace) -> int:
    async with open_mesh(args, **_signed(args)) as mesh:
        result = await mesh.undrain(args.node, timeout=args.timeout)
    if args.json:
        print_json(result)
    elif result.get("undrained"):
        print(f"undrained {result.get('node', args.node)}: it takes new agents again", flush=True)
    else:
        print(f"{result.get('node', args.node)} was not draining: nothing to do", flush=True)
    return Exit.OK
