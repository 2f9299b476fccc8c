"""The referral app through its HTTP API, with screening and consent events handed to its consumer
handlers (the broker paths are in test_referral_clocks.py and tests/e2e/test_referral_closed_loop.py). The races
(two writers at once) run on PostgreSQL too, where two transactions really overlap; SQLite's one writer
serialises them."""

import asyncio
import uuid
from datetime import datetime

import pytest

from tests.support.database_support import on_both_databases
from tests.support.referral_support import (  # noqa: F401 - ref and auth are fixtures
    add_second_child_protection_service, auth, consent_changed, consent_scope, ref, registered, screened,
)

# The redacted copy of each lifecycle change for enforcement systems (tests/e2e/test_referral_status_topic.py).
STATUS_MIRROR = "referral.status_changed.v1"


def _problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return r.json()


async def _one(ref, headers, **params) -> dict:
    [item] = await ref.referrals(headers, **params)
    return item


async def test_two_needs_make_two_referrals_with_one_lead_and_explained_routing(ref, auth):
    event = screened("INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD", age_band="12-17")
    await ref.deliver(event)
    inm = auth("MX-COORD")  # the barrier withholds the asylum referral's need and receiver from MX-INM
    sent = await ref.referrals(inm, case_id=event.data["case_id"], direction="jurisdiction")
    by_need = {r["need_code"]: r for r in sent}
    assert set(by_need) == {"INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD"}
    assert [r["need_code"] for r in sent if r["is_lead"]] == ["UNACCOMPANIED_CHILD"]
    child = by_need["UNACCOMPANIED_CHILD"]
    assert (child["to_agency_id"], child["to_service_id"], child["to_agency_type"]) == (
        "MX-PFPNNA", "MX-PFPNNA-1", "child_protection")
    assert child["routing"]["chosen_service_id"] == "MX-PFPNNA-1" and "MX-PFPNNA-1" in child["routing"]["chosen_because"]
    assert child["coordinator_agency_id"] == "MX-COORD" and child["status"] == "requested"
    assert child["clock"] == "ACCEPT_DEADLINE" and child["due_at"] and child["overdue"] is False
    # The receiver reads the same decision; the screening's other receiver does not see this one.
    assert (await ref.client.get(f"/referrals/{child['id']}", headers=auth("MX-PFPNNA"))).json()["routing"] == child["routing"]
    _problem(await ref.client.get(f"/referrals/{child['id']}", headers=auth("MX-COMAR")), 404)

    requested = await ref.events("referral.requested.v1")
    assert {p["referral_id"] for _, p in requested} == {r["id"] for r in sent}
    placed = await ref.events("protection_hold.placed.v1")
    assert {p["need_code"] for _, p in placed} == {"INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD"}
    assert all(p["not_before"] is None for _, p in placed)


async def test_redelivery_and_rescreening_never_duplicate_open_referrals(ref, auth):
    event = screened("INTERNATIONAL_PROTECTION", "SGBV_SURVIVOR")
    await ref.deliver(event)
    before = await ref.events()
    # The same screening again, in a new envelope (a new ce_id, so the inbox would not catch it).
    await ref.deliver(screened("INTERNATIONAL_PROTECTION", "SGBV_SURVIVOR", case_id=event.data["case_id"],
                               person_id=event.data["person_id"], screening_id=event.data["screening_id"]))
    # A new screening of the same person with an extra need: only the new need opens a referral.
    await ref.deliver(screened("INTERNATIONAL_PROTECTION", "SGBV_SURVIVOR", "MEDICAL_URGENT",
                               case_id=event.data["case_id"], person_id=event.data["person_id"]))
    sent = await ref.referrals(auth("MX-COORD"), case_id=event.data["case_id"], direction="jurisdiction")
    assert sorted(r["need_code"] for r in sent) == ["INTERNATIONAL_PROTECTION", "MEDICAL_URGENT", "SGBV_SURVIVOR"]
    after = await ref.events()
    assert [t for t, _ in after[len(before):]] == ["referral.requested.v1", STATUS_MIRROR]
    assert not any(r["is_lead"] for r in sent if r["need_code"] == "MEDICAL_URGENT"), "the case already has a lead"


async def test_a_note_retried_with_its_idempotency_key_is_added_once(ref, auth):
    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="12-17"))
    pfpnna = auth("MX-PFPNNA")
    rid = (await _one(ref, pfpnna, direction="to"))["id"]
    keyed = {**pfpnna, "Idempotency-Key": f"note-{uuid.uuid4()}"}
    first = await ref.client.post(f"/referrals/{rid}/notes", headers=keyed, json={"text": "Llamada al albergue."})
    again = await ref.client.post(f"/referrals/{rid}/notes", headers=keyed, json={"text": "Llamada al albergue."})
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json(), "the retry answers with the note the key added"
    other = await ref.client.post(f"/referrals/{rid}/notes", headers=keyed, json={"text": "Otra nota."})
    assert _problem(other, 422)["detail"].startswith("Idempotency-Key")
    history = (await ref.client.get(f"/referrals/{rid}/history", headers=pfpnna)).json()
    assert [h["note"] for h in history if h["action"] == "note"] == ["Llamada al albergue."]
    assert len([t for t, p in await ref.events("referral.note_added.v1") if p["referral_id"] == rid]) == 1


async def test_full_closed_loop_with_notes_history_and_hold_release(ref, auth):
    event = screened("UNACCOMPANIED_CHILD", age_band="12-17")
    await ref.deliver(event)
    pfpnna, inm = auth("MX-PFPNNA"), auth("MX-INM")
    item = await _one(ref, pfpnna, direction="to")
    rid = item["id"]
    assert item["allowed_actions"] == ["receive", "accept", "reject"]
    for action in ("receive", "accept", "start", "hold", "resume"):
        r = await ref.act(rid, pfpnna, action)
        assert r.status_code == 200, r.text
    assert r.json()["status"] == "in-progress" and r.json()["clock"] == "COMPLETE_DEADLINE"
    r = await ref.client.post(f"/referrals/{rid}/notes", headers=pfpnna, json={"text": "Entrevista hecha; sin tutor."})
    assert r.status_code == 201
    r = await ref.act(rid, pfpnna, "complete", outcome_code="CHILD_PLACED_IN_CARE")
    assert r.status_code == 200 and r.json()["status"] == "completed" and r.json()["outcome_code"] == "CHILD_PLACED_IN_CARE"
    assert r.json()["due_at"] is None and r.json()["allowed_actions"] == []

    history = (await ref.client.get(f"/referrals/{rid}/history", headers=auth("MX-COORD"))).json()
    assert [h["seq"] for h in history] == list(range(1, len(history) + 1))
    assert [(h["action"], h["from_status"], h["to_status"]) for h in history] == [
        ("route", None, "requested"), ("receive", "requested", "received"), ("accept", "received", "accepted"),
        ("start", "accepted", "in-progress"), ("hold", "in-progress", "on-hold"),
        ("resume", "on-hold", "in-progress"), ("note", "in-progress", "in-progress"),
        ("complete", "in-progress", "completed")]
    assert history[0]["actor_agency_id"] is None
    assert {h["actor_agency_id"] for h in history[1:]} == {"MX-PFPNNA"}
    assert all(h["actor_subject"] for h in history[1:]) and history[6]["note"] == "Entrevista hecha; sin tutor."

    types = [t for t, p in await ref.events() if p.get("referral_id") == rid and t != STATUS_MIRROR]
    assert types == ["referral.requested.v1", "protection_hold.placed.v1", "referral.received.v1",
                     "referral.accepted.v1", "referral.started.v1", "referral.put_on_hold.v1", "referral.started.v1",
                     "referral.note_added.v1", "referral.completed.v1", "protection_hold.released.v1"]
    [(_, completed)] = await ref.events("referral.completed.v1")
    assert completed["outcome_code"] == "CHILD_PLACED_IN_CARE" and completed["from_agency_id"] == "MX-INM"
    assert completed["actor_agency_id"] == "MX-PFPNNA"
    [(_, note)] = await ref.events("referral.note_added.v1")
    assert "Entrevista" not in str(note)
    [(_, released)] = await ref.events("protection_hold.released.v1")
    assert released["release_reason"] == "COMPLETED_FINAL" and released["outcome_code"] == "CHILD_PLACED_IN_CARE"
    [hold] = (await ref.client.get("/holds", headers=auth("MX-COORD"), params={"case_id": event.data["case_id"]})).json()
    assert hold["active"] is False and hold["release_reason"] == "COMPLETED_FINAL"
    # The sender, a migration authority, learns that the hold ended and the (public) outcome, never why.
    [seen] = (await ref.client.get("/holds", headers=inm, params={"case_id": event.data["case_id"]})).json()
    assert seen["active"] is False and seen["release_reason"] is None and seen["outcome_code"] == "CHILD_PLACED_IN_CARE"


async def test_a_non_final_outcome_keeps_the_hold(ref, auth):
    await ref.deliver(screened("INTERNATIONAL_PROTECTION"))
    comar = auth("MX-COMAR")
    rid = (await _one(ref, comar))["id"]
    await ref.act(rid, comar, "accept")
    r = await ref.act(rid, comar, "complete", outcome_code="ASYLUM_CLAIM_REGISTERED")
    assert r.status_code == 200
    assert await ref.events("protection_hold.released.v1") == []
    assert [h["active"] for h in (await ref.client.get("/holds", headers=comar)).json()] == [True]


async def test_illegal_moves_are_409_naming_status_and_allowed_actions(ref, auth):
    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="0-11"))
    pfpnna = auth("MX-PFPNNA")
    rid = (await _one(ref, pfpnna))["id"]
    body = _problem(await ref.act(rid, pfpnna, "complete", outcome_code="CHILD_PLACED_IN_CARE"), 409)
    assert body["current_status"] == "requested" and body["allowed_actions"] == ["receive", "accept", "reject"]
    assert "requested" in body["detail"]
    # Wrong role: the sender may not accept, the receiver may not reassign.
    assert "accept" in _problem(await ref.act(rid, auth("MX-INM"), "accept"), 403)["detail"]
    _problem(await ref.act(rid, pfpnna, "reassign", to_service_id="MX-PFPNNA-1"), 403)
    # Missing or unknown reasons and outcomes name the field.
    assert _problem(await ref.act(rid, pfpnna, "reject"), 422)["errors"][0]["path"] == "body/reason_code"
    assert _problem(await ref.act(rid, pfpnna, "reject", reason_code="NO_CAPACITY"), 422)["errors"][0]["path"] == \
        "body/reason_text"
    assert any(e["path"] == "body/reason_code" for e in
               _problem(await ref.act(rid, pfpnna, "reject", reason_code="BORED", reason_text="x"), 422)["errors"])
    await ref.act(rid, pfpnna, "accept")
    assert _problem(await ref.act(rid, pfpnna, "complete"), 422)["errors"][0]["path"] == "body/outcome_code"
    # A stale expected_version is refused.
    body = _problem(await ref.act(rid, pfpnna, "start", expected_version=1), 409)
    assert body["current_version"] == 2
    assert body["current_status"] == "accepted" and body["allowed_actions"] == ["start", "hold", "complete", "fail"]
    assert (await ref.act(rid, pfpnna, "start", expected_version=2)).status_code == 200


async def test_unrelated_agencies_get_404_everywhere(ref, auth):
    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="0-11"))
    rid = (await _one(ref, auth("MX-PFPNNA")))["id"]
    for agency in ("MX-COMAR", "GT-PGN", "GT-COORD"):
        headers = auth(agency)
        _problem(await ref.client.get(f"/referrals/{rid}", headers=headers), 404)
        _problem(await ref.client.get(f"/referrals/{rid}/history", headers=headers), 404)
        _problem(await ref.act(rid, headers, "accept"), 404)
        _problem(await ref.act(rid, headers, "cancel", reason_code="OTHER", reason_text="x"), 404)
        _problem(await ref.client.post(f"/referrals/{rid}/notes", headers=headers, json={"text": "x"}), 404)
        assert await ref.referrals(headers) == []
    _problem(await ref.client.get(f"/referrals/{uuid.uuid4()}", headers=auth("MX-PFPNNA")), 404)


@on_both_databases
async def test_concurrent_accepts_exactly_one_wins(ref, auth, dev_issuer_dir):
    from tests.support.harness import bearer

    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="12-17"))
    rid = (await _one(ref, auth("MX-PFPNNA")))["id"]
    users = [bearer(dev_issuer_dir, "MX-PFPNNA", "child_protection", "MX", roles=[role])
             for role in ("caseworker", "supervisor")]
    results = await asyncio.gather(*(ref.act(rid, h, "accept") for h in users))
    assert sorted(r.status_code for r in results) == [200, 409], [r.text for r in results]
    loser = next(r for r in results if r.status_code == 409).json()
    assert loser["current_status"] == "accepted"
    assert len(await ref.events("referral.accepted.v1")) == 1
    history = (await ref.client.get(f"/referrals/{rid}/history", headers=users[0])).json()
    assert [h["action"] for h in history] == ["route", "accept"]


@on_both_databases
async def test_the_version_check_refuses_a_write_based_on_a_stale_read(ref, auth):
    """The conditional UPDATE itself: on databases where two readers can overlap (PostgreSQL), the
    second writer's version no longer matches and it gets 409 with nothing changed."""
    from enlace_platform.problems import Problem
    from referral.adapters.orm import ReferralRow
    from referral.service_layer.referrals import conditional_update

    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="12-17"))
    rid = (await _one(ref, auth("MX-PFPNNA")))["id"]
    async with ref.runtime.sessions() as first:
        stale = await first.get(ReferralRow, rid)
        await first.commit()
    async with ref.runtime.sessions() as second:
        await conditional_update(second, await second.get(ReferralRow, rid), {"status": "accepted"})
        await second.commit()
    async with ref.runtime.sessions() as first:
        first.add(stale)
        with pytest.raises(Problem) as refused:
            await conditional_update(first, stale, {"status": "rejected"}, ref_principal("MX-PFPNNA"))
        assert refused.value.status == 409 and refused.value.extensions["current_status"] == "accepted"
        assert refused.value.extensions["allowed_actions"] == ["start", "hold", "complete", "fail"]
    assert (await ref.client.get(f"/referrals/{rid}", headers=auth("MX-PFPNNA"))).json()["status"] == "accepted"


def ref_principal(agency_id: str):
    from enlace_platform.auth import Principal

    return Principal("u1", agency_id, "child_protection", "MX", ("caseworker",))


async def _second_child_service(ref, auth) -> None:
    r = await ref.client.post("/services", headers=auth("MX-COORD"), json={
        "id": "MX-PFPNNA-2", "agency_id": "MX-FEVIMTRA", "area": "MX", "name": "Albergue especializado",
        "need_codes": ["UNACCOMPANIED_CHILD"], "age_min": 0, "age_max": 17, "languages": ["es"], "capacity": 5})
    assert r.status_code == 201, r.text


async def test_rejection_routes_onward_keeps_the_hold_and_escalates_when_none_is_left(ref, auth):
    await _second_child_service(ref, auth)
    event = screened("UNACCOMPANIED_CHILD", age_band="12-17")
    await ref.deliver(event)
    first = await _one(ref, auth("MX-PFPNNA"))
    r = await ref.act(first["id"], auth("MX-PFPNNA"), "reject", reason_code="NO_CAPACITY", reason_text="Lleno hoy")
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    onward_id = r.json()["next_referral_id"]
    onward = (await ref.client.get(f"/referrals/{onward_id}", headers=auth("MX-FEVIMTRA"))).json()
    assert onward["previous_referral_id"] == first["id"] and onward["to_service_id"] == "MX-PFPNNA-2"
    assert onward["is_lead"] and onward["status"] == "requested"
    assert {e["agency_id"]: e["code"] for e in onward["routing"]["excluded"]} == {"MX-PFPNNA": "ALREADY_REJECTED"}
    # The rejecting agency still sees its own rejected referral, not the onward one.
    _problem(await ref.client.get(f"/referrals/{onward_id}", headers=auth("MX-PFPNNA")), 404)

    r = await ref.act(onward_id, auth("MX-FEVIMTRA"), "reject", reason_code="OUT_OF_MANDATE", reason_text="No")
    queued_id = r.json()["next_referral_id"]
    coord = auth("MX-COORD")
    queued = (await ref.client.get(f"/referrals/{queued_id}", headers=coord)).json()
    assert queued["to_agency_id"] is None and queued["escalation_reason"] == "REJECTED_NO_ALTERNATIVE"
    assert queued["allowed_actions"] == ["cancel", "reassign"]
    assert [q["id"] for q in await ref.referrals(coord, direction="queue")] == [queued_id]
    [(_, escalated)] = await ref.events("referral.escalated.v1")
    assert escalated["reason_code"] == "REJECTED_NO_ALTERNATIVE" and escalated["to_agency_id"] is None
    assert escalated["to_agency_type"] is None and escalated["to_service_id"] is None

    [hold] = (await ref.client.get("/holds", headers=auth("MX-FEVIMTRA"))).json()
    assert hold["active"] and hold["referral_id"] == first["id"], "the onward receiver sees the hold"
    assert (await ref.client.get("/holds", headers=auth("MX-COMAR"))).json() == []
    # The coordinator assigns the queued referral; the hold was never released along the way.
    r = await ref.act(queued_id, coord, "reassign", to_service_id="MX-PFPNNA-1")
    assert r.status_code == 200 and r.json()["to_agency_id"] == "MX-PFPNNA" and r.json()["escalation_reason"] is None
    assert await ref.referrals(coord, direction="queue") == []
    assert len(await ref.events("protection_hold.placed.v1")) == 1
    assert await ref.events("protection_hold.released.v1") == []
    [(_, reassigned)] = await ref.events("referral.reassigned.v1")
    assert reassigned["actor_agency_id"] == "MX-COORD" and reassigned["to_agency_id"] == "MX-PFPNNA"
    assert reassigned["previous_to_agency_id"] is None, "it came from the queue: nobody held it before"
    rejected = [p for _, p in await ref.events("referral.rejected.v1")]
    assert [p["reason_code"] for p in rejected] == ["NO_CAPACITY", "OUT_OF_MANDATE"]
    assert "Lleno" not in str(rejected)


async def test_no_eligible_agency_goes_to_the_coordinator_queue(ref, auth):
    await ref.deliver(screened("STATELESSNESS_RISK", jurisdiction="ZZ"))
    [(_, requested)] = await ref.events("referral.requested.v1")
    assert requested["to_agency_id"] is None and requested["coordinator_agency_id"] == "ZZ-COORD"
    [(_, escalated)] = await ref.events("referral.escalated.v1")
    assert escalated["reason_code"] == "NO_ELIGIBLE_AGENCY"
    # Nobody's agency in MX sees it; its sender does.
    assert await ref.referrals(auth("MX-COORD")) == []
    [mine] = await ref.referrals(auth("ZZ-MIG"))
    assert mine["status"] == "requested" and mine["to_agency_id"] is None
    assert mine["escalation_reason"] is None, "the barrier withholds the reason from a migration authority"


async def test_missing_consent_queues_and_granted_consent_routes(ref, auth):
    event = screened("INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD", age_band="12-17",
                     scope=consent_scope("health"))
    await ref.deliver(event)
    coord = auth("MX-COORD")
    queued = await _one(ref, coord, direction="queue")
    assert queued["need_code"] == "INTERNATIONAL_PROTECTION" and queued["escalation_reason"] == "CONSENT_MISSING"
    assert {e["code"] for e in queued["routing"]["excluded"]} == {"CONSENT"}
    child = await _one(ref, auth("MX-PFPNNA"))
    assert child["need_code"] == "UNACCOMPANIED_CHILD", "mandatory needs route without consent"
    # Consent for another purpose changes nothing; consent to refer to the asylum office routes it.
    await ref.deliver(consent_changed(event.data["case_id"], event.data["person_id"], "asylum_office",
                                      purpose="follow_up"))
    assert (await _one(ref, coord, direction="queue"))["id"] == queued["id"]
    await ref.deliver(consent_changed(event.data["case_id"], event.data["person_id"], "asylum_office"))
    assert await ref.referrals(coord, direction="queue") == []
    routed = await _one(ref, auth("MX-COMAR"))
    assert routed["id"] == queued["id"] and routed["to_service_id"] == "MX-COMAR-1"
    [(_, reassigned)] = await ref.events("referral.reassigned.v1")
    assert reassigned["actor_agency_id"] is None
    # Withdrawn consent: a later screening of this person queues the need again.
    await ref.deliver(consent_changed(event.data["case_id"], event.data["person_id"], "health", status="withdrawn"))
    second = screened("MEDICAL_URGENT", case_id=event.data["case_id"], person_id=event.data["person_id"], scope=None)
    second.data.pop("consent_scope")  # an older intake: the stored scope applies
    await ref.deliver(second)
    assert (await _one(ref, coord, direction="queue", need_code="MEDICAL_URGENT"))["escalation_reason"] == \
        "CONSENT_MISSING"


async def test_cancel_by_sender_keeps_the_hold_cancel_by_coordinator_releases_it(ref, auth):
    # The sender is a protection actor: an enforcement sender may not cancel a protection referral
    # (tests/security/test_firewall_referral.py).
    await ref.deliver(screened("INTERNATIONAL_PROTECTION", registering_agency_id="MX-PSI"))
    await ref.deliver(screened("INTERNATIONAL_PROTECTION", registering_agency_id="MX-PSI"))
    first, second = await ref.referrals(auth("MX-PSI"))
    r = await ref.act(first["id"], auth("MX-PSI"), "cancel", reason_code="REFERRED_IN_ERROR", reason_text="x")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert await ref.events("protection_hold.released.v1") == []
    r = await ref.act(second["id"], auth("MX-COORD"), "cancel", reason_code="DUPLICATE", reason_text="x")
    assert r.status_code == 200
    [(_, released)] = await ref.events("protection_hold.released.v1")
    assert released["release_reason"] == "CANCELLED_BY_COORDINATOR" and released["referral_id"] == second["id"]


async def test_manual_referral_with_idempotency_key(ref, auth):
    inm = auth("MX-INM") | {"Idempotency-Key": "manual-1"}
    case = registered(*(str(uuid.uuid4()) for _ in range(3)))
    await ref.deliver(case)
    person, second, third = case.data["person_ids"]
    body = {"case_id": case.data["case_id"], "person_id": person, "need_code": "UNACCOMPANIED_CHILD",
            "urgency": "immediate", "age_band": "12-17", "languages": ["es"]}
    first = await ref.client.post("/referrals", headers=inm, json=body)
    assert first.status_code == 201, first.text
    again = await ref.client.post("/referrals", headers=inm, json=body)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert first.json()["to_agency_id"] == "MX-PFPNNA" and first.json()["is_lead"]
    assert len(await ref.events("referral.requested.v1")) == 1
    assert _problem(await ref.client.post("/referrals", headers=inm, json={**body, "urgency": "high"}), 422)
    # Without a key, a second open referral for the same person and need is a conflict.
    body2 = {**body}
    dup = _problem(await ref.client.post("/referrals", headers=auth("MX-INM"), json=body2), 409)
    assert dup["existing_referral_id"] == first.json()["id"]
    # A chosen service must be able to take it.
    bad = {**body, "person_id": second, "to_service_id": "MX-COMAR-1"}
    assert _problem(await ref.client.post("/referrals", headers=auth("MX-INM"), json=bad), 422)[
        "errors"][0]["path"] == "body/to_service_id"
    ok = {**body, "person_id": third, "need_code": "INTERNATIONAL_PROTECTION",
          "age_band": "18-59", "to_service_id": "MX-COMAR-1"}
    assert _problem(await ref.client.post("/referrals", headers=auth("MX-COORD"), json=ok), 422)["detail"].endswith(
        "no consent to refer to a asylum_office agency")
    # The migration authority refers a sensitive need only through a screening (the information barrier).
    assert _problem(await ref.client.post("/referrals", headers=auth("MX-INM"), json=ok), 403)
    assert _problem(await ref.client.post("/referrals", headers=auth("MX-INM"), json={**body, "need_code": "X"}), 422)


def _refusal(r) -> tuple:
    """A refusal as its caller sees it, without the instance (the request's own path)."""
    body = _problem(r, r.status_code)
    body.pop("instance", None)
    return r.status_code, r.headers["content-type"], body


async def test_only_the_registering_agency_or_the_coordinator_refer_a_person_nobody_took_on(ref, auth):
    event = screened("UNACCOMPANIED_CHILD", age_band="12-17", registering_agency_id="MX-INM")
    await ref.deliver(event)
    body = {"case_id": event.data["case_id"], "person_id": event.data["person_id"], "need_code": "MEDICAL_URGENT",
            "age_band": "12-17", "languages": ["es"]}
    unknown = {**body, "case_id": str(uuid.uuid4()), "person_id": str(uuid.uuid4())}
    # The receiver that has not accepted, an unrelated agency, another migration authority, the coordinator's
    # caseworker (not acting as coordinator) and another jurisdiction: the person does not exist for them.
    for agency, role in (("MX-PFPNNA", None), ("MX-COMAR", None), ("MX-INM2", None), ("MX-COORD", "caseworker"),
                         ("GT-IGM", None), ("GT-COORD", None)):
        refused = await ref.client.post("/referrals", headers=auth(agency, role), json=body)
        assert _refusal(refused) == _refusal(await ref.client.post("/referrals", headers=auth(agency, role),
                                                                   json=unknown)), agency
        assert refused.status_code == 404 and event.data["case_id"] not in refused.text
        # Nor does what they might guess about it: no 409 or 422 that would confirm the person.
        _problem(await ref.client.post("/referrals", headers=auth(agency, role), json={
            **body, "need_code": "UNACCOMPANIED_CHILD"}), 404)
        _problem(await ref.client.post("/referrals", headers=auth(agency, role), json={
            **body, "to_service_id": "MX-COMAR-1"}), 404)
    assert len(await ref.events("referral.requested.v1")) == 1
    r = await ref.client.post("/referrals", headers=auth("MX-INM"), json=body)
    assert r.status_code == 201 and r.json()["from_agency_id"] == "MX-INM" and r.json()["to_agency_id"] == "MX-SSA"
    r = await ref.client.post("/referrals", headers=auth("MX-COORD"), json={**body, "need_code": "DISABILITY"})
    assert r.status_code == 201, r.text
    assert r.json()["from_agency_id"] == "MX-COORD" and r.json()["jurisdiction"] == "MX"
    assert len(await ref.events("referral.requested.v1")) == 3


async def test_a_caseworker_of_another_country_cannot_refer_a_child_it_learnt_of_from_the_bus(ref, auth):
    """The attack of issue 12: a Guatemalan caseworker had a Mexican child's ids from case.registered.v1 and opened
    a manual referral for them. Refused exactly like a person nobody ever registered, and nothing is written."""
    case = registered(str(uuid.uuid4()), str(uuid.uuid4()), agency_id="MX-INM")
    await ref.deliver(case)
    child = {"case_id": case.data["case_id"], "person_id": case.data["person_ids"][1],
             "need_code": "UNACCOMPANIED_CHILD", "urgency": "immediate", "age_band": "12-17", "languages": ["es"]}
    nobody = {**child, "case_id": str(uuid.uuid4()), "person_id": str(uuid.uuid4())}
    before = await ref.events()
    for agency in ("GT-IGM", "GT-COORD"):
        gt = auth(agency)
        attack = await ref.client.post("/referrals", headers=gt, json=child)
        assert attack.status_code == 404
        assert _refusal(attack) == _refusal(await ref.client.post("/referrals", headers=gt, json=nobody))
        # With an Idempotency-Key too: the key records nothing, so a retry is refused again.
        keyed = gt | {"Idempotency-Key": f"attack-{agency}"}
        assert _refusal(await ref.client.post("/referrals", headers=keyed, json=child)) == _refusal(attack)
    assert await ref.events() == before, "no referral, no hold, no event"
    assert (await ref.client.get("/holds", headers=auth("MX-INM"))).json() == []
    # The registering agency refers the child: the hold is its own.
    r = await ref.client.post("/referrals", headers=auth("MX-INM"), json=child)
    assert r.status_code == 201, r.text
    [hold] = (await ref.client.get("/holds", headers=auth("MX-INM"))).json()
    assert hold["from_agency_id"] == "MX-INM" and hold["referral_id"] == r.json()["id"]


async def test_an_agency_working_on_an_accepted_referral_may_refer_the_person_onward(ref, auth):
    event = screened("UNACCOMPANIED_CHILD", age_band="12-17", registering_agency_id="MX-INM")
    await ref.deliver(event)
    pfpnna = auth("MX-PFPNNA")
    [child] = await ref.referrals(pfpnna)
    body = {"case_id": event.data["case_id"], "person_id": event.data["person_id"], "need_code": "MEDICAL_URGENT",
            "age_band": "12-17", "languages": ["es"]}
    unknown_body = {**body, "person_id": str(uuid.uuid4())}
    assert (await ref.act(child["id"], pfpnna, "receive")).status_code == 200
    received = await ref.client.post("/referrals", headers=pfpnna, json=body)
    assert _refusal(received) == _refusal(await ref.client.post("/referrals", headers=pfpnna, json=unknown_body))
    assert received.status_code == 404, "received is not accepted"
    assert (await ref.act(child["id"], pfpnna, "accept")).status_code == 200
    r = await ref.client.post("/referrals", headers=pfpnna, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["from_agency_id"] == "MX-PFPNNA" and r.json()["to_agency_id"] == "MX-SSA"
    # In progress it may still; once it has finished with the person, no more.
    assert (await ref.act(child["id"], pfpnna, "start")).status_code == 200
    r = await ref.client.post("/referrals", headers=pfpnna, json={**body, "need_code": "DISABILITY"})
    assert r.status_code == 201, r.text
    assert (await ref.act(child["id"], pfpnna, "complete", outcome_code="CHILD_PLACED_IN_CARE")).status_code == 200
    done = await ref.client.post("/referrals", headers=pfpnna, json={**body, "need_code": "CRIME_VICTIM"})
    assert done.status_code == 404
    assert _refusal(done) == _refusal(await ref.client.post("/referrals", headers=pfpnna, json={
        **unknown_body, "need_code": "CRIME_VICTIM"}))
    # The agency it referred to has not accepted: it may not refer further.
    ssa = await ref.client.post("/referrals", headers=auth("MX-SSA"), json={**body, "need_code": "CRIME_VICTIM"})
    assert ssa.status_code == 404


async def test_inbox_filters_and_pagination(ref, auth):
    for _ in range(3):
        await ref.deliver(screened("SGBV_SURVIVOR", "INTERNATIONAL_PROTECTION", registering_agency_id="MX-PSI"))
    inm, ssa = auth("MX-PSI"), auth("MX-SSA")  # a protection sender (MX-INM's filters: test_firewall_referral.py)
    page = (await ref.client.get("/referrals", headers=inm, params={"limit": 4, "offset": 4})).json()
    assert page["total"] == 6 and len(page["items"]) == 2
    assert {r["need_code"] for r in await ref.referrals(inm, need_code="SGBV_SURVIVOR")} == {"SGBV_SURVIVOR"}
    assert len(await ref.referrals(ssa, direction="to")) == 3 and await ref.referrals(ssa, direction="from") == []
    rid = (await ref.referrals(ssa))[0]["id"]
    await ref.act(rid, ssa, "accept")
    assert [r["id"] for r in await ref.referrals(ssa, status="accepted")] == [rid]
    assert await ref.referrals(inm, overdue="true") == []
    assert len(await ref.referrals(inm, overdue="false")) == 6
    _problem(await ref.client.get("/referrals", headers=ssa, params={"direction": "queue"}), 422)
    _problem(await ref.client.get("/referrals", headers=ssa, params={"status": "lost"}), 422)


async def test_kpis_scoped_to_agency_and_jurisdiction(ref, auth):
    for _ in range(2):
        await ref.deliver(screened("INTERNATIONAL_PROTECTION"))
    await ref.deliver(screened("INTERNATIONAL_PROTECTION", jurisdiction="GT"))
    comar = auth("MX-COMAR")
    first, second = await ref.referrals(comar)
    await ref.act(first["id"], comar, "accept")
    await ref.act(first["id"], comar, "complete", outcome_code="REFUGEE_STATUS_GRANTED")
    await ref.act(second["id"], comar, "reject", reason_code="DUPLICATE", reason_text="x")
    _problem(await ref.client.get("/kpis", headers=comar), 403)  # KPIs are for supervisors and coordinators
    k = (await ref.client.get("/kpis", headers=auth("MX-COMAR", "supervisor"))).json()
    assert k["scope"] == "agency:MX-COMAR" and k["total"] == 2
    assert k["by_status"]["completed"] == 1 and k["by_status"]["rejected"] == 1
    assert k["median_time_to_accept_s"] >= 0 and k["overdue"] == 0
    assert k["closed_loop_share"] == 0.5
    k = (await ref.client.get("/kpis", headers=auth("MX-COORD"))).json()
    # Jurisdiction-wide: the rejection went on to the queue (open), so it is not an ended loop.
    assert k["scope"] == "jurisdiction:MX" and k["total"] == 3 and k["by_status"]["requested"] == 1
    assert k["closed_loop_share"] == 1.0
    assert (await ref.client.get("/kpis", headers=auth("GT-COORD"))).json()["total"] == 1


async def test_a_scope_listing_one_agency_type_twice_is_fine(ref, auth):
    scope = consent_scope("asylum_office") + [{"recipient_agency_type": "asylum_office", "purpose": "referral",
                                               "basis": "mandatory_override"}]
    await ref.deliver(screened("INTERNATIONAL_PROTECTION", scope=scope))
    assert (await _one(ref, auth("MX-COMAR")))["to_service_id"] == "MX-COMAR-1"


async def test_a_screening_that_breaks_its_contract_is_poison(ref):
    from enlace_platform.consumer import PoisonMessage

    for breakage in ({"age_band": "teen"}, {"needs": [{"code": "HUNGRY", "urgency": "high"}]},
                     {"consent_scope": [{"recipient_agency_type": "police", "purpose": "referral", "basis": "consent"}]}):
        event = screened("UNACCOMPANIED_CHILD")
        event.data.update(breakage)
        with pytest.raises(PoisonMessage):
            await ref.deliver(event)
    event = screened("UNACCOMPANIED_CHILD")
    del event.data["person_id"]
    with pytest.raises(PoisonMessage):
        await ref.deliver(event)
    bad = consent_changed(str(uuid.uuid4()), str(uuid.uuid4()), "asylum_office", status="maybe")
    with pytest.raises(PoisonMessage):
        await ref.deliver(bad)


async def test_coordinator_releases_a_hold_left_behind_by_a_sender_cancellation(ref, auth):
    event = screened("INTERNATIONAL_PROTECTION", "TRAFFICKING_PRESUMED", registering_agency_id="MX-PSI")
    await ref.deliver(event)
    inm, coord = auth("MX-PSI"), auth("MX-COORD")  # a protection sender: an enforcement one may not cancel
    holds = {h["need_code"]: h for h in (await ref.client.get("/holds", headers=coord)).json()}
    asylum_hold = holds["INTERNATIONAL_PROTECTION"]
    assert all(h["open_referral_id"] for h in holds.values())
    assert (await ref.client.get("/holds", headers=coord, params={"open_referral": "false"})).json() == []
    _problem(await ref.client.post(f"/holds/{asylum_hold['id']}/release", headers=coord), 409)  # still open
    for item in await ref.referrals(inm):
        r = await ref.act(item["id"], inm, "cancel", reason_code="REFERRED_IN_ERROR", reason_text="x")
        assert r.status_code == 200
    assert await ref.events("protection_hold.released.v1") == []
    # The coordinator finds the holds left without an open referral.
    unattended = (await ref.client.get("/holds", headers=coord, params={"active": "true", "open_referral": "false"})).json()
    assert {h["id"] for h in unattended} == {h["id"] for h in holds.values()}
    assert all(h["open_referral_id"] is None for h in unattended)
    _problem(await ref.client.post(f"/holds/{asylum_hold['id']}/release", headers=auth("MX-COMAR")), 403)
    # Even with the role coordinator, a user of another agency is told nothing about the hold.
    _problem(await ref.client.post(f"/holds/{asylum_hold['id']}/release", headers=auth("MX-COMAR", "coordinator")),
             404)
    _problem(await ref.client.post(f"/holds/{asylum_hold['id']}/release", headers=auth("GT-COORD")), 404)
    r = await ref.client.post(f"/holds/{asylum_hold['id']}/release", headers=coord)
    assert r.status_code == 200 and r.json()["release_reason"] == "CANCELLED_BY_COORDINATOR"
    _problem(await ref.client.post(f"/holds/{asylum_hold['id']}/release", headers=coord), 409)  # once only
    body = _problem(await ref.client.post(f"/holds/{holds['TRAFFICKING_PRESUMED']['id']}/release", headers=coord), 409)
    assert body["not_before"]
    [(_, released)] = await ref.events("protection_hold.released.v1")
    assert released["hold_id"] == asylum_hold["id"]


async def test_when_the_lead_closes_the_most_protective_open_referral_leads(ref, auth):
    await ref.deliver(screened("UNACCOMPANIED_CHILD", "SGBV_SURVIVOR", "INTERNATIONAL_PROTECTION", age_band="12-17",
                               registering_agency_id="MX-PSI"))
    inm, pfpnna = auth("MX-PSI"), auth("MX-PFPNNA")  # a protection sender sees need and lead
    lead = await _one(ref, pfpnna)
    assert lead["is_lead"]
    await ref.act(lead["id"], pfpnna, "accept")
    await ref.act(lead["id"], pfpnna, "complete", outcome_code="CHILD_PLACED_IN_CARE")
    leads = [r["need_code"] for r in await ref.referrals(inm) if r["is_lead"] and r["status"] == "requested"]
    assert leads == ["INTERNATIONAL_PROTECTION"]
    asylum = next(r for r in await ref.referrals(inm) if r["need_code"] == "INTERNATIONAL_PROTECTION")
    await ref.act(asylum["id"], auth("MX-COMAR"), "receive")
    [(_, received)] = await ref.events("referral.received.v1")
    assert received["is_lead"] is True


async def _leads(ref, headers, case_id) -> list[str]:
    open_ = {"requested", "received", "accepted", "in-progress", "on-hold"}
    return [r["need_code"] for r in await ref.referrals(headers, case_id=case_id) if r["is_lead"] and r["status"] in open_]


async def test_a_more_protective_need_found_later_in_the_case_takes_the_lead(ref, auth):
    parent = screened("INTERNATIONAL_PROTECTION", registering_agency_id="MX-PSI")
    case_id = parent.data["case_id"]
    await ref.deliver(parent)
    inm, comar, pfpnna = auth("MX-PSI"), auth("MX-COMAR"), auth("MX-PFPNNA")  # a protection sender sees the lead
    [asylum] = await ref.referrals(inm, case_id=case_id)
    assert asylum["is_lead"]
    # Another adult of the case with the same need does not take the lead (ties never move it).
    await ref.deliver(screened("INTERNATIONAL_PROTECTION", case_id=case_id, registering_agency_id="MX-PSI"))
    assert await _leads(ref, inm, case_id) == ["INTERNATIONAL_PROTECTION"]
    assert [r["id"] for r in await ref.referrals(inm, case_id=case_id) if r["is_lead"]] == [asylum["id"]]
    # A child of the case screened later: unaccompanied child protection coordinates now.
    await ref.deliver(screened("UNACCOMPANIED_CHILD", "SGBV_SURVIVOR", case_id=case_id, age_band="12-17",
                               registering_agency_id="MX-PSI"))
    assert await _leads(ref, inm, case_id) == ["UNACCOMPANIED_CHILD"]
    child = next(r for r in await ref.referrals(inm, case_id=case_id) if r["need_code"] == "UNACCOMPANIED_CHILD")
    requested = {p["referral_id"]: p for _, p in await ref.events("referral.requested.v1")}
    assert requested[child["id"]]["is_lead"] is True
    # The former lead's next event says it no longer leads.
    assert (await ref.act(asylum["id"], comar, "receive")).status_code == 200
    [(_, received)] = await ref.events("referral.received.v1")
    assert received["referral_id"] == asylum["id"] and received["is_lead"] is False
    # When the child's referral closes, the most protective open referral (the oldest asylum one) leads again.
    await ref.act(child["id"], pfpnna, "accept")
    await ref.act(child["id"], pfpnna, "complete", outcome_code="CHILD_PLACED_IN_CARE")
    assert [r["id"] for r in await ref.referrals(inm, case_id=case_id)
            if r["is_lead"] and r["status"] != "completed"] == [asylum["id"]]
    await ref.act(asylum["id"], comar, "accept")
    [(_, accepted)] = [e for e in await ref.events("referral.accepted.v1") if e[1]["referral_id"] == asylum["id"]]
    assert accepted["is_lead"] is True


async def test_a_rejected_lead_passes_the_lead_to_its_onward_referral_not_to_a_peer(ref, auth):
    await _second_child_service(ref, auth)
    first = screened("UNACCOMPANIED_CHILD", age_band="12-17")
    case_id = first.data["case_id"]
    await ref.deliver(first)
    await ref.deliver(screened("UNACCOMPANIED_CHILD", case_id=case_id, age_band="0-11"))
    inm, pfpnna = auth("MX-INM"), auth("MX-PFPNNA")
    lead = next(r for r in await ref.referrals(inm, case_id=case_id) if r["is_lead"])
    assert lead["person_id"] == first.data["person_id"]
    r = await ref.act(lead["id"], pfpnna, "reject", reason_code="NO_CAPACITY", reason_text="x")
    onward_id = r.json()["next_referral_id"]
    open_leads = [x["id"] for x in await ref.referrals(inm, case_id=case_id) if x["is_lead"] and x["status"] != "rejected"]
    assert open_leads == [onward_id]


@on_both_databases
async def test_reject_and_accept_at_once_exactly_one_wins(ref, auth):
    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="12-17"))
    pfpnna = auth("MX-PFPNNA")
    rid = (await _one(ref, pfpnna))["id"]
    results = await asyncio.gather(ref.act(rid, pfpnna, "accept"),
                                   ref.act(rid, pfpnna, "reject", reason_code="NO_CAPACITY", reason_text="x"))
    assert sorted(r.status_code for r in results) == [200, 409], [r.text for r in results]
    winner = next(r for r in results if r.status_code == 200).json()
    loser = next(r for r in results if r.status_code == 409).json()
    assert loser["current_status"] == winner["status"] and "allowed_actions" in loser
    accepted, rejected = await ref.events("referral.accepted.v1"), await ref.events("referral.rejected.v1")
    assert len(accepted) + len(rejected) == 1
    # A rejection routes onward exactly once; an acceptance opens nothing new.
    assert len(await ref.events("referral.requested.v1")) == (2 if rejected else 1)
    assert len(await ref.events("protection_hold.placed.v1")) == 1
    assert await ref.events("protection_hold.released.v1") == []
    history = (await ref.client.get(f"/referrals/{rid}/history", headers=pfpnna)).json()
    assert [h["action"] for h in history] == ["route", "accept" if winner["status"] == "accepted" else "reject"]


@on_both_databases
async def test_complete_and_coordinator_cancel_at_once_release_the_hold_once(ref, auth):
    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="12-17"))
    pfpnna, coord = auth("MX-PFPNNA"), auth("MX-COORD")
    rid = (await _one(ref, pfpnna))["id"]
    assert (await ref.act(rid, pfpnna, "accept")).status_code == 200
    results = await asyncio.gather(
        ref.act(rid, pfpnna, "complete", outcome_code="CHILD_PLACED_IN_CARE"),
        ref.act(rid, coord, "cancel", reason_code="DUPLICATE", reason_text="x"))
    assert sorted(r.status_code for r in results) == [200, 409], [r.text for r in results]
    winner = next(r for r in results if r.status_code == 200).json()
    loser = next(r for r in results if r.status_code == 409).json()
    assert loser["current_status"] == winner["status"] and loser["allowed_actions"] == []
    closing = await ref.events("referral.completed.v1", "referral.cancelled.v1")
    assert len(closing) == 1
    [(_, released)] = await ref.events("protection_hold.released.v1")
    assert released["release_reason"] == {"completed": "COMPLETED_FINAL",
                                          "cancelled": "CANCELLED_BY_COORDINATOR"}[winner["status"]]


@on_both_databases
async def test_the_clock_firing_while_the_receiver_accepts_leaves_one_consistent_state(ref, auth):
    from datetime import timedelta

    from referral.service_layer.clocks import run_clocks
    from referral.service_layer.referrals import now_utc

    await ref.deliver(screened("SGBV_SURVIVOR"))
    ssa, coord = auth("MX-SSA"), auth("MX-COORD")
    rid = (await _one(ref, ssa))["id"]
    fired, accepted = await asyncio.gather(run_clocks(ref.runtime.sessions, now_utc() + timedelta(hours=25)),
                                           ref.act(rid, ssa, "accept"))
    assert accepted.status_code == 200, accepted.text
    after = (await ref.client.get(f"/referrals/{rid}", headers=ssa)).json()
    assert after["status"] == "accepted" and after["clock"] == "COMPLETE_DEADLINE"
    assert after["escalation_reason"] is None and await ref.referrals(coord, direction="escalated") == []
    # Whichever came first: at most one breach, published before the acceptance, never after it.
    types = [t for t, p in await ref.events() if p.get("referral_id") == rid and t != STATUS_MIRROR]
    assert fired in (0, 1) and types.count("referral.overdue.v1") == fired
    assert types[-1] == "referral.accepted.v1" and types.count("referral.accepted.v1") == 1


@on_both_databases
async def test_a_manual_referral_losing_the_race_for_its_person_and_need_gets_409_not_500(ref, auth, monkeypatch):
    """Two writers both saw no open referral (possible on PostgreSQL): the unique open_key decides."""
    import referral.entrypoints.api as api

    case_id, person_id = await ref.registered_person()
    body = {"case_id": case_id, "person_id": person_id, "need_code": "UNACCOMPANIED_CHILD",
            "urgency": "immediate", "age_band": "12-17", "languages": ["es"]}
    assert (await ref.client.post("/referrals", headers=auth("MX-INM"), json=body)).status_code == 201

    async def saw_nothing(session, person_id, need_code):
        return None

    monkeypatch.setattr(api, "open_referral_for", saw_nothing)
    _problem(await ref.client.post("/referrals", headers=auth("MX-INM"), json=body), 409)
    assert len(await ref.events("referral.requested.v1")) == 1
    assert len(await ref.events("protection_hold.placed.v1")) == 1


async def test_a_final_outcome_of_another_need_does_not_release_the_hold(ref, auth):
    await ref.deliver(screened("INTERNATIONAL_PROTECTION"))
    await ref.deliver(screened("INTERNATIONAL_PROTECTION"))
    comar = auth("MX-COMAR")
    wrong, right = await ref.referrals(comar)
    for item, outcome in ((wrong, "CHILD_PLACED_IN_CARE"), (right, "REFUGEE_STATUS_GRANTED")):
        await ref.act(item["id"], comar, "accept")
        assert (await ref.act(item["id"], comar, "complete", outcome_code=outcome)).status_code == 200
    [(_, released)] = await ref.events("protection_hold.released.v1")
    assert released["referral_id"] == right["id"] and released["outcome_code"] == "REFUGEE_STATUS_GRANTED"
    holds = {h["referral_id"]: h["active"] for h in (await ref.client.get("/holds", headers=comar)).json()}
    assert holds == {wrong["id"]: True, right["id"]: False}


async def test_a_manual_referral_cannot_move_a_known_person_to_another_case(ref, auth):
    event = screened("INTERNATIONAL_PROTECTION")
    await ref.deliver(event)
    body = {"case_id": str(uuid.uuid4()), "person_id": event.data["person_id"], "need_code": "MEDICAL_URGENT",
            "age_band": "18-59", "languages": ["es"]}
    # Not the person's case: as unknown as a person nobody registered.
    moved = await ref.client.post("/referrals", headers=auth("MX-INM"), json=body)
    assert moved.status_code == 404 and event.data["case_id"] not in moved.text
    assert _refusal(moved) == _refusal(await ref.client.post("/referrals", headers=auth("MX-INM"), json={
        **body, "person_id": str(uuid.uuid4())}))
    r = await ref.client.post("/referrals", headers=auth("MX-INM"), json={**body, "case_id": event.data["case_id"]})
    assert r.status_code == 201, r.text


async def test_consent_arriving_before_the_screening_routes_it_directly(ref, auth):
    case_id, person_id = str(uuid.uuid4()), str(uuid.uuid4())
    await ref.deliver(consent_changed(case_id, person_id, "asylum_office"))
    event = screened("INTERNATIONAL_PROTECTION", case_id=case_id, person_id=person_id)
    event.data.pop("consent_scope")  # an intake that sends no snapshot: what referral learned applies
    await ref.deliver(event)
    assert (await _one(ref, auth("MX-COMAR")))["to_service_id"] == "MX-COMAR-1"
    assert await ref.referrals(auth("MX-COORD"), direction="queue") == []
    # The same consent again later changes nothing.
    await ref.deliver(consent_changed(case_id, person_id, "asylum_office"))
    assert await ref.events("referral.reassigned.v1") == [] and await ref.events("referral.escalated.v1") == []


async def test_a_reassignment_names_the_agency_that_lost_the_referral(ref, auth):
    coord = auth("MX-COORD")
    await add_second_child_protection_service(ref.client, coord)
    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="12-17"))
    [(_, requested)] = await ref.events("referral.requested.v1")
    assert requested["to_agency_id"] == "MX-PFPNNA"

    r = await ref.act(requested["referral_id"], coord, "reassign", to_service_id="MX-SNDIF-1")
    assert r.status_code == 200, r.text
    [(_, reassigned)] = await ref.events("referral.reassigned.v1")
    assert reassigned["to_agency_id"] == "MX-SNDIF" and reassigned["previous_to_agency_id"] == "MX-PFPNNA"


async def test_a_referral_routed_onward_keeps_the_first_deadline_to_accept(ref, auth):
    await add_second_child_protection_service(ref.client, auth("MX-COORD"))
    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="12-17"))
    [(_, requested)] = await ref.events("referral.requested.v1")
    first_due = requested["due_at"]
    assert first_due, "an unaccompanied child's referral runs an accept clock"

    r = await ref.act(requested["referral_id"], auth("MX-PFPNNA"), "reject", reason_code="NO_CAPACITY",
                      reason_text="Sin plazas")
    onward_id = r.json()["next_referral_id"]
    onward = (await ref.client.get(f"/referrals/{onward_id}", headers=auth("MX-COORD"))).json()
    assert onward["to_agency_id"] == "MX-SNDIF"
    assert datetime.fromisoformat(onward["due_at"]) == datetime.fromisoformat(first_due), \
        "passing the child to another agency does not restart the 24 hours"

    r = await ref.act(onward_id, auth("MX-SNDIF"), "reject", reason_code="NO_CAPACITY", reason_text="Tampoco")
    queued = (await ref.client.get(f"/referrals/{r.json()['next_referral_id']}", headers=auth("MX-COORD"))).json()
    assert queued["to_agency_id"] is None and queued["escalation_reason"] == "REJECTED_NO_ALTERNATIVE"
    assert datetime.fromisoformat(queued["due_at"]) == datetime.fromisoformat(first_due)
