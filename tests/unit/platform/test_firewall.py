"""The information barrier's one table, and the page that shows it (docs/security.md)."""

import re

import pytest

from enlace_platform import firewall
from enlace_platform.auth import Principal
from enlace_platform.firewall import TABLE, Rule, Viewer
from tests.support.harness import REPO

SECTION = "## The information barrier\n"


def _documented_table() -> dict[str, dict[str, Rule]]:
    """The markdown table of docs/security.md's section "The information barrier", as firewall.TABLE's shape."""
    text = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    assert text.count(SECTION) == 1, "docs/security.md has one section 'The information barrier'"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header, separator, *body = ([cell.strip() for cell in row.strip("|").split("|")] for row in rows)
    assert header[0] == "field" and all(re.fullmatch(r"-+", cell) for cell in separator)
    kinds = header[1:]
    table: dict[str, dict[str, Rule]] = {kind: {} for kind in kinds}
    for field, *cells in body:
        assert len(cells) == len(kinds), field
        name = field.strip("`")
        for kind, cell in zip(kinds, cells, strict=True):
            if cell != "–":
                table[kind][name] = Rule(cell)
    return table


def test_the_documented_table_is_the_table_the_code_applies():
    assert _documented_table() == TABLE


def _principal(agency_type: str, enforcement: bool | None = None) -> Principal:
    return Principal(subject="u", agency_id="MX-X", agency_type=agency_type, jurisdiction="MX",
                     roles=("caseworker",), enforcement=enforcement)


def test_the_viewer_is_decided_by_the_part_in_the_record_then_by_the_directory_mark():
    inm, comar = _principal("migration_authority"), _principal("asylum_office")
    assert firewall.viewer_in(inm, {"sender"}) is Viewer.ENFORCEMENT
    assert firewall.viewer_in(inm, {"sender", "receiver"}) is Viewer.PROTECTION  # its own work
    assert firewall.viewer_in(comar, {"sender"}) is Viewer.PROTECTION
    assert firewall.viewer_in(_principal("health", enforcement=True), {"sender"}) is Viewer.ENFORCEMENT
    assert firewall.viewer_in(_principal("migration_authority", enforcement=False), {"sender"}) is Viewer.PROTECTION


@pytest.mark.parametrize("kind", sorted(TABLE))
def test_an_enforcement_viewer_gets_every_field_by_its_rule_and_null_for_the_rest(kind):
    record = {field: f"value-of-{field}" for field in TABLE[kind]}
    for need, outcome, own in [("SGBV_SURVIVOR", "REFUGEE_STATUS_GRANTED", False),
                               ("MEDICAL_URGENT", "MEDICAL_CARE_PROVIDED", True), (None, None, False)]:
        if "outcome_code" in record:
            record["outcome_code"] = outcome
        shown = firewall.project(kind, record, Viewer.ENFORCEMENT, need_code=need, own=own)
        assert set(shown) == set(record)
        for field, rule in TABLE[kind].items():
            expected = {Rule.ALWAYS: True, Rule.NEVER: False, Rule.IF_OWN: own,
                        Rule.IF_NOT_SENSITIVE: need is not None and need not in firewall.SENSITIVE_NEEDS,
                        Rule.IF_PUBLIC_OUTCOME: outcome in firewall.PUBLIC_OUTCOMES}[rule]
            assert shown[field] == (record[field] if expected else None), (kind, field, need)
        assert firewall.project(kind, record, Viewer.PROTECTION, need_code=need) == record


def test_a_field_without_a_rule_is_refused_not_shown():
    with pytest.raises(KeyError, match="referral.shelter_address"):
        firewall.project("referral", {"shelter_address": "x"}, Viewer.ENFORCEMENT, need_code="MEDICAL_URGENT")


def test_history_rows_left_out_except_status_changes_and_its_own_words():
    enforcement = Viewer.ENFORCEMENT
    assert firewall.history_row_visible("accept", enforcement)
    assert not firewall.history_row_visible("note", enforcement)
    assert not firewall.history_row_visible("escalate", enforcement)
    assert not firewall.history_row_visible("reassign", enforcement)
    assert firewall.history_row_visible("note", enforcement,
                                        own=firewall.is_own_record("note", "MX-INM", "MX-INM"))
    assert not firewall.is_own_record("note", "MX-COMAR", "MX-INM")
    assert not firewall.is_own_record("route", "MX-INM", "MX-INM"), "routing chose the receiver, not the sender"
    assert firewall.history_row_visible("note", Viewer.PROTECTION)


def test_a_referral_of_a_sensitive_need_is_not_shown_to_an_enforcement_viewer_at_all():
    for need in firewall.SENSITIVE_NEEDS:
        assert not firewall.referral_shown(Viewer.ENFORCEMENT, need)
        assert firewall.referral_shown(Viewer.PROTECTION, need)
    assert firewall.referral_shown(Viewer.ENFORCEMENT, "MEDICAL_URGENT")
    assert not firewall.referral_shown(Viewer.ENFORCEMENT, None), "an unknown need fails closed"
