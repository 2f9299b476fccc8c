"""The information barrier in notification, on the real broker: an agency the directory marks as enforcement
hears, by webhook and e-mail, only of firewall.ENFORCEMENT_EVENT_TYPES, of a referral of a sensitive need only
its holds, and its payloads carry no need code and no receiving agency; the directory's mark decides, and a
change of it (agency.changed.v1) applies without a restart. Whatever a token claims plays no part."""

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

# What the referral service publishes about one referral that MX-INM sent (and a hold-bearing need's holds).
LIFE = ["referral.requested.v1", "protection_hold.placed.v1", "referral.received.v1", "referral.accepted.v1",
        "referral.note_added.v1", "referral.reassigned.v1", "referral.overdue.v1", "referral.escalated.v1",
        "referral.completed.v1", "protection_hold.released.v1"]
WITHHELD = {"referral.note_added.v1", "referral.reassigned.v1", "referral.overdue.v1", "referral.escalated.v1"}
EMAIL = {"MX-INM": "guardia@inm.example", "MX-FEVIMTRA": "turno@fevimtra.example", "MX-SSA": "turno@ssa.example",
         "MX-COORD": "mesa@coord.example", "MX-PFPNNA": "guardia@pfpnna.example"}


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


async def _only_receiver_and_coordinator_emailed(smtp, receiver: str) -> None:
    """The referral's requested and reassigned mails go to its receiver, overdue and escalated to it and the
    coordinator; nobody else, the sender least of all, is e-mailed."""
    async def emails():
        return len(smtp.messages) >= 6
    await eventually(emails, what="the e-mails")
    assert sorted(rcpt for rcpts, _ in smtp.messages for rcpt in rcpts) == sorted(
        [EMAIL[receiver]] * 4 + [EMAIL["MX-COORD"]] * 2)


async def test_the_migration_authority_hears_only_status_and_holds_of_a_referral_it_sent(system):
    """A need not sensitive (a child's): the coordinator hears of the referral's events (a hold names no
    coordinator); the receiver of all; MX-INM of its status changes and holds."""
    client, receivers, smtp, send, _, _ = system
    referral = referral_data(need_code="UNACCOMPANIED_CHILD", to_agency_id="MX-PFPNNA",
                             to_agency_type="child_protection")
    await send(*(sample_event(t, referral) for t in LIFE))

    async def everyone_heard():
        return len(receivers["MX-PFPNNA"].received) == len(LIFE) \
            and len(receivers["MX-COORD"].received) == len(LIFE) - 2 \
            and len(receivers["MX-INM"].received) == len(LIFE) - len(WITHHELD)

    await eventually(everyone_heard, what="the webhooks")
    assert _types(receivers["MX-INM"]) == sorted(t for t in LIFE if t not in WITHHELD)
    assert set(_types(receivers["MX-INM"])) <= ENFORCEMENT_EVENT_TYPES
    assert _types(receivers["MX-PFPNNA"]) == sorted(LIFE)  # a protection agency hears everything
    for got in receivers["MX-INM"].received:
        assert "MX-PFPNNA" not in got.body.decode() and referral["person_id"] not in got.body.decode()

    await _only_receiver_and_coordinator_emailed(smtp, "MX-PFPNNA")


async def test_the_migration_authority_hears_only_the_holds_of_a_sensitive_referral_it_sent(system):
    """A trafficking referral MX-INM sent is not shown to it at all: of its events it hears only the holds,
    whose payloads name neither the need nor the receiver."""
    client, receivers, smtp, send, _, _ = system
    referral = referral_data(need_code="TRAFFICKING_PRESUMED", to_agency_id="MX-FEVIMTRA",
                             to_agency_type="anti_trafficking")
    await send(*(sample_event(t, referral) for t in LIFE))
    holds = sorted(t for t in LIFE if t.startswith("protection_hold."))

    async def everyone_heard():
        return len(receivers["MX-FEVIMTRA"].received) == len(LIFE) \
            and len(receivers["MX-COORD"].received) == len(LIFE) - 2 \
            and len(receivers["MX-INM"].received) == len(holds)

    await eventually(everyone_heard, what="the webhooks")
    assert _types(receivers["MX-INM"]) == holds, "no referral.* event of a sensitive need"
    assert _types(receivers["MX-FEVIMTRA"]) == sorted(LIFE)  # a protection agency hears everything
    for got in receivers["MX-INM"].received:
        body = got.body.decode()
        assert "TRAFFICKING" not in body and "FEVIMTRA" not in body and "anti_trafficking" not in body, body
        assert referral["person_id"] not in body

    # E-mail: the receiver and the coordinator hear of the requested, reassigned, overdue and escalated
    # referral; the sender is never e-mailed, the migration authority least of all.
    await _only_receiver_and_coordinator_emailed(smtp, "MX-FEVIMTRA")


async def test_an_enforcement_marked_receiver_hears_all_its_part_needs(system):
    """The directory may mark the agency that receives a referral (here the coordinator, whose queue it is) as
    enforcement: as in the API (firewall.viewer_in), the receiver and the coordinator do the protection work,
    so they hear every event with the full e-mail, a sensitive need's included."""
    client, receivers, smtp, send, directory_says, runtime = system
    await directory_says("MX-COORD", "coordinator", enforcement=True)

    async def marked():
        agency = runtime.agencies.get("MX-COORD")
        return agency is not None and agency.enforcement
    await eventually(marked, what="the directory's mark")
    referral = referral_data(need_code="TRAFFICKING_PRESUMED", to_agency_id=None, urgency="immediate")
    await send(sample_event("referral.requested.v1", referral), sample_event("referral.escalated.v1", referral))

    async def coordinator_mails():
        mails = [m for rcpts, m in smtp.messages if EMAIL["MX-COORD"] in rcpts]
        return len(mails) == 2 and mails
    mails = await eventually(coordinator_mails, what="the coordinator's two e-mails")
    assert all("urgency: immediate" in m["Subject"] for m in mails)

    async def coordinator_webhooks():
        return len(receivers["MX-COORD"].received) == 2
    await eventually(coordinator_webhooks, what="the coordinator's webhooks")
    assert sorted(_types(receivers["MX-COORD"])) == ["referral.escalated.v1", "referral.requested.v1"]


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
