"""The published event contracts (``contracts/events/*.schema.json``), enforced where events are consumed.

A consumed event whose type has a schema must validate against it; one that does not is a
:class:`ContractViolation` and goes to the dead-letter topic untouched. Error messages name the
field path and the rule, never the offending value (it may be personal data).
"""

import json
import os
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker

from enlace_platform.consumer import PoisonMessage

# The repository's contracts/events; an installed package (a container) sets ENLACE_CONTRACTS_DIR.
DEFAULT_EVENTS_DIR = Path(__file__).resolve().parents[2] / "contracts" / "events"

# jsonschema checks "date-time" and "uri" only with optional extras we do not install; these
# stand-ins are strict enough for our payloads (RFC 3339 with an offset; absolute URLs).
FORMATS = FormatChecker()
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@FORMATS.checks("date-time", raises=ValueError)
def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    datetime.fromisoformat(value.replace("z", "Z"))
    return True


@FORMATS.checks("uri", raises=ValueError)
def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme and (parts.netloc or parts.path)) and " " not in value


class ContractViolation(PoisonMessage):
    """The payload breaks the published schema of its event type."""


class EventContracts:
    def __init__(self, events_dir: Path | None = None) -> None:
        events_dir = events_dir or Path(os.environ.get("ENLACE_CONTRACTS_DIR", DEFAULT_EVENTS_DIR))
        self._validators: dict[str, Draft202012Validator] = {}
        for path in sorted(events_dir.glob("*.schema.json")):
            schema = json.loads(path.read_text(encoding="utf-8"))
            self._validators[schema["title"]] = Draft202012Validator(schema, format_checker=FORMATS)
        if not self._validators:
            # Consumers would silently stop checking contracts: refuse to start instead.
            raise RuntimeError(f"no event schemas in {events_dir}; set ENLACE_CONTRACTS_DIR to contracts/events")

    @property
    def event_types(self) -> set[str]:
        return set(self._validators)

    def violations(self, event_type: str, data: Any) -> list[str]:
        validator = self._validators.get(event_type)
        if validator is None:
            return []
        return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: fails {e.validator!r}"
                      for e in validator.iter_errors(data))

    def check(self, event_type: str, data: Any) -> None:
        problems = self.violations(event_type, data)
        if problems:
            raise ContractViolation(f"{event_type} breaks its schema: " + "; ".join(problems[:10]))


@lru_cache(maxsize=1)
def published_contracts() -> EventContracts:
    return EventContracts()
