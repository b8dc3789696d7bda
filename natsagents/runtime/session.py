"""Caller sessions for ``consistency = "session"`` (docs/consistency.md, protocol §19).

A :class:`Session` remembers, per agent, the highest state version (``Na-State-Version``,
the KV revision of the agent's state record) its calls saw in replies, and sends it as
``Na-Min-Version`` with its reads on read subjects: a replica that holds an older state
waits for its watch or forwards the read to the primary. That gives every session
read-your-writes and monotonic reads, wherever its reads are served.

A session can travel between processes as an opaque token (``session.token()`` →
``mesh.session(token=…)``): ``s1.`` + base64url (no padding) of the msgpack array
``[[kind, id, version], …]``. Tokens are bounded (:data:`MAX_TOKEN_AGENTS` agents,
:data:`MAX_TOKEN_CHARS` characters) and validated whole; anything else raises
:class:`~natsagents.InvalidSessionToken`. A token is not a secret and not signed: a
forged one can only make reads wait for (or be forwarded to) the primary.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from typing import Any

from ..errors import InvalidSessionToken, NatsAgentsError
from ..wire import codec
from ..wire.ids import encode_id, validate_kind

__all__ = ["MAX_TOKEN_AGENTS", "MAX_TOKEN_CHARS", "MAX_VERSION", "Session"]

#: Agents a token carries at most (the most recently seen ones).
MAX_TOKEN_AGENTS = 256
#: Characters a token may have at most.
MAX_TOKEN_CHARS = 32 * 1024
#: Versions are KV revisions: positive 64-bit stream sequences.
MAX_VERSION = 2**63 - 1
_TOKEN_PREFIX = "s1."


class Session:
    """What one caller session has seen: the highest state version per agent.

    Args:
        max_agents: agents remembered at most; the least recently seen are forgotten
            first (a forgotten agent's next read may be served by any replica).
    """

    __slots__ = ("_max", "_versions")

    def __init__(self, *, max_agents: int = 10_000) -> None:
        if type(max_agents) is not int or max_agents < 1:
            raise ValueError(f"max_agents must be an int >= 1, not {max_agents!r}")
        self._max = max_agents
        self._versions: OrderedDict[tuple[str, str], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._versions)

    def __repr__(self) -> str:
        return f"Session({len(self._versions)} agents)"

    def version(self, kind: str, agent_id: str) -> int:
        """The highest state version of ``kind/agent_id`` this session saw (0: none)."""
        return self._versions.get((kind, agent_id), 0)

    def observe(self, kind: str, agent_id: str, version: int) -> None:
        """A reply of ``kind/agent_id`` carried state ``version``: remember the highest."""
        key = (kind, agent_id)
        versions = self._versions
        if version <= versions.get(key, 0):
            return
        versions[key] = version
        versions.move_to_end(key)
        if len(versions) > self._max:
            versions.popitem(last=False)

    def token(self) -> str:
        """This session as an opaque string another process can resume with
        ``mesh.session(token=…)`` (the :data:`MAX_TOKEN_AGENTS` most recently seen agents)."""
        items = list(self._versions.items())[-MAX_TOKEN_AGENTS:]
        body = codec.encode([[kind, agent_id, v] for (kind, agent_id), v in items])
        return _TOKEN_PREFIX + base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")

    @classmethod
    def from_token(cls, token: object, *, max_agents: int = 10_000) -> Session:
        """The session a :meth:`token` describes.

        Raises:
            InvalidSessionToken: not a string of this format, too large, or naming an
                invalid kind, id or version. Nothing of a refused token is kept.
        """
        if not isinstance(token, str):
            raise InvalidSessionToken(f"a session token is a string, not {type(token).__name__}")
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidSessionToken(f"session token too long ({len(token)} > {MAX_TOKEN_CHARS} characters)")
        if not token.startswith(_TOKEN_PREFIX):
            raise InvalidSessionToken("not a session token (it must start with 's1.')")
        text = token[len(_TOKEN_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            if not text.isascii() or base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
                raise ValueError("not canonical base64url")
            items: Any = codec.decode(raw, 8 * MAX_TOKEN_AGENTS + 8)
        except (binascii.Error, ValueError, NatsAgentsError) as exc:
            raise InvalidSessionToken(f"session token is not readable: {exc}") from None
        if not isinstance(items, list) or len(items) > MAX_TOKEN_AGENTS:
            raise InvalidSessionToken(f"a session token holds a list of at most {MAX_TOKEN_AGENTS} agents")
        session = cls(max_agents=max_agents)
        for item in items:
            if not isinstance(item, list) or len(item) != 3:
                raise InvalidSessionToken("a session token entry is [kind, id, version]")
            kind, agent_id, version = item
            try:
                validate_kind(kind)
                encode_id(agent_id)
            except (NatsAgentsError, TypeError, ValueError) as exc:
                raise InvalidSessionToken(f"session token names an invalid agent: {exc}") from None
            if type(version) is not int or not 0 < version <= MAX_VERSION:
                raise InvalidSessionToken(f"session token holds an invalid version {version!r}")
            session.observe(kind, agent_id, version)
        return session
