"""CloudEvents 1.0 in Kafka binary content mode.

Attributes travel as ``ce_*`` headers, the JSON payload is the record value, the key is the
case id, and the W3C trace context rides along as ``traceparent``/``tracestate`` headers.
"""

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent

CONTENT_TYPE = "application/json"
TRACE_HEADERS = ("traceparent", "tracestate")


class MalformedEvent(ValueError):
    """A record that is not a valid CloudEvent with a JSON object payload."""


@dataclass(frozen=True)
class Envelope:
    type: str
    source: str
    key: str
    data: dict[str, Any]
    subject: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    trace_headers: dict[str, str] = field(default_factory=dict)


def to_kafka(envelope: Envelope) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Return (key, value, headers) ready for the producer."""
    attributes = {
        "id": envelope.id,
        "source": envelope.source,
        "type": envelope.type,
        "time": envelope.time,
        "datacontenttype": CONTENT_TYPE,
    }
    if envelope.subject:
        attributes["subject"] = envelope.subject
    message = ce_kafka.to_binary_event(CloudEvent(attributes=attributes, data=envelope.data))
    headers = list(message.headers.items())
    headers += [(k, v.encode()) for k, v in envelope.trace_headers.items() if k in TRACE_HEADERS and v]
    return envelope.key.encode(), message.value, headers


def from_kafka(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | tuple) -> Envelope:
    """Parse a consumed record; raise MalformedEvent for anything we cannot trust."""
    header_map: dict[str, bytes] = {}
    for name, raw in headers or ():
        header_map[name] = raw if isinstance(raw, bytes) else bytes(raw or b"")
    if header_map.get("ce_specversion") != b"1.0":
        raise MalformedEvent("missing or unsupported ce_specversion header (expected 1.0)")
    # The SDK would invent an id for a missing ce_id, which would defeat deduplication.
    for required in ("ce_id", "ce_source", "ce_type"):
        if not header_map.get(required):
            raise MalformedEvent(f"missing required header {required}")
    if not key:
        raise MalformedEvent("record has no key (the case id)")
    ce_headers = {k: v for k, v in header_map.items() if k.startswith("ce_") or k == "content-type"}
    try:
        event = ce_kafka.from_binary_event(ce_kafka.KafkaMessage(headers=ce_headers, key=key, value=b"null"))
    except Exception as exc:  # the SDK raises several types for bad attributes
        raise MalformedEvent(f"not a valid CloudEvent: {exc}") from exc
    if (event.get_datacontenttype() or CONTENT_TYPE).split(";")[0].strip() != CONTENT_TYPE:
        raise MalformedEvent(f"content-type must be {CONTENT_TYPE}")
    try:
        data = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedEvent("payload must be a JSON object")
    try:
        key_text = key.decode()
    except UnicodeDecodeError as exc:
        raise MalformedEvent("record key is not UTF-8") from exc
    return Envelope(
        id=event.get_id(),
        source=event.get_source(),
        type=event.get_type(),
        subject=event.get_subject(),
        time=event.get_time() or datetime.now(UTC),
        key=key_text,
        data=data,
        trace_headers=_trace_headers(header_map),
    )


def _trace_headers(header_map: dict[str, bytes]) -> dict[str, str]:
    """Unreadable trace context is dropped, as W3C Trace Context asks; it never poisons the event."""
    found: dict[str, str] = {}
    for name in TRACE_HEADERS:
        try:
            if name in header_map:
                found[name] = header_map[name].decode("ascii")
        except UnicodeDecodeError:
            continue
    return found
