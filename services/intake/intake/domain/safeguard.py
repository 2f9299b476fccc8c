"""The removal safeguard and receiving agencies' access, from referral events. Pure.

Protection holds arrive as placed/released events that may come twice or out of order; the
merge here makes the result the same whatever the order: once released, a hold stays released.
"""

from dataclasses import dataclass, replace
from datetime import datetime

ACTIVE = "active"
RELEASED = "released"
CLOSED_REFERRAL_STATUSES = frozenset({"completed", "cancelled", "failed", "rejected"})


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


def referral_is_open(status: str) -> bool:
    return status not in CLOSED_REFERRAL_STATUSES


def is_newer(incoming: datetime, stored: datetime | None) -> bool:
    """Referral events of a case come in order (one partition); this guards a replay of an older one."""
    return stored is None or incoming >= stored
