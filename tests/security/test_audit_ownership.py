"""An agency's auditor sees who touched its agency's objects, whoever the actor (any agency, any jurisdiction,
any outcome), besides what its own staff did; and nothing of other agencies' activity on objects it does not
own. The coordinator's auditor sees the same for its whole jurisdiction. Each request below carries a subject
of its own, so the test finds exactly its rows (filter user_id)."""

import uuid

import pytest

from enlace_platform.access import Role
from tests.security.probing import read_audit
from tests.support.harness import eventually
from tests.security.world import World

pytestmark = pytest.mark.kafka

PFPNNA = ("MX-PFPNNA", "child_protection", "MX")  # in the directory; the matrix never probes it


def subject(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


async def seen_by(world: World, service: str, auditor: str | tuple, **filters) -> list[dict]:
    """What an auditor (a caller of the world, or an agency tuple) reads, all pages."""
    tokens = world.tokens
    headers = tokens.of(auditor, Role.AUDITOR) if isinstance(auditor, str) else tokens.of_agency(auditor, Role.AUDITOR)
    return await read_audit(world, service, headers, **filters)


def actor_object_status(entries: list[dict]) -> set[tuple]:
    return {(e["agency_id"], e["object_type"], e["object_id"], e["status"]) for e in entries}


# --- intake: a case and its persons belong to the registering agency ----------------------------------

async def test_inms_auditor_sees_the_addressee_reading_its_person_and_another_jurisdiction_probing_its_case(
        world: World):
    intake, ids = world.client("intake"), world.ids
    reader, prober = subject("comar-reader"), subject("gt-prober")
    mother = f"/cases/{ids['case']}/persons/{ids['mother']}"
    assert (await intake.get(mother, headers=world.tokens.of("comar", subject=reader))).status_code == 200
    assert (await intake.get(f"/cases/{ids['case']}", headers=world.tokens.of("gt", subject=prober))).status_code == 404

    read = await seen_by(world, "intake", "inm", user_id=reader)
    assert actor_object_status(read) == {("MX-COMAR", "person", ids["mother"], 200)}
    assert read[0]["route"] == "/cases/{case_id}/persons/{person_id}" and read[0]["action"] == "read"
    probe = await seen_by(world, "intake", "inm", user_id=prober)
    assert actor_object_status(probe) == {("GT-IGM", "case", ids["case"], 404)}
    assert probe[0]["jurisdiction"] == "GT"

    # The coordinator of MX follows MX's cases, so it sees the GT probe too; GT's sees its agency's probe only.
    assert [e["seq"] for e in await seen_by(world, "intake", "coord", user_id=prober)] == [probe[0]["seq"]]
    assert [e["seq"] for e in await seen_by(world, "intake", "gtcoord", user_id=prober)] == [probe[0]["seq"]]
    assert await seen_by(world, "intake", "gtcoord", user_id=reader) == []
    # Unrelated agencies see neither.
    for unrelated in ("inm2", "comar2", "gt"):
        assert await seen_by(world, "intake", unrelated, user_id=reader) == [], unrelated
    for unrelated in ("inm2", "comar2"):
        assert await seen_by(world, "intake", unrelated, user_id=prober) == [], unrelated


async def test_inms_auditor_does_not_see_other_agencies_activity_on_objects_inm_does_not_own(world: World):
    intake, notification = world.client("intake"), world.client("notification")
    own_case, sub_reader, auditor = subject("comar-own-case"), subject("comar-sub"), subject("comar-auditor")
    comar = world.tokens.of("comar", subject=own_case)
    created = await intake.post("/cases", headers=comar, json=World.probe_case())
    assert created.status_code == 201, created.text
    assert (await intake.get(f"/cases/{created.json()['id']}", headers=comar)).status_code == 200
    supervisor = world.tokens.of("comar", Role.SUPERVISOR, subject=sub_reader)
    subscription = f"/subscriptions/{world.ids['subscription']}"
    assert (await notification.get(subscription, headers=supervisor)).status_code == 200
    comar_auditor = world.tokens.of("comar", Role.AUDITOR, subject=auditor)
    assert (await intake.get("/audit", headers=comar_auditor)).status_code == 200

    # COMAR's own auditor sees all of it; INM's none of it.
    assert len(await seen_by(world, "intake", "comar", user_id=own_case)) >= 2
    assert await seen_by(world, "intake", "inm", user_id=own_case) == []
    assert len(await seen_by(world, "notification", "comar", user_id=sub_reader)) == 1
    assert await seen_by(world, "notification", "inm", user_id=sub_reader) == []
    assert {e["agency_id"] for e in await seen_by(world, "notification", "inm", object_id=world.ids["subscription"])} \
        <= {"MX-INM"}, "only its own staff's probes of COMAR's subscription"
    assert len(await seen_by(world, "intake", "comar", user_id=auditor)) == 1
    assert await seen_by(world, "intake", "inm", user_id=auditor) == []


async def test_an_erased_persons_trail_stays_with_the_owners_auditor(world: World):
    intake = world.client("intake")
    person = await world.fresh_person()
    path = f"/cases/{person['case_id']}/persons/{person['person_id']}"
    before, after = subject("gt-before"), subject("comar2-after")
    assert (await intake.get(path, headers=world.tokens.of("gt", subject=before))).status_code == 404
    erased = await intake.post(f"{path}/erasure", headers=world.tokens.of("inm", Role.SUPERVISOR),
                               json={"reason_code": "ERASURE_REQUEST"})
    assert erased.status_code == 200, erased.text
    assert (await intake.get(path, headers=world.tokens.of("comar2", subject=after))).status_code == 404

    trail = await seen_by(world, "intake", "inm", object_id=person["person_id"])
    assert {(e["user_id"], e["status"]) for e in trail} >= {(before, 404), (after, 404)}
    assert "erasure" in {e["route"].rsplit("/", 1)[-1] for e in trail}
    assert await seen_by(world, "intake", "inm2", object_id=person["person_id"]) == []


# --- referral: the sender and every addressee --------------------------------------------------------

async def test_the_sender_and_the_addressee_see_each_others_reads_of_their_referral_and_no_one_else_does(
        world: World):
    referral, ids = world.client("referral"), world.ids
    by_comar, by_inm = subject("comar-ref"), subject("inm-ref")
    path = f"/referrals/{ids['referral']}"
    assert (await referral.get(path, headers=world.tokens.of("comar", subject=by_comar))).status_code == 200
    assert (await referral.get(f"{path}/history", headers=world.tokens.of("inm", subject=by_inm))).status_code == 200
    holds = await referral.get("/holds", headers=world.tokens.of("comar", subject=by_comar),
                               params={"case_id": ids["case"]})
    assert holds.status_code == 200 and ids["hold"] in holds.text

    comar_rows = {("MX-COMAR", "referral", ids["referral"], 200), ("MX-COMAR", "hold", ids["hold"], 200)}
    assert actor_object_status(await seen_by(world, "referral", "inm", user_id=by_comar)) == comar_rows
    assert actor_object_status(await seen_by(world, "referral", "comar", user_id=by_inm)) == \
        {("MX-INM", "referral", ids["referral"], 200)}
    for unrelated in ("inm2", "comar2", "gt", "gtcoord"):
        for user in (by_comar, by_inm):
            assert await seen_by(world, "referral", unrelated, user_id=user) == [], unrelated


async def _child_protection_service(world: World) -> tuple[tuple[str, str, str], str]:
    """A new child-protection agency of MX with a service for unaccompanied children: a reassignment's target."""
    coordinator = world.tokens.of("coord", Role.COORDINATOR)
    agency = (f"MX-CP{uuid.uuid4().hex[:6].upper()}", "child_protection", "MX")
    referral = world.client("referral")
    r = await referral.post("/agencies", headers=coordinator, json={
        "id": agency[0], "name": "Albergue de prueba", "type": agency[1], "jurisdiction": "MX"})
    assert r.status_code == 201, r.text
    r = await referral.post("/services", headers=coordinator, json={
        "agency_id": agency[0], "area": "MX", "name": "Acogida de prueba", "need_codes": ["UNACCOMPANIED_CHILD"],
        "languages": ["es"], "capacity": 5, "age_min": 0, "age_max": 17})
    assert r.status_code == 201, r.text
    return agency, r.json()["id"]


async def test_after_a_reassignment_the_earlier_addressee_still_sees_who_touches_the_referral(world: World):
    """MX-INM2 refers a child to MX-PFPNNA; the coordinator reassigns it to a new agency. MX-PFPNNA keeps the file
    it received, so it sees the new addressee's reads; MX-INM, unrelated to this referral, sees nothing of it."""
    referral, tokens = world.client("referral"), world.tokens
    registered = await world.client("intake").post("/cases", headers=tokens.of("inm2"), json=world.probe_case())
    assert registered.status_code == 201, registered.text
    manual = {"case_id": registered.json()["id"], "person_id": registered.json()["persons"][0]["id"],
              "need_code": "UNACCOMPANIED_CHILD", "age_band": "12-17", "languages": ["es"],
              "to_service_id": "MX-PFPNNA-1"}

    async def referred_once_referral_knows_the_case():  # it learns who registered it from case.registered.v1
        response = await referral.post("/referrals", headers=tokens.of("inm2"), json=manual)
        return response if response.status_code != 404 else None
    created = await eventually(referred_once_referral_knows_the_case, timeout=60, what="the case known to referral")
    assert created.status_code == 201, created.text
    ref = created.json()
    assert ref["to_agency_id"] == "MX-PFPNNA", ref
    path = f"/referrals/{ref['id']}"
    first_read, comar_probe = subject("pfpnna-read"), subject("comar-probe")
    assert (await referral.get(path, headers=tokens.of_agency(PFPNNA, subject=first_read))).status_code == 200
    assert (await referral.get(path, headers=tokens.of("comar", subject=comar_probe))).status_code == 404

    new_agency, service_id = await _child_protection_service(world)
    reassigned = await referral.post(f"{path}/actions", headers=tokens.of("coord", Role.COORDINATOR),
                                     json={"action": "reassign", "to_service_id": service_id})
    assert reassigned.status_code == 200 and reassigned.json()["to_agency_id"] == new_agency[0], reassigned.text
    later_read, earlier_again = subject("new-addressee-read"), subject("pfpnna-again")
    assert (await referral.get(path, headers=tokens.of_agency(new_agency, subject=later_read))).status_code == 200
    holds = await referral.get("/holds", headers=tokens.of_agency(new_agency, subject=later_read),
                               params={"person_id": ref["person_id"]})
    assert holds.status_code == 200 and len(holds.json()) == 1, holds.text
    hold_id = holds.json()[0]["id"]
    assert (await referral.get(path, headers=tokens.of_agency(PFPNNA, subject=earlier_again))).status_code == 404

    later = {(new_agency[0], "referral", ref["id"], 200), (new_agency[0], "hold", hold_id, 200)}
    # The earlier addressee, the sender and the new addressee all hold the file: each sees the later reads.
    for owner in (PFPNNA, "inm2", new_agency):
        assert actor_object_status(await seen_by(world, "referral", owner, user_id=later_read)) == later, owner
    # ... and the earlier reads, the refused ones included (ownership is decided when the auditor reads).
    for owner in ("inm2", new_agency):
        assert actor_object_status(await seen_by(world, "referral", owner, user_id=first_read)) == \
            {("MX-PFPNNA", "referral", ref["id"], 200)}, owner
        assert actor_object_status(await seen_by(world, "referral", owner, user_id=earlier_again)) == \
            {("MX-PFPNNA", "referral", ref["id"], 404)}, owner
    assert actor_object_status(await seen_by(world, "referral", PFPNNA, user_id=comar_probe)) == \
        {("MX-COMAR", "referral", ref["id"], 404)}
    # A referral between other agencies: MX-INM's auditor sees none of it, nor does an unrelated agency's.
    for unrelated in ("inm", "comar2"):
        assert await seen_by(world, "referral", unrelated, object_id=ref["id"]) == [], unrelated
        assert await seen_by(world, "referral", unrelated, object_id=hold_id) == [], unrelated

    # Filters narrow the view and never widen it: COMAR's rows as MX-PFPNNA's auditor sees them are those on
    # MX-PFPNNA's objects, not COMAR's reads of its own referral.
    assert (await referral.get(f"/referrals/{world.ids['referral']}",
                               headers=tokens.of("comar", subject=comar_probe))).status_code == 200
    as_pfpnna = await seen_by(world, "referral", PFPNNA, agency_id="MX-COMAR")
    assert ("MX-COMAR", "referral", ref["id"], 404) in actor_object_status(as_pfpnna)
    assert {e["agency_id"] for e in as_pfpnna} == {"MX-COMAR"}
    assert {e["object_id"] for e in as_pfpnna} <= {ref["id"], hold_id, "MX-PFPNNA", "MX-PFPNNA-1", "MX-PFPNNA-RET"}
    assert await seen_by(world, "referral", PFPNNA, object_id=world.ids["referral"]) == []


async def test_filters_give_inms_auditor_only_the_actors_rows_on_inms_objects(world: World):
    intake, ids = world.client("intake"), world.ids
    on_mother, elsewhere = subject("comar-mother"), subject("comar-elsewhere")
    mother = f"/cases/{ids['case']}/persons/{ids['mother']}"
    assert (await intake.get(mother, headers=world.tokens.of("comar", subject=on_mother))).status_code == 200
    created = await intake.post("/cases", headers=world.tokens.of("comar", subject=elsewhere), json=World.probe_case())
    assert created.status_code == 201, created.text

    comar_rows = await seen_by(world, "intake", "inm", agency_id="MX-COMAR")
    assert {e["agency_id"] for e in comar_rows} == {"MX-COMAR"}
    assert on_mother in {e["user_id"] for e in comar_rows}
    assert elsewhere not in {e["user_id"] for e in comar_rows}
    assert created.json()["id"] not in {e["object_id"] for e in comar_rows}
    assert all(e["object_id"] is not None for e in comar_rows), "another agency's rows on no object of INM's"
    # Another jurisdiction's auditor gets nothing of MX-COMAR's by naming it.
    assert await seen_by(world, "intake", "gtcoord", agency_id="MX-COMAR") == []


# --- notification: subscriptions and deliveries belong to their agency -------------------------------

async def test_a_probe_of_a_subscription_is_visible_to_its_owners_auditor_not_to_unrelated_agencies(world: World):
    notification, ids = world.client("notification"), world.ids
    peer, foreign, delivery = subject("asyl2-probe"), subject("gt-probe"), subject("asyl2-delivery")
    subscription = f"/subscriptions/{ids['subscription']}"
    assert (await notification.get(subscription, headers=world.tokens.of("comar2", Role.SUPERVISOR, subject=peer))
            ).status_code == 404
    assert (await notification.get(subscription, headers=world.tokens.of("gt", Role.SUPERVISOR, subject=foreign))
            ).status_code == 404
    assert (await notification.get(f"/deliveries/{ids['delivery']}",
                                   headers=world.tokens.of("comar2", subject=delivery))).status_code == 404

    assert actor_object_status(await seen_by(world, "notification", "comar", user_id=peer)) == \
        {("MX-ASYL2", "subscription", ids["subscription"], 404)}
    assert actor_object_status(await seen_by(world, "notification", "comar", user_id=foreign)) == \
        {("GT-IGM", "subscription", ids["subscription"], 404)}
    assert actor_object_status(await seen_by(world, "notification", "comar", user_id=delivery)) == \
        {("MX-ASYL2", "delivery", ids["delivery"], 404)}
    # The prober's own auditor sees its staff's attempt; unrelated agencies do not.
    assert len(await seen_by(world, "notification", "comar2", user_id=peer)) == 1
    for unrelated in ("inm", "inm2"):
        for user in (peer, foreign, delivery):
            assert await seen_by(world, "notification", unrelated, user_id=user) == [], unrelated
    # MX's coordinator follows MX-COMAR's subscription, so it sees the GT probe; GT's coordinator not MX's peer.
    assert len(await seen_by(world, "notification", "coord", user_id=foreign)) == 1
    assert await seen_by(world, "notification", "gtcoord", user_id=peer) == []
