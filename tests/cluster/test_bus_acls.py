"""Least privilege on the bus, tried against the secured three-node cluster with each principal's own credentials.

The ACLs come from bus.yaml (enlace_platform.bus), applied by enlace_platform.topics --acls. Every produce and
consume that they do not allow is tried and must be refused by the broker; every one they allow must work:
  - produce: WRITE on every topic and dead-letter topic, by every principal;
  - consume: READ with a consumer group the principal owns, on every topic and dead-letter topic;
  - consume with every group the principal does not own, on a topic it may read;
  - a wrong password, an unknown user, a plaintext client, a TLS client without SASL, and a client without the
    controllers' client certificate are all turned away.
Whether a pair is allowed is worked out here from the ALLOW list, independently of the broker's authorizer.
"""

import asyncio
import importlib
import os
import ssl
import subprocess
import sys
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.errors import (
    ClusterAuthorizationFailedError, GroupAuthorizationFailedError, KafkaConnectionError, SaslAuthenticationFailed,
    TopicAuthorizationFailedError, UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from enlace_platform.bus import ADMIN, SERVICES, AclBinding, declared
from enlace_platform.settings import ServiceSettings
from enlace_platform.topics import current_acls
from tests.support.cluster import KafkaCluster
from tests.support.harness import eventually

BUS = declared()
PRINCIPALS = BUS.principal_names()
TOPICS = BUS.all_topics()  # unprefixed: topics and dead-letter topics
INTEGRATOR_TEST_GROUP = "acl-test"  # under an integrator's own group prefix


def allowed(bindings: list[AclBinding], principal: str, kind: str, name: str, operation: str) -> bool:
    """As the standard authorizer decides with ALLOW entries only: a literal name or a prefix matches."""
    for b in bindings:
        if b.principal != f"User:{principal}" or b.resource_type != kind or b.operation != operation:
            continue
        if b.resource_name == name if b.pattern_type == "LITERAL" else name.startswith(b.resource_name):
            return True
    return False


def candidate_groups() -> list[str]:
    """Every consumer group some principal may use: the services' groups and one under each integrator prefix."""
    groups = [g for service_groups in BUS.consumers.values() for g in service_groups]
    prefixes = [p["group_prefix"] for p in BUS.principals.values() if p.get("group_prefix")]
    return groups + [f"{prefix}{INTEGRATOR_TEST_GROUP}" for prefix in prefixes]


def own_group(principal: str, topic: str) -> str:
    """A group the principal may use, preferably one that reads ``topic`` in bus.yaml."""
    acls = BUS.acls()
    mine = [g for g in candidate_groups() if allowed(acls, principal, "GROUP", g, "READ")]
    readers = [g for groups in BUS.consumers.values() for g, topics in groups.items() if topic in topics]
    return next((g for g in mine if g in readers), mine[0])


def readable_topic(principal: str) -> str:
    return next(t for t in TOPICS if allowed(BUS.acls(), principal, "TOPIC", t, "READ"))


PRODUCE = [(p, t, allowed(BUS.acls(), p, "TOPIC", t, "WRITE")) for p in PRINCIPALS for t in TOPICS]
CONSUME = [(p, t, allowed(BUS.acls(), p, "TOPIC", t, "READ")) for p in PRINCIPALS for t in TOPICS]
FOREIGN_GROUPS = [(p, g) for p in PRINCIPALS for g in candidate_groups()
                  if not allowed(BUS.acls(), p, "GROUP", g, "READ")]


def _ids(cases):
    return [f"{c[0]}-{'may' if c[2] else 'must-not'}-{c[1]}" for c in cases]


def test_the_matrix_is_least_privilege():
    """The derivation itself, on the points the issue names; the broker tests below try all of it."""
    writes = {(p, t) for p, t, ok in PRODUCE if ok}
    reads = {(p, t) for p, t, ok in CONSUME if ok}
    for topic in BUS.topics.values():  # a service writes only the topics it owns (and dead-letter topics)
        assert {p for p, t in writes if t == topic.name and p in SERVICES} == {topic.owner}
    # The operator writes only where a redrive sends dead letters back.
    assert {t for p, t in writes if p == "enlace-ops"} == {t.name for t in BUS.topics.values() if t.consumed}
    for service in SERVICES:
        assert {t for p, t in reads if p == service} == set(BUS.reads(service))
    assert {t for p, t in reads if p == "enlace-integrator-enforcement"} == {"referral.status"}
    # The operator reads every dead letter, and at most the topics they come from (a rewind commits offsets
    # there, which Kafka authorizes as READ): never referral.status, which no Enlace service consumes.
    consumed = {t.name for t in BUS.topics.values() if t.consumed}
    dead_letters = {BUS.dlq(t) for t in consumed}
    assert dead_letters <= {t for p, t in reads if p == "enlace-ops"} <= dead_letters | consumed
    assert not any(p.startswith("enlace-integrator") for p, _ in writes)
    assert ADMIN not in PRINCIPALS
    assert len(FOREIGN_GROUPS) >= len(PRINCIPALS)


@pytest.fixture(scope="module")
async def bus_under_test(kafka_cluster: KafkaCluster):
    """bus.yaml's topics and ACLs under a prefix of their own, each topic holding one record (written by
    enlace-admin), so an allowed consume has something to read."""
    prefix = f"acl{uuid.uuid4().hex[:8]}."
    await kafka_cluster.provision(prefix)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_cluster.bootstrap, acks="all",
                                **kafka_cluster.admin_options())
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(prefix + t, b"{}", key=b"acl-test") for t in TOPICS])
    finally:
        await producer.stop()
    return kafka_cluster, prefix


async def test_the_broker_holds_exactly_the_declared_acls(bus_under_test):
    cluster, prefix = bus_under_test
    config = cluster.librdkafka_config(ADMIN)
    assert await asyncio.to_thread(current_acls, config, prefix) == set(BUS.acls(prefix))
    # A second application changes nothing.
    from enlace_platform.topics import apply_acls
    assert await asyncio.to_thread(apply_acls, config, prefix) == ([], [])


async def test_stale_enlace_acls_are_removed_and_others_left(bus_under_test):
    """An ALLOW entry bus.yaml no longer implies goes at the next application; another principal's stays."""
    from confluent_kafka.admin import AclBinding as Binding, AclBindingFilter, AclPermissionType, AdminClient
    from enlace_platform.topics import apply_acls
    cluster, prefix = bus_under_test
    config = cluster.librdkafka_config(ADMIN)
    stale = Binding("TOPIC", f"{prefix}referral.status", "LITERAL", "User:intake", "*", "READ",
                    AclPermissionType.ALLOW)
    foreign = Binding("TOPIC", f"{prefix}referral.status", "LITERAL", "User:someone-else", "*", "READ",
                      AclPermissionType.ALLOW)
    admin = AdminClient(config)
    for future in admin.create_acls([stale, foreign]).values():
        await asyncio.to_thread(future.result, 30)
    added, removed = await asyncio.to_thread(apply_acls, config, prefix)
    assert (added, removed) == ([], [AclBinding("User:intake", "TOPIC", "LITERAL", f"{prefix}referral.status",
                                                "READ")])
    # The foreign entry is still there; the test takes it away again.
    exactly_foreign = AclBindingFilter("TOPIC", foreign.name, "LITERAL", foreign.principal, "*", "READ",
                                       AclPermissionType.ALLOW)
    for future in admin.delete_acls([exactly_foreign]).values():
        assert len(await asyncio.to_thread(future.result, 30)) == 1


@pytest.mark.parametrize(("principal", "topic", "may"), PRODUCE, ids=_ids(PRODUCE))
async def test_produce(bus_under_test, principal, topic, may):
    cluster, prefix = bus_under_test
    # Not idempotent here: an idempotent producer needs WRITE somewhere before it starts (tried below); this
    # asks the broker about this one topic.
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", request_timeout_ms=10_000,
                                **cluster.client_options(principal))
    await producer.start()
    try:
        if may:
            sent = await (await producer.send(prefix + topic, b"{}", key=b"acl-test"))
            assert sent.offset >= 0
        else:
            with pytest.raises(TopicAuthorizationFailedError):
                await (await producer.send(prefix + topic, b"{}", key=b"acl-test"))
    finally:
        await producer.stop()


@pytest.mark.parametrize("principal", PRINCIPALS)
async def test_an_idempotent_producer_starts_only_for_a_writer(bus_under_test, principal):
    """The services' producer (idempotent, acks=all) needs WRITE on some topic: the readers get none."""
    cluster, _ = bus_under_test
    writes_somewhere = any(ok for p, _, ok in PRODUCE if p == principal)
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, enable_idempotence=True, acks="all",
                                request_timeout_ms=10_000, **cluster.client_options(principal))
    try:
        if writes_somewhere:
            await producer.start()
        else:
            with pytest.raises(ClusterAuthorizationFailedError):
                await producer.start()
    finally:
        await producer.stop()


async def _consume(cluster: KafkaCluster, principal: str, topic: str, group: str) -> int:
    """Subscribes with ``group`` and reads from the beginning until records come (their count) or the broker
    refuses: TopicAuthorizationFailedError, GroupAuthorizationFailedError."""
    consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, group_id=group, auto_offset_reset="earliest",
                                enable_auto_commit=False, request_timeout_ms=10_000,
                                **cluster.client_options(principal))
    await consumer.start()
    try:
        consumer.subscribe([topic])

        async def records() -> int:
            batch = await consumer.getmany(timeout_ms=300)
            # The broker refused the topic's metadata (no DESCRIBE): aiokafka only logs that and keeps waiting.
            if topic in consumer._client.cluster.unauthorized_topics:  # noqa: SLF001
                raise TopicAuthorizationFailedError(topic)
            return sum(len(r) for r in batch.values())

        return await eventually(records, timeout=60, interval=0, what=f"{principal} reading {topic}")
    finally:
        await consumer.stop()


@pytest.mark.parametrize(("principal", "topic", "may"), CONSUME, ids=_ids(CONSUME))
async def test_consume(bus_under_test, principal, topic, may):
    cluster, prefix = bus_under_test
    group = prefix + own_group(principal, topic)
    if may:
        assert await _consume(cluster, principal, prefix + topic, group) >= 1
    else:
        with pytest.raises(TopicAuthorizationFailedError):
            await _consume(cluster, principal, prefix + topic, group)


@pytest.mark.parametrize(("principal", "group"), FOREIGN_GROUPS, ids=[f"{p}-in-{g}" for p, g in FOREIGN_GROUPS])
async def test_consume_with_a_group_it_does_not_own(bus_under_test, principal, group):
    cluster, prefix = bus_under_test
    with pytest.raises(GroupAuthorizationFailedError):
        await _consume(cluster, principal, prefix + readable_topic(principal), prefix + group)


async def test_enlace_ops_does_its_work_with_its_own_credentials(bus_under_test):
    """The operator's principal lists and redrives a dead letter, reads a service group's position and
    rewinds it (docs/operations.md, the operations CLI), with nothing more than bus.yaml grants it."""
    from enlace_ops import operations as ops
    cluster, prefix = bus_under_test
    source, group = prefix + "intake.case", prefix + "referral.routing"
    admin = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", **cluster.admin_options())
    await admin.start()
    try:
        await (await admin.send(source + ".dlq", b"{}", key=b"case-1", headers=[
            ("ce_id", b"acl-test-dead-letter"), ("dlq_original_topic", source.encode()),
            ("dlq_consumer", b"referral.routing")]))
    finally:
        await admin.stop()
    options = cluster.client_options("enlace-ops")
    letters = await ops.read_dead_letters(cluster.bootstrap, source, client_options=options)
    assert "acl-test-dead-letter" in {letter.event_id for letter in letters}
    chosen = [letter for letter in letters if letter.event_id == "acl-test-dead-letter"]
    sent = await ops.redrive(cluster.bootstrap, source, partition=chosen[0].partition,
                             offsets=[chosen[0].offset], client_options=options)
    assert [letter.event_id for letter in sent] == ["acl-test-dead-letter"]
    position = await ops.group_position(cluster.bootstrap, group, source, client_options=options)
    assert sum(position.end.values()) >= 2  # the seeded record and the redriven one
    targets = await ops.rewind_group(cluster.bootstrap, group, source, offset=0, client_options=options)
    assert set(targets.values()) == {0}


async def test_writes_go_on_while_a_node_is_down(bus_under_test):
    """Replication 3 with min.insync 2: a service's idempotent, acks=all producer is acknowledged with one node
    killed, and the node comes back (the fixture's kill_broker / start_broker, which other tests rely on)."""
    cluster, prefix = bus_under_test
    cluster.kill_broker(3)
    assert not cluster.running(3)
    try:
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, enable_idempotence=True, acks="all",
                                    request_timeout_ms=10_000, **cluster.client_options("intake"))
        await producer.start()
        try:
            for n in range(6):  # keys over every partition, whichever lost its leader
                assert (await (await producer.send(prefix + "intake.case", b"{}", key=f"k{n}".encode()))).offset >= 0
        finally:
            await producer.stop()
    finally:
        await asyncio.to_thread(cluster.start_broker, 3)
    assert cluster.running(3)


# --- authentication -----------------------------------------------------------------------------------------

async def _metadata(cluster: KafkaCluster, **security) -> None:
    """One connection to node 1 and a metadata request: what any client does first."""
    conn = await create_conn("127.0.0.1", cluster.client_ports[0], request_timeout_ms=10_000, **security)
    try:
        await conn.send(MetadataRequest([]))
    finally:
        conn.close()


def _sasl(cluster: KafkaCluster, username: str, password: str) -> dict:
    return {"security_protocol": "SASL_SSL", "ssl_context": create_ssl_context(cafile=str(cluster.ca_file)),
            "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": username, "sasl_plain_password": password}


async def test_own_credentials_are_accepted(kafka_cluster):
    for principal in [*PRINCIPALS, ADMIN]:
        await _metadata(kafka_cluster, **_sasl(kafka_cluster, principal, kafka_cluster.password(principal)))


async def test_a_wrong_password_is_refused(kafka_cluster):
    with pytest.raises(SaslAuthenticationFailed):
        await _metadata(kafka_cluster, **_sasl(kafka_cluster, "intake", kafka_cluster.password("referral")))


async def test_an_unknown_user_is_refused(kafka_cluster):
    with pytest.raises(SaslAuthenticationFailed):
        await _metadata(kafka_cluster, **_sasl(kafka_cluster, "mallory", "guess"))


async def test_another_mechanism_is_refused(kafka_cluster):
    security = {**_sasl(kafka_cluster, "intake", kafka_cluster.password("intake")), "sasl_mechanism": "PLAIN"}
    with pytest.raises(UnsupportedSaslMechanismError):  # the brokers offer SCRAM-SHA-512 only
        await _metadata(kafka_cluster, **security)


async def test_a_plaintext_client_is_refused(kafka_cluster):
    with pytest.raises(KafkaConnectionError):
        await _metadata(kafka_cluster)


async def test_tls_without_sasl_is_refused(kafka_cluster):
    with pytest.raises(KafkaConnectionError):
        await _metadata(kafka_cluster, security_protocol="SSL",
                        ssl_context=create_ssl_context(cafile=str(kafka_cluster.ca_file)))


async def test_a_broker_certificate_not_from_our_ca_is_refused_by_the_client(kafka_cluster):
    """The other way round: a client that trusts only the system's CAs does not talk to these brokers."""
    security = {**_sasl(kafka_cluster, "intake", kafka_cluster.password("intake")),
                "ssl_context": create_ssl_context()}
    with pytest.raises((ssl.SSLError, KafkaConnectionError, OSError)):
        await _metadata(kafka_cluster, **security)


async def test_the_controller_listener_wants_the_brokers_certificate(kafka_cluster):
    """The controllers' listener is mutual TLS: a client without the brokers' certificate gets no answer, even
    with the super user's password in hand (that listener speaks no SASL)."""
    context = create_ssl_context(cafile=str(kafka_cluster.ca_file))
    for port in kafka_cluster.controller_ports:
        with pytest.raises((ssl.SSLError, KafkaConnectionError, ConnectionError)):
            await _metadata_on(port, ssl_context=context, security_protocol="SSL")


async def _metadata_on(port: int, **security) -> None:
    conn = await create_conn("127.0.0.1", port, request_timeout_ms=10_000, **security)
    try:
        await conn.send(MetadataRequest([]))
    finally:
        conn.close()


def _topics_cli(cluster: KafkaCluster, *args: str, prefix: str = "") -> str:
    """python -m enlace_platform.topics as the Makefile runs it on a cluster: as enlace-admin, from ENLACE_KAFKA_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENLACE_KAFKA_")}  # no single-broker override
    env.update(cluster.service_env(ADMIN), ENLACE_KAFKA_TOPIC_PREFIX=prefix)
    done = subprocess.run([sys.executable, "-m", "enlace_platform.topics", *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_the_topics_command_applies_acls_idempotently(bus_under_test):
    cluster, prefix = bus_under_test
    out = await asyncio.to_thread(_topics_cli, cluster, "--acls", prefix=prefix)
    assert f"ACLs: 0 added, 0 removed, {len(BUS.acls(prefix))} declared" in out
    assert "created" not in out


async def test_a_scram_password_is_rotated_with_the_topics_command(kafka_cluster, tmp_path):
    """docs/operations.md, "Rotating a SCRAM password": the new password works, the old one no longer does.
    On a principal of the test's own, so the session's principals keep theirs."""
    user, first, second = "rotation-test", tmp_path / "first", tmp_path / "second"
    first.write_text("first-password\n")
    second.write_text("second-password\n")
    await asyncio.to_thread(_topics_cli, kafka_cluster, "--set-password", user, "--password-file", str(first))
    await _metadata(kafka_cluster, **_sasl(kafka_cluster, user, "first-password"))
    await asyncio.to_thread(_topics_cli, kafka_cluster, "--set-password", user, "--password-file", str(second))
    await _metadata(kafka_cluster, **_sasl(kafka_cluster, user, "second-password"))
    with pytest.raises(SaslAuthenticationFailed):
        await _metadata(kafka_cluster, **_sasl(kafka_cluster, user, "first-password"))


# --- the services' clients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("principal", [*PRINCIPALS, ADMIN])
def test_service_env_gives_the_same_client_options(kafka_cluster, principal, monkeypatch):
    """A subprocess given service_env() builds its clients with exactly these settings (ENLACE_KAFKA_*)."""
    for name, value in kafka_cluster.service_env(principal).items():
        monkeypatch.setenv(name, value)
    options = ServiceSettings().kafka_client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == \
        (principal, kafka_cluster.password(principal))
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED and options["ssl_context"].check_hostname


def test_a_plaintext_broker_needs_no_client_options(monkeypatch):
    for name in ("SECURITY_PROTOCOL", "SASL_USERNAME", "SASL_PASSWORD", "SASL_PASSWORD_FILE", "SSL_CAFILE"):
        monkeypatch.delenv(f"ENLACE_KAFKA_{name}", raising=False)
    assert ServiceSettings().kafka_client_options() == {}


def test_sasl_without_credentials_is_refused_at_start():
    with pytest.raises(ValueError, match="ENLACE_KAFKA_SASL_USERNAME"):
        ServiceSettings(kafka_security_protocol="SASL_SSL").kafka_client_options()


def _runtime_consumers(service: str) -> dict[str, list[str]]:
    config = importlib.import_module(f"{service}.config")
    [settings_class] = [v for v in vars(config).values() if isinstance(v, type) and issubclass(v, ServiceSettings)
                        and v is not ServiceSettings]
    runtime = importlib.import_module(f"{service}.bootstrap").build_runtime(settings_class())
    return {spec.name: list(spec.topics) for spec in runtime.consumers}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_consumes_what_bus_yaml_says(service):
    """The ACLs are derived from bus.yaml's consumers: they must be what the service's runtime really runs
    (bootstrap.py's ConsumerSpecs and the directory's consumer), or a consumer is refused or over-allowed."""
    assert _runtime_consumers(service) == BUS.consumers.get(service, {})
