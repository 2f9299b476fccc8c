"""The topic catalog and its explicit provisioning (the broker never auto-creates topics), and the bus's ACLs.

Run ``python -m enlace_platform.topics [--prefix P]`` to create the topics; ``--acls`` also applies the ACLs that
bus.yaml implies (enlace_platform.bus) and removes the Enlace principals' ALLOW entries it no longer implies;
``--set-password PRINCIPAL --password-file F`` creates or rotates a SCRAM credential. Broker address and security
come from the ENLACE_KAFKA_* settings (enlace_platform.settings), run as the brokers' super user on a cluster.
"""

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import typer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from enlace_platform.bus import AclBinding, declared
from enlace_platform.settings import ServiceSettings

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


# How long the command waits for the brokers the replication factor needs: a cluster that has just started
# may not show every broker in its metadata yet.
BROKERS_WAIT_S = 30.0


async def _brokers(admin: AIOKafkaAdminClient, needed: int, wait_s: float) -> int:
    """How many brokers the cluster has, waiting up to ``wait_s`` for ``needed`` of them."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        brokers = len((await admin.describe_cluster())["brokers"])
        if brokers >= needed or asyncio.get_running_loop().time() >= deadline:
            return brokers
        await asyncio.sleep(0.5)


async def provision(bootstrap: str, names: list[str], partitions: int | None = None, *,
                    replication_factor: int | None = None, prefix: str = "",
                    client_options: dict | None = None, brokers_wait_s: float = 0.0) -> list[str]:
    """Create the topics that do not exist yet, with their bus.yaml settings, and set those settings again on
    the ones that do (idempotent: a second run changes nothing). Returns the ones created.
    ``replication_factor`` overrides bus.yaml's (one local broker: 1). ``client_options``: the broker's
    security (ServiceSettings.kafka_client_options()). ``brokers_wait_s``: how long to wait for as many
    brokers as the replication factor needs before refusing."""
    bus = declared()
    override = replication_factor or (int(os.environ[REPLICATION_ENV]) if os.environ.get(REPLICATION_ENV) else None)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client_options or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        needed = max((_replication(bus.spec_of(n, prefix).replication_factor, override)[0] for n in missing),
                     default=1)
        brokers = await _brokers(admin, needed, brokers_wait_s)
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


# --- ACLs and SCRAM credentials (confluent-kafka's admin client: aiokafka has no ACL calls) -------------------

ACL_TIMEOUT_S = 30.0


def librdkafka_config(settings: ServiceSettings) -> dict[str, Any]:
    """The same broker address and security as kafka_client_options(), in librdkafka's words."""
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap_servers,
                              "security.protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.startswith("SASL_"):
        config.update({"sasl.mechanism": settings.kafka_sasl_mechanism,
                       "sasl.username": settings.kafka_sasl_username or "",
                       "sasl.password": settings.kafka_sasl_secret() or ""})
    if settings.kafka_security_protocol.endswith("SSL") and settings.kafka_ssl_cafile:
        config["ssl.ca.location"] = settings.kafka_ssl_cafile
    return config


def _to_confluent(binding: AclBinding):
    from confluent_kafka.admin import AclBinding as Binding, AclPermissionType
    return Binding(binding.resource_type, binding.resource_name, binding.pattern_type, binding.principal, "*",
                   binding.operation, AclPermissionType.ALLOW)


def _from_confluent(binding) -> AclBinding:
    return AclBinding(binding.principal, binding.restype.name, binding.resource_pattern_type.name, binding.name,
                      binding.operation.name)


def _admin_client(config: dict[str, Any]):
    from confluent_kafka.admin import AdminClient
    return AdminClient({"log_level": 4, **config})  # librdkafka's notices (level 5, 6) are not for the terminal


def _enlace_principals() -> set[str]:
    return {f"User:{name}" for name in declared().principal_names()}


def current_acls(config: dict[str, Any], prefix: str = "") -> set[AclBinding]:
    """The Enlace principals' ALLOW entries on resources under ``prefix`` (any host), as the broker holds them."""
    from confluent_kafka.admin import (AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType,
                                       ResourceType)
    admin = _admin_client(config)
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                                  AclPermissionType.ALLOW)
    found = admin.describe_acls(everything, request_timeout=ACL_TIMEOUT_S).result(timeout=ACL_TIMEOUT_S)
    principals = _enlace_principals()
    return {_from_confluent(b) for b in found if b.principal in principals and b.name.startswith(prefix)}


def apply_acls(config: dict[str, Any], prefix: str = "") -> tuple[list[AclBinding], list[AclBinding]]:
    """Make the Enlace principals' ALLOW entries under ``prefix`` exactly bus.yaml's (declared().acls(prefix)):
    add what is missing, delete what is no longer declared. Idempotent. Leaves alone other principals, DENY
    entries (an operator's emergency brake) and, with a prefix, every resource outside it; with no prefix, every
    resource an Enlace principal has is in scope. Returns (added, removed)."""
    from confluent_kafka.admin import AclBindingFilter
    wanted = set(declared().acls(prefix))
    present = current_acls(config, prefix)
    added, removed = sorted(wanted - present), sorted(present - wanted)
    admin = _admin_client(config)
    if added:
        for future in admin.create_acls([_to_confluent(b) for b in added],
                                        request_timeout=ACL_TIMEOUT_S).values():
            future.result(timeout=ACL_TIMEOUT_S)
    if removed:
        filters = []
        for binding in removed:
            b = _to_confluent(binding)
            filters.append(AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, None,
                                            b.operation, b.permission_type))
        for future in admin.delete_acls(filters, request_timeout=ACL_TIMEOUT_S).values():
            future.result(timeout=ACL_TIMEOUT_S)
    return added, removed


def set_scram_password(config: dict[str, Any], principal: str, password: str, *, iterations: int = 8192) -> None:
    """Create or replace ``principal``'s SCRAM-SHA-512 credential (a rotation: clients that authenticated keep
    their connections; new ones need the new password)."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion
    upsert = UserScramCredentialUpsertion(principal, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, iterations),
                                          password.encode())
    admin = _admin_client(config)  # held until the answer came: a collected client ends its requests
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=ACL_TIMEOUT_S)


def main(
    bootstrap: str = typer.Option("127.0.0.1:9092", envvar="ENLACE_KAFKA_BOOTSTRAP_SERVERS"),
    prefix: str = typer.Option("", envvar="ENLACE_KAFKA_TOPIC_PREFIX"),
    acls: bool = typer.Option(False, "--acls", help="Also apply bus.yaml's ACLs and remove stale Enlace ones"),
    set_password: str | None = typer.Option(None, "--set-password", metavar="PRINCIPAL",
                                            help="Only create or rotate PRINCIPAL's SCRAM-SHA-512 password"),
    password_file: Path | None = typer.Option(None, help="The new password, with --set-password"),
) -> None:
    settings = ServiceSettings(kafka_bootstrap_servers=bootstrap, kafka_topic_prefix=prefix)
    if set_password:
        if password_file is None:
            raise typer.BadParameter("--set-password needs --password-file")
        set_scram_password(librdkafka_config(settings), set_password,
                           password_file.read_text(encoding="utf-8").strip())
        typer.echo(f"SCRAM-SHA-512 credential of {set_password}: set")
        return
    names = all_topics(prefix)
    created = asyncio.run(provision(bootstrap, names, prefix=prefix, client_options=settings.kafka_client_options(),
                                    brokers_wait_s=BROKERS_WAIT_S))
    for name in names:
        typer.echo(f"topic {name}: {'created' if name in created else 'exists'}")
    if acls:
        added, removed = apply_acls(librdkafka_config(settings), prefix)
        typer.echo(f"ACLs: {len(added)} added, {len(removed)} removed, {len(declared().acls(prefix))} declared")


if __name__ == "__main__":
    typer.run(main)
