"""CloudEvents 1.0 Kafka binary binding: what goes on the wire, and what we refuse to trust."""

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from enlace_platform.envelope import Envelope, MalformedEvent, from_kafka, to_kafka

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "congo=t61rcWkgMzE"


def _envelope(**overrides) -> Envelope:
    fields = dict(
        type="org.enlace.case.screened.v1",
        source="/enlace/intake",
        key="case-7f3a",
        subject="screening-42",
        data={"case_id": "case-7f3a", "needs": [{"code": "UNACCOMPANIED_CHILD"}], "n": 3},
        id="3b0e5f0c-0000-4000-8000-000000000001",
        time=datetime(2024, 5, 17, 8, 30, 15, 250000, tzinfo=UTC),
        trace_headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
    )
    fields.update(overrides)
    return Envelope(**fields)


def _headers_dict(headers: list[tuple[str, bytes]]) -> dict[str, bytes]:
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), f"duplicate headers: {names}"
    return dict(headers)


def _valid_record():
    return to_kafka(_envelope())


def _without(headers, name):
    return [(k, v) for k, v in headers if k != name]


# --- producing -----------------------------------------------------------------------------------


def test_to_kafka_writes_binary_mode_headers_key_and_json_value():
    env = _envelope()
    key, value, headers = to_kafka(env)
    h = _headers_dict(headers)

    assert key == b"case-7f3a"  # the key is the case id, so a case's events stay ordered
    assert json.loads(value) == env.data
    assert h["ce_specversion"] == b"1.0"
    assert h["ce_id"] == env.id.encode()
    assert h["ce_source"] == b"/enlace/intake"
    assert h["ce_type"] == b"org.enlace.case.screened.v1"
    assert h["ce_subject"] == b"screening-42"
    assert h["content-type"] == b"application/json"
    assert datetime.fromisoformat(h["ce_time"].decode().replace("Z", "+00:00")) == env.time
    assert h["traceparent"] == TRACEPARENT.encode()
    assert h["tracestate"] == TRACESTATE.encode()
    # Binary mode: the attributes are headers, not wrapped into a structured JSON body.
    assert "specversion" not in json.loads(value)


def test_to_kafka_omits_subject_when_absent_and_forwards_only_trace_headers():
    env = _envelope(subject=None, trace_headers={"traceparent": TRACEPARENT, "baggage": "user=secret",
                                                 "tracestate": ""})
    _, _, headers = to_kafka(env)
    h = _headers_dict(headers)
    assert "ce_subject" not in h
    assert "baggage" not in h  # only W3C trace context rides along
    assert "tracestate" not in h  # empty values are not sent
    assert h["traceparent"] == TRACEPARENT.encode()


def test_round_trip_preserves_every_attribute():
    env = _envelope()
    parsed = from_kafka(*to_kafka(env))
    assert parsed == env


def test_round_trip_keeps_a_non_utc_time_as_the_same_instant():
    local = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-6)))
    parsed = from_kafka(*to_kafka(_envelope(time=local)))
    assert parsed.time == local
    assert parsed.time.utcoffset() is not None


def test_round_trip_without_subject_or_trace_headers():
    env = _envelope(subject=None, trace_headers={})
    parsed = from_kafka(*to_kafka(env))
    assert parsed.subject is None
    assert parsed.trace_headers == {}
    assert parsed.data == env.data and parsed.id == env.id and parsed.key == env.key


def test_from_kafka_accepts_headers_as_a_tuple_like_aiokafka_gives():
    key, value, headers = _valid_record()
    parsed = from_kafka(key, value, tuple(headers))
    assert parsed.type == "org.enlace.case.screened.v1"


def test_from_kafka_reads_a_record_written_by_a_non_python_producer():
    # What kcat -H ... would send: plain headers, compact JSON, 'Z' timestamp.
    headers = [
        ("ce_specversion", b"1.0"), ("ce_id", b"evt-1"), ("ce_source", b"/kcat"),
        ("ce_type", b"org.enlace.protection_hold.placed.v1"), ("ce_time", b"2024-05-17T08:30:15Z"),
        ("content-type", b"application/json"), ("traceparent", TRACEPARENT.encode()),
    ]
    parsed = from_kafka(b"case-1", b'{"hold_id":"h1"}', headers)
    assert parsed.id == "evt-1"
    assert parsed.key == "case-1"
    assert parsed.data == {"hold_id": "h1"}
    assert parsed.time == datetime(2024, 5, 17, 8, 30, 15, tzinfo=UTC)
    assert parsed.trace_headers == {"traceparent": TRACEPARENT}


# --- refusing what we cannot trust ---------------------------------------------------------------


def test_missing_specversion_is_malformed():
    key, value, headers = _valid_record()
    with pytest.raises(MalformedEvent, match="specversion"):
        from_kafka(key, value, _without(headers, "ce_specversion"))


def test_unsupported_specversion_is_malformed():
    key, value, headers = _valid_record()
    with pytest.raises(MalformedEvent, match="specversion"):
        from_kafka(key, value, _without(headers, "ce_specversion") + [("ce_specversion", b"0.3")])


def test_no_headers_at_all_is_malformed():
    key, value, _ = _valid_record()
    with pytest.raises(MalformedEvent):
        from_kafka(key, value, [])
    with pytest.raises(MalformedEvent):
        from_kafka(key, value, None)


@pytest.mark.parametrize("key", [None, b""])
def test_record_without_key_is_malformed(key):
    _, value, headers = _valid_record()
    with pytest.raises(MalformedEvent, match="key"):
        from_kafka(key, value, headers)


@pytest.mark.parametrize("value", [b"{not json", b"\xff\xfe", b'{"a": 1'])
def test_invalid_json_value_is_malformed(value):
    key, _, headers = _valid_record()
    with pytest.raises(MalformedEvent):
        from_kafka(key, value, headers)


@pytest.mark.parametrize("value", [b"[1, 2, 3]", b'[{"case_id": "c"}]', b"5", b"null", b"true"])
def test_json_that_is_not_an_object_is_malformed(value):
    key, _, headers = _valid_record()
    with pytest.raises(MalformedEvent):
        from_kafka(key, value, headers)


@pytest.mark.parametrize("value", [None, b""])
def test_empty_value_is_malformed(value):
    key, _, headers = _valid_record()
    with pytest.raises(MalformedEvent):
        from_kafka(key, value, headers)


@pytest.mark.parametrize("header", ["ce_type", "ce_source"])
def test_missing_required_attribute_is_malformed(header):
    key, value, headers = _valid_record()
    with pytest.raises(MalformedEvent):
        from_kafka(key, value, _without(headers, header))


def test_empty_ce_id_is_malformed():
    key, value, headers = _valid_record()
    with pytest.raises(MalformedEvent):
        from_kafka(key, value, _without(headers, "ce_id") + [("ce_id", b"")])


def test_missing_ce_id_is_malformed():
    # The SDK would invent a random id, and the consumer inbox could not deduplicate redeliveries.
    key, value, headers = _valid_record()
    with pytest.raises(MalformedEvent):
        from_kafka(key, value, _without(headers, "ce_id"))


def test_invalid_ce_time_is_malformed():
    key, value, headers = _valid_record()
    with pytest.raises(MalformedEvent):
        from_kafka(key, value, _without(headers, "ce_time") + [("ce_time", b"yesterday")])


def test_malformed_event_is_a_value_error():
    # Callers that only know ValueError still catch it.
    assert issubclass(MalformedEvent, ValueError)


def test_unreadable_trace_header_is_dropped_not_fatal():
    # W3C Trace Context: an invalid traceparent is ignored; the event itself is still good.
    key, value, headers = _valid_record()
    envelope = from_kafka(key, value, _without(headers, "traceparent") + [("traceparent", b"\xff\xfe")])
    assert "traceparent" not in envelope.trace_headers
    assert envelope.data == json.loads(value)
