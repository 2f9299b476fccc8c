"""The contracts consumers enforce: found where configured, and never silently absent."""

import pytest

from enlace_platform.contracts import ContractViolation, EventContracts


def test_the_repository_schemas_are_loaded_by_default():
    contracts = EventContracts()
    assert {"case.screened.v1", "referral.completed.v1", "protection_hold.placed.v1"} <= contracts.event_types


def test_a_directory_without_schemas_is_refused_rather_than_checking_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ENLACE_CONTRACTS_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="ENLACE_CONTRACTS_DIR"):
        EventContracts()


def test_a_violation_names_the_path_and_rule_but_not_the_value():
    contracts = EventContracts()
    with pytest.raises(ContractViolation) as caught:
        contracts.check("consent.changed.v1", {"case_id": "María Pérez"})
    message = str(caught.value)
    assert "case_id: fails 'format'" in message and "<root>: fails 'required'" in message
    assert "María" not in message
    assert contracts.violations("some.unknown.v1", {"anything": 1}) == []
