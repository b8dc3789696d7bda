"""Correlation ids in log records."""

from __future__ import annotations

import logging

from ..agent.context import current_context

__all__ = ["CorrelationIdFilter", "install_correlation_filter"]


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
