"""An agency's auditor sees who touched its agency's objects, whoever the actor (any agency, any jurisdiction,
any outcome), besides what its own staff did; and nothing of other agencies' activity on objects it does not
own. The coordinator's auditor sees the same for its whole jurisdiction. Each request below carries a subject
of its own, so the test finds exactly its rows (filter user_id).

The information barrier: MX-INM and MX-INM2 are enforcement agencies. Their auditors never learn who of another
agency acted: at intake they see others' acts on their objects with agency, user, roles and trace withheld
(null), at the referral service (the protection side) and at notification only their own staff's rows, and no
filter finds another agency's rows for them. The coordinator's auditor, a protection actor, names every actor:
the tests find a row there and check what the enforcement auditor sees of the same row (by seq)."""

import uuid

import pytest

from enlace_platform.access import Role
from tests.security.probing import read_audit
from tests.support.harness import eventually
from tests.security.world import World

pytestmark = pytest.mark.kafka

PFPNNA = ("MX-PFPNNA", "child_protection", "MX")  # in the directory; the matrix never probes it
FEVIMTRA = ("MX-FEVIMTRA", "anti_trafficking", "MX")  # the anti-trafficking prosecutor: its interest must not leak
WITHHELD_ACTOR = {"agency_id": None, "user_id": None, "roles": [], "trace_id": None}


def subject(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


async def seen_by(world: World, service: str, auditor: str | tuple, **filters) -> list[dict]:
    """What an auditor (a caller of the world, or an agency tuple) reads, all pages."""
    tokens = world.tokens
    headers = tokens.of(auditor, Role.AUDITOR) if isinstance(auditor, str) else tokens.of_agency(auditor, Role.AUDITOR)
    return await read_audit(world, service, headers, **filters)


def actor_object_status(entries: list[dict]) -> set[tuple]:
    return {(e["agency_id"], e["object_type"], e["object_id"], e["status"]) for e in entries}


async def as_enforcement_sees(world: World, service: str, auditor: str, named: list[dict], **filters) -> list[dict]:
    """The rows the enforcement ``auditor`` reads (with ``filters``) that are the rows ``named`` (as a protection
    auditor read them): matched by seq."""
    seqs = {e["seq"] for e in named}
    assert seqs, "the protection auditor sees the rows"
    return [e for e in await seen_by(world, service, auditor, **filters) if e["seq"] in seqs]


def withheld(entry: dict) -> bool:
    return all(entry[field] == value for field, value in WITHHELD_ACTOR.items())


# --- intake: a case and its persons belong to the registering agency ----------------------------------

async def test_inms_auditor_sees_that_others_read_its_person_and_probed_its_case_but_not_who(world: World):
    intake, ids = world.client("intake"), world.ids
    reader, prober = subject("comar-reader"), subject("gt-prober")
    mother = f"/cases/{ids['case']}/persons/{ids['mother']}"
    assert (await intake.get(mother, headers=world.tokens.of("comar", subject=reader))).status_code == 200
    assert (await intake.get(f"/cases/{ids['case']}", headers=world.tokens.of("gt", subject=prober))).status_code == 404

    # The coordinator of MX, a protection actor, follows MX's cases and names both actors.
    read = await seen_by(world, "intake", "coord", user_id=reader)
    assert actor_object_status(read) == {("MX-COMAR", "person", ids["mother"], 200)}
    probe = await seen_by(world, "intake", "coord", user_id=prober)
    assert actor_object_status(probe) == {("GT-IGM", "case", ids["case"], 404)}
    # MX-INM registered the case: its auditor sees both acts (its accountability as controller), not who did them.
    [inm_read] = await as_enforcement_sees(world, "intake", "inm", read, object_id=ids["mother"])
    assert withheld(inm_read), inm_read
    assert (inm_read["route"], inm_read["action"], inm_read["status"], inm_read["at"]) == (
        "/cases/{case_id}/persons/{person_id}", "read", 200, read[0]["at"])
    [inm_probe] = await as_enforcement_sees(world, "intake", "inm", probe, object_id=ids["case"])
    assert withheld(inm_probe) and inm_probe["status"] == 404 and inm_probe["jurisdiction"] == "GT", inm_probe
    # Naming the actor finds nothing.
    for filters in ({"user_id": reader}, {"user_id": prober}, {"agency_id": "MX-COMAR"}, {"agency_id": "GT-IGM"}):
        assert await seen_by(world, "intake", "inm", **filters) == [], filters

    # GT's coordinator sees its agency's probe only.
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

    trail = await seen_by(world, "intake", "coord", object_id=person["person_id"])
    assert {(e["user_id"], e["status"]) for e in trail} >= {(before, 404), (after, 404)}
    others = [e for e in trail if e["user_id"] in (before, after)]
    inm_trail = await seen_by(world, "intake", "inm", object_id=person["person_id"])
    assert {e["seq"] for e in inm_trail} == {e["seq"] for e in trail}, "MX-INM's auditor keeps the whole trail"
    assert all(withheld(e) for e in inm_trail if e["seq"] in {o["seq"] for o in others})
    assert "erasure" in {e["route"].rsplit("/", 1)[-1] for e in inm_trail if e["agency_id"] == "MX-INM"}
    assert await seen_by(world, "intake", "inm2", object_id=person["person_id"]) == []


# --- referral: the sender and every addressee --------------------------------------------------------

async def test_the_addressee_sees_the_senders_reads_and_the_enforcement_sender_sees_none_of_the_addressees(
        world: World):
    referral, ids = world.client("referral"), world.ids
    by_comar, by_inm = subject("comar-ref"), subject("inm-ref")
    path = f"/referrals/{ids['referral']}"
    assert (await referral.get(path, headers=world.tokens.of("comar", subject=by_comar))).status_code == 200
    # MX-INM sent the asylum referral but is not shown it (a sensitive need): its read is a 404, still audited.
    assert (await referral.get(f"{path}/history", headers=world.tokens.of("inm", subject=by_inm))).status_code == 404
    holds = await referral.get("/holds", headers=world.tokens.of("comar", subject=by_comar),
                               params={"case_id": ids["case"]})
    assert holds.status_code == 200 and ids["hold"] in holds.text

    comar_rows = {("MX-COMAR", "referral", ids["referral"], 200), ("MX-COMAR", "hold", ids["hold"], 200)}
    assert actor_object_status(await seen_by(world, "referral", "coord", user_id=by_comar)) == comar_rows
    assert actor_object_status(await seen_by(world, "referral", "comar", user_id=by_inm)) == \
        {("MX-INM", "referral", ids["referral"], 404)}
    # The referral service is the protection side: MX-INM, an enforcement agency, sees its own staff's rows only.
    assert await seen_by(world, "referral", "inm", user_id=by_comar) == []
    for object_id in (ids["referral"], ids["hold"]):
        assert {e["agency_id"] for e in await seen_by(world, "referral", "inm", object_id=object_id)} == {"MX-INM"}
    assert actor_object_status(await seen_by(world, "referral", "inm", user_id=by_inm)) == \
        {("MX-INM", "referral", ids["referral"], 404)}, "its own staff's rows stay"
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
    # The earlier and the new addressee both hold the file: each sees the later reads. The sender, MX-INM2, is an
    # enforcement agency: at the referral service it sees its own staff's rows only.
    for owner in (PFPNNA, new_agency):
        assert actor_object_status(await seen_by(world, "referral", owner, user_id=later_read)) == later, owner
    for object_id in (ref["id"], hold_id):
        assert {e["agency_id"] for e in await seen_by(world, "referral", "inm2", object_id=object_id)} <= {"MX-INM2"}
    # ... and the earlier reads, the refused ones included (ownership is decided when the auditor reads).
    for owner in (new_agency,):
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


async def test_filters_give_a_protection_auditor_the_actors_rows_and_are_no_oracle_for_inms(world: World):
    intake, ids = world.client("intake"), world.ids
    on_mother, elsewhere = subject("comar-mother"), subject("comar-elsewhere")
    mother = f"/cases/{ids['case']}/persons/{ids['mother']}"
    assert (await intake.get(mother, headers=world.tokens.of("comar", subject=on_mother))).status_code == 200
    created = await intake.post("/cases", headers=world.tokens.of("comar", subject=elsewhere), json=World.probe_case())
    assert created.status_code == 201, created.text

    comar_rows = await seen_by(world, "intake", "coord", agency_id="MX-COMAR")
    assert {e["agency_id"] for e in comar_rows} == {"MX-COMAR"}
    assert {on_mother, elsewhere} <= {e["user_id"] for e in comar_rows}
    # Another jurisdiction's auditor gets nothing of MX-COMAR's by naming it.
    assert await seen_by(world, "intake", "gtcoord", agency_id="MX-COMAR") == []

    # MX-INM's auditor sees the read of its person, unnamed; naming the actor, by agency, user or trace, finds
    # none of another agency's rows; naming itself finds its own staff's rows only.
    [on_mother_row] = [e for e in comar_rows if e["user_id"] == on_mother]
    assert all(withheld(e) for e in await as_enforcement_sees(world, "intake", "inm", [on_mother_row]))
    for filters in ({"agency_id": "MX-COMAR"}, {"user_id": on_mother}, {"trace_id": on_mother_row["trace_id"]},
                    {"agency_id": "MX-COMAR", "object_id": ids["mother"]}):
        assert await seen_by(world, "intake", "inm", **filters) == [], filters
    assert {e["agency_id"] for e in await seen_by(world, "intake", "inm", agency_id="MX-INM",
                                                  object_id=ids["mother"])} == {"MX-INM"}


# --- the information barrier: what the outside attack found (F3) -------------------------------------

async def test_inms_auditor_does_not_learn_that_the_asylum_office_works_on_its_referral(world: World):
    """MX-COMAR writes a note on the asylum referral MX-INM sent and tries an action on it: MX-INM's auditor sees
    neither, by any filter; MX-COMAR's and the coordinator's auditors see both, named."""
    referral, ids = world.client("referral"), world.ids
    worker = subject("comar-worker")
    comar = world.tokens.of("comar", subject=worker)
    path = f"/referrals/{ids['referral']}"
    noted = await referral.post(f"{path}/notes", headers=comar, json={"text": "Entrevista de elegibilidad agendada"})
    assert noted.status_code == 201, noted.text
    tried = await referral.post(f"{path}/actions", headers=comar, json={"action": "resume"})
    assert tried.status_code in (409, 422), tried.text  # not on hold: refused, and kept on record

    for protection in ("comar", "coord"):
        rows = await seen_by(world, "referral", protection, user_id=worker)
        assert {(e["agency_id"], e["route"]) for e in rows} >= {
            ("MX-COMAR", "/referrals/{referral_id}/notes")}, (protection, rows)
    named = await seen_by(world, "referral", "coord", user_id=worker)
    assert [e for e in await seen_by(world, "referral", "inm") if e["seq"] in {n["seq"] for n in named}] == []
    for filters in ({"object_id": ids["referral"]}, {"agency_id": "MX-COMAR"}, {"user_id": worker},
                    {"object_type": "referral"}):
        rows = await seen_by(world, "referral", "inm", **filters)
        assert {e["agency_id"] for e in rows} <= {"MX-INM"}, filters
        assert not {"/referrals/{referral_id}/notes", "/referrals/{referral_id}/actions"} & \
            {e["route"] for e in rows if e["user_id"] == worker}, filters


async def test_inms_auditor_does_not_learn_that_the_anti_trafficking_prosecutor_tried_to_read_its_person(
        world: World):
    intake, ids = world.client("intake"), world.ids
    attempt = subject("fevimtra")
    mother = f"/cases/{ids['case']}/persons/{ids['mother']}"
    response = await intake.get(mother, headers=world.tokens.of_agency(FEVIMTRA, subject=attempt))
    assert response.status_code == 404, response.text

    named = await seen_by(world, "intake", "coord", user_id=attempt)
    assert actor_object_status(named) == {("MX-FEVIMTRA", "person", ids["mother"], 404)}
    [unnamed] = await as_enforcement_sees(world, "intake", "inm", named, object_id=ids["mother"])
    assert withheld(unnamed) and (unnamed["route"], unnamed["status"]) == (
        "/cases/{case_id}/persons/{person_id}", 404), unnamed
    every_row = await seen_by(world, "intake", "inm", object_id=ids["mother"])
    assert "MX-FEVIMTRA" not in str(every_row) and attempt not in str(every_row)
    for filters in ({"agency_id": "MX-FEVIMTRA"}, {"user_id": attempt},
                    {"agency_id": "MX-FEVIMTRA", "object_id": ids["mother"]}):
        assert await seen_by(world, "intake", "inm", **filters) == [], filters
    # Protection agencies' auditors keep what they see: MX-FEVIMTRA's own auditor sees its attempt, named.
    assert actor_object_status(await seen_by(world, "intake", FEVIMTRA, user_id=attempt)) == \
        {("MX-FEVIMTRA", "person", ids["mother"], 404)}


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
