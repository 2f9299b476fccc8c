"""OpenTelemetry tracing and JSON logs that carry the trace id.

The exporter is chosen and configured by the standard OTEL_* variables:

* ``OTEL_TRACES_EXPORTER=otlp`` (the default once ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``..._TRACES_ENDPOINT`` is set): OTLP over HTTP, ``OTEL_EXPORTER_OTLP_*``.
* ``OTEL_TRACES_EXPORTER=zipkin``: Zipkin's own JSON API, ``OTEL_EXPORTER_ZIPKIN_ENDPOINT``
  (what ``make up`` uses, see docs/operations.md).
* ``none`` or unset without an endpoint: spans are made but not exported.

Sampling follows ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` as the SDK reads them (e.g.
``parentbased_traceidratio`` and ``0.1``: one journey in ten, whole, across the services, since each
service follows the decision its parent's trace context carries). Unset: every journey.
Whichever sampler, a client span without a parent (a background loop's poll) is dropped.

Tests install their own in-memory exporter instead.
"""

import logging
import os
import sys
import time
from contextvars import ContextVar

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import SpanKind
from pythonjsonlogger.json import JsonFormatter

# The CloudEvents id of the event being handled, so every log line of a handler names it.
current_event_id: ContextVar[str | None] = ContextVar("current_event_id", default=None)


def exporter_from_environment() -> SpanExporter | None:
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not choice and (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                       or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        choice = "otlp"
    if choice == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if choice == "zipkin":
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        return ZipkinExporter()
    if choice in ("", "none"):
        return None
    raise ValueError(f"OTEL_TRACES_EXPORTER={choice!r} is not supported here: use otlp, zipkin or none")


class _NoOrphanClientSpans(Sampler):
    """Drops client spans without a parent (a background loop's SQL query or poll), which would bury the
    journeys in the trace UI; every other span is ``sampler``'s to decide."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        if kind == SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self._sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"NoOrphanClientSpans{{{self._sampler.get_description()}}}"


# Every journey; children follow their parent's decision.
JOURNEY_SAMPLER = _NoOrphanClientSpans(ParentBased(root=ALWAYS_ON))


def sampler_from_environment() -> Sampler:
    """OTEL_TRACES_SAMPLER (and _ARG) when set, as the SDK reads them, else every journey."""
    choice = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not choice:
        return JOURNEY_SAMPLER
    if choice not in sampling._KNOWN_SAMPLERS:  # the SDK would fall back to sampling everything
        raise ValueError(f"OTEL_TRACES_SAMPLER={choice!r} is not supported here: use one of "
                         f"{', '.join(sorted(sampling._KNOWN_SAMPLERS))}")
    return _NoOrphanClientSpans(sampling._get_from_env_or_default())


def setup_tracing(service_name: str, exporter: SpanExporter | None = None) -> None:
    """Install a tracer provider once per process; a second call keeps the first provider."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    provider = TracerProvider(sampler=sampler_from_environment(),
                              resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}))
    exporter = exporter or exporter_from_environment()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


class _TraceContextFilter(logging.Filter):
    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._service = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.service = self._service
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else None
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else None
        record.event_id = current_event_id.get()
        return True


class RepeatLimiter(logging.Filter):
    """Lets each message template of the given loggers through once per ``interval_s``.

    While the broker is down, aiokafka logs every failed connection and produce response, about 100 lines a
    second; one line per kind per interval says the same, and the next one carries how many were held back.
    """

    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka",), interval_s: float = 30.0,
                 clock=time.monotonic) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        key = (record.name, record.msg)
        now = self._clock()
        last, held = self._last.get(key, (None, 0))
        if last is not None and now - last < self._interval_s:
            self._last[key] = (last, held + 1)
            return False
        if len(self._last) > 1000:  # templates are few; bound the table anyway
            self._last.clear()
        self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} like it in the last {self._interval_s:.0f}s not logged)"
        return True


def setup_logging(service_name: str, json_lines: bool = True, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_TraceContextFilter(service_name))
    handler.addFilter(RepeatLimiter())
    if json_lines:
        handler.setFormatter(
            JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(trace_id)s %(span_id)s %(event_id)s")
        )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # Chatty clients: httpx logs every request URL at INFO, and webhook URLs can hold a token.
    for name in ("aiokafka", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        # uvicorn installs plain-text handlers of its own; its lines go through ours instead.
        server_log = logging.getLogger(name)
        server_log.handlers = []
        server_log.propagate = True
    # uvicorn writes an access line whenever this logger has a handler, up the tree too, whatever
    # --no-access-log said; and its line holds the URL, query string included (search terms). Off for good:
    # ENLACE_LOG_ACCESS logs the route template instead (enlace_platform.limits).
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
