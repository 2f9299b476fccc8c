"""The referral closed loop on the real broker: a screening with two needs (as intake publishes it)
becomes two referrals; one is rejected and routed onward without releasing its protection hold, then
accepted and completed; the outcome travels back on referral.referral."""

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from enlace_platform.envelope import Envelope, to_kafka
from tests.support.harness import bearer, envelopes, eventually, provision_topics, read_topic, unique_prefix
from tests.support.referral_support import (
    ALL_TYPES, add_second_child_protection_service, consent_scope, referral_harness, referral_settings, token,
)

pytestmark = pytest.mark.kafka


async def test_screening_to_completed_outcome_with_onward_routing(kafka_bootstrap, tmp_path, dev_issuer_dir):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    settings = referral_settings(tmp_path, dev_issuer_dir, bootstrap=kafka_bootstrap, prefix=prefix)
    case_id, person_id, screening_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    screening = Envelope(type="case.screened.v1", source="/enlace/intake", key=case_id, subject=screening_id, data={
        "case_id": case_id, "screening_id": screening_id, "person_id": person_id,
        "registering_agency_id": "MX-INM", "jurisdiction": "MX", "rules_version": "2025-03", "age_band": "12-17",
        "languages": ["es"], "needs": [{"code": "UNACCOMPANIED_CHILD", "urgency": "immediate"},
                                       {"code": "INTERNATIONAL_PROTECTION", "urgency": "high"}],
        "consent_scope": consent_scope(*ALL_TYPES)})
    auth = lambda agency: token(dev_issuer_dir, agency)  # noqa: E731
    inm, coord, pfpnna, comar = auth("MX-INM"), auth("MX-COORD"), auth("MX-PFPNNA"), auth("MX-COMAR")
    dif = bearer(dev_issuer_dir, "MX-SNDIF", "child_protection", "MX")

    async with referral_harness(settings) as ref:
        # The coordinator adds a second child-protection agency and service to the directory.
        await add_second_child_protection_service(ref.client, coord)

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            key, value, headers = to_kafka(screening)
            await producer.send_and_wait(f"{prefix}intake.case", value=value, key=key, headers=headers)
        finally:
            await producer.stop()

        async def two_referrals():
            items = await ref.referrals(inm, case_id=case_id)
            return len(items) == 2 and {i["need_code"]: i for i in items}

        sent = await eventually(two_referrals, timeout=60, what="two referrals from the screening")
        child, asylum = sent["UNACCOMPANIED_CHILD"], sent["INTERNATIONAL_PROTECTION"]
        assert child["to_agency_id"] == "MX-PFPNNA" and child["is_lead"]
        assert asylum["to_agency_id"] == "MX-COMAR" and not asylum["is_lead"]

        r = await ref.act(child["id"], pfpnna, "reject", reason_code="NO_CAPACITY", reason_text="Sin plazas hoy")
        assert r.status_code == 200, r.text
        onward_id = r.json()["next_referral_id"]
        onward = (await ref.client.get(f"/referrals/{onward_id}", headers=dif)).json()
        assert onward["previous_referral_id"] == child["id"] and onward["to_service_id"] == "MX-SNDIF-1"
        assert [h["active"] for h in (await ref.client.get("/holds", headers=inm)).json()] == [True, True]

        for action, extra in (("accept", {}), ("start", {}),
                              ("complete", {"outcome_code": "CHILD_REUNIFIED_WITH_FAMILY"})):
            r = await ref.act(onward_id, dif, action, **extra)
            assert r.status_code == 200, r.text
        assert (await ref.act(asylum["id"], comar, "receive")).status_code == 200

        referral_topic = envelopes(await read_topic(kafka_bootstrap, f"{prefix}referral.referral", expected=7,
                                                    timeout=60))
        hold_topic = envelopes(await read_topic(kafka_bootstrap, f"{prefix}referral.protection_hold", expected=3,
                                                timeout=60))

    assert {e.key for e in referral_topic + hold_topic} == {case_id}
    timeline = [(e.type, e.data["referral_id"]) for e in referral_topic]
    assert timeline == [
        ("referral.requested.v1", child["id"]), ("referral.requested.v1", asylum["id"]),
        ("referral.rejected.v1", child["id"]), ("referral.requested.v1", onward_id),
        ("referral.accepted.v1", onward_id), ("referral.started.v1", onward_id),
        ("referral.completed.v1", onward_id), ("referral.received.v1", asylum["id"]),
    ], "all of a case's events share a partition, in commit order"
    [completed] = [e for e in referral_topic if e.type == "referral.completed.v1"]
    assert completed.subject == onward_id
    assert completed.data["outcome_code"] == "CHILD_REUNIFIED_WITH_FAMILY" and completed.data["status"] == "completed"
    assert completed.data["from_agency_id"] == "MX-INM" and completed.data["previous_referral_id"] == child["id"]
    [rejected] = [e for e in referral_topic if e.type == "referral.rejected.v1"]
    assert rejected.data["reason_code"] == "NO_CAPACITY" and "Sin plazas" not in str(rejected.data)

    placed = [e.data for e in hold_topic if e.type == "protection_hold.placed.v1"]
    released = [e.data for e in hold_topic if e.type == "protection_hold.released.v1"]
    assert sorted(p["need_code"] for p in placed) == ["INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD"]
    child_hold = next(p for p in placed if p["need_code"] == "UNACCOMPANIED_CHILD")
    assert child_hold["referral_id"] == child["id"], "placed by the first referral"
    # Released once, by the onward referral's final outcome, not by the rejection.
    assert released == [{**released[0], "hold_id": child_hold["hold_id"], "referral_id": onward_id,
                         "release_reason": "COMPLETED_FINAL", "outcome_code": "CHILD_REUNIFIED_WITH_FAMILY"}]
