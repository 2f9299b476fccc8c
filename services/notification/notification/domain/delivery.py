"""When a delivery is retried, and when it is dead. Pure: the dispatcher applies the decision."""

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"
CANCELLED = "cancelled"  # its subscription was disabled (HTTP 410) or deleted before it went out
STATUSES = (PENDING, DELIVERED, DEAD, CANCELLED)


class Outcome(StrEnum):
    OK = "ok"
    GONE = "gone"  # HTTP 410: the endpoint is gone for good
    PERMANENT = "permanent"  # e.g. SMTP 5xx: retrying cannot help
    TRANSIENT = "transient"  # anything else: retry later


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    max_age: timedelta
    base_s: float
    max_s: float


@dataclass(frozen=True)
class Decision:
    status: str
    next_attempt_at: datetime | None = None
    disable_subscription: bool = False


def next_attempt_delay(attempts: int, base_s: float, max_s: float, rng: random.Random | None = None) -> timedelta:
    """Exponential backoff with full jitter after ``attempts`` failed attempts: uniform in [0, ceiling],
    ceiling = min(max_s, base_s * 2^(attempts-1)). Full jitter spreads failing receivers' retries apart."""
    ceiling = min(max_s, base_s * 2 ** min(max(0, attempts - 1), 32))
    return timedelta(seconds=(rng or random).uniform(0, ceiling))


def decide(outcome: Outcome, *, attempts: int, started_at: datetime, now: datetime, policy: RetryPolicy,
           retry_after_s: float | None = None, rng: random.Random | None = None) -> Decision:
    """What follows an attempt. ``attempts`` counts the attempts of this cycle including this one;
    ``started_at`` is when the cycle began (creation, or a manual redelivery). A receiver's Retry-After
    is honoured as a minimum wait, up to the policy's maximum delay."""
    if outcome is Outcome.OK:
        return Decision(DELIVERED)
    if outcome is Outcome.GONE:
        return Decision(DEAD, disable_subscription=True)
    if outcome is Outcome.PERMANENT:
        return Decision(DEAD)
    deadline = started_at + policy.max_age
    if attempts >= policy.max_attempts or now >= deadline:
        return Decision(DEAD)
    delay = next_attempt_delay(attempts, policy.base_s, policy.max_s, rng)
    if retry_after_s is not None:
        delay = max(delay, timedelta(seconds=min(retry_after_s, policy.max_s)))
    # The last retry happens at the deadline at the latest, so max_age is honoured without losing a try.
    return Decision(PENDING, min(now + delay, deadline))


def outcome_of_http(status_code: int | None) -> Outcome:
    if status_code is not None and 200 <= status_code < 300:
        return Outcome.OK
    if status_code == 410:
        return Outcome.GONE
    return Outcome.TRANSIENT
