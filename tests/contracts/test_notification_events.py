"""Notification's side of the contracts: it consumes every referral.* and protection_hold.* type of the
catalog, and the webhook bodies and e-mails its real handler writes follow contracts/webhooks and carry no
personal data. Notification publishes no events (its outbox stays empty)."""

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from sqlmodel import select

from enlace_platform.contracts import FORMATS, published_contracts
from enlace_platform.db import create_tables, make_engine, make_session_factory
from enlace_platform.firewall import ENFORCEMENT_EVENT_TYPES
from enlace_platform.inbox import ProcessedMessage
from enlace_platform.outbox import OutboxMessage
from notification.adapters import orm
from notification.config import NotificationSettings
from notification.domain.events import WEBHOOK_EVENT_TYPES
from notification.service_layer.handlers import make_referral_event_handler
from tests.support.harness import directory_for_tests
from tests.support.notification_support import referral_data, sample_event

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_SCHEMA = json.loads((REPO / "contracts/webhooks/webhook-payload.v1.schema.json").read_text(encoding="utf-8"))
PARTIES = ("MX-INM", "MX-PFPNNA", "MX-COORD")


def test_every_consumed_type_has_a_published_schema():
    assert set(WEBHOOK_EVENT_TYPES) <= published_contracts().event_types


def test_the_webhook_schema_is_valid_and_strict():
    Draft202012Validator.check_schema(WEBHOOK_SCHEMA)
    assert WEBHOOK_SCHEMA["additionalProperties"] is False
    assert WEBHOOK_SCHEMA["properties"]["data"]["additionalProperties"] is False


@pytest.fixture
async def written(tmp_path):
    """Every consumed type, through the real handler, for subscriptions of every party (webhook and e-mail)."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'notification.db'}")
    await create_tables(engine, [OutboxMessage.__table__, ProcessedMessage.__table__, *orm.TABLES])
    sessions = make_session_factory(engine, "contractnotification")
    settings = NotificationSettings(database_url="sqlite+aiosqlite:///:memory:", smtp_host="127.0.0.1")
    handler = make_referral_event_handler(settings, directory_for_tests())
    try:
        async with sessions() as session:
            for agency in PARTIES:
                session.add(orm.SubscriptionRow(agency_id=agency, url=f"https://{agency.lower()}.example/hooks",
                                                secret="whsec_dGVzdA==",
                                                event_types=["referral.*", "protection_hold.*"],
                                                email=f"{agency.lower()}@example.org"))
            await session.commit()
        referral = referral_data(need_code="TRAFFICKING_PRESUMED")
        envelopes = [sample_event(t, referral) for t in WEBHOOK_EVENT_TYPES]
        for envelope in envelopes:
            async with sessions() as session:
                await handler(session, envelope)
                await session.commit()
        async with sessions() as session:
            deliveries = list((await session.exec(select(orm.DeliveryRow))).all())
            outbox = list((await session.exec(select(OutboxMessage))).all())
        return {"referral": referral, "envelopes": envelopes, "deliveries": deliveries, "outbox": outbox}
    finally:
        await engine.dispose()


async def test_webhook_bodies_follow_the_contract(written):
    validator = Draft202012Validator(WEBHOOK_SCHEMA, format_checker=FORMATS)
    webhooks = [d for d in written["deliveries"] if d.channel == "webhook"]
    by_event = {}
    for delivery in webhooks:
        body = json.loads(delivery.payload)
        assert [e.message for e in validator.iter_errors(body)] == [], body
        assert body["type"] == delivery.event_type and body["data"]["event_id"] == delivery.event_id
        by_event.setdefault(delivery.event_type, set()).add(delivery.agency_id)
    # Every type reaches every agency the event names (holds name no coordinator), except that the migration
    # authority, an enforcement agency, hears of status changes and holds only, and of this trafficking referral
    # (a sensitive need, firewall.referral_shown) of its holds only (enlace_platform.firewall).
    for event_type in WEBHOOK_EVENT_TYPES:
        expected = {"MX-INM", "MX-PFPNNA"} if event_type.startswith("protection_hold.") else set(PARTIES)
        if event_type not in ENFORCEMENT_EVENT_TYPES or event_type.startswith("referral."):
            expected -= {"MX-INM"}
        assert by_event[event_type] == expected, event_type
    holds = [json.loads(d.payload)["data"] for d in webhooks if d.event_type.startswith("protection_hold.")]
    assert all(h["hold_id"] and h["status"] is None for h in holds)


async def test_e_mails_are_written_only_for_new_referrals_and_escalations(written):
    emails = {(d.event_type, d.agency_id) for d in written["deliveries"] if d.channel == "email"}
    # reassigned: the referral is handed to its (new) receiver, for which it is a new inbound referral.
    assert emails == {("referral.requested.v1", "MX-PFPNNA"), ("referral.reassigned.v1", "MX-PFPNNA"),
                      ("referral.overdue.v1", "MX-PFPNNA"),
                      ("referral.overdue.v1", "MX-COORD"), ("referral.escalated.v1", "MX-PFPNNA"),
                      ("referral.escalated.v1", "MX-COORD")}


async def test_nothing_personal_or_sensitive_leaves(written):
    referral = written["referral"]
    for delivery in written["deliveries"]:
        for leak in (referral["person_id"], "TRAFFICKING", referral["need_code"]):
            assert leak not in delivery.payload, (leak, delivery.channel, delivery.payload)


async def test_notification_publishes_no_events(written):
    assert written["outbox"] == []
