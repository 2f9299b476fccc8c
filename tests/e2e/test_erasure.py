"""Erasure on the real broker, checked the way an auditor with a disk image and the Kafka log would check it.

A family is registered and screened at intake while the referral service runs: the mother's screening
opens a referral and a protection hold, so erasing her is refused (409). Her travelling companion has
neither, and is erased. Then the intake database is read as raw bytes (on SQLite its file and write-ahead log,
on PostgreSQL its files after a checkpoint), and every topic of the test's prefix is read record by record: the
erased person's names and document number appear nowhere (nor, before erasure, did anyone's: the fields are
sealed), no record on the bus carries a name or a document number, person.erased.v1 was published, and the API
answers 410.
"""

import uuid

import pytest
from aiokafka import AIOKafkaConsumer

from enlace_platform.topics import INTAKE_CASE, all_topics
from intake.config import IntakeSettings
from intake.entrypoints.app import create_app as intake_app
from referral.config import ReferralSettings
from referral.entrypoints.app import create_app as referral_app
from tests.support.database_support import on_both_databases
from tests.support.harness import (
    TEST_DIRECTORY, envelopes, eventually, fast_settings, provision_topics, running_app, unique_prefix,
)
from tests.support.intake_support import inm, inm_supervisor

pytestmark = [pytest.mark.kafka, on_both_databases]


def _found(raw: bytes, secrets) -> list[str]:
    return [s for s in secrets if s.encode() in raw or s.upper().encode() in raw or s.lower().encode() in raw]


async def _read_whole_topics(bootstrap: str, topics: list[str]) -> dict[str, list]:
    """Every record of these topics, from the beginning to their current end (no consumer group)."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        while {tp.topic for tp in consumer.assignment()} != set(topics):
            await consumer.getmany(timeout_ms=100)  # lets the subscription settle; reading starts over below
        partitions = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: dict[str, list] = {t: [] for t in topics}
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for tp, recs in (await consumer.getmany(timeout_ms=500)).items():
                records[tp.topic].extend(recs)
        return records
    finally:
        await consumer.stop()


async def _topics_with_prefix(bootstrap: str, prefix: str) -> set[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        return {t for t in await consumer.topics() if t.startswith(prefix)}
    finally:
        await consumer.stop()


async def test_an_erased_person_is_nowhere_in_the_database_files_nor_on_the_bus(
        kafka_bootstrap, dev_issuer_dir, tmp_path, databases):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    common = dict(tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix, dev_issuer_dir=dev_issuer_dir,
                  databases=databases)
    intake_settings = fast_settings(IntakeSettings, **common)
    seed = str(TEST_DIRECTORY)
    officer, supervisor = inm(dev_issuer_dir), inm_supervisor(dev_issuer_dir)

    tag = uuid.uuid4().hex[:8]
    mother = {"given_names": f"Anacleta{tag}", "family_names": f"Villatoro{tag}", "sex": "female",
              "date_of_birth": "1988-05-17", "nationality": "GTM", "languages": ["es", "kjb"],
              "documents": [{"type": "passport", "number": f"PM{tag}77", "issuing_country": "GTM"}]}
    companion = {"given_names": f"Eusebio{tag}", "family_names": f"Quiñónez{tag}", "sex": "male",
                 "estimated_age": 41, "nationality": "HND", "languages": ["es"],
                 "documents": [{"type": "passport", "number": f"PC{tag}33", "issuing_country": "HND"},
                               {"type": "national_id", "number": f"NC-{tag}-9", "issuing_country": "HND"}]}
    everyone = [mother["given_names"], mother["family_names"], mother["documents"][0]["number"],
                companion["given_names"], companion["family_names"], *(d["number"] for d in companion["documents"])]
    erased_secrets = everyone[3:]

    async with running_app(intake_app(intake_settings)) as intake, \
            running_app(referral_app(fast_settings(ReferralSettings, directory_seed_path=seed, **common))):
        r = await intake.post("/cases", headers=officer, json={
            "place": "Tecún Umán", "encountered_at": "2026-11-28T09:00:00Z", "persons": [mother, companion],
            "relationships": [{"from_person": 1, "to_person": 0, "kind": "unrelated_adult"}]})
        assert r.status_code == 201, r.text
        case = r.json()
        case_id = case["id"]
        mother_id, companion_id = (p["id"] for p in case["persons"])
        r = await intake.post(f"/cases/{case_id}/persons/{mother_id}/consents", headers=officer,
                              json={"recipient_agency_type": "asylum_office", "purpose": "referral"})
        assert r.status_code == 201, r.text
        for person_id, answers in ((mother_id, {"fear_of_return": True, "wishes_to_seek_asylum": True}),
                                   (companion_id, {"fear_of_return": False})):
            r = await intake.post(f"/cases/{case_id}/screenings", headers=officer,
                                  json={"person_id": person_id, **answers})
            assert r.status_code == 201, r.text
        assert [n["code"] for n in r.json()["needs"]] == [], "the companion has no need: nothing will hold them"

        async def mother_held():
            view = (await intake.get(f"/cases/{case_id}", headers=officer)).json()
            # The asylum referral itself is not shown to the migration authority (the information barrier).
            return any(h["person_id"] == mother_id and h["status"] == "active" for h in view["holds"]) and \
                view["referrals"] == []
        await eventually(mother_held, what="the referral service's hold on the mother reaches intake")

        raw = await databases.disk_image(intake_settings.database_url)
        assert _found(raw, everyone) == [], "sealed before any erasure"

        erase = {"reason_code": "ERASURE_REQUEST"}
        refused = await intake.post(f"/cases/{case_id}/persons/{mother_id}/erasure", headers=supervisor, json=erase)
        assert refused.status_code == 409, refused.text
        assert refused.json()["holds"] and refused.json()["open_referrals"] == [], "the hold, never the referral"

        r = await intake.post(f"/cases/{case_id}/persons/{companion_id}/erasure", headers=supervisor, json=erase)
        assert r.status_code == 200, r.text
        assert r.json()["erased"] is True

        r = await intake.get(f"/cases/{case_id}/persons/{companion_id}", headers=officer)
        assert r.status_code == 410 and r.json()["type"].endswith("/erased")
        view = (await intake.get(f"/cases/{case_id}", headers=officer)).json()
        assert view["persons"][1] == {"id": companion_id, "erased": True, "erased_at": view["persons"][1]["erased_at"]}
        assert view["persons"][0]["given_names"] == mother["given_names"], "the mother is untouched"
        for terms in ({"name": companion["family_names"]}, {"document_number": companion["documents"][0]["number"]}):
            assert (await intake.post("/cases/search", headers=officer, json=terms)).json() == []

        async def erasure_published():
            records = (await _read_whole_topics(kafka_bootstrap, [f"{prefix}{INTAKE_CASE}"]))[f"{prefix}{INTAKE_CASE}"]
            return [e for e in envelopes(records) if e.type == "person.erased.v1"]
        [erased_event] = await eventually(erasure_published, what="person.erased.v1 on the bus")
        assert erased_event.data["person_id"] == companion_id and erased_event.data["reason_code"] == "ERASURE_REQUEST"

    # The services are stopped: what is left is files and the Kafka log.
    raw = await databases.disk_image(intake_settings.database_url)
    assert _found(raw, erased_secrets) == [], "the erased person is nowhere in the database file or its log"
    assert _found(raw, everyone) == [], "and nobody's personal data is in clear"

    names = await _topics_with_prefix(kafka_bootstrap, prefix)
    assert set(all_topics(prefix)) <= names, "every topic of the run, the dead-letter topics included"
    topics = await _read_whole_topics(kafka_bootstrap, sorted(names))
    assert sum(len(records) for records in topics.values()) > 0
    for topic, records in topics.items():
        for record in records:
            data = (record.key or b"") + (record.value or b"") + b"".join(v for _, v in record.headers or ())
            assert _found(data, everyone) == [], f"personal data in a record of {topic}"
    types = {e.type for e in envelopes(topics[f"{prefix}{INTAKE_CASE}"])}
    assert {"case.registered.v1", "case.screened.v1", "consent.changed.v1", "person.erased.v1"} <= types
