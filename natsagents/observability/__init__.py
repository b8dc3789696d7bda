"""Observability: Prometheus metrics, OpenTelemetry tracing, correlation-aware logging."""

from .logging import CorrelationIdFilter, install_correlation_filter
from .metrics import Metrics
from .tracing import Tracing

__all__ = ["CorrelationIdFilter", "Metrics", "Tracing", "install_correlation_filter"]
