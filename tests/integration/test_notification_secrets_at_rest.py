"""Webhook signing secrets sealed at rest: a copy of the notification database (file and write-ahead log)
holds no secret it could forge webhooks with, while receivers keep verifying every delivery; a sealed value
moved elsewhere does not open; rows written in clear before sealing are sealed at start-up; a service
started with another key-encryption key fails the old subscriptions' deliveries visibly, never unsigned."""

import base64
import os
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import update

from enlace_platform.crypto import PREFIX, CorruptValue
from notification.adapters.orm import SubscriptionRow
from notification.adapters.signing_secrets import SigningSecrets
from notification.domain.webhooks import new_secret
from notification.entrypoints.app import create_app
from notification.service_layer.dispatcher import UNSIGNABLE
from tests.support.harness import database_bytes, eventually, free_port, provision_topics, running_app, unique_prefix
from tests.support.notification_support import (
    Notification, SigningReceiver, deliveries, event, notification_settings, referral_data, stored_secrets,
    subscribe, supervisor, the_delivery,
)

PFPNNA = ("MX-PFPNNA", "child_protection")
INM = ("MX-INM", "migration_authority")


@pytest.fixture
async def notification(kafka_bootstrap, dev_issuer_dir, tmp_path, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    return Notification(kafka_bootstrap, dev_issuer_dir, tmp_path, prefix, producer)


def forms(secret: str) -> list[bytes]:
    """Every form a secret could be found in: the whsec_ string, its base64 part, and its 32 raw bytes."""
    encoded = secret.removeprefix("whsec_")
    return [secret.encode(), encoded.encode(), base64.b64decode(encoded)]


def found_in(raw: bytes, secrets: dict[str, str]) -> list[str]:
    return [name for name, secret in secrets.items() if any(form in raw for form in forms(secret))]


async def sealed_columns(runtime, subscription_id: str) -> tuple[str, str | None]:
    async with runtime.sessions() as session:
        row = await session.get(SubscriptionRow, subscription_id)
    return row.secret, row.previous_secret


async def rotate(client, notification, agency, subscription_id: str, **headers) -> dict:
    r = await client.post(f"/subscriptions/{subscription_id}/secret/rotation",
                          headers={**notification.headers(*agency), **headers})
    assert r.status_code == 200, r.text
    return r.json()


async def delivered_to(client, notification, subscription_id: str, count: int) -> bool:
    found = await deliveries(client, notification, PFPNNA, status="delivered", subscription_id=subscription_id)
    return len(found) == count


@pytest.mark.kafka
async def test_the_database_file_and_its_log_hold_no_secret_while_every_delivery_verifies(notification, capsys, spans):
    pfpnna_receiver, inm_receiver = SigningReceiver(), SigningReceiver()
    given: dict[str, str] = {}  # every secret the API handed out, by name
    async with pfpnna_receiver.running(), inm_receiver.running(), \
            notification.running(secret_rotation_overlap_s=3600, trace_sql=True) as client:
        # PFPNNA: created with an Idempotency-Key (a retry returns the same secret), then rotated once.
        body = {"url": pfpnna_receiver.url, "event_types": ["referral.*"]}
        created = [await client.post("/subscriptions", json=body,
                                     headers={**notification.headers(*PFPNNA), "Idempotency-Key": "create-1"})
                   for _ in range(2)]
        assert [r.status_code for r in created] == [201, 201] and created[0].json() == created[1].json()
        pfpnna = created[0].json()
        given["pfpnna-1"] = pfpnna_receiver.secrets["pfpnna-1"] = pfpnna["secret"]
        rotated = [await rotate(client, notification, PFPNNA, pfpnna["id"], **{"Idempotency-Key": "rotate-1"})
                   for _ in range(2)]
        assert rotated[0] == rotated[1], "a retried rotation shows the same new secret and rotates once"
        given["pfpnna-2"] = pfpnna_receiver.secrets["pfpnna-2"] = rotated[0]["secret"]
        # INM: rotated twice, so its first secret is dropped and the second and third sign.
        inm = await subscribe(client, notification, INM, inm_receiver, name="inm-1")
        given["inm-1"] = inm["secret"]
        for name in ("inm-2", "inm-3"):
            given[name] = inm_receiver.secrets[name] = (await rotate(client, notification, INM, inm["id"]))["secret"]
        assert len(set(given.values())) == len(given) == 5

        await notification.publish(event("referral.requested.v1", referral_data()))  # from INM to PFPNNA
        for agency in (PFPNNA, INM):
            await the_delivery(client, notification, agency, lambda d: d["status"] == "delivered", "the delivery")

        assert await stored_secrets(client.runtime, pfpnna["id"]) == (given["pfpnna-2"], given["pfpnna-1"])
        assert await stored_secrets(client.runtime, inm["id"]) == (given["inm-3"], given["inm-2"])
        assert found_in(database_bytes(client.runtime.settings.database_url), given) == [], "while running"
        database_url = client.runtime.settings.database_url

    [to_pfpnna], [to_inm] = pfpnna_receiver.received, inm_receiver.received
    assert to_pfpnna.verified_by == {"pfpnna-1", "pfpnna-2"}, "signed with both during the overlap"
    assert to_inm.verified_by == {"inm-2", "inm-3"}
    assert found_in(database_bytes(database_url), given) == [], "after a clean stop"
    logged = capsys.readouterr().out
    assert [name for name, secret in given.items() if secret in logged or secret[6:] in logged] == []
    traced = [f"{s.name} {s.attributes} {[e.attributes for e in s.events]}" for s in spans.get_finished_spans()]
    assert any("db.statement" in (s.attributes or {}) for s in spans.get_finished_spans()), "SQL spans checked too"
    assert [name for name, secret in given.items() if any(secret[6:] in t for t in traced)] == []


async def test_a_sealed_secret_copied_into_another_row_or_column_does_not_open(tmp_path, dev_issuer_dir):
    # No broker: the API and the sealed rows only.
    settings = notification_settings(tmp_path=tmp_path, bootstrap=f"127.0.0.1:{free_port()}", prefix="copy.",
                                     dev_issuer_dir=dev_issuer_dir, secret_rotation_overlap_s=3600)
    headers = supervisor(dev_issuer_dir, *PFPNNA)
    app = create_app(settings)
    async with running_app(app) as client:
        runtime = app.state.runtime
        subs = []
        for _ in range(2):
            r = await client.post("/subscriptions", headers=headers,
                                  json={"url": "http://127.0.0.1:9/hooks", "event_types": ["referral.*"]})
            subs.append(r.json())
        first, second = subs
        assert (await client.post(f"/subscriptions/{first['id']}/secret/rotation", headers=headers)).status_code == 200
        first_current, first_previous = await sealed_columns(runtime, first["id"])
        secrets = SigningSecrets.of(runtime)

        async with runtime.sessions() as session:  # the first's current secret pasted into the second's row
            await session.exec(update(SubscriptionRow).where(SubscriptionRow.id == second["id"])
                               .values(secret=first_current))
            # ...and the first's previous secret pasted over its current one
            await session.exec(update(SubscriptionRow).where(SubscriptionRow.id == first["id"])
                               .values(secret=first_previous))
            await session.commit()
            moved_row = await session.get(SubscriptionRow, second["id"])
            swapped_row = await session.get(SubscriptionRow, first["id"])
        with pytest.raises(CorruptValue):
            secrets.current(moved_row)
        with pytest.raises(CorruptValue):
            secrets.current(swapped_row)
        with pytest.raises(CorruptValue):
            secrets.for_signing(swapped_row, datetime.now(UTC))
        # The values themselves are intact: each opens where it was sealed.
        swapped_row.secret = first_current
        assert secrets.for_signing(swapped_row, datetime.now(UTC)) == [
            secrets.current(swapped_row), first["secret"]]


@pytest.mark.kafka
async def test_secrets_written_in_clear_are_sealed_at_start_up_once_and_still_sign(notification, capsys):
    receiver, broken_receiver = SigningReceiver(), SigningReceiver()
    legacy = {"current": new_secret(), "previous": new_secret()}
    receiver.secrets.update(legacy)
    async with receiver.running(), broken_receiver.running():
        async with notification.running() as client:
            sub = await subscribe(client, notification, PFPNNA, receiver, name="replaced")
            del receiver.secrets["replaced"]  # replaced by the legacy ones below
            broken = await subscribe(client, notification, PFPNNA, broken_receiver, name="broken")
            database_url = client.runtime.settings.database_url
            async with client.runtime.sessions() as session:  # as the version before sealing wrote them
                await session.exec(update(SubscriptionRow).where(SubscriptionRow.id == sub["id"]).values(
                    secret=legacy["current"], previous_secret=legacy["previous"],
                    previous_secret_expires_at=datetime.now(UTC) + timedelta(hours=1)))
                await session.exec(update(SubscriptionRow).where(SubscriptionRow.id == broken["id"])
                                   .values(secret="not-a-webhook-secret-7f3a"))
                await session.commit()
        assert found_in(database_bytes(database_url), legacy) == list(legacy), "the test starts from clear rows"
        capsys.readouterr()

        async with notification.running() as client:
            assert await stored_secrets(client.runtime, sub["id"]) == (legacy["current"], legacy["previous"])
            broken_columns = await sealed_columns(client.runtime, broken["id"])
            assert broken_columns[0].startswith(PREFIX), "an odd value is sealed as it was, not left in clear"
            assert found_in(database_bytes(database_url), legacy) == [], "the clear values left the file and its log"
            assert b"not-a-webhook-secret-7f3a" not in database_bytes(database_url)
            sealed_once = {s: await sealed_columns(client.runtime, s) for s in (sub["id"], broken["id"])}

            await notification.publish(event("referral.requested.v1", referral_data()))
            await the_delivery(client, notification, PFPNNA,
                               lambda d: d["subscription_id"] == sub["id"] and d["status"] == "delivered",
                               "the delivery signed with the legacy secrets")
            failing = await the_delivery(client, notification, PFPNNA,
                                         lambda d: d["subscription_id"] == broken["id"] and d["attempts"] >= 2,
                                         "failed attempts of the subscription whose secret is not one")
        assert (failing["status"], failing["last_status_code"], failing["last_error"]) == ("pending", None, UNSIGNABLE)
        [got] = receiver.received
        assert got.verified_by == {"current", "previous"}
        assert broken_receiver.received == [], "nothing is sent that is not properly signed"
        logged = capsys.readouterr().out
        assert "sealed the signing secrets of 2 subscription(s)" in logged
        assert f"subscription {broken['id']}: secret was neither sealed nor a whsec_ signing secret" in logged
        assert "not-a-webhook-secret-7f3a" not in logged and not [s for s in legacy.values() if s in logged]

        async with notification.running() as client:  # a second start-up finds nothing to seal
            assert {s: await sealed_columns(client.runtime, s) for s in sealed_once} == sealed_once
        assert "sealed the signing secrets" not in capsys.readouterr().out


@pytest.mark.kafka
async def test_another_key_encryption_key_fails_the_old_subscriptions_visibly_and_never_sends_unsigned(
        notification, capsys):
    old_receiver, new_receiver = SigningReceiver(), SigningReceiver()
    async with old_receiver.running(), new_receiver.running():
        async with notification.running() as client:
            old = await subscribe(client, notification, PFPNNA, old_receiver, name="old")
        capsys.readouterr()

        other_key = dict(data_key=base64.urlsafe_b64encode(os.urandom(32)).decode(), delivery_max_attempts=10_000)
        async with notification.running(**other_key) as client:
            new = await subscribe(client, notification, PFPNNA, new_receiver, name="new")
            await notification.publish(event("referral.requested.v1", referral_data()))
            failing = await the_delivery(client, notification, PFPNNA,
                                         lambda d: d["subscription_id"] == old["id"] and d["attempts"] >= 3,
                                         "failed attempts of the subscription sealed under the old key")
            assert (failing["status"], failing["last_status_code"], failing["last_error"]) == \
                ("pending", None, UNSIGNABLE)
            assert old_receiver.received == [], "no unsigned and no wrongly-signed webhook"
            # The dispatcher goes on: the subscription made under this key gets this event and the next one.
            await notification.publish(event("referral.accepted.v1", referral_data(status="accepted")))

            await eventually(lambda: delivered_to(client, notification, new["id"], 2),
                             what="the new subscription's two deliveries")
            assert (await client.get("/readyz")).status_code == 200

            # The agency rotates: the unreadable secret is dropped (no overlap), the new one signs at once.
            before = datetime.now(UTC)
            rotated = await rotate(client, notification, PFPNNA, old["id"])
            assert datetime.fromisoformat(rotated["previous_secret_expires_at"]) <= datetime.now(UTC)
            assert datetime.fromisoformat(rotated["previous_secret_expires_at"]) >= before - timedelta(seconds=1)
            old_receiver.secrets["rotated"] = rotated["secret"]
            await eventually(lambda: delivered_to(client, notification, old["id"], 2),
                             what="the old subscription's two deliveries after the rotation")
        logged = capsys.readouterr().out

    assert [r.verified_by for r in old_receiver.received] == [{"rotated"}] * 2
    assert all(len(r.headers["webhook-signature"].split(" ")) == 1 for r in old_receiver.received)
    assert all(r.verified_by == {"new"} for r in new_receiver.received) and len(new_receiver.received) == 2
    assert f"secret of {old['id']} does not open with its key; not sent" in logged
    assert old["secret"] not in logged and rotated["secret"] not in logged
