"""OpenTelemetry spans for send / request / handle, with W3C trace context in headers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["Tracing"]

_propagator = TraceContextTextMapPropagator()


class Tracing:
    """Creates spans through an injectable tracer provider (default: the global one)."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("natsagents", tracer_provider=tracer_provider)

    def client_span(self, name: str, kind: str, action: str, agent_id: str, *, send: bool) -> Span:
        return self._tracer.start_span(
            f"{'send' if send else 'request'} {kind}.{action}",
            kind=SpanKind.PRODUCER if send else SpanKind.CLIENT,
            attributes={
                "messaging.system": "nats",
                "natsagents.agent": f"{kind}/{agent_id}",
                "natsagents.action": action,
                "messaging.destination.name": name,
            },
        )

    def inject(self, span: Span) -> dict[str, str]:
        """``traceparent``/``tracestate`` headers for ``span`` (empty when not recording)."""
        if not span.get_span_context().is_valid:
            return {}
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def server_span(self, kind: str, action: str, agent_id: str, headers: Mapping[str, str] | None) -> Span:
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
    def activate(span: Span) -> object:
        """Make ``span`` current (calls made by the handler become its children)."""
        return otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def deactivate(token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]

    @staticmethod
    def end(span: Span, error: BaseException | None = None, code: str | None = None) -> None:
        if error is not None or code is not None:
            span.set_status(Status(StatusCode.ERROR, code or type(error).__name__))
            if error is not None:
                span.record_exception(error)
            if code is not None:
                span.set_attribute("natsagents.error_code", code)
        span.end()
