"""Correlation ids in log records."""

from __future__ import annotations

import logging
import time

from ..agent.context import current_context

__all__ = ["CorrelationIdFilter", "install_correlation_filter", "warn_ignored"]

#: Seconds between two warnings about the same ignored record.
_WARN_EVERY = 60.0
_WARN_KEYS = 4096
_warned: dict[tuple[str, str], float] = {}


def warn_ignored(logger: logging.Logger, what: str, key: str, reason: object) -> None:
    """Log that the stored ``what`` under ``key`` is malformed and ignored: a warning at
    most once a minute per (what, key), so that a hostile writer cannot flood the log;
    debug in between."""
    now = time.monotonic()
    last = _warned.get((what, key))
    text = str(reason)
    if len(text) > 200:
        text = text[:200] + "…"
    if last is not None and now - last < _WARN_EVERY:
        logger.debug("ignoring a malformed %s under %r: %s", what, key, text)
        return
    if len(_warned) >= _WARN_KEYS:
        _warned.clear()
    _warned[(what, key)] = now
    logger.warning("ignoring a malformed %s under %r: %s", what, key, text)


class CorrelationIdFilter(logging.Filter):
    """Adds ``correlation_id``, ``message_id`` and ``agent`` to every record ("-" outside a
    handler), so formats like ``%(correlation_id)s`` work everywhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_context()
        record.correlation_id = ctx.correlation_id if ctx else "-"
        record.message_id = ctx.message_id if ctx else "-"
        if not hasattr(record, "agent"):
            record.agent = ctx.agent if ctx else "-"
        return True


def install_correlation_filter(handler: logging.Handler) -> CorrelationIdFilter:
    """Attach a :class:`CorrelationIdFilter` to ``handler`` (idempotent) and return it."""
    for f in handler.filters:
        if isinstance(f, CorrelationIdFilter):
            return f
    f = CorrelationIdFilter()
    handler.addFilter(f)
    return f
