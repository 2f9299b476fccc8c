"""The retry schedule: exponential backoff with full jitter, max attempts, max age, 410 and permanent failures."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from notification.domain.delivery import DEAD, DELIVERED, PENDING, Outcome, RetryPolicy, decide, next_attempt_delay, \
    outcome_of_http

POLICY = RetryPolicy(max_attempts=5, max_age=timedelta(hours=1), base_s=2.0, max_s=600.0)
START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _ceiling(attempts: int, base: float, cap: float) -> float:
    return min(cap, base * 2 ** max(0, attempts - 1))


@pytest.mark.parametrize("seed", range(25))
def test_delay_is_between_zero_and_the_ceiling(seed):
    rng = random.Random(seed)
    for attempts in range(0, 15):
        delay = next_attempt_delay(attempts, 2.0, 600.0, rng).total_seconds()
        assert 0 <= delay <= _ceiling(attempts, 2.0, 600.0), (attempts, delay)


def test_the_ceiling_doubles_per_attempt_until_the_cap():
    class Top(random.Random):
        def uniform(self, a, b):
            return b

    delays = [next_attempt_delay(n, 1.0, 40.0, Top()).total_seconds() for n in range(1, 9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 40.0, 40.0]


def test_full_jitter_draws_from_zero():
    class Bottom(random.Random):
        def uniform(self, a, b):
            return a

    assert next_attempt_delay(7, 2.0, 600.0, Bottom()) == timedelta(0)


def test_delay_is_jittered_and_reproducible():
    delays = {next_attempt_delay(5, 2.0, 600.0, random.Random(seed)) for seed in range(20)}
    assert len(delays) > 10, "identical delays would make every failing receiver retry in lockstep"
    a = [next_attempt_delay(n, 2.0, 600.0, random.Random(7)) for n in range(1, 10)]
    assert a == [next_attempt_delay(n, 2.0, 600.0, random.Random(7)) for n in range(1, 10)]


def test_huge_attempt_counts_do_not_overflow():
    assert next_attempt_delay(10_000, 2.0, 600.0) <= timedelta(seconds=600)


def test_success_is_delivered():
    assert decide(Outcome.OK, attempts=3, started_at=START, now=START, policy=POLICY).status == DELIVERED


def test_a_transient_failure_is_retried_later():
    decision = decide(Outcome.TRANSIENT, attempts=2, started_at=START, now=START + timedelta(seconds=5),
                      policy=POLICY, rng=random.Random(1))
    assert decision.status == PENDING and not decision.disable_subscription
    assert START + timedelta(seconds=5) <= decision.next_attempt_at <= START + timedelta(seconds=5 + 4)


def test_the_last_attempt_makes_it_dead():
    assert decide(Outcome.TRANSIENT, attempts=4, started_at=START, now=START, policy=POLICY).status == PENDING
    assert decide(Outcome.TRANSIENT, attempts=5, started_at=START, now=START, policy=POLICY).status == DEAD


def test_max_age_makes_it_dead_and_caps_the_last_retry():
    late = START + timedelta(hours=1)
    assert decide(Outcome.TRANSIENT, attempts=1, started_at=START, now=late, policy=POLICY).status == DEAD
    long_backoff = RetryPolicy(max_attempts=50, max_age=timedelta(minutes=10), base_s=600.0, max_s=6000.0)

    class Top(random.Random):
        def uniform(self, a, b):
            return b

    now = START + timedelta(minutes=9)
    decision = decide(Outcome.TRANSIENT, attempts=3, started_at=START, now=now, policy=long_backoff, rng=Top())
    assert decision.status == PENDING
    assert decision.next_attempt_at == START + timedelta(minutes=10), "one last try at the deadline"


def test_gone_disables_the_subscription_and_permanent_failures_are_not_retried():
    gone = decide(Outcome.GONE, attempts=1, started_at=START, now=START, policy=POLICY)
    assert gone.status == DEAD and gone.disable_subscription
    permanent = decide(Outcome.PERMANENT, attempts=1, started_at=START, now=START, policy=POLICY)
    assert permanent.status == DEAD and not permanent.disable_subscription


@pytest.mark.parametrize(("code", "outcome"), [
    (200, Outcome.OK), (204, Outcome.OK), (299, Outcome.OK), (410, Outcome.GONE), (None, Outcome.TRANSIENT),
    (301, Outcome.TRANSIENT), (400, Outcome.TRANSIENT), (404, Outcome.TRANSIENT), (429, Outcome.TRANSIENT),
    (500, Outcome.TRANSIENT), (503, Outcome.TRANSIENT),
])
def test_http_outcomes(code, outcome):
    assert outcome_of_http(code) is outcome


def test_retry_after_is_a_floor_capped_at_the_maximum_delay():
    class Bottom(random.Random):
        def uniform(self, a, b):
            return a

    now = START + timedelta(seconds=1)
    honoured = decide(Outcome.TRANSIENT, attempts=1, started_at=START, now=now, policy=POLICY, retry_after_s=120,
                      rng=Bottom())
    assert honoured.next_attempt_at == now + timedelta(seconds=120)
    capped = decide(Outcome.TRANSIENT, attempts=1, started_at=START, now=now, policy=POLICY, retry_after_s=10**9,
                    rng=Bottom())
    assert capped.next_attempt_at == now + timedelta(seconds=POLICY.max_s)
    tight = RetryPolicy(max_attempts=5, max_age=timedelta(seconds=60), base_s=2.0, max_s=600.0)
    assert decide(Outcome.TRANSIENT, attempts=1, started_at=START, now=now, policy=tight,
                  retry_after_s=300).next_attempt_at == START + timedelta(seconds=60), "never past the deadline"
