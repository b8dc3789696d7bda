"""Agent kinds, ids and addresses as subject tokens (protocol v1, "Addressing").

A kind is ``[A-Za-z][A-Za-z0-9_-]{0,63}``. An id is any non-empty string of at most
:data:`MAX_ID_CHARS` characters. Ids made only of ``[A-Za-z0-9_-]`` (and not starting
with ``=``) travel as they are; any other id is encoded as ``=`` followed by the
unpadded base64url of its UTF-8 bytes, so every id is exactly one subject token that is
also a valid JetStream KV key.
"""

from __future__ import annotations

import base64
import binascii
import re

from ..errors import InvalidAddress, InvalidAgentId

__all__ = [
    "MAX_ID_CHARS",
    "MAX_TOKEN_BYTES",
    "agent_key",
    "decode_id",
    "encode_id",
    "parse_address",
    "parse_agent_key",
    "validate_kind",
]

MAX_ID_CHARS = 200
#: Longest encoded id token accepted on the wire.
MAX_TOKEN_BYTES = 300

_KIND_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_PLAIN_ID_RE = re.compile(r"[A-Za-z0-9_-]+")
_ENCODED_RE = re.compile(r"=[A-Za-z0-9_-]+")


def validate_kind(kind: object) -> str:
    """Return ``kind`` if it is a valid agent kind.

    Raises:
        InvalidAddress: not a string of 1-64 characters ``[A-Za-z][A-Za-z0-9_-]*``.
    """
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise InvalidAddress(f"invalid agent kind {kind!r}: use 1-64 characters [A-Za-z0-9_-], starting with a letter")
    return kind


def encode_id(agent_id: object) -> str:
    """Return the subject token for ``agent_id``.

    Raises:
        InvalidAgentId: not a string, empty, longer than MAX_ID_CHARS, or not encodable.
    """
    if not isinstance(agent_id, str):
        raise InvalidAgentId(f"agent id must be a str, not {type(agent_id).__name__}")
    if not agent_id:
        raise InvalidAgentId("agent id must not be empty")
    if len(agent_id) > MAX_ID_CHARS:
        raise InvalidAgentId(f"agent id longer than {MAX_ID_CHARS} characters")
    if _PLAIN_ID_RE.fullmatch(agent_id):
        return agent_id
    try:
        raw = agent_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidAgentId(f"agent id {agent_id!r} is not valid Unicode text") from exc
    token = "=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidAgentId(f"agent id too long once encoded ({len(token)} > {MAX_TOKEN_BYTES} bytes)")
    return token


def decode_id(token: str) -> str:
    """Return the agent id carried by a subject token (inverse of :func:`encode_id`).

    Raises:
        InvalidAgentId: the token is not a valid plain or encoded id.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidAgentId("agent id token too long")
    if _PLAIN_ID_RE.fullmatch(token):
        return token
    if not _ENCODED_RE.fullmatch(token):
        raise InvalidAgentId(f"invalid agent id token {token!r}")
    body = token[1:]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        agent_id = raw.decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise InvalidAgentId(f"invalid encoded agent id {token!r}") from exc
    if encode_id(agent_id) != token:
        # Non-canonical encodings would give one agent two addresses.
        raise InvalidAgentId(f"non-canonical encoded agent id {token!r}")
    return agent_id


def agent_key(kind: str, agent_id: str) -> str:
    """``<kind>.<id token>``: the JetStream KV key of one agent (directory, state …).

    Raises:
        InvalidAddress, InvalidAgentId: the kind or id is not valid.
    """
    return f"{validate_kind(kind)}.{encode_id(agent_id)}"


def parse_agent_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`agent_key`. Raises: InvalidAddress, InvalidAgentId."""
    kind, _, token = key.partition(".")
    return validate_kind(kind), decode_id(token)


def parse_address(address: str) -> tuple[str, str]:
    """Split ``"Kind/id"`` into ``(kind, id)``; the id may itself contain ``/``.

    Raises:
        InvalidAddress: no ``/``, or an invalid kind or id.
    """
    if not isinstance(address, str) or "/" not in address:
        raise InvalidAddress(f"agent address must look like 'Kind/id', got {address!r}")
    kind, _, agent_id = address.partition("/")
    validate_kind(kind)
    encode_id(agent_id)
    return kind, agent_id
