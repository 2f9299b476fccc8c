"""Provisioning from bus.yaml on the real broker: settings applied, a second run changes nothing, a setting changed
by hand is put back, and more replicas than brokers is refused with what to do."""

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from enlace_platform.topics import all_topics, provision
from tests.support.harness import eventually, unique_prefix

pytestmark = pytest.mark.kafka


async def _configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = {}
        for response in await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names]):
            for _error, _message, _type, name, entries in response.resources:
                found[name] = {e[0]: e[1] for e in entries}
        return found
    finally:
        await admin.close()


async def _set(bootstrap: str, name: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=configs)])
    finally:
        await admin.close()


async def test_topics_get_the_declared_settings_and_a_second_run_creates_nothing(kafka_bootstrap):
    prefix = unique_prefix()
    names = all_topics(prefix)
    assert sorted(await provision(kafka_bootstrap, names, prefix=prefix, replication_factor=1)) == sorted(names)
    configs = await _configs(kafka_bootstrap, names)
    agency, agency_dlq, case = (configs[f"{prefix}{n}"] for n in ("referral.agency", "referral.agency.dlq",
                                                                     "intake.case"))
    assert agency["cleanup.policy"] == "compact" and agency["retention.ms"] == "-1"
    assert agency_dlq["cleanup.policy"] == "delete" and agency_dlq["retention.ms"] == "7776000000"
    assert case["retention.ms"] == "2592000000" and case["unclean.leader.election.enable"] == "false"
    # One broker: one replica, and min.insync.replicas that one replica can meet.
    assert case["min.insync.replicas"] == "1"
    assert await provision(kafka_bootstrap, names, prefix=prefix, replication_factor=1) == []


async def test_a_setting_changed_by_hand_is_put_back(kafka_bootstrap):
    prefix = unique_prefix()
    names = all_topics(prefix)
    await provision(kafka_bootstrap, names, prefix=prefix, replication_factor=1)
    case = f"{prefix}intake.case"

    async def retention_is(value: str) -> bool:  # the broker applies metadata changes a moment later
        return (await _configs(kafka_bootstrap, [case]))[case].get("retention.ms") == value

    await _set(kafka_bootstrap, case, {"retention.ms": "1000"})
    await eventually(lambda: retention_is("1000"), timeout=10, what="the hand-made change")
    await provision(kafka_bootstrap, names, prefix=prefix, replication_factor=1)
    await eventually(lambda: retention_is("2592000000"), timeout=10, what="the declared retention back")


async def test_more_replicas_than_brokers_is_refused_before_anything_is_created(kafka_bootstrap):
    prefix = unique_prefix()
    with pytest.raises(RuntimeError, match="ENLACE_KAFKA_REPLICATION_FACTOR=1"):
        await provision(kafka_bootstrap, all_topics(prefix), prefix=prefix, replication_factor=3)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert not [t for t in await admin.list_topics() if t.startswith(prefix)]
    finally:
        await admin.close()
