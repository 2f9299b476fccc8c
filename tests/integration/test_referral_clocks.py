"""Deadline clocks and reflection periods fire exactly once, even with two replicas of the service
sharing one database: on the real broker, counting the events on the topic."""

import asyncio
from contextlib import AsyncExitStack
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaProducer

from enlace_platform.envelope import to_kafka
from referral.service_layer.clocks import run_clocks
from referral.service_layer.referrals import now_utc
from tests.support.database_support import on_both_databases
from tests.support.harness import envelopes, eventually, provision_topics, read_topic, unique_prefix
from tests.support.referral_support import referral_harness, referral_settings, screened, token

pytestmark = on_both_databases


@pytest.fixture
def settings_of(tmp_path, dev_issuer_dir, databases):
    """The referral service's settings with these overrides, on the test's database (SQLite, then PostgreSQL)."""
    return lambda **extra: referral_settings(tmp_path, dev_issuer_dir, databases=databases, **extra)


# A protection agency as the sender: an enforcement sender may not cancel a protection referral (docs/security.md).
SENDER = "MX-PSI"


async def test_two_clock_passes_at_once_fire_each_breach_once(settings_of, dev_issuer_dir):
    """No broker: two runtimes on one database run their clock pass at the same moment."""
    settings = settings_of(clock_interval_s=3600)
    async with referral_harness(settings) as one, referral_harness(settings) as two:
        for _ in range(5):
            await one.deliver(screened("SGBV_SURVIVOR", "TRAFFICKING_PRESUMED", registering_agency_id=SENDER))
        # The sender withdraws the trafficking referrals: their holds end with the reflection period.
        sender = token(dev_issuer_dir, SENDER)
        for item in await one.referrals(sender, need_code="TRAFFICKING_PRESUMED"):
            r = await one.act(item["id"], sender, "cancel", reason_code="REFERRED_IN_ERROR", reason_text="x")
            assert r.status_code == 200
        later = now_utc() + timedelta(days=40)
        fired = await asyncio.gather(run_clocks(one.runtime.sessions, later), run_clocks(two.runtime.sessions, later),
                                     run_clocks(one.runtime.sessions, later))
        # 5 SGBV referrals overdue (accept clock) + 5 trafficking reflection periods ended.
        assert sum(fired) == 10
        assert await run_clocks(two.runtime.sessions, later) == 0
        overdue = [p["referral_id"] for _, p in await one.events("referral.overdue.v1")]
        assert len(overdue) == len(set(overdue)) == 5
        escalated = [p for _, p in await one.events("referral.escalated.v1")]
        assert sorted(p["referral_id"] for p in escalated) == sorted(overdue)
        assert {p["reason_code"] for p in escalated} == {"OVERDUE"}
        released = [p for _, p in await one.events("protection_hold.released.v1")]
        assert len(released) == 5 and {p["release_reason"] for p in released} == {"REFLECTION_PERIOD_ENDED"}


async def test_accepting_restarts_the_clock_and_a_new_breach_fires_again(settings_of, dev_issuer_dir):
    async with referral_harness(settings_of(clock_interval_s=3600)) as ref:
        await ref.deliver(screened("SGBV_SURVIVOR"))
        ssa, coord = token(dev_issuer_dir, "MX-SSA"), token(dev_issuer_dir, "MX-COORD")
        [item] = await ref.referrals(ssa)
        assert await run_clocks(ref.runtime.sessions, now_utc() + timedelta(hours=25)) == 1
        [late] = await ref.referrals(coord, direction="escalated")
        assert late["escalation_reason"] == "OVERDUE" and late["clock"] == "ACCEPT_DEADLINE"
        # The referral is still the receiver's; accepting it ends the escalation and starts the 72 h clock.
        r = await ref.act(item["id"], ssa, "accept")
        assert r.status_code == 200 and r.json()["clock"] == "COMPLETE_DEADLINE" and r.json()["escalation_reason"] is None
        assert await ref.referrals(coord, direction="escalated") == []
        assert await run_clocks(ref.runtime.sessions, now_utc() + timedelta(hours=25)) == 0
        assert await run_clocks(ref.runtime.sessions, now_utc() + timedelta(hours=73)) == 1
        assert [p["reason_code"] for _, p in await ref.events("referral.overdue.v1")] == [
            "ACCEPT_DEADLINE", "COMPLETE_DEADLINE"]
        history = (await ref.client.get(f"/referrals/{item['id']}/history", headers=ssa)).json()
        assert [h["action"] for h in history] == ["route", "overdue", "escalate", "accept", "overdue", "escalate"]
        assert all(h["actor_agency_id"] is None for h in history if h["action"] in ("overdue", "escalate"))


async def test_a_trafficking_hold_outlives_completion_until_the_reflection_period_ends(settings_of,
                                                                                     dev_issuer_dir):
    async with referral_harness(settings_of(clock_interval_s=3600)) as ref:
        await ref.deliver(screened("TRAFFICKING_PRESUMED"))
        fev = token(dev_issuer_dir, "MX-FEVIMTRA")
        [item] = await ref.referrals(fev)
        [(_, placed)] = await ref.events("protection_hold.placed.v1")
        assert placed["not_before"] is not None
        await ref.act(item["id"], fev, "accept")
        r = await ref.act(item["id"], fev, "complete", outcome_code="TRAFFICKING_VICTIM_NOT_IDENTIFIED")
        assert r.status_code == 200
        assert await ref.events("protection_hold.released.v1") == []
        assert await run_clocks(ref.runtime.sessions, now_utc() + timedelta(days=29)) == 0
        assert await run_clocks(ref.runtime.sessions, now_utc() + timedelta(days=31)) == 1
        [(_, released)] = await ref.events("protection_hold.released.v1")
        assert released["release_reason"] == "REFLECTION_PERIOD_ENDED"
        assert released["outcome_code"] == "TRAFFICKING_VICTIM_NOT_IDENTIFIED" and released["referral_id"] == item["id"]


@pytest.mark.kafka
async def test_two_replicas_on_the_real_broker_publish_each_breach_once(kafka_bootstrap, settings_of, dev_issuer_dir):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    settings = settings_of(bootstrap=kafka_bootstrap, prefix=prefix, clock_interval_s=0.05,
                           reflection_period=timedelta(seconds=2), deadlines={"SGBV_SURVIVOR": {"accept_within": 1}})
    screenings = [screened("SGBV_SURVIVOR", "TRAFFICKING_PRESUMED", registering_agency_id=SENDER) for _ in range(4)]
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(referral_harness(settings))
        two = await stack.enter_async_context(referral_harness(settings))
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            for event in screenings:
                key, value, headers = to_kafka(event)
                await producer.send_and_wait(f"{prefix}intake.case", value=value, key=key, headers=headers)
        finally:
            await producer.stop()

        # The sender withdraws the trafficking referrals, so their holds end with the (2 s) reflection period.
        sender = token(dev_issuer_dir, SENDER)

        async def trafficking_referrals():
            items = await one.referrals(sender, need_code="TRAFFICKING_PRESUMED")
            return len(items) == 4 and items

        for item in await eventually(trafficking_referrals, timeout=30, what="4 trafficking referrals"):
            r = await one.act(item["id"], sender, "cancel", reason_code="REFERRED_IN_ERROR", reason_text="x")
            assert r.status_code == 200, r.text

        async def all_fired():
            events = await one.events("referral.overdue.v1", "protection_hold.released.v1")
            return len(events) >= 8 and events

        await eventually(all_fired, timeout=60, what="4 overdue SGBV referrals and 4 ended reflection periods")
        # Both replicas' loops keep running; one more explicit pass of each finds nothing left to fire.
        assert await run_clocks(one.runtime.sessions) == 0
        assert await run_clocks(two.runtime.sessions) == 0

        await eventually(lambda: _all_sent(one), what="the outbox relayed everything")
        topic = envelopes(await read_topic(kafka_bootstrap, f"{prefix}referral.referral", expected=4 * 2 + 8 + 4))  # requested, overdue + escalated, cancelled
        holds = envelopes(await read_topic(kafka_bootstrap, f"{prefix}referral.protection_hold", expected=8))

    overdue = [e for e in topic if e.type == "referral.overdue.v1"]
    assert sorted(e.data["need_code"] for e in overdue) == ["SGBV_SURVIVOR"] * 4
    assert len({e.data["referral_id"] for e in overdue}) == 4 and len({e.id for e in overdue}) == 4
    escalated = [e for e in topic if e.type == "referral.escalated.v1"]
    assert sorted(e.data["referral_id"] for e in escalated) == sorted(e.data["referral_id"] for e in overdue)
    released = [e for e in holds if e.type == "protection_hold.released.v1"]
    placed = [e for e in holds if e.type == "protection_hold.placed.v1"]
    assert len(placed) == 4 and len(released) == 4
    assert {e.data["hold_id"] for e in released} == {e.data["hold_id"] for e in placed}
    assert {e.data["release_reason"] for e in released} == {"REFLECTION_PERIOD_ENDED"}
    assert {e.data["case_id"] for e in released} == {s.data["case_id"] for s in screenings}


async def _all_sent(harness) -> bool:
    from sqlmodel import col, select

    from enlace_platform.outbox import OutboxMessage

    async with harness.runtime.sessions() as session:
        return (await session.exec(select(OutboxMessage.id).where(col(OutboxMessage.sent_at).is_(None)))).first() is None


async def test_inbox_lists_overdue_referrals_and_kpis_count_them(settings_of, dev_issuer_dir):
    settings = settings_of(clock_interval_s=3600, deadlines={"MEDICAL_URGENT": {"accept_within": "PT0S"}})
    async with referral_harness(settings) as ref:
        await ref.deliver(screened("MEDICAL_URGENT", "DISABILITY"))
        ssa = token(dev_issuer_dir, "MX-SSA")
        [late] = await ref.referrals(ssa, overdue="true")
        assert late["need_code"] == "MEDICAL_URGENT" and late["overdue"] is True
        assert [r["need_code"] for r in await ref.referrals(ssa, overdue="false")] == ["DISABILITY"]
        kpis = await ref.client.get("/kpis", headers=token(dev_issuer_dir, "MX-SSA", "supervisor"))
        assert kpis.json()["overdue"] == 1
        # Overdue before the clock loop noticed; the escalation follows with the next pass.
        assert late["escalation_reason"] is None
        assert await run_clocks(ref.runtime.sessions) == 1
        [escalated] = await ref.referrals(token(dev_issuer_dir, "MX-COORD"), direction="escalated")
        assert escalated["id"] == late["id"]


async def test_a_queued_referral_waiting_for_consent_escalates_when_overdue_and_still_routes_on_consent(
        settings_of, dev_issuer_dir):
    from tests.support.referral_support import consent_changed, consent_scope

    async with referral_harness(settings_of(clock_interval_s=3600)) as ref:
        event = screened("INTERNATIONAL_PROTECTION", scope=consent_scope("health"))
        await ref.deliver(event)
        coord = token(dev_issuer_dir, "MX-COORD")
        [queued] = await ref.referrals(coord, direction="queue")
        assert queued["escalation_reason"] == "CONSENT_MISSING" and queued["clock"] == "ACCEPT_DEADLINE"
        # Nobody acted: the queue's own clock escalates it again, once.
        assert await run_clocks(ref.runtime.sessions, now_utc() + timedelta(hours=73)) == 1
        assert await run_clocks(ref.runtime.sessions, now_utc() + timedelta(hours=74)) == 0
        [(_, overdue)] = await ref.events("referral.overdue.v1")
        assert overdue["referral_id"] == queued["id"] and overdue["to_agency_id"] is None
        [still] = await ref.referrals(coord, direction="queue")
        assert still["escalation_reason"] == "CONSENT_MISSING", "why it waits is not overwritten"
        # Consent arrives (twice): the referral is routed exactly once.
        for _ in range(2):
            await ref.deliver(consent_changed(event.data["case_id"], event.data["person_id"], "asylum_office"))
        assert await ref.referrals(coord, direction="queue") == []
        [routed] = await ref.referrals(token(dev_issuer_dir, "MX-COMAR"))
        assert routed["id"] == queued["id"] and routed["escalation_reason"] is None and routed["overdue"] is False
        assert len(await ref.events("referral.reassigned.v1")) == 1


async def test_a_trafficking_hold_is_not_released_while_its_referral_is_still_open(settings_of, dev_issuer_dir):
    async with referral_harness(settings_of(clock_interval_s=3600)) as ref:
        await ref.deliver(screened("TRAFFICKING_PRESUMED"))
        fev, coord = token(dev_issuer_dir, "MX-FEVIMTRA"), token(dev_issuer_dir, "MX-COORD")
        [item] = await ref.referrals(fev)
        # Nobody accepted it for 31 days: overdue and escalated, but the person stays protected.
        assert await run_clocks(ref.runtime.sessions, now_utc() + timedelta(days=31)) == 1
        assert [p["reason_code"] for _, p in await ref.events("referral.overdue.v1")] == ["ACCEPT_DEADLINE"]
        assert await ref.events("protection_hold.released.v1") == []
        [hold] = (await ref.client.get("/holds", headers=coord)).json()
        assert hold["active"]
        assert (await ref.client.post(f"/holds/{hold['id']}/release", headers=coord)).status_code == 409
        # Identified as a victim (a non-final outcome) after the reflection period: the next pass releases it.
        await ref.act(item["id"], fev, "accept")
        r = await ref.act(item["id"], fev, "complete", outcome_code="TRAFFICKING_VICTIM_IDENTIFIED")
        assert r.status_code == 200
        assert await ref.events("protection_hold.released.v1") == []
        assert await run_clocks(ref.runtime.sessions, now_utc() + timedelta(days=31)) == 1
        [(_, released)] = await ref.events("protection_hold.released.v1")
        assert released["release_reason"] == "REFLECTION_PERIOD_ENDED"
        assert released["outcome_code"] == "TRAFFICKING_VICTIM_IDENTIFIED" and released["referral_id"] == item["id"]
