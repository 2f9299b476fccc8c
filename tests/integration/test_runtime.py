"""A service runtime's graceful shutdown on the real broker."""

import asyncio

import pytest
from sqlmodel import select

from enlace_platform.outbox import OutboxMessage, add_event
from enlace_platform.runtime import ServiceRuntime
from enlace_platform.settings import ServiceSettings
from tests.support.harness import envelopes, provision_topics, read_topic, unique_prefix

pytestmark = pytest.mark.kafka


async def test_shutdown_drains_the_outbox(kafka_bootstrap, tmp_path):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    settings = ServiceSettings(service_name="drainer", database_url=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
                               kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_prefix=prefix,
                               outbox_fallback_poll_s=3600)
    runtime = ServiceRuntime(settings=settings, tables=[])
    await runtime.start()
    await asyncio.wait_for(runtime.kafka_started.wait(), timeout=30)
    # Without the commit hook and with an hour-long poll, only the shutdown drain can send the row.
    runtime.relay._waker.detach()
    async with runtime.sessions() as session:
        row = add_event(session, topic="intake.case", case_id="case-drain", event_type="case.registered.v1",
                        data={"case_id": "case-drain"}, source="/test")
        await session.commit()
    await runtime.stop()

    records = await read_topic(kafka_bootstrap, prefix + "intake.case", expected=1)
    assert [e.id for e in envelopes(records)] == [row.id]
    check = ServiceRuntime(settings=settings, tables=[])
    async with check.sessions() as session:
        [stored] = (await session.exec(select(OutboxMessage))).all()
    await check.engine.dispose()
    assert stored.sent_at is not None
