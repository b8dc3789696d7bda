"""Connection settings: servers, authentication, TLS, timeouts (frozen values)."""

from __future__ import annotations

import importlib.util
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigurationError

__all__ = ["DEFAULT_URL", "Auth", "ConnectSettings", "resolve_servers"]

DEFAULT_URL = "nats://127.0.0.1:4222"
_SCHEMES = ("nats://", "tls://", "ws://", "wss://")
_TOKEN_RE = re.compile(r"[!-~]+")


def _is_inbox_prefix(prefix: object) -> bool:
    """``_INBOX.`` style: dot-separated printable tokens, ending with ``.``, no wildcards,
    not a system subject (``$…``)."""
    if not isinstance(prefix, str) or not prefix.endswith(".") or prefix.startswith("$") or len(prefix) > 128:
        return False
    return all(_TOKEN_RE.fullmatch(t) and t not in ("*", ">") for t in prefix[:-1].split("."))


@dataclass(frozen=True, slots=True)
class Auth:
    """How to authenticate to NATS. Give one of: user+password, token, nkey seed, creds file.

    Args:
        user, password: plain user/password authentication.
        token: token authentication.
        nkey_seed: an NKEY user seed (the ``SU…`` string) or a path to a file holding it.
        creds_file: a ``.creds`` file (JWT + seed) for decentralised auth.

    Raises:
        ConfigurationError: no method, or more than one, or a half-given user/password.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed: str | None = field(default=None, repr=False)
    creds_file: str | Path | None = None

    def __post_init__(self) -> None:
        methods = [
            self.user is not None or self.password is not None,
            self.token is not None,
            self.nkey_seed is not None,
            self.creds_file is not None,
        ]
        if sum(methods) != 1:
            raise ConfigurationError("Auth takes exactly one of: user+password, token, nkey_seed, creds_file")
        if (self.user is None) != (self.password is None):
            raise ConfigurationError("Auth needs both user and password")
        if self.creds_file is not None and not Path(self.creds_file).is_file():
            raise ConfigurationError(f"creds file {self.creds_file} does not exist")
        if (self.nkey_seed is not None or self.creds_file is not None) and importlib.util.find_spec("nkeys") is None:
            raise ConfigurationError(
                'NKEY and creds authentication need the nkeys package: pip install "natsagents[nkeys]"'
            )


def resolve_servers(servers: str | Sequence[str] | None) -> list[str]:
    """Turn a URL, a comma-separated list, a sequence or ``None`` (``$NATS_URL``) into URLs.

    Raises:
        ConfigurationError: an empty list or a URL with an unknown scheme.
    """
    if servers is None:
        servers = os.environ.get("NATS_URL") or DEFAULT_URL
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    urls: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError(f"server URL must be a str, not {type(item).__name__}")
        url = item.strip()
        if not url:
            continue
        if "://" not in url:
            url = "nats://" + url
        if not url.startswith(_SCHEMES):
            raise ConfigurationError(f"unsupported server URL {url!r}: use nats://, tls://, ws:// or wss://")
        urls.append(url)
    if not urls:
        raise ConfigurationError("no NATS server URL given")
    return urls


@dataclass(frozen=True, slots=True)
class ConnectSettings:
    """Everything the transport needs to connect.

    Args:
        servers: server URLs.
        name: client name shown by the server (``/connz``).
        auth: credentials, or ``None``.
        tls: a client ``ssl.SSLContext`` for TLS / mTLS.
        tls_hostname: server name to verify when it differs from the URL host.
        connect_timeout: seconds to wait for the first connection before failing.
        reconnect_wait: seconds between reconnect attempts to one server.
        max_reconnect_attempts: attempts per server after a disconnect; ``-1`` forever.
        inbox_prefix: prefix of reply subjects (change it where permissions require).
        drain_timeout: seconds closing may spend draining subscriptions before it closes.
        fail_fast: for short-lived clients (the CLI). Connecting fails at once when every
            server fails for a reason waiting cannot cure (the connection is refused: nothing
            listens; unknown host; TLS refused) instead of retrying until
            ``connect_timeout``; after a lost connection each server gets one more try
            (``max_reconnect_attempts``, if it is left at ``-1``) before the connection
            closes, instead of reconnecting forever.
        reply_prefixes: the inbox prefixes (each ending with ``.``) of the reply subjects
            this connection answers requests on, besides its own ``inbox_prefix``. A
            request whose reply subject starts with none of them is dropped unanswered:
            a host publishes replies with its own permissions, so a reply subject like
            ``$KV.…`` would make it write where the caller may not.
    """

    servers: tuple[str, ...]
    name: str | None = None
    auth: Auth | None = None
    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None
    connect_timeout: float = 5.0
    reconnect_wait: float = 0.5
    max_reconnect_attempts: int = -1
    inbox_prefix: str = "_INBOX"
    drain_timeout: float = 5.0
    reply_prefixes: tuple[str, ...] = ("_INBOX.",)
    fail_fast: bool = False

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0:
            raise ConfigurationError("connect_timeout must be > 0")
        if self.reconnect_wait < 0:
            raise ConfigurationError("reconnect_wait must be >= 0")
        if self.drain_timeout <= 0:
            raise ConfigurationError("drain_timeout must be > 0")
        if not _is_inbox_prefix(self.inbox_prefix + "."):
            raise ConfigurationError(f"invalid inbox_prefix {self.inbox_prefix!r}: use tokens like '_INBOX.alice'")
        if isinstance(self.reply_prefixes, str) or not all(_is_inbox_prefix(p) for p in self.reply_prefixes):
            raise ConfigurationError(
                f"reply_prefixes must be inbox prefixes like '_INBOX.' (tokens of printable ASCII,"
                f" ending with '.', not starting with '$'), not {self.reply_prefixes!r}"
            )

    @property
    def answer_prefixes(self) -> tuple[str, ...]:
        """Reply subject prefixes requests may name: ``reply_prefixes`` and our own inbox."""
        own = self.inbox_prefix + "."
        return self.reply_prefixes if own in self.reply_prefixes else (*self.reply_prefixes, own)
