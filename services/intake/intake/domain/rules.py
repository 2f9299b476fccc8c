"""The screening rules engine: a versioned rule set (data) applied to a person's facts. Pure.

A rule set is a JSON file in ``domain/rules/`` (``v2.json``, ``v3.json`` …). Each rule names a need, an urgency,
optional flags, and a condition over facts:

* ``{"fact": F, "is": V}`` holds when fact F equals V (``true``/``false``/``null``: unanswered is not false);
* ``{"fact": F, "any_of": [codes], "at_least": N}`` holds when the list fact F has N or more of the codes;
* ``{"all": [...]}``, ``{"any": [...]}``, ``{"not": {...}}`` combine conditions.

Any condition may carry a ``reason``; when the condition holds, its reason explains the need. ``{name}``
placeholders are filled from the facts, and ``{matched}`` with the codes an ``any_of`` matched. ``notes``
are conditions that do not decide anything but add their reason when they hold.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

RULES_DIR = Path(__file__).parent / "rules"
CURRENT_RULES_VERSION = "v3"

NEED_CODES = (
    "INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD", "SEPARATED_CHILD", "TRAFFICKING_PRESUMED",
    "SGBV_SURVIVOR", "MEDICAL_URGENT", "DISABILITY", "STATELESSNESS_RISK", "STRANDED_ASSISTED_RETURN",
    "CRIME_VICTIM",
)


class Urgency(StrEnum):
    IMMEDIATE = "immediate"
    HIGH = "high"
    STANDARD = "standard"


URGENCY_RANK = {Urgency.IMMEDIATE: 0, Urgency.HIGH: 1, Urgency.STANDARD: 2}


class InvalidRuleSet(ValueError):
    """A rule file that refers to unknown facts, needs or urgencies, or is badly shaped."""


@dataclass(frozen=True)
class ProtectionNeed:
    code: str
    urgency: Urgency
    reasons: tuple[str, ...] = field(default_factory=tuple)
    rule_ids: tuple[str, ...] = field(default_factory=tuple)
    flags: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Rule:
    id: str
    need: str
    urgency: Urgency
    when: Mapping[str, Any]
    notes: tuple[Mapping[str, Any], ...] = ()
    flags: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class RuleSet:
    version: str
    rules: tuple[Rule, ...]

    @property
    def rule_ids(self) -> set[str]:
        return {r.id for r in self.rules}

    def evaluate(self, facts: Mapping[str, Any]) -> list[ProtectionNeed]:
        """Needs in the order their first rule appears in the file; one need per code."""
        found: dict[str, ProtectionNeed] = {}
        for rule in self.rules:
            holds, reasons = _check(rule.when, facts)
            if not holds:
                continue
            for note in rule.notes:
                note_holds, note_reasons = _check(note, facts)
                if note_holds:
                    reasons += note_reasons
            previous = found.get(rule.need)
            if previous is None:
                found[rule.need] = ProtectionNeed(rule.need, rule.urgency, _unique(reasons), (rule.id,), rule.flags)
            else:
                urgency = min(previous.urgency, rule.urgency, key=URGENCY_RANK.__getitem__)
                found[rule.need] = ProtectionNeed(
                    rule.need, urgency, _unique(previous.reasons + reasons), previous.rule_ids + (rule.id,),
                    _unique(previous.flags + rule.flags))
        return list(found.values())


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _check(node: Mapping[str, Any], facts: Mapping[str, Any]) -> tuple[bool, tuple[str, ...]]:
    """Whether the condition holds, and the reasons of its parts that held."""
    matched_codes: list[str] = []
    if "all" in node:
        results = [_check(child, facts) for child in node["all"]]
        holds = all(h for h, _ in results)
        reasons = tuple(r for h, rs in results if h for r in rs)
    elif "any" in node:
        results = [_check(child, facts) for child in node["any"]]
        holds = any(h for h, _ in results)
        reasons = tuple(r for h, rs in results if h for r in rs)
    elif "not" in node:
        holds, reasons = not _check(node["not"], facts)[0], ()
    elif "any_of" in node:
        present = facts[node["fact"]] or ()
        matched_codes = [code for code in node["any_of"] if code in present]
        holds, reasons = len(matched_codes) >= node.get("at_least", 1), ()
    else:
        value, expected = facts[node["fact"]], node["is"]
        holds, reasons = type(value) is type(expected) and value == expected, ()
    if holds and "reason" in node:
        values = {**facts, "matched": ", ".join(matched_codes)}
        reasons = (node["reason"].format_map(values),) + reasons
    return holds, reasons


def _validate_condition(node: Any, known_facts: Mapping[str, type], where: str) -> None:
    if not isinstance(node, Mapping):
        raise InvalidRuleSet(f"{where}: a condition must be an object")
    combinators = [k for k in ("all", "any", "not", "fact") if k in node]
    if len(combinators) != 1:
        raise InvalidRuleSet(f"{where}: give exactly one of all, any, not, fact")
    kind = combinators[0]
    if kind in ("all", "any"):
        if not isinstance(node[kind], list) or not node[kind]:
            raise InvalidRuleSet(f"{where}/{kind}: must be a non-empty list")
        for i, child in enumerate(node[kind]):
            _validate_condition(child, known_facts, f"{where}/{kind}/{i}")
    elif kind == "not":
        _validate_condition(node["not"], known_facts, f"{where}/not")
    else:
        fact = node["fact"]
        if fact not in known_facts:
            raise InvalidRuleSet(f"{where}: unknown fact {fact!r}")
        if ("is" in node) == ("any_of" in node):
            raise InvalidRuleSet(f"{where}: a fact condition needs exactly one of is, any_of")
        if "any_of" in node and known_facts[fact] is not tuple:
            raise InvalidRuleSet(f"{where}: any_of needs a list fact, {fact!r} is not one")
    if "reason" in node:
        try:
            node["reason"].format_map({**{f: "" for f in known_facts}, "matched": ""})
        except (KeyError, ValueError, AttributeError) as exc:
            raise InvalidRuleSet(f"{where}/reason: bad placeholder {exc}") from exc


def parse_rule_set(document: Mapping[str, Any], known_facts: Mapping[str, type]) -> RuleSet:
    """Build a rule set from its JSON document, refusing anything the engine could not apply."""
    try:
        version = str(document["version"])
        rules = []
        for i, raw in enumerate(document["rules"]):
            where = f"rules/{i}"
            if raw["need"] not in NEED_CODES:
                raise InvalidRuleSet(f"{where}: unknown need {raw['need']!r}")
            _validate_condition(raw["when"], known_facts, f"{where}/when")
            for j, note in enumerate(raw.get("notes", ())):
                _validate_condition(note, known_facts, f"{where}/notes/{j}")
            rules.append(Rule(id=raw["id"], need=raw["need"], urgency=Urgency(raw["urgency"]), when=raw["when"],
                              notes=tuple(raw.get("notes", ())), flags=tuple(raw.get("flags", ())),
                              source=raw.get("source", "")))
    except (KeyError, TypeError) as exc:
        raise InvalidRuleSet(f"badly shaped rule set: missing or wrong {exc}") from exc
    except ValueError as exc:
        if isinstance(exc, InvalidRuleSet):
            raise
        raise InvalidRuleSet(str(exc)) from exc
    ids = [r.id for r in rules]
    if len(ids) != len(set(ids)):
        raise InvalidRuleSet("rule ids must be unique")
    return RuleSet(version=version, rules=tuple(rules))


@cache
def rule_set_document(version: str) -> dict[str, Any]:
    path = RULES_DIR / f"{version}.json"
    if not path.is_file():
        raise InvalidRuleSet(f"no rule set {version!r}")
    return json.loads(path.read_text(encoding="utf-8"))
