"""Resilience for callers: retry policies and circuit breakers (bulkheads are a host
option: ``Agent.bulkhead`` and ``@action(bulkhead=…)``)."""

from .breaker import Breakers, BreakerSettings, CircuitState
from .retry import RetryPolicy

__all__ = ["BreakerSettings", "Breakers", "CircuitState", "RetryPolicy"]
