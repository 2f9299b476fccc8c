"""The topic catalog and its explicit provisioning (the broker never auto-creates topics).

Run ``python -m enlace_platform.topics [--prefix P]`` to create them.
"""

import asyncio
import logging

import typer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)

CASE_PARTITIONS = 3

INTAKE_CASE = "intake.case"
REFERRAL_REFERRAL = "referral.referral"
REFERRAL_PROTECTION_HOLD = "referral.protection_hold"
# The firewall's topic: referral status and hold, nothing else (enlace_platform.firewall). An enforcement
# agency's integrators read this one (and intake.case); the two above are for protection actors and Enlace.
REFERRAL_STATUS = "referral.status"
# The directory's agencies (enlace_platform.agencies): keyed by agency id, compacted, so that the latest snapshot
# of every agency stays readable for a service that starts from scratch.
REFERRAL_AGENCY = "referral.agency"

# Every topic is keyed by case id; each topic an Enlace service consumes has a dead-letter topic beside it.
CATALOG: list[str] = [INTAKE_CASE, REFERRAL_REFERRAL, REFERRAL_PROTECTION_HOLD, REFERRAL_STATUS, REFERRAL_AGENCY]
# Read only by systems outside Enlace, which dead-letter into their own topics: no .dlq here.
UNCONSUMED: frozenset[str] = frozenset({REFERRAL_STATUS})


# Which topic carries an event type (by the aggregate that starts its name), and who publishes there.
EVENT_TOPICS: dict[str, str] = {
    "case": INTAKE_CASE, "consent": INTAKE_CASE, "person": INTAKE_CASE,
    "referral": REFERRAL_REFERRAL, "protection_hold": REFERRAL_PROTECTION_HOLD, "agency": REFERRAL_AGENCY,
}
# Event types whose topic is not their aggregate's.
TYPE_TOPICS: dict[str, str] = {"referral.status_changed.v1": REFERRAL_STATUS}
TOPIC_OWNERS: dict[str, str] = {INTAKE_CASE: "intake", REFERRAL_REFERRAL: "referral",
                                REFERRAL_PROTECTION_HOLD: "referral", REFERRAL_STATUS: "referral",
                                REFERRAL_AGENCY: "referral"}
# Topic settings beyond the broker's defaults.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {REFERRAL_AGENCY: {"cleanup.policy": "compact"}}


def topic_of(event_type: str) -> str:
    return TYPE_TOPICS.get(event_type) or EVENT_TOPICS[event_type.split(".", 1)[0]]


def dlq(topic: str) -> str:
    return f"{topic}.dlq"


def all_topics(prefix: str = "") -> list[str]:
    names = [t for base in CATALOG for t in (base, *(() if base in UNCONSUMED else (dlq(base),)))]
    return [f"{prefix}{n}" for n in names]


async def provision(bootstrap: str, names: list[str], partitions: int = CASE_PARTITIONS) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(n, num_partitions=partitions, replication_factor=1, topic_configs=_configs(n))
                     for n in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another replica won the race; that is fine
        return missing
    finally:
        await admin.close()


def _configs(name: str) -> dict[str, str]:
    """The settings of a topic name, prefixed or not (its dead-letter topic has the defaults)."""
    return next((configs for base, configs in TOPIC_CONFIGS.items() if name.endswith(base)), {})


def main(
    bootstrap: str = typer.Option("127.0.0.1:9092", envvar="ENLACE_KAFKA_BOOTSTRAP_SERVERS"),
    prefix: str = typer.Option("", envvar="ENLACE_KAFKA_TOPIC_PREFIX"),
) -> None:
    names = all_topics(prefix)
    created = asyncio.run(provision(bootstrap, names))
    for name in names:
        typer.echo(f"topic {name}: {'created' if name in created else 'exists'}")


if __name__ == "__main__":
    typer.run(main)
