"""A consent withdrawal on the real broker: intake's case.screened.v1 and consent.changed.v1 (withdrawn,
one of them delivered twice) reach the referral service through intake.case; the referrals sent under
the withdrawn consents are cancelled by the system, the mandatory child-protection referral survives,
no protection hold is released, and referral.referral carries each cancellation exactly once."""

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from enlace_platform.envelope import to_kafka
from tests.support.database_support import on_both_databases
from tests.support.harness import envelopes, eventually, provision_topics, read_topic, unique_prefix
from tests.support.referral_support import (
    consent_changed, consent_scope, referral_harness, referral_settings, screened, token,
)

pytestmark = [pytest.mark.kafka, on_both_databases]


async def test_withdrawn_consent_cancels_its_referrals_and_the_child_protection_one_survives(
        kafka_bootstrap, tmp_path, dev_issuer_dir, databases):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    settings = referral_settings(tmp_path, dev_issuer_dir, bootstrap=kafka_bootstrap, prefix=prefix,
                                 databases=databases)
    case_id, person_id = str(uuid.uuid4()), str(uuid.uuid4())
    # An unaccompanied child who consented to child protection and the asylum office, not to anti-trafficking.
    screening = screened("UNACCOMPANIED_CHILD", "STRANDED_ASSISTED_RETURN", "INTERNATIONAL_PROTECTION",
                         "TRAFFICKING_PRESUMED", case_id=case_id, person_id=person_id, age_band="12-17",
                         registering_agency_id="MX-INM", scope=consent_scope("child_protection", "asylum_office"))
    withdraw_child_protection = consent_changed(case_id, person_id, "child_protection", status="withdrawn")
    withdraw_asylum = consent_changed(case_id, person_id, "asylum_office", status="withdrawn")
    # Last on the case's partition: once it has routed the queued referral, everything before it was handled.
    grant_anti_trafficking = consent_changed(case_id, person_id, "anti_trafficking")
    # The routing and the cancellations' reasons are protection work, read as the coordinator; MX-INM, the
    # sender, is behind the barrier and is asked only what it may see.
    coord, inm = token(dev_issuer_dir, "MX-COORD"), token(dev_issuer_dir, "MX-INM")

    async with referral_harness(settings) as ref:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            for envelope in (screening, withdraw_child_protection, withdraw_child_protection, withdraw_asylum,
                             grant_anti_trafficking):
                key, value, headers = to_kafka(envelope)
                await producer.send_and_wait(f"{prefix}intake.case", value=value, key=key, headers=headers)
        finally:
            await producer.stop()

        async def trafficking_routed():
            items = {i["need_code"]: i for i in await ref.referrals(coord, case_id=case_id, direction="jurisdiction")}
            trafficking = items.get("TRAFFICKING_PRESUMED")
            return trafficking is not None and trafficking["to_agency_id"] == "MX-FEVIMTRA" and items

        after = await eventually(trafficking_routed, timeout=60, what="the last consent event handled")
        holds = (await ref.client.get("/holds", headers=coord, params={"case_id": case_id})).json()
        seen_by_inm = await ref.referrals(inm, case_id=case_id)
        holds_seen_by_inm = (await ref.client.get("/holds", headers=inm, params={"case_id": case_id})).json()
        referral_topic = envelopes(await read_topic(kafka_bootstrap, f"{prefix}referral.referral", expected=8,
                                                    timeout=60))
        hold_topic = envelopes(await read_topic(kafka_bootstrap, f"{prefix}referral.protection_hold", expected=3,
                                                timeout=60))

    assert {need: r["status"] for need, r in after.items()} == {
        "UNACCOMPANIED_CHILD": "requested", "STRANDED_ASSISTED_RETURN": "cancelled",
        "INTERNATIONAL_PROTECTION": "cancelled", "TRAFFICKING_PRESUMED": "requested"}
    assert after["UNACCOMPANIED_CHILD"]["to_agency_id"] == "MX-PFPNNA", "mandatory: goes on without consent"
    assert after["STRANDED_ASSISTED_RETURN"]["to_agency_id"] == "MX-PFPNNA", "same agency type, not mandatory"
    assert {after[n]["reason_code"] for n in ("STRANDED_ASSISTED_RETURN", "INTERNATIONAL_PROTECTION")} == {
        "CONSENT_WITHDRAWN"}

    cancelled = [e for e in referral_topic if e.type == "referral.cancelled.v1"]
    assert sorted(e.data["need_code"] for e in cancelled) == ["INTERNATIONAL_PROTECTION", "STRANDED_ASSISTED_RETURN"]
    assert all(e.data["actor_agency_id"] is None and e.data["reason_code"] == "CONSENT_WITHDRAWN"
               and e.key == case_id for e in cancelled)
    assert [e.type for e in referral_topic].count("referral.cancelled.v1") == 2, "the duplicate changed nothing"
    assert not any(e.data["referral_id"] == after["UNACCOMPANIED_CHILD"]["id"] and e.type != "referral.requested.v1"
                   for e in referral_topic)
    # Holds stay in place: a withdrawn consent never allows a removal.
    assert sorted(e.type for e in hold_topic) == ["protection_hold.placed.v1"] * 3
    assert sorted((h["need_code"], h["active"]) for h in holds) == [
        ("INTERNATIONAL_PROTECTION", True), ("TRAFFICKING_PRESUMED", True), ("UNACCOMPANIED_CHILD", True)]
    # The sender sees the status of each referral of a need not sensitive and that every hold stands; never a
    # sensitive referral (not even that one exists, but by its hold), nor why a referral was cancelled.
    assert sorted((r["need_code"] or "", r["status"], r["reason_code"]) for r in seen_by_inm) == [
        ("STRANDED_ASSISTED_RETURN", "cancelled", None), ("UNACCOMPANIED_CHILD", "requested", None)]
    assert sorted((h["need_code"] or "", h["active"]) for h in holds_seen_by_inm) == [
        ("", True), ("", True), ("UNACCOMPANIED_CHILD", True)]
