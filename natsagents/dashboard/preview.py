"""Decoded values (agent state, message bodies) as bounded JSON for the page.

State and dead-letter bodies are arbitrary msgpack written by agents and peers: the
page gets a JSON rendition cut to a budget of characters, with bytes as base64, times
as ISO 8601, non-string map keys as JSON text, and ``truncated`` saying something was
left out. Nothing here evaluates or trusts the value.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["Preview", "preview"]

MAX_DEPTH = 32
MAX_STRING = 4096


class Preview:
    """A JSON-able rendition of a value and whether it was cut."""

    __slots__ = ("budget", "truncated", "value")

    def __init__(self, value: Any, budget: int) -> None:
        self.budget = budget
        self.truncated = False
        self.value = self._convert(value, 0)

    def _spend(self, n: int) -> bool:
        self.budget -= n
        if self.budget < 0:
            self.truncated = True
            return False
        return True

    def _convert(self, value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            self.truncated = True
            return "…"
        if value is None or isinstance(value, bool):
            self._spend(5)
            return value
        if isinstance(value, int):
            self._spend(len(str(value)) if abs(value) < 10**30 else 32)
            return value if abs(value) < 2**53 else str(value)
        if isinstance(value, float):
            self._spend(24)
            return value if math.isfinite(value) else str(value)
        if isinstance(value, str):
            return self._string(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            cut = raw[: MAX_STRING * 3 // 4]
            if len(cut) < len(raw):
                self.truncated = True
            self._spend(len(cut) * 4 // 3 + 16)
            return {"$bytes": base64.b64encode(cut).decode("ascii"), "length": len(raw)}
        if isinstance(value, (datetime.datetime, datetime.date)):
            self._spend(32)
            return value.isoformat()
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for k, v in value.items():
                if not self._spend(4):
                    break
                key = k if isinstance(k, str) else json.dumps(self._convert(k, depth + 1), ensure_ascii=False)
                out[self._string(key)] = self._convert(v, depth + 1)
            return out
        if isinstance(value, (list, tuple, set, frozenset)):
            items: list[Any] = []
            for v in value:
                if not self._spend(2):
                    break
                items.append(self._convert(v, depth + 1))
            return items
        return self._string(f"<{type(value).__name__}>")

    def _string(self, text: str) -> str:
        if len(text) > MAX_STRING:
            self.truncated = True
            text = text[:MAX_STRING] + "…"
        if not self._spend(len(text) + 2):
            keep = max(0, len(text) + self.budget)
            return text[:keep] + "…"
        return text


def preview(value: Any, budget: int = 64 * 1024) -> dict[str, Any]:
    """``{"value": …, "truncated": bool}`` for a decoded value, about ``budget``
    characters of JSON at most."""
    p = Preview(value, budget)
    return {"value": p.value, "truncated": p.truncated}
