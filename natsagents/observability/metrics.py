"""Prometheus metrics, registered in an injectable registry."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The mesh's metrics.

    Args:
        registry: where to register; default a new private ``CollectorRegistry`` (pass
            ``prometheus_client.REGISTRY`` to export through the global one).

    Series:
        ``natsagents_handled_total{kind,action,outcome}`` messages handled by hosted agents
        ``natsagents_handler_seconds{kind,action}`` handler latency
        ``natsagents_calls_total{kind,action,outcome}`` calls made by this mesh
        ``natsagents_call_seconds{kind,action}`` call latency seen by the caller
        ``natsagents_active_agents{kind}`` active agents hosted here
        ``natsagents_rejected_total{kind,reason}`` messages refused before the handler
        ``natsagents_call_retries_total{kind,reason}`` call attempts repeated by this mesh
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.handled = Counter(
            "natsagents_handled", "Messages handled by hosted agents", ["kind", "action", "outcome"], registry=r
        )
        self.handler_seconds = Histogram(
            "natsagents_handler_seconds", "Handler latency", ["kind", "action"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.calls = Counter("natsagents_calls", "Calls made by this mesh", ["kind", "action", "outcome"], registry=r)
        self.call_seconds = Histogram(
            "natsagents_call_seconds",
            "Call latency seen by the caller",
            ["kind", "action"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.active_agents = Gauge("natsagents_active_agents", "Active agents hosted here", ["kind"], registry=r)
        self.rejected = Counter(
            "natsagents_rejected", "Messages refused before reaching a handler", ["kind", "reason"], registry=r
        )
        self.retries = Counter(
            "natsagents_call_retries",
            "Call attempts repeated (agent not active, no host, agent stopping)",
            ["kind", "reason"],
            registry=r,
        )
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}

    def handled_one(self, kind: str, action: str, outcome: str, seconds: float) -> None:
        key = ("h", kind, action, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = (
                self.handled.labels(kind, action, outcome),
                self.handler_seconds.labels(kind, action),
            )
        counter, hist = child
        counter.inc()
        hist.observe(seconds)

    def called_one(self, kind: str, action: str, outcome: str, seconds: float) -> None:
        key = ("c", kind, action, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = (
                self.calls.labels(kind, action, outcome),
                self.call_seconds.labels(kind, action),
            )
        counter, hist = child
        counter.inc()
        hist.observe(seconds)

    def rejected_one(self, kind: str, reason: str) -> None:
        self.rejected.labels(kind, reason).inc()

    def value(self, name: str, labels: dict[str, str]) -> float:
        """Current value of one sample (``0.0`` if absent); for tests and the CLI."""
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else float(v)
