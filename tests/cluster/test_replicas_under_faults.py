"""Replicas on PostgreSQL, under faults (issue 14, item 3).

On the three-broker cluster, with SASL/TLS and ACLs, each service runs as two uvicorn processes on its own
PostgreSQL database. A border post registers and screens CASES unaccompanied children through both intake
replicas; each case must end with one referral to child protection and one webhook at its receiver. A third
of the way in, one broker and one replica of each service are SIGKILLed; two thirds in, the broker is started
again, and so are the killed replicas (the accept race below needs both referral replicas). The accept deadline
is short, so every referral goes overdue (many while the faults last) with both replicas' clocks running.
Afterwards both referral replicas get the same accept at once, for ACCEPT_RACES referrals.

Exactly once is counted, never assumed: lost and duplicated referrals (the referral database), events (the topic,
by CloudEvents id) and webhooks (the receiver, by webhook-id). A webhook-id the receiver gets twice is one
delivery repeated (docs/notification.md: at-least-once, a replica can die between the 2xx and recording it);
it is reported, and bounded by what the killed notification replica could have had in flight.
"""

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bench.e2e.client import RECEIVER, CaseResult, bearer, burst, new_client
from enlace_platform.topics import REFERRAL_REFERRAL
from tests.support.harness import eventually, unique_prefix
from tests.support.replicas import (
    ACCEPTED, OVERDUE, REQUESTED, SERVICES, Bus, FailoverBorderPost, Replicas, WebhookReceiver, WebhookTally,
    busiest_leader, cases_of, consumer_lag, events_on_topic, history_times, leased_deliveries, quiet, referral_facts,
    signatures_failed, subscribe,
)

CASES = 300
CONCURRENCY = 8
ACCEPT_RACES = 40
# Every referral goes overdue ACCEPT_WITHIN after it was made, and both replicas look every second.
ACCEPT_WITHIN_S = 10
CLOCKS = {
    "REFERRAL_DEADLINES": f'{{"UNACCOMPANIED_CHILD": {{"accept_within": "PT{ACCEPT_WITHIN_S}S", '
                          '"complete_within": "P30D"}}',
    "REFERRAL_CLOCK_INTERVAL_S": "1",
}
# Liveness bounds, generous for a loaded 2-core machine; none of them measures speed.
SETTLE_S = 180


@dataclass
class Flow:
    bus: Bus
    replicas: Replicas
    receiver: WebhookReceiver
    dsns: dict[str, str]  # asyncpg DSNs of the services' databases
    key_dir: Path
    cases: list[CaseResult] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # what was done when, for the report
    broker_down: tuple[float, float] = (0.0, 0.0)  # Unix times: killed, serving again
    leased_at_kill: int | None = None  # webhook attempts under lease when notification-1 was killed
    killed_broker: int | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def case_ids(self) -> set[str]:
        return {c.case_id for c in self.cases}

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:6.1f} s  {what}")


async def _drive(flow: Flow, cluster, http: httpx.AsyncClient) -> None:
    """The cases, with the faults injected by how many cases were screened so far."""
    post = FailoverBorderPost(http, flow.replicas.urls("intake"), flow.key_dir)
    screened = [0]
    reached = {mark: asyncio.Event() for mark in (CASES // 3, 2 * CASES // 3)}

    def on_done(_: CaseResult) -> None:
        screened[0] += 1
        for mark, event in reached.items():
            if screened[0] >= mark:
                event.set()

    killed = [flow.replicas.by_service[service][0] for service in SERVICES]

    async def faults() -> None:
        await reached[CASES // 3].wait()
        # The node leading the most partitions right now: its partitions' leadership must move under traffic.
        # The other two keep min.insync.replicas=2.
        flow.killed_broker = node = await busiest_leader(flow.bus)
        cluster.kill_broker(node)
        killed_at = time.time()
        for replica in killed:
            replica.kill()
        flow.leased_at_kill = await leased_deliveries(flow.dsns["notification"])
        flow.note(f"{screened[0]} screened: SIGKILL broker {node} (the busiest leader) and {', '.join(r.name for r in killed)}")
        await reached[2 * CASES // 3].wait()
        flow.note(f"{screened[0]} screened: starting broker {node} again")
        await asyncio.to_thread(cluster.start_broker, node)
        flow.broker_down = (killed_at, time.time())
        flow.note(f"{screened[0]} screened: broker {node} serves again; starting the killed replicas")
        await flow.replicas.start(killed)
        flow.note(f"{screened[0]} screened: {', '.join(r.name for r in killed)} started again and ready")

    flow.note(f"flow starts: {CASES} cases, {CONCURRENCY} at a time")
    async with asyncio.TaskGroup() as tasks:  # a flow that fails cancels the faults still to come
        cases = tasks.create_task(burst(post, range(CASES), CONCURRENCY, on_done))
        tasks.create_task(faults())
    flow.cases = cases.result()
    flow.note(f"flow done: {len(flow.cases)} cases, {sum(r.retries for r in flow.cases)} calls retried")


@pytest.fixture(scope="module")
async def flow(kafka_cluster, postgres_cluster, dev_issuer_dir, tmp_path_factory):
    prefix = unique_prefix()
    # Each service connects as its own principal, under the ACLs bus.yaml derives for this prefix.
    bus = Bus(bootstrap=kafka_cluster.bootstrap, prefix=prefix, service_env=kafka_cluster.service_env,
              reader_options=kafka_cluster.admin_options())
    await kafka_cluster.provision(prefix)
    names = {service: await postgres_cluster.create_database() for service in SERVICES}
    base = tmp_path_factory.mktemp("replicas")
    replicas = Replicas(base, bus, {s: postgres_cluster.url(n) for s, n in names.items()}, dev_issuer_dir,
                        extra_env=CLOCKS)
    receiver = WebhookReceiver(base)
    run = Flow(bus, replicas, receiver, {s: postgres_cluster.dsn(n) for s, n in names.items()}, dev_issuer_dir)
    try:
        await receiver.start()
        await replicas.start()
        run.note("topics, ACLs, databases and the six replicas ready")
        async with new_client(CONCURRENCY + 4) as http:
            await subscribe(http, replicas.urls("notification")[1], receiver, dev_issuer_dir)
            await _drive(run, kafka_cluster, http)
        failed = [c.error for c in run.cases if c.error]
        assert not failed, f"{len(failed)} cases failed, e.g. {failed[:3]}\n{replicas.log_tails()}"
        yield run
    finally:
        run.note("tests done")
        replicas.close()
        receiver.close()
        if run.killed_broker and not kafka_cluster.running(run.killed_broker):  # the session's cluster stays whole
            kafka_cluster.start_broker(run.killed_broker)
        run.note("replicas stopped")
        print("\n".join(["replicas under faults:", *run.events]))


async def _settled(flow: Flow, http: httpx.AsyncClient, ready) -> list[list]:
    """Waits until ``ready(items)`` holds and nothing is on its way any more; returns the receiver's items."""
    async def check():
        items = await flow.receiver.refresh(http)
        if not ready(items):
            return None
        left = await quiet(flow.dsns)
        if any(left.values()):
            return None
        return items if await consumer_lag(flow.bus) == 0 else None
    return await eventually(check, timeout=SETTLE_S, interval=1.0, what="the flow to settle")


async def test_every_case_ends_with_one_referral_and_one_webhook(flow: Flow):
    async def every_case_referred():
        facts = await referral_facts(flow.dsns["referral"])
        return facts if flow.case_ids <= set(facts.referrals_by_case) else None
    await eventually(every_case_referred, timeout=SETTLE_S, interval=1.0, what="a referral for every case")
    async with httpx.AsyncClient(timeout=30) as http:
        items = await _settled(flow, http, lambda items: flow.case_ids <= set(cases_of(items, REQUESTED)))
    facts = await referral_facts(flow.dsns["referral"])

    referrals = {case: facts.referrals_by_case.get(case, []) for case in flow.case_ids}
    lost = [case for case, refs in referrals.items() if not refs]
    duplicated = {case: refs for case, refs in referrals.items() if len(refs) > 1}
    assert (len(lost), len(duplicated)) == (0, 0), f"referrals: lost {lost[:5]}, duplicated {list(duplicated)[:5]}"
    assert set(facts.referrals_by_case) == flow.case_ids, "referrals for cases the flow never made"

    referral_ids = {refs[0] for refs in referrals.values()}
    on_topic = (await events_on_topic(flow.bus, REFERRAL_REFERRAL, {REQUESTED}))[REQUESTED]
    assert {r: len(ids) for r, ids in on_topic.items()} == {r: 1 for r in referral_ids}, \
        f"{REQUESTED} on the topic: not one event id per referral"
    webhooks = WebhookTally.of(REQUESTED, items, referral_ids)
    print(f"{REQUESTED} webhooks: {webhooks.summary()}")
    assert (webhooks.lost, webhooks.duplicated, webhooks.unexpected) == (0, 0, 0), webhooks.summary()
    # Each case's webhook names the referral the database holds for it.
    assert {case: refs for case, refs in cases_of(items, REQUESTED).items()} == \
        {case: set(refs) for case, refs in referrals.items()}
    # Repeats of one webhook-id come only from attempts under lease when the notification replica was killed.
    assert flow.leased_at_kill is not None
    assert webhooks.repeated_posts <= flow.leased_at_kill, webhooks.summary()
    assert signatures_failed(items) == 0


async def test_deadline_clocks_fire_once_across_replicas(flow: Flow):
    async def every_referral_overdue():
        facts = await referral_facts(flow.dsns["referral"])
        overdue = facts.count("overdue")
        refs = {r for refs in facts.referrals_by_case.values() for r in refs}
        return refs if refs and all(overdue[r] for r in refs) else None
    referral_ids = await eventually(every_referral_overdue, timeout=SETTLE_S, interval=1.0,
                                    what="every referral overdue")
    async with httpx.AsyncClient(timeout=30) as http:
        items = await _settled(flow, http, lambda items: referral_ids <= set(
            WebhookTally.of(OVERDUE, items, referral_ids).ids_by_referral))
    facts = await referral_facts(flow.dsns["referral"])

    fired = facts.count("overdue")
    twice = {r: n for r, n in fired.items() if n > 1}
    assert not twice, f"{len(twice)} referrals went overdue more than once in their history: {list(twice)[:5]}"
    on_topic = (await events_on_topic(flow.bus, REFERRAL_REFERRAL, {OVERDUE}))[OVERDUE]
    events_per_referral = Counter({r: len(ids) for r, ids in on_topic.items()})
    assert set(events_per_referral) == referral_ids
    assert set(events_per_referral.values()) == {1}, \
        f"{OVERDUE} under several event ids: {[r for r, n in events_per_referral.items() if n > 1][:5]}"
    webhooks = WebhookTally.of(OVERDUE, items, referral_ids)
    down_from, down_until = flow.broker_down
    while_down = sum(1 for t in await history_times(flow.dsns["referral"], "overdue") if down_from <= t <= down_until)
    print(f"{OVERDUE}: {len(fired)} referrals, {sum(fired.values())} fired, {while_down} of them while the broker "
          f"was down; webhooks {webhooks.summary()}")
    assert while_down, "no clock fired while the faults lasted: the test would prove less than it says"
    assert (webhooks.lost, webhooks.duplicated, webhooks.unexpected) == (0, 0, 0), webhooks.summary()


async def test_concurrent_accepts_at_both_replicas_stay_exactly_once(flow: Flow):
    referral_urls = flow.replicas.urls("referral")
    assert all(r.alive() for r in flow.replicas.by_service["referral"])

    async def overdue_referrals():  # accepted after their clock fired, so the clock test holds either way
        facts = await referral_facts(flow.dsns["referral"])
        ready = sorted(r for r, n in facts.count("overdue").items() if n)
        return ready[:ACCEPT_RACES] if len(ready) >= ACCEPT_RACES else None
    chosen = await eventually(overdue_referrals, timeout=SETTLE_S, interval=1.0, what="overdue referrals to accept")

    caseworker = bearer(flow.key_dir, RECEIVER, "caseworker")
    losers = Counter()  # how the 409s read: lost at the conditional UPDATE, or came after the accept
    async with httpx.AsyncClient(timeout=60) as http:
        async def race(referral_id: str) -> tuple[int, ...]:
            answers = await asyncio.gather(*(http.post(f"{url}/referrals/{referral_id}/actions", headers=caseworker,
                                                       json={"action": "accept"}) for url in referral_urls))
            for answer in answers:
                body = answer.json()
                if answer.status_code == 200:
                    assert body["status"] == "accepted", answer.text
                elif answer.status_code == 409:
                    assert body["current_status"] == "accepted", answer.text
                    losers["lost the UPDATE" if "same time" in body["detail"] else "came after"] += 1
            return tuple(sorted(a.status_code for a in answers))
        outcomes = Counter(await asyncio.gather(*(race(r) for r in chosen)))
        print(f"accept races at both referral replicas: {dict(outcomes)}; the 409s: {dict(losers)}")
        assert outcomes == Counter({(200, 409): ACCEPT_RACES})

        items = await _settled(flow, http, lambda items: set(chosen) <= set(
            WebhookTally.of(ACCEPTED, items, set(chosen)).ids_by_referral))
    facts = await referral_facts(flow.dsns["referral"])
    accepts = facts.count("accept")
    assert {r: accepts[r] for r in chosen} == {r: 1 for r in chosen}
    assert sum(accepts.values()) == ACCEPT_RACES
    on_topic = (await events_on_topic(flow.bus, REFERRAL_REFERRAL, {ACCEPTED}))[ACCEPTED]
    assert {r: len(ids) for r, ids in on_topic.items()} == {r: 1 for r in chosen}
    webhooks = WebhookTally.of(ACCEPTED, items, set(chosen))
    assert (webhooks.lost, webhooks.duplicated, webhooks.unexpected) == (0, 0, 0), webhooks.summary()
