"""Events the referral service publishes. Codes and ids only."""

from enlace_platform.topics import REFERRAL_REFERRAL

TOPIC = REFERRAL_REFERRAL
SOURCE = "/enlace/referral"
REFERRAL_REQUESTED = "referral.requested.v1"

# Consumed
CASE_SCREENED = "case.screened.v1"
