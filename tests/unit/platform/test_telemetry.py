"""Tracing set-up: orphan client spans are dropped, journeys kept; the exporter follows OTEL_* variables."""

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from enlace_platform.telemetry import JOURNEY_SAMPLER, exporter_from_environment


def test_orphan_client_spans_are_dropped_and_journeys_kept_whole():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=JOURNEY_SAMPLER)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("SELECT due deliveries", kind=SpanKind.CLIENT):
        pass
    with tracer.start_as_current_span("POST /cases", kind=SpanKind.SERVER):
        with tracer.start_as_current_span("INSERT case", kind=SpanKind.CLIENT):
            pass
    with tracer.start_as_current_span("deadline clock fired"):
        pass
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["INSERT case", "POST /cases",
                                                                     "deadline clock fired"]


@pytest.mark.parametrize("env, expected", [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, ZipkinExporter),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, OTLPSpanExporter),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, OTLPSpanExporter),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, type(None)),
    ({}, type(None)),
])
def test_the_exporter_is_chosen_by_the_standard_variables(monkeypatch, env, expected):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert isinstance(exporter_from_environment(), expected)


def test_an_unknown_exporter_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    with pytest.raises(ValueError, match="jaeger"):
        exporter_from_environment()


async def test_every_engine_of_the_process_gets_sql_spans(tmp_path, spans):
    from opentelemetry import trace

    from enlace_platform.db import make_engine, ping

    engines = [make_engine(f"sqlite+aiosqlite:///{tmp_path / name}.db") for name in ("one", "two")]
    try:
        with trace.get_tracer("t").start_as_current_span("request") as parent:
            for engine in engines:
                await ping(engine)
    finally:
        for engine in engines:
            await engine.dispose()
    trace_id = parent.get_span_context().trace_id
    databases = {s.attributes.get("db.name") for s in spans.get_finished_spans()
                 if s.context.trace_id == trace_id and s.attributes.get("db.statement") == "SELECT 1"}
    assert databases == {str(tmp_path / "one.db"), str(tmp_path / "two.db")}
