"""The removal safeguard and receiving agencies' access, from referral events. Pure.

Protection holds arrive as placed/released events that may come twice or out of order; the
merge here makes the result the same whatever the order: once released, a hold stays released.
"""

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from enlace_platform.timeutil import as_utc

ACTIVE = "active"
RELEASED = "released"
CLOSED_REFERRAL_STATUSES = frozenset({"completed", "cancelled", "failed", "rejected"})
# The receiver took the person on and has not finished: it may refer them onward.
WORKING_REFERRAL_STATUSES = frozenset({"accepted", "in-progress", "on-hold"})
# The needs for which the referral service always holds the person (docs/event-catalog.md).
HOLD_BEARING_NEEDS = ("INTERNATIONAL_PROTECTION", "UNACCOMPANIED_CHILD", "SEPARATED_CHILD", "TRAFFICKING_PRESUMED")


@dataclass(frozen=True)
class HoldState:
    hold_id: str
    case_id: str
    person_id: str
    referral_id: str | None = None
    need_code: str | None = None
    placed_at: datetime | None = None
    not_before: datetime | None = None
    status: str = ACTIVE
    released_at: datetime | None = None
    release_reason: str | None = None
    release_referral_id: str | None = None
    outcome_code: str | None = None


def on_placed(current: HoldState | None, placed: HoldState) -> HoldState:
    """The same placement twice is one hold; a placement after its release leaves it released."""
    if current is None:
        return placed
    return replace(current, referral_id=current.referral_id or placed.referral_id,
                   need_code=current.need_code or placed.need_code,
                   placed_at=current.placed_at or placed.placed_at,
                   not_before=current.not_before or placed.not_before)


def on_released(current: HoldState | None, *, hold_id: str, case_id: str, person_id: str, referral_id: str,
                need_code: str, released_at: datetime, release_reason: str, outcome_code: str | None) -> HoldState:
    base = current or HoldState(hold_id=hold_id, case_id=case_id, person_id=person_id, need_code=need_code)
    if base.status == RELEASED:
        return base
    return replace(base, status=RELEASED, released_at=released_at, release_reason=release_reason,
                   release_referral_id=referral_id, outcome_code=outcome_code,
                   need_code=base.need_code or need_code)


def coordinator_of(jurisdiction: str) -> str:
    """Each jurisdiction has one coordinator agency, <CC>-COORD (docs/event-catalog.md)."""
    return f"{jurisdiction}-COORD"


def referral_is_open(status: str) -> bool:
    return status not in CLOSED_REFERRAL_STATUSES


def is_newer(incoming: datetime, stored: datetime | None) -> bool:
    """Referral events of a case come in order (one partition); this guards a replay of an older one."""
    return stored is None or incoming >= stored


def pending_holds(screened_at: datetime, found_needs: Iterable[str], holds: Iterable[HoldState]) -> list[str]:
    """Hold-bearing needs of the person's latest screening that no hold known here answers yet.

    For every such need, the referral service holds the person: it places a hold, or one is already active.
    Until that hold reaches intake (or while the referral service is down), the screening itself already
    says the person must not be removed. A need is answered by an active hold for it, or by one released
    after the screening (the referral service's answer came and was resolved since).
    """
    holds = list(holds)
    pending = []
    for need in dict.fromkeys(n for n in found_needs if n in HOLD_BEARING_NEEDS):
        answered = any(h.need_code == need and (h.status == ACTIVE or (
            h.released_at is not None and as_utc(h.released_at) >= as_utc(screened_at))) for h in holds)
        if not answered:
            pending.append(need)
    return pending
