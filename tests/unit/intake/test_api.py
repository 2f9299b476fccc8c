"""Intake's HTTP API on its real app and database, without a broker (events wait in the outbox).

Referral and hold events are handed to the real handlers as the consumer runner would.
"""

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from enlace_platform.audit import AuditRecord
from enlace_platform.consumer import PoisonMessage
from intake.service_layer.handlers import HOLD_HANDLERS, REFERRAL_HANDLERS
from tests.support.harness import bearer
from tests.support.intake_support import (
    deliver, family_group, hold_placed, hold_released, inm_supervisor, intake_without_broker, outbox_rows,
    referral_event,
)

PROBLEM = "application/problem+json"


async def _register(client, headers, body=None, **extra_headers):
    r = await client.post("/cases", headers={**headers, **extra_headers}, json=body or family_group())
    assert r.status_code == 201, r.text
    return r.json()


def _paths(response) -> list[str]:
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM, response.text
    return [e["path"] for e in response.json()["errors"]]


# --- encounters ------------------------------------------------------------------------------

async def test_a_family_group_is_registered_with_documents_and_relationships(intake, officer):
    client, runtime = intake
    case = await _register(client, officer)
    mother, daughter, teen, adult, _ = case["persons"]
    assert mother["documents"] == [{"type": "passport", "number": "HN1234567", "issuing_country": "HND"}]
    assert {(r["from_person_id"], r["to_person_id"], r["kind"]) for r in case["relationships"]} == {
        (mother["id"], daughter["id"], "parent"), (adult["id"], teen["id"], "unrelated_adult")}
    assert (await client.get(f"/cases/{case['id']}", headers=officer)).json() == case
    [event] = await outbox_rows(runtime, "case.registered.v1")
    payload = json.loads(event.payload)
    assert payload["person_ids"] == [p["id"] for p in case["persons"]] and payload["agency_id"] == "MX-INM"
    assert "HN1234567" not in event.payload and "Pérez" not in event.payload


async def test_bad_input_is_a_422_problem_naming_the_field(intake, officer):
    client, _ = intake
    body = family_group()
    body["persons"][0]["date_of_birth"] = "2999-01-01"
    assert "body/persons/0/date_of_birth" in _paths(await client.post("/cases", headers=officer, json=body))
    body = family_group()
    body["persons"][3]["documents"][0]["issuing_country"] = "gt"
    assert "body/persons/3/documents/0/issuing_country" in _paths(
        await client.post("/cases", headers=officer, json=body))
    body = family_group()
    body["relationships"][1]["to_person"] = 7
    assert _paths(await client.post("/cases", headers=officer, json=body)) == ["body/relationships/1/to_person"]
    body = family_group()
    body["relationships"][0].update(from_person=1, to_person=1)
    assert _paths(await client.post("/cases", headers=officer, json=body)) == ["body/relationships/0/to_person"]
    body = family_group()
    body["relationships"][0]["kind"] = "cousin"
    assert "body/relationships/0/kind" in _paths(await client.post("/cases", headers=officer, json=body))
    body = family_group()
    body["persons"][1]["eye_colour"] = "brown"
    assert "body/persons/1/eye_colour" in _paths(await client.post("/cases", headers=officer, json=body))
    for field, value in (("given_names", "Ana\x00"), ("family_names", "Pérez\nLópez")):
        body = family_group()
        body["persons"][1][field] = value
        assert _paths(await client.post("/cases", headers=officer, json=body)) == [f"body/persons/1/{field}"]
    body = family_group()
    body["persons"][0]["documents"][0]["number"] = "HN\x001"
    assert _paths(await client.post("/cases", headers=officer, json=body)) == ["body/persons/0/documents/0/number"]
    body = family_group()
    body["encountered_at"] = "2999-11-20T04:30:00Z"
    assert _paths(await client.post("/cases", headers=officer, json=body)) == ["body/encountered_at"]
    body = family_group()
    del body["persons"][2]["estimated_age"]
    assert "body/persons/2" in _paths(await client.post("/cases", headers=officer, json=body))


async def test_a_replayed_post_with_the_same_idempotency_key_returns_the_first_case(intake, officer):
    client, runtime = intake
    key = {"idempotency-key": f"border-post-7/{uuid.uuid4()}"}
    first = await _register(client, officer, **key)
    again = await _register(client, officer, **key)
    assert again == first
    assert len(await outbox_rows(runtime, "case.registered.v1")) == 1
    other_body = family_group()
    other_body["place"] = "Tapachula"
    r = await client.post("/cases", headers={**officer, **key}, json=other_body)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    # Without a key, each POST is a new case.
    await _register(client, officer)
    assert len(await outbox_rows(runtime, "case.registered.v1")) == 2


async def test_search_finds_only_the_agencys_own_cases(intake, officer, dev_issuer_dir):
    client, _ = intake
    case = await _register(client, officer)
    gt = bearer(dev_issuer_dir, "GT-IGM", "migration_authority", jurisdiction="GT")
    gt_case = await _register(client, gt)

    async def ids(headers, **terms):
        r = await client.post("/cases/search", headers=headers, json=terms)
        assert r.status_code == 200, r.text
        return [c["id"] for c in r.json()]

    assert await ids(officer, name="perez lopez") == [case["id"]], "accents and case are ignored"
    assert await ids(officer, name="SOFÍA") == [case["id"]]
    assert await ids(officer, document_number="GT-99-1234") == [case["id"]]
    assert await ids(officer, document_number=" hn1234567 ") == [case["id"]], "case and spaces around are ignored"
    assert await ids(officer, document_number="HN123456") == [], "but the number must be whole"
    assert await ids(officer, name="nobody") == []
    assert await ids(officer, name="Kevin", document_number="HN1234567") == [case["id"]]
    assert await ids(gt, name="Pérez") == [gt_case["id"]], "each agency finds its own registration only"
    assert await ids(gt, document_number="HN1234567") == [gt_case["id"]]
    comar = bearer(dev_issuer_dir, "MX-COMAR", "asylum_office")
    assert await ids(comar, name="Pérez") == []
    assert (await client.get(f"/cases/{case['id']}", headers=gt)).status_code == 404
    assert await ids(officer, name="%%") == [] and await ids(officer, name="__") == [], "no wildcards"
    assert await ids(officer) == [case["id"]]
    assert "body/name" in _paths(await client.post("/cases/search", headers=officer, json={"name": "a"}))
    listed = await client.get("/cases", headers=officer)
    assert [c["id"] for c in listed.json()] == [case["id"]]


async def test_search_terms_never_travel_in_a_url_nor_reach_traces(tmp_path, dev_issuer_dir, officer, spans,
                                                                     monkeypatch):
    monkeypatch.setenv("ENLACE_TRACE_SQL", "true")  # the SQL statements' spans are checked too
    async with intake_without_broker(tmp_path, dev_issuer_dir) as (client, _):
        await _register(client, officer)
        spans.clear()
        r = await client.post("/cases/search", headers=officer,
                              json={"name": "Pérez López", "document_number": "HN1234567"})
        assert r.status_code == 200 and len(r.json()) == 1
        traced = json.dumps([dict(s.attributes or {}) for s in spans.get_finished_spans()], ensure_ascii=False)
        assert "POST /cases/search" in {s.name for s in spans.get_finished_spans()}
        assert any("db.statement" in (s.attributes or {}) for s in spans.get_finished_spans()), "no SQL span"
        assert "HN1234567" not in traced and "Pérez" not in traced and "P%C3%A9rez" not in traced
        for term in ("name", "document_number"):
            refused = await client.get("/cases", headers=officer, params={term: "HN1234567"})
            assert _paths(refused) == [f"query/{term}"] and "POST /cases/search" in refused.json()["detail"]


async def test_a_person_is_updated_and_every_version_kept(intake, officer, dev_issuer_dir):
    client, _ = intake
    case = await _register(client, officer)
    teen = case["persons"][2]
    url = f"/cases/{case['id']}/persons/{teen['id']}"
    r = await client.patch(url, headers=officer, json={"family_names": "Ramírez Soto", "age_disputed": True,
                                                       "documents": [{"type": "birth_certificate",
                                                                      "number": "BC-77"}]})
    assert r.status_code == 200, r.text
    assert r.json()["family_names"] == "Ramírez Soto" and r.json()["version"] == 2 and r.json()["age_disputed"]
    r = await client.patch(url, headers=officer, json={"family_names": "Ramírez Soto"})
    assert r.json()["version"] == 2, "no change, no new version"
    history = (await client.get(f"{url}/history", headers=officer)).json()
    assert [v["version"] for v in history] == [1, 2]
    assert history[0]["snapshot"]["family_names"] == "Ramírez" and history[0]["snapshot"]["documents"] == []
    assert history[1]["changed_fields"] == ["age_disputed", "documents", "family_names"]
    assert history[1]["changed_by_agency_id"] == "MX-INM"
    found = (await client.post("/cases/search", headers=officer, json={"document_number": "BC-77"})).json()
    assert [c["id"] for c in found] == [case["id"]]
    assert "body/given_names" in _paths(await client.patch(url, headers=officer, json={"given_names": None}))
    assert "body/estimated_age" in _paths(await client.patch(url, headers=officer, json={"estimated_age": None,
                                                                                          "age_disputed": False}))
    gt = bearer(dev_issuer_dir, "GT-IGM", "migration_authority", jurisdiction="GT")
    assert (await client.patch(url, headers=gt, json={"family_names": "X"})).status_code == 404
    assert (await client.get(f"{url}/history", headers=gt)).status_code == 404


# --- screening -------------------------------------------------------------------------------

async def test_rescreening_makes_a_new_result_and_keeps_the_old_one(intake, officer):
    client, runtime = intake
    case = await _register(client, officer)
    adult = case["persons"][3]
    url = f"/cases/{case['id']}/screenings"
    first = (await client.post(url, headers=officer, json={"person_id": adult["id"]})).json()
    assert first["needs"] == [] and first["rules_version"] == "v3" and first["age_band"] == "18-59"
    r = await client.post(url, headers=officer, json={"person_id": adult["id"], "fear_of_return": True,
                                                      "kidnapped": True})
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["id"] != first["id"]
    assert [(n["code"], n["urgency"]) for n in second["needs"]] == [("INTERNATIONAL_PROTECTION", "high"),
                                                                   ("CRIME_VICTIM", "high")]
    listed = (await client.get(url, headers=officer, params={"person_id": adult["id"]})).json()
    assert [s["id"] for s in listed] == [first["id"], second["id"]] and listed[0]["needs"] == []
    events = [json.loads(r.payload) for r in await outbox_rows(runtime, "case.screened.v1")]
    assert [e["screening_id"] for e in events] == [first["id"], second["id"]]
    assert events[1]["needs"] == [{"code": "INTERNATIONAL_PROTECTION", "urgency": "high"},
                                  {"code": "CRIME_VICTIM", "urgency": "high"}]
    assert events[1]["consent_scope"] == []


def _person(given: str, **age) -> dict:
    return {"given_names": given, "family_names": "Test", "sex": "unknown", "nationality": "HND",
            "languages": ["es"], **age}


async def _screen_all(client, headers, persons, relationships, answers=None):
    """Registers a group and screens every member: {given name: {need code: reasons}}."""
    case = await _register(client, headers, {"place": "Ciudad Hidalgo", "encountered_at": "2026-11-20T04:30:00Z",
                                             "persons": persons, "relationships": relationships})
    found = {}
    for person in case["persons"]:
        body = {"person_id": person["id"], **(answers or {}).get(person["given_names"], {})}
        r = await client.post(f"/cases/{case['id']}/screenings", headers=headers, json=body)
        assert r.status_code == 201, r.text
        found[person["given_names"]] = {n["code"]: n["reasons"] for n in r.json()["needs"]}
    return found


async def test_family_shapes_as_a_border_post_registers_them(intake, officer):
    client, _ = intake
    # A mother with two children.
    found = await _screen_all(client, officer, [_person("Ana", estimated_age=34), _person("Beto", estimated_age=9),
                                                _person("Caro", estimated_age=3)],
                              [{"from_person": 0, "to_person": 1, "kind": "parent"},
                               {"from_person": 0, "to_person": 2, "kind": "parent"}])
    assert found == {"Ana": {}, "Beto": {}, "Caro": {}}
    # Siblings of 16 and 12 alone: the elder is no caregiver, however registered or answered.
    for kind in ("other_relative", "legal_guardian"):
        found = await _screen_all(client, officer, [_person("Dani", estimated_age=16),
                                                    _person("Eli", estimated_age=12)],
                                  [{"from_person": 0, "to_person": 1, "kind": kind}],
                                  {"Dani": {"travelling_with_other_relative": True},
                                   "Eli": {"travelling_with_other_relative": True}})
        assert set(found["Dani"]) == set(found["Eli"]) == {"UNACCOMPANIED_CHILD"}, (kind, found)
        assert any("a child too" in r for r in found["Eli"]["UNACCOMPANIED_CHILD"]), found
    # A child with her grandmother.
    found = await _screen_all(client, officer, [_person("Flor", estimated_age=67), _person("Gabi", estimated_age=8)],
                              [{"from_person": 0, "to_person": 1, "kind": "other_relative"}])
    assert found == {"Flor": {}, "Gabi": {"SEPARATED_CHILD": [
        "treated as a child: aged 8", "no parent or legal guardian in the registered group",
        "travels with another relative"]}}
    # A child with a parent whose relationship was not registered: care is not established.
    found = await _screen_all(client, officer, [_person("Hugo", estimated_age=40), _person("Iris", estimated_age=10)],
                              [], {"Iris": {"travelling_with_parent_or_guardian": True}})
    assert set(found["Iris"]) == {"UNACCOMPANIED_CHILD"}
    assert any("none is registered" in r for r in found["Iris"]["UNACCOMPANIED_CHILD"])
    # A date of birth that says 18 or more, but the age is disputed.
    found = await _screen_all(client, officer, [_person("Juan", date_of_birth="2007-01-01", age_disputed=True)], [])
    assert set(found["Juan"]) == {"UNACCOMPANIED_CHILD"} and "age disputed" in found["Juan"]["UNACCOMPANIED_CHILD"][0]
    # An adult with a baby, and an unrelated adult travelling with them.
    found = await _screen_all(client, officer, [_person("Karla", estimated_age=22), _person("Leo", estimated_age=0),
                                                _person("Mario", estimated_age=45)],
                              [{"from_person": 0, "to_person": 1, "kind": "parent"},
                               {"from_person": 2, "to_person": 0, "kind": "unrelated_adult"}])
    assert found == {"Karla": {}, "Leo": {}, "Mario": {}}


async def test_relationships_that_cannot_be_are_a_422_naming_the_relationship(intake, officer):
    client, _ = intake
    persons = [_person("Ana", estimated_age=34), _person("Beto", estimated_age=9), _person("Caro", estimated_age=30,
                                                                                          age_disputed=True)]

    async def paths(*relationships):
        return _paths(await client.post("/cases", headers=officer, json={
            "place": "Tapachula", "encountered_at": "2026-11-20T04:30:00Z", "persons": persons,
            "relationships": list(relationships)}))

    parent = {"from_person": 0, "to_person": 1, "kind": "parent"}
    assert await paths(parent, parent) == ["body/relationships/1"], "the same relationship twice"
    assert await paths(parent, {"from_person": 1, "to_person": 0, "kind": "parent"}) == ["body/relationships/1"]
    assert await paths(parent, {"from_person": 0, "to_person": 1, "kind": "unrelated_adult"}) == \
        ["body/relationships/1"], "a pair is related in one way only"
    assert await paths({"from_person": 1, "to_person": 0, "kind": "parent"}) == ["body/relationships/0/from_person"]
    assert await paths({"from_person": 1, "to_person": 0, "kind": "legal_guardian"}) == \
        ["body/relationships/0/from_person"], "a 9-year-old is nobody's guardian"
    assert await paths({"from_person": -1, "to_person": 0, "kind": "parent"}) == ["body/relationships/0/from_person"]
    assert await paths({"from_person": 0, "to_person": 3, "kind": "parent"}) == ["body/relationships/0/to_person"]
    # A disputed age is no ground to refuse; a grandmother who is also a mother is fine.
    r = await client.post("/cases", headers=officer, json={
        "place": "Tapachula", "encountered_at": "2026-11-20T04:30:00Z",
        "persons": persons + [_person("Dora", estimated_age=60)],
        "relationships": [{"from_person": 1, "to_person": 2, "kind": "parent"} | {"from_person": 2, "to_person": 1},
                          {"from_person": 3, "to_person": 0, "kind": "parent"}, parent]})
    assert r.status_code == 201, r.text


async def test_screening_input_is_checked(intake, officer, dev_issuer_dir):
    client, _ = intake
    case = await _register(client, officer)
    url = f"/cases/{case['id']}/screenings"
    pid = case["persons"][0]["id"]
    assert _paths(await client.post(url, headers=officer, json={
        "person_id": pid, "sexual_violence_within_72h": True})) == ["body/sexual_violence_within_72h"]
    assert "body/trafficking_indicators/0" in _paths(await client.post(url, headers=officer, json={
        "person_id": pid, "trafficking_indicators": ["debt bondage"]}))
    assert "body/pregnancy_high_risk" in _paths(await client.post(url, headers=officer, json={
        "person_id": pid, "pregnant": False, "pregnancy_high_risk": True}))
    r = await client.post(url, headers=officer, json={"person_id": pid, "trafficking_indicators": None})
    assert r.status_code == 201 and r.json()["answers"]["trafficking_indicators"] == [], "null is not asked"
    assert (await client.post(url, headers=officer, json={"person_id": "nobody"})).status_code == 404
    gt = bearer(dev_issuer_dir, "GT-IGM", "migration_authority", jurisdiction="GT")
    assert (await client.post(url, headers=gt, json={"person_id": pid})).status_code == 404


async def test_screening_post_is_idempotent(intake, officer):
    client, runtime = intake
    case = await _register(client, officer)
    key = {"idempotency-key": str(uuid.uuid4())}
    body = {"person_id": case["persons"][2]["id"]}
    first = await client.post(f"/cases/{case['id']}/screenings", headers={**officer, **key}, json=body)
    again = await client.post(f"/cases/{case['id']}/screenings", headers={**officer, **key}, json=body)
    assert again.status_code == 201 and again.json() == first.json()
    assert len(await outbox_rows(runtime, "case.screened.v1")) == 1


# --- consent ---------------------------------------------------------------------------------

async def test_consent_is_granted_withdrawn_and_published(intake, officer, dev_issuer_dir):
    client, runtime = intake
    coordinator = bearer(dev_issuer_dir, "MX-COORD", "coordinator", roles=["coordinator"])
    case = await _register(client, officer)
    adult = case["persons"][0]
    url = f"/cases/{case['id']}/persons/{adult['id']}/consents"
    r = await client.post(url, headers=officer, json={"recipient_agency_type": "asylum_office", "purpose": "referral"})
    assert r.status_code == 201, r.text
    consent = r.json()
    assert consent["basis"] == "consent" and consent["status"] == "granted" and consent["recorded_by"]
    again = await client.post(url, headers=officer, json={"recipient_agency_type": "asylum_office",
                                                          "purpose": "referral"})
    assert again.status_code == 200 and again.json()["id"] == consent["id"]
    screening = (await client.post(f"/cases/{case['id']}/screenings", headers=officer,
                                   json={"person_id": adult["id"], "fear_of_return": True})).json()
    assert screening["consent_scope"] == [{"recipient_agency_type": "asylum_office", "purpose": "referral",
                                           "basis": "consent"}]
    # The migration authority may not record it: withdrawing would cancel the asylum referral (firewall).
    refused = await client.post(f"{url}/{consent['id']}/withdrawal", headers=officer)
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json", refused.text
    assert "coordinator" in refused.json()["detail"]
    assert [c["status"] for c in (await client.get(url, headers=officer)).json()["items"]] == ["granted"]
    # The person withdraws through the coordinator of the jurisdiction, who records it.
    assert [c["id"] for c in (await client.get(url, headers=coordinator)).json()["items"]] == [consent["id"]]
    r = await client.post(f"{url}/{consent['id']}/withdrawal", headers=coordinator)
    assert r.status_code == 200 and r.json()["status"] == "withdrawn" and r.json()["withdrawn_at"]
    assert (await client.post(f"{url}/{consent['id']}/withdrawal", headers=coordinator)).json()["status"] \
        == "withdrawn"
    assert (await client.post(f"{url}/{consent['id']}/withdrawal", headers=officer)).status_code == 403, \
        "the same answer whatever the consent's state"
    listed = (await client.get(url, headers=officer)).json()
    assert [c["status"] for c in listed["items"]] == ["withdrawn"] and listed["scope"] == []
    events = [json.loads(r.payload) for r in await outbox_rows(runtime, "consent.changed.v1")]
    assert [(e["status"], e["consent_id"], e["basis"]) for e in events] == [
        ("granted", consent["id"], "consent"), ("withdrawn", consent["id"], "consent")]
    screened = json.loads((await outbox_rows(runtime, "case.screened.v1"))[0].payload)
    assert screened["consent_scope"] == screening["consent_scope"]


async def test_the_mandatory_override_is_for_children_and_child_protection_only(intake, supervisor):
    client, runtime = intake
    case = await _register(client, supervisor)
    mother, _, teen, _, disputed = case["persons"]

    def url(person):
        return f"/cases/{case['id']}/persons/{person['id']}/consents"

    override = {"recipient_agency_type": "child_protection", "purpose": "referral", "basis": "mandatory_override",
                "reason": "Unaccompanied child: LGDNNA art. 89"}
    r = await client.post(url(teen), headers=supervisor, json=override)
    assert r.status_code == 201, r.text
    assert r.json()["basis"] == "mandatory_override" and r.json()["reason"] == override["reason"]
    assert r.json()["recorded_by_agency_id"] == "MX-INM"
    assert (await client.post(url(disputed), headers=supervisor, json=override)).status_code == 201
    refused = await client.post(url(mother), headers=supervisor, json=override)
    assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM
    assert "child" in refused.json()["detail"]
    r = await client.post(url(teen), headers=supervisor, json={**override, "recipient_agency_type": "health"})
    assert r.status_code == 409
    assert _paths(await client.post(url(teen), headers=supervisor, json={**override, "reason": None})) == ["body/reason"]
    assert _paths(await client.post(url(teen), headers=supervisor, json={**override, "reason": "art.\x0089"})) == \
        ["body/reason"]
    assert _paths(await client.post(url(teen), headers=supervisor, json={
        "recipient_agency_type": "health", "purpose": "referral", "reason": "why"})) == ["body/reason"]
    assert [json.loads(e.payload)["basis"] for e in await outbox_rows(runtime, "consent.changed.v1")] == [
        "mandatory_override", "mandatory_override"]


# --- receiving agencies' access --------------------------------------------------------------

async def test_a_receiving_agency_reads_a_person_only_with_an_open_referral_and_consent(intake, officer,
                                                                                       dev_issuer_dir):
    client, runtime = intake
    case = await _register(client, officer)
    mother, daughter = case["persons"][:2]
    comar = bearer(dev_issuer_dir, "MX-COMAR", "asylum_office")
    other_office = bearer(dev_issuer_dir, "MX-COMAR-2", "asylum_office")
    mother_url = f"/cases/{case['id']}/persons/{mother['id']}"
    assert (await client.get(mother_url, headers=officer)).status_code == 200, "the registering agency, always"
    assert (await client.get(mother_url, headers=comar)).status_code == 404

    referral_id = str(uuid.uuid4())
    common = dict(referral_id=referral_id, case_id=case["id"], person_id=mother["id"],
                  need_code="INTERNATIONAL_PROTECTION")
    await deliver(runtime, REFERRAL_HANDLERS, referral_event("requested", status="requested", to_agency_id="MX-COMAR",
                                                             to_agency_type="asylum_office", **common))
    assert (await client.get(mother_url, headers=comar)).status_code == 404, "no consent yet"
    await client.post(f"{mother_url}/consents", headers=officer,
                      json={"recipient_agency_type": "asylum_office", "purpose": "follow_up"})
    assert (await client.get(mother_url, headers=comar)).status_code == 404, "follow_up is not referral"
    consent = (await client.post(f"{mother_url}/consents", headers=officer,
                                 json={"recipient_agency_type": "asylum_office", "purpose": "referral"})).json()
    r = await client.get(mother_url, headers=comar)
    assert r.status_code == 200 and r.json()["given_names"] == "María José"
    daughter_url = f"/cases/{case['id']}/persons/{daughter['id']}"
    assert (await client.get(daughter_url, headers=comar)).status_code == 404, "only the person referred"
    assert (await client.get(f"/cases/{case['id']}", headers=comar)).status_code == 404, "never the whole case"
    assert (await client.get(mother_url, headers=other_office)).status_code == 404

    await deliver(runtime, REFERRAL_HANDLERS, referral_event("reassigned", status="requested",
                                                             to_agency_id="MX-COMAR-2",
                                                             to_agency_type="asylum_office", **common))
    assert (await client.get(mother_url, headers=comar)).status_code == 404, "reassignment moves the grant"
    assert (await client.get(mother_url, headers=other_office)).status_code == 200

    coordinator = bearer(dev_issuer_dir, "MX-COORD", "coordinator", roles=["coordinator"])
    r = await client.post(f"{mother_url}/consents/{consent['id']}/withdrawal", headers=coordinator)
    assert r.status_code == 200, r.text
    assert (await client.get(mother_url, headers=other_office)).status_code == 404, "consent withdrawn"
    await client.post(f"{mother_url}/consents", headers=officer,
                      json={"recipient_agency_type": "asylum_office", "purpose": "referral"})
    assert (await client.get(mother_url, headers=other_office)).status_code == 200
    await deliver(runtime, REFERRAL_HANDLERS, referral_event(
        "completed", status="completed", to_agency_id="MX-COMAR-2", to_agency_type="asylum_office",
        outcome_code="ASYLUM_CLAIM_REGISTERED", **common))
    assert (await client.get(mother_url, headers=other_office)).status_code == 404, "closed referral"
    view = (await client.get(f"/cases/{case['id']}", headers=officer)).json()
    # The migration authority sent it, yet is not shown an asylum referral at all (firewall.referral_shown): it
    # learns of one only through the person's hold.
    assert view["referrals"] == [] and referral_id not in json.dumps(view)


async def test_child_protection_reads_a_child_under_the_mandatory_override(intake, officer, dev_issuer_dir):
    client, runtime = intake
    case = await _register(client, officer)
    teen = case["persons"][2]
    pfpnna = bearer(dev_issuer_dir, "MX-PFPNNA", "child_protection")
    url = f"/cases/{case['id']}/persons/{teen['id']}"
    await deliver(runtime, REFERRAL_HANDLERS, referral_event(
        "accepted", referral_id=str(uuid.uuid4()), case_id=case["id"], person_id=teen["id"],
        need_code="UNACCOMPANIED_CHILD", status="accepted", to_agency_id="MX-PFPNNA",
        to_agency_type="child_protection"))
    assert (await client.get(url, headers=pfpnna)).status_code == 404
    await client.post(f"{url}/consents", headers=inm_supervisor(dev_issuer_dir), json={
        "recipient_agency_type": "child_protection", "purpose": "referral", "basis": "mandatory_override",
        "reason": "Unaccompanied child"})
    assert (await client.get(url, headers=pfpnna)).status_code == 200


async def test_an_older_referral_event_does_not_undo_a_newer_one(intake, officer):
    from datetime import UTC, datetime, timedelta

    client, runtime = intake
    case = await _register(client, officer)
    pid = case["persons"][0]["id"]
    common = dict(referral_id=str(uuid.uuid4()), case_id=case["id"], person_id=pid, need_code="MEDICAL_URGENT",
                  to_agency_id="MX-SALUD", to_agency_type="health")
    now = datetime.now(UTC)
    await deliver(runtime, REFERRAL_HANDLERS, referral_event("cancelled", status="cancelled", occurred_at=now,
                                                             reason_code="DUPLICATE", **common))
    await deliver(runtime, REFERRAL_HANDLERS, referral_event("accepted", status="accepted",
                                                             occurred_at=now - timedelta(minutes=5), **common))
    [ref] = (await client.get(f"/cases/{case['id']}", headers=officer)).json()["referrals"]
    assert ref["status"] == "cancelled"


# --- removal safeguard -----------------------------------------------------------------------

async def test_removal_is_refused_under_an_active_hold_and_accepted_once_released(intake, supervisor):
    client, runtime = intake
    case = await _register(client, supervisor)
    teen = case["persons"][2]
    url = f"/cases/{case['id']}/persons/{teen['id']}/removal-orders"
    placed = hold_placed(case_id=case["id"], person_id=teen["id"], need_code="UNACCOMPANIED_CHILD")
    await deliver(runtime, HOLD_HANDLERS, placed)
    await deliver(runtime, HOLD_HANDLERS, hold_placed(case_id=case["id"], person_id=teen["id"],
                                                      need_code="UNACCOMPANIED_CHILD",
                                                      hold_id=placed.data["hold_id"],
                                                      referral_id=placed.data["referral_id"]))
    r = await client.post(url, headers=supervisor, json={"destination_country": "HND"})
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    problem = r.json()
    assert problem["holds"] == [{"hold_id": placed.data["hold_id"], "referral_id": placed.data["referral_id"],
                                 "need_code": "UNACCOMPANIED_CHILD", "not_before": None}]
    assert placed.data["hold_id"] in problem["detail"] and placed.data["referral_id"] in problem["detail"]
    async with runtime.read_sessions() as session:  # the refused attempt and its audit row commit together
        audited = (await session.exec(select(AuditRecord.status).where(
            AuditRecord.route == "/cases/{case_id}/persons/{person_id}/removal-orders"))).all()
    assert audited == [409], "the row says what the caller got, not the route's 201"
    view = (await client.get(f"/cases/{case['id']}", headers=supervisor)).json()
    assert [(h["hold_id"], h["status"]) for h in view["holds"]] == [(placed.data["hold_id"], "active")]

    other = case["persons"][3]
    r = await client.post(f"/cases/{case['id']}/persons/{other['id']}/removal-orders", headers=supervisor,
                          json={"destination_country": "GTM"})
    assert r.status_code == 201, "a hold on one person does not stop another's order"

    await deliver(runtime, HOLD_HANDLERS, hold_released(placed, outcome_code="CHILD_PLACED_IN_CARE"))
    key = {"idempotency-key": str(uuid.uuid4())}
    r = await client.post(url, headers={**supervisor, **key}, json={"destination_country": "HND"})
    assert r.status_code == 201 and r.json()["status"] == "accepted", r.text
    again = await client.post(url, headers={**supervisor, **key}, json={"destination_country": "HND"})
    assert again.status_code == 201 and again.json() == r.json()
    [hold] = (await client.get(f"/cases/{case['id']}", headers=supervisor)).json()["holds"]
    assert hold["status"] == "released" and hold["outcome_code"] == "CHILD_PLACED_IN_CARE"
    assert hold["release_reason"] is None, "why it ended is the protection side's (the firewall)"


async def test_a_release_that_arrives_before_its_placement_still_ends_released(intake, supervisor):
    client, runtime = intake
    case = await _register(client, supervisor)
    adult = case["persons"][0]
    placed = hold_placed(case_id=case["id"], person_id=adult["id"], need_code="INTERNATIONAL_PROTECTION")
    await deliver(runtime, HOLD_HANDLERS, hold_released(placed))
    await deliver(runtime, HOLD_HANDLERS, placed)
    r = await client.post(f"/cases/{case['id']}/persons/{adult['id']}/removal-orders", headers=supervisor,
                          json={"destination_country": "HND"})
    assert r.status_code == 201, r.text
    [hold] = (await client.get(f"/cases/{case['id']}", headers=supervisor)).json()["holds"]
    assert hold["status"] == "released" and hold["referral_id"] == placed.data["referral_id"]
    assert hold["placed_at"] is not None


async def test_removal_is_refused_exactly_while_at_least_one_hold_is_active(intake, supervisor):
    client, runtime = intake
    case = await _register(client, supervisor)
    teen = case["persons"][2]
    url = f"/cases/{case['id']}/persons/{teen['id']}/removal-orders"

    async def blocking():
        r = await client.post(url, headers=supervisor, json={"destination_country": "HND"})
        assert r.status_code in (201, 409), r.text
        return sorted(h["hold_id"] for h in r.json()["holds"]) if r.status_code == 409 else []

    child = hold_placed(case_id=case["id"], person_id=teen["id"], need_code="UNACCOMPANIED_CHILD")
    asylum = hold_placed(case_id=case["id"], person_id=teen["id"], need_code="INTERNATIONAL_PROTECTION")
    unknown = hold_placed(case_id=str(uuid.uuid4()), person_id=str(uuid.uuid4()), need_code="UNACCOMPANIED_CHILD")
    for event in (child, asylum, unknown, child):
        await deliver(runtime, HOLD_HANDLERS, event)
    assert await blocking() == sorted([child.data["hold_id"], asylum.data["hold_id"]])
    await deliver(runtime, HOLD_HANDLERS, hold_released(child))
    await deliver(runtime, HOLD_HANDLERS, hold_released(child))
    assert await blocking() == [asylum.data["hold_id"]], "one hold released, the other still stands"
    await deliver(runtime, HOLD_HANDLERS, child)  # a late redelivery of a released hold's placement
    assert await blocking() == [asylum.data["hold_id"]]
    await deliver(runtime, HOLD_HANDLERS, hold_released(asylum, outcome_code="ASYLUM_CLAIM_WITHDRAWN"))
    assert await blocking() == []
    again = hold_placed(case_id=case["id"], person_id=teen["id"], need_code="INTERNATIONAL_PROTECTION")
    await deliver(runtime, HOLD_HANDLERS, again)  # a new referral, a new hold
    assert await blocking() == [again.data["hold_id"]]
    view = (await client.get(f"/cases/{case['id']}", headers=supervisor)).json()
    # The migration authority sees that the asylum holds hold, not their need (the firewall).
    assert sorted((h["need_code"] or "", h["status"]) for h in view["holds"]) == [
        ("", "active"), ("", "released"), ("UNACCOMPANIED_CHILD", "released")]


async def test_a_screening_that_found_a_hold_bearing_need_refuses_removal_until_its_hold_is_released(intake, supervisor):
    """The hold travels intake -> referral -> intake: an order in between must not slip through."""
    client, runtime = intake
    case = await _register(client, supervisor)
    mother, _, teen, adult, _ = case["persons"]
    screen = f"/cases/{case['id']}/screenings"

    async def order(person):
        return await client.post(f"/cases/{case['id']}/persons/{person['id']}/removal-orders", headers=supervisor,
                                 json={"destination_country": "HND"})

    screening = (await client.post(screen, headers=supervisor, json={"person_id": teen["id"]})).json()
    r = await order(teen)
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["holds"] == [] and r.json()["pending_holds"] == [
        {"need_code": "UNACCOMPANIED_CHILD", "screening_id": screening["id"]}]
    assert screening["id"] in r.json()["detail"] and "UNACCOMPANIED_CHILD" in r.json()["detail"]
    await client.post(screen, headers=supervisor, json={"person_id": adult["id"], "kidnapped": True})
    assert (await order(adult)).status_code == 201, "no hold-bearing need, nothing pending"

    placed = hold_placed(case_id=case["id"], person_id=teen["id"], need_code="UNACCOMPANIED_CHILD")
    await deliver(runtime, HOLD_HANDLERS, placed)
    r = await order(teen)
    assert r.status_code == 409 and r.json()["pending_holds"] == []
    assert [h["hold_id"] for h in r.json()["holds"]] == [placed.data["hold_id"]]
    await deliver(runtime, HOLD_HANDLERS, hold_released(placed, outcome_code="CHILD_REUNIFIED_WITH_FAMILY"))
    assert (await order(teen)).status_code == 201

    # An asylum claim finally rejected, the hold released; at the removal the person voices a new fear.
    old = hold_placed(case_id=case["id"], person_id=mother["id"], need_code="INTERNATIONAL_PROTECTION")
    await deliver(runtime, HOLD_HANDLERS, old)
    await deliver(runtime, HOLD_HANDLERS, hold_released(old, outcome_code="ASYLUM_CLAIM_REJECTED_FINAL",
                                                        released_at=datetime.now(UTC) - timedelta(days=2)))
    assert (await order(mother)).status_code == 201
    await client.post(screen, headers=supervisor, json={"person_id": mother["id"], "fear_of_return": True})
    r = await order(mother)
    assert r.status_code == 409 and [p["need_code"] for p in r.json()["pending_holds"]] == ["INTERNATIONAL_PROTECTION"]


async def test_removal_orders_belong_to_the_registering_agency(intake, supervisor, dev_issuer_dir):
    client, _ = intake
    case = await _register(client, supervisor)
    url = f"/cases/{case['id']}/persons/{case['persons'][0]['id']}/removal-orders"
    comar = bearer(dev_issuer_dir, "MX-COMAR", "asylum_office", roles=["supervisor"])
    assert (await client.post(url, headers=comar, json={"destination_country": "HND"})).status_code == 404
    assert "body/destination_country" in _paths(await client.post(url, headers=supervisor,
                                                                  json={"destination_country": "Honduras"}))


async def test_a_hold_event_that_breaks_its_contract_is_poison(intake, officer):
    client, runtime = intake
    case = await _register(client, officer)
    bad = hold_placed(case_id=case["id"], person_id=case["persons"][0]["id"], need_code="UNACCOMPANIED_CHILD")
    del bad.data["hold_id"]
    with pytest.raises(PoisonMessage, match="breaks its schema"):
        await deliver(runtime, HOLD_HANDLERS, bad)  # the published contract already refuses it
    with pytest.raises(PoisonMessage, match="hold_id"):
        await deliver(runtime, HOLD_HANDLERS, bad, check_contract=False)  # and so does intake's own parsing
    wrong_key = hold_placed(case_id=case["id"], person_id=case["persons"][0]["id"], need_code="UNACCOMPANIED_CHILD")
    wrong_key = type(wrong_key)(**{**wrong_key.__dict__, "key": str(uuid.uuid4())})
    with pytest.raises(PoisonMessage, match="record key"):
        await deliver(runtime, HOLD_HANDLERS, wrong_key, check_contract=False)
    unknown_need = hold_placed(case_id=case["id"], person_id=case["persons"][0]["id"], need_code="HUNGRY")
    with pytest.raises(PoisonMessage, match="need_code"):
        await deliver(runtime, HOLD_HANDLERS, unknown_need, check_contract=False)


async def test_a_new_rule_set_never_rewrites_past_results(intake, officer, monkeypatch):
    import copy

    from intake.domain.rules import parse_rule_set, rule_set_document
    from intake.domain.screening import FACT_TYPES, RULES_VERSION
    from intake.service_layer import services

    client, runtime = intake
    case = await _register(client, officer)
    body = {"person_id": case["persons"][0]["id"], "fear_of_return": True}
    url = f"/cases/{case['id']}/screenings"
    before = (await client.post(url, headers=officer, json=body)).json()

    document = copy.deepcopy(rule_set_document(RULES_VERSION))
    document["version"] = "v4-test"
    for rule in document["rules"]:
        if rule["id"] == "IP-1":
            rule["urgency"] = "immediate"
    monkeypatch.setattr(services, "current_rules", lambda: parse_rule_set(document, FACT_TYPES))
    after = (await client.post(url, headers=officer, json=body)).json()

    listed = (await client.get(url, headers=officer)).json()
    assert [(s["id"], s["rules_version"], s["needs"][0]["urgency"]) for s in listed] == [
        (before["id"], "v3", "high"), (after["id"], "v4-test", "immediate")]
    assert [json.loads(r.payload)["rules_version"] for r in await outbox_rows(runtime, "case.screened.v1")] == [
        "v3", "v4-test"]
