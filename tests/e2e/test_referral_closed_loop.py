"""The referral closed loop on the real broker: a screening with two needs (as intake publishes it)
becomes two referrals; one is rejected and routed onward without releasing its protection hold, then
accepted and completed; the outcome travels back on referral.referral."""

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from enlace_platform.envelope import Envelope, to_kafka
from tests.support.database_support import on_both_databases
from tests.support.harness import (
    bearer, envelopes, eventually, provision_topics, read_topic, unique_prefix,
)
from tests.support.referral_support import (
    ALL_TYPES, add_second_child_protection_service, consent_scope, person_erased, referral_harness,
    referral_settings, screened, token,
)

pytestmark = [pytest.mark.kafka, on_both_databases]


async def test_screening_to_completed_outcome_with_onward_routing(kafka_bootstrap, tmp_path, dev_issuer_dir,
                                                                 databases):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    settings = referral_settings(tmp_path, dev_issuer_dir, bootstrap=kafka_bootstrap, prefix=prefix,
                                 databases=databases)
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

        # The routing is protection work: read as the coordinator (the sender, MX-INM, is behind the barrier).
        async def two_referrals():
            items = await ref.referrals(coord, case_id=case_id, direction="jurisdiction")
            return len(items) == 2 and {i["need_code"]: i for i in items}

        sent = await eventually(two_referrals, timeout=60, what="two referrals from the screening")
        child, asylum = sent["UNACCOMPANIED_CHILD"], sent["INTERNATIONAL_PROTECTION"]
        assert child["to_agency_id"] == "MX-PFPNNA" and child["is_lead"]
        assert asylum["to_agency_id"] == "MX-COMAR" and not asylum["is_lead"]
        # The sender is not shown the asylum referral at all (a sensitive need), only that a hold stands on the
        # person, its need and receiver withheld.
        seen_by_inm = {i["id"]: i for i in await ref.referrals(inm, case_id=case_id)}
        assert seen_by_inm.keys() == {child["id"]}
        assert seen_by_inm[child["id"]]["need_code"] == "UNACCOMPANIED_CHILD"
        assert (await ref.client.get(f"/referrals/{asylum['id']}", headers=inm)).status_code == 404
        inm_holds = {h["referral_id"]: h for h in (await ref.client.get("/holds", headers=inm)).json()}
        assert inm_holds[asylum["id"]]["active"] and inm_holds[asylum["id"]]["open_referral_id"] == asylum["id"]
        assert (inm_holds[asylum["id"]]["need_code"], inm_holds[asylum["id"]]["to_agency_id"]) == (None, None)

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


async def test_person_erased_on_the_broker_shreds_the_free_text(kafka_bootstrap, tmp_path, dev_issuer_dir, databases):
    """person.erased.v1 through the real consumer runner: the handler's own commit (before the WAL purge)
    and the inbox row; the notes' plaintext is then nowhere in the database files."""
    from enlace_platform.inbox import ProcessedMessage

    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    settings = referral_settings(tmp_path, dev_issuer_dir, bootstrap=kafka_bootstrap, prefix=prefix,
                                 databases=databases)
    secret_note, secret_reason = "Nota-e2e-3c1f: su hermano la busca", "Motivo-e2e-8d2a: no la aceptan"
    coord, comar, pfpnna = (token(dev_issuer_dir, a) for a in ("MX-COORD", "MX-COMAR", "MX-PFPNNA"))

    async with referral_harness(settings) as ref:
        screening = screened("UNACCOMPANIED_CHILD", "INTERNATIONAL_PROTECTION", age_band="12-17",
                             registering_agency_id="MX-INM")
        case_id, person_id = screening.data["case_id"], screening.data["person_id"]
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            async def send(envelope):
                key, value, headers = to_kafka(envelope)
                await producer.send_and_wait(f"{prefix}intake.case", value=value, key=key, headers=headers)

            await send(screening)

            # Read as the coordinator, who sees the notes and reasons (the sender, MX-INM, never does).
            async def both():
                items = {i["need_code"]: i for i in await ref.referrals(coord, case_id=case_id,
                                                                       direction="jurisdiction")}
                return len(items) == 2 and items

            sent = await eventually(both, timeout=60, what="the two referrals")
            child, asylum = sent["UNACCOMPANIED_CHILD"], sent["INTERNATIONAL_PROTECTION"]
            r = await ref.client.post(f"/referrals/{child['id']}/notes", headers=pfpnna, json={"text": secret_note})
            assert r.status_code == 201
            r = await ref.act(asylum["id"], comar, "reject", reason_code="OUT_OF_MANDATE", reason_text=secret_reason)
            assert r.status_code == 200
            erasure = person_erased(case_id, person_id)
            await send(erasure)
        finally:
            await producer.stop()

        async def note_erased():
            history = (await ref.client.get(f"/referrals/{child['id']}/history", headers=coord)).json()
            return [h for h in history if h["action"] == "note" and h["text_erased"]]

        [note] = await eventually(note_erased, timeout=60, what="the erasure handled")
        assert note["note"] is None
        [rejection] = [h for h in (await ref.client.get(f"/referrals/{asylum['id']}/history", headers=coord)).json()
                       if h["action"] == "reject"]
        assert rejection["reason_text"] is None and rejection["text_erased"]
        assert rejection["reason_code"] == "OUT_OF_MANDATE"
        async def in_inbox():
            async with ref.runtime.sessions() as session:
                return await session.get(ProcessedMessage, ("referral.routing", erasure.id)) is not None

        await eventually(in_inbox, timeout=60, what="the erasure recorded as processed")
        raw = await databases.disk_image(settings.database_url)
        assert secret_note.encode() not in raw and secret_reason.encode() not in raw
        # The child's referral goes on.
        assert (await ref.act(child["id"], pfpnna, "accept")).status_code == 200
