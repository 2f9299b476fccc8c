"""The referral's life as FHIR Task statuses: a pure state machine with who may do what.

Roles are relative to one referral: the receiving agency, the sending agency and the coordinator
of the referral's jurisdiction. Any other agency does not see the referral at all (404, not here).
"""

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    REQUESTED = "requested"
    RECEIVED = "received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    IN_PROGRESS = "in-progress"
    ON_HOLD = "on-hold"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class Action(StrEnum):
    RECEIVE = "receive"
    ACCEPT = "accept"
    REJECT = "reject"
    START = "start"
    HOLD = "hold"
    RESUME = "resume"
    COMPLETE = "complete"
    FAIL = "fail"
    CANCEL = "cancel"
    REASSIGN = "reassign"


class Role(StrEnum):
    RECEIVER = "receiver"
    SENDER = "sender"
    COORDINATOR = "coordinator"


TERMINAL = frozenset({Status.REJECTED, Status.COMPLETED, Status.CANCELLED, Status.FAILED})
OPEN = frozenset(Status) - TERMINAL
# Before the receiver took it on: the accept clock runs.
AWAITING_ACCEPTANCE = frozenset({Status.REQUESTED, Status.RECEIVED})


@dataclass(frozen=True)
class Rule:
    roles: frozenset[Role]
    sources: frozenset[Status]
    target: Status
    needs_reason: bool = False
    needs_outcome: bool = False


_R, _S, _C = Role.RECEIVER, Role.SENDER, Role.COORDINATOR
# The receiver took the person on and has not finished: it may refer them onward (a manual referral).
WORKING = frozenset({Status.ACCEPTED, Status.IN_PROGRESS, Status.ON_HOLD})
_WORKING = WORKING

RULES: dict[Action, Rule] = {
    Action.RECEIVE: Rule(frozenset({_R}), frozenset({Status.REQUESTED}), Status.RECEIVED),
    Action.ACCEPT: Rule(frozenset({_R}), AWAITING_ACCEPTANCE, Status.ACCEPTED),
    Action.REJECT: Rule(frozenset({_R}), AWAITING_ACCEPTANCE, Status.REJECTED, needs_reason=True),
    Action.START: Rule(frozenset({_R}), frozenset({Status.ACCEPTED}), Status.IN_PROGRESS),
    Action.HOLD: Rule(frozenset({_R}), frozenset({Status.ACCEPTED, Status.IN_PROGRESS}), Status.ON_HOLD),
    Action.RESUME: Rule(frozenset({_R}), frozenset({Status.ON_HOLD}), Status.IN_PROGRESS),
    Action.COMPLETE: Rule(frozenset({_R}), frozenset({Status.ACCEPTED, Status.IN_PROGRESS}), Status.COMPLETED,
                          needs_outcome=True),
    Action.FAIL: Rule(frozenset({_R}), _WORKING, Status.FAILED, needs_reason=True),
    # The sender withdraws its request; the coordinator may also close a referral (it then resolves holds).
    Action.CANCEL: Rule(frozenset({_S, _C}), frozenset(OPEN), Status.CANCELLED, needs_reason=True),
    # The coordinator hands a referral (or a queued one) to another service; it starts over as requested.
    Action.REASSIGN: Rule(frozenset({_C}), frozenset(OPEN), Status.REQUESTED),
}


@dataclass(frozen=True)
class Allowed:
    target: Status
    rule: Rule


@dataclass(frozen=True)
class Forbidden:
    """None of the caller's roles may ever take this action (403)."""
    action: Action
    roles: frozenset[Role]


@dataclass(frozen=True)
class Conflict:
    """The caller may take this action, but not from the current status (409)."""
    action: Action
    current: Status
    allowed_actions: tuple[Action, ...]


def allowed_actions(current: Status, roles: frozenset[Role], *, has_receiver: bool = True) -> tuple[Action, ...]:
    return tuple(a for a in Action if _permits(a, current, roles, has_receiver))


def _permits(action: Action, current: Status, roles: frozenset[Role], has_receiver: bool) -> bool:
    rule = RULES[action]
    if not rule.roles & roles or current not in rule.sources:
        return False
    # A referral in the coordinator's queue has no receiver: only assigning (reassign) or cancelling it.
    return has_receiver or action in (Action.REASSIGN, Action.CANCEL)


def decide(current: Status, action: Action, roles: frozenset[Role], *, has_receiver: bool = True
           ) -> Allowed | Forbidden | Conflict:
    rule = RULES[action]
    if not rule.roles & roles:
        return Forbidden(action, roles)
    if not _permits(action, current, roles, has_receiver):
        return Conflict(action, current, allowed_actions(current, roles, has_receiver=has_receiver))
    return Allowed(rule.target, rule)
