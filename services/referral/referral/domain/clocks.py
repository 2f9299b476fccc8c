"""Deadline clocks and the trafficking reflection period. Pure: the policy comes from config."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from referral.domain.codes import ACCEPT_DEADLINE, COMPLETE_DEADLINE
from referral.domain.lifecycle import AWAITING_ACCEPTANCE, TERMINAL, Status


@dataclass(frozen=True)
class NeedClocks:
    accept_within: timedelta
    complete_within: timedelta | None = None


def clock_for(status: Status, need_code: str, policy: dict[str, NeedClocks], default: NeedClocks,
              since: datetime) -> tuple[str | None, datetime | None]:
    """The clock that runs in this status, and when it is due (None when none runs)."""
    clocks = policy.get(need_code, default)
    if status in TERMINAL:
        return None, None
    if status in AWAITING_ACCEPTANCE:
        return ACCEPT_DEADLINE, since + clocks.accept_within
    if clocks.complete_within is None:
        return None, None
    return COMPLETE_DEADLINE, since + clocks.complete_within
