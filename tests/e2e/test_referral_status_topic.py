"""On the real broker: referral.status, the topic an enforcement agency's systems read, carries one
referral.status_changed.v1 per lifecycle change of a referral of a need not sensitive and per hold change, and
only what the firewall lets an enforcement agency see (enlace_platform.firewall): never a sensitive need, its
receiver, a note or a reason, nor the lifecycle of a sensitive referral (it learns of one only by its hold)."""

import json

import pytest
from jsonschema import Draft202012Validator

from enlace_platform import firewall
from enlace_platform.contracts import FORMATS
from enlace_platform.topics import REFERRAL_PROTECTION_HOLD, REFERRAL_REFERRAL, REFERRAL_STATUS
from tests.support.database_support import on_both_databases
from tests.support.harness import REPO, envelopes, provision_topics, read_topic, unique_prefix
from tests.support.referral_support import referral_harness, referral_settings, screened, token

pytestmark = [pytest.mark.kafka, on_both_databases]

STATUS_SCHEMA = json.loads((REPO / "contracts" / "events" / "referral.status_changed.v1.schema.json").read_text())
REASON_TEXT = "Sin cupo en el refugio de Tapachula"
# The payload's fields and the referral fields of firewall.TABLE["referral"] they render.
AS_REFERRAL_FIELD = {"referral_id": "id", "case_id": "case_id", "person_id": "person_id",
                     "from_agency_id": "from_agency_id", "status": "status", "hold_active": "hold_active",
                     "outcome_code": "outcome_code"}


async def test_the_status_topic_mirrors_each_change_with_what_enforcement_may_see(kafka_bootstrap, tmp_path,
                                                                                  dev_issuer_dir, databases):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    settings = referral_settings(tmp_path, dev_issuer_dir, bootstrap=kafka_bootstrap, prefix=prefix,
                                 databases=databases)
    auth = lambda agency: token(dev_issuer_dir, agency)  # noqa: E731
    async with referral_harness(settings) as ref:
        await ref.deliver(screened("MEDICAL_URGENT", "SGBV_SURVIVOR", "TRAFFICKING_PRESUMED",
                                   "INTERNATIONAL_PROTECTION"))
        sent = {p["need_code"]: {**p, "id": p["referral_id"]} for _, p in await ref.events("referral.requested.v1")}
        medical, sgbv, trafficking, asylum = (sent[c] for c in ("MEDICAL_URGENT", "SGBV_SURVIVOR",
                                                                "TRAFFICKING_PRESUMED", "INTERNATIONAL_PROTECTION"))
        steps = [(medical, "receive", {}), (medical, "accept", {}), (medical, "start", {}), (medical, "hold", {}),
                 (medical, "resume", {}), (medical, "complete", {"outcome_code": "MEDICAL_CARE_PROVIDED"}),
                 (sgbv, "receive", {}), (sgbv, "accept", {}),
                 (trafficking, "receive", {}),
                 (trafficking, "reject", {"reason_code": "NO_CAPACITY", "reason_text": REASON_TEXT}),
                 (asylum, "accept", {}), (asylum, "complete", {"outcome_code": "REFUGEE_STATUS_GRANTED"})]
        for referral, action, body in steps:
            r = await ref.act(referral["id"], auth(referral["to_agency_id"]), action, **body)
            assert r.status_code == 200, r.text
        for referral in (medical, sgbv):
            r = await ref.client.post(f"/referrals/{referral['id']}/notes", headers=auth(referral["to_agency_id"]),
                                      json={"text": REASON_TEXT})
            assert r.status_code == 201, r.text
        outbox = await ref.events()
        # Each referral as its last event on referral.referral left it: what a protection actor sees.
        full = {p["referral_id"]: {**p, "id": p["referral_id"]} for t, p in outbox
                if t.startswith("referral.") and t != "referral.status_changed.v1"}
        expected = {t: sum(1 for row_type, _ in outbox if row_type == t)
                    for t in ("referral.status_changed.v1", *firewall.ENFORCEMENT_EVENT_TYPES)}
        # Mirrored: the lifecycle of the medical referral (a need not sensitive) and every hold change.
        mirrored = sum(1 for t, p in outbox if t.startswith("protection_hold.") or (
            t in firewall.ENFORCEMENT_EVENT_TYPES and p["need_code"] not in firewall.SENSITIVE_NEEDS))
        assert expected["referral.status_changed.v1"] == mirrored > 7

        status_records = await read_topic(kafka_bootstrap, f"{prefix}{REFERRAL_STATUS}", expected=mirrored,
                                          timeout=60)
        lifecycle = envelopes(await read_topic(kafka_bootstrap, f"{prefix}{REFERRAL_REFERRAL}",
                                               expected=len([t for t, _ in outbox if t.startswith("referral.")
                                                             and t != "referral.status_changed.v1"]), timeout=60))
        holds = envelopes(await read_topic(kafka_bootstrap, f"{prefix}{REFERRAL_PROTECTION_HOLD}",
                                           expected=expected["protection_hold.placed.v1"]
                                           + expected["protection_hold.released.v1"], timeout=60))

    status = envelopes(status_records)
    assert len(status) == mirrored and {e.type for e in status} == {"referral.status_changed.v1"}
    assert all(e.key == e.data["case_id"] and e.subject == e.data["referral_id"] for e in status)

    # Exactly one status event per lifecycle change (with the status it led to) and per hold change.
    changes = [(e.data["referral_id"], e.type, e.data["status"]) for e in lifecycle
               if e.type in firewall.ENFORCEMENT_EVENT_TYPES and e.data["need_code"] not in firewall.SENSITIVE_NEEDS]
    seen = [(e.data["referral_id"], e.data["cause_type"], e.data["status"]) for e in status]
    sensitive = {r["id"] for r in full.values() if r["need_code"] in firewall.SENSITIVE_NEEDS}
    assert {r for r, t, _ in seen if t.startswith("referral.")} == {medical["id"]}, "no sensitive lifecycle"
    assert {r for r, t, _ in seen if t.startswith("protection_hold.")} <= sensitive
    assert sorted(s for s in seen if s[1].startswith("referral.")) == sorted(changes)
    assert sorted((r, t) for r, t, _ in seen if t.startswith("protection_hold.")) == sorted(
        (e.data["referral_id"], e.type) for e in holds)
    for referral_id in full:  # and in each referral's own order
        assert [s for s in seen if s[0] == referral_id and s[1].startswith("referral.")] == [
            c for c in changes if c[0] == referral_id]

    # Nothing an enforcement agency may not see, and every field by the firewall's rule.
    validator = Draft202012Validator(STATUS_SCHEMA, format_checker=FORMATS)
    receivers = {r["to_agency_id"] for r in full.values() if r["to_agency_id"]}
    for record, event in zip(status_records, status, strict=True):
        text = record.value.decode()
        for secret in (*firewall.SENSITIVE_NEEDS, *receivers, REASON_TEXT, "NO_CAPACITY", "REFUGEE_STATUS_GRANTED"):
            assert secret not in text, (secret, event.data)
        assert [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(event.data)] == []
        assert set(event.data) == set(AS_REFERRAL_FIELD) | {"cause_type", "occurred_at"}
        referral = full[event.data["referral_id"]]
        for field, value in event.data.items():
            if field == "cause_type":
                assert firewall.event_visible(value, firewall.Viewer.ENFORCEMENT)
                continue
            if field == "occurred_at":  # the change's time: the record's arrival tells it anyway
                continue
            rule = firewall.TABLE["referral"][AS_REFERRAL_FIELD[field]]
            assert rule in (firewall.Rule.ALWAYS, firewall.Rule.IF_PUBLIC_OUTCOME), field
            if field in ("referral_id", "case_id", "person_id", "from_agency_id"):
                assert value == referral[AS_REFERRAL_FIELD[field]]
        assert event.data["outcome_code"] in (None, *firewall.PUBLIC_OUTCOMES)

    last = {}
    for event in status:
        last[event.data["referral_id"]] = event.data
    assert (last[medical["id"]]["status"], last[medical["id"]]["outcome_code"],
            last[medical["id"]]["hold_active"]) == ("completed", "MEDICAL_CARE_PROVIDED", False)
    assert sgbv["id"] not in last, "a survivor's referral (no hold) is not on the topic at all"
    # The asylum claim's outcome is not public; its hold was released by the final outcome.
    assert (last[asylum["id"]]["status"], last[asylum["id"]]["outcome_code"], last[asylum["id"]]["hold_active"]) == (
        "completed", None, False)
    assert last[asylum["id"]]["cause_type"] == "protection_hold.released.v1"
    # The rejected trafficking referral's hold stays with its onward referral: the topic told of its placing,
    # never of the rejection nor of the onward referral.
    onward = [r for r in full.values() if r["previous_referral_id"] == trafficking["id"]]
    assert len(onward) == 1 and onward[0]["id"] not in last
    assert (last[trafficking["id"]]["cause_type"], last[trafficking["id"]]["hold_active"]) == (
        "protection_hold.placed.v1", True)


async def test_a_referral_a_protection_agency_sent_is_mirrored_only_for_its_hold(tmp_path, dev_issuer_dir, databases):
    """The status topic's readers are enforcement systems: of a referral they did not send they learn only
    that a hold was placed or released (what stops a removal), never its lifecycle."""
    settings = referral_settings(tmp_path, dev_issuer_dir, databases=databases)
    auth = lambda agency: token(dev_issuer_dir, agency)  # noqa: E731
    async with referral_harness(settings) as ref:
        await ref.deliver(screened("INTERNATIONAL_PROTECTION", "SGBV_SURVIVOR", registering_agency_id="MX-PSI"))
        sent = {p["need_code"]: p for _, p in await ref.events("referral.requested.v1")}
        asylum = sent["INTERNATIONAL_PROTECTION"]
        for action, body in (("receive", {}), ("accept", {}), ("complete", {"outcome_code": "REFUGEE_STATUS_GRANTED"})):
            r = await ref.act(asylum["referral_id"], auth(asylum["to_agency_id"]), action, **body)
            assert r.status_code == 200, r.text
        outbox = await ref.events()
    lifecycle = [t for t, p in outbox if t in firewall.ENFORCEMENT_EVENT_TYPES and t.startswith("referral.")]
    assert len(lifecycle) >= 5  # both requested, the asylum's received, accepted and completed
    mirrors = [p for t, p in outbox if t == "referral.status_changed.v1"]
    assert [p["cause_type"] for p in mirrors] == ["protection_hold.placed.v1", "protection_hold.released.v1"]
    # Nor who sent it, nor how it ended: those are the protection agency's to tell.
    assert all(p["from_agency_id"] is None and p["outcome_code"] is None for p in mirrors), mirrors
