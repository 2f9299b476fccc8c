"""Rotating a service's key-encryption key with `enlace-ops rotate-data-key`, on a stopped service: afterwards
the service runs on the new key alone with nothing lost (intake: persons, documents, search, erasures;
notification: both signing secrets of a rotation in progress), the old key opens nothing, a rerun finishes
nothing more, and the wrong current key is refused with nothing changed."""

import asyncio
import base64

import pytest
from cryptography.exceptions import InvalidTag
from sqlmodel import select
from typer.testing import CliRunner

from enlace_ops.cli import app as ops_app
from enlace_platform.crypto import Keyring, SubjectKey, load_key_encryption_key
from intake.entrypoints.app import create_app as intake_app
from tests.support.harness import eventually, provision_topics, running_app, unique_prefix
from tests.support.intake_support import family_group, inm, inm_supervisor, intake_settings
from tests.support.notification_support import (
    Notification, SigningReceiver, deliveries, event, referral_data, subscribe,
)

PFPNNA = ("MX-PFPNNA", "child_protection")


async def rotate(database_env: dict[str, str], current_key_file, new_key_file, service: str):
    return await asyncio.to_thread(
        CliRunner().invoke, ops_app, ["rotate-data-key", service, "--new-key-file", str(new_key_file)],
        env={"COLUMNS": "250", "ENLACE_DATA_KEY": None, "ENLACE_DATA_KEY_FILE": str(current_key_file),
             **database_env})


async def test_intake_runs_on_the_new_key_alone_with_nothing_lost(tmp_path, dev_issuer_dir):
    old = intake_settings(tmp_path, dev_issuer_dir)
    new_key_file = tmp_path / "intake-new.key"
    env = {"INTAKE_DATABASE_URL": old.database_url}
    async with running_app(intake_app(old)) as client:
        case = (await client.post("/cases", headers=inm(dev_issuer_dir), json=family_group())).json()
        mother, companion = case["persons"][0], case["persons"][3]
        base = f"/cases/{case['id']}/persons"
        erased = await client.post(f"{base}/{companion['id']}/erasure", headers=inm_supervisor(dev_issuer_dir),
                                   json={"reason_code": "ERASURE_REQUEST"})
        assert erased.status_code == 200, erased.text
        before = (await client.get(f"{base}/{mother['id']}", headers=inm(dev_issuer_dir))).json()

    wrong = await rotate(env, tmp_path / "not-the-key.key", new_key_file, "intake")
    assert wrong.exit_code == 1 and "nothing was changed" in wrong.output, wrong.output
    result = await rotate(env, old.data_key_file, new_key_file, "intake")
    assert result.exit_code == 0, result.output
    assert "subject_keys: 4 row(s)" in result.output and "search_index: 4 row(s)" in result.output, result.output
    again = await rotate(env, old.data_key_file, new_key_file, "intake")  # e.g. after an interruption
    assert again.exit_code == 0 and "subject_keys: 0 row(s)" in again.output, again.output

    old_kek = load_key_encryption_key(None, old.data_key_file)
    new = old.model_copy(update={"data_key_file": str(new_key_file)})
    app = intake_app(new)
    async with running_app(app) as client:
        officer = inm(dev_issuer_dir)
        assert (await client.get(f"{base}/{mother['id']}", headers=officer)).json() == before
        for terms in ({"name": "pérez"}, {"document_number": "HN1234567"}):  # the index follows the new key
            found = (await client.post("/cases/search", headers=officer, json=terms)).json()
            assert [c["id"] for c in found] == [case["id"]], terms
        assert (await client.post("/cases/search", headers=officer, json={"name": "ramón"})).json() == []
        assert (await client.get(f"{base}/{companion['id']}", headers=officer)).status_code == 410
        async with app.state.runtime.sessions() as session:
            subjects = (await session.exec(select(SubjectKey.subject_id))).all()
            assert sorted(subjects) == sorted(p["id"] for p in case["persons"] if p["id"] != companion["id"])
            for subject in subjects:
                with pytest.raises(InvalidTag):  # the old key opens nothing
                    await Keyring(old_kek, namespace="intake").opener(session, subject)


@pytest.mark.kafka
async def test_notification_signs_with_both_secrets_of_a_rotation_under_the_new_key(
        kafka_bootstrap, dev_issuer_dir, tmp_path, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    notification = Notification(kafka_bootstrap, dev_issuer_dir, tmp_path, prefix, producer)
    receiver = SigningReceiver()
    new_key_file = tmp_path / "notification-new.key"
    async with receiver.running():
        async with notification.running(secret_rotation_overlap_s=3600) as client:
            sub = await subscribe(client, notification, PFPNNA, receiver, name="old")
            r = await client.post(f"/subscriptions/{sub['id']}/secret/rotation", headers=notification.headers(*PFPNNA))
            receiver.secrets["new"] = r.json()["secret"]
            settings = client.runtime.settings

        result = await rotate({"NOTIFICATION_DATABASE_URL": settings.database_url}, settings.data_key_file,
                              new_key_file, "notification")
        assert result.exit_code == 0 and "signing_secrets: 1 row(s)" in result.output, result.output

        new_key = base64.urlsafe_b64encode(load_key_encryption_key(None, str(new_key_file))).decode()
        async with notification.running(secret_rotation_overlap_s=3600, data_key=new_key) as client:
            marker = event("referral.requested.v1", referral_data())
            await notification.publish(marker)

            async def delivered():
                return [d for d in await deliveries(client, notification, PFPNNA, status="delivered")
                        if d["event_id"] == marker.id]

            await eventually(delivered, what="the delivery signed under the new key")
    [received] = receiver.received
    assert received.verified_by == {"old", "new"}, "both secrets of the overlap, opened with the new key"
