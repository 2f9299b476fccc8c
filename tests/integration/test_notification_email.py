"""E-mail over SMTP (aiosmtplib) to a real SMTP server run in this process (aiosmtpd), on the real broker."""

import pytest

from notification.entrypoints.app import create_app
from tests.support.harness import eventually, provision_topics, running_app, unique_prefix
from tests.support.notification_support import (
    SigningReceiver, SmtpSink, consumers_assigned, event, notification_settings, publish, referral_data, supervisor,
)

pytestmark = pytest.mark.kafka

AGENCIES = {"MX-INM": "migration_authority", "MX-PFPNNA": "child_protection", "MX-COORD": "coordinator"}
ADDRESS = {"MX-INM": "guardia@inm.example", "MX-PFPNNA": "guardia@pfpnna.example", "MX-COORD": "turno@coord.example"}


@pytest.fixture
async def system(kafka_bootstrap, dev_issuer_dir, tmp_path, producer):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    smtp = SmtpSink()
    receiver = SigningReceiver()
    app = create_app(notification_settings(tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix,
                                           dev_issuer_dir=dev_issuer_dir, smtp_host="127.0.0.1", smtp_port=smtp.port,
                                           smtp_sender="avisos@enlace.example", delivery_max_attempts=100))
    async with receiver.running(), running_app(app) as client:
        await consumers_assigned(app.state.runtime)
        client.runtime = app.state.runtime
        for agency, agency_type in AGENCIES.items():
            r = await client.post("/subscriptions", headers=supervisor(dev_issuer_dir, agency, agency_type), json={
                "url": receiver.url, "event_types": ["referral.*"], "email": ADDRESS[agency]})
            assert r.status_code == 201, r.text
            receiver.secrets[agency] = r.json()["secret"]

        async def send(*envelopes):
            await publish(producer, prefix, *envelopes)

        try:
            yield client, smtp, send, receiver, (lambda agency: supervisor(dev_issuer_dir, agency, AGENCIES[agency]))
        finally:
            smtp.stop()


async def _emails_settled(client, headers):
    r = await client.get("/deliveries", headers=headers, params={"channel": "email"})
    items = r.json()["items"]
    return items if items and all(d["status"] == "delivered" for d in items) else None


async def test_a_new_inbound_referral_is_emailed_to_the_receiver_without_personal_data(system):
    client, smtp, send, receiver, headers = system
    smtp.start()
    routed = referral_data(need_code="SGBV_SURVIVOR", urgency="immediate")
    queued = referral_data(to_agency_id=None, need_code="TRAFFICKING_PRESUMED", urgency="high")
    await send(event("referral.requested.v1", routed), event("referral.requested.v1", queued))

    async def two_messages():
        return len(smtp.messages) == 2

    await eventually(two_messages, what="two e-mails")
    [to_receiver] = smtp.to(ADDRESS["MX-PFPNNA"])
    [to_coordinator] = smtp.to(ADDRESS["MX-COORD"])
    assert smtp.to(ADDRESS["MX-INM"]) == [], "the sender is not e-mailed"

    assert to_receiver["Subject"] == "[Enlace] New referral for your agency (urgency: immediate)"
    assert to_receiver["From"] == "avisos@enlace.example"
    body = to_receiver.get_content()
    assert routed["referral_id"] in body and f"/referrals/{routed['referral_id']}" in body
    coordinator_body = to_coordinator.get_content()
    assert "coordinator's queue" in coordinator_body and queued["referral_id"] in coordinator_body
    for message in (to_receiver, to_coordinator):
        text = message.as_string()
        for leak in ("SGBV", "SURVIVOR", "TRAFFICKING", routed["person_id"], queued["person_id"], routed["case_id"]):
            assert leak not in text
    delivered = await eventually(lambda: _emails_settled(client, headers("MX-PFPNNA")), what="the delivery log")
    assert [d["event_type"] for d in delivered] == ["referral.requested.v1"]
    assert to_receiver["Message-ID"].startswith(f"<{delivered[0]['id']}@")


async def test_deadline_escalations_reach_the_receiver_and_the_coordinator(system):
    client, smtp, send, receiver, headers = system
    smtp.start()
    data = referral_data(status="requested", reason_code="ACCEPT_DEADLINE")
    await send(event("referral.overdue.v1", data),
               event("referral.escalated.v1", {**data, "reason_code": "OVERDUE"}),
               event("referral.accepted.v1", {**data, "status": "accepted", "reason_code": None}))  # webhook only

    async def four_messages():
        return len(smtp.messages) >= 4

    await eventually(four_messages, what="four e-mails")
    subjects = sorted((rcpts[0], m["Subject"]) for rcpts, m in smtp.messages)
    assert subjects == sorted([
        (ADDRESS["MX-PFPNNA"], "[Enlace] Referral deadline missed (urgency: immediate)"),
        (ADDRESS["MX-COORD"], "[Enlace] Referral deadline missed (urgency: immediate)"),
        (ADDRESS["MX-PFPNNA"], "[Enlace] Referral escalated to the coordinator (urgency: immediate)"),
        (ADDRESS["MX-COORD"], "[Enlace] Referral escalated to the coordinator (urgency: immediate)"),
    ])
    assert "Reason: OVERDUE" in [m for r, m in smtp.messages if "escalated" in m["Subject"]][0].get_content()

    async def webhooks_done():
        # Three events x three parties, less the deadline's two to MX-INM: an enforcement agency hears of a
        # referral's status, never of its deadlines (enlace_platform.firewall).
        return len(receiver.received) == 7

    await eventually(webhooks_done, what="the webhooks")
    assert len(smtp.messages) == 4


async def test_e_mail_is_retried_until_the_smtp_server_answers_then_sent_once(system):
    client, smtp, send, receiver, headers = system
    await send(event("referral.requested.v1", referral_data()))

    async def failing():
        r = await client.get("/deliveries", headers=headers("MX-PFPNNA"), params={"channel": "email"})
        items = r.json()["items"]
        return items[0] if items and items[0]["attempts"] >= 2 else None

    down = await eventually(failing, what="failed SMTP attempts")
    assert down["status"] == "pending" and down["last_error"]
    smtp.start()
    [delivered] = await eventually(lambda: _emails_settled(client, headers("MX-PFPNNA")), what="the e-mail")
    assert delivered["id"] == down["id"]
    # A later e-mail arrives after it; the first was not sent twice.
    await send(event("referral.requested.v1", referral_data()))

    async def second():
        return len(smtp.messages) >= 2

    await eventually(second, what="the second e-mail")
    ids = [m["Message-ID"] for _, m in smtp.messages]
    assert len(ids) == len(set(ids)) == 2
