"""Events the notification service consumes (docs/event-catalog.md) and which of them it relays."""

from enlace_platform.topics import REFERRAL_PROTECTION_HOLD, REFERRAL_REFERRAL

REFERRAL_REQUESTED = "referral.requested.v1"
REFERRAL_OVERDUE = "referral.overdue.v1"
REFERRAL_ESCALATED = "referral.escalated.v1"
REFERRAL_REASSIGNED = "referral.reassigned.v1"

REFERRAL_EVENT_TYPES = (
    REFERRAL_REQUESTED, "referral.received.v1", "referral.accepted.v1", "referral.rejected.v1",
    "referral.started.v1", "referral.put_on_hold.v1", "referral.completed.v1", "referral.cancelled.v1",
    "referral.failed.v1", REFERRAL_REASSIGNED, "referral.note_added.v1", REFERRAL_OVERDUE, REFERRAL_ESCALATED,
)
HOLD_PLACED = "protection_hold.placed.v1"
HOLD_RELEASED = "protection_hold.released.v1"
HOLD_EVENT_TYPES = (HOLD_PLACED, HOLD_RELEASED)

# Every type a subscription may choose, and that the service relays as a webhook.
WEBHOOK_EVENT_TYPES = REFERRAL_EVENT_TYPES + HOLD_EVENT_TYPES
# A subscription may also name a whole family: "referral.*" or "protection_hold.*".
EVENT_TYPE_WILDCARDS = ("referral.*", "protection_hold.*")

# Also sent by e-mail (to subscriptions with an address): a new inbound referral — routed to the agency
# (requested) or handed to it later (reassigned: by the coordinator, or a queued one once consent arrives) —
# and deadline escalations.
EMAIL_EVENT_TYPES = (REFERRAL_REQUESTED, REFERRAL_REASSIGNED, REFERRAL_OVERDUE, REFERRAL_ESCALATED)

TOPICS = {REFERRAL_REFERRAL: REFERRAL_EVENT_TYPES, REFERRAL_PROTECTION_HOLD: HOLD_EVENT_TYPES}
