"""Shared constants and argument checks of the JetStream client."""

from __future__ import annotations

import re

from ...errors import ConfigurationError

_NS = 1_000_000_000
_NAME_RE = re.compile(r"[a-zA-Z0-9_-]+")
_SUBJECT_TOKEN_RE = re.compile(r"[^\s.]+")
_LOOKUP_TIMEOUT = 1.0  # the stream lookup after "no responders"


def _name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ConfigurationError(f"invalid {kind} name {value!r}: use [a-zA-Z0-9_-]+")
    return value


def _seconds(label: str, value: float) -> int:
    """Seconds (> 0) → nanoseconds for the wire."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ConfigurationError(f"{label} must be > 0 seconds, not {value!r}")
    return round(value * _NS)


def _subject(label: str, value: object, *, wildcards: bool = True) -> str:
    if not isinstance(value, str) or not value or any(not _SUBJECT_TOKEN_RE.fullmatch(t) for t in value.split(".")):
        raise ConfigurationError(f"invalid {label} {value!r}: dot-separated tokens, no spaces")
    if not wildcards and any(t in ("*", ">") for t in value.split(".")):
        raise ConfigurationError(f"{label} {value!r} cannot contain wildcards")
    return value
