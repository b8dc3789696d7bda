"""Parameter validation from type hints.

Every ``@action`` parameter gets a validator built once, when the agent class is
defined, from its annotation. A validator checks (and, where msgpack loses the type,
converts) one decoded value: arrays to tuples/sets, maps to dataclasses, values to
enums, ints to floats. Unsupported annotations raise ``TypeError`` at definition time.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .policy import Policy

__all__ = ["ActionSpec", "Param", "ParamError", "build_action_spec", "validator_for"]

Validator = Callable[[Any, str], Any]


class ParamError(Exception):
    """A parameter value does not match its annotation."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def _brief(value: Any) -> str:
    """A peer's value in an error message: an array or map by its type (its repr could be
    huge, or nest deeper than the recursion limit allows), anything else cut to 80 characters."""
    if isinstance(value, (list, dict)):
        return _type_name(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _any(value: Any, path: str) -> Any:
    return value


def _scalar(expected: type, name: str) -> Validator:
    def check(value: Any, path: str) -> Any:
        if type(value) is bool and expected is not bool:
            raise ParamError(path, f"expected {name}, got bool")
        if not isinstance(value, expected):
            raise ParamError(path, f"expected {name}, got {_type_name(value)}")
        return value

    return check


def _float(value: Any, path: str) -> Any:
    if type(value) is bool or not isinstance(value, (int, float)):
        raise ParamError(path, f"expected float, got {_type_name(value)}")
    return float(value)


def _bytes(value: Any, path: str) -> Any:
    if not isinstance(value, (bytes, bytearray)):
        raise ParamError(path, f"expected bytes, got {_type_name(value)}")
    return bytes(value)


def _none(value: Any, path: str) -> Any:
    if value is not None:
        raise ParamError(path, f"expected nil, got {_type_name(value)}")
    return None


def _sequence(item: Validator, build: Callable[[list[Any]], Any], name: str) -> Validator:
    if item is _any and build is list:
        return _any_list

    def check(value: Any, path: str) -> Any:
        if not isinstance(value, (list, tuple)):
            raise ParamError(path, f"expected {name}, got {_type_name(value)}")
        return build([item(v, f"{path}[{i}]") for i, v in enumerate(value)])

    return check


def _fixed_tuple(items: Sequence[Validator]) -> Validator:
    def check(value: Any, path: str) -> Any:
        if not isinstance(value, (list, tuple)):
            raise ParamError(path, f"expected array of {len(items)}, got {_type_name(value)}")
        if len(value) != len(items):
            raise ParamError(path, f"expected array of {len(items)}, got {len(value)} items")
        return tuple(v(x, f"{path}[{i}]") for i, (v, x) in enumerate(zip(items, value, strict=False)))

    return check


def _any_map(value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise ParamError(path, f"expected map, got {_type_name(value)}")
    return value


def _any_list(value: Any, path: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ParamError(path, f"expected array, got {_type_name(value)}")
    return list(value)


def _mapping(key: Validator, val: Validator) -> Validator:
    if key is _any and val is _any:
        return _any_map

    def check(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise ParamError(path, f"expected map, got {_type_name(value)}")
        return {key(k, f"{path}.<key>"): val(v, f"{path}.{k}") for k, v in value.items()}

    return check


def _union(options: Sequence[Validator], names: str) -> Validator:
    def check(value: Any, path: str) -> Any:
        for option in options:
            try:
                return option(value, path)
            except ParamError:
                continue
        raise ParamError(path, f"expected {names}, got {_type_name(value)}")

    return check


def _literal(values: tuple[Any, ...]) -> Validator:
    def check(value: Any, path: str) -> Any:
        for allowed in values:
            if value == allowed and type(value) is type(allowed):
                return value
        raise ParamError(path, f"expected one of {list(values)!r}, got {_brief(value)}")

    return check


def _enum(cls: type[enum.Enum]) -> Validator:
    def check(value: Any, path: str) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, (list, dict)):  # the enum's own error would repr a container whole
            try:
                return cls(value)
            except (ValueError, TypeError):
                pass
        raise ParamError(path, f"expected one of {[m.value for m in cls]!r}, got {_brief(value)}")

    return check


def _dataclass(cls: type[Any]) -> Validator:
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        fields.append((f.name, validator_for(hints[f.name]), required))
    names = {name for name, _, _ in fields}

    def check(value: Any, path: str) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ParamError(path, f"expected map for {cls.__name__}, got {_type_name(value)}")
        extra = set(value) - names
        if extra:
            raise ParamError(path, f"unknown fields {sorted(map(str, extra))} for {cls.__name__}")
        kwargs = {}
        for name, validator, required in fields:
            if name in value:
                kwargs[name] = validator(value[name], f"{path}.{name}")
            elif required:
                raise ParamError(f"{path}.{name}", "missing")
        return cls(**kwargs)

    return check


def _datetime(value: Any, path: str) -> Any:
    if not isinstance(value, datetime.datetime):
        raise ParamError(path, f"expected timestamp, got {_type_name(value)}")
    return value


_SCALARS: dict[Any, Validator] = {
    Any: _any,
    object: _any,
    bool: _scalar(bool, "bool"),
    int: _scalar(int, "int"),
    float: _float,
    str: _scalar(str, "str"),
    bytes: _bytes,
    type(None): _none,
    None: _none,
    datetime.datetime: _datetime,
    list: _sequence(_any, list, "array"),
    tuple: _sequence(_any, tuple, "array"),
    dict: _mapping(_any, _any),
}


def validator_for(tp: Any) -> Validator:
    """Build the validator for an annotation.

    Raises:
        TypeError: the annotation is not supported by protocol v1 bodies.
    """
    if tp in _SCALARS:
        return _SCALARS[tp]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return validator_for(args[0])
    if origin in (typing.Union, types.UnionType):
        return _union([validator_for(a) for a in args], " or ".join(_hint_name(a) for a in args))
    if origin is typing.Literal:
        return _literal(args)
    if origin in (list, Sequence, typing.Sequence):
        return _sequence(validator_for(args[0]) if args else _any, list, "array")
    if origin in (set, frozenset):
        return _sequence(validator_for(args[0]) if args else _any, origin, "array")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _sequence(validator_for(args[0]), tuple, "array")
        return _fixed_tuple([validator_for(a) for a in args])
    if origin in (dict, Mapping, typing.Mapping):
        return _mapping(validator_for(args[0]), validator_for(args[1])) if args else _mapping(_any, _any)
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return _enum(tp)
        if dataclasses.is_dataclass(tp):
            return _dataclass(tp)
    raise TypeError(f"unsupported parameter type {tp!r}")


def _hint_name(tp: Any) -> str:
    return "nil" if tp is type(None) else getattr(tp, "__name__", repr(tp))


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    validator: Validator
    required: bool
    default: Any


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """A validated ``@action``: its name, function, parameters and options."""

    name: str
    func: Callable[..., Any]
    params: tuple[Param, ...]
    idempotent: bool
    names: frozenset[str]
    bulkhead: int | None = None  # handlers of this action running at once per host
    allow: Policy | None = None  # who may call it (None: the kind's policy)
    read_only: bool = False  # may run beside other read-only actions; must not change state

    def bind(self, body: Any) -> dict[str, Any]:
        """Check a decoded request body against the parameters; return the kwargs.

        Raises:
            ParamError: not a map, unknown, missing or wrongly typed parameters.
        """
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ParamError("params", f"expected a map of parameters, got {_type_name(body)}")
        known = self.names
        for key in body:
            if key not in known:
                raise ParamError(str(key), "unknown parameter")
        kwargs: dict[str, Any] = {}
        for p in self.params:
            if p.name in body:
                kwargs[p.name] = p.validator(body[p.name], p.name)
            elif p.required:
                raise ParamError(p.name, "missing")
        return kwargs


def build_action_spec(
    name: str,
    func: Callable[..., Any],
    *,
    idempotent: bool,
    bulkhead: int | None = None,
    allow: Policy | None = None,
    read_only: bool = False,
) -> ActionSpec:
    """Check an action method and build its spec.

    Raises:
        TypeError: not ``async def``, ``*args``/``**kwargs`` or positional-only
            parameters, missing or unsupported annotations.
    """
    where = f"action {func.__qualname__}"
    if not inspect.iscoroutinefunction(func):
        raise TypeError(f"{where} must be defined with 'async def'")
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise TypeError(f"{where}: cannot resolve type hints ({exc})") from exc
    sig = inspect.signature(func)
    params: list[Param] = []
    for i, p in enumerate(sig.parameters.values()):
        if i == 0:
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.name != "self":
                raise TypeError(f"{where}: the first parameter must be 'self'")
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{where}: *args/**kwargs are not allowed; declare each parameter")
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(f"{where}: positional-only parameter {p.name!r} is not allowed")
        if p.name.startswith("_"):
            raise TypeError(f"{where}: parameter {p.name!r} must not start with '_'")
        if p.name not in hints:
            raise TypeError(f"{where}: parameter {p.name!r} needs a type annotation")
        try:
            validator = validator_for(hints[p.name])
        except TypeError as exc:
            raise TypeError(f"{where}: parameter {p.name!r}: {exc}") from None
        required = p.default is inspect.Parameter.empty
        params.append(Param(p.name, validator, required, None if required else p.default))
    return ActionSpec(
        name=name,
        func=func,
        params=tuple(params),
        idempotent=idempotent,
        names=frozenset(p.name for p in params),
        bulkhead=bulkhead,
        allow=allow,
        read_only=read_only,
    )
