"""The public surface: curated exports, layering rules, the exception tree."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import natsagents
import natsagents.errors as errors

PACKAGE = Path(natsagents.__file__).parent

# Lower layers never import higher ones (ARCHITECTURE: "Layers").
LAYER_ORDER = [
    "errors",
    "tasks",
    "wire",
    "resilience",
    "transport",
    "server",
    "agent",
    "observability",
    "runtime",
    "state",
    "delivery",
    "cluster",
    "mesh",
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
    }
    err = errors.error_for_code("at_capacity", "full", details={"kind": "K", "rejected": {"n1": "no gpu"}})
    assert isinstance(err, errors.ClusterAtCapacity) and err.kind == "K" and dict(err.rejected) == {"n1": "no gpu"}


def test_py_typed_marker_is_shipped() -> None:
    assert (PACKAGE / "py.typed").exists()
