"""The closed loop across intake and referral on the real broker, as the agencies would drive it.

A 15-year-old travelling alone who fears return is registered and screened at intake. The screening
yields two needs and two referrals with protection holds; removal is refused. Child protection
rejects (no capacity) and the referral is routed onward to a second child-protection agency, which
may then read the child's details at intake. It accepts and completes the referral: the outcome code
reaches intake's case view, the child-protection hold is released, the access ends, and the asylum
hold still refuses removal.
"""

import pytest

from intake.config import IntakeSettings
from intake.entrypoints.app import create_app as intake_app
from referral.config import ReferralSettings
from referral.entrypoints.app import create_app as referral_app
from tests.support.database_support import on_both_databases
from tests.support.harness import (
    TEST_DIRECTORY, bearer, eventually, fast_settings, provision_topics, running_app, unique_prefix,
)
from tests.support.referral_support import add_second_child_protection_service

pytestmark = [pytest.mark.kafka, on_both_databases]


async def test_rejected_referral_routed_onward_completes_and_its_outcome_reaches_intake(
        kafka_bootstrap, dev_issuer_dir, tmp_path, databases):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    common = dict(tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix, dev_issuer_dir=dev_issuer_dir,
                  databases=databases)
    inm = bearer(dev_issuer_dir, "MX-INM", "migration_authority", roles=["supervisor"])  # applies the override
    coord = bearer(dev_issuer_dir, "MX-COORD", "coordinator", roles=["coordinator"])
    pfpnna = bearer(dev_issuer_dir, "MX-PFPNNA", "child_protection")
    dif = bearer(dev_issuer_dir, "MX-SNDIF", "child_protection")
    seed = str(TEST_DIRECTORY)

    async with running_app(intake_app(fast_settings(IntakeSettings, **common))) as intake, \
            running_app(referral_app(fast_settings(ReferralSettings, directory_seed_path=seed, **common))) as referral:
        await add_second_child_protection_service(referral, coord)

        r = await intake.post("/cases", headers=inm, json={
            "place": "Tapachula", "encountered_at": "2026-11-28T10:00:00Z",
            "persons": [{"given_names": "Prueba", "family_names": "Sola", "sex": "male", "estimated_age": 15,
                         "nationality": "GTM", "languages": ["es"]}]})
        assert r.status_code == 201, r.text
        case_id, person_id = r.json()["id"], r.json()["persons"][0]["id"]
        persons = f"/cases/{case_id}/persons/{person_id}"
        for consent in ({"recipient_agency_type": "child_protection", "purpose": "referral",
                         "basis": "mandatory_override", "reason": "Unaccompanied child (Ley de Migración art. 112)"},
                        {"recipient_agency_type": "asylum_office", "purpose": "referral"}):
            r = await intake.post(f"{persons}/consents", headers=inm, json=consent)
            assert r.status_code == 201, r.text
        r = await intake.post(f"/cases/{case_id}/screenings", headers=inm, json={
            "person_id": person_id, "fear_of_return": True, "travelling_with_parent_or_guardian": False})
        assert r.status_code == 201, r.text
        assert {n["code"] for n in r.json()["needs"]} == {"UNACCOMPANIED_CHILD", "INTERNATIONAL_PROTECTION"}

        # Where the referrals went is protection work: read as the coordinator (MX-INM is behind the barrier).
        async def two_referrals():
            items = (await referral.get("/referrals", headers=coord, params={
                "case_id": case_id, "direction": "jurisdiction"})).json()["items"]
            return len(items) == 2 and {i["need_code"]: i for i in items}
        sent = await eventually(two_referrals, what="two referrals")
        child, asylum = sent["UNACCOMPANIED_CHILD"], sent["INTERNATIONAL_PROTECTION"]
        assert (child["to_agency_id"], asylum["to_agency_id"]) == ("MX-PFPNNA", "MX-COMAR")

        async def case_view(predicate):
            async def check():
                view = (await intake.get(f"/cases/{case_id}", headers=inm)).json()
                return predicate(view) and view
            return await eventually(check, what="intake's case view")

        await case_view(lambda v: len([h for h in v["holds"] if h["status"] == "active"]) == 2)
        refused = await intake.post(f"{persons}/removal-orders", headers=inm, json={"destination_country": "GTM"})
        assert refused.status_code == 409
        assert child["id"] in refused.text and asylum["id"] in refused.text
        # The migration authority learns that the asylum hold stands, not the need behind it (the firewall).
        assert {h["referral_id"]: h["need_code"] for h in refused.json()["holds"]} == {
            child["id"]: "UNACCOMPANIED_CHILD", asylum["id"]: None}
        assert "INTERNATIONAL_PROTECTION" not in refused.text

        r = await referral.post(f"/referrals/{child['id']}/actions", headers=pfpnna,
                                json={"action": "reject", "reason_code": "NO_CAPACITY", "reason_text": "Sin plazas"})
        assert r.status_code == 200, r.text
        onward_id = r.json()["next_referral_id"]
        assert onward_id

        async def dif_may_read():
            return (await intake.get(persons, headers=dif)).status_code == 200
        await eventually(dif_may_read, what="the onward agency's access to the child's details")
        assert (await intake.get(persons, headers=pfpnna)).status_code == 404, "the rejecting agency lost access"

        for action, extra in (("accept", {}), ("start", {}), ("complete", {"outcome_code": "CHILD_PLACED_IN_CARE"})):
            r = await referral.post(f"/referrals/{onward_id}/actions", headers=dif, json={"action": action, **extra})
            assert r.status_code == 200, r.text

        def closed(view):
            outcomes = {r["referral_id"]: r["outcome_code"] for r in view["referrals"]}
            child_hold = [h for h in view["holds"] if h["need_code"] == "UNACCOMPANIED_CHILD"]
            return outcomes.get(onward_id) == "CHILD_PLACED_IN_CARE" and child_hold[0]["status"] == "released"
        view = await case_view(closed)
        statuses = {r["referral_id"]: r["status"] for r in view["referrals"]}
        assert statuses[child["id"]] == "rejected" and statuses[onward_id] == "completed"
        # Intake's case view is MX-INM's: the asylum hold shows as active, its need withheld (the firewall); the
        # asylum referral itself, a sensitive need, is not listed at all, though MX-INM's screening sent it.
        assert asylum["id"] not in statuses
        assert [(h["status"], h["need_code"]) for h in view["holds"] if h["referral_id"] == asylum["id"]] == [
            ("active", None)]

        async def dif_access_ended():
            return (await intake.get(persons, headers=dif)).status_code == 404
        await eventually(dif_access_ended, what="the access to end with the referral")
        still_refused = await intake.post(f"{persons}/removal-orders", headers=inm,
                                          json={"destination_country": "GTM"})
        assert still_refused.status_code == 409 and asylum["id"] in still_refused.text
