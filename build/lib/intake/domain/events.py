"""Events intake publishes. Codes and ids only: never names, narratives or violence details."""

from enlace_platform.topics import INTAKE_CASE

TOPIC = INTAKE_CASE
SOURCE = "/enlace/intake"
CASE_REGISTERED = "case.registered.v1"
CASE_SCREENED = "case.screened.v1"
