"""The public surface: curated exports, layering rules, the exception tree."""

from __future__ import annotations

import ast
import inspect
from collections import deque
from pathlib import Path

import natsagents
import natsagents.errors as errors

PACKAGE = Path(natsagents.__file__).parent

# Lower layers never import higher ones (ARCHITECTURE: "Layers").
LAYER_ORDER = [
    "errors",
    "tasks",
    "wire",
    "crdt",
    "resilience",
    "transport",
    "counters",
    "server",
    "agent",
    "observability",
    "runtime",
    "state",
    "delivery",
    "cluster",
    "mesh",
    "dashboard",
    "cli",
    "testing",
]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.add(node.module)
            elif node.level > 0:
                rel = path.relative_to(PACKAGE).parent.parts
                base = rel[: len(rel) - (node.level - 1)] if node.level > 1 else rel
                mod = ".".join(("natsagents", *base, *(node.module.split(".") if node.module else [])))
                found.add(mod)
    return found


def test_all_is_complete_and_importable() -> None:
    assert len(set(natsagents.__all__)) == len(natsagents.__all__)
    public = {n for n in vars(natsagents) if not n.startswith("_") and not inspect.ismodule(getattr(natsagents, n))}
    assert public - {"annotations"} == set(natsagents.__all__) - {"__version__"}
    for name in natsagents.__all__:
        assert hasattr(natsagents, name), name


def test_only_transport_imports_nats_py() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "transport":
            continue
        if any(mod == "nats" or mod.startswith("nats.") for mod in _imports(path)):
            offenders.append(str(rel))
    assert offenders == []


def _layer(rel: Path) -> str:
    return rel.parts[0].removesuffix(".py")


def test_lower_layers_never_import_higher_ones() -> None:
    rank = {name: i for i, name in enumerate(LAYER_ORDER)}
    problems = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        own = _layer(rel)
        if own in ("__init__", "__main__", "py.typed"):
            continue
        assert own in rank, f"{rel}: its folder or module is not in LAYER_ORDER"
        for mod in _imports(path):
            if not mod.startswith("natsagents."):
                continue
            other = mod.split(".")[1]
            if other in rank and rank[other] > rank[own]:
                problems.append(f"{rel} imports {mod}")
    assert problems == []


# Inside transport/: connection on settings, JetStream on the connection, KV on JetStream.
TRANSPORT_ORDER = ["settings", "connection", "jetstream", "kv"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module → the modules of natsagents it imports, wherever the import statement is
    (module level, in a function, under ``if TYPE_CHECKING:``). ``from pkg import name``
    counts as importing ``pkg`` (its ``__init__``, whose own imports then count) and, when
    ``name`` is a submodule, ``pkg.name``. A module's own packages are left out (Python
    imports them first anyway)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in paths and m != name and not name.startswith(m + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, …, a]``) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        start = min(component)
        came_from: dict[str, str] = {}
        queue = deque([start])
        while queue:  # the shortest way back to start, inside the component
            v = queue.popleft()
            if start in graph[v]:
                path = [v]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                cycles.append([*reversed(path), start])
                break
            for w in sorted(graph[v] & component):
                if w not in came_from and w != start:
                    came_from[w] = v
                    queue.append(w)
    return sorted(cycles)


def _show(cycles: list[list[str]]) -> str:
    return "import cycles:\n" + "\n".join("  " + " -> ".join(cycle) for cycle in cycles)


def test_transport_has_no_import_cycle() -> None:
    cycles = [c for c in _cycles(_import_graph()) if any(m.startswith("natsagents.transport") for m in c)]
    assert cycles == [], _show(cycles)


def test_no_import_cycles() -> None:
    """No module of natsagents imports itself through others (TYPE_CHECKING imports and
    imports inside functions included): the knots cannot come back."""
    cycles = _cycles(_import_graph())
    assert cycles == [], _show(cycles)


def test_transport_layers_point_down() -> None:
    rank = {name: i for i, name in enumerate(TRANSPORT_ORDER)}
    problems = []
    for module, imported in _import_graph().items():
        parts = module.split(".")
        if parts[:2] != ["natsagents", "transport"] or len(parts) < 3 or parts[2] not in rank:
            continue
        for other in imported:
            theirs = other.split(".")
            if theirs[:2] == ["natsagents", "transport"] and len(theirs) > 2 and theirs[2] in rank:
                if rank[theirs[2]] > rank[parts[2]]:
                    problems.append(f"{module} imports {other}")
    assert problems == []


def test_exception_tree() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if inspect.isclass(obj):
            assert issubclass(obj, errors.NatsAgentsError), name
    assert issubclass(errors.CallTimeout, TimeoutError)
    assert issubclass(errors.ConfigurationError, ValueError)
    assert issubclass(errors.ActionDefinitionError, TypeError)
    assert issubclass(errors.ConnectError, ConnectionError)
    codes = {errors.error_for_code(code, "m").code for code in errors.ERROR_CODES}
    assert codes == {
        "bad_request",
        "unknown_action",
        "not_found",
        "handler_error",
        "timeout",
        "overloaded",
        "unavailable",
        "payload_too_large",
        "unauthorized",
        "at_capacity",
        "already_applied",
        "circuit_open",
        "partition",
        "queued",
        "degraded",
    }
    err = errors.error_for_code("at_capacity", "full", details={"kind": "K", "rejected": {"n1": "no gpu"}})
    assert isinstance(err, errors.ClusterAtCapacity) and err.kind == "K" and dict(err.rejected) == {"n1": "no gpu"}


def test_jetstream_and_kv_errors_are_one_family_in_the_tree() -> None:
    from natsagents.transport import jetstream, kv

    assert kv.KvError is jetstream.JetStreamError is errors.JetStreamError
    assert issubclass(errors.JetStreamError, errors.TransportError)
    for name in ("StreamNotFound", "ConsumerNotFound", "MalformedAckSubject"):
        assert getattr(jetstream, name) is getattr(errors, name)
    assert kv.CasConflict is errors.CasConflict and kv.KeyNotFound is errors.KeyNotFound
    assert issubclass(jetstream.PublishBatchError, errors.JetStreamError)
    family = [c.__name__ for c in (*errors.JetStreamError.__subclasses__(), errors.KeyNotFound)]
    assert set(family) >= {"StreamNotFound", "ConsumerNotFound", "MalformedAckSubject", "CasConflict", "KeyNotFound"}
    tree = errors.__doc__ or ""
    for name in (*family, "JetStreamError", "PublishBatchError"):
        assert f"── {name}" in tree, f"{name} is not drawn in the errors.py tree"


def test_py_typed_marker_is_shipped() -> None:
    assert (PACKAGE / "py.typed").exists()
