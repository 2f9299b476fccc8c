"""A withdrawn consent (consent.changed.v1, status withdrawn) through the referral app: the person's open
referrals to that agency type are cancelled by the system with CONSENT_WITHDRAWN, mandatory
child-protection referrals go on, holds stay, the queue keeps waiting, and routing no longer offers the type."""

from tests.support.referral_support import (  # noqa: F401 - ref and auth are fixtures
    auth, consent_changed, consent_scope, ref, screened,
)

NEEDS = ("UNACCOMPANIED_CHILD", "STRANDED_ASSISTED_RETURN", "INTERNATIONAL_PROTECTION", "MEDICAL_URGENT",
         "TRAFFICKING_PRESUMED")


async def _by_need(ref, coordinator, case_id: str) -> dict[str, dict]:
    """The case's referrals by need, as the coordinator sees them: the sender (MX-INM, an enforcement agency)
    is behind the information barrier and sees neither a sensitive need nor why a referral was cancelled."""
    return {r["need_code"]: r for r in await ref.referrals(coordinator, case_id=case_id, direction="jurisdiction")}


async def test_withdrawal_cancels_what_depended_on_it_and_nothing_else(ref, auth):
    # A child; consent to refer to child protection, the asylum office and health, not to anti-trafficking.
    event = screened(*NEEDS, age_band="12-17", scope=consent_scope("child_protection", "asylum_office", "health"))
    case_id, person_id = event.data["case_id"], event.data["person_id"]
    await ref.deliver(event)
    inm, ssa, coord = auth("MX-INM"), auth("MX-SSA"), auth("MX-COORD")
    before = await _by_need(ref, coord, case_id)
    assert before["STRANDED_ASSISTED_RETURN"]["to_agency_id"] == "MX-PFPNNA"
    assert before["TRAFFICKING_PRESUMED"]["escalation_reason"] == "CONSENT_MISSING"
    assert (await ref.act(before["MEDICAL_URGENT"]["id"], ssa, "accept")).status_code == 200
    holds_before = (await ref.client.get("/holds", headers=coord, params={"active": "true"})).json()
    assert {h["need_code"] for h in holds_before} == {"UNACCOMPANIED_CHILD", "INTERNATIONAL_PROTECTION",
                                                      "TRAFFICKING_PRESUMED"}

    for agency_type in ("child_protection", "asylum_office", "health"):
        await ref.deliver(consent_changed(case_id, person_id, agency_type, status="withdrawn"))

    after = await _by_need(ref, coord, case_id)
    cancelled = {n for n, r in after.items() if r["status"] == "cancelled"}
    assert cancelled == {"STRANDED_ASSISTED_RETURN", "INTERNATIONAL_PROTECTION", "MEDICAL_URGENT"}
    assert after["UNACCOMPANIED_CHILD"]["status"] == "requested", "mandatory child protection goes on"
    assert after["UNACCOMPANIED_CHILD"]["is_lead"]
    queued = after["TRAFFICKING_PRESUMED"]
    assert queued["status"] == "requested" and queued["to_agency_id"] is None
    assert queued["escalation_reason"] == "CONSENT_MISSING"
    for need in cancelled:
        assert after[need]["reason_code"] == "CONSENT_WITHDRAWN" and after[need]["closed_at"]
        last = (await ref.client.get(f"/referrals/{after[need]['id']}/history", headers=coord)).json()[-1]
        assert (last["action"], last["actor_agency_id"], last["reason_code"]) == ("cancel", None, "CONSENT_WITHDRAWN")
    assert after["MEDICAL_URGENT"]["allowed_actions"] == []
    # The sender learns which referrals ended, never why; the sensitive ones (asylum, trafficking) it is not
    # shown at all, not even that they exist, but by their holds.
    seen_by_inm = await ref.referrals(inm, case_id=case_id)
    assert sorted((r["need_code"] or "", r["status"], r["reason_code"]) for r in seen_by_inm) == [
        ("MEDICAL_URGENT", "cancelled", None), ("STRANDED_ASSISTED_RETURN", "cancelled", None),
        ("UNACCOMPANIED_CHILD", "requested", None)]
    for need in ("INTERNATIONAL_PROTECTION", "TRAFFICKING_PRESUMED"):
        assert (await ref.client.get(f"/referrals/{after[need]['id']}/history", headers=inm)).status_code == 404
    for seen in seen_by_inm:
        if seen["status"] == "cancelled":
            last = (await ref.client.get(f"/referrals/{seen['id']}/history", headers=inm)).json()[-1]
            assert (last["action"], last["to_status"], last["reason_code"]) == ("cancel", "cancelled", None)

    events = [p for _, p in await ref.events("referral.cancelled.v1")]
    assert sorted(p["need_code"] for p in events) == sorted(cancelled)
    assert all(p["actor_agency_id"] is None and p["reason_code"] == "CONSENT_WITHDRAWN"
               and p["status"] == "cancelled" for p in events)
    # Holds stay: a withdrawn consent never allows a removal; the coordinator sees the one left unattended.
    assert await ref.events("protection_hold.released.v1") == []
    holds_after = (await ref.client.get("/holds", headers=auth("MX-COORD"), params={"active": "true"})).json()
    assert {h["id"] for h in holds_after} == {h["id"] for h in holds_before}
    unattended = [h for h in holds_after if h["open_referral_id"] is None]
    assert [h["need_code"] for h in unattended] == ["INTERNATIONAL_PROTECTION"]

    # The same withdrawal again (another event, same fact) changes nothing.
    count = len(await ref.events())
    await ref.deliver(consent_changed(case_id, person_id, "health", status="withdrawn"))
    await ref.deliver(consent_changed(case_id, person_id, "psychosocial", status="withdrawn"))  # nothing open there
    assert len(await ref.events()) == count
    assert await _by_need(ref, coord, case_id) == after


async def test_a_withdrawn_type_is_no_longer_offered_by_routing(ref, auth):
    event = screened("MEDICAL_URGENT", scope=consent_scope("health"))
    case_id, person_id = event.data["case_id"], event.data["person_id"]
    await ref.deliver(event)
    await ref.deliver(consent_changed(case_id, person_id, "health", status="withdrawn"))
    inm = auth("MX-INM")
    [cancelled] = await ref.referrals(inm, case_id=case_id)
    assert cancelled["status"] == "cancelled"
    # A manual referral, and a re-screening without a snapshot, find no consented health agency: queued.
    r = await ref.client.post("/referrals", headers=inm, json={
        "case_id": case_id, "person_id": person_id, "need_code": "MEDICAL_URGENT", "age_band": "18-59"})
    assert r.status_code == 201, r.text
    # The migration authority learns that it waits for a receiver; why, and the routing, are the protection side's.
    assert (r.json()["to_agency_id"], r.json()["escalation_reason"], r.json()["routing"]) == (None, None, None)
    manual = (await ref.client.get(f"/referrals/{r.json()['id']}", headers=auth("MX-COORD"))).json()
    assert manual["to_agency_id"] is None and manual["escalation_reason"] == "CONSENT_MISSING"
    assert "CONSENT" in {e["code"] for e in manual["routing"]["excluded"]}
    # Given again, the consent routes the waiting referral to health.
    await ref.deliver(consent_changed(case_id, person_id, "health"))
    routed = (await ref.client.get(f"/referrals/{manual['id']}", headers=inm)).json()
    assert routed["to_agency_id"] == "MX-SSA" and routed["status"] == "requested"


async def test_a_withdrawn_follow_up_consent_cancels_no_referral(ref, auth):
    event = screened("MEDICAL_URGENT", scope=consent_scope("health") + consent_scope("health", purpose="follow_up"))
    await ref.deliver(event)
    await ref.deliver(consent_changed(event.data["case_id"], event.data["person_id"], "health", status="withdrawn",
                                      purpose="follow_up"))
    [referral] = await ref.referrals(auth("MX-INM"))
    assert referral["status"] == "requested" and referral["to_agency_id"] == "MX-SSA"
    assert await ref.events("referral.cancelled.v1") == []


async def test_the_receiver_loses_read_access_to_the_free_text_until_consent_is_given_again(ref, auth):
    event = screened("MEDICAL_URGENT", "UNACCOMPANIED_CHILD", age_band="12-17",
                     scope=consent_scope("health", "child_protection"))
    case_id, person_id = event.data["case_id"], event.data["person_id"]
    await ref.deliver(event)
    inm, ssa, pfpnna = auth("MX-INM"), auth("MX-SSA"), auth("MX-PFPNNA")
    sent = {r["need_code"]: r for r in await ref.referrals(inm)}
    medical, child = sent["MEDICAL_URGENT"]["id"], sent["UNACCOMPANIED_CHILD"]["id"]
    for rid, headers, text in ((medical, ssa, "Alergia a penicilina"), (child, pfpnna, "Pregunta por su madre")):
        assert (await ref.client.post(f"/referrals/{rid}/notes", headers=headers, json={"text": text})).status_code == 201

    async def notes(rid, headers):
        history = (await ref.client.get(f"/referrals/{rid}/history", headers=headers)).json()
        return [(h["note"], h["text_withheld"]) for h in history if h["action"] == "note"]

    for agency_type in ("health", "child_protection"):
        await ref.deliver(consent_changed(case_id, person_id, agency_type, status="withdrawn"))
    assert await notes(medical, ssa) == [(None, True)]  # the receiver: withheld
    # The record keeps it: the coordinator reads it. The sender, an enforcement agency, never reads another
    # agency's note (the information barrier), withdrawal or not.
    assert await notes(medical, auth("MX-COORD")) == [("Alergia a penicilina", False)]
    assert await notes(medical, inm) == []
    assert await notes(child, pfpnna) == [("Pregunta por su madre", False)], "mandatory: shared by law"
    await ref.deliver(consent_changed(case_id, person_id, "health"))
    assert await notes(medical, ssa) == [("Alergia a penicilina", False)]
