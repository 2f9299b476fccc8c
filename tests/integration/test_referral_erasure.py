"""Crypto-shredding of the free text in the referral service: reasons and notes are sealed with the
person's key; person.erased.v1 destroys the key and the text (the history says text_erased), nothing
of it is left in the database (on SQLite and PostgreSQL), and the referral's lifecycle goes on by ids and codes.
The start-up sealing of a database at revision 0002 builds that revision by hand in SQLite: SQLite only."""

import uuid

import pytest
from sqlmodel import select

from enlace_platform.consumer import PoisonMessage
from enlace_platform.crypto import SubjectKey
from referral.adapters.orm import HistoryRow
from tests.support.database_support import on_both_databases
from tests.support.harness import database_bytes
from tests.support.referral_support import (  # noqa: F401 - ref and auth are fixtures
    auth, person_erased, ref, referral_harness, referral_settings, screened, token,
)

NOTE = "Nota-secreta-7f3a: vive con su tia en Tapachula"
REJECTION = "Rechazo-secreto-91bc: sin cupo para ella"
FAILURE = "Fallo-secreto-55de: no contesta al telefono"


async def _history(ref, referral_id: str, headers) -> list[dict]:
    r = await ref.client.get(f"/referrals/{referral_id}/history", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


@on_both_databases
async def test_free_text_is_sealed_then_shredded_and_the_lifecycle_goes_on(ref, auth, databases):
    event = screened("INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD", age_band="12-17")
    case_id, person_id = event.data["case_id"], event.data["person_id"]
    await ref.deliver(event)
    # Read as the coordinator, who sees the whole record; the sender (MX-INM) is behind the information barrier.
    comar, pfpnna, coord = auth("MX-COMAR"), auth("MX-PFPNNA"), auth("MX-COORD")
    sent = {r["need_code"]: r for r in await ref.referrals(coord, direction="jurisdiction")}
    asylum, child = sent["INTERNATIONAL_PROTECTION"], sent["UNACCOMPANIED_CHILD"]
    assert (await ref.act(asylum["id"], comar, "reject", reason_code="NO_CAPACITY",
                          reason_text=REJECTION)).status_code == 200
    r = await ref.client.post(f"/referrals/{child['id']}/notes", headers=pfpnna, json={"text": NOTE})
    assert r.status_code == 201 and r.json()["note"] == NOTE and r.json()["text_erased"] is False
    for action, extra in (("accept", {}), ("fail", {"reason_code": "PERSON_NOT_REACHABLE", "reason_text": FAILURE})):
        assert (await ref.act(child["id"], pfpnna, action, **extra)).status_code == 200

    # Readable through the API, sealed at rest.
    asylum_history = await _history(ref, asylum["id"], coord)
    assert [h["reason_text"] for h in asylum_history if h["action"] == "reject"] == [REJECTION]
    child_history = await _history(ref, child["id"], coord)
    assert [(h["note"], h["reason_text"]) for h in child_history if h["action"] in ("note", "fail")] == [
        (NOTE, None), (None, FAILURE)]
    async with ref.runtime.sessions() as session:
        stored = (await session.exec(select(HistoryRow).where(HistoryRow.note.is_not(None)))).all()
    assert [row.note.startswith("enc1:") for row in stored] == [True]
    sealed_values = [row.note for row in stored]
    raw = await databases.disk_image(ref.runtime.settings.database_url)
    for secret in (NOTE, REJECTION, FAILURE):
        assert secret.encode() not in raw

    # The person is erased in intake; the same event twice.
    await ref.deliver(person_erased(case_id, person_id))
    await ref.deliver(person_erased(case_id, person_id))
    async with ref.runtime.sessions() as session:
        assert await session.get(SubjectKey, person_id) is None
    for referral in (asylum, child):
        for h in await _history(ref, referral["id"], coord):
            had_text = h["action"] in ("reject", "note", "fail")
            assert h["text_erased"] is had_text, h
            assert h["note"] is None and h["reason_text"] is None
            assert h["reason_code"] == {"reject": "NO_CAPACITY", "fail": "PERSON_NOT_REACHABLE"}.get(h["action"],
                                                                                                   h["reason_code"])
    raw = await databases.backup(ref.runtime.settings.database_url)
    for secret in (NOTE, REJECTION, FAILURE, *sealed_values):
        assert secret.encode() not in raw

    # The referrals go on by ids and codes: the onward asylum referral is worked, with new free text.
    [onward] = [r for r in await ref.referrals(coord, case_id=case_id, direction="jurisdiction")
                if r["previous_referral_id"] == asylum["id"]]
    assert (await ref.act(onward["id"], coord, "reassign", to_service_id="MX-COMAR-1")).status_code == 200
    assert (await ref.act(onward["id"], comar, "accept")).status_code == 200
    r = await ref.client.post(f"/referrals/{onward['id']}/notes", headers=comar, json={"text": "Entrevista hecha"})
    assert r.status_code == 201
    assert (await ref.act(onward["id"], comar, "complete", outcome_code="ASYLUM_CLAIM_REGISTERED")).status_code == 200
    notes = [h for h in await _history(ref, onward["id"], coord) if h["action"] == "note"]
    assert [(h["note"], h["text_erased"]) for h in notes] == [("Entrevista hecha", False)]
    assert [h["text_erased"] for h in await _history(ref, asylum["id"], coord) if h["action"] == "reject"] == [True]
    assert len(await ref.events("referral.completed.v1")) == 1


@on_both_databases
async def test_an_erasure_of_a_person_without_referrals_or_text_changes_nothing(ref, auth):
    await ref.deliver(person_erased(str(uuid.uuid4()), str(uuid.uuid4()), "RETENTION_EXPIRED"))
    event = screened("MEDICAL_URGENT")
    await ref.deliver(event)
    await ref.deliver(person_erased(event.data["case_id"], event.data["person_id"]))
    [referral] = await ref.referrals(auth("MX-INM"))
    assert referral["status"] == "requested"
    # Whether text was erased is the protection side's to know: read as the coordinator.
    assert [h["text_erased"] for h in await _history(ref, referral["id"], auth("MX-COORD"))] == [False]


@pytest.mark.parametrize("field, value", [("reason_code", "FORGOTTEN"), ("person_id", None),
                                          ("erased_at", "yesterday")])
@on_both_databases
async def test_a_broken_erasure_event_is_poison(ref, field, value):
    event = person_erased(str(uuid.uuid4()), str(uuid.uuid4()))
    if value is None:
        del event.data[field]
    else:
        event.data[field] = value
    with pytest.raises(PoisonMessage):
        await ref.deliver(event)


@on_both_databases
async def test_free_text_written_before_sealing_is_sealed_at_start_up(tmp_path, dev_issuer_dir, databases):
    settings = referral_settings(tmp_path, dev_issuer_dir, databases=databases)
    headers = token(dev_issuer_dir, "MX-INM")
    async with referral_harness(settings) as ref:
        await ref.deliver(screened("MEDICAL_URGENT"))
        [referral] = await ref.referrals(headers)
        # A row as the service wrote it before migration 0003: clear text, not flagged as sealed.
        async with ref.runtime.sessions() as session:
            session.add(HistoryRow(referral_id=referral["id"], seq=2, action="note", from_status="requested",
                                   to_status="requested", actor_agency_id="MX-INM", note=NOTE, text_sealed=False))
            await session.commit()
        assert [h["note"] for h in await _history(ref, referral["id"], headers)] == [None, NOTE]
        assert NOTE.encode() in await databases.disk_image(settings.database_url)  # the probe does see clear text

    async with referral_harness(settings) as ref:  # start-up seals it
        async with ref.runtime.sessions() as session:
            row = (await session.exec(select(HistoryRow).where(HistoryRow.seq == 2))).one()
        assert row.text_sealed and row.note.startswith("enc1:")
        assert [h["note"] for h in await _history(ref, referral["id"], headers)] == [None, NOTE]
        assert NOTE.encode() not in await databases.backup(settings.database_url)


async def test_a_database_at_revision_0002_keeps_its_free_text_sealed_after_the_upgrade(tmp_path, dev_issuer_dir):
    """The real path: a database migrated to 0002 with clear text in its history; start-up migrates to head
    (0003 adds the flags) and seals the text; nothing is lost."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from enlace_platform.migrations import migration_config
    from referral.bootstrap import MIGRATIONS

    settings = referral_settings(tmp_path, dev_issuer_dir)
    path = settings.database_url.split("///", 1)[1]
    engine = create_engine(f"sqlite:///{path}")
    referral_id = str(uuid.uuid4())
    try:
        with engine.begin() as conn:
            command.upgrade(migration_config(MIGRATIONS, conn), "0002")
            conn.execute(text(
                "INSERT INTO referral_referral (id, case_id, person_id, need_code, urgency, status, version, is_lead,"
                " jurisdiction, age_band, languages, from_agency_id, to_agency_id, to_agency_type, to_service_id,"
                " coordinator_agency_id, routing, routing_reasons, created_at, updated_at) VALUES (:id, :case,"
                " :person, 'MEDICAL_URGENT', 'high', 'requested', 1, 1, 'MX', '18-59', '[\"es\"]', 'MX-INM',"
                " 'MX-SSA', 'health', 'MX-SSA-1', 'MX-COORD', :routing, '[]', '2026-01-01 00:00:00.000000',"
                " '2026-01-01 00:00:00.000000')"),
                {"id": referral_id, "case": str(uuid.uuid4()), "person": str(uuid.uuid4()),
                 "routing": '{"need_code": "MEDICAL_URGENT", "chosen_service_id": "MX-SSA-1", "chosen_agency_id":'
                            ' "MX-SSA", "chosen_because": "x", "escalation_reason": null, "excluded": []}'})
            for seq, action, column, value in ((1, "route", None, None), (2, "note", "note", NOTE),
                                               (3, "note", "note", REJECTION)):
                conn.execute(text(
                    "INSERT INTO referral_history (id, referral_id, seq, at, action, from_status, to_status,"
                    f" actor_agency_id{', ' + column if column else ''}) VALUES (:id, :ref, :seq,"
                    f" '2026-01-01 00:00:00.000000', :action, 'requested', 'requested', 'MX-INM'"
                    f"{', :value' if column else ''})"),
                    {"id": str(uuid.uuid4()), "ref": referral_id, "seq": seq, "action": action, "value": value})
    finally:
        engine.dispose()

    async with referral_harness(settings) as ref:
        async with ref.runtime.sessions() as session:
            rows = (await session.exec(select(HistoryRow).order_by(HistoryRow.seq))).all()
        assert [(r.text_sealed, r.text_erased) for r in rows] == [(True, False)] * 3
        assert rows[0].note is None and all(r.note.startswith("enc1:") for r in rows[1:])
        history = await _history(ref, referral_id, token(dev_issuer_dir, "MX-SSA"))
        assert [h["note"] for h in history] == [None, NOTE, REJECTION]
        raw = database_bytes(ref.runtime.settings.database_url)
        assert NOTE.encode() not in raw and REJECTION.encode() not in raw
