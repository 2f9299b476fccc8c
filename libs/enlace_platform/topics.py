"""The topic catalog and its explicit provisioning (the broker never auto-creates topics).

Run ``python -m enlace_platform.topics [--prefix P]`` to create them.
"""

import asyncio
import logging
import os

import typer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from enlace_platform.bus import declared

log = logging.getLogger(__name__)

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
# The settings, owners and readers of every topic are declared in bus.yaml (enlace_platform.bus).
CATALOG: list[str] = declared().catalog
# Read only by systems outside Enlace, which dead-letter into their own topics: no .dlq here.
UNCONSUMED: frozenset[str] = frozenset(t.name for t in declared().topics.values() if not t.consumed)


# Which topic carries an event type (by the aggregate that starts its name), and who publishes there.
EVENT_TOPICS: dict[str, str] = {
    "case": INTAKE_CASE, "consent": INTAKE_CASE, "person": INTAKE_CASE,
    "referral": REFERRAL_REFERRAL, "protection_hold": REFERRAL_PROTECTION_HOLD, "agency": REFERRAL_AGENCY,
}
# Event types whose topic is not their aggregate's.
TYPE_TOPICS: dict[str, str] = {"referral.status_changed.v1": REFERRAL_STATUS}
TOPIC_OWNERS: dict[str, str] = {t.name: t.owner for t in declared().topics.values()}
# Topic settings beyond the broker's defaults.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {t.name: dict(t.configs) for t in declared().topics.values()}


def topic_of(event_type: str) -> str:
    return TYPE_TOPICS.get(event_type) or EVENT_TOPICS[event_type.split(".", 1)[0]]


def dlq(topic: str) -> str:
    return f"{topic}.dlq"


def all_topics(prefix: str = "") -> list[str]:
    return declared().all_topics(prefix)


REPLICATION_ENV = "ENLACE_KAFKA_REPLICATION_FACTOR"


def _replication(spec_rf: int, override: int | None) -> tuple[int, dict[str, str]]:
    """The replication factor to create with, and the min.insync.replicas that goes with it: a single local
    broker (override 1) cannot hold 2 in-sync replicas."""
    rf = override or spec_rf
    return rf, {"min.insync.replicas": str(min(2, rf))} if override else {}


async def provision(bootstrap: str, names: list[str], partitions: int | None = None, *,
                    replication_factor: int | None = None, prefix: str = "",
                    client_options: dict | None = None) -> list[str]:
    """Create the topics that do not exist yet, with their bus.yaml settings, and set those settings again on
    the ones that do (idempotent: a second run changes nothing). Returns the ones created.
    ``replication_factor`` overrides bus.yaml's (one local broker: 1)."""
    bus = declared()
    override = replication_factor or (int(os.environ[REPLICATION_ENV]) if os.environ.get(REPLICATION_ENV) else None)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client_options or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        brokers = len((await admin.describe_cluster())["brokers"])
        wanted = {}
        for name in names:
            spec = bus.spec_of(name, prefix)
            rf, isr = _replication(spec.replication_factor, override)
            if name in missing and rf > brokers:
                raise RuntimeError(f"{name} needs {rf} replicas and the cluster has {brokers} broker(s): start more, "
                                   f"or set {REPLICATION_ENV}=1 for a single local broker")
            wanted[name] = (partitions or spec.partitions, rf, {**spec.configs, **isr})
        if missing:
            try:
                await admin.create_topics([NewTopic(n, num_partitions=wanted[n][0], replication_factor=wanted[n][1],
                                                    topic_configs=wanted[n][2]) for n in missing])
            except TopicAlreadyExistsError:
                pass  # another replica won the race; that is fine
        present = [n for n in names if n in existing]
        if present:
            # The declared settings win over whatever was set by hand (alter_configs replaces a topic's set).
            responses = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, n, configs=wanted[n][2])
                                                   for n in present])
            refused = [f"{name}: {message or code}" for response in responses
                       for code, message, _type, name in response.resources if code]
            if refused:
                raise RuntimeError("topic settings refused by the broker: " + "; ".join(refused))
        return missing
    finally:
        await admin.close()


def main(
    bootstrap: str = typer.Option("127.0.0.1:9092", envvar="ENLACE_KAFKA_BOOTSTRAP_SERVERS"),
    prefix: str = typer.Option("", envvar="ENLACE_KAFKA_TOPIC_PREFIX"),
) -> None:
    names = all_topics(prefix)
    created = asyncio.run(provision(bootstrap, names, prefix=prefix))
    for name in names:
        typer.echo(f"topic {name}: {'created' if name in created else 'exists'}")


if __name__ == "__main__":
    typer.run(main)
