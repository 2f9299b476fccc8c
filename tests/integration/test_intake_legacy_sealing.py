"""A database written before sealing (revision 0001, plaintext persons) is migrated, sealed at start-up, and
nothing is lost: the API shows the same person, search finds them, and the files hold no clear value. No broker."""

import json

from sqlalchemy import text

from enlace_platform.db import create_tables, make_engine
from enlace_platform.migrations import _schema_at, initial_revision
from intake.bootstrap import MIGRATIONS
from intake.entrypoints.app import create_app
from tests.support.harness import running_app
from tests.support.intake_support import inm, intake_settings

CLEAR = ("Xiomara", "Quetzal", "QZ7788123", "2001-03-04", "threatened by a gang")


def _raw(path) -> bytes:
    data = b""
    for suffix in ("", "-wal"):
        try:
            data += open(f"{path}{suffix}", "rb").read()
        except FileNotFoundError:
            pass
    return data


async def test_rows_written_in_clear_are_sealed_at_start_up_and_nothing_is_lost(tmp_path, dev_issuer_dir):
    settings = intake_settings(tmp_path, dev_issuer_dir)
    path = settings.database_url.split("///", 1)[1]
    engine = make_engine(settings.database_url)
    try:
        await create_tables(engine, _schema_at(MIGRATIONS, initial_revision(MIGRATIONS)))  # made before migrations
        answers = {"fear_of_return": True, "kidnapped": None}
        needs = [{"code": "INTERNATIONAL_PROTECTION", "urgency": "high", "reasons": ["fears harm if returned"],
                  "rule_ids": ["IP-1"], "flags": []}]
        snapshot = {"given_names": "Xiomara", "family_names": "Quetzal", "sex": "female",
                    "date_of_birth": "2001-03-04", "estimated_age": None, "age_disputed": False,
                    "nationality": "GTM", "languages": ["es"],
                    "documents": [{"type": "passport", "number": "QZ7788123", "issuing_country": "GTM"}]}
        async with engine.begin() as conn:
            for sql, params in (
                ("INSERT INTO intake_case VALUES ('c1', 'MX-INM', 'MX', 'Tapachula', '2026-11-28 10:00:00', "
                 "'2026-11-28 10:00:00')", {}),
                ("INSERT INTO intake_person (id, case_id, position, given_names, family_names, search_name, sex, "
                 "date_of_birth, estimated_age, age_disputed, nationality, languages, version, updated_at) VALUES "
                 "('p1', 'c1', 0, 'Xiomara', 'Quetzal', 'xiomara quetzal', 'female', '2001-03-04', NULL, 0, 'GTM', "
                 "'[\"es\"]', 1, '2026-11-28 10:00:00')", {}),
                ("INSERT INTO intake_person_document VALUES ('d1', 'p1', 'c1', 0, 'passport', 'QZ7788123', 'GTM')", {}),
                ("INSERT INTO intake_person_version (id, person_id, version, snapshot, changed_fields, changed_by, "
                 "changed_by_agency_id, changed_at) VALUES ('v1', 'p1', 1, :snapshot, '[]', 'officer-1', 'MX-INM', "
                 "'2026-11-28 10:00:00')", {"snapshot": json.dumps(snapshot)}),
                ("INSERT INTO intake_screening (id, case_id, person_id, rules_version, answers, facts, needs, "
                 "age_band, consent_scope, screened_by, created_at) VALUES ('s1', 'c1', 'p1', 'v3', :answers, "
                 "'{}', :needs, '18-59', '[]', 'officer-1', '2026-11-28 10:05:00')",
                 {"answers": json.dumps(answers), "needs": json.dumps(needs)}),
                ("INSERT INTO intake_consent (id, case_id, person_id, recipient_agency_type, purpose, basis, status, "
                 "reason, recorded_by, recorded_by_agency_id, granted_at) VALUES ('k1', 'c1', 'p1', "
                 "'child_protection', 'referral', 'mandatory_override', 'granted', 'threatened by a gang', "
                 "'officer-1', 'MX-INM', '2026-11-28 10:06:00')", {}),
            ):
                await conn.execute(text(sql), params)
    finally:
        await engine.dispose()
    assert all(c.encode() in _raw(path) for c in CLEAR), "the legacy rows are in clear to begin with"

    app = create_app(settings)
    async with running_app(app) as client:
        officer = inm(dev_issuer_dir)
        person = (await client.get("/cases/c1/persons/p1", headers=officer)).json()
        assert person["given_names"] == "Xiomara" and person["date_of_birth"] == "2001-03-04"
        assert person["documents"] == [{"type": "passport", "number": "QZ7788123", "issuing_country": "GTM"}]
        [version] = (await client.get("/cases/c1/persons/p1/history", headers=officer)).json()
        assert version["snapshot"] == snapshot
        [screening] = (await client.get("/cases/c1/screenings", headers=officer)).json()
        assert screening["answers"] == answers and screening["needs"] == needs
        consents = (await client.get("/cases/c1/persons/p1/consents", headers=officer)).json()
        assert consents["items"][0]["reason"] == "threatened by a gang"
        for terms in ({"name": "quetzal"}, {"document_number": "qz7788123"}):
            assert [c["id"] for c in (await client.post("/cases/search", headers=officer, json=terms)).json()] == \
                ["c1"], terms
        raw = _raw(path)
    assert [c for c in CLEAR if c.encode() in raw] == [], "sealed in the file and its log"

    # A second start finds nothing left to seal and changes nothing.
    again = create_app(settings)
    async with running_app(again) as client:
        person_again = (await client.get("/cases/c1/persons/p1", headers=inm(dev_issuer_dir))).json()
    assert person_again == person
