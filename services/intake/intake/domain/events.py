"""Events intake publishes and consumes. Published payloads carry codes and ids only:
never names, narratives, document numbers or sexual-violence details."""

from enlace_platform.topics import INTAKE_CASE, REFERRAL_PROTECTION_HOLD, REFERRAL_REFERRAL

TOPIC = INTAKE_CASE
SOURCE = "/enlace/intake"
CASE_REGISTERED = "case.registered.v1"
CASE_SCREENED = "case.screened.v1"
CONSENT_CHANGED = "consent.changed.v1"
PERSON_ERASED = "person.erased.v1"
PUBLISHED = (CASE_REGISTERED, CASE_SCREENED, CONSENT_CHANGED, PERSON_ERASED)
# person.erased.v1 reason codes
ERASURE_REQUEST = "ERASURE_REQUEST"
RETENTION_EXPIRED = "RETENTION_EXPIRED"

# Consumed
HOLD_TOPIC = REFERRAL_PROTECTION_HOLD
HOLD_PLACED = "protection_hold.placed.v1"
HOLD_RELEASED = "protection_hold.released.v1"
REFERRAL_TOPIC = REFERRAL_REFERRAL
REFERRAL_EVENT_TYPES = tuple(f"referral.{name}.v1" for name in (
    "requested", "received", "accepted", "rejected", "started", "put_on_hold", "completed", "cancelled", "failed",
    "reassigned", "note_added", "overdue", "escalated"))
