"""Correlation ids in logs, OpenTelemetry spans across hops, Prometheus metrics."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, generate_latest

import natsagents as na
from natsagents import Agent, action, install_correlation_filter

LOG = logging.getLogger("tests.observability")


class Logger(Agent):
    @action
    async def note(self, text: str) -> str:
        LOG.info("note %s", text)
        self.log.info("agent log")
        return self.context.correlation_id

    @action
    async def relay(self, target: str) -> str:
        LOG.info("relaying")
        result: str = await self.ref(target).call("note", text="nested")
        return result


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def capture() -> Iterator[_Capture]:
    handler = _Capture()
    install_correlation_filter(handler)
    install_correlation_filter(handler)  # idempotent
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    yield handler  # type: ignore[misc]
    root.removeHandler(handler)
    root.setLevel(old)


async def test_correlation_id_reaches_log_records_across_hops(mesh, capture: _Capture) -> None:  # type: ignore[no-untyped-def]
    await mesh.host(Logger)
    corr = await mesh.ref("Logger/a").call("relay", target="Logger/b")
    mine = [r for r in capture.records if r.name.startswith(("tests.observability", "natsagents.agent"))]
    assert {r.getMessage() for r in mine} >= {"relaying", "note nested", "agent log"}
    assert {r.correlation_id for r in mine} == {corr}  # type: ignore[attr-defined]
    assert {r.agent for r in mine} == {"Logger/a", "Logger/b"}  # type: ignore[attr-defined]
    LOG.info("outside")
    assert capture.records[-1].correlation_id == "-"  # type: ignore[attr-defined]


async def test_spans_share_one_trace_across_agents(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    host = await mesh_factory(name="host", tracer_provider=provider)
    caller = await mesh_factory(name="caller", tracer_provider=provider)
    await host.host(Logger)
    await caller.ref("Logger/a").call("relay", target="Logger/b")
    await caller.ref("Logger/b").send("note", text="fire")
    with pytest.raises(na.UnknownAction):
        await caller.ref("Logger/a").call("missing")
    spans = exporter.get_finished_spans()
    by_name: dict[str, list] = {}  # type: ignore[type-arg]
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    client = by_name["request Logger.relay"][0]
    handle_relay = by_name["handle Logger.relay"][0]
    nested_client = by_name["request Logger.note"][0]
    nested_handle = next(
        s for s in by_name["handle Logger.note"] if s.parent and s.parent.span_id == nested_client.context.span_id
    )
    trace_id = client.context.trace_id
    assert {handle_relay.context.trace_id, nested_client.context.trace_id, nested_handle.context.trace_id} == {trace_id}
    assert handle_relay.parent.span_id == client.context.span_id
    assert nested_client.parent.span_id == handle_relay.context.span_id
    assert client.kind is SpanKind.CLIENT and handle_relay.kind is SpanKind.SERVER
    assert by_name["send Logger.note"][0].kind is SpanKind.PRODUCER
    failed = by_name["request Logger.missing"][0]
    assert not failed.status.is_ok and failed.attributes["natsagents.error_code"] == "unknown_action"


async def test_metrics_registry_is_injectable(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    registry = CollectorRegistry()
    mesh = await mesh_factory(metrics_registry=registry)
    await mesh.host(Logger)
    await mesh.ref("Logger/m").call("note", text="x")
    text = generate_latest(registry).decode()
    assert 'natsagents_calls_total{action="note",kind="Logger",outcome="ok"} 1.0' in text
    assert 'natsagents_handled_total{action="note",kind="Logger",outcome="ok"} 1.0' in text
    assert "natsagents_call_seconds_bucket" in text and "natsagents_handler_seconds_bucket" in text
    assert mesh.metrics.registry is registry


async def test_trace_context_passes_through_an_untraced_host(mesh_factory) -> None:  # type: ignore[no-untyped-def]
    """caller (traced) -> Logger/a on a host without tracing -> Logger/b: b's span joins the trace."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    untraced = await mesh_factory(name="untraced")  # no provider: records nothing itself
    traced_host = await mesh_factory(name="traced-host", tracer_provider=provider, prefix=untraced.prefix)
    caller = await mesh_factory(name="caller", tracer_provider=provider)

    class Middle(Logger):
        kind = "Middle"

    await untraced.host(Middle)
    await traced_host.host(Logger)
    await caller.ref("Middle/m").call("relay", target="Logger/b")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    client, far = spans["request Middle.relay"], spans["handle Logger.note"]
    assert far.context.trace_id == client.context.trace_id
    assert "handle Middle.relay" not in spans
