"""Events the notification service consumes and relays as webhooks."""

REFERRAL_REQUESTED = "referral.requested.v1"

WEBHOOK_EVENT_TYPES = (REFERRAL_REQUESTED,)
