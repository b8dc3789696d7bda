"""OpenTelemetry spans for send / request / handle, with W3C trace context in headers.

When no tracer provider is configured (none injected and no global SDK provider set),
no span objects are made at all: every method below takes and returns ``None`` cheaply.
Setting a global provider later switches tracing on for meshes that did not inject one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["Tracing"]

_propagator = TraceContextTextMapPropagator()
_NO_TRACING = (ProxyTracerProvider, NoOpTracerProvider)


class Tracing:
    """Creates spans through an injectable tracer provider (default: the global one)."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        self._tracer = trace.get_tracer("natsagents", tracer_provider=tracer_provider)
        self._enabled = tracer_provider is not None and not isinstance(tracer_provider, _NO_TRACING)
        self._recheck_at = 0.0 if tracer_provider is None else float("inf")

    @property
    def enabled(self) -> bool:
        """Whether spans are made. With the global provider this is re-read at most once a
        second until a real provider appears (OpenTelemetry sets it only once)."""
        if not self._enabled:
            now = time.monotonic()
            if now >= self._recheck_at:
                self._enabled = not isinstance(trace.get_tracer_provider(), _NO_TRACING)
                self._recheck_at = now + 1.0
        return self._enabled

    def client_span(self, subject: str, kind: str, action: str, agent_id: str, *, send: bool) -> Span | None:
        if not self.enabled:
            return None
        return self._tracer.start_span(
            f"{'send' if send else 'request'} {kind}.{action}",
            kind=SpanKind.PRODUCER if send else SpanKind.CLIENT,
            attributes={
                "messaging.system": "nats",
                "natsagents.agent": f"{kind}/{agent_id}",
                "natsagents.action": action,
                "messaging.destination.name": subject,
            },
        )

    @staticmethod
    def inject(span: Span | None) -> dict[str, str]:
        """``traceparent``/``tracestate`` headers for ``span`` (empty when not recording)."""
        if span is None or not span.get_span_context().is_valid:
            return {}
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def server_span(self, kind: str, action: str, agent_id: str, headers: Mapping[str, str] | None) -> Span | None:
        if not self.enabled:
            return None
        parent: Any = None
        if headers and "traceparent" in headers:
            parent = _propagator.extract(headers)
        return self._tracer.start_span(
            f"handle {kind}.{action}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"natsagents.agent": f"{kind}/{agent_id}", "natsagents.action": action},
        )

    @staticmethod
    def activate(span: Span | None) -> object:
        """Make ``span`` current (calls made by the handler become its children)."""
        if span is None:
            return None
        return otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def deactivate(token: object) -> None:
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    @staticmethod
    def end(span: Span | None, error: BaseException | None = None, code: str | None = None) -> None:
        if span is None:
            return
        if error is not None or code is not None:
            span.set_status(Status(StatusCode.ERROR, code or type(error).__name__))
            if error is not None:
                span.record_exception(error)
            if code is not None:
                span.set_attribute("natsagents.error_code", code)
        span.end()
