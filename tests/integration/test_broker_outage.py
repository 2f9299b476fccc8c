"""The broker goes away while requests flow (issue 13: the API never waits on the broker).

Intake's real app in-process, on a broker of the module's own (tests/support/broker.py), which the tests
stop and start again. While it is down every write is accepted and every read answered; the outbox rows
record failed attempts and back off. When it is back, everything drains: each case's events in order,
none lost, none twice. The request latencies are printed (``-s``), not asserted.
"""

import asyncio
import statistics
import time
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer
from sqlmodel import select

from enlace_platform.outbox import OutboxMessage, OutboxRelay, add_event
from intake.config import IntakeSettings
from intake.domain.events import TOPIC
from intake.entrypoints.app import create_app
from tests.support.broker import DisposableBroker
from tests.support.harness import (
    envelopes, eventually, fast_settings, provision_topics, read_topic, running_app, service_database, unique_prefix,
)
from tests.support.intake_support import family_group, inm, outbox_rows

pytestmark = pytest.mark.kafka

OUTAGE_S = 25.0  # several times the producer's request timeout (outbox_send_timeout_s, 5 s)
BASELINE_S = 10.0


@pytest.fixture(scope="module")
async def broker(tmp_path_factory):
    """Never the session's broker: this one is stopped and started again."""
    async with DisposableBroker(tmp_path_factory.mktemp("outage-kafka")) as disposable:
        yield disposable


class Requests:
    """Each request's status and latency, by phase."""

    def __init__(self) -> None:
        self.latencies_ms: dict[str, list[float]] = {}
        self.slowest: list[tuple[float, str, str]] = []  # (ms, phase, route)

    async def call(self, phase: str, client, method: str, url: str, expected: int, **kwargs):
        started = time.perf_counter()
        response = await client.request(method, url, **kwargs)
        took_ms = (time.perf_counter() - started) * 1000
        self.latencies_ms.setdefault(phase, []).append(took_ms)
        route = f"{method} {'/'.join('{id}' if len(part) == 36 else part for part in url.split('/'))}"
        self.slowest = sorted([*self.slowest, (took_ms, phase, route)], reverse=True)[:3]
        assert response.status_code == expected, f"{phase}: {method} {url} answered {response.status_code}: " \
                                                 f"{response.text}"
        return response.json()

    def report(self) -> str:
        lines = []
        for phase, values in self.latencies_ms.items():
            ordered = sorted(values)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            lines.append(f"{phase}: {len(values)} requests, p50 {statistics.median(values):.0f} ms, "
                         f"p99 {p99:.0f} ms, max {ordered[-1]:.0f} ms")
        lines += [f"slow: {ms:.0f} ms {route} ({phase})" for ms, phase, route in self.slowest]
        return "\n".join(lines)


async def _register_and_consent(requests: Requests, phase: str, client, officer) -> str:
    """A border post's journey: register a family, record the mother's consent, read the case back. Two events
    of the case (case.registered, consent.changed), in that order."""
    case = await requests.call(phase, client, "POST", "/cases", 201, headers=officer, json=family_group())
    mother = case["persons"][0]["id"]
    await requests.call(phase, client, "POST", f"/cases/{case['id']}/persons/{mother}/consents", 201,
                        headers=officer, json={"recipient_agency_type": "asylum_office", "purpose": "referral"})
    await requests.call(phase, client, "GET", f"/cases/{case['id']}", 200, headers=officer)
    return case["id"]


async def _all_sent(runtime) -> bool:
    return all(row.sent_at is not None for row in await outbox_rows(runtime))


async def test_intake_accepts_every_write_while_the_broker_is_down_and_delivers_everything_after(
        broker, tmp_path, dev_issuer_dir):
    prefix = unique_prefix()
    await provision_topics(broker.bootstrap, prefix)
    settings = fast_settings(IntakeSettings, tmp_path=tmp_path, bootstrap=broker.bootstrap, prefix=prefix,
                             dev_issuer_dir=dev_issuer_dir, outbox_retry_max_s=2.0)
    app = create_app(settings)
    officer = inm(dev_issuer_dir)
    requests = Requests()
    async with running_app(app) as client:
        runtime = app.state.runtime

        async def connected():
            return runtime.kafka_started.is_set()

        await eventually(connected, what="intake connected to the broker")
        baseline_ends = time.monotonic() + BASELINE_S  # the same traffic with the broker up, for comparison
        while time.monotonic() < baseline_ends:
            await _register_and_consent(requests, "broker up", client, officer)
        await eventually(lambda: _all_sent(runtime), what="the first cases published")

        await broker.stop()
        try:
            cases_in_outage = 0
            outage_ends = time.monotonic() + OUTAGE_S
            while time.monotonic() < outage_ends:
                await _register_and_consent(requests, "broker down", client, officer)
                cases_in_outage += 1
            await requests.call("broker down", client, "GET", "/cases", 200, headers=officer)
            scrape = await client.get("/metrics")
            assert scrape.status_code == 200, scrape.text

            unsent = [row for row in await outbox_rows(runtime) if row.sent_at is None]
            assert len(unsent) == 2 * cases_in_outage, "every write's events wait in the outbox"
            tried = [row for row in unsent if row.attempts]
            assert tried, "the rows the producer took recorded failed attempts"
            assert all(row.next_attempt_at and row.last_error for row in tried), "and back off"
            assert runtime.relay.broker_unreachable
            print(f"\n{cases_in_outage} cases during a {OUTAGE_S:.0f}s outage; {len(tried)} outbox rows tried, "
                  f"up to {max(row.attempts for row in tried)} attempts each; e.g. {tried[0].last_error}")
        finally:
            await broker.start()

        await eventually(lambda: _all_sent(runtime), timeout=120, interval=0.5, what="the backlog drained")
        rows = await outbox_rows(runtime)  # in the order written

    records = envelopes(await read_topic(broker.bootstrap, prefix + TOPIC, expected=len(rows), timeout=60))
    copies = Counter(record.id for record in records)
    assert set(copies) == {row.id for row in rows}, "nothing lost"
    assert [event_id for event_id, n in copies.items() if n > 1] == [], "nothing duplicated"
    for case_id in {row.aggregateid for row in rows}:
        assert [r.id for r in records if r.key == case_id] == [row.id for row in rows if row.aggregateid == case_id], \
            f"case {case_id}'s events in the order written"
    print(requests.report())


async def test_the_relay_stops_within_its_drain_time_during_an_outage_and_its_rows_go_out_later(broker, tmp_path):
    prefix = unique_prefix()
    await provision_topics(broker.bootstrap, prefix)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True, acks="all",
                                request_timeout_ms=1000)
    await producer.start()
    written: list[OutboxMessage] = []
    async with service_database(tmp_path / "svc.db", []) as sessions:
        async def write(case_id: str) -> None:
            async with sessions() as session:
                written.append(add_event(session, topic=TOPIC, case_id=case_id, event_type="case.registered.v1",
                                         data={"n": len(written)}, source="/test"))
                await session.commit()

        async def unsent() -> list[OutboxMessage]:
            async with sessions() as session:
                return list((await session.exec(select(OutboxMessage).where(OutboxMessage.sent_at.is_(None)))).all())

        async def all_sent() -> bool:
            return not await unsent()

        relay = OutboxRelay(sessions, producer, topic_prefix=prefix, send_timeout_s=1.0, retry_base_s=0.2,
                            retry_max_s=1.0, fallback_poll_s=0.5)
        task = asyncio.create_task(relay.run())
        await write("case-A")

        await eventually(all_sent, what="the first event published")

        await broker.stop()
        for case_id in ("case-A", "case-B", "case-A", "case-C"):
            await write(case_id)

        async def failed_attempt():
            return any(row.attempts for row in await unsent())

        try:
            await eventually(failed_attempt, what="a failed attempt recorded")
            asked = time.monotonic()
            relay.stop(drain_timeout_s=1.0)
            await asyncio.wait_for(task, timeout=30)  # a liveness bound; the time it took is printed
            print(f"\nthe relay stopped {time.monotonic() - asked:.2f}s after stop(drain_timeout_s=1.0)")
            relay.detach()
            left = await unsent()
            assert len(left) == 4, "nothing was published while the broker was down"
            assert all(row.claimed_by is None and row.claimed_until is None for row in left), \
                "the relay let go of its rows: the next one sends them without waiting for a lease to lapse"
        finally:
            await broker.start()
            # The old producer still holds what it took before the stop; with the broker back it delivers
            # that now. (A stopped process takes those copies with it.)
            await producer.stop()

        fresh = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True, acks="all")
        await fresh.start()
        try:
            next_relay = OutboxRelay(sessions, fresh, topic_prefix=prefix)

            async def drained():
                await next_relay.publish_batch()
                return await all_sent()

            await eventually(drained, timeout=60, what="the next relay sent the rest")
            next_relay.detach()
        finally:
            await fresh.stop()

    records = envelopes(await read_topic(broker.bootstrap, prefix + TOPIC, expected=len(written), timeout=60))
    assert {r.id for r in records} == {row.id for row in written}, "nothing lost (at least once)"
    for case_id in ("case-A", "case-B", "case-C"):
        first_copies = list(dict.fromkeys(r.id for r in records if r.key == case_id))
        assert first_copies == [row.id for row in written if row.aggregateid == case_id], f"{case_id} in order"

