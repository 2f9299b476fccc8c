"""Log lines are JSON and carry the service, the trace and span ids, and the event being handled."""

import io
import json
import logging

from opentelemetry import trace

from enlace_platform.telemetry import current_event_id, setup_logging, setup_tracing


def test_a_log_line_inside_a_handler_names_the_service_trace_span_and_event():
    setup_tracing("logtest")
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup_logging("intake")
        handler = root.handlers[0]
        buffer = io.StringIO()
        handler.setStream(buffer)
        token = current_event_id.set("evt-123")
        try:
            with trace.get_tracer("t").start_as_current_span("work") as span:
                logging.getLogger("enlace.test").info("handled")
                ctx = span.get_span_context()
        finally:
            current_event_id.reset(token)
        logging.getLogger("enlace.test").info("outside")
    finally:
        root.handlers, root.level = saved_handlers, saved_level

    inside, outside = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert inside["message"] == "handled"
    assert inside["service"] == "intake"
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert inside["event_id"] == "evt-123"
    assert outside["event_id"] is None and outside["trace_id"] is None
