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


def test_a_flood_of_broker_client_lines_is_held_to_one_per_interval_and_counted():
    from enlace_platform.telemetry import RepeatLimiter

    now = [0.0]
    limiter = RepeatLimiter(interval_s=30.0, clock=lambda: now[0])

    def line(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, ("node 1",), None)

    passed = [limiter.filter(line("aiokafka.conn", "Unable connect to %s")) for _ in range(100)]
    assert passed.count(True) == 1
    assert limiter.filter(line("aiokafka.producer", "Got error produce response: %s"))  # another kind
    assert limiter.filter(line("enlace_platform.outbox", "broker gone"))  # our own lines are never held
    assert limiter.filter(line("enlace_platform.outbox", "broker gone"))
    now[0] = 31.0
    record = line("aiokafka.conn", "Unable connect to %s")
    assert limiter.filter(record)
    assert record.getMessage() == "Unable connect to node 1 (99 like it in the last 30s not logged)"
