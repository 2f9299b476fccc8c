"""A committed event schema version never changes incompatibly.

Every earlier text of each ``contracts/events/*.schema.json`` in git history (and the committed one,
against the working tree) is compared with the current file: a version may only gain optional
properties or accept more. A breaking change needs a new ``….v2`` file.
"""

import json
import subprocess
from pathlib import Path

import pytest

from tests.contracts.compat import breaking_changes

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "contracts" / "events"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


def _history(path: Path) -> list[tuple[str, dict]]:
    relative = path.relative_to(REPO).as_posix()
    texts = []
    for commit in _git("log", "--format=%H", "--", relative).split():
        texts.append((commit[:10], json.loads(_git("show", f"{commit}:{relative}"))))
    return texts


@pytest.mark.parametrize("schema_file", sorted(EVENTS.glob("*.schema.json")), ids=lambda p: p.name)
def test_every_earlier_text_of_this_version_still_validates_under_the_current_one(schema_file):
    current = json.loads(schema_file.read_text())
    problems = [f"since {commit}: {problem}" for commit, old in _history(schema_file)
                for problem in breaking_changes(old, current)]
    assert problems == [], f"{schema_file.name} changed incompatibly; publish a new version instead:\n" + "\n".join(problems)


BASE = {
    "type": "object", "additionalProperties": False, "required": ["id", "kind"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "kind": {"$ref": "#/$defs/kind"},
        "note": {"type": ["string", "null"], "maxLength": 100},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
    },
    "$defs": {"kind": {"type": "string", "enum": ["x", "y"]}},
}


def _changed(mutate) -> dict:
    schema = json.loads(json.dumps(BASE))
    mutate(schema)
    return schema


@pytest.mark.parametrize("name, mutate", [
    ("add optional property", lambda s: s["properties"].update(extra={"type": "string"})),
    ("widen enum", lambda s: s["$defs"]["kind"]["enum"].append("z")),
    ("allow null", lambda s: s["properties"]["id"].update(type=["string", "null"])),
    ("drop a requirement", lambda s: s["required"].remove("kind")),
    ("raise a maximum", lambda s: s["properties"]["note"].update(maxLength=200)),
])
def test_compatible_changes_pass(name, mutate):
    assert breaking_changes(BASE, _changed(mutate)) == []


@pytest.mark.parametrize("name, mutate, expected", [
    ("remove property", lambda s: s["properties"].pop("note"), "/note: property removed"),
    ("require a new property", lambda s: (s["properties"].update(extra={"type": "string"}),
                                           s["required"].append("extra")), "newly required ['extra']"),
    ("narrow enum through $ref", lambda s: s["$defs"]["kind"]["enum"].remove("y"), "/kind: allowed values narrowed"),
    ("narrow nested enum", lambda s: s["properties"]["tags"]["items"]["enum"].remove("b"), "/tags[]: allowed values"),
    ("disallow null", lambda s: s["properties"]["note"].update(type="string"), "/note: type narrowed"),
    ("lower a maximum", lambda s: s["properties"]["note"].update(maxLength=50), "/note: maxLength lowered"),
    ("change format", lambda s: s["properties"]["id"].update(format="uri"), "/id: format changed"),
])
def test_breaking_changes_are_named(name, mutate, expected):
    problems = breaking_changes(BASE, _changed(mutate))
    assert any(expected in p for p in problems), problems
