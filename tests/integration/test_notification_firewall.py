"""The information barrier in notification, on the real broker: an agency the directory marks as enforcement
hears, by webhook and e-mail, only of firewall.ENFORCEMENT_EVENT_TYPES, and its payloads carry no need code and
no receiving agency; the directory's mark decides, and a change of it (agency.changed.v1) applies without a
restart. Whatever a token claims plays no part."""

import json

import pytest

from enlace_platform.agencies import AGENCY_CHANGED, agency_changed_data
from enlace_platform.envelope import Envelope, to_kafka
from enlace_platform.firewall import ENFORCEMENT_EVENT_TYPES
from enlace_platform.topics import REFERRAL_AGENCY
from notification.entrypoints.app import create_app
from tests.support.harness import bearer, eventually, provision_topics, running_app, unique_prefix
from tests.support.notification_support import (
    SigningReceiver, SmtpSink, consumers_assigned, kafka_producer, notification_settings, publish, referral_data,
    sample_event,
)

pytestmark = pytest.mark.kafka

# What the referral service publishes about one trafficking referral that MX-INM sent to the anti-trafficking unit.
LIFE = ["referral.requested.v1", "protection_hold.placed.v1", "referral.received.v1", "referral.accepted.v1",
        "referral.note_added.v1", "referral.reassigned.v1", "referral.overdue.v1", "referral.escalated.v1",
        "referral.completed.v1", "protection_hold.released.v1"]
WITHHELD = {"referral.note_added.v1", "referral.reassigned.v1", "referral.overdue.v1", "referral.escalated.v1"}
EMAIL = {"MX-INM": "guardia@inm.example", "MX-FEVIMTRA": "turno@fevimtra.example", "MX-SSA": "turno@ssa.example",
         "MX-COORD": "mesa@coord.example"}


@pytest.fixture
async def producer(kafka_bootstrap):
    async with kafka_producer(kafka_bootstrap) as p:
        yield p


@pytest.fixture
async def system(kafka_bootstrap, dev_issuer_dir, tmp_path, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    smtp = SmtpSink()
    smtp.start()
    receivers = {agency: SigningReceiver() for agency in EMAIL}
    app = create_app(notification_settings(tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix,
                                           dev_issuer_dir=dev_issuer_dir, smtp_host="127.0.0.1",
                                           smtp_port=smtp.port))
    async with running_app(app) as client:
        await consumers_assigned(app.state.runtime)
        for agency, receiver in receivers.items():
            await receiver.up()
            # Every token claims to be a protection agency: the directory's word is what counts.
            headers = bearer(dev_issuer_dir, agency, "health", roles=["supervisor"])
            r = await client.post("/subscriptions", headers=headers, json={
                "url": receiver.url, "event_types": ["referral.*", "protection_hold.*"], "email": EMAIL[agency]})
            assert r.status_code == 201, r.text
            receiver.secrets[agency] = r.json()["secret"]

        async def send(*envelopes):
            await publish(producer, prefix, *envelopes)

        async def directory_says(agency_id: str, agency_type: str, *, enforcement: bool):
            data = agency_changed_data(agency_id=agency_id, name=agency_id, agency_type=agency_type,
                                       jurisdiction="MX", enforcement=enforcement, removed=False)
            key, value, headers = to_kafka(Envelope(type=AGENCY_CHANGED, source="/enlace/referral", key=agency_id,
                                                    subject=agency_id, data=data))
            await producer.send_and_wait(f"{prefix}{REFERRAL_AGENCY}", value=value, key=key, headers=headers)

        try:
            yield client, receivers, smtp, send, directory_says, app.state.runtime
        finally:
            for receiver in receivers.values():
                await receiver.down()
            smtp.stop()


def _types(receiver: SigningReceiver) -> list[str]:
    return sorted(json.loads(r.body)["type"] for r in receiver.received)


async def test_the_migration_authority_hears_only_status_and_holds_of_a_referral_it_sent(system):
    """The coordinator hears of the referral's events (a hold names no coordinator); the receiver of all."""
    client, receivers, smtp, send, _, _ = system
    referral = referral_data(need_code="TRAFFICKING_PRESUMED", to_agency_id="MX-FEVIMTRA",
                             to_agency_type="anti_trafficking")
    await send(*(sample_event(t, referral) for t in LIFE))

    async def everyone_heard():
        return len(receivers["MX-FEVIMTRA"].received) == len(LIFE) \
            and len(receivers["MX-COORD"].received) == len(LIFE) - 2 \
            and len(receivers["MX-INM"].received) == len(LIFE) - len(WITHHELD)

    await eventually(everyone_heard, what="the webhooks")
    assert _types(receivers["MX-INM"]) == sorted(t for t in LIFE if t not in WITHHELD)
    assert set(_types(receivers["MX-INM"])) <= ENFORCEMENT_EVENT_TYPES
    assert _types(receivers["MX-FEVIMTRA"]) == sorted(LIFE)  # a protection agency hears everything
    for got in receivers["MX-INM"].received:
        body = got.body.decode()
        assert "TRAFFICKING" not in body and "FEVIMTRA" not in body and "anti_trafficking" not in body, body
        assert referral["person_id"] not in body

    # E-mail: the receiver and the coordinator hear of the requested, reassigned, overdue and escalated
    # referral; the sender is never e-mailed, the migration authority least of all.
    async def emails():
        return len(smtp.messages) >= 6  # requested and reassigned to the receiver; overdue and escalated to both
    await eventually(emails, what="the e-mails")
    assert sorted(rcpt for rcpts, _ in smtp.messages for rcpt in rcpts) == sorted(
        [EMAIL["MX-FEVIMTRA"]] * 4 + [EMAIL["MX-COORD"]] * 2)


async def test_an_enforcement_receiver_gets_a_bare_e_mail(system):
    """The directory may send a referral to an agency it marks as enforcement (here the coordinator's queue is
    MX-INM's for the test): the e-mail then names the referral and the link, nothing of its urgency,
    deadline or routing."""
    client, receivers, smtp, send, directory_says, runtime = system
    await directory_says("MX-COORD", "coordinator", enforcement=True)

    async def marked():
        agency = runtime.agencies.get("MX-COORD")
        return agency is not None and agency.enforcement
    await eventually(marked, what="the directory's mark")
    referral = referral_data(need_code="TRAFFICKING_PRESUMED", to_agency_id=None, urgency="immediate")
    await send(sample_event("referral.requested.v1", referral), sample_event("referral.escalated.v1", referral))

    async def coordinator_mail():
        return [m for rcpts, m in smtp.messages if EMAIL["MX-COORD"] in rcpts]
    [mail] = await eventually(coordinator_mail, what="the coordinator's e-mail")
    content = mail.get_content()
    assert referral["referral_id"] in content
    assert "urgency" not in mail["Subject"].lower() and "Urgency" not in content and "Deadline" not in content
    assert "queue" not in content and "TRAFFICKING" not in content

    async def coordinator_webhooks():
        return receivers["MX-COORD"].received
    await eventually(coordinator_webhooks, what="the coordinator's webhook")
    assert _types(receivers["MX-COORD"]) == ["referral.requested.v1"], "no escalation for an enforcement agency"


async def test_the_directory_mark_applies_without_a_restart(system):
    """MX-SSA is a protection agency until the directory marks it as enforcement, and again once unmarked."""
    client, receivers, _, send, directory_says, runtime = system
    ssa = receivers["MX-SSA"]
    first = referral_data(to_agency_id="MX-PSI", to_agency_type="psychosocial", from_agency_id="MX-SSA")
    await send(sample_event("referral.note_added.v1", first))
    await eventually(lambda: _async(len(ssa.received) == 1), what="a note to a protection agency")

    await directory_says("MX-SSA", "health", enforcement=True)

    async def marked():
        agency = runtime.agencies.get("MX-SSA")
        return agency is not None and agency.enforcement
    await eventually(marked, what="the directory's mark")
    second = referral_data(to_agency_id="MX-PSI", to_agency_type="psychosocial", from_agency_id="MX-SSA")
    await send(sample_event("referral.note_added.v1", second), sample_event("referral.accepted.v1", second))
    await eventually(lambda: _async(len(ssa.received) == 2), what="the status change")
    assert _types(ssa) == ["referral.accepted.v1", "referral.note_added.v1"]
    assert second["referral_id"] not in [json.loads(r.body)["data"]["referral_id"] for r in ssa.received
                                         if json.loads(r.body)["type"] == "referral.note_added.v1"]

    await directory_says("MX-SSA", "health", enforcement=False)

    async def unmarked():
        return not runtime.agencies.get("MX-SSA").enforcement
    await eventually(unmarked, what="the mark removed")
    third = referral_data(to_agency_id="MX-PSI", to_agency_type="psychosocial", from_agency_id="MX-SSA")
    await send(sample_event("referral.note_added.v1", third))
    await eventually(lambda: _async(len(ssa.received) == 3), what="a note again")


async def _async(value):
    return value
