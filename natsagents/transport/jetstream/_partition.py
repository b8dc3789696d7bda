"""Partitions: the partition nats-server's ``{{partition(n, …)}}`` subject transform picks."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import ConfigurationError
from ._common import _SUBJECT_TOKEN_RE

_PARTITION_RE = re.compile(r"\{\{\s*partition\(\s*(\d+)\s*(?:,[\s\d,]*)?\)\s*\}\}", re.IGNORECASE)
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def _fnv1a32(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition ``{{partition(partitions, i)}}`` gives a subject whose wildcard
    token ``i`` is ``key``: FNV-1a 32-bit over the token's UTF-8 bytes, mod ``partitions``.

    Args:
        key: the token (text or bytes).
        partitions: the partition count of the transform.

    Raises:
        ConfigurationError: ``partitions`` is not an int >= 1, or ``key`` is not text or bytes.
    """
    if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
        raise ConfigurationError(f"partitions must be an int >= 1, not {partitions!r}")
    if isinstance(key, str):
        key = key.encode()
    elif not isinstance(key, bytes | bytearray):
        raise ConfigurationError(f"a partition key is str or bytes, not {type(key).__name__}")
    return _fnv1a32(key) % partitions


def partition_of_tokens(tokens: Sequence[str], partitions: int) -> int:
    """The partition ``{{partition(partitions, i, j, …)}}`` gives a subject whose wildcard
    tokens ``i, j, …`` are ``tokens`` (in the order the transform names them).

    nats-server concatenates the tokens' bytes with **no separator** and hashes the result
    (FNV-1a 32-bit, mod ``partitions``). So ``("ab", "c")`` and ``("a", "bc")`` always
    share a partition.

    Args:
        tokens: the subject tokens, in the transform's argument order.
        partitions: the partition count of the transform.

    Raises:
        ConfigurationError: a token is empty or holds ``.`` or whitespace (it would not be
            one subject token), or ``partitions`` is invalid.
    """
    if isinstance(tokens, str | bytes):
        raise ConfigurationError("tokens is a sequence of subject tokens, not one string")
    for token in tokens:
        if not isinstance(token, str) or not _SUBJECT_TOKEN_RE.fullmatch(token):
            raise ConfigurationError(f"invalid subject token {token!r}: non-empty, no '.', no whitespace")
    return partition_of("".join(tokens).encode(), partitions)


def _partitions_in(transform: Mapping[str, Any] | None) -> int | None:
    """The partition count of a transform's ``{{partition(n, …)}}``, if it has one."""
    if not transform:
        return None
    found = _PARTITION_RE.search(str(transform.get("dest", "")))
    return int(found.group(1)) if found else None
