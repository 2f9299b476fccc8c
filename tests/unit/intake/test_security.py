"""Intake's security: roles per route, sealed personal data, erasure, the retention purge and consent withdrawal.

On the real app and database without a broker (events wait in the outbox); referral and hold events are
handed to the real handlers as the consumer runner would.
"""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from enlace_platform.access import Permission, required_permission
from enlace_platform.audit import AuditRecord
from enlace_platform.crypto import SubjectKey
from enlace_platform.firewall import SENSITIVE_NEEDS
from intake.adapters.orm import CaseRow, PersonRow, ReferralViewRow, SearchTokenRow
from intake.adapters.vault import Vault
from intake.domain import consent as consent_rules
from intake.domain.safeguard import HOLD_BEARING_NEEDS
from intake.entrypoints.api import router
from intake.service_layer import services
from intake.service_layer.handlers import HOLD_HANDLERS, REFERRAL_HANDLERS
from intake.service_layer.retention import purge_expired, retention_loop
from tests.support.harness import bearer, database_bytes, eventually
from tests.support.intake_support import (
    deliver, family_group, hold_placed, inm, intake_settings, outbox_rows, referral_event,
)

PROBLEM = "application/problem+json"
SECRETS = ("María José", "Pérez López", "Sofía", "Kevin", "Ramírez", "Ramón", "Brayan", "HN1234567", "GT-99-1234")


async def _register(client, headers, body=None):
    r = await client.post("/cases", headers=headers, json=body or family_group())
    assert r.status_code == 201, r.text
    return r.json()


def _leaks(raw: bytes, secrets) -> list[str]:
    return [s for s in secrets if s.encode() in raw or s.encode("utf-16-le") in raw]


# --- roles -------------------------------------------------------------------------------------

def test_every_intake_route_declares_one_permission():
    expected = {
        ("POST", "/cases"): Permission.WRITE_CASES, ("POST", "/cases/search"): Permission.READ_CASES,
        ("GET", "/cases"): Permission.READ_CASES, ("GET", "/cases/{case_id}"): Permission.READ_CASES,
        ("GET", "/cases/{case_id}/persons/{person_id}"): Permission.READ_CASES,
        ("PATCH", "/cases/{case_id}/persons/{person_id}"): Permission.WRITE_CASES,
        ("GET", "/cases/{case_id}/persons/{person_id}/history"): Permission.READ_CASES,
        ("POST", "/cases/{case_id}/screenings"): Permission.WRITE_CASES,
        ("GET", "/cases/{case_id}/screenings"): Permission.READ_CASES,
        ("POST", "/cases/{case_id}/persons/{person_id}/consents"): Permission.WRITE_CASES,
        ("GET", "/cases/{case_id}/persons/{person_id}/consents"): Permission.READ_CONSENTS,
        ("POST", "/cases/{case_id}/persons/{person_id}/consents/{consent_id}/withdrawal"): Permission.WITHDRAW_CONSENT,
        ("POST", "/cases/{case_id}/persons/{person_id}/removal-orders"): Permission.ORDER_REMOVAL,
        ("POST", "/cases/{case_id}/persons/{person_id}/erasure"): Permission.ERASE_PERSON,
    }
    found = {(m, r.path): required_permission(r.dependant) for r in router.routes for m in r.methods}
    assert found == expected


async def test_an_auditor_gets_403_on_every_intake_route(intake, dev_issuer_dir, officer):
    client, _ = intake
    case = await _register(client, officer)
    auditor = inm(dev_issuer_dir, ("auditor",))
    ids = {"case_id": case["id"], "person_id": case["persons"][0]["id"], "consent_id": str(uuid.uuid4())}
    for route in router.routes:
        for method in route.methods:
            r = await client.request(method, route.path.format(**ids), headers=auditor, json={})
            assert r.status_code == 403 and r.headers["content-type"] == PROBLEM, (method, route.path, r.text)
    assert (await client.get("/audit", headers=auditor)).status_code == 200, "auditors read the audit log"


async def test_caseworkers_neither_override_consent_nor_order_removal_nor_erase(intake, officer, supervisor):
    client, _ = intake
    case = await _register(client, officer)
    mother, _, teen, adult, _ = case["persons"]
    base = f"/cases/{case['id']}/persons"
    override = {"recipient_agency_type": "child_protection", "purpose": "referral", "basis": "mandatory_override",
                "reason": "LGDNNA art. 89"}
    for headers, expected in ((officer, 403), (supervisor, 201)):
        r = await client.post(f"{base}/{teen['id']}/consents", headers=headers, json=override)
        assert r.status_code == expected, r.text
        r = await client.post(f"{base}/{adult['id']}/removal-orders", headers=headers,
                              json={"destination_country": "GTM"})
        assert r.status_code == expected, r.text
    refused = await client.post(f"{base}/{teen['id']}/consents", headers=officer, json=override)
    assert refused.json()["permission"] == "consent:override"
    consent = {"recipient_agency_type": "asylum_office", "purpose": "referral"}
    assert (await client.post(f"{base}/{mother['id']}/consents", headers=officer, json=consent)).status_code == 201
    erase = {"reason_code": "ERASURE_REQUEST"}
    assert (await client.post(f"{base}/{adult['id']}/erasure", headers=officer, json=erase)).status_code == 403
    assert (await client.post(f"{base}/{adult['id']}/erasure", headers=supervisor, json=erase)).status_code == 200
    assert (await client.get(f"/cases/{case['id']}", headers=supervisor)).status_code == 200, \
        "supervisors are caseworkers too"


async def test_a_coordinator_does_not_read_cases(intake, officer, dev_issuer_dir):
    client, _ = intake
    case = await _register(client, officer)
    coordinator = bearer(dev_issuer_dir, "MX-COORD", "coordinator", roles=["coordinator"])
    assert (await client.get(f"/cases/{case['id']}", headers=coordinator)).status_code == 403
    same_agency = inm(dev_issuer_dir, ("coordinator",))
    assert (await client.get(f"/cases/{case['id']}", headers=same_agency)).status_code == 403


async def test_another_agencys_supervisor_gets_404_not_the_person(intake, officer, dev_issuer_dir):
    client, _ = intake
    case = await _register(client, officer)
    other = bearer(dev_issuer_dir, "MX-INM-2", "migration_authority", roles=["supervisor"])
    person = case["persons"][3]
    for method, suffix, body in (("GET", "", None), ("POST", "/erasure", {"reason_code": "ERASURE_REQUEST"}),
                                 ("POST", "/removal-orders", {"destination_country": "GTM"})):
        r = await client.request(method, f"/cases/{case['id']}/persons/{person['id']}{suffix}", headers=other,
                                 json=body)
        assert r.status_code == 404, (suffix, r.text)


async def test_reads_are_audited_with_the_persons_they_show(intake, officer, dev_issuer_dir):
    client, runtime = intake
    case = await _register(client, officer)
    await client.get(f"/cases/{case['id']}", headers=officer)
    await client.post("/cases/search", headers=officer, json={"name": "Kevin"})
    async with runtime.sessions() as session:
        rows = (await session.exec(select(AuditRecord))).all()
    persons = {p["id"] for p in case["persons"]}
    by_route = {}
    for row in rows:
        by_route.setdefault((row.method, row.route), set()).add((row.object_type, row.object_id))
    assert {("person", p) for p in persons} | {("case", case["id"])} <= by_route[("GET", "/cases/{case_id}")]
    assert {("person", p) for p in persons} | {("case", case["id"])} <= by_route[("POST", "/cases/search")]
    assert {("person", p) for p in persons} <= by_route[("POST", "/cases")]
    assert all(r.purpose == "case_management" for r in rows)


# --- sealed at rest ----------------------------------------------------------------------------

async def test_personal_fields_are_sealed_at_rest_and_still_searchable(intake, officer):
    client, runtime = intake
    case = await _register(client, officer)
    mother, _, teen, _, _ = case["persons"]
    await client.post(f"/cases/{case['id']}/screenings", headers=officer,
                      json={"person_id": mother["id"], "fear_of_return": True, "sexual_violence_disclosed": True})
    await client.patch(f"/cases/{case['id']}/persons/{teen['id']}", headers=officer,
                       json={"given_names": "Kevin Alexander"})
    async with runtime.sessions() as session:
        row = await session.get(PersonRow, mother["id"])
        keys = (await session.exec(select(SubjectKey))).all()
    assert row.given_names.startswith("enc1:") and row.date_of_birth.startswith("enc1:")
    assert len(keys) == 5, "one key per person"
    assert _leaks(database_bytes(runtime.settings.database_url), SECRETS + ("Alexander", "1990-02-14")) == []
    # Still readable through the API, and searchable by whole words and whole document numbers.
    person = (await client.get(f"/cases/{case['id']}/persons/{mother['id']}", headers=officer)).json()
    assert person["given_names"] == "María José" and person["documents"][0]["number"] == "HN1234567"
    [screening] = (await client.get(f"/cases/{case['id']}/screenings", headers=officer)).json()
    assert screening["answers"]["sexual_violence_disclosed"] is True and screening["needs"][0]["reasons"]
    history = (await client.get(f"/cases/{case['id']}/persons/{teen['id']}/history", headers=officer)).json()
    assert [v["snapshot"]["given_names"] for v in history] == ["Kevin", "Kevin Alexander"]

    async def found(**terms):
        r = await client.post("/cases/search", headers=officer, json=terms)
        return [c["id"] for c in r.json()]

    assert await found(name="kevin alexander") == [case["id"]]
    assert await found(name="perez") == [case["id"]]
    assert await found(document_number="hn1234567") == [case["id"]]
    assert await found(name="Kevin", document_number="GT-99-1234") == [case["id"]], "different persons may match"
    assert await found(name="Sofía Ramírez") == [], "every word of a name term must be one person's"
    assert await found(document_number="HN123456") == [], "document numbers match whole"


# --- erasure -----------------------------------------------------------------------------------

async def test_erasure_is_refused_under_a_hold_an_open_referral_or_a_pending_hold(intake, officer, supervisor):
    client, runtime = intake
    case = await _register(client, officer)
    mother, daughter, teen, adult, _ = case["persons"]
    base = f"/cases/{case['id']}/persons"
    erase = {"reason_code": "ERASURE_REQUEST"}
    hold = hold_placed(case_id=case["id"], person_id=teen["id"], need_code="UNACCOMPANIED_CHILD")
    await deliver(runtime, HOLD_HANDLERS, hold)
    r = await client.post(f"{base}/{teen['id']}/erasure", headers=supervisor, json=erase)
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    assert r.json()["holds"][0]["hold_id"] == hold.data["hold_id"] and hold.data["hold_id"] in r.json()["detail"]

    referral_id = str(uuid.uuid4())
    await deliver(runtime, REFERRAL_HANDLERS, referral_event(
        "accepted", referral_id=referral_id, case_id=case["id"], person_id=daughter["id"], need_code="MEDICAL_URGENT",
        status="accepted", to_agency_id="MX-IMSS", to_agency_type="health"))
    r = await client.post(f"{base}/{daughter['id']}/erasure", headers=supervisor, json=erase)
    assert r.status_code == 409 and r.json()["open_referrals"][0]["referral_id"] == referral_id
    assert referral_id in r.json()["detail"]

    await client.post(f"/cases/{case['id']}/screenings", headers=officer,
                      json={"person_id": mother["id"], "fear_of_return": True})
    r = await client.post(f"{base}/{mother['id']}/erasure", headers=supervisor, json=erase)
    assert r.status_code == 409 and r.json()["pending_holds"] == ["INTERNATIONAL_PROTECTION"]

    assert _paths_of(await client.post(f"{base}/{adult['id']}/erasure", headers=supervisor,
                                       json={"reason_code": "BECAUSE"})) == ["body/reason_code"]
    assert await outbox_rows(runtime, "person.erased.v1") == []
    async with runtime.sessions() as session:
        assert len((await session.exec(select(SubjectKey))).all()) == 5, "nothing was shredded"


def _paths_of(response) -> list[str]:
    assert response.status_code == 422, response.text
    return [e["path"] for e in response.json()["errors"]]


async def test_an_erased_person_is_gone_everywhere(intake, officer, supervisor):
    client, runtime = intake
    case = await _register(client, officer)
    adult = case["persons"][3]
    base = f"/cases/{case['id']}/persons/{adult['id']}"
    await client.post(f"/cases/{case['id']}/screenings", headers=officer,
                      json={"person_id": adult["id"], "kidnapped": True})
    consent = (await client.post(f"{base}/consents", headers=officer,
                                 json={"recipient_agency_type": "health", "purpose": "referral"})).json()
    await client.patch(base, headers=officer, json={"family_names": "Díaz Ortega"})
    assert _leaks(database_bytes(runtime.settings.database_url), ("Ramón", "GT-99-1234", "Ortega")) == [], "sealed before erasure too"
    async with runtime.sessions() as session:
        wrapped_key = (await session.get(SubjectKey, adult["id"])).wrapped_key
    assert wrapped_key in database_bytes(runtime.settings.database_url)

    r = await client.post(f"{base}/erasure", headers=supervisor, json={"reason_code": "ERASURE_REQUEST"})
    assert r.status_code == 200, r.text
    erased = r.json()
    assert erased["id"] == adult["id"] and erased["erased"] is True
    again = await client.post(f"{base}/erasure", headers=supervisor, json={"reason_code": "ERASURE_REQUEST"})
    assert again.status_code == 200 and again.json() == erased, "erasing twice gives the same result"

    for method, url, body in (("GET", base, None), ("GET", f"{base}/history", None), ("GET", f"{base}/consents", None),
                              ("PATCH", base, {"given_names": "X"}),
                              ("POST", f"{base}/consents", {"recipient_agency_type": "health", "purpose": "follow_up"}),
                              ("POST", f"{base}/consents/{consent['id']}/withdrawal", None),
                              ("POST", f"/cases/{case['id']}/screenings", {"person_id": adult["id"]})):
        r = await client.request(method, url, headers=officer, json=body)
        assert r.status_code == 410 and r.headers["content-type"] == PROBLEM, (method, url, r.text)
        assert r.json()["type"].endswith("/erased") and r.json()["person_id"] == adult["id"]
    r = await client.post(f"{base}/removal-orders", headers=supervisor, json={"destination_country": "GTM"})
    assert r.status_code == 410

    view = (await client.get(f"/cases/{case['id']}", headers=officer)).json()
    assert view["persons"][3] == {"id": adult["id"], "erased": True, "erased_at": erased["erased_at"]}
    assert view["persons"][0]["given_names"] == "María José", "the others are untouched"
    screenings = (await client.get(f"/cases/{case['id']}/screenings", headers=officer)).json()
    [screening] = screenings
    assert screening["answers"] is None and screening["needs"] and all(
        n["reasons"] == [] and n["rule_ids"] == [] and n["flags"] == [] for n in screening["needs"]), \
        "an erased person's screening keeps the codes other services already had, nothing more"
    assert (await client.post("/cases/search", headers=officer, json={"name": "Ramón"})).json() == []
    assert (await client.post("/cases/search", headers=officer, json={"document_number": "GT-99-1234"})).json() == []
    summary = (await client.post("/cases/search", headers=officer, json={"name": "Kevin"})).json()
    assert {"id": adult["id"], "erased": True, "erased_at": erased["erased_at"]} in summary[0]["persons"]

    async with runtime.sessions() as session:
        assert await session.get(SubjectKey, adult["id"]) is None
        tokens = (await session.exec(select(SearchTokenRow).where(SearchTokenRow.person_id == adult["id"]))).all()
        assert tokens == []
    [event] = await outbox_rows(runtime, "person.erased.v1")
    payload = json.loads(event.payload)
    assert payload == {"case_id": case["id"], "person_id": adult["id"], "reason_code": "ERASURE_REQUEST",
                       "erased_at": payload["erased_at"]} and event.subject == adult["id"]
    raw = database_bytes(runtime.settings.database_url)
    assert _leaks(raw, ("Ramón", "Díaz", "GT-99-1234", "Ortega")) == []
    assert wrapped_key not in raw, "the destroyed key survives neither in the database file nor in its log"
    assert "María José".encode() not in raw, "the others stay sealed too"


# --- retention ---------------------------------------------------------------------------------

async def test_the_retention_purge_erases_inactive_persons_nothing_holds(intake, officer):
    client, runtime = intake
    case = await _register(client, officer)
    mother, daughter, teen, adult, disputed = case["persons"]
    await deliver(runtime, HOLD_HANDLERS, hold_placed(case_id=case["id"], person_id=teen["id"],
                                                      need_code="UNACCOMPANIED_CHILD"))
    await client.post(f"/cases/{case['id']}/screenings", headers=officer,
                      json={"person_id": disputed["id"], "travelling_with_parent_or_guardian": False})
    fresh = await _register(client, officer)

    assert await purge_expired(runtime) == 0, "five years have not passed"
    later = datetime.now(UTC) + runtime.settings.retention_period + timedelta(minutes=1)
    erased = await purge_expired(runtime, now=later)

    assert erased == 2 * 5 - 2, "all but the held teen and the disputed person pending a hold"
    async with runtime.sessions() as session:
        rows = {p.id: p for p in (await session.exec(select(PersonRow))).all()}
    assert rows[teen["id"]].erased_at is None and rows[disputed["id"]].erased_at is None
    assert all(rows[p["id"]].erased_at is not None for p in (mother, daughter, adult, *fresh["persons"]))
    reasons = {json.loads(e.payload)["reason_code"] for e in await outbox_rows(runtime, "person.erased.v1")}
    assert reasons == {"RETENTION_EXPIRED"}
    assert await purge_expired(runtime, now=later) == 0, "each person once"


async def test_activity_restarts_the_retention_clock(intake, officer):
    client, runtime = intake
    case = await _register(client, officer)
    async with runtime.sessions() as session:
        row = await session.get(CaseRow, case["id"])
        row.last_activity_at = datetime.now(UTC) - timedelta(days=3000)
        session.add(row)
        await session.commit()
    referral = referral_event("completed", referral_id=str(uuid.uuid4()), case_id=case["id"],
                              person_id=case["persons"][0]["id"], need_code="MEDICAL_URGENT", status="completed",
                              to_agency_id="MX-IMSS", to_agency_type="health", outcome_code="MEDICAL_CARE_PROVIDED")
    await deliver(runtime, REFERRAL_HANDLERS, referral)
    assert await purge_expired(runtime) == 0, "a referral event is activity"


async def test_the_events_of_one_transaction_restart_the_clock_of_every_case_they_touch(intake, officer):
    """As a consumer's batch: the cases are updated together just before the commit, and a rolled-back
    transaction touches nothing."""
    client, runtime = intake
    cases = [await _register(client, officer) for _ in range(3)]
    async with runtime.sessions() as session:
        for case in cases:
            row = await session.get(CaseRow, case["id"])
            row.last_activity_at = datetime.now(UTC) - timedelta(days=3000)
        await session.commit()
    first, second, untouched = cases
    async with runtime.sessions() as session:
        await HOLD_HANDLERS["protection_hold.placed.v1"](session, hold_placed(
            case_id=untouched["id"], person_id=untouched["persons"][0]["id"], need_code="UNACCOMPANIED_CHILD"))
        await session.rollback()
        for case in (first, second):
            await REFERRAL_HANDLERS["referral.requested.v1"](session, referral_event(
                "requested", referral_id=str(uuid.uuid4()), case_id=case["id"], person_id=case["persons"][0]["id"],
                need_code="MEDICAL_URGENT", status="requested", to_agency_id="MX-IMSS", to_agency_type="health"))
        await session.commit()
    async with runtime.sessions() as session:
        stale = datetime.now(UTC) - timedelta(days=1)
        clocks = {c["id"]: (await session.get(CaseRow, c["id"])).last_activity_at for c in cases}
    assert clocks[first["id"]] > stale and clocks[second["id"]] > stale
    assert clocks[untouched["id"]] < stale, "the rolled-back event changed nothing"


async def test_two_replicas_purging_at_once_erase_each_person_once(intake, officer):
    client, runtime = intake
    case = await _register(client, officer)
    later = datetime.now(UTC) + runtime.settings.retention_period + timedelta(minutes=1)
    vault = Vault.of(runtime)
    older_than = later - runtime.settings.retention_period
    person_id = case["persons"][3]["id"]

    async def replica():
        async with runtime.sessions() as session:
            return await services.erase_expired(session, vault, case["id"], person_id, older_than)

    results = await asyncio.gather(replica(), replica())
    assert sorted(results) == [False, True]
    assert len(await outbox_rows(runtime, "person.erased.v1")) == 1


async def test_the_purge_loop_runs_on_its_interval(tmp_path, dev_issuer_dir):
    from intake.entrypoints.app import create_app
    from tests.support.harness import running_app
    settings = intake_settings(tmp_path, dev_issuer_dir).model_copy(
        update={"retention_period": timedelta(seconds=1), "retention_purge_interval_s": 0.2})
    app = create_app(settings)
    async with running_app(app) as client:
        runtime = app.state.runtime
        case = await _register(client, inm(dev_issuer_dir))
        # The runtime starts background loops once Kafka answers; here there is none, so run it ourselves.
        loop = asyncio.create_task(retention_loop(settings.retention_purge_interval_s)(runtime))
        try:
            async def all_erased():
                async with runtime.sessions() as session:
                    rows = (await session.exec(select(PersonRow).where(PersonRow.case_id == case["id"]))).all()
                return all(r.erased_at is not None for r in rows)
            await eventually(all_erased, what="the purge loop erased the inactive case's persons")
        finally:
            runtime.stopping.set()
            await loop


# --- consent withdrawal ------------------------------------------------------------------------

async def test_a_withdrawal_ends_the_receivers_access_but_not_the_child_protection_override(
        intake, officer, supervisor, dev_issuer_dir):
    client, runtime = intake
    case = await _register(client, officer)
    mother, _, teen, _, _ = case["persons"]
    comar = bearer(dev_issuer_dir, "MX-COMAR", "asylum_office")
    pfpnna = bearer(dev_issuer_dir, "MX-PFPNNA", "child_protection")
    for person, agency, agency_type, need in ((mother, "MX-COMAR", "asylum_office", "INTERNATIONAL_PROTECTION"),
                                              (teen, "MX-PFPNNA", "child_protection", "UNACCOMPANIED_CHILD")):
        await deliver(runtime, REFERRAL_HANDLERS, referral_event(
            "accepted", referral_id=str(uuid.uuid4()), case_id=case["id"], person_id=person["id"], need_code=need,
            status="accepted", to_agency_id=agency, to_agency_type=agency_type))
    base = f"/cases/{case['id']}/persons"
    consent = (await client.post(f"{base}/{mother['id']}/consents", headers=officer,
                                 json={"recipient_agency_type": "asylum_office", "purpose": "referral"})).json()
    teen_consent = (await client.post(f"{base}/{teen['id']}/consents", headers=officer,
                                      json={"recipient_agency_type": "child_protection", "purpose": "referral"})).json()
    await client.post(f"{base}/{teen['id']}/consents", headers=supervisor, json={
        "recipient_agency_type": "child_protection", "purpose": "referral", "basis": "mandatory_override",
        "reason": "LGDNNA art. 89"})
    assert (await client.get(f"{base}/{mother['id']}", headers=comar)).status_code == 200
    assert (await client.get(f"{base}/{teen['id']}", headers=pfpnna)).status_code == 200

    # The person withdraws through the coordinator (the migration authority may not: see the next test).
    coordinator = bearer(dev_issuer_dir, "MX-COORD", "coordinator", roles=["coordinator"])
    for person, c in ((mother, consent), (teen, teen_consent)):
        r = await client.post(f"{base}/{person['id']}/consents/{c['id']}/withdrawal", headers=coordinator)
        assert r.status_code == 200 and r.json()["status"] == "withdrawn"

    assert (await client.get(f"{base}/{mother['id']}", headers=comar)).status_code == 404
    assert (await client.get(f"{base}/{teen['id']}", headers=pfpnna)).status_code == 200, \
        "the child-protection override stands after the teen's own consent is withdrawn"
    withdrawn = [json.loads(e.payload) for e in await outbox_rows(runtime, "consent.changed.v1")
                 if json.loads(e.payload)["status"] == "withdrawn"]
    assert {(w["person_id"], w["basis"]) for w in withdrawn} == {(mother["id"], "consent"), (teen["id"], "consent")}


async def test_an_enforcement_agency_records_no_withdrawal_that_would_cancel_protection_referrals(
        intake, officer, supervisor, dev_issuer_dir):
    """Issue 12 (F4): the migration authority withdrew the person's consent to the asylum office and so cancelled
    the asylum referral it may not cancel itself. Now it is refused (403, whatever the consent's referrals: no
    oracle) and nothing is published; the coordinator of the jurisdiction records the person's withdrawal."""
    client, runtime = intake
    case = await _register(client, officer)
    mother, adult = case["persons"][0], case["persons"][3]
    base = f"/cases/{case['id']}/persons"

    async def consent_of(person, agency_type, purpose="referral"):
        r = await client.post(f"{base}/{person['id']}/consents", headers=officer,
                              json={"recipient_agency_type": agency_type, "purpose": purpose})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    # The mother has an asylum referral; the adult has none: both refusals read the same.
    await deliver(runtime, REFERRAL_HANDLERS, referral_event(
        "accepted", referral_id=str(uuid.uuid4()), case_id=case["id"], person_id=mother["id"],
        need_code="INTERNATIONAL_PROTECTION", status="accepted", to_agency_id="MX-COMAR",
        to_agency_type="asylum_office", from_agency_id="MX-COMAR"))
    refusals = []
    for person in (mother, adult):
        for agency_type in ("asylum_office", "anti_trafficking", "health", "psychosocial", "child_protection"):
            consent_id = await consent_of(person, agency_type)
            for headers in (officer, supervisor):
                r = await client.post(f"{base}/{person['id']}/consents/{consent_id}/withdrawal", headers=headers)
                assert r.status_code == 403 and r.headers["content-type"] == PROBLEM, r.text
                refusals.append(r.json()["detail"].replace(agency_type, "<type>"))
    assert len(set(refusals)) == 1 and "coordinator" in refusals[0]
    for person in (mother, adult):
        listed = (await client.get(f"{base}/{person['id']}/consents", headers=officer)).json()["items"]
        assert {c["status"] for c in listed} == {"granted"}
    assert not [e for e in await outbox_rows(runtime, "consent.changed.v1")
                if json.loads(e.payload)["status"] == "withdrawn"], "a refusal publishes nothing: nothing is cancelled"

    # What cancels no protection referral stays the registering agency's to record.
    for agency_type, purpose in (("asylum_office", "follow_up"), ("return_assistance", "referral"),
                                 ("migration_authority", "referral")):
        consent_id = await consent_of(adult, agency_type, purpose)
        r = await client.post(f"{base}/{adult['id']}/consents/{consent_id}/withdrawal", headers=officer)
        assert r.status_code == 200 and r.json()["status"] == "withdrawn", r.text

    # The coordinator of the case's jurisdiction records it (its coordinator role); nobody else outside the case.
    asylum_consent = (await client.get(f"{base}/{mother['id']}/consents", headers=officer)).json()["items"][0]
    assert asylum_consent["recipient_agency_type"] == "asylum_office"
    withdrawal = f"{base}/{mother['id']}/consents/{asylum_consent['id']}/withdrawal"
    outsiders = (bearer(dev_issuer_dir, "GT-COORD", "coordinator", jurisdiction="GT", roles=["coordinator"]),
                 bearer(dev_issuer_dir, "MX-COORD", "coordinator", roles=["caseworker", "supervisor"]),
                 bearer(dev_issuer_dir, "MX-COMAR", "asylum_office", roles=["caseworker", "supervisor"]))
    for headers in outsiders:
        assert (await client.post(withdrawal, headers=headers)).status_code == 404
        assert (await client.get(f"{base}/{mother['id']}/consents", headers=headers)).status_code == 404
    assert (await client.post(withdrawal, headers=inm(dev_issuer_dir, ("coordinator",)))).status_code == 403, \
        "a coordinator role in the registering agency grants nothing there"
    coordinator = bearer(dev_issuer_dir, "MX-COORD", "coordinator", roles=["coordinator"])
    r = await client.post(withdrawal, headers=coordinator)
    assert r.status_code == 200 and r.json()["status"] == "withdrawn", r.text
    [event] = [json.loads(e.payload) for e in await outbox_rows(runtime, "consent.changed.v1")
               if json.loads(e.payload)["consent_id"] == asylum_consent["id"]
               and json.loads(e.payload)["status"] == "withdrawn"]
    assert event["recipient_agency_type"] == "asylum_office" and event["purpose"] == "referral"


def test_every_type_that_receives_a_protection_referral_is_protected_from_an_enforcement_withdrawal():
    """The receivers of a sensitive or hold-bearing need in the directories (and routing's preferences) are
    the types whose consent an enforcement agency may not withdraw."""
    root = Path(__file__).resolve().parents[3]
    receivers = set()
    for directory in ("deploy/demo/agencies.json", "tests/support/agencies.json"):
        for agency in json.loads((root / directory).read_text())["agencies"]:
            if any(set(s["need_codes"]) & (SENSITIVE_NEEDS | set(HOLD_BEARING_NEEDS)) for s in agency["services"]):
                receivers.add(agency["type"])
    assert receivers == {"asylum_office", "anti_trafficking", "health", "psychosocial", "child_protection"}
    for agency_type in consent_rules.AGENCY_TYPES:
        allowed = consent_rules.enforcement_may_withdraw(recipient_agency_type=agency_type, purpose="referral")
        assert allowed == (agency_type not in receivers), agency_type
        assert consent_rules.enforcement_may_withdraw(recipient_agency_type=agency_type, purpose="follow_up")
    assert not consent_rules.enforcement_may_withdraw(recipient_agency_type="a_type_added_later", purpose="referral")


# --- referrals intake did not see coming: who may refer is decided by intake's own records ---------------

async def test_a_referral_from_an_agency_not_entitled_to_refer_the_person_grants_no_read_and_holds_nothing(
        intake, officer, supervisor, dev_issuer_dir):
    """Issue 12: a Guatemalan caseworker opened a referral for a Mexican case's child (and another agency made one
    up on the bus). Intake checks the sender against who registered the case and which referrals it knows were
    accepted, not against the event: the receiver reads nothing, and the hold blocks neither removal nor erasure."""
    client, runtime = intake
    case = await _register(client, officer)
    _, _, teen, adult, _ = case["persons"]
    base = f"/cases/{case['id']}/persons"
    await client.post(f"{base}/{teen['id']}/consents", headers=supervisor, json={
        "recipient_agency_type": "child_protection", "purpose": "referral", "basis": "mandatory_override",
        "reason": "LGDNNA art. 89"})
    made_up = []
    for sender, receiver in (("GT-IGM", "GT-PGN"), ("MX-COMAR", "MX-PFPNNA"), ("MX-PFPNNA", "MX-PFPNNA")):
        referral_id = str(uuid.uuid4())
        made_up.append(referral_id)
        await deliver(runtime, REFERRAL_HANDLERS, referral_event(
            "requested", referral_id=referral_id, case_id=case["id"], person_id=teen["id"],
            need_code="UNACCOMPANIED_CHILD", status="requested", to_agency_id=receiver,
            to_agency_type="child_protection", from_agency_id=sender))
        await deliver(runtime, REFERRAL_HANDLERS, referral_event(
            "accepted", referral_id=referral_id, case_id=case["id"], person_id=teen["id"],
            need_code="UNACCOMPANIED_CHILD", status="accepted", to_agency_id=receiver,
            to_agency_type="child_protection", from_agency_id=sender))
        await deliver(runtime, HOLD_HANDLERS, hold_placed(
            case_id=case["id"], person_id=teen["id"], need_code="UNACCOMPANIED_CHILD", referral_id=referral_id,
            from_agency_id=sender, to_agency_id=receiver))
    for receiver in ("GT-PGN", "MX-PFPNNA"):
        reader = bearer(dev_issuer_dir, receiver, "child_protection", receiver[:2])
        refused = await client.get(f"{base}/{teen['id']}", headers=reader)
        nobody = await client.get(f"{base}/{uuid.uuid4()}", headers=reader)
        assert refused.status_code == nobody.status_code == 404, refused.text
        assert _without_ids(refused, teen["id"]) == _without_ids(nobody, nobody.url.path.rsplit("/", 1)[-1])
        assert not _leaks(refused.content, SECRETS)
    # Not an onward referral either: an agency whose own referral is not entitled refers nobody.
    await deliver(runtime, REFERRAL_HANDLERS, referral_event(
        "requested", referral_id=str(uuid.uuid4()), case_id=case["id"], person_id=teen["id"],
        need_code="MEDICAL_URGENT", status="requested", to_agency_id="MX-SSA", to_agency_type="health",
        from_agency_id="MX-PFPNNA", previous_referral_id=made_up[2]))
    await client.post(f"{base}/{teen['id']}/consents", headers=officer,
                      json={"recipient_agency_type": "health", "purpose": "referral"})
    assert (await client.get(f"{base}/{teen['id']}", headers=bearer(dev_issuer_dir, "MX-SSA", "health"))
            ).status_code == 404
    # The registering agency is not blocked by those holds, nor shown them as its own.
    view = (await client.get(f"/cases/{case['id']}", headers=officer)).json()
    assert view["holds"] == [] and view["referrals"] == []
    order = await client.post(f"{base}/{teen['id']}/removal-orders", headers=supervisor,
                              json={"destination_country": "HND"})
    assert order.status_code == 201, order.text
    erased = await client.post(f"{base}/{adult['id']}/erasure", headers=supervisor,
                               json={"reason_code": "ERASURE_REQUEST"})
    assert erased.status_code == 200, erased.text


async def test_the_registering_agency_the_coordinator_and_an_agency_working_on_the_person_refer_with_effect(
        intake, officer, supervisor, dev_issuer_dir):
    client, runtime = intake
    case = await _register(client, officer)
    mother, _, teen, _, _ = case["persons"]
    base = f"/cases/{case['id']}/persons"
    for agency_type in ("child_protection", "health", "psychosocial"):
        await client.post(f"{base}/{teen['id']}/consents", headers=officer,
                          json={"recipient_agency_type": agency_type, "purpose": "referral"})
    pfpnna = bearer(dev_issuer_dir, "MX-PFPNNA", "child_protection")
    ssa = bearer(dev_issuer_dir, "MX-SSA", "health")
    psi = bearer(dev_issuer_dir, "MX-PSI", "psychosocial")
    child_referral = str(uuid.uuid4())
    await deliver(runtime, REFERRAL_HANDLERS, referral_event(
        "requested", referral_id=child_referral, case_id=case["id"], person_id=teen["id"],
        need_code="UNACCOMPANIED_CHILD", status="requested", to_agency_id="MX-PFPNNA",
        to_agency_type="child_protection"))
    hold = hold_placed(case_id=case["id"], person_id=teen["id"], need_code="UNACCOMPANIED_CHILD",
                       referral_id=child_referral, to_agency_id="MX-PFPNNA")
    await deliver(runtime, HOLD_HANDLERS, hold)
    assert (await client.get(f"{base}/{teen['id']}", headers=pfpnna)).status_code == 200

    # Before it accepts, the child-protection agency's own referral onward grants nothing.
    early = str(uuid.uuid4())
    await deliver(runtime, REFERRAL_HANDLERS, referral_event(
        "requested", referral_id=early, case_id=case["id"], person_id=teen["id"], need_code="MEDICAL_URGENT",
        status="requested", to_agency_id="MX-SSA", to_agency_type="health", from_agency_id="MX-PFPNNA"))
    assert (await client.get(f"{base}/{teen['id']}", headers=ssa)).status_code == 404
    await deliver(runtime, REFERRAL_HANDLERS, referral_event(
        "accepted", referral_id=child_referral, case_id=case["id"], person_id=teen["id"],
        need_code="UNACCOMPANIED_CHILD", status="accepted", to_agency_id="MX-PFPNNA",
        to_agency_type="child_protection"))
    # Once it works on the child, it refers onward with effect; so does the coordinator.
    await deliver(runtime, REFERRAL_HANDLERS, referral_event(
        "requested", referral_id=str(uuid.uuid4()), case_id=case["id"], person_id=teen["id"],
        need_code="DISABILITY", status="requested", to_agency_id="MX-SSA", to_agency_type="health",
        from_agency_id="MX-PFPNNA"))
    await deliver(runtime, REFERRAL_HANDLERS, referral_event(
        "requested", referral_id=str(uuid.uuid4()), case_id=case["id"], person_id=teen["id"],
        need_code="CRIME_VICTIM", status="requested", to_agency_id="MX-PSI", to_agency_type="psychosocial",
        from_agency_id="MX-COORD"))
    assert (await client.get(f"{base}/{teen['id']}", headers=ssa)).status_code == 200
    assert (await client.get(f"{base}/{teen['id']}", headers=psi)).status_code == 200
    # Only the person the referrals are about.
    assert (await client.get(f"{base}/{mother['id']}", headers=ssa)).status_code == 404
    # The hold of the registering agency's referral blocks the removal, as it always did.
    refused = await client.post(f"{base}/{teen['id']}/removal-orders", headers=supervisor,
                                json={"destination_country": "HND"})
    assert refused.status_code == 409 and refused.json()["holds"][0]["hold_id"] == hold.data["hold_id"]
    view = (await client.get(f"/cases/{case['id']}", headers=officer)).json()
    assert [h["hold_id"] for h in view["holds"]] == [hold.data["hold_id"]]
    # The migration authority is shown only the referral it sent (firewall), not the protection side's onward ones.
    assert [r["referral_id"] for r in view["referrals"]] == [child_referral]
    # The early referral stays without effect: it was not entitled when it was made.
    async with runtime.sessions() as session:
        counted = await services.referrals_of(session, case["id"], services.Principal(
            subject="s", agency_id="MX-COORD", agency_type="coordinator", jurisdiction="MX", roles=("coordinator",)))
    assert early not in {r.referral_id for r in counted} and len(counted) == 3


def _without_ids(response, *ids: str) -> tuple:
    text = response.text
    for value in ids:
        text = text.replace(value, "<id>")
    body = json.loads(text)
    body.pop("instance", None)
    return response.status_code, response.headers["content-type"], body


def test_an_enforcement_agency_is_shown_only_referrals_it_is_known_to_have_sent():
    def row(sender, need_code="SGBV_SURVIVOR"):
        return ReferralViewRow(referral_id=str(uuid.uuid4()), case_id="c", person_id="p", need_code=need_code,
                               status="accepted", last_event_type="referral.accepted.v1",
                               occurred_at=datetime.now(UTC), from_agency_id=sender)
    own, comar, legacy = row("MX-INM", "MEDICAL_URGENT"), row("MX-COMAR"), row(None)  # legacy: before senders
    own_sensitive = row("MX-INM")  # its own, but of a sensitive need: not shown either (firewall.referral_shown)
    authority = services.Principal(subject="s", agency_id="MX-INM", agency_type="migration_authority",
                                   jurisdiction="MX", roles=("caseworker",))
    asylum_office = services.Principal(subject="s", agency_id="MX-COMAR", agency_type="asylum_office",
                                       jurisdiction="MX", roles=("caseworker",))
    assert services.referrals_shown_to(authority, [own, own_sensitive, comar, legacy]) == [own]
    assert services.referrals_shown_to(asylum_office, [own, own_sensitive, comar, legacy]) == [
        own, own_sensitive, comar, legacy]
