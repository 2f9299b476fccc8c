"""Tracing set-up: orphan client spans are dropped, journeys kept whole; the exporter and the sampler follow
the OTEL_* variables; SQL spans only where asked for."""

import os
import subprocess
import sys

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from enlace_platform.telemetry import JOURNEY_SAMPLER, exporter_from_environment, sampler_from_environment


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


async def test_sql_spans_only_for_the_engines_that_ask(tmp_path, spans):
    from opentelemetry import trace

    from enlace_platform.db import make_engine, ping

    traced = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'traced.db'}", trace_sql=True)
    quiet = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'quiet.db'}")
    try:
        with trace.get_tracer("t").start_as_current_span("request") as parent:
            for engine in (traced, quiet):
                await ping(engine)
    finally:
        for engine in (traced, quiet):
            await engine.dispose()
    trace_id = parent.get_span_context().trace_id
    databases = {s.attributes.get("db.name") for s in spans.get_finished_spans()
                 if s.context.trace_id == trace_id and s.attributes.get("db.statement") == "SELECT 1"}
    assert databases == {str(tmp_path / "traced.db")}


def test_sql_tracing_is_a_setting_off_by_default(monkeypatch):
    from enlace_platform.settings import ServiceSettings

    monkeypatch.delenv("ENLACE_TRACE_SQL", raising=False)
    assert ServiceSettings().trace_sql is False
    monkeypatch.setenv("ENLACE_TRACE_SQL", "true")
    assert ServiceSettings().trace_sql is True


def _journey(sampler, trace_id: int) -> list[str]:
    """A request span with a child, under a fixed trace id: the names of the spans kept."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, id_generator=_FixedTraceId(trace_id))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("POST /cases", kind=SpanKind.SERVER):
        with tracer.start_as_current_span("intake.case publish", kind=SpanKind.PRODUCER):
            pass
    with tracer.start_as_current_span("SELECT due deliveries", kind=SpanKind.CLIENT):
        pass
    return sorted(s.name for s in exporter.get_finished_spans())


class _FixedTraceId(RandomIdGenerator):
    def __init__(self, trace_id: int) -> None:
        self._trace_id = trace_id

    def generate_trace_id(self) -> int:
        return self._trace_id


@pytest.mark.parametrize("sampler, ratio, low_id_kept, high_id_kept", [
    ("parentbased_traceidratio", "0.25", True, False),  # a quarter of the id space: ids below 2**62
    ("traceidratio", "0.25", True, False),
    ("parentbased_always_off", None, False, False),
    ("always_on", None, True, True),
])
def test_sampling_follows_the_standard_variables_and_keeps_journeys_whole(monkeypatch, sampler, ratio, low_id_kept,
                                                                           high_id_kept):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    if ratio is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    chosen = sampler_from_environment()
    journey = ["POST /cases", "intake.case publish"]  # whole or not at all; the orphan poll never
    assert _journey(chosen, 2**40) == (journey if low_id_kept else [])
    assert _journey(chosen, 2**63 + 2**40) == (journey if high_id_kept else [])


def test_without_a_sampler_variable_every_journey_is_kept(monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    assert sampler_from_environment() is JOURNEY_SAMPLER
    assert _journey(sampler_from_environment(), 2**63 + 2**40) == ["POST /cases", "intake.case publish"]


def test_an_unknown_sampler_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    with pytest.raises(ValueError, match="sometimes"):
        sampler_from_environment()


def test_a_service_process_samples_as_the_variables_say(tmp_path):
    """As a service starts: its process-wide provider takes the sampler from the environment."""
    env = {**os.environ, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1",
           "OTEL_TRACES_EXPORTER": "none"}
    script = ("from opentelemetry import trace\n"
              "from enlace_platform.telemetry import setup_tracing\n"
              "setup_tracing('intake')\n"
              "print(trace.get_tracer_provider().sampler.get_description())\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                            check=True)
    assert "TraceIdRatioBased{0.1}" in result.stdout and "NoOrphanClientSpans" in result.stdout
