"""Who may call an action: caller policies (``@action(allow=…)``, ``Agent.allow``, the
mesh's ``default_allow``) and the verified callers they are checked against.

A policy is written as a list of entries, any of which admits a caller:

* ``"ops"``: the caller whose verified identity has that name;
* ``"role:admin"``: any verified caller with that role;
* ``"key:UABC…"``: the caller signing with that public nkey;
* ``"*"``: any verified caller.

``[]`` admits nobody; ``"anyone"`` (also :data:`ANYONE`) admits every request, signed or
not, as without a policy; ``None`` means "not set here": an action without ``allow``
takes its kind's, a kind without one takes the mesh's default. Values are checked when
the class is defined (``ActionDefinitionError``) or the mesh connects
(``ConfigurationError``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..wire.identity import decode_public_key

__all__ = [
    "ANYONE",
    "AllowSpec",
    "Policy",
    "TrustedCaller",
    "TrustedCallersSpec",
    "parse_allow",
    "parse_trusted_callers",
    "validate_name",
]

#: ``allow=ANYONE``: every request, signed or not (the default when nothing is set).
ANYONE = "anyone"
#: What ``allow`` takes: ``None``, ``"anyone"`` or a collection of entries.
AllowSpec = Iterable[str] | str | None

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")


def validate_name(name: object, what: str) -> str:
    """Check an identity or role name: 1-128 of ``[A-Za-z0-9_.@-]``, starting with a
    letter or digit, not ``anyone``.

    Raises:
        ConfigurationError: anything else.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name == ANYONE:
        raise ConfigurationError(
            f"invalid {what} {name!r}: use 1-128 characters [A-Za-z0-9_.@-] starting with a letter or digit"
            f" (not {ANYONE!r})"
        )
    return name


@dataclass(frozen=True, slots=True)
class TrustedCaller:
    """A caller a host trusts: the name its signed requests are known by
    (``self.context.caller_identity``) and its roles (``"role:…"`` policy entries).

    Raises:
        ConfigurationError: an invalid name or role.
    """

    name: str
    roles: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        validate_name(self.name, "caller name")
        if isinstance(self.roles, str) or not isinstance(self.roles, Iterable):
            raise ConfigurationError(f"roles of {self.name!r} must be a collection of names, not {self.roles!r}")
        roles = frozenset(self.roles)
        for role in roles:
            validate_name(role, "role")
        object.__setattr__(self, "roles", roles)


@dataclass(frozen=True, slots=True)
class Policy:
    """A compiled ``allow`` list (see the module docstring). ``anyone``: no check at all."""

    anyone: bool = False
    any_verified: bool = False
    names: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()

    def admits(self, caller: TrustedCaller | None, key: str | None) -> bool:
        """Whether the verified ``caller`` (signing with ``key``; ``None``: unsigned) may call."""
        if self.anyone:
            return True
        if caller is None:
            return False
        return (
            self.any_verified
            or caller.name in self.names
            or (key is not None and key in self.keys)
            or not self.roles.isdisjoint(caller.roles)
        )


_EVERYONE = Policy(anyone=True)

#: What ``Mesh.connect(trusted_callers=…)`` takes: public user nkey → name or
#: :class:`TrustedCaller`, or the path of a JSON file holding such a map (a caller as
#: ``"name"`` or ``{"name": …, "roles": […]}``).
TrustedCallersSpec = Mapping[str, "str | TrustedCaller"] | str | os.PathLike[str] | None


def parse_trusted_callers(value: TrustedCallersSpec) -> dict[str, TrustedCaller]:
    """Read ``trusted_callers`` (see :data:`TrustedCallersSpec`).

    Raises:
        ConfigurationError: an unreadable file, a key that is not a user public nkey, an
            invalid name or role.
    """
    if value is None:
        return {}
    if isinstance(value, (str, os.PathLike)):
        try:
            loaded = json.loads(Path(value).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"trusted_callers file {value}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigurationError(f"trusted_callers file {value}: a JSON object (public key → caller) is needed")
        value = {
            k: TrustedCaller(v["name"], v.get("roles", frozenset())) if isinstance(v, dict) and "name" in v else v
            for k, v in loaded.items()
        }
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"trusted_callers must be a mapping or a file path, not {type(value).__name__}")
    out: dict[str, TrustedCaller] = {}
    for key, caller in value.items():
        try:
            decode_public_key(key)
        except ConfigurationError as exc:
            raise ConfigurationError(f"trusted_callers: {exc}") from None
        if isinstance(caller, str):
            caller = TrustedCaller(caller)
        if not isinstance(caller, TrustedCaller):
            raise ConfigurationError(f"trusted_callers[{key[:12]}…] must be a name or a TrustedCaller, not {caller!r}")
        out[key] = caller
    return out


def parse_allow(value: Any, where: str) -> Policy | None:
    """Compile an ``allow`` value (``None``: not set).

    Raises:
        ConfigurationError: a malformed value (a bare string other than ``"anyone"``, an
            entry that is not a name, ``role:<name>``, ``key:<user nkey>`` or ``*``).
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value == ANYONE:
            return _EVERYONE
        raise ConfigurationError(
            f"{where}: allow takes a list of callers (allow=[{value!r}]) or {ANYONE!r}, not the string {value!r}"
        )
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise ConfigurationError(f"{where}: allow takes a list of callers or {ANYONE!r}, not {value!r}")
    names: set[str] = set()
    roles: set[str] = set()
    keys: set[str] = set()
    any_verified = False
    for entry in value:
        if not isinstance(entry, str):
            raise ConfigurationError(f"{where}: allow entries are strings, not {entry!r}")
        try:
            if entry == "*":
                any_verified = True
            elif entry.startswith("role:"):
                roles.add(validate_name(entry[5:], "role"))
            elif entry.startswith("key:"):
                decode_public_key(entry[4:])
                keys.add(entry[4:])
            elif entry == ANYONE:
                raise ConfigurationError(f"{ANYONE!r} stands alone: allow={ANYONE!r}, not a list holding it")
            else:
                names.add(validate_name(entry, "caller name"))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: allow entry {entry!r}: {exc}") from None
    return Policy(False, any_verified, frozenset(names), frozenset(roles), frozenset(keys))
