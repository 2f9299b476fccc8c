"""Events the referral service publishes and consumes (docs/event-catalog.md). Codes and ids only."""

from enlace_platform.topics import REFERRAL_PROTECTION_HOLD, REFERRAL_REFERRAL, REFERRAL_STATUS

TOPIC = REFERRAL_REFERRAL
HOLD_TOPIC = REFERRAL_PROTECTION_HOLD
STATUS_TOPIC = REFERRAL_STATUS  # the firewall's topic: what an enforcement agency may see (docs/integrators.md)
SOURCE = "/enlace/referral"

REFERRAL_REQUESTED = "referral.requested.v1"
REFERRAL_RECEIVED = "referral.received.v1"
REFERRAL_ACCEPTED = "referral.accepted.v1"
REFERRAL_REJECTED = "referral.rejected.v1"
REFERRAL_STARTED = "referral.started.v1"
REFERRAL_PUT_ON_HOLD = "referral.put_on_hold.v1"
REFERRAL_COMPLETED = "referral.completed.v1"
REFERRAL_CANCELLED = "referral.cancelled.v1"
REFERRAL_FAILED = "referral.failed.v1"
REFERRAL_REASSIGNED = "referral.reassigned.v1"
REFERRAL_NOTE_ADDED = "referral.note_added.v1"
REFERRAL_OVERDUE = "referral.overdue.v1"
REFERRAL_ESCALATED = "referral.escalated.v1"

REFERRAL_EVENT_TYPES = (
    REFERRAL_REQUESTED, REFERRAL_RECEIVED, REFERRAL_ACCEPTED, REFERRAL_REJECTED, REFERRAL_STARTED,
    REFERRAL_PUT_ON_HOLD, REFERRAL_COMPLETED, REFERRAL_CANCELLED, REFERRAL_FAILED, REFERRAL_REASSIGNED,
    REFERRAL_NOTE_ADDED, REFERRAL_OVERDUE, REFERRAL_ESCALATED,
)

HOLD_PLACED = "protection_hold.placed.v1"
HOLD_RELEASED = "protection_hold.released.v1"
HOLD_EVENT_TYPES = (HOLD_PLACED, HOLD_RELEASED)

# Mirrors each lifecycle change and hold change (firewall.ENFORCEMENT_EVENT_TYPES) on STATUS_TOPIC.
STATUS_CHANGED = "referral.status_changed.v1"

# The directory's agencies, for the other services' token checks (enlace_platform.agencies).
AGENCY_CHANGED = "agency.changed.v1"

PUBLISHED = REFERRAL_EVENT_TYPES + HOLD_EVENT_TYPES + (STATUS_CHANGED, AGENCY_CHANGED)

# The event each lifecycle action publishes. Resume returns to in-progress: a referral.started.v1 again.
ACTION_EVENTS = {
    "receive": REFERRAL_RECEIVED, "accept": REFERRAL_ACCEPTED, "reject": REFERRAL_REJECTED,
    "start": REFERRAL_STARTED, "resume": REFERRAL_STARTED, "hold": REFERRAL_PUT_ON_HOLD,
    "complete": REFERRAL_COMPLETED, "cancel": REFERRAL_CANCELLED, "fail": REFERRAL_FAILED,
    "reassign": REFERRAL_REASSIGNED,
}

# Consumed
CASE_REGISTERED = "case.registered.v1"
CASE_SCREENED = "case.screened.v1"
CONSENT_CHANGED = "consent.changed.v1"
PERSON_ERASED = "person.erased.v1"
