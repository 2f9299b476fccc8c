"""On the real broker: a family group is screened, the referral service's protection holds reach intake
over Kafka, and removal of each held person is refused (409 naming the hold and its referral) until
the hold is released. The hold events are published as the referral service publishes them."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from enlace_platform.envelope import Envelope, to_kafka
from enlace_platform.firewall import SENSITIVE_NEEDS
from enlace_platform.topics import INTAKE_CASE, REFERRAL_PROTECTION_HOLD, REFERRAL_REFERRAL
from intake.config import IntakeSettings
from intake.entrypoints.app import create_app
from tests.support.database_support import on_both_databases
from tests.support.harness import (
    bearer, envelopes, eventually, fast_settings, provision_topics, read_topic, running_app, unique_prefix,
)
from tests.support.intake_support import (
    family_group, hold_placed, hold_released, inm, inm_supervisor, referral_event,
)

pytestmark = [pytest.mark.kafka, on_both_databases]


@pytest.fixture
async def intake(kafka_bootstrap, dev_issuer_dir, tmp_path, databases):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    app = create_app(fast_settings(IntakeSettings, tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix,
                                   dev_issuer_dir=dev_issuer_dir, databases=databases))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()

    async def publish(topic: str, envelope: Envelope) -> None:
        key, value, headers = to_kafka(envelope)
        await producer.send_and_wait(f"{prefix}{topic}", value=value, key=key, headers=headers)

    try:
        async with running_app(app) as client:
            yield client, publish, prefix
    finally:
        await producer.stop()


async def test_family_group_needs_and_the_removal_safeguard_over_the_broker(intake, dev_issuer_dir,
                                                                           kafka_bootstrap):
    client, publish, prefix = intake
    officer = inm(dev_issuer_dir)
    supervisor = inm_supervisor(dev_issuer_dir)  # orders removals

    # A border post registers the group and screens everyone.
    r = await client.post("/cases", headers=officer, json=family_group())
    assert r.status_code == 201, r.text
    case = r.json()
    mother, daughter, teen, unrelated_adult, disputed = case["persons"]
    answers = {mother["id"]: {"fear_of_return": True, "wishes_to_seek_asylum": True,
                              "travelling_with_parent_or_guardian": False},
               daughter["id"]: {"travelling_with_parent_or_guardian": True},
               teen["id"]: {"travelling_with_parent_or_guardian": False, "travelling_with_unrelated_adult": True},
               unrelated_adult["id"]: {"fear_of_return": False},
               disputed["id"]: {}}
    needs = {}
    for person in case["persons"]:
        r = await client.post(f"/cases/{case['id']}/screenings", headers=officer,
                              json={"person_id": person["id"], **answers[person["id"]]})
        assert r.status_code == 201, r.text
        needs[person["id"]] = {n["code"]: n for n in r.json()["needs"]}

    assert set(needs[mother["id"]]) == {"INTERNATIONAL_PROTECTION"}
    assert needs[mother["id"]]["INTERNATIONAL_PROTECTION"]["reasons"] == ["expressed fear of return",
                                                                          "wishes to seek asylum"]
    assert needs[daughter["id"]] == {}, "a child with her registered mother"
    assert set(needs[teen["id"]]) == {"UNACCOMPANIED_CHILD"}
    uac = needs[teen["id"]]["UNACCOMPANIED_CHILD"]
    assert uac["urgency"] == "immediate" and uac["reasons"] == [
        "treated as a child: aged 15", "no parent or legal guardian in the registered group",
        "no other relative travels with the child", "travels with an adult who is not a relative"]
    assert needs[unrelated_adult["id"]] == {}
    assert set(needs[disputed["id"]]) == {"UNACCOMPANIED_CHILD"}
    assert needs[disputed["id"]]["UNACCOMPANIED_CHILD"]["reasons"][0] == (
        "treated as a child: age disputed, treated as a child until an age assessment concludes")

    # The screenings went out on intake.case, codes only.
    records = envelopes(await read_topic(kafka_bootstrap, f"{prefix}{INTAKE_CASE}", expected=6))
    screened = [e.data for e in records if e.type == "case.screened.v1"]
    assert len(screened) == 5 and all(e.key == case["id"] for e in records)
    assert {s["person_id"]: [n["code"] for n in s["needs"]] for s in screened}[teen["id"]] == ["UNACCOMPANIED_CHILD"]
    assert all(s["consent_scope"] == [] for s in screened)
    assert "Pérez" not in json.dumps([e.data for e in records], ensure_ascii=False)

    # Ordered at once, before any hold has come back: the screening itself already refuses it.
    r = await client.post(f"/cases/{case['id']}/persons/{teen['id']}/removal-orders", headers=supervisor,
                          json={"destination_country": "HND"})
    assert r.status_code == 409 and [p["need_code"] for p in r.json()["pending_holds"]] == ["UNACCOMPANIED_CHILD"]

    # The referral service places a hold per hold-bearing need.
    placed = {p["id"]: hold_placed(case_id=case["id"], person_id=p["id"], need_code=code)
              for p, code in ((mother, "INTERNATIONAL_PROTECTION"), (teen, "UNACCOMPANIED_CHILD"),
                              (disputed, "UNACCOMPANIED_CHILD"))}
    for envelope in placed.values():
        await publish(REFERRAL_PROTECTION_HOLD, envelope)
    # The same placement again, as a new event (e.g. re-published after a producer restart): still one hold.
    again = placed[teen["id"]].data
    await publish(REFERRAL_PROTECTION_HOLD, hold_placed(case_id=case["id"], person_id=teen["id"],
                                                        need_code=again["need_code"], hold_id=again["hold_id"],
                                                        referral_id=again["referral_id"]))
    await publish(REFERRAL_REFERRAL, referral_event(
        "accepted", referral_id=placed[mother["id"]].data["referral_id"], case_id=case["id"],
        person_id=mother["id"], need_code="INTERNATIONAL_PROTECTION", status="accepted", to_agency_id="MX-COMAR",
        to_agency_type="asylum_office"))
    # After it on the case's partition: once the teen's referral is in, the mother's is too.
    child_referral = dict(referral_id=placed[teen["id"]].data["referral_id"], case_id=case["id"],
                          person_id=teen["id"], need_code="UNACCOMPANIED_CHILD", to_agency_id="MX-PFPNNA",
                          to_agency_type="child_protection")
    await publish(REFERRAL_REFERRAL, referral_event("accepted", status="accepted", **child_referral))

    async def case_view(predicate):
        async def check():
            view = (await client.get(f"/cases/{case['id']}", headers=officer)).json()
            return view if predicate(view) else None
        return check

    view = await eventually(await case_view(lambda v: len(v["holds"]) == 3 and v["referrals"]),
                            what="the holds and the referral reach intake")
    assert {h["status"] for h in view["holds"]} == {"active"}
    # The migration authority sees the asylum referral's hold, not its need; the referral itself, a sensitive
    # need, not at all, though it sent it (enlace_platform.firewall). The child's it sees whole.
    assert [(r["referral_id"], r["status"], r["need_code"], r["to_agency_id"]) for r in view["referrals"]] == [
        (child_referral["referral_id"], "accepted", "UNACCOMPANIED_CHILD", "MX-PFPNNA")]
    assert sorted(h["need_code"] or "" for h in view["holds"]) == ["", "UNACCOMPANIED_CHILD", "UNACCOMPANIED_CHILD"]

    for person in (mother, teen, disputed):
        r = await client.post(f"/cases/{case['id']}/persons/{person['id']}/removal-orders", headers=supervisor,
                              json={"destination_country": "HND"})
        assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json", r.text
        hold = placed[person["id"]].data
        shown_need = None if hold["need_code"] in SENSITIVE_NEEDS else hold["need_code"]
        assert r.json()["holds"] == [{"hold_id": hold["hold_id"], "referral_id": hold["referral_id"],
                                      "need_code": shown_need, "not_before": None}]
        assert hold["hold_id"] in r.json()["detail"] and hold["referral_id"] in r.json()["detail"]
    r = await client.post(f"/cases/{case['id']}/persons/{unrelated_adult['id']}/removal-orders", headers=supervisor,
                          json={"destination_country": "GTM"})
    assert r.status_code == 201, "no hold, no refusal"

    # The asylum claim is decided and the children are placed in care: the holds are released.
    await publish(REFERRAL_REFERRAL, referral_event(
        "completed", referral_id=placed[mother["id"]].data["referral_id"], case_id=case["id"],
        person_id=mother["id"], need_code="INTERNATIONAL_PROTECTION", status="completed", to_agency_id="MX-COMAR",
        to_agency_type="asylum_office", outcome_code="ASYLUM_CLAIM_REJECTED_FINAL"))
    await publish(REFERRAL_REFERRAL, referral_event("completed", status="completed",
                                                    outcome_code="CHILD_REUNIFIED_WITH_FAMILY", **child_referral))
    for envelope in placed.values():
        outcome = "ASYLUM_CLAIM_REJECTED_FINAL" if envelope.data["need_code"] == "INTERNATIONAL_PROTECTION" \
            else "CHILD_REUNIFIED_WITH_FAMILY"
        await publish(REFERRAL_PROTECTION_HOLD, hold_released(envelope, outcome_code=outcome))
    view = await eventually(await case_view(lambda v: {h["status"] for h in v["holds"]} == {"released"}
                                            and v["referrals"][0]["status"] == "completed"),
                            what="the releases and the outcome reach intake")
    # Of the asylum claim's end the migration authority learns only that its hold was released, no outcome.
    assert [(r["referral_id"], r["outcome_code"]) for r in view["referrals"]] == [
        (child_referral["referral_id"], "CHILD_REUNIFIED_WITH_FAMILY")]
    assert placed[mother["id"]].data["referral_id"] not in json.dumps(view["referrals"])
    assert {h["outcome_code"] for h in view["holds"]} == {None, "CHILD_REUNIFIED_WITH_FAMILY"}
    for person in (mother, teen, disputed):
        r = await client.post(f"/cases/{case['id']}/persons/{person['id']}/removal-orders", headers=supervisor,
                              json={"destination_country": "HND"})
        assert r.status_code == 201 and r.json()["status"] == "accepted", r.text


async def test_a_release_published_before_its_placement_still_releases(intake, dev_issuer_dir):
    client, publish, _ = intake
    officer = inm(dev_issuer_dir)
    supervisor = inm_supervisor(dev_issuer_dir)  # orders removals
    case = (await client.post("/cases", headers=officer, json=family_group())).json()
    teen = case["persons"][2]
    placed = hold_placed(case_id=case["id"], person_id=teen["id"], need_code="TRAFFICKING_PRESUMED",
                         hold_id=str(uuid.uuid4()))
    await publish(REFERRAL_PROTECTION_HOLD, hold_released(placed, release_reason="REFLECTION_PERIOD_ENDED",
                                                          outcome_code=None))
    await publish(REFERRAL_PROTECTION_HOLD, placed)

    async def placement_arrived():
        holds = (await client.get(f"/cases/{case['id']}", headers=officer)).json()["holds"]
        return holds if holds and holds[0]["placed_at"] else None

    [hold] = await eventually(placement_arrived, what="both hold events reach intake")
    # Released; why is the protection side's business (firewall: a release reason is never shown to enforcement).
    assert hold["status"] == "released" and hold["release_reason"] is None
    r = await client.post(f"/cases/{case['id']}/persons/{teen['id']}/removal-orders", headers=supervisor,
                          json={"destination_country": "HND"})
    assert r.status_code == 201, r.text


async def test_the_case_view_passes_the_firewall_for_an_enforcement_agency(intake, dev_issuer_dir):
    """A survivor of sexual violence referred to health care, and a trafficking hold: the migration authority's
    case view shows the hold, never its need or the reflection period, and not the survivor's referral at all,
    though it sent it (a sensitive need); a protection agency that registered the same kind of case still sees
    everything."""
    client, publish, _ = intake
    officer = inm(dev_issuer_dir)
    asylum_office = bearer(dev_issuer_dir, "MX-COMAR", "asylum_office")
    views = {}
    for who, headers in (("enforcement", officer), ("protection", asylum_office)):
        r = await client.post("/cases", headers=headers, json=family_group())
        assert r.status_code == 201, r.text
        case = r.json()
        mother, teen = case["persons"][0], case["persons"][2]
        r = await client.post(f"/cases/{case['id']}/screenings", headers=headers, json={
            "person_id": mother["id"], "sexual_violence_disclosed": True, "sexual_violence_within_72h": True})
        assert r.status_code == 201, r.text
        # What the agency recorded itself stays visible to it: its own screening's needs.
        assert "SGBV_SURVIVOR" in {n["code"] for n in r.json()["needs"]}
        sender = {"from_agency_id": "MX-INM" if who == "enforcement" else "MX-COMAR"}
        sgbv, child = str(uuid.uuid4()), str(uuid.uuid4())
        await publish(REFERRAL_REFERRAL, referral_event(
            "accepted", referral_id=sgbv, case_id=case["id"], person_id=mother["id"], need_code="SGBV_SURVIVOR",
            status="accepted", to_agency_id="MX-SSA", to_agency_type="health", **sender))
        await publish(REFERRAL_REFERRAL, referral_event(
            "completed", referral_id=child, case_id=case["id"], person_id=teen["id"],
            need_code="UNACCOMPANIED_CHILD", status="completed", to_agency_id="MX-PFPNNA",
            to_agency_type="child_protection", outcome_code="CHILD_PLACED_IN_CARE", **sender))
        await publish(REFERRAL_PROTECTION_HOLD, hold_placed(
            case_id=case["id"], person_id=mother["id"], need_code="TRAFFICKING_PRESUMED",
            to_agency_id="MX-FEVIMTRA", not_before=datetime.now(UTC) + timedelta(days=30), **sender))

        # The child's referral comes after the survivor's on the case's partition: once it is shown, both are in.
        async def arrived(case_id=case["id"], headers=headers, shown=1 if who == "enforcement" else 2):
            view = (await client.get(f"/cases/{case_id}", headers=headers)).json()
            return view if len(view["referrals"]) == shown and view["holds"] else None
        views[who] = await eventually(arrived, what="the referrals and the hold reach intake")

    seen = views["enforcement"]
    [shown] = seen["referrals"]  # the survivor's (accepted) is not shown at all; the child's (completed) is
    assert (shown["status"], shown["need_code"], shown["to_agency_id"], shown["outcome_code"]) == (
        "completed", "UNACCOMPANIED_CHILD", "MX-PFPNNA", "CHILD_PLACED_IN_CARE")
    [hold] = seen["holds"]
    assert (hold["status"], hold["need_code"], hold["not_before"], hold["release_reason"]) == (
        "active", None, None, None)
    leaked = json.dumps({"referrals": seen["referrals"], "holds": seen["holds"]})
    for secret in ("SGBV_SURVIVOR", "TRAFFICKING_PRESUMED", "MX-SSA", "MX-FEVIMTRA", "health"):
        assert secret not in leaked
    # Removal and erasure refusals name the hold, not its need.
    r = await client.post(f"/cases/{seen['id']}/persons/{hold['person_id']}/removal-orders",
                          headers=inm_supervisor(dev_issuer_dir), json={"destination_country": "HND"})
    assert r.status_code == 409 and r.json()["holds"][0]["need_code"] is None, r.text
    assert "TRAFFICKING" not in r.json()["detail"] and "MX-FEVIMTRA" not in r.text

    full = views["protection"]
    assert {r["need_code"] for r in full["referrals"]} == {"SGBV_SURVIVOR", "UNACCOMPANIED_CHILD"}
    assert {r["to_agency_id"] for r in full["referrals"]} == {"MX-SSA", "MX-PFPNNA"}
    assert full["holds"][0]["need_code"] == "TRAFFICKING_PRESUMED" and full["holds"][0]["not_before"]


async def test_an_enforcement_agency_is_shown_only_the_referrals_it_sent(intake, dev_issuer_dir):
    """Issue 12 (F5): the migration authority's case view listed the asylum office's onward referrals (trafficking,
    sexual violence) with their status, and a protected referral without a hold narrowed its need. Now it is shown
    the referrals it sent of needs not sensitive (its own asylum referral is not shown either), and the holds (a
    hold is what stops a removal); a refused erasure names no other."""
    client, publish, _ = intake
    officer = inm(dev_issuer_dir)
    case = (await client.post("/cases", headers=officer, json=family_group())).json()
    mother = case["persons"][0]
    about_mother = dict(case_id=case["id"], person_id=mother["id"])
    medical, asylum, trafficking, sgbv = (str(uuid.uuid4()) for _ in range(4))
    await publish(REFERRAL_REFERRAL, referral_event(
        "accepted", referral_id=medical, need_code="MEDICAL_URGENT", status="accepted",
        to_agency_id="MX-IMSS", to_agency_type="health", **about_mother))
    await publish(REFERRAL_REFERRAL, referral_event(
        "accepted", referral_id=asylum, need_code="INTERNATIONAL_PROTECTION", status="accepted",
        to_agency_id="MX-COMAR", to_agency_type="asylum_office", **about_mother))
    # The asylum office, working on the mother, refers her onward: with effect, but not the authority's business.
    await publish(REFERRAL_REFERRAL, referral_event(
        "accepted", referral_id=trafficking, need_code="TRAFFICKING_PRESUMED", status="accepted",
        to_agency_id="MX-FEVIMTRA", to_agency_type="anti_trafficking", from_agency_id="MX-COMAR", **about_mother))
    await publish(REFERRAL_PROTECTION_HOLD, hold_placed(
        need_code="TRAFFICKING_PRESUMED", referral_id=trafficking, from_agency_id="MX-COMAR",
        to_agency_id="MX-FEVIMTRA", **about_mother))
    await publish(REFERRAL_REFERRAL, referral_event(
        "accepted", referral_id=sgbv, need_code="SGBV_SURVIVOR", status="accepted", to_agency_id="MX-SSA",
        to_agency_type="health", from_agency_id="MX-COMAR", **about_mother))
    # Last on the case's partition: once it is in, everything before it is too.
    await publish(REFERRAL_REFERRAL, referral_event(
        "started", referral_id=medical, need_code="MEDICAL_URGENT", status="in-progress",
        to_agency_id="MX-IMSS", to_agency_type="health", **about_mother))

    async def arrived():
        view = (await client.get(f"/cases/{case['id']}", headers=officer)).json()
        return view if view["referrals"] and view["referrals"][0]["status"] == "in-progress" else None
    view = await eventually(arrived, what="the referral events reach intake")
    assert [(r["referral_id"], r["status"], r["need_code"], r["to_agency_id"]) for r in view["referrals"]] == [
        (medical, "in-progress", "MEDICAL_URGENT", "MX-IMSS")]
    [hold] = view["holds"]  # the trafficking hold stays: it stops a removal
    assert (hold["referral_id"], hold["status"], hold["need_code"]) == (trafficking, "active", None)
    text = json.dumps(view)
    for withheld in (asylum, sgbv, "MX-SSA", "MX-FEVIMTRA", "SGBV", "TRAFFICKING", "INTERNATIONAL"):
        assert withheld not in text

    r = await client.post(f"/cases/{case['id']}/persons/{mother['id']}/erasure",
                          headers=inm_supervisor(dev_issuer_dir), json={"reason_code": "ERASURE_REQUEST"})
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json", r.text
    assert [o["referral_id"] for o in r.json()["open_referrals"]] == [medical]
    for withheld in (asylum, sgbv, "MX-SSA", "MX-FEVIMTRA", "SGBV", "TRAFFICKING", "INTERNATIONAL"):
        assert withheld not in r.text
